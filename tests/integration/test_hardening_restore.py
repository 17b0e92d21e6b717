#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Hardening of the restore side: --all DIR never writes through a symlink or
# into a file someone else can reach; a failed run removes exactly what it
# created and leaves an existing -d output as it was; a -d output may not be
# a block's destination; a full or closed stdout fails the run; every JSON
# string is valid UTF-8 even for non-UTF-8 names.

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403

DEVSTATE = bytes(range(256)) * 40 + b"device state end"


class Snap:
    """A saved file with blocks pc.ram and pc.rom, and the same file with a
    flipped byte in pc.rom's page data (its checksum fails mid-restore)."""

    def __init__(self, work):
        self.work = work
        src = scratch("shm")
        self.ram = make_block("pc.ram", src, pattern("random", 1 * MiB, 5))
        self.rom = make_block("pc.rom", src, pattern("random", 64 * KiB, 6))
        dev = os.path.join(src, "dev.in")
        write_bytes(dev, DEVSTATE)
        self.good = os.path.join(work, "good.snap")
        save_blocks(self.good, [self.ram, self.rom], "-d", dev)
        info = info_json(self.good)
        if info.get("integrity", {}).get("status") != "complete":
            raise Skip("the saved file has no checksums")
        rom = [b for b in info["blocks"] if b["name"] == "pc.rom"][0]
        with open(self.good, "rb") as f:
            data = bytearray(f.read())
        data[rom["pages-offset"] + 2 * PAGE + 77] ^= 0x10
        self.bad = os.path.join(work, "bad.snap")
        write_bytes(self.bad, data)


def new_dir(parent, name):
    d = os.path.join(parent, name)
    os.mkdir(d, 0o700)
    return d


def read(path):
    with open(path, "rb") as f:
        return f.read()


def victim(d, name, data=b"precious bytes\n" * 100):
    path = os.path.join(d, name)
    write_bytes(path, data)
    return path, data


def check_untouched(path, data, what):
    check(os.path.exists(path), "%s: %s was removed" % (what, path))
    got = read(path)
    check(got == data, "%s: %s changed (%d bytes, expected %d)" % (what, path, len(got), len(data)))


# --------------------------------------------------------------- --all DIR

def all_symlink_to_file(s):
    base = scratch()
    outside, data = victim(base, "outside.bin")
    d = new_dir(base, "out")
    os.symlink(outside, os.path.join(d, "pc.ram"))
    r = snaprestore(s.good, "--all", d)
    expect_error(r, 1, "pc.ram", "symbolic link", what="--all with pc.ram a symlink")
    check_untouched(outside, data, "symlink target")
    check(os.path.islink(os.path.join(d, "pc.ram")), "the symlink itself was removed")
    check(not os.path.exists(os.path.join(d, "pc.rom")), "pc.rom left behind after the refusal")


def all_dangling_symlink(s):
    base = scratch()
    d = new_dir(base, "out")
    elsewhere = new_dir(base, "elsewhere")
    target = os.path.join(elsewhere, "new")
    os.symlink(target, os.path.join(d, "pc.rom"))
    for snap, label in ((s.good, "good file"), (s.bad, "failing restore")):
        r = snaprestore(snap, "--all", d)
        expect_error(r, 1, "pc.rom", "symbolic link", what="dangling symlink, " + label)
        check(not os.path.lexists(target), "%s: a file was created outside DIR: %s" % (
            label, target))
        check(os.listdir(elsewhere) == [], "%s: %s holds %r" % (label, elsewhere,
                                                              os.listdir(elsewhere)))
        check(sorted(os.listdir(d)) == ["pc.rom"],
              "%s: DIR holds %r, expected only the symlink" % (label, sorted(os.listdir(d))))


def all_foreign_owner(s):
    if os.geteuid() != 0:
        raise Skip("needs root to give a file to another user")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        raise Skip("no user 'nobody'")
    base = scratch()
    d = new_dir(base, "out")
    os.chmod(d, 0o777)
    path, data = victim(d, "pc.ram")
    os.chmod(path, 0o644)
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    r = snaprestore(s.good, "--all", d)
    expect_error(r, 1, "pc.ram", "owned by uid %d" % nobody.pw_uid, what="foreign pc.ram")
    check_untouched(path, data, "foreign file")
    st = os.stat(path)
    check(st.st_uid == nobody.pw_uid and (st.st_mode & 0o777) == 0o644,
          "foreign file's owner or mode changed: uid %d mode %o" % (st.st_uid, st.st_mode))


