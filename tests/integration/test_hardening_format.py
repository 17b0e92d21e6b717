#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Hardening of the format side (issue 12): lengths a file claims size no
# memory before they are checked (--info of a sparse file claiming terabytes
# runs in small constant memory); a save refuses a raw tail it could not read
# back and leaves no file; a snapsave file always carries its marker, whatever
# the padding after its first bitmap; bytes appended after a complete file are
# named as such, and the file still restores and verifies.

import os
import resource
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403

TiB = 1 << 40
MARKER = b"SNAPMR-TRAILER-1"
MEM_LIMIT = 64 * MiB  # peak resident memory allowed for --info of a huge claim
# Under ASan the shadow memory alone takes more; what matters is that the
# claim's bitmap (256 MiB for 8 TiB, twice that in the old reader) is not.
ASAN_MEM_LIMIT = 160 * MiB


def be32(v):
    return struct.pack(">I", v)


def be64(v):
    return struct.pack(">Q", v)


def str8(s):
    s = s.encode()
    return bytes([len(s)]) + s


def huge_claim(path, length, name="pc.ram", after=b""):
    """A sparse mapped-ram file whose one block claims `length` bytes: a few
    KiB on disk, its bitmap (length / 32768 bytes) and page region holes.
    `after` replaces the EOF byte that ends the stream."""
    m = b"pc-q35-10.0"
    b = b"QEVM" + be32(3) + b"\x07" + be32(len(m)) + m
    b += b"\x05" + str8("configuration/capabilities") + be32(1) + be32(1) + str8("mapped-ram")
    b += b"\x01" + be32(2) + str8("ram") + be32(0) + be32(4) + be64(length | 4)
    b += str8(name) + be64(length)
    pages_off = 1 * MiB
    b += be32(1) + be64(PAGE) + be64(len(b) + 28) + be64(pages_off)
    b += b"\xff"  # pages 0..7 present
    with open(path, "wb") as f:
        f.write(b)
        f.seek(pages_off + length)
        f.write(be64(0x10) + b"\x7e" + be32(2) + (after or b"\x00"))


def sanitized(binary):
    """Built with AddressSanitizer? Its shadow memory rules out address-space limits."""
    r = subprocess.run(["nm", "-D", binary], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, check=False)
    return b"__asan_init" in r.stdout


def bounded_snaprestore(*args):
    """snaprestore with its peak resident memory measured (wait4's rusage,
    so no other child counts): fails the test if the run exceeds the limit.
    Without ASan the address space is capped too, so a reader that commits
    memory for a claim fails at once instead of taking the machine's."""
    asan = sanitized(SNAPRESTORE)
    limit = ASAN_MEM_LIMIT if asan else MEM_LIMIT

    def cap():
        if not asan:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        p = subprocess.Popen([SNAPRESTORE] + list(args), stdout=out, stderr=err,
                             preexec_fn=cap)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        r = Result([SNAPRESTORE] + list(args), p.returncode, out.read(),
                   err.read().decode("utf-8", "replace"), time.monotonic() - t0)
    peak = usage.ru_maxrss * 1024
    check(peak <= limit, "%s: peak resident memory %d MiB, over %d MiB" % (
        " ".join(args), peak >> 20, limit >> 20))
    return r


def info_memory(d):
    """--info of an 8 KiB sparse file claiming an 8 TiB block (a 256 MiB
    bitmap) runs in a 64 MiB address space: the old reader allocated and
    touched twice the bitmap, doubling with each doubling of the claim."""
    for tib in (4, 8):
        path = os.path.join(d, "huge%d.snap" % tib)
        try:
            huge_claim(path, tib * TiB)
        except OSError as e:
            raise Skip("cannot make a %d TiB sparse file here: %s" % (tib, e))
        check(allocated(path) < 1 * MiB, "the huge file is not sparse")
        r = ok(bounded_snaprestore("--info", "--json", path),
               "--info of a %d TiB claim in bounded memory" % tib)
        b = parse_json(r, "--info --json")["blocks"][0]
        check(b["length"] == tib * TiB and b["pages-present"] == 8, "--info counts: %r" % b)
        ok(bounded_snaprestore("--info", path), "text --info")
        os.unlink(path)


