#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Bad usage (exit 2) and bad inputs (exit 1): each must give exactly one line
# on stderr naming the option, block or file at fault, and never a crash.

import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403


class Env:
    pass


def setup():
    e = Env()
    e.shm = scratch("shm")
    e.disk = scratch("disk")
    e.src = os.path.join(e.shm, "src.ram")
    pattern("mixed", 1 * MiB, 5).write(e.src)
    e.snap = os.path.join(e.disk, "good.snap")
    ok(snapsave("-o", e.snap, "--ram", "pc.ram=" + e.src, "--ram", "vga.vram=" + e.src),
       "make a good file")
    e.out = os.path.join(e.disk, "out.snap")
    return e


def nothing_written(e):
    left = [n for n in os.listdir(e.disk) if n != "good.snap"]
    check(not left, "a failed save left files behind: %r" % left)


def save_usage(e):
    R = "pc.ram=" + e.src
    cases = [
        (["--bogus"], ["--bogus"]),
        (["-Z", "-o", e.out, "--ram", R], ["'-Z'"]),
        (["-o", e.out, "--ram", R, "--help=3"], ["--help=3"]),
        (["-o", e.out, "--ram", R, "--jobs"], ["--jobs"]),
        (["-o", e.out, "--ram", R, "-j"], ["-j"]),
        (["-o", e.out, "--ram", R, "--direct", "maybe"], ["--direct", "maybe"]),
        (["-o", e.out, "--ram", R, "--direct="], ["--direct"]),
        (["-o", e.out, "--ram", R, "-j", "0"], ["--jobs", "'0'"]),
        (["-o", e.out, "--ram", R, "-j", "-1"], ["--jobs", "'-1'"]),
        (["-o", e.out, "--ram", R, "-j", "abc"], ["--jobs", "'abc'"]),
        (["-o", e.out, "--ram", R, "-j", "99999"], ["--jobs", "'99999'"]),
        (["-o", e.out, "--ram", R, "--jobs=2x"], ["--jobs", "'2x'"]),
        (["-o", e.out, "--ram", R, "-j", ""], ["--jobs"]),
        (["-o", e.out, "--ram", R, "--io", "bogus"], ["--io", "bogus"]),
        (["-o", e.out, "--ram", R, "--queue-depth", "0"], ["--queue-depth", "'0'"]),
        (["-o", e.out, "--ram", R, "--max-io-size", "5000"], ["--max-io-size", "5000"]),
        (["-o", e.out, "--ram", R, "--max-io-size", "2G"], ["--max-io-size", "2G"]),
        (["-o", e.out, "--ram", R, "--offset", "banana"], ["--offset", "banana"]),
        (["-o", e.out, "--ram", R, "--machine", ""], ["--machine"]),
        (["--ram", R], ["-o"]),
        (["-o", e.out], ["--ram"]),
        (["-o", e.out, "--ram", "pc.ram"], ["--ram", "pc.ram"]),
        (["-o", e.out, "--ram", "=" + e.src], ["--ram"]),
        (["-o", e.out, "--ram", "pc.ram="], ["--ram", "pc.ram"]),
        (["-o", e.out, "--ram", R + ",size=5000"], ["pc.ram", "5000"]),
        (["-o", e.out, "--ram", R + ",size=0"], ["pc.ram", "size"]),
        (["-o", e.out, "--ram", R + ",offset=100"], ["pc.ram", "100"]),
        (["-o", e.out, "--ram", R + ",colour=red"], ["pc.ram", "colour=red"]),
        (["-o", e.out, "--ram", R, "--ram", "pc.ram=" + e.src], ["pc.ram", "twice"]),
        (["-o", e.out, "--ram", "a" * 256 + "=" + e.src], ["--ram", "255"]),
        (["-o", e.out, "--ram", R, "stray"], ["stray"]),
        (["-o", e.out, "--ram", R, "-d", e.src, "-d", e.src], ["--device-state"]),
    ]
    for args, needles in cases:
        r = snapsave(*args)
        expect_error(r, 2, *needles, what="snapsave " + " ".join(args))
        nothing_written(e)


