#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# No partial file at the final path: failed saves (bad block source, a
# device-state source that errors, ENOSPC on a small tmpfs, SIGTERM/SIGINT/
# SIGHUP mid-save, guest memory cut short under a save or a restore) leave
# neither an output nor a .NAME.snapmr-* temp file, and a good file already at
# the final path stays intact.

import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403


class Env:
    pass


def setup():
    e = Env()
    e.shm = scratch("shm")
    e.disk = scratch("disk")
    e.small = make_block("pc.ram", e.shm, pattern("mixed", 2 * MiB, 1), "small")
    return e


def good_file(e, d, name="vm.snap"):
    """A finished save at d/name; returns (path, sha256)."""
    path = os.path.join(d, name)
    ok(snapsave("-o", path, "--ram", "pc.ram=" + e.small.src, "--no-sync"), "good save")
    return path, sha256(path)


def check_clean(d, final, before_hash, what):
    left = temp_leftovers(d)
    check(not left, "%s: temp files left in %s: %r" % (what, d, left))
    if before_hash is None:
        check(not os.path.exists(final), "%s: %s exists after a failed save" % (what, final))
    else:
        check(os.path.exists(final), "%s: the earlier good %s is gone" % (what, final))
        check(sha256(final) == before_hash, "%s: the earlier good %s was changed" % (what, final))


