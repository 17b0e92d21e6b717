# SPDX-License-Identifier: MIT
"""Booted Linux test guests for the QEMU tests.

Fetches Debian packages into a cache (keyed by package version): the kernel of
`linux-image-amd64` (bookworm's 6.1 line), `busybox-static`, and QEMU 7.2
(bookworm's `qemu-system-x86` + `qemu-system-common`, run from the unpacked
tree next to the installed QEMU). Builds an initramfs whose /init fills a
tmpfs with text and random data, prints `ready sum S`, then `tick N sum S`
once a second on the serial console (S: md5 of the data, recomputed for each
tick). Starts guests with their RAM in `memory-backend-file,share=on` files in
/dev/shm, and moves their device state through pipes (QMP getfd + fd:NAME).

Environment: SNAPMR_CACHE (default /var/cache/snapmr-tests), QEMU (the
current QEMU, default qemu-system-x86_64), SNAPMR_ACCEL (kvm or tcg: skip the
KVM probe), SNAPMR_KVM_PROBE (seconds a KVM boot gets to tick, default 15).
Anything missing raises Unavailable, which tests turn into a skip (77).
"""

import functools
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(HERE, "..", "qemu"))
import vm as V  # noqa: E402

CACHE = os.environ.get("SNAPMR_CACHE", "/var/cache/snapmr-tests")
KERNEL_SERIES = "6.1."          # bookworm's kernel line (backports has newer ones)
QEMU72_VERSION = "1:7.2"
KVM_PROBE = float(os.environ.get("SNAPMR_KVM_PROBE", "15"))
DATA_MIB = {"text": 4, "random": 12}    # what /init writes into its tmpfs

TICK_RE = re.compile(rb"^tick (\d+) sum ([0-9a-f]{32})\r?$", re.M)
READY_RE = re.compile(rb"^ready sum ([0-9a-f]{32}) bytes (\d+) fill-ms (\d+)\r?$", re.M)
FILL_RE = re.compile(rb"^fill mib (\d+) ms (\d+)\r?$", re.M)


class Unavailable(Exception):
    """A package, tool or QEMU is missing: the test skips with this reason."""


def _run(args, what, **kw):
    try:
        p = subprocess.run(args, capture_output=True, text=True, errors="replace",
                           stdin=subprocess.DEVNULL, timeout=600, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"{what}: {e}") from None
    if p.returncode != 0:
        msg = (p.stderr.strip() or p.stdout.strip()).splitlines()
        raise Unavailable(f"{what}: {args[0]} exited {p.returncode}: "
                          f"{msg[-1] if msg else 'no output'}")
    return p.stdout


# ---------------------------------------------------------------------------
# Debian packages, cached by version.

def _newer(a, b):
    """cmp for Debian versions through dpkg (descending order)."""
    if a == b:
        return 0
    p = subprocess.run(["dpkg", "--compare-versions", a, "gt", b])
    return -1 if p.returncode == 0 else 1


def pick_version(pkg, prefix=""):
    """The highest version of `pkg` that apt knows and that starts with
    `prefix` (apt-cache madison: every configured suite, not only the
    candidate, so bookworm's 7.2 is found next to backports' 10)."""
    out = _run(["apt-cache", "madison", pkg], f"apt-cache madison {pkg}")
    vers = {f[1].strip() for f in (line.split("|") for line in out.splitlines())
            if len(f) >= 3 and f[1].strip().startswith(prefix)}
    if not vers:
        raise Unavailable(f"apt knows no {pkg} version {prefix}* "
                          "(apt-get update, or bookworm not in the sources?)")
    return sorted(vers, key=functools.cmp_to_key(_newer))[0]


def _slot(pkg, version):
    return os.path.join(CACHE, f"{pkg}_{version.replace(':', '%3a')}")


def _download(pkg, version, where):
    """apt-get download pkg=version into `where`; returns the .deb path."""
    # Root downloading into a directory the _apt user cannot write warns
    # ("unsandboxed"); the sandbox user buys nothing for a plain download.
    _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{pkg}={version}"],
         f"apt-get download {pkg}={version}", cwd=where)
    debs = glob.glob(os.path.join(where, f"{pkg}_*.deb"))
    if len(debs) != 1:
        raise Unavailable(f"apt-get download {pkg}={version} left {len(debs)} .deb files")
    return debs[0]