def restore_usage(e):
    d = os.path.join(e.shm, "u.ram")
    cases = [
        (["--bogus", e.snap], ["--bogus"]),
        (["-Z", e.snap], ["'-Z'"]),
        ([e.snap, "--all"], ["--all"]),
        (["--info=yes", e.snap], ["--info=yes"]),
        ([e.snap, "--direct", "sometimes", "--all", e.shm], ["--direct", "sometimes"]),
        ([e.snap, "-j", "0", "--all", e.shm], ["--jobs", "'0'"]),
        ([e.snap, "-j", "lots", "--all", e.shm], ["--jobs", "'lots'"]),
        ([e.snap, "--io", "bogus", "--all", e.shm], ["--io", "bogus"]),
        ([e.snap, "--max-io-size", "1"], ["--max-io-size"]),
        ([], ["input file"]),
        ([e.snap, e.snap], ["unexpected", e.snap]),
        (["--info", e.snap, "--ram", "pc.ram=" + d], ["--info"]),
        ([e.snap, "--ram", "pc.ram=" + d, "--ram", "pc.ram=" + d], ["pc.ram", "twice"]),
        ([e.snap, "--ram", "pc.ram"], ["--ram", "pc.ram"]),
        ([e.snap, "--offset", "-5"], ["--offset"]),
    ]
    for args, needles in cases:
        r = snaprestore(*args)
        expect_error(r, 2, *needles, what="snaprestore " + " ".join(args))
        check(not os.path.exists(d), "a usage error created %s" % d)


def help_version(e):
    for prog in (SNAPSAVE, SNAPRESTORE):
        for opt in ("--help", "-h"):
            r = ok(run([prog, opt]), "%s %s" % (prog, opt))
            check("Usage:" in r.outs and not r.err, "%s %s: usage on stdout only" % (prog, opt))
        r = ok(run([prog, "--version"]), "--version")
        check(r.outs.strip().startswith(os.path.basename(prog)),
              "--version prints %r" % r.outs)


def save_runtime(e):
    R = "pc.ram=" + e.src
    missing = os.path.join(e.shm, "nope.ram")
    r = snapsave("-o", e.out, "--ram", "pc.ram=" + missing)
    expect_error(r, 1, "pc.ram", missing, "No such file", what="missing source")
    nothing_written(e)

    odd = os.path.join(e.shm, "odd.ram")
    write_bytes(odd, os.urandom(5000))
    r = snapsave("-o", e.out, "--ram", "vga.vram=" + odd)
    expect_error(r, 1, "vga.vram", odd, "5000", what="5000-byte source")
    nothing_written(e)

    empty = os.path.join(e.shm, "empty.ram")
    write_bytes(empty, b"")
    r = snapsave("-o", e.out, "--ram", "pc.ram=" + empty)
    expect_error(r, 1, "pc.ram", empty, what="0-byte source")
    nothing_written(e)

    r = snapsave("-o", e.out, "--ram", R + ",offset=2M")
    expect_error(r, 1, "pc.ram", e.src, what="offset past the end of the source")
    r = snapsave("-o", e.out, "--ram", R + ",size=2M")
    expect_error(r, 1, "pc.ram", e.src, what="size past the end of the source")
    nothing_written(e)

    r = snapsave("-o", e.out, "--ram", "pc.ram=" + e.shm)
    expect_error(r, 1, "pc.ram", e.shm, what="directory as source")
    r = snapsave("-o", e.out, "--ram", "pc.ram=fd:97")
    expect_error(r, 1, "pc.ram", "97", what="closed descriptor as source")
    r = snapsave("-o", e.out, "--ram", "pc.ram=fd:x")
    check(r.rc in (1, 2), "bad fd spec: exit %d" % r.rc)
    expect_error(r, r.rc, "pc.ram", "fd:x", what="bad descriptor spec")
    nothing_written(e)

    nodir = os.path.join(e.disk, "no", "such", "dir")
    r = snapsave("-o", os.path.join(nodir, "x.snap"), "--ram", R)
    expect_error(r, 1, nodir, what="output directory missing")
    check(not os.path.exists(os.path.join(e.disk, "no")), "created the missing directory")

    r = snapsave("-o", e.shm, "--ram", R)
    expect_error(r, 1, e.shm, what="output is a directory")
    check(not temp_leftovers(e.shm) and not temp_leftovers(os.path.dirname(e.shm)),
          "temp files left after 'output is a directory'")

    r = snapsave("-o", e.out, "--ram", R, "-d", missing)
    line = expect_error(r, 1, "device state", missing, "No such file",
                        what="missing device state")
    check(line.count(missing) == 1, "missing device state: the path is named twice: " + line)
    nothing_written(e)

    r = snapsave("-o", e.out, "--ram", R, "--offset", "4096")
    expect_error(r, 1, e.out, "--offset", what="--offset without an existing file")
    nothing_written(e)

    # a FIFO nobody writes to: refused at once, not a hang in open()
    fifo = os.path.join(e.shm, "fifo")
    os.mkfifo(fifo)
    r = snapsave("-o", e.out, "--ram", "pc.ram=%s,size=1M" % fifo, timeout=20)
    expect_error(r, 1, "pc.ram", fifo, what="FIFO as a RAM source")
    r = snaprestore(e.snap, "--ram", "pc.ram=" + fifo, "--skip", "vga.vram", timeout=20)
    expect_error(r, 1, "pc.ram", fifo, what="FIFO as a destination")
    os.unlink(fifo)
    nothing_written(e)


