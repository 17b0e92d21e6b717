#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Faults during a save: the failshim LD_PRELOAD library fails the Nth write,
# sync, truncate or rename with ENOSPC or EIO (and makes writes short or
# interrupted); a small tmpfs gives real ENOSPC; SIGKILL lands at random
# moments. Afterwards the final path holds nothing or the previous complete
# file, byte for byte, no temporary file is left (except after SIGKILL), and
# no restore from what is left succeeds with wrong data.
#
# Page writes go through pwritev only with --io threads; io_uring and libaio
# submit them to the kernel directly, so the shim catches those at
# submission (uring-write, aio-write): the injected cases run each engine.

import os
import random
import shutil
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faultlib import *  # noqa: E402,F401,F403

ERRNOS = {"ENOSPC": "No space left on device", "EIO": "Input/output error"}
SEED = int(os.environ.get("SNAPMR_FAULT_SEED", "20251122"))


class Setup:
    pass


def make_setup():
    s = Setup()
    s.shm = scratch("shm")
    s.disk = scratch("disk")
    s.ram = os.path.join(s.shm, "pc.ram")
    s.rom = os.path.join(s.shm, "pc.rom")
    s.dev = os.path.join(s.shm, "dev")
    # 2 MiB of mixed pages: with --max-io-size 64K there are dozens of page writes
    write_pattern(s.ram, mixed_runs(512, 1), 1)
    write_pattern(s.rom, [("rand", 3), ("hole", 5), ("fill", 8)], 2)
    with open(s.dev, "wb") as f:
        f.write(random.Random(3).randbytes(100 * KiB + 5))
    # A different save that plays "the previous complete file".
    s.old_ram = os.path.join(s.shm, "old.ram")
    write_pattern(s.old_ram, mixed_runs(64, 9), 9)
    return s


def save_args(s, out, *extra):
    return ["-o", out, "--ram", "pc.ram=" + s.ram, "--ram", "pc.rom=" + s.rom, "-d", s.dev,
            "--io", "threads", "--max-io-size", "64K", "-j", "2"] + list(extra)


def count_calls(s, op, d, substr, *extra):
    """Number of `op` calls a clean save makes on files matching substr."""
    rep = os.path.join(s.shm, "report-%s" % op)
    if os.path.exists(rep):
        os.unlink(rep)
    out = os.path.join(d, "count.snap")
    ok(snapsave(*save_args(s, out, *extra),
                extra_env=shim_env(op, 0, substr=substr or "count.snap", report=rep)),
       "counting %s calls" % op)
    os.unlink(out)
    with open(rep) as f:
        line = f.read().split()
    return int(line[0].split("=")[1])


def sample(n, rng, limit=24):
    """Every call if there are few, else the first, last and a random sample."""
    if n <= limit:
        return list(range(1, n + 1))
    picks = set(range(1, 5)) | set(range(n - 3, n + 1))
    while len(picks) < limit:
        picks.add(rng.randrange(1, n + 1))
    return sorted(picks)


def check_restore_matches(s, snap, d, what):
    """snap must verify and restore to exactly the sources."""
    ok(snaprestore("--verify", snap), what + ": --verify")
    a, b, dv = (os.path.join(d, n) for n in ("r-ram", "r-rom", "r-dev"))
    ok(snaprestore(snap, "--ram", "pc.ram=" + a, "--ram", "pc.rom=" + b, "-d", dv),
       what + ": restore")
    compare_files(s.ram, a, what + ": pc.ram")
    compare_files(s.rom, b, what + ": pc.rom")
    compare_files(s.dev, dv, what + ": device state")
    for p in (a, b, dv):
        os.unlink(p)


# ------------------------------------------------------------ injected faults

