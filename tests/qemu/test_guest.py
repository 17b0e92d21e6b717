#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Booted guests saved and restored with x-ignore-shared and today's tools.

For each lineage (QEMU 10 and bookworm's QEMU 7.2, q35 and pc, 1 and 2
vCPUs, one RAM backend or two with a pc-dimm), boot the test guest of
tests/guest (a tmpfs full of text and random data, `tick N sum S` once a
second), then twice: stop it, migrate its device state with x-ignore-shared
into a pipe that snapsave reads (`-d -`) while snapsave stores the backend
files, quit QEMU and delete the backends, snaprestore them into new /dev/shm
files and the device state into a file, start a new QEMU with -incoming defer
over the new files, feed the device state through a pipe, `cont`. The ticks
of the whole lineage (every console concatenated) must count on without a
gap or a restart, each with the checksum of the first boot, and the restored
backends must equal the saved ones byte for byte.

Environment: SNAPSAVE, SNAPRESTORE, QEMU, SNAPMR_ACCEL, SNAPMR_CACHE (see
tests/guest/guest.py), SNAPMR_TEST_DIR (default /var/tmp),
SNAPMR_GUEST_CASES (comma-separated lineage names to run, default all).
Exit status: 0 pass, 1 failure, 77 skip (no QEMU, or the Debian packages
cannot be fetched).
"""

import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(HERE, "..", "guest"))
import guest as G  # noqa: E402

SKIP = 77
CYCLES = 2
WORK_DIR = os.environ.get("SNAPMR_TEST_DIR", "/var/tmp")


def _bin(env, rel):
    return os.environ.get(env) or os.path.normpath(os.path.join(HERE, "..", "..", "build", rel))


SNAPSAVE = _bin("SNAPSAVE", "snapsave/snapsave")
SNAPRESTORE = _bin("SNAPRESTORE", "snaprestore/snaprestore")

# name, QEMU ("10" or "7.2"), machine, RAM, pc-dimm size, vCPUs. One boot
# each; together they cover both machines, both vCPU counts and both
# backend layouts with each QEMU.
LINEAGES = [
    ("10-q35-2cpu-dimm", "10", "q35", "256M", "128M", 2),
    ("10-pc-1cpu", "10", "pc", "256M", None, 1),
    ("7.2-q35-1cpu-dimm", "7.2", "q35", "256M", "128M", 1),
    ("7.2-pc-2cpu", "7.2", "pc", "256M", None, 2),
]



Fail = G.Fail


def require(cond, msg):
    if not cond:
        raise Fail(msg)


def sha1(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tool(args, what, **kw):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                       errors="replace", timeout=300, **kw)
    require(p.returncode == 0, f"{what}: rc={p.returncode}: {p.stderr.strip()}")
    return json.loads(p.stdout.splitlines()[-1])


def save(g, snap):
    """Stopped guest -> snapmr file: QEMU's device stream goes into a pipe
    that snapsave reads as its device state; snapsave reads the backends.
    Returns (migrate ms, snapsave ms, stream bytes, {backend: sha1})."""
    rams = []
    for bid, (path, _) in g.backends.items():
        rams += ["--ram", f"{bid}={path}"]
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    t0 = time.monotonic()
    try:
        ss = subprocess.Popen([SNAPSAVE, "-o", snap, "--machine", g.machine_type(), *rams,
                               "-d", "-", "--json"], stdin=rfd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    finally:
        os.close(rfd)
    try:
        g.set_ignore_shared()
        mig = g.migrate_to_fd(wfd)        # closes wfd: snapsave sees EOF after QEMU's
        out, err = ss.communicate(timeout=300)
    except BaseException:
        ss.kill()
        ss.wait()
        raise
    wall = (time.monotonic() - t0) * 1000
    require(ss.returncode == 0, f"snapsave rc={ss.returncode}: {err.strip()}")
    st = json.loads(out.splitlines()[-1])
    sums = {bid: sha1(path) for bid, (path, _) in g.backends.items()}
    return mig.get("total-time"), wall, st["device-state-bytes"], sums


def restore(snap, dst, devstate):
    """snapmr file -> the new guest's (not yet created) backend files and the
    device state file. Returns snaprestore's wall ms."""
    rams = []
    for bid, (path, _) in dst.backends.items():
        require(not os.path.exists(path), f"{path} exists before the restore")
        rams += ["--ram", f"{bid}={path}"]
    t0 = time.monotonic()
    tool([SNAPRESTORE, snap, *rams, "-d", devstate, "--json"], "snaprestore")
    return (time.monotonic() - t0) * 1000


