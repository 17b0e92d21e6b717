# SPDX-License-Identifier: MIT
# Start paused QEMU 10 guests whose RAM lives in /dev/shm files, fill that RAM
# with a reproducible pattern, save/load it as mapped-ram, and compare.

import atexit
import ctypes
import fcntl
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile

from qmp import QMP, QMPError, QMPTimeout

PAGE = 4096
QEMU = os.environ.get("QEMU", "qemu-system-x86_64")
MARKER_BYTE = 0xAB

_live = set()


def _kill_live():
    for vm in list(_live):
        vm.stop()


atexit.register(_kill_live)


def parse_size(s):
    """'256M', '1G', '4096', '0x1000' -> bytes."""
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*(0x[0-9a-fA-F]+|\d+)\s*([KMGT]?)i?B?\s*", str(s))
    if not m:
        raise ValueError(f"bad size {s!r}")
    shift = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]
    return int(m.group(1), 0) << shift


def kvm_usable():
    """True if /dev/kvm opens and can create a VM (not just exists)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, 0xAE00) != 12:           # KVM_GET_API_VERSION
            return False
        vmfd = fcntl.ioctl(fd, 0xAE01, 0)            # KVM_CREATE_VM
        os.close(vmfd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def default_accel():
    return os.environ.get("SNAPMR_ACCEL") or ("kvm" if kvm_usable() else "tcg")


def _pdeathsig():
    # QEMU must not outlive a test runner that was SIGKILLed.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# ---------------------------------------------------------------------------
# Pattern: deterministic page contents for one RAM backend.

def make_pattern(size, seed):
    """Returns a bytearray of `size` bytes built from a seeded PRNG.

    Runs of 1-64 pages alternate between random data and zero pages, with
    some "almost zero" pages (one non-zero byte, which zero-page detection
    must not drop). The first and last pages are random; one page is all
    MARKER_BYTE (at 100 MiB, or the middle of smaller backends).
    """
    if size % PAGE:
        raise ValueError("size must be a multiple of 4096")
    rng = random.Random(seed)
    npages = size // PAGE
    buf = bytearray(size)
    p = 0
    while p < npages:
        kind = rng.choices(("rand", "zero", "almost"), (5, 4, 1))[0]
        n = min(rng.randint(1, 64) if kind != "almost" else rng.randint(1, 3), npages - p)
        if kind == "rand":
            buf[p * PAGE:(p + n) * PAGE] = rng.randbytes(n * PAGE)
        elif kind == "almost":
            for i in range(p, p + n):
                buf[i * PAGE + rng.randrange(PAGE)] = rng.randint(1, 255)
        p += n
    buf[0:PAGE] = rng.randbytes(PAGE)
    buf[size - PAGE:size] = rng.randbytes(PAGE)
    marker = 100 << 20 if size > (100 << 20) + PAGE else (npages // 2) * PAGE
    buf[marker:marker + PAGE] = bytes([MARKER_BYTE]) * PAGE
    return buf


def write_sparse(path, data):
    """Writes `data` to `path`, leaving all-zero pages as holes."""
    zero = bytes(PAGE)
    with open(path, "wb") as f:
        f.truncate(len(data))
        mv = memoryview(data)
        for off in range(0, len(data), PAGE):
            page = mv[off:off + PAGE]
            if page != zero:
                f.seek(off)
                f.write(page)


def fill_file(path, data):
    """Overwrites the start of an existing file (a live RAM backend) in place."""
    with open(path, "r+b") as f:
        f.write(data)
        f.flush()


def compare_file(path, expect, limit=8):
    """Compares `path` with `expect` (bytes or a file path) page by page,
    streaming 1 MiB at a time.

    Returns (number of differing pages, [first `limit` differing page
    indices]); a length difference counts as a mismatch of the tail pages.
    """
    chunk = 1 << 20
    if isinstance(expect, (str, os.PathLike)):
        ef = open(expect, "rb")
        read_expect = ef.read
    else:
        ef, mv, pos = None, memoryview(expect), [0]

        def read_expect(n):
            b = mv[pos[0]:pos[0] + n]
            pos[0] += len(b)
            return b
    bad, first, off = 0, [], 0
    try:
        with open(path, "rb") as f:
            while True:
                got, exp = f.read(chunk), read_expect(chunk)
                if not got and not exp:
                    break
                if got != exp:
                    for p in range(0, max(len(got), len(exp)), PAGE):
                        if got[p:p + PAGE] != exp[p:p + PAGE]:
                            bad += 1
                            if len(first) < limit:
                                first.append((off + p) // PAGE)
                off += max(len(got), len(exp))
    finally:
        if ef:
            ef.close()
    return bad, first


# ---------------------------------------------------------------------------
# The VM.

class VM:
    """A paused QEMU with file-backed RAM; use as a context manager.

    Backends: "ram0" (main RAM, `size`) and, if `dimm_size` is set, "ram1"
    plugged as pc-dimm "dimm0". Their files live in `shm_dir` and are
    removed by stop().
    """

    def __init__(self, machine="q35", size="256M", dimm_size=None, incoming=False,
                 accel=None, shm_dir="/dev/shm", extra_args=(), keep_shm=False):
        self.machine = machine
        self.size = parse_size(size)
        self.dimm_size = parse_size(dimm_size) if dimm_size else 0
        self.incoming = incoming
        self.accel = accel or default_accel()
        self.extra_args = list(extra_args)
        self.keep_shm = keep_shm
        self.tmpdir = tempfile.mkdtemp(prefix="snapmr-vm-")
        tag = os.path.basename(self.tmpdir)
        self.backends = {"ram0": (os.path.join(shm_dir, f"{tag}-ram0"), self.size)}
        if self.dimm_size:
            self.backends["ram1"] = (os.path.join(shm_dir, f"{tag}-ram1"), self.dimm_size)
        self.sock = os.path.join(self.tmpdir, "qmp.sock")
        self.log = os.path.join(self.tmpdir, "qemu.log")
        self.proc = None
        self.qmp = None

    def args(self):
        a = [QEMU, "-S", "-nodefaults", "-display", "none",
             "-machine", f"{self.machine},memory-backend=ram0",
             "-accel", self.accel]
        # A bare -m number means MiB; the "b" suffix makes it bytes.
        mem = f"{self.size}b"
        if self.dimm_size:
            mem += f",slots=2,maxmem={self.size + self.dimm_size}b"
        a += ["-m", mem]
        for bid, (path, size) in self.backends.items():
            a += ["-object",
                  f"memory-backend-file,id={bid},size={size},mem-path={path},share=on"]
        if self.dimm_size:
            a += ["-device", "pc-dimm,id=dimm0,memdev=ram1"]
        a += ["-qmp", f"unix:{self.sock},server=on,wait=off"]
        if self.incoming:
            a += ["-incoming", "defer"]
        return a + self.extra_args

    def start(self, timeout=30.0):
        logf = open(self.log, "wb")
        try:
            self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, preexec_fn=_pdeathsig)
        finally:
            logf.close()
        _live.add(self)
        try:
            self.qmp = QMP(self.sock, timeout=timeout, alive=lambda: self.proc.poll() is None)
        except Exception as e:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"QEMU did not start: {e}\n{tail}") from None
        return self

    def log_tail(self, n=20):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        """Quits QEMU (killing it if needed) and removes its files. Idempotent."""
        if self.qmp is not None:
            try:
                self.qmp.execute("quit", timeout=5)
            except Exception:
                pass
            self.qmp.close()
            self.qmp = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        _live.discard(self)
        if not self.keep_shm:
            for path, _ in self.backends.values():
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def backend_path(self, bid="ram0"):
        return self.backends[bid][0]

    # -- introspection -----------------------------------------------------

    def machine_type(self):
        """The resolved machine type, e.g. 'pc-q35-10.0' for 'q35'."""
        t = self.qmp.execute("qom-get", {"path": "/machine", "property": "type"})
        return t[:-len("-machine")] if t.endswith("-machine") else t

    def ramblocks(self):
        """RAM blocks as QEMU lists them ('info ramblock'): a list of dicts
        with name, page_size, offset, used, total (ints) in QEMU's order."""
        out = self.qmp.hmp("info ramblock")
        blocks = []
        for line in out.splitlines():
            f = line.split()
            if len(f) < 6 or f[0] == "Block" or not f[-4].startswith("0x"):
                continue
            # name may not contain spaces in practice; PSize is "4 KiB".
            name, psz, unit = f[0], f[1], f[2]
            blocks.append({"name": name,
                           "page_size": parse_size(psz + unit[0]),
                           "offset": int(f[3], 16),
                           "used": int(f[4], 16),
                           "total": int(f[5], 16)})
        return blocks

    # -- patterns ----------------------------------------------------------

    def fill(self, seed):
        """Writes the seeded pattern into every backend file; returns
        {backend id: pattern bytes}. Backend i uses seed + i."""
        pats = {}
        for i, (bid, (path, size)) in enumerate(self.backends.items()):
            pats[bid] = make_pattern(size, seed + i)
            fill_file(path, pats[bid])
        return pats

    def compare(self, patterns):
        """{backend id: (bad pages, first bad pages)} against `patterns`."""
        return {bid: compare_file(self.backend_path(bid), pat)
                for bid, pat in patterns.items()}

    # -- migration ---------------------------------------------------------

    def set_migration(self, channels=0, direct_io=False):
        caps = [{"capability": "events", "state": True},
                {"capability": "mapped-ram", "state": True},
                {"capability": "multifd", "state": channels > 0}]
        self.qmp.execute("migrate-set-capabilities", {"capabilities": caps})
        params = {"max-bandwidth": 1 << 40, "direct-io": bool(direct_io)}
        if channels:
            params["multifd-channels"] = channels
        self.qmp.execute("migrate-set-parameters", params)

    def _uri(self, target, offset):
        uri = f"file:{target}"
        return f"{uri},offset={offset}" if offset else uri

    def _run(self, what, fn, timeout):
        try:
            fn()
            return self.qmp.wait_migration(timeout=timeout)
        except (QMPError, QMPTimeout, RuntimeError, ConnectionError) as e:
            raise RuntimeError(f"{what} failed: {e}\n{self.log_tail()}") from None

    def add_fds(self, fds, opaque="snapmr-test"):
        """Puts `fds` into a new fdset through QMP add-fd; returns its id."""
        set_id = None
        for fd in fds:
            args = {"opaque": opaque}
            if set_id is not None:
                args["fdset-id"] = set_id
            set_id = self.qmp.execute("add-fd", args, fds=[fd])["fdset-id"]
        return set_id

    def _fdset_target(self, path, mode, direct_io):
        acc = os.O_WRONLY | os.O_CREAT if mode == "w" else os.O_RDONLY
        fds = [os.open(path, acc | os.O_CLOEXEC, 0o600)]
        try:
            if direct_io:
                fds.append(os.open(path, acc | os.O_DIRECT | os.O_CLOEXEC, 0o600))
            return f"/dev/fdset/{self.add_fds(fds)}"
        finally:
            for fd in fds:          # QEMU holds its own dups now
                os.close(fd)

    def save(self, path, offset=0, channels=0, direct_io=False, fdset=False, timeout=600.0):
        """Saves to a mapped-ram file. The first `offset` bytes of `path`
        survive (QEMU truncates the file to `offset`). Returns query-migrate."""
        self.set_migration(channels, direct_io)
        target = self._fdset_target(path, "w", direct_io) if fdset else path
        return self._run("save", lambda: self.qmp.execute(
            "migrate", {"uri": self._uri(target, offset)}), timeout)

    def load(self, path, offset=0, channels=0, direct_io=False, fdset=False, timeout=600.0):
        """Loads a mapped-ram file into this (-incoming defer) VM."""
        assert self.incoming
        self.set_migration(channels, direct_io)
        target = self._fdset_target(path, "r", direct_io) if fdset else path
        return self._run("load", lambda: self.qmp.execute(
            "migrate-incoming", {"uri": self._uri(target, offset)}), timeout)


