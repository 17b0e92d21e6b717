#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Damaged files: truncated at many offsets, header and MappedRamHeader fields
# patched (bad magic and versions, misaligned or far-away offsets, be64
# values that overflow), duplicate names. --info and restores must fail with
# exit 1 and one line naming the file (and the block where there is one),
# never crash, and never leave destination files behind.

import os
import shutil
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403

BIG = 0xFFFFFFFFFFFFFFF0
BIG_ALIGNED = 0xFFFFFFFFFFFFF000


class Base:
    pass


def make_base():
    b = Base()
    b.shm = scratch("shm")
    b.disk = scratch("disk")
    # 769 pages: the last bitmap word is partly unused
    b.blocks = [make_block("pc.ram", b.shm, pattern("mixed", 3 * MiB + 4 * KiB, 3)),
                make_block("pc.rom", b.shm, pattern("random", 256 * KiB, 4))]
    b.dev = os.urandom(200 * KiB + 3)
    devf = os.path.join(b.shm, "dev")
    write_bytes(devf, b.dev)
    b.snap = os.path.join(b.disk, "base.snap")
    save_blocks(b.snap, b.blocks, "-d", devf)
    b.info = info_json(b.snap)
    with open(b.snap, "rb") as f:
        b.data = f.read()
    b.size = len(b.data)
    b.work = os.path.join(b.disk, "bad.snap")
    b.dest = os.path.join(b.shm, "dest")
    os.makedirs(b.dest)
    return b


def blk(b, name):
    return next(x for x in b.info["blocks"] if x["name"] == name)


def expect_rejected(b, data, what, needles=(), info_too=True, strict=True):
    """Writes data as the bad file, runs --info, --info --json and a full
    restore: each must exit 1 with one line naming the file and needles."""
    with open(b.work, "wb") as f:
        f.write(data)
    runs = [[b.work, "--all", b.dest, "-d", os.path.join(b.dest, "dev")]]
    if info_too:
        runs += [["--info", b.work], ["--info", "--json", b.work]]
    for args in runs:
        r = snaprestore(*args)
        label = "%s: snaprestore %s" % (what, " ".join(args[:2]))
        if not strict and r.rc == 0:
            continue
        expect_error(r, 1, b.work, *needles, what=label)
        if "--info" in args:
            check(not r.out, "%s printed on stdout: %r" % (label, r.out[:200]))
        left = os.listdir(b.dest)
        check(not left, "%s: left destination files %r" % (label, left))
    os.unlink(b.work)


def patched(b, off, fmt, value):
    d = bytearray(b.data)
    struct.pack_into(fmt, d, off, value)
    return bytes(d)


def sanity(b):
    # the unpatched copy restores, so every rejection below is the patch's doing
    with open(b.work, "wb") as f:
        f.write(b.data)
    ok(snaprestore(b.work, "--all", b.dest), "unpatched copy")
    shutil.rmtree(b.dest)
    os.makedirs(b.dest)
    os.unlink(b.work)