def unpacked(pkgs, version, members=None, slot=None):
    """Directory holding `pkgs` (all at `version`) unpacked with dpkg -x,
    or only the tar `members` patterns of them. Cached: a finished slot has
    a .complete stamp; an interrupted one is redone."""
    slot = slot or _slot(pkgs[0], version)
    if os.path.exists(os.path.join(slot, ".complete")):
        return slot
    os.makedirs(CACHE, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".unpack-", dir=CACHE)
    try:
        root = os.path.join(tmp, "root")
        os.mkdir(root)
        for pkg in pkgs:
            deb = _download(pkg, version, tmp)
            if members is None:
                _run(["dpkg", "-x", deb, root], f"dpkg -x {deb}")
            else:
                # The kernel package is ~400 MiB of modules we never load:
                # take only the named members out of its data tarball.
                tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
                x = subprocess.run(["tar", "-x", "-C", root, "--wildcards", *members],
                                   stdin=tar.stdout, capture_output=True, text=True)
                tar.stdout.close()
                if tar.wait() != 0 or x.returncode != 0:
                    raise Unavailable(f"cannot extract {members} from {deb}: {x.stderr.strip()}")
            os.unlink(deb)
        open(os.path.join(root, ".complete"), "w").close()
        shutil.rmtree(slot, ignore_errors=True)
        try:
            os.rename(root, slot)
        except OSError:
            # Another run filled the slot meanwhile: use its copy.
            if not os.path.exists(os.path.join(slot, ".complete")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return slot


def kernel():
    """(path of vmlinuz, package version) of bookworm's linux-image-amd64:
    the meta package depends on one versioned linux-image-6.1.0-N-amd64."""
    meta = pick_version("linux-image-amd64", KERNEL_SERIES)
    dep_file = _slot("linux-image-amd64", meta) + ".depends"
    if not os.path.exists(dep_file):
        os.makedirs(CACHE, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".meta-", dir=CACHE)
        try:
            deb = _download("linux-image-amd64", meta, tmp)
            deps = _run(["dpkg-deb", "-f", deb, "Depends"], f"dpkg-deb -f {deb}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        m = re.search(r"\b(linux-image-\d\S*-amd64)\b", deps)
        if not m:
            raise Unavailable(f"linux-image-amd64 {meta} depends on no kernel: {deps.strip()}")
        tmp_file = f"{dep_file}.{os.getpid()}.tmp"
        with open(tmp_file, "w") as f:
            f.write(m.group(1) + "\n")
        os.rename(tmp_file, dep_file)
    with open(dep_file) as f:
        pkg = f.read().strip()
    d = unpacked([pkg], meta, members=["./boot/vmlinuz-*"])
    found = glob.glob(os.path.join(d, "boot", "vmlinuz-*"))
    if len(found) != 1:
        raise Unavailable(f"{pkg} {meta}: expected one boot/vmlinuz-*, found {found}")
    return found[0], f"{pkg} {meta}"


def busybox():
    """(path of the static busybox binary, version)."""
    ver = pick_version("busybox-static")
    d = unpacked(["busybox-static"], ver, members=["./bin/busybox"])
    return os.path.join(d, "bin", "busybox"), ver


class Qemu:
    """A QEMU binary with the environment and options it needs."""

    def __init__(self, path, env=None, args=(), label=None):
        self.path = path
        self.env = dict(env or {})
        self.args = list(args)
        self.label = label or path
        self._version = None

    def version(self):
        """(major, minor), or Unavailable."""
        if self._version is None:
            out = _run([self.path, "--version"], f"{self.label} --version",
                       env={**os.environ, **self.env})
            m = re.search(r"version (\d+)\.(\d+)", out)
            if not m:
                raise Unavailable(f"{self.label} --version gave no version: {out.strip()!r}")
            self._version = (int(m.group(1)), int(m.group(2)))
        return self._version


def qemu_current():
    """The installed QEMU ($QEMU or qemu-system-x86_64 on PATH)."""
    path = shutil.which(V.QEMU)
    if not path:
        raise Unavailable(f"no {V.QEMU} on PATH")
    return Qemu(path, label=f"QEMU {'.'.join(map(str, Qemu(path).version()))}")


def qemu72():
    """Bookworm's QEMU 7.2, unpacked from qemu-system-x86 + qemu-system-common.

    Its shared libraries are all satisfied by what QEMU 10 from backports
    pulls in; its accelerators and devices are modules (TCG too), found
    through QEMU_MODULE_DIR; firmware comes from the installed seabios and
    qemu-system-data (bios-256k.bin, linuxboot_dma.bin, kvmvapic.bin)."""
    ver = pick_version("qemu-system-x86", QEMU72_VERSION)
    d = unpacked(["qemu-system-x86", "qemu-system-common"], ver,
                 slot=_slot("qemu-7.2", ver))
    path = os.path.join(d, "usr", "bin", "qemu-system-x86_64")
    mods = os.path.join(d, "usr", "lib", "x86_64-linux-gnu", "qemu")
    missing = [p for p in (path, mods, "/usr/share/seabios/bios-256k.bin",
                           "/usr/share/qemu/linuxboot_dma.bin") if not os.path.exists(p)]
    if missing:
        raise Unavailable(f"QEMU 7.2 {ver}: missing {', '.join(missing)}")
    q = Qemu(path, env={"QEMU_MODULE_DIR": mods},
             args=["-L", "/usr/share/seabios", "-L", "/usr/share/qemu"], label=f"QEMU 7.2 ({ver})")
    q.version()
    return q


# ---------------------------------------------------------------------------
# The initramfs.

INIT = r"""#!/bin/busybox sh
# snapmr test guest: fill a tmpfs, then tick with a fresh checksum of it.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=90% tmpfs /data
t0=$(cut -d' ' -f1 /proc/uptime)
# Text: numbered lines; random: from the kernel's generator.
seq 1 @TEXT_LINES@ | sed 's/^/snapmr guest text line /' >/data/text
dd if=/dev/urandom of=/data/random bs=1M count=@RANDOM_MIB@ 2>/dev/null
t1=$(cut -d' ' -f1 /proc/uptime)
ms=$(echo "$t0 $t1" | awk '{ printf "%d", ($2 - $1) * 1000 }')
bytes=$(cat /data/text /data/random | wc -c)
# snapmr.fill=MIB on the kernel command line: that much more data (copies of
# one 64 MiB random chunk), kept out of the ticks' checksum (too slow to hash).
fill=$(sed -n 's/.*snapmr\.fill=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$fill" ] && [ "$fill" -gt 0 ]; then
	dd if=/dev/urandom of=/data/chunk bs=1M count=64 2>/dev/null
	i=0
	while [ $i -lt "$fill" ]; do
		left=$((fill - i))
		[ $left -ge 64 ] || { dd if=/data/chunk bs=1M count=$left 2>/dev/null; break; }
		cat /data/chunk
		i=$((i + 64))
	done >/data/fill
	rm /data/chunk
	t2=$(cut -d' ' -f1 /proc/uptime)
	echo "fill mib $(($(wc -c </data/fill) >> 20)) ms $(echo "$t1 $t2" | awk '{ printf "%d", ($2 - $1) * 1000 }')"
fi
sum() { s=$(cat /data/text /data/random | md5sum); echo ${s%% *}; }
echo "ready sum $(sum) bytes $bytes fill-ms $ms"
n=0
while true; do
	n=$((n + 1))
	echo "tick $n sum $(sum)"
	sleep 1
done
"""


def _cpio_entry(name, mode, data=b"", rdev=(0, 0), ino=[0]):
    ino[0] += 1
    nm = name.encode() + b"\0"
    fields = (ino[0], mode, 0, 0, 2 if mode & 0o040000 else 1, 0, len(data),
              0, 0, rdev[0], rdev[1], len(nm), 0)
    hdr = b"070701" + b"".join(b"%08X" % v for v in fields) + nm
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return pad(hdr) + pad(data)


def make_initramfs(busybox_path, out):
    """Writes a cpio newc archive: /bin/busybox, /init, the mount points and
    /dev/console (the kernel opens it for init's stdio before devtmpfs)."""
    with open(busybox_path, "rb") as f:
        bb = f.read()
    # ~26 bytes a line
    init = INIT.replace("@TEXT_LINES@", str(DATA_MIB["text"] * (1 << 20) // 26)) \
               .replace("@RANDOM_MIB@", str(DATA_MIB["random"])).encode()
    parts = [_cpio_entry(d, 0o040755) for d in ("bin", "dev", "proc", "sys", "data")]
    parts.append(_cpio_entry("dev/console", 0o020600, rdev=(5, 1)))
    parts.append(_cpio_entry("bin/busybox", 0o100755, bb))
    parts.append(_cpio_entry("init", 0o100755, init))
    parts.append(_cpio_entry("TRAILER!!!", 0))
    blob = b"".join(parts)
    tmp = f"{out}.{os.getpid()}.tmp"     # runs sharing the cache may race
    with open(tmp, "wb") as f:
        f.write(blob)
        f.write(b"\0" * (-len(blob) % 512))
    os.rename(tmp, out)
    return out


class Image:
    """Kernel + initramfs + command line of the test guest."""

    def __init__(self, fill_mib=0):
        """fill_mib: MiB of extra data the guest writes before `ready` (a
        `fill mib N ms T` line; not in the ticks' checksum)."""
        self.kernel, self.kernel_version = kernel()
        bb, self.busybox_version = busybox()
        h = hashlib.sha256()
        for part in (open(bb, "rb").read(), INIT.encode(), repr(DATA_MIB).encode()):
            h.update(part)
        self.initrd = os.path.join(CACHE, f"initramfs-{h.hexdigest()[:16]}.cpio")
        if not os.path.exists(self.initrd):
            make_initramfs(bb, self.initrd)
        # quiet: kernel messages must not split tick lines; panic=-1 with
        # -no-reboot turns a guest panic into a QEMU exit.
        self.append = "console=ttyS0 quiet panic=-1 memhp_default_state=online"
        if fill_mib:
            self.append += f" snapmr.fill={int(fill_mib)}"

    def args(self):
        return ["-kernel", self.kernel, "-initrd", self.initrd, "-append", self.append]


# ---------------------------------------------------------------------------
# Guests.

class Guest(V.VM):
    """A booted test guest (or the -incoming destination of one).

    The RAM lives in /dev/shm backend files (`ram0`, and `ram1` as pc-dimm
    `dimm0` when `dimm_size` is set): V.VM's layout. The serial console
    goes to a file in the VM's temporary directory. QEMU starts paused (-S);
    boot() continues it and waits for the first tick.
    """

    def __init__(self, qemu, image, machine="q35", size="256M", dimm_size=None, smp=1,
                 accel=None, incoming=False):
        self.qemu_bin = qemu
        self.image = image
        self.smp = smp
        super().__init__(machine, size, dimm_size, incoming=incoming, accel=accel or "tcg")
        self.serial = os.path.join(self.tmpdir, "serial.log")

    def args(self):
        a = super().args()
        a[0] = self.qemu_bin.path
        return a + self.qemu_bin.args + self.image.args() + [
            "-smp", str(self.smp), "-serial", f"file:{self.serial}", "-no-reboot"]

    def start(self, timeout=30.0):
        saved = {k: os.environ.get(k) for k in self.qemu_bin.env}
        os.environ.update(self.qemu_bin.env)     # V.VM.start runs QEMU with os.environ
        try:
            return super().start(timeout)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # -- console -----------------------------------------------------------

    def console(self):
        try:
            with open(self.serial, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def ticks(self):
        """[(n, sum)] in console order."""
        return [(int(n), s.decode()) for n, s in TICK_RE.findall(self.console())]

    def ready(self):
        """(sum, bytes of data, fill ms) from the `ready` line, or None."""
        m = READY_RE.search(self.console())
        return (m.group(1).decode(), int(m.group(2)), int(m.group(3))) if m else None

    def wait_tick(self, after=0, timeout=60.0):
        """Waits for a tick numbered above `after`; returns (n, sum)."""
        deadline = time.monotonic() + timeout
        while True:
            t = [x for x in self.ticks() if x[0] > after]
            if t:
                return t[0]
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited ({self.proc and self.proc.returncode}) "
                                   f"waiting for tick > {after}\n{self.console_tail()}"
                                   f"\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no tick > {after} after {timeout:.0f}s\n{self.console_tail()}")
            time.sleep(0.1)

    def console_tail(self, n=10):
        lines = self.console().decode(errors="replace").splitlines()
        return "console: " + ("\n  ".join(lines[-n:]) if lines else "(empty)")

    def boot(self, timeout):
        """Continues the paused guest; returns seconds to the first tick."""
        t0 = time.monotonic()
        self.qmp.execute("cont")
        self.wait_tick(0, timeout)
        return time.monotonic() - t0

    # -- device state through pipes -----------------------------------------

    def set_ignore_shared(self):
        self.qmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "events", "state": True},
            {"capability": "x-ignore-shared", "state": True}]})

    def _getfd(self, fd, name):
        self.qmp.execute("getfd", {"fdname": name}, fds=[fd])

    def migrate_to_fd(self, wfd, name="snapmr-out", timeout=120.0):
        """Migrates (stopped guest, x-ignore-shared) into `wfd`, which QEMU
        receives through getfd; closes our copy. Returns query-migrate."""
        try:
            self._getfd(wfd, name)
        finally:
            os.close(wfd)
        return self._run("migrate", lambda: self.qmp.execute("migrate", {"uri": f"fd:{name}"}),
                         timeout)

    def incoming_from(self, path, name="snapmr-in", timeout=120.0):
        """Loads the device stream in `path` into this -incoming defer guest
        through a pipe fed by a thread. Returns query-migrate."""
        assert self.incoming
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        err = []

        def feed():
            try:
                with open(path, "rb") as f, open(wfd, "wb", closefd=True) as w:
                    shutil.copyfileobj(f, w)
            except OSError as e:      # QEMU closed its end after a failed load
                err.append(e)
        t = threading.Thread(target=feed, daemon=True)
        t.start()
        try:
            self._getfd(rfd, name)
        finally:
            os.close(rfd)
        try:
            return self._run("migrate-incoming", lambda: self.qmp.execute(
                "migrate-incoming", {"uri": f"fd:{name}"}), timeout)
        finally:
            t.join(timeout)