def all_hard_link(s):
    base = scratch()
    outside, data = victim(base, "outside.bin")
    d = new_dir(base, "out")
    os.link(outside, os.path.join(d, "pc.ram"))
    r = snaprestore(s.good, "--all", d)
    expect_error(r, 1, "pc.ram", "hard links", what="pc.ram a hard link")
    check_untouched(outside, data, "hard-linked file")


def all_other_kinds(s):
    base = scratch()
    d = new_dir(base, "out")
    os.mkfifo(os.path.join(d, "pc.ram"))
    r = snaprestore(s.good, "--all", d)
    expect_error(r, 1, "pc.ram", "not a regular file", what="pc.ram a FIFO")


def all_created_dir_and_reuse(s):
    base = scratch()
    d = os.path.join(base, "new")
    ok(snaprestore(s.good, "--all", d), "--all into a new directory")
    check((os.stat(d).st_mode & 0o777) == 0o700, "DIR created with mode %o" % os.stat(d).st_mode)
    for b in (s.ram, s.rom):
        f = os.path.join(d, b.name)
        compare_files(b.src, f, "block " + b.name)
        check((os.stat(f).st_mode & 0o777) == 0o600, "%s created with mode %o" % (
            f, os.stat(f).st_mode))
    # A second restore reuses this user's own files.
    ok(snaprestore(s.good, "--all", d), "--all into the same directory again")
    compare_files(s.ram.src, os.path.join(d, "pc.ram"), "reused pc.ram")


def failure_removes_only_created(s):
    base = scratch()
    d = new_dir(base, "out")
    # pc.ram exists (this user's): kept; pc.rom is created by the run: removed.
    own, data = victim(d, "pc.ram", b"\x5a" * (1 * MiB))
    ram_named = os.path.join(base, "named.ram")
    r = snaprestore(s.bad, "--all", d)
    expect_error(r, 1, "pc.rom", "checksum", what="failing restore into DIR")
    check(os.path.exists(own), "an existing block file was removed on failure")
    check(sorted(os.listdir(d)) == ["pc.ram"], "DIR holds %r after the failure" % (
        sorted(os.listdir(d)),))
    # --ram PATH: the created file goes, an existing one stays.
    r = snaprestore(s.bad, "--ram", "pc.ram=" + ram_named, "--ram",
                    "pc.rom=" + os.path.join(base, "named.rom"))
    expect_error(r, 1, "checksum", what="failing restore to --ram paths")
    check(not os.path.exists(ram_named) and not os.path.exists(os.path.join(base, "named.rom")),
          "files created by a failed --ram restore were left: %r" % os.listdir(base))
    keep, kdata = victim(base, "kept.rom", b"\x33" * (64 * KiB))
    r = snaprestore(s.bad, "--ram", "pc.ram=" + ram_named, "--ram", "pc.rom=" + keep)
    expect_error(r, 1, "checksum", what="failing restore to an existing --ram path")
    check(os.path.exists(keep), "an existing --ram destination was removed on failure")
    check(not os.path.exists(ram_named), "a created --ram destination was left")
    # --ram through a symlink the user named: followed; on failure the link's
    # target (which existed) stays, and so does the link.
    link = os.path.join(base, "link.rom")
    os.symlink(keep, link)
    r = snaprestore(s.bad, "--ram", "pc.ram=" + ram_named, "--ram", "pc.rom=" + link)
    expect_error(r, 1, "checksum", what="failing restore through a named symlink")
    check(os.path.islink(link) and os.path.exists(keep), "the named symlink or its target went")


# ---------------------------------------------------------- device state

def devstate_existing_kept(s):
    base = scratch()
    dev, data = victim(base, "dev.out")
    for opt in ("-d", "--device-state-raw"):
        r = snaprestore(s.bad, "--ram", "pc.ram=" + os.path.join(base, "r"), "--ram",
                        "pc.rom=" + os.path.join(base, "o"), opt, dev)
        expect_error(r, 1, "checksum", what="failing restore with %s an existing file" % opt)
        check_untouched(dev, data, "existing %s output" % opt)
        check(temp_leftovers(base) == [], "temporary files left: %r" % temp_leftovers(base))


