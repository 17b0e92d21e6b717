# SPDX-License-Identifier: MIT
# The one helper library of the Python test suites (tests/integration,
# tests/faults, tests/fdpass, tests/qemu): locate the binaries, make scratch
# directories, generate page patterns, run the tools and check their output,
# and run named cases to the closing "NAME: N passed, N failed, N skipped"
# line (exit 0, 1, or 77 when every case skipped). A script finds it with
#   sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
#                                   "..", "lib"))
#   from snaptest import *

import atexit
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback

PAGE = 4096
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
ZERO_PAGE = bytes(PAGE)

EXIT_SKIP = 77
KEEP = bool(os.environ.get("SNAPMR_TEST_KEEP"))
VERBOSE = bool(os.environ.get("SNAPMR_TEST_VERBOSE"))

_here = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(_here, "..", ".."))
_default_build = os.path.join(ROOT, "build")


def _binary(name):
    path = os.environ.get(name.upper())
    if not path:
        path = os.path.join(_default_build, name, name)
    return path


SNAPSAVE = _binary("snapsave")
SNAPRESTORE = _binary("snaprestore")


# Text a sanitizer prints when it finds something, even if it lets the program go on.
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:")


class Failure(Exception):
    pass


class Skip(Exception):
    pass


def fail(msg):
    raise Failure(msg)


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def note(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------- directories

_dirs = []
_mounts = []


def _cleanup_dirs():
    for m in reversed(_mounts):
        subprocess.run(["umount", "-l", m], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    for d in reversed(_dirs):
        if KEEP:
            print("kept %s" % d)
            continue
        # a failed test may leave a mount behind
        for sub in [os.path.join(d, n) for n in os.listdir(d)] if os.path.isdir(d) else []:
            if os.path.ismount(sub):
                subprocess.run(["umount", "-l", sub], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup_dirs)


def scratch_base(kind="disk"):
    """Where scratch(kind) makes its directories."""
    return {"disk": os.environ.get("SNAPMR_TEST_DISK", "/var/tmp"),
            "shm": os.environ.get("SNAPMR_TEST_SHM", "/dev/shm")}[kind]


def scratch(kind="disk", tag="test"):
    """A new private directory: kind 'disk' under /var/tmp (O_DIRECT works),
    'shm' under /dev/shm (tmpfs). Removed at exit unless SNAPMR_TEST_KEEP."""
    base = scratch_base(kind)
    if not os.path.isdir(base):
        raise Skip("%s does not exist" % base)
    d = tempfile.mkdtemp(prefix="snapmr-%s-" % tag, dir=base)
    os.chmod(d, 0o755)
    _dirs.append(d)
    return d


def scratch_remove(d):
    """Removes a scratch directory early (big files in /dev/shm), unless
    SNAPMR_TEST_KEEP."""
    if KEEP:
        return
    shutil.rmtree(d, ignore_errors=True)
    if d in _dirs:
        _dirs.remove(d)


def mount_tmpfs(where, size):
    """Mounts a tmpfs of `size` bytes at where (created); Skip unless root
    and allowed. Unmounted at exit if the test does not umount() it."""
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


def listdir_all(d):
    return sorted(os.listdir(d))


def temp_leftovers(d):
    return sorted(n for n in os.listdir(d) if ".snapmr-" in n)


# -------------------------------------------------------------------- running

class Result:
    """A finished command: rc, out (bytes), err (str), seconds; replies and
    result are the lines and the final JSON result of an --fd-socket run."""

    def __init__(self, argv, rc, out, err, seconds, replies=None, result=None):
        self.argv = argv
        self.rc = rc
        self.out = out
        self.err = err
        self.seconds = seconds
        self.replies = replies or []
        self.result = result

    @property
    def outs(self):
        return self.out.decode("utf-8", "replace")

    def json(self):
        """The first JSON object line on stdout (--json statistics)."""
        for line in self.outs.splitlines():
            if line.startswith("{"):
                return json.loads(line)
        raise ValueError("no JSON on stdout: %r" % self.outs)

    def err_lines(self, include_valgrind=False):
        """Non-empty stderr lines, without valgrind's '==PID==' lines."""
        return [l for l in self.err.splitlines()
                if l.strip() and (include_valgrind or not l.startswith("=="))]

    def describe(self):
        cmd = " ".join(_quote(a) for a in self.argv)
        s = "command: %s\n  exit %s\n  stderr: %s\n  stdout: %s" % (
            cmd, self.rc, self.err.strip() or "(empty)",
            (self.outs.strip()[:2000] or "(empty)"))
        if self.replies:
            s += "\n  replies: %r" % self.replies
        return s


def _quote(a):
    a = str(a)
    if a and all(c.isalnum() or c in "-_./=:,@%+" for c in a):
        return a
    return "'" + a.replace("'", "'\\''") + "'"


def run(argv, input=None, stdin=None, timeout=600, env=None, extra_env=None,
        allow_signal=False, preexec_fn=None, pass_fds=(), wrapper=(), user=None):
    """Runs argv, returns a Result with rc, out (bytes), err (str). A death by
    signal is a failure unless allow_signal; so are a hang (timeout seconds)
    and a sanitizer report on stderr. env replaces the environment,
    extra_env adds to it; pass_fds are inherited with the same numbers;
    wrapper is a command prefix (valgrind, strace, unshare ...); user a
    (uid, gid) to drop to after fork (needs root)."""
    argv = [str(a) for a in list(wrapper) + list(argv)]
    if extra_env:
        env = dict(os.environ if env is None else env)
        env.update(extra_env)
    if wrapper and os.path.basename(argv[0]) == "strace":
        # LeakSanitizer (in ASan builds) cannot run under ptrace.
        env = dict(os.environ if env is None else env)
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    t0 = time.monotonic()
    if VERBOSE:
        print("+ " + " ".join(_quote(a) for a in argv), flush=True)
    kw = {}
    if input is not None:
        kw["input"] = input
    elif stdin is not None:
        kw["stdin"] = stdin
    else:
        kw["stdin"] = subprocess.DEVNULL
    if user is not None:
        kw.update(user=user[0], group=user[1], extra_groups=[])
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout, env=env, preexec_fn=preexec_fn,
                           pass_fds=tuple(pass_fds), **kw)
    except subprocess.TimeoutExpired:
        fail("hang: no exit after %ss: %s" % (timeout, " ".join(argv)))
    res = Result(argv, p.returncode, p.stdout, p.stderr.decode("utf-8", "replace"),
                 time.monotonic() - t0)
    if res.rc < 0 and not allow_signal:
        fail("killed by signal %d (crash?)\n  %s" % (-res.rc, res.describe()))
    for m in SANITIZER_MARKS:
        if m in res.err:
            fail("sanitizer report (%s)\n  %s" % (m, res.describe()))
    return res


def snapsave(*args, **kw):
    return run([SNAPSAVE] + list(args), **kw)


def snaprestore(*args, **kw):
    return run([SNAPRESTORE] + list(args), **kw)


def ok(res, what=""):
    """Asserts success and returns the result."""
    if res.rc != 0:
        fail("%sexpected success\n  %s" % (what + ": " if what else "", res.describe()))
    return res


def error_lines(res):
    """Non-empty stderr lines."""
    return [l for l in res.err.splitlines() if l.strip()]


def expect_error(res, rc, *needles, prog=None, what="", notes_ok=False):
    """Asserts exit status rc and exactly one line on stderr that starts with
    the program name and contains every needle (case-sensitive; a compiled
    re.Pattern must match). Valgrind's lines do not count, nor do the
    program's 'PROG: note: ' lines if notes_ok."""
    label = (what + ": ") if what else ""
    prog = prog or os.path.basename(res.argv[0])
    if res.rc < 0:
        fail("%skilled by signal %d\n  %s" % (label, -res.rc, res.describe()))
    if res.rc != rc:
        fail("%sexpected exit status %d\n  %s" % (label, rc, res.describe()))
    lines = res.err_lines()
    if notes_ok:
        lines = [l for l in lines if not l.startswith(prog + ": note: ")]
    if len(lines) != 1:
        fail("%sexpected exactly one line on stderr, got %d\n  %s" % (label, len(lines),
                                                                      res.describe()))
    if not lines[0].startswith(prog + ": "):
        fail("%sstderr does not start with '%s: '\n  %s" % (label, prog, res.describe()))
    for n in needles:
        if isinstance(n, re.Pattern):
            check(n.search(lines[0]), "%sstderr does not match %r\n  %s" % (
                label, n.pattern, res.describe()))
        elif n not in lines[0]:
            fail("%sstderr does not mention %r\n  %s" % (label, n, res.describe()))
    return lines[0]


def all_file_name(name):
    """The file name snaprestore --all gives a block: percent-encoding of
    everything but [A-Za-z0-9-_@:+] and '.' not in first position."""
    out = []
    for i, ch in enumerate(name.encode()):
        c = chr(ch)
        if c.isascii() and (c.isalnum() or c in "-_@:+" or (c == "." and i > 0)):
            out.append(c)
        else:
            out.append("%%%02X" % ch)
    return "".join(out)


def parse_json(res, what=""):
    try:
        return json.loads(res.outs)
    except ValueError as e:
        fail("%s: stdout is not JSON (%s)\n  %s" % (what or "json", e, res.describe()))


# ------------------------------------------------------------------- patterns

_pool = None
_POOL_SIZE = 8 * MiB


def _random_pool():
    global _pool
    if _pool is None:
        _pool = os.urandom(_POOL_SIZE + PAGE)
    return _pool


class Pattern:
    """A page layout: runs of (kind, pages, arg). Kinds: 'rand' (unique random
    pages), 'zero' (zero bytes written), 'hole' (never written: a hole in the
    file), 'fill' (one repeated non-zero byte arg), 'edge' (zero page with one
    non-zero byte at offset arg)."""

    NONZERO = ("rand", "fill", "edge")

    def __init__(self, runs, seed):
        self.runs = runs
        self.seed = seed
        self.pages = sum(n for _, n, _ in runs)
        self.size = self.pages * PAGE
        self.nonzero_pages = sum(n for k, n, _ in self.runs if k in self.NONZERO)
        self.zero_pages = self.pages - self.nonzero_pages

    def write(self, path, chunk_pages=2048):
        """Writes the pattern to path (created or truncated)."""
        pool = _random_pool()
        poolpages = _POOL_SIZE // PAGE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            page = 0
            for kind, n, arg in self.runs:
                done = 0
                while done < n:
                    k = min(n - done, chunk_pages)
                    off = (page + done) * PAGE
                    if kind == "hole":
                        pass
                    elif kind == "zero":
                        _pwrite_all(fd, bytes(k * PAGE), off)
                    elif kind == "fill":
                        _pwrite_all(fd, bytes([arg]) * (k * PAGE), off)
                    elif kind == "edge":
                        pg = bytearray(PAGE)
                        pg[arg] = 0x5A
                        _pwrite_all(fd, bytes(pg) * k, off)
                    elif kind == "rand":
                        start = ((page + done) * 7919 + self.seed * 104729) % poolpages
                        buf = bytearray(k * PAGE)
                        first = min(k, poolpages - start)
                        buf[:first * PAGE] = pool[start * PAGE:(start + first) * PAGE]
                        if first < k:
                            buf[first * PAGE:] = pool[:(k - first) * PAGE]
                        for i in range(k):
                            # every page unique: seed and page index up front
                            struct.pack_into("<QQ", buf, i * PAGE, self.seed | 1 << 63,
                                             page + done + i)
                        _pwrite_all(fd, buf, off)
                    else:
                        raise ValueError(kind)
                    done += k
                page += n
            os.ftruncate(fd, self.size)
        finally:
            os.close(fd)
        return self


def _pwrite_all(fd, buf, off):
    mv = memoryview(buf)
    while len(mv):
        n = os.pwrite(fd, mv, off)
        mv = mv[n:]
        off += n


def pattern(kind, size, seed=1):
    """'zero' (written zeros), 'holes' (a file of holes), 'random', 'mixed'."""
    assert size % PAGE == 0 and size > 0
    pages = size // PAGE
    if kind == "zero":
        return Pattern([("zero", pages, None)], seed)
    if kind == "holes":
        return Pattern([("hole", pages, None)], seed)
    if kind == "random":
        return Pattern([("rand", pages, None)], seed)
    if kind != "mixed":
        raise ValueError(kind)
    rng = random.Random(seed)
    # every kind early on, including a page of one repeated byte and pages
    # that are zero but for their first or last byte
    runs = [("rand", 1, None), ("zero", 1, None), ("fill", 1, 0xAB), ("edge", 1, PAGE - 1),
            ("hole", 2, None), ("rand", 3, None), ("edge", 1, 0), ("fill", 1, 0x01),
            ("zero", 5, None), ("rand", 1, None)]
    lens = [1, 1, 2, 3, 5, 8, 31, 64, 65, 200, 1000]
    kinds = ["rand", "rand", "zero", "hole", "hole", "fill", "edge"]
    left = pages
    out = []
    for kind, n, arg in runs:
        if left == 0:
            break
        n = min(n, left)
        out.append((kind, n, arg))
        left -= n
    big = max(1, pages // 64)
    while left:
        kind = rng.choice(kinds)
        n = min(left, rng.choice(lens + [big]))
        arg = None
        if kind == "fill":
            arg = rng.randrange(1, 256)
        elif kind == "edge":
            arg = rng.randrange(PAGE)
        out.append((kind, n, arg))
        left -= n
    return Pattern(out, seed)


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def fill_file(path, size, byte):
    with open(path, "wb") as f:
        chunk = bytes([byte]) * min(size, 8 * MiB)
        left = size
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n


# ----------------------------------------------------------------- comparing

def compare_files(expect, got, what=None):
    """Byte comparison of two files; names the first differing page."""
    what = what or got
    if not os.path.exists(got):
        fail("%s: %s does not exist" % (what, got))
    se, sg = os.path.getsize(expect), os.path.getsize(got)
    if se != sg:
        fail("%s: size %d, expected %d (as %s)" % (what, sg, se, expect))
    chunk = 16 * MiB
    with open(expect, "rb") as fe, open(got, "rb") as fg:
        off = 0
        while True:
            a = fe.read(chunk)
            b = fg.read(chunk)
            if a != b:
                for i in range(0, len(a), PAGE):
                    if a[i:i + PAGE] != b[i:i + PAGE]:
                        pa, pb = a[i:i + PAGE], b[i:i + PAGE]
                        j = next(x for x in range(len(pa)) if pa[x:x + 1] != pb[x:x + 1])
                        fail("%s differs from %s: first at byte 0x%x (page %d): "
                             "got 0x%02x, expected 0x%02x" % (
                                 what, expect, off + i + j, (off + i) // PAGE,
                                 pb[j] if j < len(pb) else -1, pa[j]))
            if not a:
                return
            off += len(a)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(8 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def same_bytes(a, b):
    return os.path.getsize(a) == os.path.getsize(b) and sha256(a) == sha256(b)


def allocated(path):
    return os.stat(path).st_blocks * 512


# --------------------------------------------------------------- capabilities

_engine_cache = {}


def engine_available(engine, workdir):
    """None if the engine works for a save here, else the reason it does not."""
    if engine in _engine_cache:
        return _engine_cache[engine]
    src = os.path.join(workdir, ".engine-probe.ram")
    out = os.path.join(workdir, ".engine-probe.snap")
    pattern("random", 2 * PAGE).write(src)
    args = ["-o", out, "--ram", "pc.ram=" + src, "--json", "--io", engine]
    if engine == "aio":
        args += ["--direct", "on"]
    r = snapsave(*args)
    reason = None
    if r.rc != 0:
        reason = "engine '%s' unavailable: %s" % (engine, r.err.strip())
    else:
        st = parse_json(r, "probe")
        if st.get("engine") != engine:
            reason = "engine '%s' fell back to '%s'" % (engine, st.get("engine"))
    for p in (src, out):
        if os.path.exists(p):
            os.unlink(p)
    _engine_cache[engine] = reason
    return reason


def direct_supported(d):
    """True if O_DIRECT opens and writes work in directory d."""
    p = os.path.join(d, ".odirect-probe")
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        import mmap
        m = mmap.mmap(-1, PAGE)
        os.pwrite(fd, m, 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(p)


# --------------------------------------------------------------------- driver

class Cases:
    """Runs named sub-cases, collects failures and skips, then exits 0, 1 or
    77 (every case skipped). only: run just the cases with these labels."""

    def __init__(self, name, only=()):
        self.name = name
        self.only = set(only)
        self.failures = []
        self.skips = []
        self.passed = 0
        self.t0 = time.monotonic()

    def case(self, label, fn, *args, **kw):
        if self.only and label not in self.only:
            return
        t = time.monotonic()
        try:
            fn(*args, **kw)
        except Skip as e:
            self.skips.append((label, str(e)))
            note("SKIP %s: %s" % (label, e))
            return
        except Failure as e:
            self.failures.append((label, str(e)))
            note("FAIL %s: %s" % (label, e))
            return
        except Exception:
            self.failures.append((label, traceback.format_exc()))
            note("FAIL %s: exception\n%s" % (label, traceback.format_exc()))
            return
        self.passed += 1
        note("ok   %s (%.2fs)" % (label, time.monotonic() - t))

    def skip(self, label, reason):
        self.skips.append((label, reason))
        note("SKIP %s: %s" % (label, reason))

    def finish(self):
        dt = time.monotonic() - self.t0
        note("%s: %d passed, %d failed, %d skipped in %.1fs" % (
            self.name, self.passed, len(self.failures), len(self.skips), dt))
        if self.failures:
            for label, msg in self.failures:
                print("FAILED %s: %s" % (label, msg.splitlines()[0] if msg else ""),
                      file=sys.stderr)
            sys.exit(1)
        if not self.passed:
            note("all cases skipped")
            sys.exit(EXIT_SKIP)
        sys.exit(0)


def require_binaries():
    for b in (SNAPSAVE, SNAPRESTORE):
        if not os.access(b, os.X_OK):
            print("FAIL: binary %s not found (set SNAPSAVE/SNAPRESTORE)" % b)
            sys.exit(1)


def info_json(path, *extra):
    r = ok(snaprestore("--info", "--json", path, *extra), "--info --json %s" % path)
    return parse_json(r, "--info --json")


# ----------------------------------------------------------------- round trip

class Block:
    def __init__(self, name, src, pat):
        self.name = name
        self.src = src
        self.pat = pat


def make_block(name, d, pat, fname=None):
    fname = fname or name.replace("/", "_").lstrip(".") or "blk"
    path = os.path.join(d, fname + ".src")
    pat.write(path)
    return Block(name, path, pat)


def check_save_stats(st, blocks, what, devstate_len=0):
    total = sum(b.pat.size for b in blocks)
    nz = sum(b.pat.nonzero_pages for b in blocks)
    zp = sum(b.pat.zero_pages for b in blocks)
    check(st.get("status") == "completed", "%s: status %r" % (what, st.get("status")))
    ram = st.get("ram", {})
    check(ram.get("total") == total, "%s: ram.total %s, expected %d" % (what, ram.get("total"), total))
    check(ram.get("normal") == nz,
          "%s: ram.normal %s, expected %d non-zero pages" % (what, ram.get("normal"), nz))
    check(ram.get("normal-bytes") == nz * PAGE,
          "%s: ram.normal-bytes %s, expected %d" % (what, ram.get("normal-bytes"), nz * PAGE))
    check(ram.get("duplicate") == zp,
          "%s: ram.duplicate %s, expected %d zero pages" % (what, ram.get("duplicate"), zp))
    check(st.get("device-state-bytes") == devstate_len,
          "%s: device-state-bytes %s, expected %d" % (what, st.get("device-state-bytes"),
                                                     devstate_len))


def check_info(info, blocks, what, devstate_len=0):
    names = [b["name"] for b in info.get("blocks", [])]
    check(names == [b.name for b in blocks],
          "%s: --info blocks %r, expected %r" % (what, names, [b.name for b in blocks]))
    for b, ib in zip(blocks, info["blocks"]):
        check(ib["length"] == b.pat.size,
              "%s: block %s length %s, expected %d" % (what, b.name, ib["length"], b.pat.size))
        check(ib["pages"] == b.pat.pages,
              "%s: block %s pages %s, expected %d" % (what, b.name, ib["pages"], b.pat.pages))
        check(ib["pages-present"] == b.pat.nonzero_pages,
              "%s: block %s pages-present %s, expected %d non-zero pages" % (
                  what, b.name, ib["pages-present"], b.pat.nonzero_pages))
    check(info.get("ram-total") == sum(b.pat.size for b in blocks),
          "%s: ram-total %s" % (what, info.get("ram-total")))
    ds = info.get("device-state")
    check(ds is not None and ds.get("size") == devstate_len,
          "%s: device-state %r, expected size %d" % (what, ds, devstate_len))


def check_sparse(path, blocks, what, extra=0):
    nz = sum(b.pat.nonzero_pages for b in blocks) * PAGE
    alloc = allocated(path)
    limit = nz + extra + 4 * MiB
    check(alloc <= limit, "%s: %s allocates %d bytes, expected at most %d "
          "(non-zero data %d + 4 MiB): zero pages were written" % (
              what, path, alloc, limit, nz))
    check(alloc >= nz, "%s: %s allocates %d bytes, less than its %d bytes of data" % (
        what, path, alloc, nz))


def save_blocks(out, blocks, *opts, stdin_data=None, what="save"):
    args = ["-o", out, "--json"]
    for b in blocks:
        args += ["--ram", "%s=%s" % (b.name, b.src)]
    r = ok(snapsave(*(args + list(opts)), input=stdin_data), what)
    return parse_json(r, what)


def restore_blocks(snap, blocks, dest_dir, *opts, what="restore", compare=True):
    args = [snap, "--json"]
    dests = []
    for i, b in enumerate(blocks):
        dest = os.path.join(dest_dir, "dest%d.ram" % i)
        dests.append(dest)
        args += ["--ram", "%s=%s" % (b.name, dest)]
    r = ok(snaprestore(*(args + list(opts))), what)
    st = parse_json(r, what)
    if compare:
        for b, dest in zip(blocks, dests):
            compare_files(b.src, dest, "%s: block %s (%s)" % (what, b.name, dest))
    return st, dests


def roundtrip(blocks, out, dest_dir, save_opts=(), restore_opts=(), what="round trip",
              sparse=True, info=True):
    st = save_blocks(out, blocks, *save_opts, what=what + ": save")
    check_save_stats(st, blocks, what + ": save --json")
    if info:
        check_info(info_json(out), blocks, what + ": --info --json")
    if sparse:
        check_sparse(out, blocks, what)
    rst, dests = restore_blocks(out, blocks, dest_dir, *restore_opts, what=what + ": restore")
    for d in dests:
        os.unlink(d)
    return st, rst