_accel = {}


class Fail(Exception):
    """A check on a guest failed."""


def run_cases(cases, work, t_start):
    """Runs (name, fn) pairs in order: a case that fails (Fail, a QEMU or QMP
    error, a timeout) is reported and the others still run. Removes the work
    directory, prints the summary and returns the exit status."""
    failures = []
    try:
        for name, fn in cases:
            try:
                fn()
            except (Fail, RuntimeError, TimeoutError, V.QMPError) as e:
                failures.append(f"{name}: {e}")
                print(f"  FAIL: {e}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(failures)} failure(s), {time.monotonic() - t_start:.0f}s")
    for f in failures:
        print(f"FAIL: {f}")
    return 1 if failures else 0


def boot(qemu, image, machine, size, dimm_size=None, smp=1, timeout=None):
    """Boots a guest on KVM when that works, on TCG otherwise; returns
    (guest, accel, seconds to first tick). The KVM verdict is cached for the
    process: under nested virtualization a KVM boot can hang in early
    decompression, so the first KVM boot that does not tick within
    SNAPMR_KVM_PROBE seconds switches every later boot to TCG."""
    accel = os.environ.get("SNAPMR_ACCEL") or _accel.get("verdict")
    if accel is None and not V.kvm_usable():
        accel = _accel["verdict"] = "tcg"
    tries = [accel] if accel else ["kvm", "tcg"]
    for a in tries:
        g = Guest(qemu, image, machine, size, dimm_size, smp, accel=a).start()
        try:
            t = g.boot(KVM_PROBE if a == "kvm" and len(tries) > 1 else timeout or 300)
        except (TimeoutError, RuntimeError) as e:
            g.stop()
            if a == tries[-1]:
                raise
            print(f"  KVM boot gave no tick in {KVM_PROBE:.0f}s, using TCG "
                  f"({str(e).splitlines()[0]})", flush=True)
            _accel["verdict"] = "tcg"
            continue
        _accel["verdict"] = a
        return g, a, t
    raise AssertionError("unreachable")


if __name__ == "__main__":
    # `python3 tests/guest/guest.py`: fill the cache ahead of the tests (CI
    # images, scripts/install-deps) and print what the tests will use.
    try:
        img = Image()
        q = qemu72()
    except Unavailable as e:
        print(f"unavailable: {e}", file=sys.stderr)
        sys.exit(77)
    print(f"kernel {img.kernel} ({img.kernel_version})\ninitramfs {img.initrd} "
          f"(busybox {img.busybox_version})\n{q.label}: {q.path}")
