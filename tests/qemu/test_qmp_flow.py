#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""snapsave --qmp and snaprestore --qmp on booted guests (tests/guest).

QEMU 10, q35, ram0 + a pc-dimm on ram1, one boot:
  - refusals while it runs: a busy monitor (the test holds the first QMP
    socket), and (on an unbooted QEMU) a share=off backend: exit 1, one line
    naming the cause, no file, the guest still running;
  - `snapsave --qmp --resume`: the guest ticks on;
  - `snapsave --qmp --quit`: QEMU ends; `snaprestore --qmp` into a new QEMU
    (-incoming defer, NEW backend files): ticks count on, checksum unchanged;
  - the same file loaded natively by a fresh QEMU 10 (mapped-ram,
    migrate-incoming file:, new backend files, no x-ignore-shared): same;
  - measured on the restored guest: QEMU's own `migrate file:` with
    mapped-ram + multifd 4 + direct-io, against snapsave --quit's downtime.
memory-backend-memfd (unbooted): saved with a note and restored on QEMU 10;
on 7.2 saved and restored through /proc/PID/fd (bytes compared), two memfds
of one size refused before the pause; x-ignore-shared off after a restore.
Also: a failure after the pause (output on a full 1 MiB tmpfs): exit 1, no
file, the guest runs on; snaprestore --qmp refusing a machine type or backend
size mismatch before writing guest memory, and a file without a resume record.
QEMU 7.2, q35 (pc-q35-7.2), the pc-dimm in a memory-backend-memfd (read and
written through QEMU's descriptor): --quit, snaprestore --qmp into 7.2, and
the same file loaded natively by QEMU 10 with -M pc-q35-7.2 (file backends).

The rest of issue 15's matrix, one boot each: QEMU 10 and 7.2 on pc with 2
vCPUs and one backend, two cycles of --quit and snaprestore --qmp.

Environment: as tests/qemu/test_guest.py (SNAPSAVE, SNAPRESTORE, QEMU,
SNAPMR_ACCEL: tcg unless kvm is asked for, SNAPMR_CACHE, SNAPMR_TEST_DIR).
Exit status: 0 pass, 1 failure, 77 skip.
"""

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
WORK_DIR = os.environ.get("SNAPMR_TEST_DIR", "/var/tmp")
ACCEL = os.environ.get("SNAPMR_ACCEL") or "tcg"


def _bin(env, rel):
    return os.environ.get(env) or os.path.normpath(os.path.join(HERE, "..", "..", "build", rel))


SNAPSAVE = _bin("SNAPSAVE", "snapsave/snapsave")
SNAPRESTORE = _bin("SNAPRESTORE", "snaprestore/snaprestore")


Fail = G.Fail


def require(cond, msg):
    if not cond:
        raise Fail(msg)


def run(args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          errors="replace", timeout=300, **kw)


def ok_json(p, what):
    require(p.returncode == 0, f"{what}: rc={p.returncode}: {p.stderr.strip()}")
    return json.loads(p.stdout.splitlines()[-1])


def guest(qemu, image, machine, incoming=False, smp=1, dimm="128M"):
    """A test guest with a second QMP socket (`sock2`) for the tools: the
    first one stays with the test. dimm: the pc-dimm's backend, or None."""
    g = G.Guest(qemu, image, machine, "256M", dimm, smp, accel=ACCEL, incoming=incoming)
    g.sock2 = os.path.join(g.tmpdir, "qmp2.sock")
    g.extra_args += ["-qmp", f"unix:{g.sock2},server=on,wait=off"]
    return g


def status(g):
    return g.qmp.execute("query-status")["status"]


def continues(before, dst, want_sum, what):
    """dst (running) counts on from the ticks in `before` with want_sum."""
    last = int(G.TICK_RE.findall(before)[-1][0])
    dst.wait_tick(0, 60)
    dst.wait_tick(max(n for n, _ in dst.ticks()), 30)
    ticks = [(int(n), s.decode()) for n, s in G.TICK_RE.findall(before + dst.console())]
    nums = [n for n, _ in ticks]
    require(nums == list(range(1, len(nums) + 1)),
            f"{what}: ticks do not count on (last before: {last}): "
            f"{nums[max(0, last - 3):last + 3]}")
    require(b"ready sum" not in dst.console(), f"{what}: the guest booted again")
    bad = [(n, s) for n, s in ticks if s != want_sum]
    require(not bad, f"{what}: checksum changed: {bad[:3]} (boot: {want_sum})")
    return last, nums[-1]


def boot(qemu, image, machine, wrap=lambda v: v, **shape):
    g = wrap(guest(qemu, image, machine, **shape)).start()
    try:
        t = g.boot(300)
        ready = g.ready()
        require(ready is not None, f"no ready line:\n{g.console_tail()}")
    except BaseException:
        g.stop()
        raise
    print(f"  boot ({ACCEL}): first tick after {t:.1f}s, machine {g.machine_type()}",
          flush=True)
    return g, ready[0]


def save_quit(g, snap):
    """snapsave --qmp --quit; returns its JSON and the console up to the save."""
    p = run([SNAPSAVE, "--qmp", g.sock2, "-o", snap, "--quit", "--json"])
    st = ok_json(p, "snapsave --quit")
    try:
        g.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise Fail("QEMU did not end after snapsave --quit") from None
    before = g.console()
    g.stop()
    return st, before


def caps_back(q, what):
    """Left on, x-ignore-shared would make the guest's next plain migration
    leave its RAM behind: snaprestore --qmp turns it off again."""
    caps = {c["capability"]: c["state"] for c in q.execute("query-migrate-capabilities")}
    require(not caps.get("x-ignore-shared"), f"{what}: x-ignore-shared still on after the restore")


def restore_qmp(qemu, image, machine, snap, before, want_sum, what, paused=False,
                wrap=lambda v: v, **shape):
    """snaprestore --qmp into a new QEMU; with `paused`, one started without
    -S (it would run the guest as soon as the load completes) and --paused.
    wrap: changes the new QEMU's options (memfd_ram1)."""
    dst = wrap(guest(qemu, image, machine, incoming=True, **shape))
    if paused:
        orig = dst.args
        dst.args = lambda: [a for a in orig() if a != "-S"]
    dst.start()
    try:
        for path, _ in dst.backends.values():
            if not os.path.exists(path):        # a memfd (memfd_ram1)
                continue
            require(os.path.getsize(path) == 0 or not any(open(path, "rb").read(1 << 20)),
                    f"{path}: a new backend file holds data before the restore")
        p = run([SNAPRESTORE, snap, "--qmp", dst.sock2, "--json"] +
                (["--paused"] if paused else []))
        st = ok_json(p, f"{what}: snaprestore --qmp")
        if paused:
            require(status(dst) == "paused", f"{what}: status {status(dst)} with --paused")
            dst.qmp.execute("cont")
        require(status(dst) == "running", f"{what}: status {status(dst)} after the restore")
        caps_back(dst.qmp, what)
        a, b = continues(before, dst, want_sum, what)
        print(f"  {what}: ticks {a} -> {b}; phases {st['phases']}", flush=True)
        return dst
    except BaseException:
        dst.stop()
        raise


def load_native(qemu, image, machine, snap, before, want_sum, what):
    """A fresh QEMU loads the file by itself: mapped-ram, migrate-incoming file:."""
    dst = guest(qemu, image, machine, incoming=True).start()
    try:
        dst.qmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "mapped-ram", "state": True}]})
        t0 = time.monotonic()
        dst._run("migrate-incoming", lambda: dst.qmp.execute(
            "migrate-incoming", {"uri": f"file:{snap}"}), 120)
        ms = (time.monotonic() - t0) * 1000
        dst.qmp.execute("cont")
        a, b = continues(before, dst, want_sum, what)
        print(f"  {what}: loaded in {ms:.0f} ms, ticks {a} -> {b}", flush=True)
    finally:
        dst.stop()