def truncations(b):
    ram, rom = blk(b, "pc.ram"), blk(b, "pc.rom")
    ds = b.info["device-state"]
    cuts = [
        ("empty", 0, ()),
        ("inside the magic", 3, ()),
        ("inside the version", 6, ()),
        ("inside the configuration", 12, ()),
        ("inside the first block name", ram["header-offset"] - 10, ()),
        ("inside pc.ram's MappedRamHeader", ram["header-offset"] + 13, ("pc.ram",)),
        ("inside pc.ram's bitmap", ram["bitmap-offset"] + 4, ("pc.ram",)),
        ("at the start of pc.ram's pages", ram["pages-offset"], ("pc.ram",)),
        ("inside pc.ram's pages", ram["pages-offset"] + 5 * PAGE + 100, ("pc.ram",)),
        ("inside pc.rom's MappedRamHeader", rom["header-offset"] + 4, ("pc.rom",)),
        ("inside pc.rom's pages", rom["pages-offset"] + rom["length"] - 1, ("pc.rom",)),
        ("inside the device-state header", ds["offset"] - 3, ()),
        ("inside the device state", ds["offset"] + ds["size"] // 2, ()),
        ("one byte short of the device state", ds["offset"] + ds["size"] - 1, ()),
        ("before the EOF marker", b.info["eof-offset"], ()),
    ]
    for what, off, needles in cuts:
        check(0 <= off < b.size, "cut %s at %d outside the file" % (what, off))
        expect_rejected(b, b.data[:off], "truncated %s (at %d of %d)" % (what, off, b.size),
                        needles)


def truncate_tail(b):
    # cut after the device state (VM description, completion record): an
    # unfinished file must not restore as if complete; --info may describe
    # it but must not call it complete
    vd = b.info.get("vmdesc")
    if not vd:
        raise Skip("no VM description in the file")
    for off in (vd["offset"] + 1, vd["offset"] + vd["size"] // 2, vd["offset"] + vd["size"],
                b.size - 1):
        what = "truncated in the tail (at %d of %d)" % (off, b.size)
        with open(b.work, "wb") as f:
            f.write(b.data[:off])
        r = snaprestore("--info", "--json", b.work)
        if r.rc == 0:
            st = parse_json(r, what).get("integrity", {}).get("status")
            check(st not in ("complete", None), "%s: --info --json integrity %r" % (what, st))
        else:
            expect_error(r, 1, b.work, what=what + ": --info --json")
        os.unlink(b.work)
        expect_rejected(b, b.data[:off], what, info_too=False)


def headers(b):
    ram, rom = blk(b, "pc.ram"), blk(b, "pc.rom")
    h = ram["header-offset"]
    end_rounded = (b.size + PAGE - 1) // PAGE * PAGE
    ds = b.info["device-state"]
    sec0 = b.info["sections"][0]
    check(sec0["name"] == "ram", "first section is %r" % sec0)
    mem_size_off = sec0["offset"] + 1 + 4 + 1 + 3 + 4 + 4
    check(struct.unpack_from(">Q", b.data, mem_size_off)[0] & ~0xFFF == b.info["ram-total"],
          "MEM_SIZE word not where expected")
    cases = [
        ("bad magic", bytes([b.data[0] ^ 0xFF]) + b.data[1:], ()),
        ("magic QEVN", b"QEVN" + b.data[4:], ()),
        ("version 2", patched(b, 4, ">I", 2), ()),
        ("version 4", patched(b, 4, ">I", 4), ()),
        ("version 0xffffffff", patched(b, 4, ">I", 0xFFFFFFFF), ()),
        ("MappedRamHeader version 2", patched(b, h, ">I", 2), ("pc.ram",)),
        ("MappedRamHeader page size 8192", patched(b, h + 4, ">Q", 8192), ("pc.ram",)),
        ("MappedRamHeader page size 0", patched(b, h + 4, ">Q", 0), ("pc.ram",)),
        ("pages_offset misaligned", patched(b, h + 20, ">Q", ram["pages-offset"] + 1),
         ("pc.ram",)),
        ("pages_offset misaligned by 512", patched(b, h + 20, ">Q", ram["pages-offset"] + 512),
         ("pc.ram",)),
        ("pages_offset past the end", patched(b, h + 20, ">Q", end_rounded + MiB),
         ("pc.ram",)),
        ("pages_offset so the region ends past EOF",
         patched(b, rom["header-offset"] + 20, ">Q", end_rounded), ("pc.rom",)),
        ("pages_offset 0", patched(b, h + 20, ">Q", 0), ("pc.ram",)),
        ("pages_offset 0xfff..f0", patched(b, h + 20, ">Q", BIG), ("pc.ram",)),
        ("pages_offset 0xfff..000", patched(b, h + 20, ">Q", BIG_ALIGNED), ("pc.ram",)),
        ("bitmap_offset past EOF", patched(b, h + 12, ">Q", b.size), ("pc.ram",)),
        ("bitmap_offset half past EOF", patched(b, h + 12, ">Q", b.size - 8), ("pc.ram",)),
        ("bitmap_offset 0xfff..f0", patched(b, h + 12, ">Q", BIG), ("pc.ram",)),
        ("block length 0xfff..f0", patched(b, h - 8, ">Q", BIG), ("pc.ram",)),
        ("block length 0xfff..000", patched(b, h - 8, ">Q", BIG_ALIGNED), ("pc.ram",)),
        ("block length not a page multiple", patched(b, h - 8, ">Q", ram["length"] + 1),
         ("pc.ram",)),
        ("block length one page more", patched(b, h - 8, ">Q", ram["length"] + PAGE), ()),
        ("RAM total 0xfff..000", patched(b, mem_size_off, ">Q", BIG_ALIGNED | 4), ()),
        ("RAM total smaller than the blocks",
         patched(b, mem_size_off, ">Q", (b.info["ram-total"] - PAGE) | 4), ()),
        ("RAM total larger than the blocks",
         patched(b, mem_size_off, ">Q", (b.info["ram-total"] + PAGE) | 4), ()),
        ("device-state length 0xfff..f0", patched(b, ds["offset"] - 8, ">Q", BIG), ()),
        ("device-state length past EOF", patched(b, ds["offset"] - 8, ">Q", b.size), ()),
        ("empty block name", patched(b, h - 8 - 6 - 1, "B", 0), ()),
        ("block name length 255", patched(b, h - 8 - 6 - 1, "B", 255), ()),
        ("duplicate block name",
         b.data[:rom["header-offset"] - 8 - 6] + b"pc.ram" + b.data[rom["header-offset"] - 8:],
         ("pc.ram",)),
        ("bitmap bits past the end of the block",
         patched(b, ram["bitmap-offset"] + ram["bitmap-size"] - 8, "<Q", 0xFFFFFFFFFFFFFFFF),
         ("pc.ram",)),
        ("unknown section type", patched(b, b.info["sections"][1]["offset"], "B", 0x55), ()),
        ("EOF marker replaced", patched(b, b.info["eof-offset"], "B", 0x33), ()),
    ]
    for what, data, needles in cases:
        check(len(data) == b.size, "%s: patch changed the size" % what)
        expect_rejected(b, data, what, needles)


def page_flip(b):
    # a flipped bit in page data: caught by the checksums when the file has them
    st = b.info.get("integrity", {}).get("status")
    if st != "complete":
        raise Skip("the file has no checksums (integrity %r)" % st)
    rom = blk(b, "pc.rom")
    off = rom["pages-offset"] + 3 * PAGE + 77
    d = bytearray(b.data)
    d[off] ^= 0x10
    with open(b.work, "wb") as f:
        f.write(d)
    r = snaprestore(b.work, "--all", b.dest)
    expect_error(r, 1, b.work, "pc.rom", "checksum", what="flipped page byte")
    shutil.rmtree(b.dest)
    os.makedirs(b.dest)
    r = snaprestore(b.work, "--verify")
    check(r.rc == 1, "--verify of a flipped page byte: exit %d\n  %s" % (r.rc, r.describe()))
    check("pc.rom" in r.outs + r.err, "--verify does not name pc.rom\n  %s" % r.describe())
    ok(snaprestore(b.work, "--no-verify", "--ram", "pc.rom=" + os.path.join(b.dest, "rom"),
                   "--skip", "pc.ram"), "--no-verify restore")
    with open(os.path.join(b.dest, "rom"), "rb") as f:
        got = f.read()
    with open(b.blocks[1].src, "rb") as f:
        want = bytearray(f.read())
    want[3 * PAGE + 77] ^= 0x10
    check(got == bytes(want), "--no-verify did not restore the file's bytes as stored")
    shutil.rmtree(b.dest)
    os.makedirs(b.dest)
    os.unlink(b.work)


def sweep(b):
    # every truncation point and a 0xff byte at every offset in the headers
    # (up to the first page region): exit 0 or 1, never a crash, one line
    ram = blk(b, "pc.ram")
    limit = ram["bitmap-offset"] + ram["bitmap-size"] + 8
    tried = 0
    for off in range(0, limit):
        for data in (b.data[:off], b.data[:off] + bytes([b.data[off] ^ 0xFF]) + b.data[off + 1:]):
            with open(b.work, "wb") as f:
                f.write(data)
            r = snaprestore("--info", "--json", b.work)
            tried += 1
            if r.rc == 0:
                parse_json(r, "--info --json on a patched file")
                continue
            expect_error(r, 1, b.work, what="sweep at offset %d (len %d)" % (off, len(data)))
    note("     sweep: %d damaged files" % tried)


def main():
    require_binaries()
    b = make_base()
    t = Cases("corrupt")
    t.case("unpatched copy restores", sanity, b)
    t.case("truncated files", truncations, b)
    t.case("truncated in the tail", truncate_tail, b)
    t.case("corrupt header fields", headers, b)
    t.case("flipped page byte fails the checksum", page_flip, b)
    t.case("sweep of cuts and flipped bytes over the headers", sweep, b)
    t.finish()


if __name__ == "__main__":
    main()