def injected(s, op, err, direct, engine="threads"):
    """Fails each (or a sample of each) `op` call of a save, with and without
    a previous complete file at the final path."""
    if snapsave("--io", engine, "--version").rc != 0:
        raise Skip("the %s engine is not built or cannot start here" % engine)
    d = scratch("disk") if direct == "on" else scratch("shm")
    extra = ["--direct", direct, "--io", engine]
    if direct == "on":
        probe = snapsave("-o", os.path.join(d, "probe.snap"), "--ram", "pc.ram=" + s.old_ram,
                         "--direct", "on", "--io", "threads")
        if probe.rc != 0:
            raise Skip("O_DIRECT saves fail in %s: %s" % (d, probe.err.strip()))
        os.unlink(os.path.join(d, "probe.snap"))
    final = os.path.join(d, "out.snap")
    tmp_sub = ".out.snap.snapmr-"
    # The rename names the temporary file; everything else is a write to it.
    n = count_calls(s, op, d, ".count.snap.snapmr-", *extra)
    if n == 0:
        raise Skip("a save makes no %s call here" % op)
    old = os.path.join(d, "old.snap")
    ok(snapsave("-o", old, "--ram", "pc.ram=" + s.old_ram, "--direct", "off"), "old save")
    old_hash = sha256(old)
    rng = random.Random("%s-%s-%s-%d" % (op, err, direct, SEED))
    picks = sample(n, rng)
    for nth in picks:
        for previous in (False, True):
            what = "%s #%d/%d %s%s" % (op, nth, n, err, " over a previous file" if previous
                                       else "")
            if previous:
                os.link(old, final)
            before = sorted(os.listdir(d))
            r = snapsave(*save_args(s, final, *extra),
                         extra_env=shim_env(op, nth, err, substr=tmp_sub))
            one_line_error(r, what, final, ERRNOS[err])
            left = temp_leftovers(d)
            check(not left, "%s: temporary files left: %s" % (what, left))
            check(sorted(os.listdir(d)) == before,
                  "%s: directory changed: %s -> %s" % (what, before, sorted(os.listdir(d))))
            if previous:
                check(sha256(final) == old_hash,
                      "%s: the previous file at %s was changed" % (what, final))
                os.unlink(final)
            else:
                check(not os.path.exists(final), "%s: %s exists" % (what, final))
    os.unlink(old)
    note("     %s %s --direct %s --io %s: %d of %d calls failed in turn" % (
        op, err, direct, engine, len(picks), n))


def fd_output_injected(s, err):
    """A descriptor output is written in place: after a failed write the
    file must read as incomplete (or broken), never restore."""
    d = scratch("shm")
    path = os.path.join(d, "fd.snap")
    n = count_calls(s, "pwrite", d, "count.snap", "--direct", "off")
    rng = random.Random(SEED)
    for nth in sample(n, rng, 8):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            r = snapsave(*save_args(s, "fd:%d" % fd, "--direct", "off"), pass_fds=(fd,),
                         extra_env=shim_env("pwrite", nth, err, substr="fd.snap"))
        finally:
            os.close(fd)
        what = "fd:N, pwrite #%d/%d %s" % (nth, n, err)
        one_line_error(r, what, ERRNOS[err])
        refuses_partial(path, d, what)
    os.unlink(path)


def refuses_partial(path, d, what):
    """A partial file: every restore and --verify must fail with one line."""
    dest = os.path.join(d, "dest")
    os.makedirs(dest, exist_ok=True)
    r = snaprestore(path, "--all", dest, "-d", os.path.join(dest, "dev"))
    one_line_error(r, what + ": restore of the partial file")
    r2 = snaprestore("--verify", path)
    check(r2.rc == 1, "%s: --verify of the partial file exited %d\n  %s" % (
        what, r2.rc, r2.describe()))
    shutil.rmtree(dest)
    return error_lines(r)[0]


