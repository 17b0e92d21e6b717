#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Hardening of the save's output and of how the tools die (issue 12):
# - an unprivileged user who can write the output directory swaps the
#   temporary file for a symlink to a root-owned file while root saves with a
#   big --offset prefix: the root-owned file stays untouched and the save
#   either fails cleanly or leaves a correct regular file;
# - an output descriptor that is a block device is refused before a write;
# - every default-fatal signal during a save leaves no temporary file, one
#   line, and the process dies by that signal;
# - a file size limit (ulimit -f) is one error line and exit 1, for snapsave
#   and for snaprestore creating a destination;
# - stale temporaries of a dead process are reaped, nothing else is;
# - an fd set whose buffered and O_DIRECT descriptors are different files is
#   refused by both tools.

import os
import pwd
import resource
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403

FATAL = ["SIGHUP", "SIGINT", "SIGQUIT", "SIGABRT", "SIGUSR1", "SIGUSR2", "SIGALRM",
         "SIGTERM", "SIGSTKFLT", "SIGXCPU", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR",
         "SIGSYS"]


class Env:
    pass


def setup():
    e = Env()
    e.shm = scratch("shm")
    e.disk = scratch("disk")
    e.small = make_block("pc.ram", e.shm, pattern("mixed", 2 * MiB, 5), "small")
    return e


def default_signals():
    """preexec_fn: the child starts with every signal at its default action
    (the test runner may ignore some) and writes no core dump."""
    for s in range(1, signal.SIGRTMAX + 1):
        if s in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(s, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def unprivileged(argv):
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] + argv


# The racer, run as nobody: swaps every .snapmr- entry of the directory for a
# symlink to the victim, as fast as it can, until the stop file appears.
RACER = r"""
import os, sys
d, victim, ready, stop = sys.argv[1:5]
open(ready, "w").close()
n = 0
while not os.path.exists(stop):
    for name in os.listdir(d):
        p = os.path.join(d, name)
        if ".snapmr-" not in name or name.startswith("moved-") or os.path.islink(p):
            continue
        try:
            os.rename(p, os.path.join(d, "moved-%d-%s" % (n, name)))
            os.symlink(victim, p)
            n += 1
        except OSError:
            pass
"""