def refusals(qemu, image, g, work):
    # The test holds g's first socket: a second client gets no greeting.
    snap = os.path.join(work, "busy.snap")
    t0 = time.monotonic()
    p = run([SNAPSAVE, "--qmp", g.sock, "-o", snap])
    require(p.returncode == 1 and "second -qmp socket" in p.stderr
            and len(p.stderr.strip().splitlines()) == 1,
            f"busy socket: rc={p.returncode}: {p.stderr.strip()}")
    require(not os.path.exists(snap), "busy socket: a file appeared")
    require(status(g) == "running", f"busy socket: guest is {status(g)}")
    print(f"  busy socket refused in {time.monotonic() - t0:.1f}s: {p.stderr.strip()}",
          flush=True)

    # share=off: refused before the guest is paused.
    v = G.V.VM("q35", "64M", "32M", accel=ACCEL)
    orig = v.args

    def args():
        return [x.replace(f"mem-path={v.backends['ram1'][0]},share=on",
                          f"mem-path={v.backends['ram1'][0]},share=off") for x in orig()]
    v.args = args
    with v:
        v.qmp.close()
        v.qmp = None
        sock = v.sock
        q = G.V.QMP(sock, timeout=10)
        q.execute("cont")
        q.close()
        p = run([SNAPSAVE, "--qmp", sock, "-o", snap])
        require(p.returncode == 1 and "'ram1'" in p.stderr and "share=on" in p.stderr
                and len(p.stderr.strip().splitlines()) == 1,
                f"share=off: rc={p.returncode}: {p.stderr.strip()}")
        require(not os.path.exists(snap), "share=off: a file appeared")
        v.qmp = G.V.QMP(sock, timeout=10)
        require(v.qmp.execute("query-status")["status"] == "running",
                "share=off: QEMU no longer runs")
        print(f"  share=off refused: {p.stderr.strip()}", flush=True)