def devstate_created_removed(s):
    base = scratch()
    dev = os.path.join(base, "dev.out")
    r = snaprestore(s.bad, "--all", os.path.join(base, "blocks"), "-d", dev)
    expect_error(r, 1, "checksum", what="failing restore with a new -d output")
    check(not os.path.exists(dev), "a -d output the failed restore created was left")
    check(temp_leftovers(base) == [], "temporary files left: %r" % temp_leftovers(base))
    check(os.listdir(os.path.join(base, "blocks")) == [], "block files left")


def devstate_success(s):
    base = scratch()
    dev, _ = victim(base, "dev.out", b"\xee" * 50000)
    ok(snaprestore(s.good, "--all", os.path.join(base, "blocks"), "-d", dev), "restore with -d")
    check(read(dev) == DEVSTATE, "the device state output differs")
    check(temp_leftovers(base) == [], "temporary files left: %r" % temp_leftovers(base))
    # Through a symlink the user named: the target is replaced, the link stays.
    link = os.path.join(base, "dev.link")
    os.symlink(dev, link)
    write_bytes(dev, b"old")
    ok(snaprestore(s.good, "--skip", "pc.ram", "--skip", "pc.rom", "-d", link), "-d symlink")
    check(os.path.islink(link) and read(dev) == DEVSTATE, "-d through a symlink")
    # A dangling one: refused, nothing created where it points.
    dangling = os.path.join(base, "dangling")
    os.symlink(os.path.join(base, "nothing"), dangling)
    r = snaprestore(s.good, "--skip", "pc.ram", "--skip", "pc.rom", "-d", dangling)
    expect_error(r, 1, "dangling", what="-d a dangling symlink")
    check(not os.path.lexists(os.path.join(base, "nothing")), "-d created a dangling link's target")
    # /dev/stdout on a pipe is written in place.
    r = ok(snaprestore(s.good, "--skip", "pc.ram", "--skip", "pc.rom", "-d", "/dev/stdout"),
           "-d /dev/stdout")
    check(r.out == DEVSTATE, "-d /dev/stdout on a pipe: %d bytes" % len(r.out))


def devstate_is_ram_dest(s):
    base = scratch()
    dest, data = victim(base, "dest.ram", b"\x77" * (2 * MiB))
    rom = os.path.join(base, "rom")
    r = snaprestore(s.good, "--ram", "pc.ram=" + dest, "--ram", "pc.rom=" + rom, "-d", dest)
    expect_error(r, 1, "device state", "pc.ram", what="-d equal to a --ram destination")
    check_untouched(dest, data, "--ram destination named by -d")
    check(not os.path.exists(rom), "pc.rom's destination left after the refusal")
    # Through another name (a hard link), and as --all's file.
    alias = os.path.join(base, "alias")
    os.link(dest, alias)
    r = snaprestore(s.good, "--ram", "pc.ram=" + dest, "--skip", "pc.rom", "-d", alias)
    expect_error(r, 1, "device state", "pc.ram", what="-d a hard link to a destination")
    check_untouched(dest, data, "destination reached through a hard link")
    os.unlink(alias)
    d = new_dir(base, "out")
    f, fdata = victim(d, "pc.rom", b"\x11" * (64 * KiB))
    r = snaprestore(s.good, "--all", d, "--device-state-raw", f)
    expect_error(r, 1, "device state", "pc.rom", what="--device-state-raw an --all file")
    check_untouched(f, fdata, "--all file named by --device-state-raw")
    # -d - with stdout redirected into the destination, and fd:N.
    with open(dest, "r+b") as out:
        r = run([SNAPRESTORE, s.good, "--ram", "pc.ram=" + dest, "--skip", "pc.rom", "-d", "-"],
                preexec_fn=lambda: os.dup2(out.fileno(), 1))
    expect_error(r, 1, "device state", "pc.ram", what="-d - into a destination")
    check_untouched(dest, data, "destination that is stdout")
    fd = os.open(dest, os.O_WRONLY)
    try:
        r = snaprestore(s.good, "--ram", "pc.ram=" + dest, "--skip", "pc.rom", "-d",
                        "fd:%d" % fd, pass_fds=(fd,))
    finally:
        os.close(fd)
    expect_error(r, 1, "device state", "pc.ram", what="-d fd:N of a destination")
    check_untouched(dest, data, "destination passed as fd:N")


