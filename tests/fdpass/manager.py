#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A small parent manager for snapsave/snaprestore, the way libvirt drives QEMU.

It opens every file itself and hands the tools descriptors only, both ways
docs/fd-passing.md describes:

  * inheritance: the descriptors are inherited (subprocess pass_fds) and named
    with --add-fd fd=F,set=N,opaque=S, fd:N or /dev/fdset/N;
  * the socket protocol: --fd-socket fd:N (one end of a socketpair) or
    --fd-socket PATH (a UNIX socket the manager listens on); each
    "add-fd set=N opaque=S" line goes out with one sendmsg() carrying its
    descriptor as SCM_RIGHTS, then "start"; the tool answers "ok ..." per line
    and sends one JSON result line at the end.

Used as a module by test_fdpass.py. Run as a program it is a demonstration:

    manager.py [--socket] [--dir DIR] [--size MIB]

which saves a memfd of guest RAM into DIR/demo.snap through descriptors
(buffered + O_DIRECT), restores it into a new memfd and compares the bytes.
"""

import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import PAGE, SNAPRESTORE, SNAPSAVE, MiB, Result, run  # noqa: E402,F401

# ------------------------------------------------------------------ contents

def pattern(npages, seed, zero_every=3):
    """npages of guest RAM: random pages with every zero_every-th page zero,
    plus a run of zero pages in the middle. Returns (bytes, zero page count)."""
    rng = random.Random(seed)
    out = bytearray()
    zeros = 0
    for i in range(npages):
        if (zero_every and i % zero_every == 1) or npages // 2 <= i < npages // 2 + 8:
            out += bytes(PAGE)
            zeros += 1
        else:
            page = bytearray(rng.randbytes(PAGE))
            page[0] |= 1  # never all zero by chance
            out += page
    return bytes(out), zeros


def memfd(name, data=b"", size=None):
    """A memfd (O_RDWR, close-on-exec) holding data, or size zero bytes."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    if data:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:done + 64 * MiB], done)
    if size is not None:
        os.ftruncate(fd, size)
    return fd


