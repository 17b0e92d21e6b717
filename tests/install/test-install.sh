#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs the library into a scratch prefix and builds the documented VMM
# example against it with pkg-config only, then runs it.
set -euo pipefail
build=$1
src=$2
dest=$(mktemp -d /var/tmp/snapmr-install.XXXXXX)
trap 'rm -rf "$dest"' EXIT
meson install -C "$build" --destdir "$dest" --quiet >/dev/null
prefix=$(meson introspect "$build" --buildoptions |
	python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"))')
libdir=$(meson introspect "$build" --buildoptions |
	python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "libdir"))')
root=$dest$prefix
pcdir=$root/$libdir/pkgconfig
[ -f "$pcdir/snapmr.pc" ] || { echo "snapmr.pc not installed under $pcdir"; exit 1; }
[ -f "$root/include/snapmr/snapmr.h" ] || { echo "snapmr.h not installed"; exit 1; }
export PKG_CONFIG_PATH=$pcdir PKG_CONFIG_SYSROOT_DIR=$dest
cc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror "$src/docs/examples/vmm-save.c" \
	$(pkg-config --cflags --libs snapmr) -Wl,-rpath,"$root/$libdir" -o "$dest/vmm-save"
cd "$dest" && ./vmm-save "$dest/example.snap"