def short_writes(s):
    """Every write and pwritev comes back half done: the save must complete
    them and produce a file identical to an undisturbed save."""
    d = scratch("shm")
    ref = os.path.join(d, "ref.snap")
    out = os.path.join(d, "short.snap")
    ok(snapsave(*save_args(s, ref, "--direct", "off")), "reference save")
    r = snapsave(*save_args(s, out, "--direct", "off"),
                 extra_env=shim_env("writes", 1, count=0, mode="short",
                                    substr=".short.snap.snapmr-",
                                    report=os.path.join(d, "rep")))
    ok(r, "save with short writes")
    with open(os.path.join(d, "rep")) as f:
        shortened = int(f.read().split()[1].split("=")[1])
    check(shortened > 10, "only %d writes were shortened" % shortened)
    check(same_bytes(ref, out), "short writes: the file differs from an undisturbed save")
    check_restore_matches(s, out, d, "short writes")


def source_reads(s):
    """The zero scan reads tmpfs guest memory with pread: a failing read
    names the block and leaves nothing behind; reads cut short are
    completed and give the same file as an undisturbed save."""
    d = scratch("shm")
    ref = os.path.join(d, "ref.snap")
    ok(snapsave(*save_args(s, ref)), "reference save")
    for err, msg in ERRNOS.items():
        out = os.path.join(d, "src-%s.snap" % err)
        r = snapsave(*save_args(s, out), extra_env=shim_env("pread", 2, err, substr="pc.ram"))
        one_line_error(r, "pread %s on the source" % err, "block 'pc.ram'",
                       "reading its source", msg)
        check(not os.path.exists(out), "pread %s: the final path exists" % err)
        check(not temp_leftovers(d), "pread %s left %r" % (err, temp_leftovers(d)))
    out = os.path.join(d, "src-short.snap")
    rep = os.path.join(d, "rep-pread")
    ok(snapsave(*save_args(s, out), extra_env=shim_env("pread", 1, count=0, mode="short",
                                                        substr="pc.ram", report=rep)),
       "save with short source reads")
    with open(rep) as f:
        shortened = int(f.read().split()[1].split("=")[1])
    check(shortened > 3, "only %d source reads were shortened" % shortened)
    check(same_bytes(ref, out), "short source reads: the file differs from an undisturbed save")


def interrupted(s, op):
    """EINTR is not an error: the call is repeated and the save succeeds."""
    d = scratch("shm")
    ref = os.path.join(d, "ref.snap")
    out = os.path.join(d, "eintr.snap")
    ok(snapsave(*save_args(s, ref, "--direct", "off")), "reference save")
    for nth in (1, 2, 3):
        r = snapsave(*save_args(s, out, "--direct", "off"),
                     extra_env=shim_env(op, nth, "EINTR", count=2,
                                        substr=".eintr.snap.snapmr-"))
        ok(r, "%s #%d EINTR" % (op, nth))
        check(same_bytes(ref, out), "%s #%d EINTR: the file differs" % (op, nth))
    check_restore_matches(s, out, d, "EINTR")


# ----------------------------------------------------------- real ENOSPC