def caught_running(snap, d, dev, base, what):
    """Starts a restore of snap into --all d with -d dev and stops it
    (SIGSTOP) as soon as its temporary device-state file exists."""
    for _ in range(20):
        shutil.rmtree(d, ignore_errors=True)
        p = subprocess.Popen([SNAPRESTORE, snap, "--all", d, "-d", dev, "-j", "1", "--io",
                              "threads", "--max-io-size", "4K"],
                             stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.monotonic()
        while p.poll() is None and time.monotonic() - t0 < 30:
            if temp_leftovers(base):
                p.send_signal(signal.SIGSTOP)
                break
        if p.poll() is None:
            return p
        p.wait()
    fail("%s: the restore always ended before it could be stopped" % what)


def interrupted(s):
    # SIGTERM, and SIGBUS from a block file cut short, in the middle of a slow
    # restore into --all DIR with -d: every file the run created goes (the
    # block files and the device state's temporary file), the existing -d
    # output stays as it was, and so does a file renamed over a created one.
    shm = scratch("shm")
    base = scratch()
    src = make_block("pc.ram", shm, pattern("random", 48 * MiB, 8)).src
    snap = os.path.join(base, "slow.snap")
    ok(snapsave("-o", snap, "--ram", "pc.ram=" + src, "-d", "/dev/null"), "save for the signal")
    os.unlink(src)
    dev, data = victim(base, "dev.out")
    for how in ("SIGTERM", "SIGBUS", "replaced"):
        d = os.path.join(shm, "out-" + how)
        p = caught_running(snap, d, dev, base, how)
        # Stopped right after it created its files: the signal or the cut
        # lands before the restore can finish.
        if how == "SIGBUS":
            os.truncate(os.path.join(d, "pc.ram"), 0)
        else:
            p.send_signal(signal.SIGTERM)
        if how == "replaced":
            # Another file now has the name: the cleanup must leave it alone.
            other, odata = victim(d, "other", b"someone else's file")
            os.rename(other, os.path.join(d, "pc.ram"))
        p.send_signal(signal.SIGCONT)
        rc = p.wait(timeout=60)
        err = p.stderr.read().decode("utf-8", "replace")
        want = 1 if how == "SIGBUS" else -signal.SIGTERM
        check(rc == want, "%s: exit %d, expected %d: %s" % (how, rc, want, err))
        if how == "replaced":
            check_untouched(os.path.join(d, "pc.ram"), odata, "a file renamed over a created one")
            os.unlink(os.path.join(d, "pc.ram"))
        check(os.listdir(d) == [], "%s: DIR holds %r" % (how, os.listdir(d)))
        check(temp_leftovers(base) == [], "%s: temporary files left: %r" % (
            how, temp_leftovers(base)))
        check_untouched(dev, data, "%s: existing -d output" % how)


# ------------------------------------------------------------------ stdout

def to_dev_full():
    fd = os.open("/dev/full", os.O_WRONLY)
    os.dup2(fd, 1)
    os.close(fd)


def close_stdout():
    os.close(1)


def stdout_failures(s):
    if not os.path.exists("/dev/full"):
        raise Skip("no /dev/full")
    base = scratch()
    runs = [("--info", ["--info", s.good]),
            ("--info --json", ["--info", "--json", s.good]),
            ("--verify --json", ["--verify", "--json", s.good]),
            ("restore --json", [s.good, "--json", "--all", os.path.join(base, "b")])]
    for how, pre, why in (("full", to_dev_full, "No space left on device"),
                          ("closed", close_stdout, "Bad file descriptor")):
        for label, args in runs:
            r = run([SNAPRESTORE] + args, preexec_fn=pre)
            expect_error(r, 1, "stdout: " + why, what="%s with stdout %s" % (label, how))
    # A restore whose statistics were lost failed: what it created is gone.
    check(not os.path.exists(os.path.join(base, "b")) or
          os.listdir(os.path.join(base, "b")) == [],
          "block files left by a restore whose --json failed")
    # Nothing printed: a closed stdout is no error.
    ok(run([SNAPRESTORE, s.good, "--all", os.path.join(base, "c")], preexec_fn=close_stdout),
       "restore without output, stdout closed")


# -------------------------------------------------------------------- JSON

def strict_json(raw, what):
    try:
        return json.loads(raw.decode("utf-8", "strict"))
    except (UnicodeDecodeError, ValueError) as e:
        fail("%s: not valid UTF-8 JSON (%s): %r" % (what, e, raw[:300]))


def manager_session(send, *args):
    """Runs snaprestore under a manager on a socket pair that sends `send`;
    returns the result and every byte the tool sent back."""
    a, b = socket.socketpair()
    try:
        a.sendall(send)
        r = run([SNAPRESTORE, "--fd-socket", "fd:%d" % b.fileno()] + list(args),
                pass_fds=(b.fileno(),))
        b.close()
        a.settimeout(10)
        got = b""
        while True:
            chunk = a.recv(65536)
            if not chunk:
                break
            got += chunk
    finally:
        a.close()
    return r, got


def non_utf8_json(s):
    base = scratch()
    src = make_block("x", base, pattern("random", 64 * KiB, 9))
    out = os.path.join(base, "odd.snap")
    # Invalid bytes, a valid euro sign, a lone continuation byte, an overlong '/'.
    name = b"r\xff\xfe\xe2\x82\xac\x80\xc0\xaf"
    machine = b"pc\xed\xa0\x80-\xf4\x90\x80\x80"
    p = subprocess.run([SNAPSAVE.encode(), b"-o", out.encode(), b"--machine", machine, b"--ram",
                        name + b"=" + src.src.encode()], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120)
    check(p.returncode == 0, "save with non-UTF-8 names: exit %d: %r" % (p.returncode, p.stderr))
    r = ok(snaprestore("--info", "--json", out), "--info --json")
    info = strict_json(r.out, "--info --json")
    want = "r\u00ff\u00fe\u20ac\u0080\u00c0\u00af"
    check(info["blocks"][0]["name"] == want, "block name %r, expected %r" % (
        info["blocks"][0]["name"], want))
    check(info["machine"] == "pc\u00ed\u00a0\u0080-\u00f4\u0090\u0080\u0080",
          "machine %r" % info["machine"])
    # A failure's result line on --fd-socket names the block.
    r, got = manager_session(b"start\n", out)
    check(r.rc == 1, "restore without destinations: exit %d" % r.rc)
    lines = [l for l in got.split(b"\n") if l.startswith(b"{")]
    check(lines, "no result line on the socket: %r" % got)
    res = strict_json(lines[-1], "--fd-socket result line")
    check(want in res.get("error", ""), "result line %r does not name the block" % res)
    # The session's own JSON error reply, echoing a key the manager sent.
    r, got = manager_session(b'{"\xff\xfe": 1}\n', "--info", out)
    lines = [l for l in got.split(b"\n") if l.startswith(b"{")]
    check(lines, "no JSON error reply: %r" % got)
    rep = strict_json(lines[0], "the session's error reply")
    check("\u00ff\u00fe" in rep.get("error", {}).get("desc", ""), "error reply %r" % rep)


def main():
    require_binaries()
    t = Cases("hardening-restore")
    work = scratch()
    try:
        s = Snap(work)
    except Skip as e:
        t.skip("all", str(e))
        t.finish()
        return
    t.case("--all: a symlink to a file outside DIR is refused and its target untouched",
           all_symlink_to_file, s)
    t.case("--all: a dangling symlink creates nothing outside DIR", all_dangling_symlink, s)
    t.case("--all: a file owned by another user is refused and untouched", all_foreign_owner, s)
    t.case("--all: a hard-linked file is refused", all_hard_link, s)
    t.case("--all: a FIFO is refused", all_other_kinds, s)
    t.case("--all: DIR and files created 0700/0600, own files reused", all_created_dir_and_reuse,
           s)
    t.case("a failed restore removes only the files it created", failure_removes_only_created, s)
    t.case("-d: an existing output keeps its bytes when the restore fails",
           devstate_existing_kept, s)
    t.case("-d: an output created by a failed restore is removed", devstate_created_removed, s)
    t.case("-d: replaced on success, through a named symlink too", devstate_success, s)
    t.case("-d naming a block destination is refused, destination intact",
           devstate_is_ram_dest, s)
    t.case("SIGTERM and SIGBUS remove the created files and the -d temporary, not a "
           "replacement", interrupted, s)
    t.case("stdout full or closed: exit 1 with one line", stdout_failures, s)
    t.case("JSON output is valid UTF-8 for non-UTF-8 names", non_utf8_json, s)
    t.finish()


if __name__ == "__main__":
    main()