def memfd_ram1(v):
    """Makes v's ram1 a memory-backend-memfd,share=on (before start)."""
    orig = v.args
    path = v.backends["ram1"][0]

    def args():
        return [x.replace("memory-backend-file,id=ram1", "memory-backend-memfd,id=ram1")
                .replace(f",mem-path={path}", "") for x in orig()]
    v.args = args
    return v


def qemu_memfd(pid, size):
    """/proc/PID/fd/N of QEMU's memory-backend-memfd of `size` bytes."""
    d = f"/proc/{pid}/fd"
    found = [os.path.join(d, n) for n in os.listdir(d)
             if os.readlink(os.path.join(d, n)).startswith("/memfd:memory-backend-memfd")
             and os.stat(os.path.join(d, n)).st_size == size]
    require(len(found) == 1, f"QEMU {pid}: memfds of {size} bytes: {found}")
    return found[0]


def memfd(q72, image, work):
    """QEMU 10 migrates a memfd backend inside its stream: saved, with a note,
    and restored. QEMU 7.2 leaves it out: snapsave reads it and snaprestore
    writes it through QEMU's descriptor (/proc/PID/fd/N), byte for byte; two
    memfds of one size are refused before the pause."""
    snap = os.path.join(work, "memfd.snap")
    with memfd_ram1(G.V.VM("q35", "64M", "32M", accel=ACCEL)) as v:
        v.qmp.close()
        v.qmp = None
        p = run([SNAPSAVE, "--qmp", v.sock, "-o", snap, "--quit", "--json"])
        ok_json(p, "memfd on QEMU 10")
        require("memory-backend-memfd" in p.stderr and "slower" in p.stderr,
                f"memfd on QEMU 10: no note: {p.stderr.strip()}")
    dst = memfd_ram1(G.V.VM("q35", "64M", "32M", accel=ACCEL, incoming=True))
    dst.sock2 = os.path.join(dst.tmpdir, "qmp2.sock")
    dst.extra_args += ["-qmp", f"unix:{dst.sock2},server=on,wait=off"]
    with dst:
        ok_json(run([SNAPRESTORE, snap, "--qmp", dst.sock2, "--json"]),
                "memfd: snaprestore --qmp")
        caps_back(dst.qmp, "memfd on QEMU 10")
    os.unlink(snap)

    # 7.2: the memfd's bytes, written by the test through QEMU's descriptor.
    size = 32 << 20
    pattern = G.V.make_pattern(size, 72)
    g = memfd_ram1(G.Guest(q72, image, "q35", "64M", "32M", 1, accel=ACCEL))
    with g:
        with open(qemu_memfd(g.proc.pid, size), "r+b") as f:
            f.write(pattern)
        g.qmp.close()
        g.qmp = None
        p = run([SNAPSAVE, "--qmp", g.sock, "-o", snap, "--json"])
        ok_json(p, "memfd on QEMU 7.2")
    dst = memfd_ram1(G.Guest(q72, image, "q35", "64M", "32M", 1, accel=ACCEL, incoming=True))
    with dst:
        dst.qmp.close()
        dst.qmp = None
        ok_json(run([SNAPRESTORE, snap, "--qmp", dst.sock, "--json"]),
                "memfd on 7.2: snaprestore --qmp")
        q = G.V.QMP(dst.sock, timeout=10)
        caps_back(q, "memfd on QEMU 7.2")
        q.close()
        bad, first = G.V.compare_file(qemu_memfd(dst.proc.pid, size), bytes(pattern))
        require(bad == 0, f"memfd on 7.2: {bad} pages differ after the restore, first {first}")
    os.unlink(snap)

    # Two memfds of the same size: which descriptor is which cannot be told.
    g = memfd_ram1(G.Guest(q72, image, "q35", "32M", "32M", 1, accel=ACCEL))
    orig = g.args
    g.args = lambda: [x.replace("memory-backend-file,id=ram0", "memory-backend-memfd,id=ram0")
                      .replace(f",mem-path={g.backends['ram0'][0]}", "") for x in orig()]
    with g:
        g.qmp.close()
        g.qmp = None
        p = run([SNAPSAVE, "--qmp", g.sock, "-o", snap])
        require(p.returncode == 1 and "same size" in p.stderr
                and len(p.stderr.strip().splitlines()) == 1 and not os.path.exists(snap),
                f"two memfds of one size on 7.2: rc={p.returncode}: {p.stderr.strip()}")
    print("  memfd: saved and restored on QEMU 10 (with a note) and on 7.2 (through "
          f"QEMU's descriptors, bytes equal); same-size memfds refused: {p.stderr.strip()}",
          flush=True)