def real_enospc(s, engine):
    """A tmpfs a little too small, at sizes that run out in the page data,
    the bitmaps, the tail and the trailer."""
    d = scratch("disk")
    mnt = mount_tmpfs(os.path.join(d, "mnt"), 64 * MiB)
    src = os.path.join(s.shm, "enospc.ram")
    write_pattern(src, [("rand", 1000), ("hole", 24), ("rand", 500), ("zero", 100)], 11)
    need_ref = os.path.join(s.shm, "enospc-ref.snap")
    base = ["--ram", "pc.ram=" + src, "-d", s.dev, "--direct", "off"]
    if engine:
        base += ["--io", engine]
    ok(snapsave("-o", need_ref, *base), "reference save")
    need = os.stat(need_ref).st_blocks * 512
    os.unlink(need_ref)
    umount(mnt)
    sizes = [1 * MiB, need // 2] + [need - k * PAGE for k in range(8, -1, -1)] + \
        [need + PAGE, need + 64 * KiB]
    results = {"ENOSPC": 0, "fit": 0}
    phases = set()
    for size in sizes:
        mount_tmpfs(mnt, size)
        out = os.path.join(mnt, "out.snap")
        what = "tmpfs of %d bytes (the save needs %d)" % (size, need)
        r = snapsave("-o", out, *base)
        if r.rc == 0:
            results["fit"] += 1
            check(size >= need - 8 * PAGE, "%s: a save that cannot fit succeeded" % what)
            ok(snaprestore("--verify", out), what + ": --verify")
            os.unlink(out)
        else:
            results["ENOSPC"] += 1
            line = one_line_error(r, what, out, ERRNOS["ENOSPC"])
            phases.add(line.split(": ")[2].split(" at offset")[0])
            check(not os.path.exists(out), "%s: %s exists" % (what, out))
            check(not temp_leftovers(mnt), "%s: temporary files left: %s" % (
                what, temp_leftovers(mnt)))
        umount(mnt)
    check(results["ENOSPC"] >= 3, "only %d sizes ran out of space" % results["ENOSPC"])
    # A previous complete file survives a save that runs out of space.
    mount_tmpfs(mnt, need)
    out = os.path.join(mnt, "out.snap")
    ok(snapsave("-o", out, "--ram", "pc.ram=" + s.old_ram, "--direct", "off"), "small save")
    old_hash = sha256(out)
    r = snapsave("-o", out, *base)
    one_line_error(r, "ENOSPC over a previous file", out, ERRNOS["ENOSPC"])
    check(sha256(out) == old_hash, "ENOSPC: the previous file was changed")
    check(not temp_leftovers(mnt), "ENOSPC: temporary files left")
    umount(mnt)
    note("     %s engine: %d sizes ran out of space, %d fit; failed in: %s" % (
        engine or "default", results["ENOSPC"], results["fit"], "; ".join(sorted(phases))))


# ----------------------------------------------------------------- SIGKILL

def timed_save(argv, delay, pass_fds=()):
    """Starts a save, SIGKILLs it after `delay` seconds; returns its status
    (negative: killed) and stderr."""
    p = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=pass_fds)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    _, err = p.communicate(timeout=120)
    return p.returncode, err.decode("utf-8", "replace")


def sigkill(s):
    """20 saves of 256 MiB killed at random moments, half of them over a
    previous complete file."""
    shm = scratch("shm")
    d = scratch("disk")
    src = os.path.join(shm, "big.ram")
    write_pattern(src, mixed_runs(65536, 7), 7)
    final = os.path.join(d, "out.snap")
    args = [SNAPSAVE, "-o", final, "--ram", "pc.ram=" + src, "--io", "threads", "--direct",
            "off", "-j", "1", "--max-io-size", "16K"]
    # The undisturbed result and how long it takes once the caches are warm
    duration = None
    for _ in range(3):
        r = ok(run(args), "reference save")
        duration = min(duration or r.seconds, r.seconds)
    new_hash = sha256(final)
    os.unlink(final)
    old = os.path.join(d, "old.snap")
    ok(snapsave("-o", old, "--ram", "pc.ram=" + s.old_ram, "--direct", "off"), "old save")
    old_hash = sha256(old)
    rng = random.Random(SEED)
    seen = {"nothing": 0, "previous": 0, "new": 0, "leftover": 0}
    for i in range(20):
        previous = i % 2 == 1
        if previous:
            os.link(old, final)
        delay = rng.uniform(0, duration * 1.1)
        what = "kill %d after %.3fs of ~%.3fs%s" % (i, delay, duration,
                                                    " over a previous file" if previous else "")
        rc, err = timed_save(args, delay)
        check(rc in (0, -signal.SIGKILL), "%s: exit %d: %s" % (what, rc, err.strip()))
        if os.path.exists(final):
            h = sha256(final)
            if h == new_hash:
                seen["new"] += 1
            elif previous and h == old_hash:
                seen["previous"] += 1
            else:
                fail("%s: %s holds neither the previous nor the finished file" % (what, final))
            os.unlink(final)
        else:
            check(not previous, "%s: the previous file is gone" % what)
            seen["nothing"] += 1
        for t in temp_leftovers(d):
            seen["leftover"] += 1
            tp = os.path.join(d, t)
            # Killed between the last sync and the rename: complete, never renamed.
            if sha256(tp) != new_hash:
                refuses_partial(tp, d, what + ": leftover " + t)
            os.unlink(tp)
    os.unlink(old)
    note("     outcomes: %s (save takes %.3fs)" % (seen, duration))


