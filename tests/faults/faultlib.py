# SPDX-License-Identifier: MIT
# Helpers shared by the fault-injection and corruption tests: the tools and
# the shim, scratch directories, page patterns, running a tool with an
# injected fault, and the checks every failure must pass (exit 1, one line
# naming the file, no crash, no sanitizer report).

import atexit
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

PAGE = 4096
KiB = 1024
MiB = 1024 * KiB
EXIT_SKIP = 77

_here = os.path.dirname(os.path.abspath(__file__))
_root = os.path.normpath(os.path.join(_here, "..", ".."))
SNAPSAVE = os.environ.get("SNAPSAVE") or os.path.join(_root, "build", "snapsave", "snapsave")
SNAPRESTORE = os.environ.get("SNAPRESTORE") or os.path.join(_root, "build", "snaprestore",
                                                             "snaprestore")
FAILSHIM = os.environ.get("FAILSHIM") or os.path.join(_root, "build", "tests", "faults",
                                                       "failshim.so")
DATA = os.environ.get("SNAPMR_TEST_DATA") or os.path.join(_root, "tests", "data")
KEEP = bool(os.environ.get("SNAPMR_TEST_KEEP"))
VERBOSE = bool(os.environ.get("SNAPMR_TEST_VERBOSE"))

# Text a sanitizer prints when it finds something, even if it lets the program go on.
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:")


# The case runner and the failure/skip vocabulary are the integration suite's.
sys.path.insert(0, os.path.join(_here, "..", "integration"))
from common import (Cases, Failure, Result, Skip, check, error_lines,  # noqa: E402,F401
                    expect_error, fail, note, sha256)


# ----------------------------------------------------------------- scratch

_dirs = []
_mounts = []


def _cleanup():
    for m in reversed(_mounts):
        subprocess.run(["umount", "-l", m], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    for d in reversed(_dirs):
        if KEEP:
            print("kept %s" % d)
        else:
            shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def scratch(kind="disk"):
    """A private directory under /var/tmp ('disk') or /dev/shm ('shm')."""
    base = {"disk": os.environ.get("SNAPMR_TEST_DISK", "/var/tmp"),
            "shm": os.environ.get("SNAPMR_TEST_SHM", "/dev/shm")}[kind]
    if not os.path.isdir(base):
        raise Skip("%s does not exist" % base)
    d = tempfile.mkdtemp(prefix="snapmr-ft-", dir=base)
    _dirs.append(d)
    return d


def mount_tmpfs(where, size):
    """Mounts a tmpfs of `size` bytes at where; Skip unless root and allowed."""
    if os.geteuid() != 0:
        raise Skip("mounting a small tmpfs for real ENOSPC needs root")
    os.makedirs(where, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d,mode=0755" % size, "tmpfs",
                        where], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise Skip("cannot mount tmpfs: %s" % r.stderr.decode().strip())
    _mounts.append(where)
    return where


def umount(where):
    subprocess.run(["umount", where], check=True)
    _mounts.remove(where)


def temp_leftovers(d):
    return sorted(n for n in os.listdir(d) if ".snapmr-" in n)


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


def run(argv, extra_env=None, timeout=300, stdin=None, input=None, pass_fds=()):
    """Runs argv; fails the test on a crash, a hang or a sanitizer report."""
    argv = [str(a) for a in argv]
    env = dict(os.environ)
    if extra_env:
        env.update(extra_env)
    if VERBOSE:
        note("+ " + " ".join(argv))
    kw = {"input": input} if input is not None else {
        "stdin": stdin if stdin is not None else subprocess.DEVNULL}
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                           timeout=timeout, pass_fds=pass_fds, **kw)
    except subprocess.TimeoutExpired:
        fail("hang: no exit after %ss: %s" % (timeout, " ".join(argv)))
    res = Result(argv, p.returncode, p.stdout, p.stderr.decode("utf-8", "replace"),
                 time.monotonic() - t0)
    no_crash(res)
    return res


def no_crash(res):
    if res.rc < 0:
        fail("killed by signal %d (crash)\n  %s" % (-res.rc, res.describe()))
    for m in SANITIZER_MARKS:
        if m in res.err:
            fail("sanitizer report (%s)\n  %s" % (m, res.describe()))


def snapsave(*args, **kw):
    return run([SNAPSAVE] + list(args), **kw)


def snaprestore(*args, **kw):
    return run([SNAPRESTORE] + list(args), **kw)


def ok(res, what):
    if res.rc != 0:
        fail("%s: expected success\n  %s" % (what, res.describe()))
    return res


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


def same_bytes(a, b):
    return os.path.getsize(a) == os.path.getsize(b) and sha256(a) == sha256(b)


def compare(expect, got, what):
    if not os.path.exists(got):
        fail("%s: %s does not exist" % (what, got))
    with open(expect, "rb") as fe, open(got, "rb") as fg:
        a, b = fe.read(), fg.read()
    if a == b:
        return
    if len(a) != len(b):
        fail("%s: %s has %d bytes, expected %d" % (what, got, len(b), len(a)))
    i = next(i for i in range(len(a)) if a[i] != b[i])
    fail("%s: %s differs from %s at byte 0x%x (page %d)" % (what, got, expect, i, i // PAGE))


# ------------------------------------------------------------------- driver

def require_tools(shim=False):
    need = [SNAPSAVE, SNAPRESTORE]
    for b in need:
        if not os.access(b, os.X_OK):
            print("FAIL: %s not found (set SNAPSAVE/SNAPRESTORE)" % b)
            sys.exit(1)
    if shim and not os.path.exists(FAILSHIM):
        print("FAIL: %s not found (set FAILSHIM)" % FAILSHIM)
        sys.exit(1)