def fail_after_pause(g, work):
    """Output on a 1 MiB tmpfs: snap_save fails with ENOSPC after the pause;
    the guest runs again and no file appears."""
    mnt = os.path.join(work, "tiny")
    os.mkdir(mnt)
    p = run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", mnt])
    if p.returncode:
        print(f"  (no tmpfs mount: {p.stderr.strip()}; failure after the pause not tested)")
        return
    try:
        last = max(n for n, _ in g.ticks())
        p = run([SNAPSAVE, "--qmp", g.sock2, "-o", os.path.join(mnt, "x.snap"), "--json"])
        require(p.returncode == 1 and "x.snap" in p.stderr,
                f"full disk: rc={p.returncode}: {p.stderr.strip()}")
        require(os.listdir(mnt) == [], f"full disk: files left: {os.listdir(mnt)}")
        require(status(g) == "running", f"full disk: guest is {status(g)}")
        g.wait_tick(last + 1, 30)
        print(f"  failure after the pause (full disk): guest runs on: {p.stderr.strip()}",
              flush=True)
    finally:
        run(["umount", mnt])


def restore_refusals(qemu, image, snap, work):
    """Mismatches are reported before any byte of guest memory is written."""
    def untouched(v):
        for bid, (path, _) in v.backends.items():
            with open(path, "rb") as f:
                require(not any(f.read()), f"{bid} was written before the refusal")

    for what, machine, dimm, want in (("machine type", "pc", "128M", "machine type"),
                                      ("backend size", "q35", "64M", "'ram1'")):
        v = G.Guest(qemu, image, machine, "256M", dimm, 1, accel=ACCEL, incoming=True)
        v.sock2 = os.path.join(v.tmpdir, "qmp2.sock")
        v.extra_args += ["-qmp", f"unix:{v.sock2},server=on,wait=off"]
        with v:
            p = run([SNAPRESTORE, snap, "--qmp", v.sock2])
            require(p.returncode == 1 and want in p.stderr
                    and len(p.stderr.strip().splitlines()) == 1,
                    f"{what} mismatch: rc={p.returncode}: {p.stderr.strip()}")
            untouched(v)
            print(f"  {what} mismatch refused: {p.stderr.strip()}", flush=True)
    src = os.path.join(work, "plain.ram")
    plain = os.path.join(work, "plain.snap")
    with open(src, "wb") as f:
        f.truncate(1 << 20)
    ok_json(run([SNAPSAVE, "-o", plain, "--ram", f"ram0={src}", "--json"]), "plain snapsave")
    p = run([SNAPRESTORE, plain, "--qmp", "/nonexistent.sock"])
    require(p.returncode == 1 and "not saved with --qmp" in p.stderr,
            f"file without resume record: rc={p.returncode}: {p.stderr.strip()}")
    print(f"  file without a resume record refused: {p.stderr.strip()}", flush=True)


def measure_qemu(g, work):
    """QEMU 10's own save of the same guest: mapped-ram, multifd 4, direct-io."""
    path = os.path.join(work, "qemu-own.img")
    g.qmp.execute("stop")
    t0 = time.monotonic()
    try:
        g.qmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "x-ignore-shared", "state": False},
            {"capability": "mapped-ram", "state": True},
            {"capability": "multifd", "state": True}]})
        g.qmp.execute("migrate-set-parameters", {"multifd-channels": 4, "direct-io": True,
                                                 "max-bandwidth": 1 << 40})
        mig = g._run("migrate", lambda: g.qmp.execute("migrate", {"uri": f"file:{path}"}),
                     300)
    except RuntimeError as e:
        return f"QEMU's mapped-ram save failed: {str(e).splitlines()[0]}"
    ms = (time.monotonic() - t0) * 1000
    os.unlink(path)
    return (f"QEMU 10 migrate file: mapped-ram+multifd 4+direct-io: {ms:.0f} ms wall "
            f"(total-time {mig.get('total-time')} ms, downtime {mig.get('downtime')} ms)")