def vmdesc_memory(d):
    """A QEMU-shaped file whose device section must be sized from a large VM
    description of bare numbers (14 MiB: it must start in the last 16 MiB);
    json-c would take ~500 MiB for it."""
    path = os.path.join(d, "vmdesc.snap")
    json_text = b'{"devices": [], "x": [' + b"0," * (7 << 20) + b'0]}'
    after = (b"\x04" + be32(0) + str8("timer") + be32(0) + be32(2) + b"\x7e" + be32(0)
             + b"\x00" + b"\x06" + be32(len(json_text)) + json_text)
    huge_claim(path, 1 * MiB, after=after)
    r = bounded_snaprestore("--info", path)
    expect_error(r, 1, "section 'timer'", "too many values", what="huge VM description")


def good_tail(d, src):
    """A valid raw tail: the one snaprestore takes out of a snapsave file."""
    snap = os.path.join(d, "plain.snap")
    ds = os.path.join(d, "ds.bin")
    write_bytes(ds, os.urandom(3000))
    ok(snapsave("-o", snap, "--ram", "pc.ram=" + src, "-d", ds), "plain save")
    tail = os.path.join(d, "tail.bin")
    ok(snaprestore(snap, "--skip", "pc.ram", "--device-state-raw", tail), "take the tail")
    with open(tail, "rb") as f:
        return f.read()