def symlink_race(e):
    if os.geteuid() != 0:
        raise Skip("the race needs root to save and nobody to race (euid %d)" % os.geteuid())
    nobody = pwd.getpwnam("nobody")
    if run(unprivileged(["true"])).rc != 0:
        raise Skip("setpriv cannot switch to nobody")
    base = os.path.join(e.disk, "race")
    os.makedirs(base)
    udir = os.path.join(base, "udir")
    os.makedirs(udir)
    os.chown(udir, nobody.pw_uid, nobody.pw_gid)
    victim = os.path.join(base, "root-owned")
    write_bytes(victim, b"root's own file\n" * 256)
    before = sha256(victim)
    prefix = 96 * MiB
    final = os.path.join(udir, "vm.snap")
    fill_file(final, prefix, 0x5A)
    os.chown(final, nobody.pw_uid, nobody.pw_gid)
    racer_py = os.path.join(base, "racer.py")
    write_bytes(racer_py, RACER.encode())
    ready, stop = os.path.join(udir, "ready"), os.path.join(base, "stop")
    racer = subprocess.Popen(unprivileged([sys.executable, racer_py, udir, victim, ready, stop]),
                             stdin=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while not os.path.exists(ready):
            check(racer.poll() is None, "the racer ended early")
            check(time.monotonic() - t0 < 30, "the racer did not start")
            time.sleep(0.01)
        r = snapsave("-o", final, "--offset", str(prefix), "--ram", "pc.ram=" + e.small.src,
                     "--direct", "auto")
    finally:
        write_bytes(stop, b"")
        racer.wait(timeout=30)
    st = os.lstat(victim)
    check(sha256(victim) == before and st.st_size == 4096,
          "the root-owned file was written through the swapped temporary file\n  %s" %
          r.describe())
    swapped = [n for n in os.listdir(udir) if n.startswith("moved-")]
    note("  raced save: exit %d, %s; the racer swapped %d name(s)" % (
        r.rc, r.err.strip() or "no message", len(swapped)))
    check(swapped, "the racer never swapped the temporary file: the race was not run")
    if r.rc == 0:
        # a success is only a success if the final name is our regular file
        check(not os.path.islink(final), "snapsave exited 0 but %s is a symlink" % final)
        _, dests = restore_blocks(final, [e.small], e.shm, "--offset", str(prefix),
                                  what="restore of the raced save")
        os.unlink(dests[0])
        with open(final, "rb") as f:
            check(f.read(4096) == bytes([0x5A]) * 4096, "the prefix was not carried over")
    else:
        expect_error(r, 1, final, "changed the directory", what="raced save")
    # whatever the racer moved away holds no guest memory
    for n in swapped:
        p = os.path.join(udir, n)
        if not os.path.islink(p) and os.path.exists(p):
            check(os.path.getsize(p) == 0 or r.rc == 0,
                  "a swapped-away temporary %s still holds %d bytes" % (n, os.path.getsize(p)))


def symlink_output_followed(e):
    # -o through a symlink keeps working: the target is replaced in its own
    # directory (as QEMU's open writes through it), the link stays a link;
    # --offset takes the prefix from the target
    d = os.path.join(e.disk, "follow")
    real_dir = os.path.join(d, "real")
    os.makedirs(real_dir)
    target = os.path.join(real_dir, "vm.snap")
    fill_file(target, 8192, 0x33)
    link = os.path.join(d, "link.snap")
    os.symlink(target, link)
    ok(snapsave("-o", link, "--offset", "8192", "--ram", "pc.ram=" + e.small.src),
       "save through a symlink")
    check(os.path.islink(link) and os.readlink(link) == target, "the symlink was replaced")
    with open(target, "rb") as f:
        check(f.read(8192) == b"\x33" * 8192, "the prefix was not taken from the target")
    _, dests = restore_blocks(link, [e.small], e.shm, "--offset", "8192",
                              what="restore through the symlink")
    os.unlink(dests[0])
    check(not temp_leftovers(d) and not temp_leftovers(real_dir), "temporary files left")


def block_device_output(e):
    if os.geteuid() != 0:
        raise Skip("losetup needs root (euid %d)" % os.geteuid())
    img = os.path.join(e.disk, "loop.img")
    fill_file(img, 16 * MiB, 0xC3)
    lo = run(["losetup", "-f", "--show", img])
    if lo.rc != 0:
        raise Skip("losetup is impossible here: %s" % lo.err.strip())
    dev = lo.outs.strip()
    try:
        before = sha256(dev)
        fd = os.open(dev, os.O_WRONLY)
        try:
            r = snapsave("-o", "fd:%d" % fd, "--ram", "pc.ram=" + e.small.src, pass_fds=(fd,))
            expect_error(r, 1, "fd:%d" % fd, "block device", "regular file",
                         what="fd:N on a block device")
            r = snapsave("--add-fd", "fd=%d,set=3" % fd, "-o", "/dev/fdset/3", "--ram",
                         "pc.ram=" + e.small.src, pass_fds=(fd,))
            expect_error(r, 1, "/dev/fdset/3", "block device", what="fd set on a block device")
        finally:
            os.close(fd)
        # the same rule for a path naming the device
        r = snapsave("-o", dev, "--ram", "pc.ram=" + e.small.src)
        expect_error(r, 1, dev, "block device", "regular file", what="a device path")
        check(sha256(dev) == before, "something was written to the block device")
    finally:
        run(["losetup", "-d", dev])


def fatal_signal(e, name, sig=None):
    sig = sig or getattr(signal, name, None)
    if sig is None:
        raise Skip("%s does not exist here" % name)
    d = os.path.join(e.disk, "sig-" + name)
    os.makedirs(d)
    final = os.path.join(d, "vm.snap")
    # blocked reading device state from a pipe we hold: mid-save, deterministically
    p = subprocess.Popen([SNAPSAVE, "-o", final, "--ram", "pc.ram=" + e.small.src, "-d", "-"],
                         stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=default_signals)
    try:
        p.stdin.write(os.urandom(1000))
        p.stdin.flush()
        t0 = time.monotonic()
        tmp = []
        while not tmp and p.poll() is None and time.monotonic() - t0 < 30:
            tmp = temp_leftovers(d)
            time.sleep(0.005)
        check(tmp, "%s: no temporary file appeared (%s)" % (name, p.poll()))
        time.sleep(0.05)
        p.send_signal(sig)
        rc = p.wait(timeout=30)
        err = p.stderr.read().decode()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdin.close()
        p.stderr.close()
    check(rc == -sig, "%s: exit status %d, expected death by the signal (%s)" % (
        name, rc, err.strip()))
    left = temp_leftovers(d)
    check(not left and not os.path.exists(final), "%s: left behind %r" % (name, os.listdir(d)))
    lines = [l for l in err.splitlines() if l.strip()]
    said = "killed by %s;" % name
    check(len(lines) == 1 and lines[0].startswith("snapsave: ") and said in lines[0],
          "%s: expected one line saying %r, got %r" % (name, said, lines))
    check(tmp[0].startswith(".vm.snap.snapmr-%d-" % p.pid),
          "%s: the temporary name %r holds no process id" % (name, tmp[0]))


def restore_signals(e):
    # the handler serves snaprestore too: a fatal signal mid-restore removes
    # the destination it created (it would hold part of a guest)
    src = make_block("pc.ram", e.shm, pattern("random", 64 * MiB, 9), "rsig").src
    snap = os.path.join(e.disk, "rsig.snap")
    ok(snapsave("-o", snap, "--ram", "pc.ram=" + src), "save for the restore signals")
    os.unlink(src)
    for name in ("SIGQUIT", "SIGUSR1", "SIGXCPU"):
        sig = getattr(signal, name)
        dest = os.path.join(e.shm, "rsig-dest.ram")
        p = subprocess.Popen([SNAPRESTORE, snap, "--ram", "pc.ram=" + dest, "-j", "1",
                              "--io", "threads", "--max-io-size", "4K"],
                             stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             preexec_fn=default_signals)
        try:
            t0 = time.monotonic()
            while p.poll() is None and time.monotonic() - t0 < 30:
                if os.path.exists(dest) and allocated(dest) >= 4 * MiB:
                    break
                time.sleep(0.002)
            check(p.poll() is None, "%s: the restore ended before the signal" % name)
            p.send_signal(sig)
            rc = p.wait(timeout=60)
            err = p.stderr.read().decode()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stderr.close()
        check(rc == -sig, "%s during a restore: exit status %d (%s)" % (name, rc, err.strip()))
        check(not os.path.exists(dest), "%s during a restore: the destination it created "
              "is still there" % name)
        lines = [l for l in err.splitlines() if l.strip()]
        check(len(lines) == 1 and lines[0].startswith("snaprestore: killed by %s;" % name),
              "%s during a restore: expected one line naming it, got %r" % (name, lines))
    os.unlink(snap)


def file_size_limit(e):
    limit = 1 * MiB

    def limited():
        default_signals()
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    d = os.path.join(e.disk, "fsize")
    os.makedirs(d)
    final = os.path.join(d, "vm.snap")
    r = snapsave("-o", final, "--ram", "pc.ram=" + e.small.src, preexec_fn=limited,
                 allow_signal=True)
    expect_error(r, 1, final, "ulimit -f", str(limit), what="snapsave under ulimit -f")
    check(not os.listdir(d), "snapsave under ulimit -f left %r" % os.listdir(d))

    snap = os.path.join(d, "ok.snap")
    ok(snapsave("-o", snap, "--ram", "pc.ram=" + e.small.src), "save for the restore")
    dest = os.path.join(d, "dest.ram")
    r = snaprestore(snap, "--ram", "pc.ram=" + dest, preexec_fn=limited, allow_signal=True)
    expect_error(r, 1, dest, "ulimit -f", str(limit), what="snaprestore under ulimit -f")
    check(not os.path.exists(dest), "snaprestore under ulimit -f left its destination")
    check(not temp_leftovers(d), "temporary files left: %r" % temp_leftovers(d))


def dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def stale_reaping(e):
    d = os.path.join(e.disk, "reap")
    os.makedirs(d)
    final = os.path.join(d, "vm.snap")
    dead = dead_pid()
    check(not os.path.exists("/proc/%d" % dead), "pid %d came back" % dead)
    gone = ".vm.snap.snapmr-%d-aB3dE9" % dead
    live = ".vm.snap.snapmr-%d-xY7zQ1" % os.getpid()
    foreign = ".vm.snap.snapmr-%d-fO0bAr" % dead
    link = ".vm.snap.snapmr-%d-l1nKed" % dead
    other_name = ".other.snap.snapmr-%d-oThEr1" % dead
    old_style = ".vm.snap.snapmr-a1b2c3"
    for n in (gone, live, foreign, other_name, old_style):
        write_bytes(os.path.join(d, n), b"guest memory" * 100)
    os.symlink(os.path.join(d, live), os.path.join(d, link))
    if os.geteuid() == 0:
        os.chown(os.path.join(d, foreign), 65534, 65534)
    else:
        os.unlink(os.path.join(d, foreign))
        foreign = None
    r = ok(snapsave("-o", final, "--ram", "pc.ram=" + e.small.src), "save with stale temps")
    notes = [l for l in r.err.splitlines() if l.strip()]
    check(len(notes) == 1 and notes[0].startswith("snapsave: note: ") and gone in notes[0],
          "expected one note naming %s, got %r" % (gone, notes))
    left = set(os.listdir(d))
    check(gone not in left, "the dead process's temporary %s was not removed" % gone)
    for n in (live, foreign, link, other_name, old_style):
        check(n is None or n in left, "%s was removed: it is not ours to remove" % n)
    _, dests = restore_blocks(final, [e.small], e.shm, what="restore after reaping")
    os.unlink(dests[0])


def mixed_fdset(e):
    if not direct_supported(e.disk):
        raise Skip("no O_DIRECT on %s" % e.disk)
    d = os.path.join(e.disk, "mixed")
    os.makedirs(d)
    out, other = os.path.join(d, "out.snap"), os.path.join(d, "other")
    write_bytes(out, b"")
    write_bytes(other, b"")
    a = os.open(out, os.O_WRONLY)
    b = os.open(other, os.O_WRONLY | os.O_DIRECT)
    try:
        r = snapsave("--add-fd", "fd=%d,set=1" % a, "--add-fd", "fd=%d,set=1" % b, "-o",
                     "/dev/fdset/1", "--ram", "pc.ram=" + e.small.src, pass_fds=(a, b))
        expect_error(r, 1, "/dev/fdset/1", "another file", what="save: twins of two files")
    finally:
        os.close(a)
        os.close(b)
    check(os.path.getsize(other) == 0, "the save wrote into the other file of the set")

    snap = os.path.join(d, "good.snap")
    ok(snapsave("-o", snap, "--ram", "pc.ram=" + e.small.src), "save for the restore")
    fill_file(other, os.path.getsize(snap), 0x77)
    a = os.open(snap, os.O_RDONLY)
    b = os.open(other, os.O_RDONLY | os.O_DIRECT)
    dest = os.path.join(e.shm, "mixed.ram")
    try:
        r = snaprestore("--add-fd", "fd=%d,set=2" % a, "--add-fd", "fd=%d,set=2" % b,
                        "/dev/fdset/2", "--ram", "pc.ram=" + dest, pass_fds=(a, b))
        expect_error(r, 1, "/dev/fdset/2", "another file", what="restore: twins of two files")
    finally:
        os.close(a)
        os.close(b)
    check(not os.path.exists(dest), "the refused restore created its destination")


def stdout_failures(e):
    """--json and --help into a full or closed stdout: exit 1 and say so."""
    if not os.path.exists("/dev/full"):
        raise Skip("no /dev/full")

    def full():
        fd = os.open("/dev/full", os.O_WRONLY)
        os.dup2(fd, 1)
        os.close(fd)

    out = os.path.join(e.disk, "json.snap")
    for how, pre, why in (("full", full, "No space left on device"),
                          ("closed", lambda: os.close(1), "Bad file descriptor")):
        for label, args in (("--json", ["-o", out, "--ram", "pc.ram=" + e.small.src,
                                        "--json"]),
                            ("--help", ["--help"])):
            r = run([SNAPSAVE] + args, preexec_fn=pre)
            expect_error(r, 1, "stdout: " + why, what="%s with stdout %s" % (label, how))
    # Nothing printed: a closed stdout is no error.
    ok(run([SNAPSAVE, "-o", out, "--ram", "pc.ram=" + e.small.src],
           preexec_fn=lambda: os.close(1)), "save without output, stdout closed")


def main():
    require_binaries()
    e = setup()
    t = Cases("hardening-save")
    t.case("a symlink swapped in for the temporary file (as nobody, --offset)",
           symlink_race, e)
    t.case("-o through a symlink is followed as before", symlink_output_followed, e)
    t.case("an output descriptor on a block device is refused", block_device_output, e)
    for name in FATAL:
        t.case("%s during a save" % name, fatal_signal, e, name)
    t.case("SIGRTMIN+2 during a save", fatal_signal, e, "SIGRTMIN+2", signal.SIGRTMIN + 2)
    t.case("fatal signals during a restore", restore_signals, e)
    t.case("ulimit -f: one error line, exit 1", file_size_limit, e)
    t.case("stale temporaries of a dead process are reaped", stale_reaping, e)
    t.case("an fd set holding two different files is refused", mixed_fdset, e)
    t.case("--json or --help into a full or closed stdout fails", stdout_failures, e)
    t.finish()


if __name__ == "__main__":
    main()