def lineage(name, qemu, image, machine, size, dimm, smp, work):
    print(f"== {name}: {qemu.label}, {machine}, {smp} vCPU(s), RAM {size}"
          f"{' + pc-dimm ' + dimm if dimm else ''}", flush=True)
    g, accel, boot_s = G.boot(qemu, image, machine, size, dimm, smp)
    consoles = []
    try:
        ready = g.ready()
        require(ready is not None, f"no ready line:\n{g.console_tail()}")
        want_sum, nbytes, fill_ms = ready
        expect_bytes = G.DATA_MIB["random"] << 20
        require(nbytes > expect_bytes, f"guest data is {nbytes} bytes, expected more than "
                                       f"{expect_bytes}: the fill failed")
        print(f"  boot ({accel}): first tick after {boot_s:.1f}s (fill {fill_ms} ms, "
              f"{nbytes} bytes, md5 {want_sum}), machine {g.machine_type()}", flush=True)
        for cycle in range(1, CYCLES + 1):
            # The guest has just ticked (boot, or the restore before): stop
            # it in its sleep, between two lines.
            g.qmp.execute("stop")
            snap = os.path.join(work, f"{name}-{cycle}.snap")
            mig_ms, save_ms, stream, sums = save(g, snap)
            consoles.append(g.console())
            dst = G.Guest(qemu, image, machine, size, dimm, smp, accel=accel, incoming=True)
            old = g
            g = dst
            old.stop()                  # quits QEMU, deletes its backend files
            for path, _ in old.backends.values():
                require(not os.path.exists(path), f"{path} survived its QEMU")
            devstate = os.path.join(work, f"{name}-{cycle}.dev")
            restore_ms = restore(snap, dst, devstate)
            # How much of each backend the guest has touched (allocated in
            # /dev/shm): shows whether the pc-dimm holds guest data.
            used = ", ".join(f"{bid} {os.stat(path).st_blocks * 512 >> 20} MiB"
                             for bid, (path, _) in dst.backends.items())
            require(os.path.getsize(devstate) == stream,
                    f"restored device state is {os.path.getsize(devstate)} bytes, "
                    f"snapsave stored {stream}")
            for bid, (path, _) in dst.backends.items():
                require(sha1(path) == sums[bid], f"restored {bid} differs from the saved backend")
            dst.start()
            dst.set_ignore_shared()
            t0 = time.monotonic()
            dst.incoming_from(devstate)
            load_ms = (time.monotonic() - t0) * 1000
            dst.qmp.execute("cont")
            last = int(G.TICK_RE.findall(b"".join(consoles))[-1][0])
            dst.wait_tick(0, 60)
            if cycle == CYCLES:     # the next save checks the others go on
                dst.wait_tick(max(n for n, _ in dst.ticks()), 30)
            ticks = [(int(n), s.decode()) for n, s in
                     G.TICK_RE.findall(b"".join(consoles) + dst.console())]
            nums = [n for n, _ in ticks]
            require(nums == list(range(1, len(nums) + 1)),
                    f"ticks do not count on across the restore (last before: {last}): "
                    f"{nums[max(0, last - 3):last + 3]}")
            require(b"ready sum" not in dst.console(), "the restored guest booted again")
            bad = [(n, s) for n, s in ticks if s != want_sum]
            require(not bad, f"checksum changed: {bad[:3]} (boot: {want_sum})")
            print(f"  cycle {cycle}: ticks {last} -> {nums[-1]}, device stream {stream} bytes, "
                  f"migrate {mig_ms} ms (QEMU), snapsave {save_ms:.0f} ms, snaprestore "
                  f"{restore_ms:.0f} ms, migrate-incoming {load_ms:.0f} ms; backend data "
                  f"{used}", flush=True)
            os.unlink(snap)
            os.unlink(devstate)
    finally:
        g.stop()


def main():
    for exe in (SNAPSAVE, SNAPRESTORE):
        if not os.access(exe, os.X_OK):
            print(f"FAIL: {exe} is not built")
            return 1
    if not os.path.isdir("/dev/shm"):
        print("SKIP: no /dev/shm")
        return SKIP
    only = set(filter(None, os.environ.get("SNAPMR_GUEST_CASES", "").split(",")))
    t_start = time.monotonic()
    try:
        image = G.Image()
        qemus = {"10": G.qemu_current()}
        if qemus["10"].version() < (7, 2):
            raise G.Unavailable(f"{qemus['10'].label} is older than 7.2")
        qemus["7.2"] = G.qemu72()
    except G.Unavailable as e:
        print(f"SKIP: {e}")
        return SKIP
    print(f"kernel {image.kernel_version}, busybox {image.busybox_version}, "
          f"{qemus['10'].label}, {qemus['7.2'].label} (setup {time.monotonic() - t_start:.1f}s)")
    work = tempfile.mkdtemp(prefix="snapmr-guest-", dir=WORK_DIR)
    cases = [(name, functools.partial(lineage, name, qemus[qv], image, machine, size, dimm,
                                      smp, work))
             for name, qv, machine, size, dimm, smp in LINEAGES if not only or name in only]
    return G.run_cases(cases, work, t_start)


if __name__ == "__main__":
    sys.exit(main())