def raw_tail_refused(d, src):
    tail = good_tail(d, src)
    out_dir = scratch("disk")
    out = os.path.join(out_dir, "out.snap")
    tpath = os.path.join(d, "t.bin")
    # The good tail still saves, and reads back.
    write_bytes(tpath, tail)
    ok(snapsave("-o", out, "--ram", "pc.ram=" + src, "--device-state-raw", tpath),
       "save with a valid raw tail")
    ok(snaprestore("--verify", out), "verify the raw-tail save")
    os.unlink(out)
    cases = [
        ("truncated in the VM description", tail[:-7]),
        ("truncated before EOF", tail[:len(tail) // 2]),
        ("garbage after the head", tail[:13] + bytes(range(0x40, 0x80)) * 4),
        ("bytes after the stream", tail + b"\x00junk"),
        ("a bad section footer", tail[:13] + bytes([0x42]) + tail[14:]),
    ]
    for what, data in cases:
        write_bytes(tpath, data)
        r = snapsave("-o", out, "--ram", "pc.ram=" + src, "--device-state-raw", tpath)
        expect_error(r, 1, "raw device-state tail", "offset 0x", what=what)
        check(os.listdir(out_dir) == [], "%s: files left: %r" % (what, os.listdir(out_dir)))
    # Into an existing file: refused before it is touched.
    write_bytes(out, b"old content")
    write_bytes(tpath, tail[:-1])
    r = snapsave("-o", out, "--ram", "pc.ram=" + src, "--device-state-raw", tpath)
    expect_error(r, 1, "raw device-state tail", what="existing output")
    with open(out, "rb") as f:
        check(f.read() == b"old content", "a refused save changed the existing file")


def marker_always(d, src):
    """--offset N puts the first bitmap's end 8 bytes before a 1 MiB boundary:
    QEMU's layout leaves 8 bytes of padding, too few for the marker."""
    probe = os.path.join(d, "probe.snap")
    ok(snapsave("-o", probe, "--ram", "pc.ram=" + src), "probe save")
    b0 = info_json(probe)["blocks"][0]
    bitmap_end = b0["bitmap-offset"] + b0["bitmap-size"]
    offset = MiB - bitmap_end - 8
    out = os.path.join(d, "offset.snap")
    write_bytes(out, b"P" * offset)
    ok(snapsave("-o", out, "--offset", offset, "--ram", "pc.ram=" + src), "offset save")
    info = info_json(out, "--offset", str(offset))
    b = info["blocks"][0]
    end = b["bitmap-offset"] + b["bitmap-size"]
    check(end == offset + bitmap_end, "layout moved: %r" % b)
    check(b["pages-offset"] - end >= len(MARKER),
          "only %d bytes of padding after the bitmap" % (b["pages-offset"] - end))
    with open(out, "rb") as f:
        f.seek(end)
        check(f.read(len(MARKER)) == MARKER, "no marker after the first bitmap")
    ok(snaprestore("--verify", "--offset", offset, out), "verify")
    # Without its trailer the file is an unfinished snapsave file, not a QEMU file.
    os.truncate(out, info["stream-end"])
    i2 = info_json(out, "--offset", str(offset))
    check(i2["integrity"]["status"] == "incomplete",
          "trailer cut: integrity %r" % i2["integrity"])
    dest = os.path.join(d, "dest.ram")
    r = snaprestore(out, "--offset", offset, "--ram", "pc.ram=" + dest)
    expect_error(r, 1, "incomplete", what="restore without the trailer")


def appended(d, src):
    snap = os.path.join(d, "app.snap")
    ok(snapsave("-o", snap, "--ram", "pc.ram=" + src), "save")
    size = os.path.getsize(snap)
    with open(snap, "ab") as f:
        f.write(b"\x00" * 100 + b"appended by a careless copy" + b"\xff" * 873)
    extra = os.path.getsize(snap) - size
    want = "%d bytes after the completion record at offset %#x" % (extra, size - 48)
    r = ok(snaprestore("--info", snap), "--info")
    check(want in r.outs, "--info does not say %r:\n%s" % (want, r.outs))
    check("INCOMPLETE" not in r.outs, "--info calls it incomplete:\n%s" % r.outs)
    info = info_json(snap)
    check(info["integrity"]["status"] == "complete" and info["integrity"]["appended"] == extra,
          "json integrity %r" % info["integrity"])
    v = ok(snaprestore("--verify", snap), "--verify")
    check(want in v.err, "--verify does not report it: %r" % v.err)
    dest = os.path.join(d, "app.ram")
    r = ok(snaprestore(snap, "--ram", "pc.ram=" + dest), "restore")
    check(want in r.err, "restore does not note it: %r" % r.err)
    compare_files(src, dest, "restored RAM")


def readback(d, src):
    """The save reads its file back before reporting success: a read of the
    output that fails (failshim, the first pread of the temporary file) fails
    the save, and the path is left as it was."""
    shim = os.environ.get("FAILSHIM") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(SNAPSAVE))), "tests", "faults",
        "failshim.so")
    if not os.path.exists(shim):
        raise Skip("no %s (set FAILSHIM)" % shim)
    out_dir = scratch("disk")
    out = os.path.join(out_dir, "rb.snap")
    env = dict(os.environ, LD_PRELOAD=shim, FAILSHIM_OP="pread", FAILSHIM_NTH="1",
               FAILSHIM_ERRNO="EIO", FAILSHIM_PATH_SUBSTR=".snapmr-")
    r = snapsave("-o", out, "--ram", "pc.ram=" + src, env=env)
    expect_error(r, 1, "does not read back", "offset 0x", what="read-back fault")
    check(os.listdir(out_dir) == [], "files left: %r" % os.listdir(out_dir))
    # Reads after the trailer's three: the stream's header, then its bitmap.
    for nth in ("4", "5"):
        env["FAILSHIM_NTH"] = nth
        r = snapsave("-o", out, "--ram", "pc.ram=" + src, env=env)
        expect_error(r, 1, "does not read back", what="read-back fault %s" % nth)
    check(os.listdir(out_dir) == [], "files left: %r" % os.listdir(out_dir))
    ok(snapsave("-o", out, "--ram", "pc.ram=" + src), "save without the shim")


def main():
    require_binaries()
    d = scratch("disk")
    src = os.path.join(d, "src.ram")
    pattern("mixed", 2 * MiB, 12).write(src)
    t = Cases("hardening-format")
    t.case("--info of a sparse 8 TiB claim runs in constant memory", info_memory, d)
    t.case("a huge VM description is refused in bounded memory", vmdesc_memory, d)
    t.case("a raw tail the reader refuses is refused before writing", raw_tail_refused, d, src)
    t.case("the marker is written whatever the padding", marker_always, d, src)
    t.case("bytes after the completion record", appended, d, src)
    t.case("a save reads its file back before it succeeds", readback, d, src)
    t.finish()


if __name__ == "__main__":
    main()
