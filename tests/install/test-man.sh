#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The man pages the build renders from docs/*.md (docs/meson.build): each
# passes mandoc -T lint without warnings, formats with man(1) without troff
# warnings and with NAME and SYNOPSIS sections, has a NAME line that
# whatis/apropos can index, and meson install puts it under mandir/manSECTION.
# Usage: test-man.sh BUILD-DIR RENDERED (true when the build renders pages:
# pandoc found and -Dman not disabled).
set -euo pipefail
build=$1
rendered=$2

for tool in pandoc mandoc man lexgrog; do
	if ! command -v "$tool" >/dev/null; then
		echo "SKIP: $tool is not installed (scripts/install-deps installs it)"
		exit 77
	fi
done
if [ "$rendered" != true ]; then
	echo "SKIP: the build renders no man pages (configured with -Dman=disabled)"
	exit 77
fi

dest=$(mktemp -d /var/tmp/snapmr-man.XXXXXX)
trap 'rm -rf "$dest"' EXIT
err=$dest/man.err

introspect() { # meson introspect flag, then a Python expression over j
	meson introspect "$build" "$1" | python3 -c "import json, sys; j = json.load(sys.stdin); $2"
}
# The pages are the outputs of docs/meson.build's targets.
mapfile -t pages < <(introspect --targets '
for t in j:
    if t["type"] == "custom" and t["defined_in"].endswith("docs/meson.build"):
        print(*t["filename"], sep="\n")')
names=$(for p in "${pages[@]}"; do basename "$p"; done | sort | tr '\n' ' ')
for want in snapsave.1 snaprestore.1; do
	if [[ " $names" != *" $want "* ]]; then
		echo "FAIL: docs/meson.build renders '$names', without $want"
		exit 1
	fi
done

status=0
fail() {
	echo "FAIL: $*"
	status=1
}
for page in "${pages[@]}"; do
	file=$(basename "$page")
	name=${file%.*}
	[ -s "$page" ] || { fail "$page was not rendered"; continue; }
	lint=$(mandoc -T lint -W warning "$page" 2>&1) || true
	[ -z "$lint" ] || fail "$file: mandoc -T lint -W warning:"$'\n'"$lint"
	# troff warnings (a table too wide, a glyph the terminal lacks) in a UTF-8
	# and in an ASCII locale.
	for locale in C C.UTF-8; do
		out=$(LC_ALL=$locale MANWIDTH=80 man -l "$page" 2>"$err") ||
			fail "$file: man -l failed"
		[ ! -s "$err" ] ||
			fail "$file: man -l warnings with LC_ALL=$locale:"$'\n'"$(cat "$err")"
	done
	for section in NAME SYNOPSIS DESCRIPTION; do
		grep -qx "$section" <<<"$out" || fail "$file: no $section section in man -l output"
	done
	# The SYNOPSIS starts with the command (section 1) or the header (3).
	grep -A1 -x SYNOPSIS <<<"$out" | grep -q "^ *\($name\|#include\)" ||
		fail "$file: SYNOPSIS does not start with $name"
	whatis=$(lexgrog "$page") || fail "$file: lexgrog cannot parse its NAME section"
	grep -q "^$page: \"$name - ." <<<"$whatis" || fail "$file: whatis entry is '$whatis'"
	# Option lists become tagged paragraphs; a bullet before an option means
	# docs/man.lua did not recognise the list (e.g. a line inside an item
	# started with "+ " or "- " and made a nested list).
	! grep -n '^ *\(•\|o\|\*\) \+-' <<<"$out" || fail "$file: options rendered as bullets (above)"
	# Nothing left of the markdown: no title line, no SPDX comment, no raw
	# backticks or link targets.
	! grep -n "SPDX\|$name($\|\`\|\](" <<<"$out" || fail "$file: markdown left in the page (above)"
done

meson install -C "$build" --destdir "$dest" --quiet >/dev/null
prefix=$(introspect --buildoptions 'print(next(o["value"] for o in j if o["name"] == "prefix"))')
mandir=$(introspect --buildoptions 'print(next(o["value"] for o in j if o["name"] == "mandir"))')
[[ $mandir == /* ]] || mandir=$prefix/$mandir
for page in "${pages[@]}"; do
	file=$(basename "$page")
	installed=$dest$mandir/man${file##*.}/$file
	if [ ! -f "$installed" ]; then
		fail "$file not installed as $installed"
	elif ! cmp -s "$page" "$installed"; then
		fail "$installed differs from $page"
	fi
done
# What apropos finds once the pages are indexed (man-db's mandb on the tree).
if command -v mandb >/dev/null; then
	mandb -q -c "$dest$mandir" || fail "mandb cannot index $dest$mandir"
	hits=$(MANPATH=$dest$mandir apropos -l snapsave 2>/dev/null) || true
	grep -q '^snapsave (1) *- save guest RAM' <<<"$hits" ||
		fail "apropos snapsave in the installed tree gives '$hits'"
fi
[ "$status" = 0 ] && echo "ok: ${#pages[@]} pages: $names"
exit $status