def restore_runtime(e):
    d = os.path.join(e.shm, "rt")
    os.makedirs(d, exist_ok=True)
    dest = os.path.join(d, "pc.ram")
    missing = os.path.join(e.disk, "missing.snap")
    r = snaprestore(missing, "--all", d)
    line = expect_error(r, 1, missing, "No such file", what="missing input")
    check(line.count(missing) == 1, "missing input: the path is named twice: " + line)
    r = snaprestore("--info", missing)
    expect_error(r, 1, missing, what="--info missing input")
    r = snaprestore(e.disk, "--all", d)
    expect_error(r, 1, e.disk, what="directory as input")

    notsnap = os.path.join(e.disk, "random.bin")
    write_bytes(notsnap, os.urandom(100000))
    for args in ([notsnap, "--all", d], ["--info", notsnap], ["--info", "--json", notsnap]):
        r = snaprestore(*args)
        expect_error(r, 1, notsnap, what="not a snapshot: %s" % " ".join(args))
        check(not r.out, "--info printed something for a bad file: %r" % r.out[:200])
    emptyf = os.path.join(e.disk, "empty.snap")
    write_bytes(emptyf, b"")
    r = snaprestore(emptyf, "--all", d)
    expect_error(r, 1, emptyf, what="empty input")
    os.unlink(notsnap)
    os.unlink(emptyf)

    r = snaprestore(e.snap, "--ram", "foo=" + dest, "--all", d)
    expect_error(r, 1, "foo", e.snap, what="unknown block on restore")
    check(not os.path.exists(os.path.join(d, "pc.ram")) and not os.listdir(d),
          "unknown block: restore wrote %r" % os.listdir(d))
    r = snaprestore(e.snap, "--skip", "foo", "--all", d)
    expect_error(r, 1, "foo", e.snap, what="unknown block in --skip")

    r = snaprestore(e.snap, "--ram", "pc.ram=" + dest)
    expect_error(r, 1, "vga.vram", e.snap, what="block with no destination")
    r = snaprestore(e.snap)
    expect_error(r, 1, "pc.ram", e.snap, what="no destination at all")

    nodir = os.path.join(e.shm, "no", "where")
    r = snaprestore(e.snap, "--ram", "pc.ram=" + os.path.join(nodir, "x"),
                    "--skip", "vga.vram")
    expect_error(r, 1, "pc.ram", nodir, what="destination directory missing")
    r = snaprestore(e.snap, "--all", nodir)
    expect_error(r, 1, nodir, what="--all DIR missing")
    check(not os.path.exists(os.path.join(e.shm, "no")), "created the missing directory")
    r = snaprestore(e.snap, "--all", d, "-d", os.path.join(nodir, "dev"))
    line = expect_error(r, 1, "device state", nodir, what="device state directory missing")
    check(line.count(nodir) == 1, "device state directory missing: named twice: " + line)
    r = snaprestore(e.snap, "--ram", "pc.ram=fd:97", "--skip", "vga.vram")
    expect_error(r, 1, "pc.ram", "97", what="closed descriptor as destination")
    r = snaprestore(e.snap, "--ram", "pc.ram=%s,size=8K" % dest, "--skip", "vga.vram")
    expect_error(r, 1, "pc.ram", what="size= that does not match the block")
    r = snaprestore(e.snap, "--offset", "1G", "--all", d)
    expect_error(r, 1, e.snap, what="--offset past the end")


