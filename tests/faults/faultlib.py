# SPDX-License-Identifier: MIT
# Helpers of the fault-injection and corruption tests only: the shim and its
# environment, page images made of runs, and the check every failure must
# pass (exit 1, one line naming the file). Running the tools, scratch
# directories, tmpfs mounts, comparing and the case runner are tests/lib's.

import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403

FAILSHIM = os.environ.get("FAILSHIM") or os.path.join(ROOT, "build", "tests", "faults",
                                                       "failshim.so")
DATA = os.environ.get("SNAPMR_TEST_DATA") or os.path.join(ROOT, "tests", "data")


# ----------------------------------------------------------------- running

def shim_env(op, nth, err="EIO", substr=None, count=1, mode=None, report=None):
    """Environment that makes the shim fail call `nth` of `op` (0: count only)."""
    env = {"LD_PRELOAD": FAILSHIM, "FAILSHIM_OP": op, "FAILSHIM_NTH": str(nth),
           "FAILSHIM_ERRNO": err, "FAILSHIM_COUNT": str(count)}
    if substr:
        env["FAILSHIM_PATH_SUBSTR"] = substr
    if mode:
        env["FAILSHIM_MODE"] = mode
    if report:
        env["FAILSHIM_REPORT"] = report
    # An ASan build wants its runtime first; the shim goes in front of it.
    asan = os.environ.get("ASAN_OPTIONS", "")
    env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "verify_asan_link_order=0"
    return env


def one_line_error(res, what, *needles):
    """Exit 1 and exactly one stderr line 'PROG: ...' holding every needle."""
    return expect_error(res, 1, *needles, what=what)


# ----------------------------------------------------------------- patterns

def write_pattern(path, runs, seed):
    """Writes a RAM image: runs of (kind, pages), kinds 'rand', 'zero'
    (written zeros), 'hole' (never written), 'fill' (one repeated byte),
    'edge' (zero page but for one byte). Returns the size."""
    rng = random.Random(seed)
    pos = 0
    with open(path, "wb") as f:
        for kind, n in runs:
            if kind == "hole":
                pos += n * PAGE
                continue
            f.seek(pos)
            if kind == "rand":
                # unique pages: a random block with the page number stamped in
                blk = bytearray(rng.randbytes(n * PAGE))
                for i in range(n):
                    blk[i * PAGE:i * PAGE + 16] = (b"%08x%08x" % (seed & 0xffffffff,
                                                                  pos // PAGE + i))
                f.write(blk)
            elif kind == "zero":
                f.write(bytes(n * PAGE))
            elif kind == "fill":
                f.write(bytes([rng.randrange(1, 256)]) * (n * PAGE))
            elif kind == "edge":
                pg = bytearray(PAGE)
                pg[rng.randrange(PAGE)] = 0xA5
                f.write(bytes(pg) * n)
            else:
                raise ValueError(kind)
            pos += n * PAGE
        f.truncate(pos)
    return pos


def mixed_runs(pages, seed):
    """A random mix of every kind, `pages` long."""
    rng = random.Random(seed)
    runs, left = [], pages
    kinds = ["rand", "rand", "zero", "hole", "hole", "fill", "edge"]
    while left:
        n = min(left, rng.choice([1, 1, 2, 3, 5, 8, 17, 31, 64, 100]))
        runs.append((rng.choice(kinds), n))
        left -= n
    return runs


# ------------------------------------------------------------------- driver

def require_tools(shim=False):
    require_binaries()
    if shim and not os.path.exists(FAILSHIM):
        print("FAIL: %s not found (set FAILSHIM)" % FAILSHIM)
        sys.exit(1)
