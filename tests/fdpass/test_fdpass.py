#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""snapsave/snaprestore run under a parent manager (docs/fd-passing.md).

manager.py opens every file and passes descriptors only:

  inherit      --add-fd/fd:N/fdset, buffered + O_DIRECT output, RAM in memfds,
               device state in a pipe; restore into new memfds; bytes compared
  socket-*     the same over --fd-socket fd:N (socketpair) and --fd-socket PATH,
               text and QMP JSON add-fd lines, ok replies, the JSON result line;
               a failing run reports status failed with its error
  offset-*     a manager's own header in front (--offset, libvirt auto-detection,
               libvirt's unfinished marker), absolute offsets, no stale tail
  errors-*     one-line messages: fd sets lacking a descriptor, unknown sets,
               closed fds, wrong access modes, every socket protocol error
  fd-leaks     valgrind --track-fds=yes: no descriptor left open at exit
  restricted   an fd-only save as user nobody in a mount namespace that hides
               the output directory, then --verify outside
  strace       an fd-only save and restore open no path of the output directory
               and never open /dev/fdset/N
  killed       a save killed with SIGKILL is refused as incomplete

Exit status 0 pass, 1 fail, 77 skip (with the reason printed). Parts that need
something missing (O_DIRECT on /var/tmp, root, valgrind, strace) are skipped
with a note and the rest still runs. SNAPMR_TEST_VERBOSE=1 prints each command,
SNAPMR_TEST_KEEP=1 keeps the scratch directory, SNAPMR_TEST_DISK=DIR moves it
(default /var/tmp), SNAPMR_FDPASS_NO_DIRECT=1 runs as if O_DIRECT were refused.
"""

import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import manager as M  # noqa: E402

DISK = scratch_base("disk")


def _open_fds():
    d = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return sorted(int(n) for n in os.listdir(d) if int(n) != d)
    finally:
        os.close(d)


# --------------------------------------------------------------- the context

class Ctx:
    """Per-case bookkeeping: descriptors to close, a scratch directory."""

    def __init__(self, root, name):
        self.dir = os.path.join(root, name)
        os.mkdir(self.dir, 0o700)
        self.fds = []

    def fd(self, fd):
        if fd is not None:
            self.fds.append(fd)
        return fd

    def close_all(self):
        for fd in reversed(self.fds):
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []

    def path(self, name):
        return os.path.join(self.dir, name)

    def memfd(self, name, data=b"", size=None):
        return self.fd(M.memfd(name, data, size))

    def pipe_with(self, data):
        """A pipe's read end already holding data (which must fit its buffer)."""
        r, w = os.pipe2(os.O_CLOEXEC)
        fcntl.fcntl(w, 1031, max(len(data), 65536))  # F_SETPIPE_SZ
        os.write(w, data)
        os.close(w)
        return self.fd(r)

    def output(self, name, **kw):
        buf, direct, why = M.open_output(self.path(name), **kw)
        self.fd(buf)
        self.fd(direct)
        return buf, direct, why

    def input(self, name):
        buf, direct, why = M.open_input(self.path(name))
        self.fd(buf)
        self.fd(direct)
        return buf, direct, why


def one_error(res, rc, prog, *needles, what="", notes_ok=False):
    """Exit status rc and exactly one stderr line 'prog: ...' holding every needle."""
    return expect_error(res, rc, *needles, prog=prog, what=what, notes_ok=notes_ok)


def save_argv(fdsets, *args):
    return [SNAPSAVE] + M.add_fd_args(fdsets) + [str(a) for a in args]


def restore_argv(fdsets, *args):
    return [SNAPRESTORE] + M.add_fd_args(fdsets) + [str(a) for a in args]


def fds_of(fdsets, *more):
    return [fd for v in fdsets.values() for fd, _ in v] + [f for f in more if f is not None]


def out_set(buf, direct):
    s = [(buf, "libvirt-outgoing-migrate-fd")]
    if direct is not None:
        s.append((direct, "libvirt-outgoing-migrate-directio-fd"))
    return s


def in_set(buf, direct):
    s = [(buf, "libvirt-incoming-migrate-buffered-fd")]
    if direct is not None:
        s.append((direct, "libvirt-incoming-migratedirect-io-fd"))
    return s