def destructive_targets(e):
    # Files that the run would destroy are refused before a byte is written,
    # with one line; the files stay as they were.
    snap = os.path.join(e.disk, "victim.snap")
    shutil.copyfile(e.snap, snap)
    h = sha256(snap)
    r = snaprestore(snap, "--ram", "pc.ram=" + snap, "--skip", "vga.vram")
    expect_error(r, 1, "pc.ram", "input file", what="destination is the input file")
    r = snaprestore(snap, "--all", os.path.join(e.shm, "dsall"), "-d", snap)
    expect_error(r, 1, "device state", snap, "input file", what="device state over the input")
    check(sha256(snap) == h, "a refused restore changed its input file")
    os.unlink(snap)

    dest = os.path.join(e.shm, "shared.ram")
    for vga in ("", ",offset=512K"):
        r = snaprestore(e.snap, "--ram", "pc.ram=" + dest, "--ram", "vga.vram=" + dest + vga)
        expect_error(r, 1, "pc.ram", "vga.vram", "overlap", what="two blocks overlap%s" % vga)
        check(not os.path.exists(dest), "a refused restore left the file it created")
    # side by side in one file is fine
    ok(snaprestore(e.snap, "--ram", "pc.ram=" + dest, "--ram", "vga.vram=%s,offset=1M" % dest),
       "two blocks side by side in one file")
    check(os.path.getsize(dest) == 2 * MiB, "two blocks side by side: size %d" % (
        os.path.getsize(dest)))
    os.unlink(dest)

    src = os.path.join(e.shm, "self.ram")
    shutil.copyfile(e.src, src)
    h = sha256(src)
    r = snapsave("-o", src, "--ram", "pc.ram=" + src)
    expect_error(r, 1, src, "pc.ram", "source", what="output is the RAM source")
    fd = os.open(src, os.O_RDWR)
    try:
        r = snapsave("-o", "fd:%d" % fd, "--ram", "vga.vram=" + e.src, "--ram", "pc.ram=" + src,
                     pass_fds=(fd,))
        expect_error(r, 1, "pc.ram", "source", what="fd output is the RAM source")
    finally:
        os.close(fd)
    check(sha256(src) == h and not temp_leftovers(e.shm),
          "a refused save changed its source or left a temporary file")
    os.unlink(src)


def as_nobody(e):
    if os.geteuid() != 0:
        # not root: permission checks apply to us directly
        runner = []
    elif shutil.which("setpriv"):
        runner = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
        r = run(runner + ["true"])
        if r.rc != 0:
            raise Skip("running as root and 'setpriv --reuid nobody' fails (%s); "
                       "permission checks do not apply to root" % r.err.strip())
    else:
        raise Skip("running as root without setpriv: permission checks do not apply to root")
    if not os.access(SNAPSAVE, os.X_OK):
        raise Skip("binary not executable")
    box = os.path.join(e.shm, "perm")
    os.makedirs(box)
    os.chmod(box, 0o777)
    locked = os.path.join(box, "locked.ram")
    pattern("random", 64 * KiB, 9).write(locked)
    os.chmod(locked, 0)
    out = os.path.join(box, "o.snap")
    r = run(runner + [SNAPSAVE, "-o", out, "--ram", "pc.ram=" + locked])
    if r.rc == 127 or "No such file" in r.err and SNAPSAVE in r.err:
        raise Skip("nobody cannot run %s: %s" % (SNAPSAVE, r.err.strip()))
    expect_error(r, 1, "pc.ram", locked, "Permission denied", prog="snapsave",
                 what="unreadable source")
    check(os.listdir(box) == ["locked.ram"], "unreadable source left %r" % os.listdir(box))

    # unreadable snapshot, unwritable destination, unwritable output directory
    snap = os.path.join(box, "locked.snap")
    shutil.copy(e.snap, snap)
    os.chmod(snap, 0)
    r = run(runner + [SNAPRESTORE, snap, "--all", box])
    expect_error(r, 1, snap, "Permission denied", prog="snaprestore",
                 what="unreadable snapshot")
    ro = os.path.join(box, "ro.ram")
    write_bytes(ro, b"")
    os.chmod(ro, 0o444)
    os.chmod(snap, 0o644)
    r = run(runner + [SNAPRESTORE, snap, "--ram", "pc.ram=" + ro, "--skip", "vga.vram"])
    expect_error(r, 1, "pc.ram", ro, "Permission denied", prog="snaprestore",
                 what="unwritable destination")
    rodir = os.path.join(box, "rodir")
    os.makedirs(rodir)
    os.chmod(rodir, 0o555)
    src = os.path.join(box, "ok.ram")
    pattern("random", 64 * KiB, 10).write(src)
    r = run(runner + [SNAPSAVE, "-o", os.path.join(rodir, "x.snap"), "--ram", "pc.ram=" + src])
    expect_error(r, 1, rodir, "Permission denied", prog="snapsave",
                 what="unwritable output directory")
    check(os.listdir(rodir) == [], "unwritable dir: %r" % os.listdir(rodir))


def main():
    require_binaries()
    e = setup()
    t = Cases("errors")
    t.case("--help and --version", help_version, e)
    t.case("snapsave usage errors exit 2", save_usage, e)
    t.case("snaprestore usage errors exit 2", restore_usage, e)
    t.case("snapsave bad inputs exit 1", save_runtime, e)
    t.case("snaprestore bad inputs exit 1", restore_runtime, e)
    t.case("targets that would destroy data are refused", destructive_targets, e)
    t.case("permission denied (as nobody when root)", as_nobody, e)
    t.finish()


if __name__ == "__main__":
    main()
