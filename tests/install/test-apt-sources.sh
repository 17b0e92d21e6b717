#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# scripts/install-deps takes the mirror for bookworm-backports from the apt
# sources of the machine only: fake apt directories with deb822 and one-line
# sources, and none at all.
# Usage: test-apt-sources.sh SOURCE-DIR
set -euo pipefail
# shellcheck source=../../scripts/install-deps
source "$1/scripts/install-deps"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
n=0

# A fresh apt directory per case: case NAME, then FILE CONTENT pairs.
setup() {
	n=$((n + 1))
	name=$1
	shift
	dir=$tmp/$n
	mkdir -p "$dir/sources.list.d"
	while [ $# -gt 0 ]; do
		printf '%s' "$2" >"$dir/$1"
		shift 2
	done
}

expect() { # what bookworm_source must print, or FAIL
	local got rc=0
	got=$(bookworm_source "$dir" 2>&1) || rc=$?
	if [ "$1" = FAIL ]; then
		[ "$rc" != 0 ] || { echo "FAIL: $name: found '$got' where there is no bookworm source"; failed=1; }
	elif [ "$rc" != 0 ] || [ "$got" != "$1" ]; then
		echo "FAIL: $name: got (status $rc)"$'\n'"$got"$'\n'"expected"$'\n'"$1"
		failed=1
	fi
}

# The stock Debian 12 file: a comment inside the stanza, two suites in the
# first stanza, security in the second.
setup "deb822, Debian 12 default" sources.list.d/debian.sources 'Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
'
expect 'URIs: http://mirror.example/debian
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg'

# Only the stanza naming plain "bookworm" counts, whatever comes first;
# deb-src only and disabled stanzas do not; field names in any case.
setup "deb822, bookworm in a later stanza" sources.list.d/a.sources 'Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
Enabled: no
URIs: http://off.example/debian
Suites: bookworm
' sources.list.d/b.sources '
types: deb-src deb
uris: http://b.example/debian http://c.example/debian
suites: bookworm-updates bookworm
components: main contrib
'
expect 'URIs: http://b.example/debian http://c.example/debian'

# An inline key is copied with its continuation lines.
setup "deb822, inline Signed-By" sources.list.d/k.sources 'Types: deb
URIs: http://k.example/debian
Suites: bookworm
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD3K87ZM18gzyQZJD+w
 -----END PGP PUBLIC KEY BLOCK-----
Components: main
'
expect 'URIs: http://k.example/debian
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD3K87ZM18gzyQZJD+w
 -----END PGP PUBLIC KEY BLOCK-----'

# One-line format, with options spaced out or not, after comments, deb-src
# and other suites; the .sources files without bookworm do not stop it.
setup "one-line sources.list" sources.list '# deb http://old.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb http://sec.example/debian-security bookworm-security main
deb [ arch=amd64 signed-by=/usr/share/keyrings/one.gpg ] http://one.example/debian bookworm main
' sources.list.d/other.sources 'Types: deb
URIs: http://other.example/x
Suites: nodistro
'
expect 'URIs: http://one.example/debian
Signed-By: /usr/share/keyrings/one.gpg'

setup "one-line sources.list.d/*.list, no options" sources.list.d/debian.list \
	'deb http://plain.example/debian bookworm main contrib non-free-firmware
'
expect 'URIs: http://plain.example/debian'

setup "only other suites" sources.list 'deb http://x.example/debian bullseye main
' sources.list.d/y.sources 'Types: deb
URIs: http://y.example/debian
Suites: bookworm-backports
'
expect FAIL
setup "no sources at all"
expect FAIL

# add_backports writes the stanza from the bookworm source...
setup "add_backports" sources.list.d/debian.sources 'Types: deb
URIs: http://mirror.example/debian
Suites: bookworm
Signed-By: /k.gpg
'
add_backports "$dir"
want='Types: deb
URIs: http://mirror.example/debian
Signed-By: /k.gpg
Suites: bookworm-backports
Components: main'
got=$(cat "$dir/sources.list.d/bookworm-backports.sources")
[ "$got" = "$want" ] || { echo "FAIL: add_backports wrote"$'\n'"$got"; failed=1; }
# ...leaves a machine that has bookworm-backports alone...
echo 'deb http://other.example/debian bookworm-backports main' >"$dir/sources.list"
rm "$dir/sources.list.d/bookworm-backports.sources"
add_backports "$dir"
[ ! -e "$dir/sources.list.d/bookworm-backports.sources" ] ||
	{ echo "FAIL: add_backports added a second bookworm-backports"; failed=1; }
# ...and without a bookworm source fails naming where it looked and what to add.
setup "add_backports without a source" sources.list.d/x.sources.disabled 'Types: deb
URIs: http://x.example/debian
Suites: bookworm
'
rc=0
msg=$(add_backports "$dir" 2>&1) || rc=$?
if [ "$rc" = 0 ] || [ -e "$dir/sources.list.d/bookworm-backports.sources" ]; then
	echo "FAIL: add_backports without a bookworm source succeeded"
	failed=1
fi
for want in "$dir/sources.list.d/*.sources" "$dir/sources.list" "Suites: bookworm" "URIs: <your Debian mirror>" --no-qemu; do
	[[ $msg == *"$want"* ]] || { echo "FAIL: the message does not name '$want':"$'\n'"$msg"; failed=1; }
done

[ "$failed" = 0 ] && echo "ok: $n cases"
exit $failed