def read_fd(fd, size=None):
    """Everything (or size bytes) from offset 0 of a file descriptor."""
    if size is None:
        size = os.fstat(fd).st_size
    out = bytearray()
    while len(out) < size:
        chunk = os.pread(fd, min(64 * MiB, size - len(out)), len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def reopen(fd, flags):
    """A second open file description of what fd refers to (for a memfd: the
    only way to get an O_RDONLY descriptor of it). Close-on-exec."""
    return os.open("/proc/self/fd/%d" % fd, flags | os.O_CLOEXEC)


def open_output(path, truncate=True, mode=0o600):
    """Opens a save's output the way libvirt does: O_WRONLY|O_CREAT[|O_TRUNC]
    for the buffered descriptor and a separate open(O_WRONLY|O_DIRECT).
    Returns (buffered fd, direct fd or None, reason the direct open failed)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0)
    return _with_direct(os.open(path, flags, mode), path, os.O_WRONLY)


def open_input(path):
    """O_RDONLY and O_RDONLY|O_DIRECT descriptors of a saved file."""
    return _with_direct(os.open(path, os.O_RDONLY | os.O_CLOEXEC), path, os.O_RDONLY)


def _with_direct(buf, path, access):
    """(buf, a second open of path with access|O_DIRECT or None, why not)."""
    if os.environ.get("SNAPMR_FDPASS_NO_DIRECT"):  # exercises the fallbacks
        return buf, None, "disabled by SNAPMR_FDPASS_NO_DIRECT"
    try:
        return buf, os.open(path, access | os.O_DIRECT | os.O_CLOEXEC), None
    except OSError as e:
        return buf, None, e.strerror


def libvirt_header(xml, total=None, partial=False):
    """A libvirt QEMU save image header: the magic, 19 little-endian u32
    fields (version 2, data_len, was_running, compressed, cookie_len, unused)
    and data_len bytes of XML padded with NULs. total: the header's whole
    size (92 + data_len)."""
    xml = xml.encode() + b"\0"
    data_len = (total - 92) if total else len(xml)
    assert data_len >= len(xml)
    fields = [2, data_len, 1, 0, 0] + [0] * 14
    magic = b"LibvirtQemudPart" if partial else b"LibvirtQemudSave"
    return magic + struct.pack("<19I", *fields) + xml + bytes(data_len - len(xml))


# ------------------------------------------------------------------- running

def add_fd_args(fdsets):
    """--add-fd arguments for {set: [(fd, opaque), ...]} (oldest first)."""
    args = []
    for set_id, fds in fdsets.items():
        for fd, opaque in fds:
            a = "fd=%d,set=%d" % (fd, set_id)
            if opaque:
                a += ",opaque=" + opaque.replace(",", ",,")
            args += ["--add-fd", a]
    return args


class Session:
    """One run of a tool with --fd-socket. mode 'pair' passes one end of a
    socketpair as fd:N; mode 'path' listens on a UNIX socket in sockdir and
    passes its path, accepting the tool's connection."""

    def __init__(self, argv, mode="pair", sockdir=None, pass_fds=(), wrapper=(), timeout=120):
        self.timeout = timeout
        self.replies = []
        self.t0 = time.monotonic()
        self.listener = None
        self.sock_path = None
        argv = [str(a) for a in argv]
        if mode == "pair":
            self.sock, tool = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            spec = "fd:%d" % tool.fileno()
            fds = tuple(pass_fds) + (tool.fileno(),)
        else:
            self.sock_path = os.path.join(sockdir or tempfile.gettempdir(),
                                          "mgr-%d-%d.sock" % (os.getpid(), id(self)))
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(self.sock_path)
            self.listener.listen(1)
            self.listener.settimeout(timeout)
            spec = self.sock_path
            fds = tuple(pass_fds)
            tool = None
        self.argv = list(wrapper) + [argv[0], "--fd-socket", spec] + argv[1:]
        self.proc = subprocess.Popen(self.argv, pass_fds=fds, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if tool is not None:
            tool.close()
        else:
            try:
                self.sock, _ = self.listener.accept()
            except socket.timeout:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("the tool never connected to %s" % self.sock_path)
            finally:
                self.listener.close()
                os.unlink(self.sock_path)
        self.sock.settimeout(timeout)
        self.rfile = self.sock.makefile("rb")

    # -- sending
    def send(self, line, fds=()):
        """One line, one sendmsg(), its descriptors attached."""
        data = line.encode() if isinstance(line, str) else line
        try:
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def reply(self):
        """The next line from the tool, without its newline; None at EOF."""
        try:
            line = self.rfile.readline()
        except (ConnectionResetError, socket.timeout):
            return None
        if not line:
            return None
        line = line.decode("utf-8", "replace").rstrip("\n")
        self.replies.append(line)
        return line

    def add_fd(self, fd, set_id=None, opaque=None, qmp_id=None, as_json=False):
        """Sends one add-fd with fd (text or QMP JSON form) and returns the reply."""
        if as_json:
            args = {}
            if set_id is not None:
                args["fdset-id"] = set_id
            if opaque is not None:
                args["opaque"] = opaque
            cmd = {"execute": "add-fd", "arguments": args}
            if qmp_id is not None:
                cmd["id"] = qmp_id
            line = json.dumps(cmd) + "\n"
        else:
            line = "add-fd"
            if set_id is not None:
                line += " set=%d" % set_id
            if opaque is not None:
                line += " opaque=" + opaque
            line += "\n"
        self.send(line, [fd])
        return self.reply()

    def start(self, as_json=False):
        self.send('{"execute": "start"}\n' if as_json else "start\n")
        return self.reply()

    # -- finishing
    def finish(self):
        """Reads what is left (the result line), waits, returns a Result."""
        result = None
        while True:
            line = self.reply()
            if line is None:
                break
            if line.startswith("{") and '"status"' in line:
                result = json.loads(line)
        self.rfile.close()
        self.sock.close()
        try:
            out, err = self.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return Result(self.argv, self.proc.returncode, out, err.decode("utf-8", "replace"),
                      time.monotonic() - self.t0, self.replies, result)


def valgrind_fd_leaks(res):
    """Descriptors valgrind --track-fds=yes lists as open at exit that are neither
    stdio nor inherited from the manager: a list of their descriptions."""
    leaks = []
    lines = [l.split("==", 2)[-1].strip() for l in res.err.splitlines() if l.startswith("==")]
    i = 0
    while i < len(lines):
        l = lines[i]
        if l.startswith("Open ") and " file descriptor " in l or l.startswith("Open AF_"):
            block = [l]
            j = i + 1
            while j < len(lines) and lines[j] and not lines[j].startswith("Open "):
                block.append(lines[j])
                j += 1
            if not any("inherited from parent" in b for b in block):
                leaks.append(" / ".join(block))
            i = j
        else:
            i += 1
    if not any(l.startswith("FILE DESCRIPTORS:") for l in lines):
        leaks.append("(valgrind printed no FILE DESCRIPTORS summary)")
    return leaks


# ---------------------------------------------------------------------- demo

def demo(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--socket", action="store_true", help="pass descriptors over --fd-socket")
    ap.add_argument("--dir", default="/var/tmp", help="where the snapshot goes")
    ap.add_argument("--size", type=int, default=16, help="guest RAM in MiB")
    opt = ap.parse_args(argv)

    ram, _ = pattern(opt.size * MiB // PAGE, 1)
    src = memfd("guest-ram", ram)
    ro = reopen(src, os.O_RDONLY)
    fd_dir = tempfile.mkdtemp(prefix="snapmr-manager-", dir=opt.dir)
    path = os.path.join(fd_dir, "demo.snap")
    try:
        buf, direct, why = open_output(path)
        if why:
            print("no O_DIRECT on %s: %s; saving buffered" % (opt.dir, why), file=sys.stderr)
        out_set = [(buf, "out-buffered")] + ([(direct, "out-direct")] if direct else [])
        save = [SNAPSAVE, "-o", "/dev/fdset/1", "--ram", "ram0=/dev/fdset/2", "--json"]
        if opt.socket:
            s = Session(save)
            for fd, opaque in out_set:
                print("> add-fd set=1 opaque=%s  < %s" % (opaque, s.add_fd(fd, 1, opaque)))
            print("> add-fd set=2 opaque=ram  < %s" % s.add_fd(ro, 2, "ram"))
            print("> start  < %s" % s.start())
            res = s.finish()
            print("result: %s" % json.dumps(res.result))
        else:
            fdsets = {1: out_set, 2: [(ro, "ram")]}
            fds = [fd for v in fdsets.values() for fd, _ in v]
            for fd in fds:
                os.set_inheritable(fd, True)
            res = run(save[:1] + add_fd_args(fdsets) + save[1:], pass_fds=fds)
            print(res.outs.strip())
        for fd in (buf, direct, ro):
            if fd is not None:
                os.close(fd)
        if res.rc:
            print(res.err, file=sys.stderr)
            return 1
        ibuf, idirect, _ = open_input(path)
        dst = memfd("restored", size=0)
        in_set = [(ibuf, "in-buffered")] + ([(idirect, "in-direct")] if idirect else [])
        fds = [ibuf, dst] + ([idirect] if idirect else [])
        for fd in fds:
            os.set_inheritable(fd, True)
        res = run([SNAPRESTORE] + add_fd_args({1: in_set}) +
                  ["/dev/fdset/1", "--ram", "ram0=fd:%d" % dst, "--json"], pass_fds=fds)
        print(res.outs.strip())
        if res.rc:
            print(res.err, file=sys.stderr)
            return 1
        same = read_fd(dst) == ram
        print("restored RAM %s the original" % ("matches" if same else "DIFFERS FROM"))
        return 0 if same else 1
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(fd_dir)


if __name__ == "__main__":
    sys.exit(demo(sys.argv[1:]))