def lineage10(qemu, image, work):
    print(f"== {qemu.label}, q35, 256M + pc-dimm 128M", flush=True)
    g, want = boot(qemu, image, "q35")
    dst = None
    try:
        refusals(qemu, image, g, work)
        fail_after_pause(g, work)
        f0 = os.path.join(work, "resume.snap")
        last = max(n for n, _ in g.ticks())
        p = run([SNAPSAVE, "--qmp", g.sock2, "-o", f0, "--resume", "--json", "--progress"])
        st = ok_json(p, "snapsave --resume")
        require(status(g) == "running", f"--resume: guest is {status(g)}")
        g.wait_tick(last + 1, 30)
        print(f"  --resume: downtime {st['downtime-ms']:.0f} ms, phases {st['phases']}",
              flush=True)
        os.unlink(f0)
        snap = os.path.join(work, "q10.snap")
        st, before = save_quit(g, snap)
        print(f"  --quit: downtime {st['downtime-ms']:.0f} ms, phases {st['phases']}, "
              f"{st['ram-bytes']} RAM bytes", flush=True)
        restore_refusals(qemu, image, snap, work)
        restore_qmp(qemu, image, "q35", snap, before, want,
                    "snaprestore --qmp --paused (10, no -S)", paused=True).stop()
        dst = restore_qmp(qemu, image, "q35", snap, before, want, "snaprestore --qmp (10)")
        load_native(qemu, image, "q35", snap, before, want, "native mapped-ram load (10)")
        print(f"  {measure_qemu(dst, work)}", flush=True)
    finally:
        g.stop()
        if dst:
            dst.stop()


def lineage72(q72, q10, image, work):
    print(f"== {q72.label}, q35, 256M + pc-dimm 128M in a memfd", flush=True)
    g, want = boot(q72, image, "q35", memfd_ram1)
    try:
        snap = os.path.join(work, "q72.snap")
        st, before = save_quit(g, snap)
        print(f"  --quit: downtime {st['downtime-ms']:.0f} ms, machine {st['machine']}",
              flush=True)
        restore_qmp(q72, image, "q35", snap, before, want, "snaprestore --qmp (7.2, memfd)",
                    wrap=memfd_ram1).stop()
        load_native(q10, image, st["machine"], snap, before, want,
                    f"native load in {q10.label} -M {st['machine']}")
    finally:
        g.stop()


def lineage_shape(qemu, image, work, machine, smp, dimm):
    """The rest of the matrix, one boot each: two cycles of --quit and
    snaprestore --qmp into a new QEMU over new backend files."""
    shape = {"smp": smp, "dimm": dimm}
    print(f"== {qemu.label}, {machine}, {smp} vCPU(s), 256M"
          + (f" + pc-dimm {dimm}" if dimm else ", one backend"), flush=True)
    g, want = boot(qemu, image, machine, **shape)
    before = b""
    try:
        for cycle in (1, 2):
            snap = os.path.join(work, f"cycle{cycle}.snap")
            g.wait_tick(max(n for n, _ in g.ticks()), 30)
            st, out = save_quit(g, snap)
            before += out
            require(st["machine"].startswith("pc-q35" if machine == "q35" else "pc-i440fx"),
                    f"machine {st['machine']} for -M {machine}")
            g = restore_qmp(qemu, image, machine, snap, before, want,
                            f"cycle {cycle}: snaprestore --qmp", **shape)
            os.unlink(snap)
    finally:
        g.stop()


def main():
    for exe in (SNAPSAVE, SNAPRESTORE):
        if not os.access(exe, os.X_OK):
            print(f"FAIL: {exe} is not built")
            return 1
    t_start = time.monotonic()
    try:
        image = G.Image()
        q10 = G.qemu_current()
        if q10.version() < (9, 0):
            raise G.Unavailable(f"{q10.label} has no mapped-ram")
        q72 = G.qemu72()
    except G.Unavailable as e:
        print(f"SKIP: {e}")
        return SKIP
    work = tempfile.mkdtemp(prefix="snapmr-qmpflow-", dir=WORK_DIR)
    return G.run_cases([("memfd", lambda: memfd(q72, image, work)),
                        ("10", lambda: lineage10(q10, image, work)),
                        ("7.2", lambda: lineage72(q72, q10, image, work)),
                        ("10 pc", lambda: lineage_shape(q10, image, work, "pc", 2, None)),
                        ("7.2 pc", lambda: lineage_shape(q72, image, work, "pc", 2, None))],
                       work, t_start)


if __name__ == "__main__":
    sys.exit(main())
