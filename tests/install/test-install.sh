#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs the library into a scratch prefix, then checks what a VMM author
# gets: the public header compiles alone (C99 pedantic and C++), the shared
# library exports exactly the API under its version node (and, where
# abigail-tools are installed, the ABI matches the committed baseline), and
# every example in docs/examples builds with pkg-config only and runs.
set -euo pipefail
build=$1
src=$2
dest=$(mktemp -d /var/tmp/snapmr-install.XXXXXX)
trap 'rm -rf "$dest"' EXIT
meson install -C "$build" --destdir "$dest" --quiet >/dev/null
opt() {
	meson introspect "$build" --buildoptions |
		python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == sys.argv[1]))' "$1"
}
prefix=$(opt prefix)
libdir=$(opt libdir)
root=$dest$prefix
pcdir=$root/$libdir/pkgconfig
[ -f "$pcdir/snapmr.pc" ] || { echo "snapmr.pc not installed under $pcdir"; exit 1; }
hdr=$root/include/snapmr/snapmr.h
[ -f "$hdr" ] || { echo "snapmr/snapmr.h not installed"; exit 1; }
extra=$(cd "$root/include" && find . -type f ! -path ./snapmr/snapmr.h)
[ -z "$extra" ] || { echo "headers besides snapmr/snapmr.h are installed: $extra"; exit 1; }
export PKG_CONFIG_PATH=$pcdir PKG_CONFIG_SYSROOT_DIR=$dest

echo "== the public header alone, C99 -pedantic and C++"
printf '#include <snapmr/snapmr.h>\nint main(void) { struct snapmr_opts o = SNAPMR_INIT(struct snapmr_opts); return (int)o.jobs; }\n' >"$dest/h.c"
cc -std=c99 -Wall -Wextra -pedantic -Werror -I"$root/include" -c "$dest/h.c" -o "$dest/h.o"
if command -v c++ >/dev/null; then
	printf '#include <snapmr/snapmr.h>\nint main() { auto o = SNAPMR_INIT(struct snapmr_opts); return (int)o.jobs; }\n' >"$dest/h.cc"
	c++ -std=c++11 -Wall -Wextra -pedantic -Werror -I"$root/include" -c "$dest/h.cc" -o "$dest/hpp.o"
else
	echo "no C++ compiler: the C++ check is skipped"
fi

echo "== exported symbols: exactly the API, under SNAPMR_0.1"
so=$(readlink -f "$root/$libdir/libsnapmr.so")
nm -D --defined-only "$so" | awk '{ print $3 }' | sort >"$dest/exported"
{
	echo SNAPMR_0.1
	sed -n 's/^[[:space:]]*\(snapmr_[a-z_]*\);$/\1@@SNAPMR_0.1/p' "$src/libsnapmr.map"
} | sort >"$dest/expected"
if ! diff -u "$dest/expected" "$dest/exported"; then
	echo "the exported symbols differ from libsnapmr.map (above)"
	exit 1
fi
for fn in $(sed -n 's/^SNAPMR_API [^(]* \**\(snapmr_[a-z_]*\)(.*/\1/p' "$hdr"); do
	grep -qx "$fn@@SNAPMR_0.1" "$dest/exported" || { echo "$fn is declared but not exported"; exit 1; }
done
objdump -p "$so" | grep -q 'SONAME *libsnapmr.so.0$' || { echo "soname is not libsnapmr.so.0"; exit 1; }

echo "== ABI against abi/libsnapmr.abi"
if command -v abidiff >/dev/null; then
	abidw --no-corpus-path --no-comp-dir-path --no-show-locs --drop-private-types \
		--headers-dir "$src/include/snapmr" "$so" >"$dest/current.abi"
	if ! abidiff "$src/abi/libsnapmr.abi" "$dest/current.abi"; then
		echo "the ABI changed (above). If on purpose: bump the version node in libsnapmr.map,"
		echo "then scripts/update-abi to record the new baseline."
		exit 1
	fi
else
	echo "abidiff (abigail-tools) is not installed: the ABI comparison is skipped"
fi

echo "== the examples, with pkg-config only"
for ex in vmm-save vmm-restore manager-fdpass; do
	cc -std=c11 -Wall -Wextra -Werror "$src/docs/examples/$ex.c" \
		$(pkg-config --cflags --libs snapmr) -Wl,-rpath,"$root/$libdir" -o "$dest/$ex"
done
cd "$dest"
./vmm-save "$dest/example.snap"
./vmm-restore "$dest/example.snap" pc.ram
head -c 4M /dev/urandom >"$dest/ram.img"
truncate -s 16M "$dest/ram.img"
PATH=$root/bin:$PATH ./manager-fdpass "$dest/managed.snap" "pc.ram=$dest/ram.img"
"$root/bin/snaprestore" --verify "$dest/managed.snap"
echo "install: header, symbols, ABI and examples OK"