def sigkill_fd_output(s):
    """A save into fd:N killed part way: the file is written in place, so
    the trailer's completion record is all that tells it is unfinished."""
    shm = scratch("shm")
    d = scratch("disk")
    src = os.path.join(shm, "big.ram")
    write_pattern(src, mixed_runs(32768, 8), 8)
    path = os.path.join(d, "fd.snap")

    def argv(fd):
        return [SNAPSAVE, "-o", "fd:%d" % fd, "--ram", "pc.ram=" + src, "--io", "threads",
                "--direct", "off", "-j", "1", "--max-io-size", "16K"]

    def start(delay):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            return timed_save(argv(fd), delay, pass_fds=(fd,))
        finally:
            os.close(fd)

    duration = None
    for _ in range(2):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            r = ok(run(argv(fd), pass_fds=(fd,)), "reference fd save")
        finally:
            os.close(fd)
        duration = min(duration or r.seconds, r.seconds)
    done_hash = sha256(path)
    killed = 0
    rng = random.Random(SEED + 1)
    for i in range(6):
        delay = duration * rng.uniform(0.1, 0.9)
        rc, err = start(delay)
        what = "fd:N save killed after %.3fs of ~%.3fs" % (delay, duration)
        if rc == 0 or sha256(path) == done_hash:
            # finished before the kill (or right as it came): a complete file
            ok(snaprestore("--verify", path), what + ": finished anyway, --verify")
            continue
        killed += 1
        line = refuses_partial(path, d, what)
        check("incomplete" in line or "offset" in line,
              "%s: not refused as incomplete or damaged: %s" % (what, line))
    check(killed > 0, "no save was killed before it finished")


def main():
    require_tools(shim=True)
    cases = Cases("faults")
    s = make_setup()
    for op in ("pwrite", "pwritev", "fdatasync", "ftruncate", "rename"):
        for err in ERRNOS:
            cases.case("inject %s %s" % (op, err), injected, s, op, err, "off")
    for err in ERRNOS:
        cases.case("inject pwritev %s --direct on" % err, injected, s, "pwritev", err, "on")
        # libaio completions take any errno (the engine needs O_DIRECT); io_uring's
        # writes go to /dev/full: ENOSPC only.
        cases.case("inject aio-write %s --direct on" % err, injected, s, "aio-write", err,
                   "on", "aio")
        if err == "ENOSPC":
            for direct in ("off", "on"):
                cases.case("inject uring-write %s --direct %s" % (err, direct), injected, s,
                           "uring-write", err, direct, "uring")
    for err in ERRNOS:
        cases.case("inject fd:N pwrite %s" % err, fd_output_injected, s, err)
    cases.case("short writes", short_writes, s)
    cases.case("source reads fail or come back short", source_reads, s)
    cases.case("EINTR pwrite", interrupted, s, "pwrite")
    cases.case("EINTR pwritev", interrupted, s, "pwritev")
    cases.case("real ENOSPC, threads engine", real_enospc, s, "threads")
    cases.case("real ENOSPC, default engine", real_enospc, s, None)
    cases.case("SIGKILL x20", sigkill, s)
    cases.case("SIGKILL fd:N", sigkill_fd_output, s)
    cases.finish()


if __name__ == "__main__":
    main()