def failed_saves(e):
    for keep in (False, True):
        d = os.path.join(e.disk, "keep" if keep else "fresh")
        os.makedirs(d)
        final, h = good_file(e, d) if keep else (os.path.join(d, "vm.snap"), None)
        tag = "over a good file" if keep else "to a new path"
        missing = os.path.join(e.shm, "missing.ram")
        R = "pc.ram=" + e.small.src
        r = snapsave("-o", final, "--ram", R, "--ram", "vga.vram=" + missing)
        expect_error(r, 1, "vga.vram", missing, what="missing second block source " + tag)
        check_clean(d, final, h, "missing block source " + tag)

        # a device-state source that fails while being read (a directory: EISDIR)
        r = snapsave("-o", final, "--ram", R, "-d", e.shm)
        expect_error(r, 1, final, "device state", what="device state read error " + tag)
        check_clean(d, final, h, "device state read error " + tag)

        # a write-only descriptor as device state
        wfd = os.open(os.path.join(e.shm, "wo"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            r = run([SNAPSAVE, "-o", final, "--ram", R, "-d", "fd:%d" % wfd], pass_fds=(wfd,),
                    timeout=120)
        finally:
            os.close(wfd)
        expect_error(r, 1, "device state", "fd:%d" % wfd, what="write-only device-state fd " + tag)
        check_clean(d, final, h, "write-only device-state fd " + tag)

        # usage error
        r = snapsave("-o", final, "--ram", R, "-j", "0")
        expect_error(r, 2, "--jobs", what="usage error " + tag)
        check_clean(d, final, h, "usage error " + tag)


def mount_small_tmpfs(e, size=8 * MiB):
    return mount_tmpfs(os.path.join(e.disk, "full-%d" % len(os.listdir(e.disk))), size)


def enospc(e):
    big = make_block("pc.ram", e.shm, pattern("random", 64 * MiB, 2), "big64")
    d = mount_small_tmpfs(e)
    try:
        final = os.path.join(d, "vm.snap")
        for opts in ([], ["--direct", "off", "-j", "1"], ["--no-sync", "-j", "8"]):
            r = snapsave("-o", final, "--ram", "pc.ram=" + big.src, *opts)
            expect_error(r, 1, final, "No space left", what="ENOSPC %s" % " ".join(opts))
            check_clean(d, final, None, "ENOSPC %s" % " ".join(opts))
            check(not os.listdir(d), "ENOSPC left %r" % os.listdir(d))
        # a good file already there survives a save that runs out of space
        final, h = good_file(e, d)
        r = snapsave("-o", final, "--ram", "pc.ram=" + big.src)
        expect_error(r, 1, final, "No space left", what="ENOSPC over a good file")
        check_clean(d, final, h, "ENOSPC over a good file")
        check(os.listdir(d) == ["vm.snap"], "ENOSPC over a good file left %r" % os.listdir(d))
        os.unlink(final)
        # running out while copying a large device state
        dev = os.path.join(e.shm, "bigdev")
        write_bytes(dev, os.urandom(16 * MiB))
        r = snapsave("-o", final, "--ram", "pc.ram=" + e.small.src, "-d", dev)
        expect_error(r, 1, final, "No space left", what="ENOSPC in the device state")
        check_clean(d, final, None, "ENOSPC in the device state")
        r = snapsave("-o", final, "--ram", "pc.ram=" + e.small.src, "-d", "-",
                     input=os.urandom(16 * MiB))
        expect_error(r, 1, final, "No space left", what="ENOSPC in device state from stdin")
        check_clean(d, final, None, "ENOSPC in device state from stdin")
        check(not os.listdir(d), "ENOSPC left %r" % os.listdir(d))
    finally:
        umount(d)
    os.unlink(big.src)


def restore_enospc(e):
    # A restore into a tmpfs without room for the guest's memory fails with
    # one line naming the block, and removes the file it created; writing
    # through a mapping instead would die of SIGBUS.
    big = make_block("pc.ram", e.shm, pattern("random", 24 * MiB, 4), "big24")
    snap = os.path.join(e.disk, "restore-enospc.snap")
    ok(snapsave("-o", snap, "--ram", "pc.ram=" + big.src), "save for restore ENOSPC")
    d = mount_small_tmpfs(e)
    try:
        for opts in ([], ["--io", "threads", "-j", "1"], ["--no-verify", "-j", "4"]):
            dest = os.path.join(d, "ram")
            r = snaprestore(snap, "--ram", "pc.ram=" + dest, *opts)
            what = "restore ENOSPC %s" % " ".join(opts)
            expect_error(r, 1, "pc.ram", "No space left", prog="snaprestore", what=what)
            check(not os.listdir(d), "%s left %r" % (what, os.listdir(d)))
    finally:
        umount(d)
    os.unlink(big.src)
    os.unlink(snap)


def wait_for_temp(d, p, min_alloc=0, timeout=30):
    """Waits until a temp file exists in d (and has min_alloc bytes allocated);
    returns its name, or None if the process ended first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if p.poll() is not None:
            return None
        for n in temp_leftovers(d):
            try:
                if allocated(os.path.join(d, n)) >= min_alloc:
                    return n
            except FileNotFoundError:
                pass
        time.sleep(0.002)
    p.kill()
    fail("no temp file appeared in %s within %ds" % (d, timeout))


def signal_while_blocked(e, sig):
    # the save is stuck reading device state from a pipe we keep open: a
    # deterministic "in the middle of a save"
    for keep in (False, True):
        d = os.path.join(e.disk, "sig-%s-%d" % (sig.name, keep))
        os.makedirs(d)
        final, h = good_file(e, d) if keep else (os.path.join(d, "vm.snap"), None)
        p = subprocess.Popen([SNAPSAVE, "-o", final, "--ram", "pc.ram=" + e.small.src, "-d", "-"],
                             stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            p.stdin.write(os.urandom(1000))
            p.stdin.flush()
            tmp = wait_for_temp(d, p)
            if tmp is None:
                fail("%s: snapsave ended early: %s" % (sig.name, p.stderr.read()))
            check(tmp.startswith(".vm.snap.snapmr-"), "temp file name %r" % tmp)
            time.sleep(0.1)
            p.send_signal(sig)
            rc = p.wait(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdin.close()
            p.stderr.close()
        check(rc == -sig or rc in (1, 128 + sig),
              "%s while blocked: exit status %d, expected death by the signal" % (sig.name, rc))
        check_clean(d, final, h, "%s while blocked on device state%s" % (
            sig.name, " over a good file" if keep else ""))


def sigterm_large(e):
    # a real large save to disk, killed while pages are being written
    big = make_block("pc.ram", e.shm, pattern("random", 768 * MiB, 3), "big768")
    tries = 0
    try:
        for keep in (False, True):
            d = os.path.join(e.disk, "large-%d" % keep)
            os.makedirs(d)
            final, h = good_file(e, d) if keep else (os.path.join(d, "vm.snap"), None)
            while True:
                tries += 1
                p = subprocess.Popen([SNAPSAVE, "-o", final, "--ram", "pc.ram=" + big.src,
                                      "-j", "1", "--max-io-size", "64K"],
                                     stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
                tmp = wait_for_temp(d, p, min_alloc=8 * MiB)
                if tmp is not None:
                    p.send_signal(signal.SIGTERM)
                rc = p.wait(timeout=120)
                err = p.stderr.read().decode()
                p.stderr.close()
                if tmp is None:
                    # finished before we could catch it: try again (rarely)
                    check(rc == 0, "large save failed: %s" % err)
                    check(tries < 4, "the save always finished before SIGTERM")
                    os.unlink(final)
                    if keep:
                        final, h = good_file(e, d)
                    continue
                break
            check(rc == -signal.SIGTERM,
                  "SIGTERM during a large save: exit status %d (%s)" % (rc, err.strip()))
            check_clean(d, final, h, "SIGTERM during a large save%s" % (
                " over a good file" if keep else ""))
    finally:
        os.unlink(big.src)


def sigkill(e):
    # SIGKILL cannot be caught: the temp file stays, but the final path is
    # still never a partial file
    d = os.path.join(e.disk, "kill")
    os.makedirs(d)
    final, h = good_file(e, d)
    p = subprocess.Popen([SNAPSAVE, "-o", final, "--ram", "pc.ram=" + e.small.src, "-d", "-"],
                         stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
    tmp = wait_for_temp(d, p)
    check(tmp is not None, "snapsave ended early")
    p.kill()
    p.wait()
    p.stdin.close()
    check(sha256(final) == h, "SIGKILL changed the file at the final path")
    # the leftover is recognisably unfinished
    left = temp_leftovers(d)
    for n in left:
        r = snaprestore(os.path.join(d, n), "--all", e.shm)
        check(r.rc != 0, "the temp file of a killed save restores as if complete")
        os.unlink(os.path.join(d, n))


def cut_check(p, what):
    """Waits for p (stderr piped); asserts one error line that names the block
    and says its memory went away (a SIGBUS caught, or a read or a write that
    found the file shorter)."""
    rc = p.wait(timeout=120)
    err = p.stderr.read().decode()
    p.stderr.close()
    lines = [l for l in err.splitlines() if l.strip()]
    check(rc == 1, "%s: exit status %d, expected 1 (stderr: %s)" % (what, rc, err.strip()))
    check(len(lines) == 1, "%s: expected one line on stderr, got %r" % (what, lines))
    check("'pc.ram'" in lines[0] and ("shrank" in lines[0] or "SIGBUS" in lines[0]),
          "%s: the error does not say the block's memory went away: %r" % (what, lines[0]))
    note("  %s: %s" % (what, lines[0]))
    return lines[0]


def source_cut(e):
    # The guest RAM file (8 MiB of data, then 56 MiB of zeros) is cut to
    # 12 MiB while a slow save (4 KiB writes, one worker) writes its data:
    # never a crash, never success with zeros for the lost memory, no file
    # left behind. A disk file is scanned through its mapping, so the scan
    # of the lost range is a SIGBUS, caught; tmpfs is scanned with pread.
    layout = Pattern([("rand", 2048, None), ("zero", 14336, None)], 5)
    for where in (e.shm, e.disk):
        src = make_block("pc.ram", where, layout, "cut").src
        d = os.path.join(e.disk, "cut-%s" % ("shm" if where == e.shm else "disk"))
        os.makedirs(d)
        final = os.path.join(d, "vm.snap")
        what = "source in %s cut during the save" % where
        p = subprocess.Popen([SNAPSAVE, "-o", final, "--ram", "pc.ram=" + src, "-j", "1",
                              "--io", "threads", "--max-io-size", "4K"],
                             stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        tmp = wait_for_temp(d, p, min_alloc=MiB)
        if tmp is None:
            p.wait()
            fail("%s: the save ended before the cut: %s" % (what, p.stderr.read()))
        os.truncate(src, 12 * MiB)
        line = cut_check(p, what)
        if where == e.disk:
            check("SIGBUS" in line, "%s: expected the caught SIGBUS, got %r" % (what, line))
        check_clean(d, final, None, what)
        os.unlink(src)


def slow_restore(snap, dest, opts, min_alloc, what):
    """Starts a slow restore (4 KiB reads, one worker) of snap into dest and
    returns it, stderr piped, once dest holds min_alloc bytes."""
    p = subprocess.Popen([SNAPRESTORE, snap, "--ram", "pc.ram=" + dest, "-j", "1",
                          "--io", "threads", "--max-io-size", "4K"] + opts,
                         stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < 30:
        try:
            if allocated(dest) >= min_alloc:
                return p
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    if p.poll() is None:
        p.kill()
    p.wait()
    fail("%s: the restore ended before it held %d bytes: %s" % (what, min_alloc,
                                                                p.stderr.read()))


def dest_cut(e):
    # The destination file is cut to 1 MiB in the middle of a slow restore:
    # one error line, and the file the restore created is removed.
    src = make_block("pc.ram", e.shm, pattern("random", 64 * MiB, 6), "cutsrc").src
    snap = os.path.join(e.disk, "cut.snap")
    ok(snapsave("-o", snap, "--ram", "pc.ram=" + src), "save for the destination cut")
    os.unlink(src)
    for opts in ([], ["--no-verify"]):
        dest = os.path.join(e.shm, "cut-dest.ram")
        what = "destination cut during the restore %s" % " ".join(opts)
        p = slow_restore(snap, dest, opts, MiB, what)
        os.truncate(dest, MiB)
        cut_check(p, what)
        check(not os.path.exists(dest), "%s: the destination it created is still there" % what)
    os.unlink(snap)


def restore_signal(e):
    # SIGTERM in the middle of a slow restore: the destination file it
    # created is removed (it holds half a guest); one that existed stays.
    src = make_block("pc.ram", e.shm, pattern("random", 64 * MiB, 7), "sigsrc").src
    snap = os.path.join(e.disk, "sig.snap")
    ok(snapsave("-o", snap, "--ram", "pc.ram=" + src), "save for the restore signal")
    os.unlink(src)
    for existing in (False, True):
        dest = os.path.join(e.shm, "sig-dest.ram")
        if existing:
            write_bytes(dest, b"\xee" * MiB)
        what = "SIGTERM during a restore into %s file" % ("an existing" if existing else "a new")
        p = slow_restore(snap, dest, [], 4 * MiB, what)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=60)
        p.stderr.close()
        check(rc == -signal.SIGTERM, "%s: exit status %d" % (what, rc))
        check(os.path.exists(dest) == existing, "%s: the destination %s" % (
            what, "is gone" if existing else "it created is still there"))
        if existing:
            os.unlink(dest)
    os.unlink(snap)


def main():
    require_binaries()
    e = setup()
    t = Cases("atomic")
    t.case("failed saves leave nothing behind", failed_saves, e)
    t.case("ENOSPC on an 8 MiB tmpfs", enospc, e)
    t.case("restore ENOSPC on an 8 MiB tmpfs", restore_enospc, e)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        t.case("%s while blocked on device state" % sig.name, signal_while_blocked, e, sig)
    t.case("SIGTERM during a large save", sigterm_large, e)
    t.case("SIGKILL keeps the final path intact", sigkill, e)
    t.case("a source cut short during the save", source_cut, e)
    t.case("a destination cut short during the restore", dest_cut, e)
    t.case("SIGTERM during a restore removes what it created", restore_signal, e)
    t.finish()


if __name__ == "__main__":
    main()
