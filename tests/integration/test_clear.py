#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# How a restore clears pages whose bit is clear in an existing destination:
# the result is byte-exact whatever each page held before (zeros, stale
# bytes, stale bytes behind a zero first word, a hole), in runs that start
# and end anywhere within the readers' 4 MiB units and their 256 KiB
# windows; a populated destination keeps every page it had (clear pages are
# written, never punched), and holes under clear pages stay holes.

import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403

SIZE = 24 * MiB
STALE = b"\xa5stale!\x5a" * (PAGE // 8)
# zero but for its last byte: a check of the first bytes alone would miss it
TAIL = bytes(PAGE - 1) + b"\x01"


def page_bytes(kind):
    return {"zero": bytes(PAGE), "stale": STALE, "tail": TAIL}[kind]


def layout(kinds, seed):
    """[(kind, first_page, npages)] covering SIZE: runs of the given kinds,
    1 to 300 pages long (windows are 64 pages, units 1024), so that stale
    memory meets zeros and holes at every offset."""
    rng = random.Random(seed)
    out, pg, pages = [], 0, SIZE // PAGE
    while pg < pages:
        n = min(pages - pg, rng.choice([1, 2, 3, 63, 64, 65, 100, 300]))
        out.append((rng.choice(kinds), pg, n))
        pg += n
    return out


def make_dest(path, runs):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, SIZE)
        for kind, first, n in runs:
            if kind != "hole":
                os.pwrite(fd, page_bytes(kind) * n, first * PAGE)
    finally:
        os.close(fd)


def hole_data_bytes(runs, blk):
    """Bytes of data pages that fall on holes of the destination: the only
    memory a restore may add."""
    data = bytearray(SIZE // PAGE)
    with open(blk.src, "rb") as f:
        for pg in range(SIZE // PAGE):
            data[pg] = any(f.read(PAGE))
    return sum(PAGE for kind, first, n in runs if kind == "hole"
               for pg in range(first, first + n) if data[pg])


def shm_huge(path):
    best, opts = "", ""
    with open("/proc/self/mounts") as f:
        for line in f:
            mnt, o = line.split()[1], line.split()[3]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, opts = mnt, o
    return any(o.startswith("huge=") and o != "huge=never" for o in opts.split(","))


def restore_over(env, kinds, seed):
    runs = [("stale", 0, SIZE // PAGE)] if kinds == ["stale"] else \
        [("zero", 0, SIZE // PAGE)] if kinds == ["zero"] else layout(kinds, seed)
    added = hole_data_bytes(runs, env.blk)
    for opts in ([], ["--io", "threads", "-j", "1"], ["--direct", "off", "-j", "3"],
                 ["--no-verify", "-j", "8"]):
        what = "destination of %s %s" % ("+".join(kinds), " ".join(opts))
        dest = os.path.join(env.shm, "clear.ram")
        make_dest(dest, runs)
        before = allocated(dest)
        ok(snaprestore(env.snap, "--ram", "pc.ram=" + dest, *opts), "restore into a " + what)
        compare_files(env.blk.src, dest, what)
        after = allocated(dest)
        if shm_huge(dest):      # a huge page may cover holes too
            check(after >= before, "%s: %d bytes allocated before, %d after: memory was "
                  "given back" % (what, before, after))
        else:
            check(after == before + added,
                  "%s: %d bytes allocated before, %d after, expected %d (populated pages "
                  "kept, holes under clear pages left alone)" % (what, before, after,
                                                                  before + added))
        os.unlink(dest)


class Env:
    def __init__(self):
        self.src = scratch("shm")
        self.shm = scratch("shm")
        self.out = scratch("disk")
        self.blk = make_block("pc.ram", self.src, pattern("mixed", SIZE, 90), "clear")
        self.snap = os.path.join(self.out, "clear.snap")
        ok(snapsave("-o", self.snap, "--ram", "pc.ram=" + self.blk.src), "save")
        nz = self.blk.pat.nonzero_pages
        check(0 < nz < SIZE // PAGE, "the pattern needs data and zero pages")


def main():
    require_binaries()
    env = Env()
    t = Cases("clear")
    t.case("restore over zeros keeps every page", restore_over, env, ["zero"], 1)
    t.case("restore over stale bytes keeps every page", restore_over, env, ["stale"], 2)
    t.case("restore over stale bytes behind zero first words", restore_over, env,
           ["stale", "tail"], 3)
    t.case("restore over holes and stale runs", restore_over, env, ["hole", "stale"], 4)
    t.case("restore over zeros, stale bytes and holes", restore_over, env,
           ["zero", "stale", "tail", "hole"], 5)
    t.finish()


if __name__ == "__main__":
    main()