def save_ref(path, machine="q35", size="256M", dimm_size=None, channels=0, direct_io=False,
             offset=0, seed=1, prefix=None, fdset=False):
    """Boots a source VM, fills it, saves it to `path` and returns
    (patterns, info) where info describes the VM (machine type, blocks)."""
    if offset:
        data = (prefix or b"SNAPMR-TEST-PREFIX\n").ljust(offset, b"\0")[:offset]
        with open(path, "wb") as f:
            f.write(data)
    with VM(machine, size, dimm_size) as vm:
        pats = vm.fill(seed)
        info = {"machine": machine, "machine_type": vm.machine_type(), "accel": vm.accel,
                "size": vm.size, "dimm_size": vm.dimm_size, "channels": channels,
                "direct_io": bool(direct_io), "offset": offset, "seed": seed,
                "fdset": bool(fdset), "ramblocks": vm.ramblocks(),
                "qemu": vm.qmp.greeting["version"]["qemu"]}
        mig = vm.save(path, offset=offset, channels=channels, direct_io=direct_io, fdset=fdset)
        info["total_time_ms"] = mig.get("total-time")
    return pats, info


def load_and_compare(path, patterns, machine="q35", size="256M", dimm_size=None, channels=0,
                     direct_io=False, offset=0, fdset=False):
    """Loads `path` into a fresh destination and compares its RAM backends
    with `patterns`. Returns {backend: (bad pages, first bad pages)}."""
    with VM(machine, size, dimm_size, incoming=True) as vm:
        vm.load(path, offset=offset, channels=channels, direct_io=direct_io, fdset=fdset)
        return vm.compare(patterns)


if __name__ == "__main__":
    # Self-test: save, load into a fresh QEMU, compare.
    import sys
    d = tempfile.mkdtemp(prefix="snapmr-vmtest-", dir="/var/tmp")
    try:
        f = os.path.join(d, "t.img")
        pats, info = save_ref(f, size="64M", channels=2)
        print(json.dumps(info["ramblocks"]))
        res = load_and_compare(f, pats, size="64M", channels=2)
        print(res)
        sys.exit(0 if all(b == 0 for b, _ in res.values()) else 1)
    finally:
        shutil.rmtree(d, ignore_errors=True)