def check_stats(st, what, ram_bytes, zero_pages, dev_bytes=None, direct=None):
    check(st.get("status") == "completed", "%s: status %r" % (what, st))
    check(st["ram"]["total"] == ram_bytes, "%s: ram.total %d, expected %d" %
          (what, st["ram"]["total"], ram_bytes))
    check(st["ram"]["duplicate"] == zero_pages, "%s: ram.duplicate %d, expected %d" %
          (what, st["ram"]["duplicate"], zero_pages))
    check(st["ram"]["normal"] == ram_bytes // PAGE - zero_pages,
          "%s: ram.normal %d, expected %d" % (what, st["ram"]["normal"],
                                              ram_bytes // PAGE - zero_pages))
    check(st["ram"]["normal-bytes"] == st["ram"]["normal"] * PAGE, "%s: normal-bytes" % what)
    if dev_bytes is not None:
        check(st["device-state-bytes"] == dev_bytes, "%s: device-state-bytes %d, expected %d" %
              (what, st["device-state-bytes"], dev_bytes))
    if direct is not None:
        check(st["direct-io"] is direct, "%s: direct-io %r, expected %r" %
              (what, st["direct-io"], direct))
        check(st["direct-io-fell-back"] is False, "%s: direct-io-fell-back" % what)


def same(a, b, what):
    if a != b:
        n = min(len(a), len(b))
        first = next((i for i in range(0, n, PAGE) if a[i:i + PAGE] != b[i:i + PAGE]), n)
        raise Failure("%s: bytes differ (lengths %d and %d, first different page at %d)" %
                      (what, len(a), len(b), first))


def info(fd, *args):
    """snaprestore --info --json of an inherited O_RDONLY descriptor."""
    res = ok(run([SNAPRESTORE, "--info", "--json", "fd:%d" % fd] + list(args), pass_fds=[fd]),
             "--info")
    return res.json()


class Guest:
    """Two RAM blocks in memfds and a device state, with the stats they must give."""

    def __init__(self, t, seed, pages0=2048, pages1=771, dev_len=10007):
        import random
        self.ram0, z0 = M.pattern(pages0, seed)
        self.ram1, z1 = M.pattern(pages1, seed + 1, zero_every=5)
        self.zero_pages = z0 + z1
        self.ram_bytes = len(self.ram0) + len(self.ram1)
        self.dev = random.Random(seed).randbytes(dev_len)
        self.m0 = t.memfd("ram0", self.ram0)
        self.m1 = t.memfd("ram1", self.ram1)
        # /dev/fdset/N matches access modes exactly: a source needs an O_RDONLY fd.
        self.m0_ro = t.fd(M.reopen(self.m0, os.O_RDONLY))
        self.m1_ro = t.fd(M.reopen(self.m1, os.O_RDONLY))


# ------------------------------------------------------------------- 1. inherit

def case_inherit(t):
    g = Guest(t, 1)
    buf, direct, why = t.output("inherit.snap")
    if direct is None:
        note("O_WRONLY|O_DIRECT refused on %s (%s): saving buffered" % (DISK, why))
    dev_r = t.pipe_with(g.dev)
    fdsets = {1: out_set(buf, direct), 2: [(g.m0_ro, "ram0")]}
    res = ok(run(save_argv(fdsets, "-o", "/dev/fdset/1", "--ram", "ram0=/dev/fdset/2",
                           "--ram", "ram1=fd:%d" % g.m1, "--device-state", "fd:%d" % dev_r,
                           "--direct", "on" if direct else "off", "--json"),
                 pass_fds=fds_of(fdsets, g.m1, dev_r)), "inherited save")
    check(not res.err_lines(), "inherited save printed on stderr:\n  " + res.describe())
    check_stats(res.json(), "inherited save", g.ram_bytes, g.zero_pages, len(g.dev),
                direct is not None)
    # Written in place through the descriptors: no temporary file, nothing else.
    check(os.listdir(t.dir) == ["inherit.snap"], "files in %s: %r" % (t.dir, os.listdir(t.dir)))

    ibuf, idirect, why = t.input("inherit.snap")
    if idirect is None:
        note("O_RDONLY|O_DIRECT refused (%s): restoring buffered" % why)
    d0 = t.memfd("restored-ram0")       # new and empty: grown to the block size
    d1 = t.memfd("restored-ram1")       # reached through an fd set, O_RDWR
    dout = t.memfd("restored-devstate")
    fdsets = {5: in_set(ibuf, idirect), 6: [(d1, "ram1-dest")]}
    res = ok(run(restore_argv(fdsets, "/dev/fdset/5", "--ram", "ram0=fd:%d" % d0,
                              "--ram", "ram1=/dev/fdset/6", "-d", "fd:%d" % dout,
                              "--direct", "on" if idirect else "off", "--json"),
                 pass_fds=fds_of(fdsets, d0, dout)), "inherited restore")
    check(not res.err_lines(), "inherited restore printed on stderr:\n  " + res.describe())
    st = res.json()
    check(st["status"] == "completed", "restore status %r" % st)
    check(st["direct-io"] is (idirect is not None), "restore direct-io %r" % st["direct-io"])
    same(M.read_fd(d0), g.ram0, "ram0 restored into fd:N")
    same(M.read_fd(d1), g.ram1, "ram1 restored into /dev/fdset/6")
    same(M.read_fd(dout), g.dev, "device state restored into fd:N")

    # --verify through the same kind of set, the RAM sources still intact.
    ok(run(restore_argv({5: in_set(ibuf, idirect)}, "--verify", "/dev/fdset/5"),
           pass_fds=fds_of({5: in_set(ibuf, idirect)})), "--verify through an fd set")
    same(M.read_fd(g.m0), g.ram0, "source memfd ram0 after the save")


# -------------------------------------------------------------------- 2. socket

def socket_roundtrip(t, mode):
    g = Guest(t, 2 if mode == "pair" else 3)
    name = "socket-%s.snap" % mode
    buf, direct, why = t.output(name)
    if direct is None:
        note("O_DIRECT refused (%s): saving buffered" % why)
    dev_r = t.pipe_with(g.dev)
    s = M.Session([SNAPSAVE, "-o", "/dev/fdset/1", "--ram", "ram0=/dev/fdset/2",
                   "--ram", "ram1=/dev/fdset/3", "--device-state", "/dev/fdset/0",
                   "--direct", "on" if direct else "off", "--json"],
                  mode=mode, sockdir=t.dir)
    # pair: lockstep, each reply read before the next line; path: pipelined,
    # every line written before any reply is read, as a manager may.
    lockstep = mode == "pair"
    sends = [("add-fd set=1 opaque=libvirt-outgoing-migrate-fd\n", buf)]
    if direct is not None:
        # libvirt's own QMP line, byte for byte, with an id to echo
        sends.append(('{"execute": "add-fd", "arguments": {"fdset-id": 1, "opaque": '
                      '"libvirt-outgoing-migrate-directio-fd"}, "id": "libvirt-42"}\n', direct))
    sends += [("add-fd set=2 opaque=ram0\n", g.m0_ro), ("add-fd set=3 opaque=ram1\n", g.m1_ro),
              ("add-fd opaque=devstate\n", dev_r),  # the lowest free id, as QMP: 0
              ("start\n", None)]
    replies = []
    for line, fd in sends:
        s.send(line, [fd] if fd is not None else [])
        if lockstep:
            replies.append(s.reply())
    while not lockstep and len(replies) < len(sends):
        replies.append(s.reply())
    want = ["ok set=1 fd=\\d+"]
    if direct is not None:
        j = json.loads(replies[1])
        check(j.get("id") == "libvirt-42" and j["return"]["fdset-id"] == 1 and
              isinstance(j["return"]["fd"], int), "QMP add-fd reply %r" % replies[1])
        want.append(None)
    want += ["ok set=2 fd=\\d+", "ok set=3 fd=\\d+", "ok set=0 fd=\\d+", "ok"]
    check(len(replies) == len(want), "replies %r" % replies)
    for r, w in zip(replies, want):
        check(w is None or (r and re.fullmatch(w, r)), "reply %r, expected %r" % (r, w))
    res = s.finish()
    ok(res, "save over --fd-socket (%s)" % mode)
    check(res.result is not None, "no JSON result line on the socket: %r" % res.replies)
    check_stats(res.result, "socket result line", g.ram_bytes, g.zero_pages, len(g.dev),
                direct is not None)
    check_stats(res.json(), "--json on stdout", g.ram_bytes, g.zero_pages, len(g.dev))
    check(res.replies[-1].startswith("{"), "the result is not the last line: %r" % res.replies)

    # Restore over the socket too: inputs, two destinations and the device state.
    ibuf, idirect, why = t.input(name)
    d0, d1, dout = t.memfd("r0"), t.memfd("r1"), t.memfd("dev")
    dout_w = t.fd(M.reopen(dout, os.O_WRONLY))  # the tool asks for O_WRONLY
    s = M.Session([SNAPRESTORE, "/dev/fdset/7", "--ram", "ram0=/dev/fdset/8",
                   "--ram", "ram1=/dev/fdset/10", "-d", "/dev/fdset/9",
                   "--direct", "on" if idirect else "off", "--json"],
                  mode="path" if mode == "pair" else "pair", sockdir=t.dir)
    for fd, set_id, opaque in ((ibuf, 7, "in-buffered"), (idirect, 7, "in-direct"),
                               (d0, 8, "ram0"), (dout_w, 9, "devstate"), (d1, 10, "ram1")):
        if fd is not None:
            r = s.add_fd(fd, set_id, opaque)
            check(r and r.startswith("ok set=%d " % set_id), "restore add-fd reply %r" % r)
    check(s.start(as_json=True) == '{"return": {}}', "JSON start reply %r" % s.replies[-1:])
    res = s.finish()
    ok(res, "restore over --fd-socket")
    check(res.result and res.result["status"] == "completed", "restore result %r" % res.result)
    check(res.result["direct-io"] is (idirect is not None), "restore result direct-io")
    same(M.read_fd(d0), g.ram0, "ram0 restored over the socket")
    same(M.read_fd(d1), g.ram1, "ram1 restored over the socket")
    same(M.read_fd(dout), g.dev, "device state restored over the socket")


def case_socket_pair(t):
    socket_roundtrip(t, "pair")


def case_socket_path(t):
    socket_roundtrip(t, "path")


def case_socket_failed(t):
    """A run that fails after start reports status failed and the error, on
    the socket and as the one stderr line."""
    buf, _, _ = t.output("failed.snap")
    odd = t.memfd("odd", size=10000)  # not a multiple of 4096
    odd_ro = t.fd(M.reopen(odd, os.O_RDONLY))
    for mode in ("pair", "path"):
        s = M.Session([SNAPSAVE, "-o", "/dev/fdset/1", "--ram", "ram0=/dev/fdset/2", "--json"],
                      mode=mode, sockdir=t.dir)
        s.add_fd(buf, 1, "out")
        s.add_fd(odd_ro, 2, "ram0")
        check(s.start() == "ok", "start reply %r" % s.replies)
        res = s.finish()
        line = one_error(res, 1, "snapsave", "block 'ram0'", "not a non-zero multiple of 4096",
                         what="bad block size over the socket (%s)" % mode)
        check(res.result == {"status": "failed", "error": line[len("snapsave: "):]},
              "result line %r does not carry the error %r" % (res.result, line))
        check(res.out == b"", "--json printed on a failure: %r" % res.out)
    # The same through snaprestore: a file that is not a migration stream.
    os.pwrite(buf, b"not a snapshot\n" * 100, 0)
    rd = t.fd(os.open(t.path("failed.snap"), os.O_RDONLY | os.O_CLOEXEC))
    s = M.Session([SNAPRESTORE, "/dev/fdset/1", "--all", t.path("all")], sockdir=t.dir)
    s.add_fd(rd, 1, "in")
    s.start()
    res = s.finish()
    line = one_error(res, 1, "snaprestore", "not a QEMU migration stream", what="bad input",
                     notes_ok=True)
    check(res.result == {"status": "failed", "error": line[len("snaprestore: "):]},
          "restore result line %r" % res.result)


def case_socket_source_cut(t):
    """A RAM source cut short mid-save, caught as SIGBUS, still gets the
    manager its result line: status failed, with the error from stderr."""
    src = t.path("ram.src")
    with open(src, "wb") as f:  # 8 MiB written slowly, then zeros the scan reads
        f.write(os.urandom(8 << 20) + bytes(56 << 20))
    buf, direct, why = t.output("cut.snap")
    if direct is None:
        note("no O_DIRECT (%s): the source-cut case is skipped" % why)
        return
    ram = t.fd(os.open(src, os.O_RDONLY | os.O_CLOEXEC))
    s = M.Session([SNAPSAVE, "-o", "/dev/fdset/1", "--ram", "ram0=/dev/fdset/2", "-j", "1",
                   "--io", "threads", "--max-io-size", "4K"], sockdir=t.dir)
    for fd, opaque in out_set(buf, direct):
        s.add_fd(fd, 1, opaque)
    s.add_fd(ram, 2, "ram0")
    check(s.start() == "ok", "start reply %r" % s.replies)
    t0 = time.monotonic()
    while os.fstat(buf).st_blocks * 512 < (1 << 20) and s.proc.poll() is None \
            and time.monotonic() - t0 < 30:
        time.sleep(0.002)
    check(s.proc.poll() is None, "the save ended before the cut")
    os.truncate(src, 12 << 20)
    res = s.finish()
    line = one_error(res, 1, "snapsave", "block 'ram0'", "SIGBUS", what="source cut")
    check(res.result == {"status": "failed", "error": line[len("snapsave: "):]},
          "result line %r does not carry the error %r" % (res.result, line))


# -------------------------------------------------------------------- 3. offset

def stream_check(t, fd, hdr_len, what):
    """Offsets in --info are absolute, past the manager's header, QEMU-shaped."""
    inf = info(fd, "--offset", hdr_len)
    check(inf["offset"] == hdr_len, "%s: info offset %r" % (what, inf["offset"]))
    for b in inf["blocks"]:
        check(b["header-offset"] > hdr_len, "%s: header-offset %d" % (what, b["header-offset"]))
        check(b["pages-offset"] > hdr_len and b["pages-offset"] % PAGE == 0,
              "%s: pages-offset %d" % (what, b["pages-offset"]))
        # The MappedRamHeader on disk (be32 version, be64 page size, be64 bitmap
        # offset, be64 pages offset) holds the same absolute numbers, QEMU's way:
        # the bitmap right after the header.
        raw = os.pread(fd, 28, b["header-offset"])
        ver, psize, bmo, pgo = struct.unpack(">IQQQ", raw)
        check((ver, psize) == (1, PAGE), "%s: MappedRamHeader %r" % (what, (ver, psize)))
        check(bmo == b["header-offset"] + 28 == b["bitmap-offset"],
              "%s: bitmap offset %d, header at %d" % (what, bmo, b["header-offset"]))
        check(pgo == b["pages-offset"], "%s: pages offset %d vs %d" % (what, pgo,
                                                                      b["pages-offset"]))
    check(inf["integrity"]["status"] == "complete", "%s: integrity %r" % (what, inf["integrity"]))
    check(inf["integrity"]["table-offset"] > hdr_len, "%s: table-offset" % what)
    check(inf["file-size"] == os.fstat(fd).st_size, "%s: file-size" % what)
    return inf


def restore_compare(t, rd, g, what, *args, expect_note=None):
    d0, d1 = t.memfd("r0"), t.memfd("r1")
    res = ok(run([SNAPRESTORE, "fd:%d" % rd, "--ram", "ram0=fd:%d" % d0,
                  "--ram", "ram1=fd:%d" % d1, "--direct", "off"] + [str(a) for a in args],
                 pass_fds=[rd, d0, d1]), what)
    if expect_note:
        check(expect_note in res.err, "%s: no note %r\n  %s" % (what, expect_note,
                                                                 res.describe()))
    same(M.read_fd(d0), g.ram0, what + ": ram0")
    same(M.read_fd(d1), g.ram1, what + ": ram1")
    return res


def save_at_offset(t, g, buf, direct, hdr_len, what):
    fdsets = {1: out_set(buf, direct)}
    res = ok(run(save_argv(fdsets, "-o", "/dev/fdset/1", "--offset", hdr_len,
                           "--ram", "ram0=fd:%d" % g.m0, "--ram", "ram1=fd:%d" % g.m1,
                           "--direct", "on" if direct else "off", "--json"),
                 pass_fds=fds_of(fdsets, g.m0, g.m1)), what)
    check_stats(res.json(), what, g.ram_bytes, g.zero_pages, direct=direct is not None)


def case_offset_header(t):
    """A manager's own 4 KiB + XML-ish header, then --offset."""
    g = Guest(t, 4, pages0=600, pages1=97)
    xml = b"<domain type='kvm'><name>fdpass</name><uuid>0</uuid></domain>\n" * 5
    header = b"MGRHDR01" + bytes(4088) + xml  # 4 KiB + XML: an unaligned offset
    buf, direct, why = t.output("header.snap")
    os.write(buf, header)  # the manager writes first, as libvirt does
    hdr_len = os.lseek(buf, 0, os.SEEK_CUR)
    save_at_offset(t, g, buf, direct, hdr_len, "save at --offset %d" % hdr_len)
    rd = t.fd(os.open(t.path("header.snap"), os.O_RDONLY | os.O_CLOEXEC))
    check(os.pread(rd, hdr_len, 0) == header, "the manager's header changed")
    stream_check(t, rd, hdr_len, "custom header")
    restore_compare(t, rd, g, "restore with --offset", "--offset", hdr_len)
    res = run([SNAPRESTORE, "--info", "fd:%d" % rd], pass_fds=[rd])
    one_error(res, 1, "snaprestore", "not a QEMU migration stream", "--offset",
              what="an unknown header without --offset")

    # A shell manager's `3>>file`: O_APPEND would make every pwrite() append.
    # The tool clears it (on the shared open file description, as QEMU does).
    for form in ("fd", "set"):
        name = "append-%s.snap" % form
        with open(t.path(name), "wb") as f:
            f.write(header)
        app = t.fd(os.open(t.path(name), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
        spec = ["-o", "fd:%d" % app] if form == "fd" else \
            ["--add-fd", "fd=%d,set=1" % app, "-o", "/dev/fdset/1"]
        ok(run([SNAPSAVE] + spec + ["--offset", hdr_len, "--ram", "ram0=fd:%d" % g.m0,
                                    "--ram", "ram1=fd:%d" % g.m1, "--direct", "off"],
               pass_fds=[app, g.m0, g.m1]), "save through an O_APPEND descriptor (%s)" % form)
        check(not fcntl.fcntl(app, fcntl.F_GETFL) & os.O_APPEND,
              "O_APPEND still set on the shared description (%s)" % form)
        r2 = t.fd(os.open(t.path(name), os.O_RDONLY | os.O_CLOEXEC))
        check(os.pread(r2, hdr_len, 0) == header, "O_APPEND save damaged the header (%s)" % form)
        stream_check(t, r2, hdr_len, "O_APPEND descriptor (%s)" % form)
        restore_compare(t, r2, g, "restore of the O_APPEND save", "--offset", hdr_len)


def case_offset_libvirt(t):
    """A real libvirt save image header: snaprestore finds the stream itself."""
    g = Guest(t, 5, pages0=700, pages1=33)
    xml = "<domain type='kvm'>\n  <name>fdpass</name>\n  <memory>%d</memory>\n</domain>\n" % (
        g.ram_bytes // 1024)
    for partial in (False, True):
        name = "libvirt-part.snap" if partial else "libvirt.snap"
        header = M.libvirt_header(xml, total=8192 + 92 + 17, partial=partial)
        buf, direct, _ = t.output(name)
        os.write(buf, header)
        hdr_len = len(header)
        save_at_offset(t, g, buf, direct, hdr_len, "save behind a libvirt header")
        rd = t.fd(os.open(t.path(name), os.O_RDONLY | os.O_CLOEXEC))
        check(os.pread(rd, hdr_len, 0) == header, "the libvirt header changed")
        stream_check(t, rd, hdr_len, "libvirt header")
        if not partial:
            restore_compare(t, rd, g, "libvirt header, detected",
                            expect_note="libvirt save image; the stream starts at offset %d"
                            % hdr_len)
            restore_compare(t, rd, g, "libvirt header, --offset", "--offset", hdr_len)
            inf = info(rd)  # auto-detected as well
            check(inf["offset"] == hdr_len, "--info detected offset %r" % inf["offset"])
        else:
            d0 = t.memfd("x")
            res = run([SNAPRESTORE, "fd:%d" % rd, "--ram", "ram0=fd:%d" % d0,
                       "--skip", "ram1"], pass_fds=[rd, d0])
            one_error(res, 1, "snaprestore", "libvirt marks this save image as unfinished",
                      what="LibvirtQemudPart header")
            restore_compare(t, rd, g, "unfinished libvirt header with --force", "--force",
                            expect_note="libvirt save image")


def case_offset_stale_tail(t):
    """A larger file behind the fd: cut to the offset first, never below it."""
    g = Guest(t, 6, pages0=300, pages1=50)
    marker = b"STALE-TAIL-0123456789abcdef!!\n"
    header = b"<libvirt-like header/>\n".ljust(4096, b"\0") + b"<xml>fdpass</xml>\n"
    path = t.path("stale.snap")
    with open(path, "wb") as f:
        f.write(header)
        f.write(marker * (48 * MiB // len(marker)))  # far longer than the save
    buf, direct, _ = t.output("stale.snap", truncate=False)
    hdr_len = len(header)
    save_at_offset(t, g, buf, direct, hdr_len, "save over a larger file")
    rd = t.fd(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    check(os.pread(rd, hdr_len, 0) == header, "the header in front was damaged")
    stream_check(t, rd, hdr_len, "over a larger file")
    size = os.fstat(rd).st_size
    check(size < 48 * MiB, "the file was not cut: %d bytes" % size)
    data = M.read_fd(rd)
    check(marker[:16] not in data, "stale bytes survive at %d" % data.find(marker[:16]))
    restore_compare(t, rd, g, "restore after the cut", "--offset", hdr_len)
    ok(run([SNAPRESTORE, "--verify", "--offset", hdr_len, "fd:%d" % rd], pass_fds=[rd]),
       "--verify after the cut")

    # A file exactly as long as the header (libvirt's case) and a file
    # shorter than the offset: the header stays, nothing is cut below it.
    for name, pre in (("exact.snap", header), ("short.snap", header[:100])):
        with open(t.path(name), "wb") as f:
            f.write(pre)
        b2, _, _ = t.output(name, truncate=False)
        ok(run([SNAPSAVE, "-o", "fd:%d" % b2, "--offset", hdr_len, "--ram", "ram0=fd:%d" % g.m0,
                "--ram", "ram1=fd:%d" % g.m1, "--direct", "off"], pass_fds=[b2, g.m0, g.m1]),
           "save to fd:N at --offset over " + name)
        r2 = t.fd(os.open(t.path(name), os.O_RDONLY | os.O_CLOEXEC))
        check(os.pread(r2, len(pre), 0) == pre, "%s: the bytes in front changed" % name)
        if name == "short.snap":
            check(os.pread(r2, hdr_len - len(pre), len(pre)) == bytes(hdr_len - len(pre)),
                  "short.snap: the gap up to the offset is not zero")
        restore_compare(t, r2, g, "restore " + name, "--offset", hdr_len)


# -------------------------------------------------------------------- 4. errors

def case_errors_fdset(t):
    g = Guest(t, 7, pages0=64, pages1=16)
    buf, direct, why = t.output("err.snap")
    ram = ["--ram", "ram0=fd:%d" % g.m0, "--ram", "ram1=fd:%d" % g.m1]
    base = [g.m0, g.m1]

    # --direct on, a set without its O_DIRECT descriptor: the set is listed.
    fdsets = {1: [(buf, "out-buffered")]}
    res = run(save_argv(fdsets, "-o", "/dev/fdset/1", "--direct", "on", *ram),
              pass_fds=fds_of(fdsets, *base))
    one_error(res, 1, "snapsave", "/dev/fdset/1: fd set 1 has no descriptor open O_WRONLY|O_DIRECT",
              re.compile(r'it holds, newest first: fd \d+ O_WRONLY without O_DIRECT '
                         r'opaque "out-buffered"'), "needs its own open()",
              what="--direct on without an O_DIRECT descriptor")
    check(os.fstat(buf).st_size == 0, "the failed save wrote to the output")

    # --direct auto: the same set saves buffered, with a note.
    res = ok(run(save_argv(fdsets, "-o", "/dev/fdset/1", "--direct", "auto", "--json", *ram),
                 pass_fds=fds_of(fdsets, *base)), "--direct auto without O_DIRECT")
    lines = res.err_lines()
    check(len(lines) == 1 and lines[0].startswith("snapsave: note: /dev/fdset/1: O_DIRECT "
                                                  "unavailable") and
          "no O_WRONLY|O_DIRECT descriptor" in lines[0] and "writing buffered" in lines[0],
          "--direct auto note:\n  " + res.describe())
    st = res.json()
    check(st["direct-io"] is False, "--direct auto fallback reports direct-io %r" %
          st["direct-io"])
    rd = t.fd(os.open(t.path("err.snap"), os.O_RDONLY | os.O_CLOEXEC))
    ok(run([SNAPRESTORE, "--verify", "fd:%d" % rd], pass_fds=[rd]), "verify the auto save")

    # A set holding only the O_DIRECT descriptor: no buffered one for headers.
    if direct is not None:
        fdsets = {1: [(direct, "out-direct")]}
        res = run(save_argv(fdsets, "-o", "/dev/fdset/1", *ram), pass_fds=fds_of(fdsets, *base))
        one_error(res, 1, "snapsave", "no descriptor open O_WRONLY without O_DIRECT",
                  re.compile(r'fd \d+ O_WRONLY\|O_DIRECT opaque "out-direct"'),
                  what="a set with only an O_DIRECT descriptor")
    else:
        note("no O_DIRECT: the direct-only set case is skipped")

    # Unknown set, closed fd:N, wrong access modes.
    fdsets = {1: [(buf, "out")], 3: [(g.m0_ro, "ram0")]}
    res = run(save_argv(fdsets, "-o", "/dev/fdset/9", *ram), pass_fds=fds_of(fdsets, *base))
    one_error(res, 1, "snapsave", "/dev/fdset/9: fd set 9 does not exist",
              re.compile(r"\(sets: 1,? 3\)"),
              what="unknown fd set")
    free_fd = max(_open_fds()) + 100
    res = run([SNAPSAVE, "-o", "fd:%d" % free_fd] + ram, pass_fds=base)
    one_error(res, 1, "snapsave", "fd:%d: fd %d is not open" % (free_fd, free_fd),
              what="fd:N not open")
    res = run([SNAPSAVE, "-o", "fd:%d" % rd] + ram, pass_fds=[rd] + base)
    one_error(res, 1, "snapsave", "fd %d is open O_RDONLY, which cannot serve O_WRONLY" % rd,
              what="O_RDONLY fd:N as the output")
    fdsets = {1: [(rd, "read-only")]}
    res = run(save_argv(fdsets, "-o", "/dev/fdset/1", "--direct", "off", *ram),
              pass_fds=fds_of(fdsets, *base))
    one_error(res, 1, "snapsave", "fd set 1 has no descriptor open O_WRONLY without O_DIRECT",
              re.compile(r'fd \d+ O_RDONLY without O_DIRECT opaque "read-only"'),
              what="O_RDONLY descriptor in the output set")
    # A memfd (O_RDWR) in a set never serves the O_RDONLY a RAM source asks for.
    fdsets = {1: [(buf, "out")], 2: [(g.m0, "ram0-rdwr")]}
    res = run(save_argv(fdsets, "-o", "/dev/fdset/1", "--ram", "ram0=/dev/fdset/2"),
              pass_fds=fds_of(fdsets))
    one_error(res, 1, "snapsave", "block 'ram0': fd set 2 has no descriptor open O_RDONLY",
              re.compile(r'fd \d+ O_RDWR without O_DIRECT opaque "ram0-rdwr"'),
              what="O_RDWR memfd as a RAM source in a set")
    # fd:N as the output with --direct on: one descriptor cannot be both.
    res = run([SNAPSAVE, "-o", "fd:%d" % buf, "--direct", "on"] + ram, pass_fds=[buf] + base)
    one_error(res, 1, "snapsave", "fd:%d is one descriptor; O_DIRECT needs a second one in an "
              "fd set" % buf, what="fd:N with --direct on")
    # --add-fd problems.
    res = run([SNAPSAVE, "--add-fd", "fd=%d,set=x" % buf, "-o", "/dev/fdset/1"] + ram,
              pass_fds=[buf] + base)
    one_error(res, 2, "snapsave", "set must be a non-negative decimal number, not 'x'",
              what="--add-fd set=x")
    res = run([SNAPSAVE, "--add-fd", "fd=%d,set=1" % free_fd, "-o", "/dev/fdset/1"] + ram,
              pass_fds=base)
    one_error(res, 2, "snapsave", "--add-fd fd=%d,set=1: fd %d is not open" % (free_fd, free_fd),
              what="--add-fd of a closed fd")
    res = run([SNAPSAVE, "--add-fd", "fd=%d,set=1,color=red" % buf, "-o", "/dev/fdset/1"] + ram,
              pass_fds=[buf] + base)
    one_error(res, 2, "snapsave", "unknown parameter 'color' (fd, set, opaque)",
              what="--add-fd unknown key")

    # Restore: a set without the O_RDONLY|O_DIRECT one under --direct on, and
    # a set holding only the write descriptor.
    fdsets = {4: [(rd, "in-buffered")]}
    d0 = t.memfd("d0")
    res = run(restore_argv(fdsets, "/dev/fdset/4", "--ram", "ram0=fd:%d" % d0, "--skip", "ram1",
                           "--direct", "on"), pass_fds=fds_of(fdsets, d0))
    one_error(res, 1, "snaprestore", "/dev/fdset/4: O_DIRECT: fd set 4 has no descriptor open "
              "O_RDONLY|O_DIRECT", re.compile(r'fd \d+ O_RDONLY without O_DIRECT opaque '
                                              r'"in-buffered"'),
              what="restore --direct on without O_DIRECT")
    res = ok(run(restore_argv(fdsets, "/dev/fdset/4", "--ram", "ram0=fd:%d" % d0,
                              "--skip", "ram1", "--json"), pass_fds=fds_of(fdsets, d0)),
             "restore --direct auto without O_DIRECT")
    check(res.json()["direct-io"] is False, "restore fallback direct-io")
    same(M.read_fd(d0), g.ram0, "restore with a buffered-only set")
    fdsets = {4: [(buf, "write-only")]}
    res = run(restore_argv(fdsets, "/dev/fdset/4", "--info"), pass_fds=fds_of(fdsets))
    one_error(res, 1, "snaprestore", "fd set 4 has no descriptor open O_RDONLY without O_DIRECT",
              re.compile(r'fd \d+ O_WRONLY without O_DIRECT opaque "write-only"'),
              what="restore from a write-only set")


SOCKET_ERRORS = [
    # (name, action(session, fds), message)
    ("add-fd without a descriptor",
     lambda s, f: s.send("add-fd set=1\n"),
     "add-fd came with 0 descriptor(s); send exactly one with each add-fd line"),
    ("add-fd with two descriptors",
     lambda s, f: s.send("add-fd set=1 opaque=x\n", f[:2]),
     "add-fd came with 2 descriptor(s); send exactly one with each add-fd line"),
    ("a descriptor with start",
     lambda s, f: (s.add_fd(f[0], 1), s.send("start\n", f[1:2])),
     "start came with 1 descriptor(s); it takes none"),
    ("a descriptor with the JSON start",
     lambda s, f: s.send('{"execute": "start"}\n', f[:1]),
     "start came with 1 descriptor(s); it takes none"),
    ("truncated control data (20 descriptors in one message)",
     lambda s, f: (s.add_fd(f[0], 1), s.send("add-fd set=1\n", f[:20])),
     "control data truncated"),
    ("more than 64 descriptors",
     lambda s, f: [s.add_fd(f[i % 24], 1 + i % 3) for i in range(65)],
     "more than 64 descriptors"),
    ("end of file before start",
     lambda s, f: (s.add_fd(f[0], 1), s.add_fd(f[1], 2), s.sock.shutdown(socket.SHUT_WR)),
     "the manager closed the connection before start"),
    ("a line longer than 4096 bytes",
     lambda s, f: s.send("add-fd set=1 opaque=" + "x" * 5000 + "\n", f[:1]),
     "line longer than 4096 bytes"),
    ("an unknown command",
     lambda s, f: s.send("frob\n"),
     "unknown command 'frob' (add-fd, start)"),
    ("a negative set id",
     lambda s, f: s.send("add-fd set=-1\n", f[:1]),
     "set"),
    ("bad JSON",
     lambda s, f: s.send('{"execute": "add-fd", "arguments": {"fdset-id": -1}}\n', f[:1]),
     "bad JSON"),
    ("an O_PATH descriptor",
     lambda s, f: s.send("add-fd set=1\n", [f[-1]]),
     re.compile(r"fd \d+ is an O_PATH descriptor, which can do no I/O")),
]


def socket_error_fds(t):
    path = t.path("sockerr.snap")
    fds = [t.fd(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))]
    for _ in range(23):
        fds.append(t.fd(os.open(path, os.O_WRONLY | os.O_CLOEXEC)))
    fds.append(t.fd(os.open(path, os.O_PATH | os.O_CLOEXEC)))
    return path, fds


def socket_error_run(t, name, action, msg, fds, wrapper=(), mode="pair"):
    s = M.Session([SNAPSAVE, "-o", "/dev/fdset/1", "--ram", "ram0=/dev/fdset/2"],
                  mode=mode, sockdir=t.dir, wrapper=wrapper)
    action(s, fds)
    res = s.finish()
    res.argv = res.argv[len(wrapper):] if wrapper else res.argv
    line = one_error(res, 1, "snapsave", "--fd-socket ", msg, what=name)
    check(res.replies, "%s: no error reply on the socket" % name)
    last = res.replies[-1]
    want = line.split(": ", 2)[2]
    if last.startswith("{"):
        check(json.loads(last)["error"]["desc"] == want, "%s: JSON error reply %r" % (name, last))
    else:
        check(last == "error " + want, "%s: error reply %r, stderr %r" % (name, last, line))
    check(all(r.startswith("ok") or r.startswith('{"return"') for r in res.replies[:-1]),
          "%s: replies %r" % (name, res.replies))
    check(res.result is None, "%s: a result line after a protocol error" % name)
    return res


def case_errors_socket(t):
    path, fds = socket_error_fds(t)
    for name, action, msg in SOCKET_ERRORS:
        socket_error_run(t, name, action, msg, fds)
    # The same through a listening socket path, and with snaprestore.
    socket_error_run(t, "two descriptors (socket path)", SOCKET_ERRORS[1][1], SOCKET_ERRORS[1][2],
                     fds, mode="path")
    s = M.Session([SNAPRESTORE, "/dev/fdset/1", "--info"], sockdir=t.dir)
    s.send("add-fd set=1\n", fds[:3])
    res = s.finish()
    one_error(res, 1, "snaprestore", "add-fd came with 3 descriptor(s)", what="snaprestore socket")
    # Nothing the manager sent was written: the output is still empty.
    check(os.stat(path).st_size == 0, "protocol errors wrote to the output")
    # --fd-socket naming something that is not a socket, or nothing.
    rd = t.fd(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    res = run([SNAPSAVE, "--fd-socket", "fd:%d" % rd, "-o", "/dev/fdset/1", "--ram", "r=fd:0"],
              pass_fds=[rd])
    one_error(res, 1, "snapsave", "--fd-socket fd:%d:" % rd, what="--fd-socket on a file")
    res = run([SNAPSAVE, "--fd-socket", t.path("nobody-listens.sock"), "-o", "/dev/fdset/1",
               "--ram", "r=fd:0"])
    one_error(res, 1, "snapsave", "nobody-listens.sock", what="--fd-socket to a missing path")


# ------------------------------------------------------------------- fd leaks

def asan_build():
    """True if the tools carry AddressSanitizer, which valgrind cannot run."""
    r = subprocess.run(["ldd", SNAPSAVE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return b"libasan" in r.stdout


def case_fd_leaks(t):
    if not shutil.which("valgrind"):
        raise Skip("valgrind is not installed")
    if asan_build():
        raise Skip("the tools are built with AddressSanitizer, which valgrind cannot run "
                   "(LeakSanitizer checks this build instead)")
    # Not -q: without it valgrind always prints its FILE DESCRIPTORS summary.
    # Memory errors and definite leaks make the exit status 99.
    vg = ["valgrind", "--track-fds=yes", "--error-exitcode=99", "--leak-check=full",
          "--errors-for-leak-kinds=definite"]
    path, fds = socket_error_fds(t)
    picked = [SOCKET_ERRORS[i] for i in (1, 2, 4, 5, 6, 7, 11)]
    for name, action, msg in picked:
        res = socket_error_run(t, name + " (valgrind)", action, msg, fds, wrapper=vg)
        leaks = M.valgrind_fd_leaks(res)
        check(not leaks, "%s: descriptors open at exit: %s\n  %s" % (name, leaks,
                                                                    res.describe()))

    # Successful runs hold every set until exit and close them all.
    g = Guest(t, 8, pages0=64, pages1=16)
    buf, direct, _ = t.output("vg.snap")
    dev_r = t.pipe_with(g.dev)
    s = M.Session([SNAPSAVE, "-o", "/dev/fdset/1", "--ram", "ram0=/dev/fdset/2",
                   "--ram", "ram1=fd:%d" % g.m1, "-d", "fd:%d" % dev_r, "--io", "threads",
                   "--json"], pass_fds=[g.m1, dev_r], sockdir=t.dir, wrapper=vg)
    for fd, set_id in ((buf, 1), (direct, 1), (g.m0_ro, 2)):
        if fd is not None:
            s.add_fd(fd, set_id)
    s.start()
    res = s.finish()
    check(res.rc == 0 and res.result and res.result["status"] == "completed",
          "save under valgrind:\n  " + res.describe())
    leaks = M.valgrind_fd_leaks(res)
    check(not leaks, "save under valgrind leaves %s" % leaks)

    ibuf, idirect, _ = t.input("vg.snap")
    d0, dout = t.memfd("d0"), t.memfd("dout")
    fdsets = {1: in_set(ibuf, idirect), 2: [(d0, "ram0")]}
    res = run(restore_argv(fdsets, "/dev/fdset/1", "--ram", "ram0=/dev/fdset/2",
                           "--skip", "ram1", "-d", "fd:%d" % dout, "--io", "threads"),
              pass_fds=fds_of(fdsets, dout), wrapper=vg)
    check(res.rc == 0, "restore under valgrind:\n  " + res.describe())
    leaks = M.valgrind_fd_leaks(res)
    check(not leaks, "restore under valgrind leaves %s" % leaks)
    same(M.read_fd(d0), g.ram0, "ram0 restored under valgrind")
    same(M.read_fd(dout), g.dev, "device state restored under valgrind")
    # A failing fd-set selection after --add-fd: the registry is cleared too.
    fdsets = {1: [(buf, "out")]}
    res = run(save_argv(fdsets, "-o", "/dev/fdset/1", "--direct", "on", "--ram",
                        "ram0=fd:%d" % g.m0), pass_fds=fds_of(fdsets, g.m0), wrapper=vg)
    check(res.rc == 1, "failing save under valgrind:\n  " + res.describe())
    leaks = M.valgrind_fd_leaks(res)
    check(not leaks, "failing save under valgrind leaves %s" % leaks)


# --------------------------------------------------------------- restricted

def case_restricted(t):
    if os.geteuid() != 0:
        raise Skip("needs root (unshare -m, setpriv to nobody)")
    for tool in ("unshare", "setpriv"):
        if not shutil.which(tool):
            raise Skip("%s is not installed" % tool)
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        raise Skip("no user nobody")
    uid, gid = pw.pw_uid, pw.pw_gid
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none %s" % t.dir],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if probe.returncode:
        raise Skip("cannot mount in a new mount namespace: %s" % probe.stdout.decode().strip())

    g = Guest(t, 9)
    name = "restricted.snap"
    buf, direct, why = t.output(name, mode=0o600)
    os.chmod(t.dir, 0o700)
    st = os.stat(t.path(name))
    check(st.st_uid == 0 and st.st_mode & 0o777 == 0o600, "output not 0600 root")
    if direct is None:
        note("no O_DIRECT (%s): restricted save is buffered" % why)
    dev_r = t.pipe_with(g.dev)

    # unshare -m (private propagation), hide the directory under a tmpfs,
    # check it is gone, then become nobody and exec the tool.
    script = ('mount -t tmpfs -o mode=0755 none "$1" && ! test -e "$2" && shift 2 && '
              'exec setpriv --reuid=%d --regid=%d --clear-groups -- "$@"' % (uid, gid))
    wrap = ["unshare", "-m", "--", "sh", "-c", script, "sh", t.dir, t.path(name)]
    fdsets = {1: out_set(buf, direct), 2: [(g.m0_ro, "ram0")]}
    res = run(save_argv(fdsets, "-o", "/dev/fdset/1", "--ram", "ram0=/dev/fdset/2",
                        "--ram", "ram1=fd:%d" % g.m1, "-d", "fd:%d" % dev_r,
                        "--direct", "on" if direct else "off", "--json"),
              pass_fds=fds_of(fdsets, g.m1, dev_r), wrapper=wrap)
    ok(res, "fd-only save as nobody with the directory hidden")
    check_stats(res.json(), "restricted save", g.ram_bytes, g.zero_pages, len(g.dev),
                direct is not None)

    # Controls: the same user cannot reach the file by path, inside or outside.
    res = run([SNAPSAVE, "-o", t.path("by-path.snap"), "--ram", "ram0=fd:%d" % g.m0],
              pass_fds=[g.m0], wrapper=wrap[:-1] + [t.path("by-path.snap")])
    one_error(res, 1, "snapsave", "by-path.snap", "Permission denied",
              what="nobody saving by path in the namespace",
              notes_ok=True)
    res = run([SNAPRESTORE, "--info", t.path(name)],
              wrapper=["setpriv", "--reuid=%d" % uid, "--regid=%d" % gid, "--clear-groups",
                       "--"])
    one_error(res, 1, "snaprestore", "Permission denied", what="nobody opening the file by path")

    # Outside, as root, by path: a complete, verified file with the right bytes.
    ok(run([SNAPRESTORE, "--verify", t.path(name)]), "--verify of the restricted save")
    d0, d1, dout = t.memfd("r0"), t.memfd("r1"), t.memfd("dev")
    ok(run([SNAPRESTORE, t.path(name), "--ram", "ram0=fd:%d" % d0, "--ram", "ram1=fd:%d" % d1,
            "-d", "fd:%d" % dout], pass_fds=[d0, d1, dout]), "restore of the restricted save")
    same(M.read_fd(d0), g.ram0, "restricted ram0")
    same(M.read_fd(d1), g.ram1, "restricted ram1")
    same(M.read_fd(dout), g.dev, "restricted device state")
    check(sorted(os.listdir(t.dir)) == [name], "files left: %r" % os.listdir(t.dir))


# ------------------------------------------------------------------- strace

OPEN_CALLS = ("open", "openat", "openat2", "creat", "open_by_handle_at")
ALLOWED_PREFIXES = ("/etc/ld.so", "/lib", "/usr/lib", "/lib64", "/proc/", "/sys/", "/dev/null",
                    "/dev/urandom", "/dev/shm/")


def strace_paths(log):
    """(syscall, path) for every path-taking call in an strace -f log."""
    out = []
    for line in open(log, encoding="utf-8", errors="replace"):
        m = re.match(r"(?:\[pid\s+\d+\]\s+)?(?:\d+\s+)?(\w+)\((.*)", line)
        if not m:
            continue
        call, rest = m.groups()
        paths = re.findall(r'"((?:[^"\\]|\\.)*)"', rest)
        if call.startswith("execve"):
            paths = paths[:1]  # the program; its arguments are no file access
        for p in paths:
            out.append((call, p))
    return out


def case_strace(t):
    if not shutil.which("strace"):
        raise Skip("strace is not installed")
    g = Guest(t, 10, pages0=256, pages1=32)
    name = "traced.snap"
    buf, direct, _ = t.output(name)
    dev_r = t.pipe_with(g.dev)
    log = os.path.join(os.path.dirname(t.dir), "strace-save.log")
    fdsets = {1: out_set(buf, direct), 2: [(g.m0_ro, "ram0")]}
    probe = subprocess.run(["strace", "-o", "/dev/null", "true"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    if probe.returncode:
        raise Skip("strace cannot trace here: %s" % probe.stderr.decode().strip())
    res = run(save_argv(fdsets, "-o", "/dev/fdset/1", "--ram", "ram0=/dev/fdset/2",
                        "--ram", "ram1=fd:%d" % g.m1, "-d", "fd:%d" % dev_r, "--json"),
              pass_fds=fds_of(fdsets, g.m1, dev_r),
              wrapper=["strace", "-f", "-qq", "-s", "256", "-e", "trace=%file", "-o", log])
    ok(res, "save under strace")
    ibuf, idirect, _ = t.input(name)
    d0, d1 = t.memfd("r0"), t.memfd("r1")
    log2 = os.path.join(os.path.dirname(t.dir), "strace-restore.log")
    fdsets = {3: in_set(ibuf, idirect), 4: [(d1, "ram1")]}
    res = run(restore_argv(fdsets, "/dev/fdset/3", "--ram", "ram0=fd:%d" % d0,
                           "--ram", "ram1=/dev/fdset/4"),
              pass_fds=fds_of(fdsets, d0),
              wrapper=["strace", "-f", "-qq", "-s", "256", "-e", "trace=%file", "-o", log2])
    ok(res, "restore under strace")
    same(M.read_fd(d0), g.ram0, "ram0 restored under strace")
    same(M.read_fd(d1), g.ram1, "ram1 restored under strace")
    for lg, tool in ((log, SNAPSAVE), (log2, SNAPRESTORE)):
        calls = strace_paths(lg)
        check(calls, "strace logged nothing in %s" % lg)
        real_dir = os.path.realpath(t.dir)
        for call, p in calls:
            check(t.dir not in p and real_dir not in p and name not in p,
                  "%s touched the output's directory: %s(%r)" % (os.path.basename(tool), call, p))
            check(not p.startswith("/dev/fdset"), "%s: %s(%r): /dev/fdset opened as a path" %
                  (os.path.basename(tool), call, p))
            if call in OPEN_CALLS:
                build = os.path.dirname(os.path.dirname(os.path.realpath(tool)))
                check(p.startswith(ALLOWED_PREFIXES) or p.startswith(build),
                      "%s opened an unexpected path: %s(%r)" % (os.path.basename(tool), call, p))
        os.unlink(lg)


# ------------------------------------------------------------------- killed

def kill_save(t, m, name, extra, when, what):
    """Starts an fd-only save of memfd m and SIGKILLs it once when(fstat of the
    output) holds. Returns the output's st_size at the kill, or None if the
    save finished first."""
    buf, direct, _ = t.output(name)
    if "off" in extra:
        direct = None
    fdsets = {1: out_set(buf, direct)}
    argv = save_argv(fdsets, "-o", "/dev/fdset/1", "--ram", "ram0=fd:%d" % m, *extra)
    if VERBOSE:
        print("+ " + " ".join(argv), flush=True)
    p = subprocess.Popen(argv, pass_fds=fds_of(fdsets, m), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    killed_at = None
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline:
        st = os.fstat(buf)
        if when(st):
            p.send_signal(signal.SIGKILL)
            killed_at = st.st_size
            break
        time.sleep(0.001)
    p.wait()
    err = p.stderr.read().decode("utf-8", "replace")
    p.stderr.close()
    if p.returncode == -signal.SIGKILL and killed_at is not None:
        return killed_at
    check(p.returncode == 0, "%s: the save failed: %s" % (what, err))
    return None


def refused(t, name, what, needles, ram=None):
    """snaprestore refuses the file, by fd:N and through an fd set, and --info
    calls it incomplete (or cannot parse it). If it says complete instead (the
    kill came after the completion record) and ram is given, the file must
    verify and restore the memfd ram byte for byte; then None is returned."""
    rd = t.fd(os.open(t.path(name), os.O_RDONLY | os.O_CLOEXEC))
    res = run([SNAPRESTORE, "--info", "--json", "fd:%d" % rd], pass_fds=[rd])
    if res.rc == 0:
        integ = res.json()["integrity"]
        if integ["status"] == "complete" and ram is not None:
            # SIGKILL landed after the completion record: then the file must
            # be whole, every checksum right and every byte restored.
            ok(run([SNAPRESTORE, "--verify", "fd:%d" % rd], pass_fds=[rd]),
               what + ": --verify of a file killed after its completion record")
            d0 = t.memfd("whole")
            ok(run([SNAPRESTORE, "fd:%d" % rd, "--ram", "ram0=fd:%d" % d0],
                   pass_fds=[rd, d0]), what + ": restore of a complete file")
            check(M.read_fd(d0) == M.read_fd(ram),
                  what + ": a file with its completion record restores wrong bytes")
            return None
        check(integ["status"] == "incomplete", "%s: --info says %r" % (what, integ))
    else:
        one_error(res, 1, "snaprestore", "truncated", what=what + ": --info")
    d0 = t.memfd("d0")
    res = run([SNAPRESTORE, "fd:%d" % rd, "--ram", "ram0=fd:%d" % d0], pass_fds=[rd, d0])
    line = one_error(res, 1, "snaprestore", what=what + ": restore")
    check(any(n in line for n in needles), "%s: refused, but not as %s: %s" %
          (what, " or ".join(needles), line))
    check(os.fstat(d0).st_size == 0, "%s: the refused restore touched its destination" % what)
    res = run([SNAPRESTORE, "--verify", "fd:%d" % rd], pass_fds=[rd])
    line = one_error(res, 1, "snaprestore", what=what + ": --verify")
    check(any(n in line for n in needles), "%s: --verify: %s" % (what, line))
    fdsets = {1: in_set(rd, None)}
    res = run(restore_argv(fdsets, "/dev/fdset/1", "--ram", "ram0=fd:%d" % d0),
              pass_fds=fds_of(fdsets, d0))
    line = one_error(res, 1, "snaprestore", what=what + ": restore via a set", notes_ok=True)
    check(any(n in line for n in needles), "%s: via a set: %s" % (what, line))
    return line


def case_killed(t):
    """A save into a descriptor is written in place: when it is killed, what
    is left must never pass for a finished file."""
    size = 512 * MiB
    m = t.memfd("big")
    chunk = bytearray(os.urandom(16 * MiB))
    for i in range(size // len(chunk)):
        chunk[:8] = i.to_bytes(8, "little")
        os.pwrite(m, chunk, i * len(chunk))
    del chunk

    # (a) mid-pages: the stream has no end yet.
    killed = None
    for extra in (["--jobs", "1", "--max-io-size", "64K", "--io", "threads"],
                  ["--jobs", "1", "--max-io-size", "4K", "--io", "threads"]):
        killed = kill_save(t, m, "mid-pages.snap", extra,
                           lambda st: st.st_blocks * 512 >= 48 * MiB, "mid-pages kill")
        if killed is not None:
            break
    if killed is None:
        raise Skip("the save always finished before SIGKILL")
    line = refused(t, "mid-pages.snap", "killed mid-pages", ("incomplete", "truncated"))
    check(line is not None, "mid-pages kill left a complete file")
    note("killed mid-pages: %s" % line)

    # (b) after the whole stream, during the final fdatasync, before the
    # completion record: the stream parses, only the trailer is missing.
    pages_end = MiB + size  # the page region starts at 1 MiB (QEMU's alignment)
    line = None
    for attempt in range(3):
        killed = kill_save(t, m, "no-record.snap", ["--direct", "off", "--jobs", "2"],
                           lambda st: st.st_size > pages_end, "post-stream kill")
        if killed is None:
            continue
        line = refused(t, "no-record.snap", "killed before the completion record",
                       ("incomplete: the save never wrote its completion record",), ram=m)
        if line is not None:
            break
    if line is None:
        note("the kill never landed between the stream and the completion record "
             "(a fast fdatasync?); part (b) checked complete files only")
        return
    check("--force" in line, "the refusal does not mention --force: " + line)
    note("killed before the completion record: %s" % line)
    # --force restores it (what there is of it): the bytes came from the memfd.
    rd = t.fd(os.open(t.path("no-record.snap"), os.O_RDONLY | os.O_CLOEXEC))
    d0 = t.memfd("forced")
    res = run([SNAPRESTORE, "fd:%d" % rd, "--ram", "ram0=fd:%d" % d0, "--force"],
              pass_fds=[rd, d0])
    ok(res, "--force restore of a file without its completion record")


# ---------------------------------------------------------------------- main

CASES = [
    ("inherit", case_inherit),
    ("socket-pair", case_socket_pair),
    ("socket-path", case_socket_path),
    ("socket-failed", case_socket_failed),
    ("socket-source-cut", case_socket_source_cut),
    ("offset-header", case_offset_header),
    ("offset-libvirt", case_offset_libvirt),
    ("offset-stale-tail", case_offset_stale_tail),
    ("errors-fdset", case_errors_fdset),
    ("errors-socket", case_errors_socket),
    ("fd-leaks", case_fd_leaks),
    ("restricted", case_restricted),
    ("strace", case_strace),
    ("killed", case_killed),
]


def in_ctx(fn, root, name):
    t = Ctx(root, name)
    try:
        fn(t)
    finally:
        t.close_all()


def main(argv):
    require_binaries()
    if not hasattr(os, "memfd_create") or not hasattr(socket, "send_fds"):
        print("SKIP: python %s lacks os.memfd_create or socket.send_fds" % sys.version.split()[0])
        return EXIT_SKIP
    if not os.path.isdir(DISK):
        print("SKIP: %s does not exist" % DISK)
        return EXIT_SKIP
    cases = Cases("fdpass", only=argv)
    root = scratch("disk", "fdpass")
    fds_before = _open_fds()
    for name, fn in CASES:
        cases.case(name, in_ctx, fn, root, name)
    # The manager itself: every descriptor it opened is closed again.
    fds_after = _open_fds()
    if fds_after != fds_before:
        cases.case("manager-fds", fail, "descriptors before %r, after %r" % (fds_before,
                                                                             fds_after))
    cases.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
