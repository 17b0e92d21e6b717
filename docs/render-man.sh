#!/bin/sh
# SPDX-License-Identifier: MIT
# Renders docs/SOURCE.md into the man page OUTPUT (NAME.SECTION) with pandoc
# and docs/man.lua. Usage:
#   render-man.sh PANDOC SOURCE OUTPUT VERSION [SRC.md=NAME.S]...
# The pairs name every page, so links between pages become NAME(S).
# The date is SOURCE_DATE_EPOCH's, else the last commit of SOURCE, else its
# modification time: never the build's, so the page is reproducible.
set -eu
pandoc=$1 src=$2 out=$3 version=$4
shift 4
page=$(basename "$out")
name=${page%.*}
section=${page##*.}
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
	date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
else
	date=$(git -C "$(dirname "$src")" log -1 --format=%cs -- "$(basename "$src")" 2>/dev/null || true)
	[ -n "$date" ] || date=$(date -u -r "$src" +%Y-%m-%d)
fi
upper=$(printf '%s' "$name" | tr '[:lower:]' '[:upper:]')
tmp=$out.tmp
"$pandoc" -f gfm -t man -s --lua-filter "$(dirname "$0")/man.lua" \
	-M "man-name=$name" -M "man-section=$section" -M "man-pages=$*" \
	-M "title=$upper" -M "section=$section" -M "date=$date" \
	-M "footer=snapmr $version" -M "header=snapmr Manual" \
	-o "$tmp" "$src"
# pandoc starts a table, or a first paragraph, after a heading with .PP,
# which the heading's own paragraph makes redundant (mandoc -T lint warns).
sed '/^\.S[HS] /{n;/^\.PP$/d}' "$tmp" >"$out"
rm -f "$tmp"
