#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Round trips of one block over sizes (4 KiB, 1 MiB + 4 KiB, 64 MiB) and
# contents (written zeros, holes, random, mixed): bytes, --json statistics,
# --info --json and sparseness of the saved file.

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403

SIZES = [("4K", 4 * KiB), ("1M+4K", 1 * MiB + 4 * KiB), ("64M", 64 * MiB)]
KINDS = ["zero", "random", "mixed"]


def one(size, kind, seed, src_dir, out_dir, dest_dir):
    pat = pattern(kind, size, seed)
    blk = make_block("pc.ram", src_dir, pat, "pc.ram-%d" % seed)
    out = os.path.join(out_dir, "rt-%d.snap" % seed)
    st, rst = roundtrip([blk], out, dest_dir, what="%s %s" % (kind, size))
    # the restore reads exactly the pages the save wrote
    check(rst["ram"]["normal"] == pat.nonzero_pages,
          "restore --json: ram.normal %s, expected %d" % (rst["ram"]["normal"],
                                                          pat.nonzero_pages))
    check(rst["ram"]["total"] == size, "restore --json: ram.total %s" % rst["ram"]["total"])
    os.unlink(out)
    os.unlink(blk.src)


def main():
    require_binaries()
    src_dir = scratch("shm")
    dest_dir = scratch("shm")
    out_dir = scratch("disk")
    t = Cases("roundtrip")
    seed = 1
    for label, size in SIZES:
        for kind in KINDS:
            seed += 1
            t.case("%s %s" % (kind, label), one, size, kind, seed, src_dir, out_dir, dest_dir)
    # a fresh VM's RAM: a file of holes, never touched
    t.case("holes 64M", one, 64 * MiB, "holes", 100, src_dir, out_dir, dest_dir)
    t.finish()


if __name__ == "__main__":
    main()
