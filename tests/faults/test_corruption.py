#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Damaged files. Single bit flips in every region of a saved file (page data
# under set and clear bits, bitmaps, block and stream headers, the snapmr
# marker, device state, the trailer table and footer), hostile hand-patched
# files (offsets and lengths that overflow, point outside the file or
# overlap, bitmap bits past the block end, bad names, a MEM_SIZE that
# disagrees, truncation at every byte of the header region) and the golden
# files in tests/data/. Whatever the damage, the tools either fail with exit
# 1 and one line, or succeed and restore exactly the original bytes: never a
# crash, a hang, or wrong data. Flips in data that matters must be caught.

import ctypes
import ctypes.util
import json
import os
import random
import shutil
import struct
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faultlib import *  # noqa: E402,F401,F403

SEED = int(os.environ.get("SNAPMR_CORRUPT_SEED", "4242"))
FLIPS = int(os.environ.get("SNAPMR_CORRUPT_FLIPS", "300"))
FOOTER = 48
TIMEOUT = 60


class Base:
    pass


def info_of(path, *extra):
    r = ok(snaprestore("--info", "--json", path, *extra, timeout=TIMEOUT), "--info --json")
    return json.loads(r.out)


def entry_off(b):
    return b["header-offset"] - 9 - len(b["name"].encode())


def read_bitmap(data, b):
    words = struct.unpack_from("<%dQ" % (b["bitmap-size"] // 8), data, b["bitmap-offset"])
    return [(words[i // 64] >> (i % 64)) & 1 for i in range(b["pages"])]


def make_base():
    """An 8 MiB block of mixed pages, a second block and 64 KiB of device state."""
    b = Base()
    b.shm = scratch("shm")
    b.disk = scratch("disk")
    b.srcs = {"pc.ram": os.path.join(b.shm, "pc.ram"), "pc.rom": os.path.join(b.shm, "pc.rom")}
    write_pattern(b.srcs["pc.ram"], mixed_runs(2048, 21), 21)
    write_pattern(b.srcs["pc.rom"], [("rand", 5), ("hole", 40), ("zero", 3), ("fill", 16)], 22)
    b.dev = os.path.join(b.shm, "dev")
    with open(b.dev, "wb") as f:
        f.write(random.Random(23).randbytes(64 * KiB))
    b.snap = os.path.join(b.disk, "base.snap")
    ok(snapsave("-o", b.snap, "--ram", "pc.ram=" + b.srcs["pc.ram"], "--ram",
                "pc.rom=" + b.srcs["pc.rom"], "-d", b.dev, "--direct", "off"), "base save")
    b.info = info_of(b.snap)
    with open(b.snap, "rb") as f:
        b.data = f.read()
    b.work = os.path.join(b.disk, "work.snap")
    b.dest = os.path.join(b.shm, "dest")
    os.makedirs(b.dest)
    b.bitmaps = {blk["name"]: read_bitmap(b.data, blk) for blk in b.info["blocks"]}
    return b


# ------------------------------------------------------------------ regions

def regions(b):
    """Byte ranges of the file by what they hold: {class: [(lo, hi, block)]}."""
    inf, size = b.info, len(b.data)
    r = {k: [] for k in ("page-set", "page-clear", "bitmap", "block-header", "stream-header",
                         "marker", "padding", "devstate", "tail", "table", "footer")}
    blocks = inf["blocks"]
    r["stream-header"].append((inf["offset"], entry_off(blocks[0]), None))
    for i, blk in enumerate(blocks):
        name = blk["name"]
        r["block-header"].append((entry_off(blk), blk["bitmap-offset"], name))
        bm_end = blk["bitmap-offset"] + blk["bitmap-size"]
        r["bitmap"].append((blk["bitmap-offset"], bm_end, name))
        pad = bm_end
        if i == 0:
            r["marker"].append((bm_end, bm_end + 16, None))
            pad += 16
        r["padding"].append((pad, blk["pages-offset"], None))
        bits = b.bitmaps[name]
        for pg, bit in enumerate(bits):
            lo = blk["pages-offset"] + pg * PAGE
            r["page-set" if bit else "page-clear"].append((lo, lo + PAGE, (name, pg)))
    ds = inf["device-state"]
    tail, tail_end = inf["tail-offset"], inf["stream-end"]
    r["devstate"].append((ds["offset"], ds["offset"] + ds["size"], None))
    r["tail"].append((tail, ds["offset"], None))
    r["tail"].append((ds["offset"] + ds["size"], tail_end, None))
    r["table"].append((inf["integrity"]["table-offset"], size - FOOTER, None))
    r["footer"].append((size - FOOTER, size, None))
    return r


def pick(rng, ranges):
    weights = [hi - lo for lo, hi, _ in ranges]
    lo, hi, tag = rng.choices(ranges, weights=weights)[0]
    return rng.randrange(lo, hi), tag


# ------------------------------------------------------------------ checking

def restore_all(b, path, *extra):
    """Restores both blocks and the device state; returns the result and,
    on success, checks every byte."""
    shutil.rmtree(b.dest)
    os.makedirs(b.dest)
    dests = {n: os.path.join(b.dest, n) for n in b.srcs}
    dd = os.path.join(b.dest, "dev")
    args = [path, "-d", dd] + ["--ram=%s=%s" % (n, p) for n, p in dests.items()] + list(extra)
    r = snaprestore(*args, timeout=TIMEOUT)
    if r.rc == 0:
        for n, p in dests.items():
            compare_files(b.srcs[n], p, "restore of %s reported success" % path)
        compare_files(b.dev, dd, "restore of %s reported success" % path)
    return r


def fails_or_exact(r, what):
    """The invariant: exit 0 (data already compared) or exit 1 with one line."""
    if r.rc == 0:
        return
    one_line_error(r, what)


def verify(path):
    r = snaprestore("--verify", path, timeout=TIMEOUT)
    if r.rc not in (0, 1):
        fail("--verify exited %d\n  %s" % (r.rc, r.describe()))
    if r.rc == 1 and len(error_lines(r)) != 1:
        fail("--verify: expected one line on stderr\n  %s" % r.describe())
    return r


class Flipper:
    """Writes the base file once, then flips and restores single bits in place."""

    def __init__(self, b):
        self.b = b
        shutil.copyfile(b.snap, b.work)
        self.stats = {}

    def flip(self, off, bit):
        fd = os.open(self.b.work, os.O_WRONLY)
        try:
            os.pwrite(fd, bytes([self.b.data[off] ^ (1 << bit)]), off)
        finally:
            os.close(fd)

    def unflip(self, off):
        fd = os.open(self.b.work, os.O_WRONLY)
        try:
            os.pwrite(fd, self.b.data[off:off + 1], off)
        finally:
            os.close(fd)

    def run(self, cls, off, bit, tag):
        b = self.b
        what = "%s flip of bit %d at 0x%x" % (cls, bit, off)
        self.flip(off, bit)
        try:
            v = verify(b.work)
            r = restore_all(b, b.work)
            fails_or_exact(r, what + ": restore")
            expect_for_class(cls, what, off, tag, v, r, b)
        finally:
            self.unflip(off)
        st = self.stats.setdefault(cls, {"flips": 0, "verify-caught": 0, "restore-refused": 0})
        st["flips"] += 1
        st["verify-caught"] += v.rc == 1
        st["restore-refused"] += r.rc == 1


def expect_for_class(cls, what, off, tag, v, r, b):
    if cls == "page-set":
        name, pg = tag
        check(v.rc == 1, "%s: --verify missed damaged page %d of %s\n  %s" % (
            what, pg, name, v.describe()))
        hit = False
        for line in v.out.decode().splitlines():
            if "block '%s': pages " % name in line and "checksum mismatch" in line:
                a, z = line.split("pages ")[1].split(" ")[0].split("-")
                hit = hit or int(a) <= pg <= int(z)
        check(hit, "%s: --verify does not name block %s pages around %d\n  %s" % (
            what, name, pg, v.describe()))
        check("fail their checksums" in v.err, "%s: --verify summary\n  %s" % (
            what, v.describe()))
        check(r.rc == 1 and "checksum mismatch in pages" in r.err and name in r.err,
              "%s: restore did not refuse the damaged page\n  %s" % (what, r.describe()))
    elif cls in ("page-clear", "padding", "marker"):
        # Not data: a page under a clear bit reads as zeros whatever the file holds.
        check(v.rc == 0, "%s: --verify reports harmless damage\n  %s" % (what, v.describe()))
        check(r.rc == 0, "%s: restore refused harmless damage\n  %s" % (what, r.describe()))
    elif cls in ("bitmap", "devstate", "table"):
        check(v.rc == 1, "%s: --verify missed it\n  %s" % (what, v.describe()))
        check(r.rc == 1, "%s: restore did not refuse it\n  %s" % (what, r.describe()))
        if cls == "table":
            check("checksum table" in r.err, "%s: not reported as the checksum table\n  %s" % (
                what, r.describe()))
    elif cls == "footer":
        check(v.rc == 1 and r.rc == 1, "%s: accepted\n  %s\n  %s" % (
            what, v.describe(), r.describe()))
        check("checksum table" in r.err or "incomplete" in r.err,
              "%s: not reported as a damaged table or an incomplete file\n  %s" % (
                  what, r.describe()))
    # block-header, stream-header, tail: refused, or exact data (checked already)


def random_flips(b):
    regs = regions(b)
    rng = random.Random(SEED)
    quota = {"page-set": 0.2, "page-clear": 0.12, "bitmap": 0.1, "block-header": 0.12,
             "stream-header": 0.08, "marker": 0.03, "padding": 0.03, "devstate": 0.08,
             "tail": 0.08, "table": 0.08, "footer": 0.08}
    fl = Flipper(b)
    for cls, share in quota.items():
        for _ in range(max(2, round(FLIPS * share))):
            off, tag = pick(rng, regs[cls])
            fl.run(cls, off, rng.randrange(8), tag)
    for cls, st in sorted(fl.stats.items()):
        note("     %-14s %3d flips: --verify caught %3d, restore refused %3d" % (
            cls, st["flips"], st["verify-caught"], st["restore-refused"]))


def targeted_flips(b):
    """Every bit of the first MappedRamHeader and of the footer; one bit of
    each bitmap word; both directions of a bitmap bit; the COMPLETE flag."""
    regs = regions(b)
    fl = Flipper(b)
    blk = b.info["blocks"][0]
    for off in range(blk["header-offset"], blk["header-offset"] + 28):
        for bit in range(8):
            fl.run("block-header", off, bit, None)
    size = len(b.data)
    for off in range(size - FOOTER, size):
        fl.run("footer", off, b.data[off] % 8, None)
    fl.run("footer", size - FOOTER + 15, 0, None)  # COMPLETE
    for blk in b.info["blocks"]:
        bits = b.bitmaps[blk["name"]]
        set_pg = bits.index(1)
        clear_pg = bits.index(0)
        for pg in (set_pg, clear_pg):
            fl.run("bitmap", blk["bitmap-offset"] + pg // 8, pg % 8, None)
        # the last word's unused bits: pages past the end of the block
        if blk["pages"] % 64:
            pg = blk["pages"]
            fl.run("bitmap", blk["bitmap-offset"] + pg // 8, pg % 8, None)
    # first and last byte of the device state and of a set page
    ds = b.info["device-state"]
    fl.run("devstate", ds["offset"], 0, None)
    fl.run("devstate", ds["offset"] + ds["size"] - 1, 7, None)
    lo, hi, tag = regs["page-set"][0]
    fl.run("page-set", lo, 0, tag)
    fl.run("page-set", hi - 1, 7, tag)
    lo, hi, tag = regs["page-clear"][-1]
    fl.run("page-clear", hi - 1, 7, tag)
    note("     %d targeted flips" % sum(st["flips"] for st in fl.stats.values()))


# ------------------------------------------------------------------ hostile

class Small:
    pass


def make_small():
    """A small save and its QEMU-shaped twin (no trailer, no marker): the
    twin has only the structural checks to stop bad values."""
    s = Small()
    s.shm = scratch("shm")
    s.disk = scratch("disk")
    s.ram = os.path.join(s.shm, "ram")
    s.rom = os.path.join(s.shm, "rom")
    write_pattern(s.ram, [("rand", 3), ("hole", 2), ("fill", 4), ("zero", 1), ("rand", 6)], 31)
    write_pattern(s.rom, [("edge", 2)], 32)  # 2 pages: 62 unused bits in the bitmap word
    s.snap = os.path.join(s.disk, "small.snap")
    dev = os.path.join(s.shm, "dev")
    with open(dev, "wb") as f:
        f.write(b"device state " * 80)
    ok(snapsave("-o", s.snap, "--ram", "pc.ram=" + s.ram, "--ram", "pc.rom=" + s.rom, "-d", dev,
                "--direct", "off"), "small save")
    s.info = info_of(s.snap)
    with open(s.snap, "rb") as f:
        s.data = f.read()
    q = bytearray(s.data[:s.info["stream-end"]])
    blk = s.info["blocks"][0]
    m = blk["bitmap-offset"] + blk["bitmap-size"]
    assert q[m:m + 16] == b"SNAPMR-TRAILER-1"
    q[m:m + 16] = bytes(16)
    s.qemu = bytes(q)
    s.work = os.path.join(s.disk, "hostile.img")
    s.outdir = os.path.join(s.disk, "out")
    s.alldir = os.path.join(s.outdir, "all")
    return s


def tool_runs(s, path, force=True):
    """Every mode of snaprestore over path."""
    shutil.rmtree(s.outdir, ignore_errors=True)
    os.makedirs(s.alldir)
    runs = [["--info", path], ["--info", "--json", path], ["--verify", path],
            [path, "--all", s.alldir, "-d", os.path.join(s.outdir, "dev")]]
    if force:
        runs.append([path, "--all", s.alldir, "--force", "-d", os.path.join(s.outdir, "dev")])
    return [(a, snaprestore(*a, timeout=TIMEOUT)) for a in runs]


def hostile(s, what, data, must_fail=True, needle=None):
    """No crash or hang in any mode; with must_fail every mode exits 1 with
    one line (naming needle), else 0 or 1. Nothing is created outside
    the --all directory."""
    with open(s.work, "wb") as f:
        f.write(data)
    for args, r in tool_runs(s, s.work):
        label = "%s: snaprestore %s" % (what, " ".join(args[:2]))
        check(r.rc in (0, 1), "%s: exit %d\n  %s" % (label, r.rc, r.describe()))
        if r.rc == 1:
            one_line_error(r, label)
        if must_fail:
            check(r.rc == 1, "%s: accepted\n  %s" % (label, r.describe()))
            if needle:
                check(needle in r.err, "%s: does not say %r\n  %s" % (label, needle,
                                                                      r.describe()))
        check(sorted(os.listdir(s.outdir)) in (["all"], ["all", "dev"]),
              "%s: files outside the --all directory: %s" % (label, os.listdir(s.outdir)))


def patch(data, off, fmt, *vals):
    d = bytearray(data)
    struct.pack_into(fmt, d, off, *vals)
    return bytes(d)


def hostile_offsets(s):
    q = s.qemu
    b0, b1 = s.info["blocks"]
    h0, h1 = b0["header-offset"], b1["header-offset"]
    size = len(q)
    top = 0xFFFFFFFFFFFFF000
    cases = [
        ("pages_offset near 2^64", patch(q, h0 + 20, ">Q", top), "past the end"),
        ("bitmap_offset near 2^64", patch(q, h0 + 12, ">Q", 0xFFFFFFFFFFFFFFF8), "bitmap"),
        ("bitmap_offset 2^64-1", patch(q, h1 + 12, ">Q", 0xFFFFFFFFFFFFFFFF), "bitmap"),
        ("pages_offset past the file", patch(q, h0 + 20, ">Q", (size + 2 * MiB) & ~4095),
         "past the end"),
        ("bitmap_offset at the file end", patch(q, h1 + 12, ">Q", size), "bitmap"),
        ("block length 2^64-4096", patch(q, h0 - 8, ">Q", top), None),
        ("block length past the file", patch(q, h1 - 8, ">Q", 64 * MiB), None),
        ("pages_offset unaligned", patch(q, h0 + 20, ">Q", b0["pages-offset"] + 8), None),
        ("pages_offset before the header", patch(q, h0 + 20, ">Q", 0), None),
        ("page size 2^64-1", patch(q, h0 + 4, ">Q", 0xFFFFFFFFFFFFFFFF), None),
        ("header version 2^32-1", patch(q, h0, ">I", 0xFFFFFFFF), None),
        ("second pages_offset inside the first region",
         patch(q, h1 + 20, ">Q", b0["pages-offset"]), None),
    ]
    for what, data, needle in cases:
        hostile(s, what, data, True, needle)
    # Overlaps the layout allows structurally: bitmaps read from other
    # records. No crash; the trailer-less file may then restore garbage,
    # which is all a file without checksums can promise.
    hostile(s, "bitmap inside its own page region", patch(q, h0 + 12, ">Q", b0["pages-offset"]),
            False)
    hostile(s, "bitmap over its own header", patch(q, h0 + 12, ">Q", h0), False)
    hostile(s, "both bitmaps at one place", patch(q, h1 + 12, ">Q", b0["bitmap-offset"]), False)
    # The same values in a file with a trailer: its table disagrees, so refused.
    full = s.data
    hostile(s, "trailer file, bitmap over its header", patch(full, h0 + 12, ">Q", h0), True)
    hostile(s, "trailer file, second bitmap = first",
            patch(full, h1 + 12, ">Q", b0["bitmap-offset"]), True)


def hostile_bitmap_and_size(s):
    q = s.qemu
    b0, b1 = s.info["blocks"]
    for bit in (b1["pages"], 63):
        d = bytearray(q)
        d[b1["bitmap-offset"] + bit // 8] |= 1 << (bit % 8)
        hostile(s, "bitmap bit %d of a %d-page block" % (bit, b1["pages"]), bytes(d), True,
                "past the end")
    d = bytearray(s.data)  # and under a trailer
    d[b1["bitmap-offset"] + 7] |= 0x80
    hostile(s, "trailer file, bitmap bit 63", bytes(d), True)
    ms = entry_off(b0) - 8
    total = s.info["ram-total"]
    for what, v in (("MEM_SIZE one page more", total + PAGE), ("MEM_SIZE one page less",
                                                                total - PAGE),
                    ("MEM_SIZE 0", 0), ("MEM_SIZE near 2^64", 0xFFFFFFFFFFFFF000)):
        hostile(s, what, patch(q, ms, ">Q", v | 4), True)
        hostile(s, "trailer file, " + what, patch(s.data, ms, ">Q", v | 4), True)


def hostile_names(s):
    q = s.qemu
    b0 = s.info["blocks"][0]
    e0 = entry_off(b0)
    n = len(b0["name"])
    d = bytearray(q)
    d[e0] = 0
    hostile(s, "empty block name", bytes(d), True)
    d = bytearray(q)
    d[e0] = 255  # the name swallows the length and header after it
    hostile(s, "name length 255 over a short name", bytes(d), True)
    d = bytearray(q)
    d[e0 + 1] = 0x0A
    hostile(s, "newline in a block name", bytes(d), True)
    d = bytearray(q)
    d[e0 + 1:e0 + 1 + n] = b"pc.rom"[:n].ljust(n, b"m")
    hostile(s, "two blocks named alike", bytes(d), True)
    # Names with '/' and dots, saved for real, restored with --all
    shm = scratch("shm")
    src = os.path.join(shm, "p")
    write_pattern(src, [("rand", 1)], 33)
    names = ["../escape", "..", ".", "/abs/path", "a/b/../../c", ".hidden", "%2F", "x" * 255,
             "/" * 200]
    args = []
    for nm in names:
        args += ["--ram", "%s=%s" % (nm, src)]
    snap = os.path.join(s.disk, "names.snap")
    ok(snapsave("-o", snap, "--direct", "off", *args), "save with hostile names")
    parent = os.path.join(s.disk, "names-parent")
    alldir = os.path.join(parent, "all")
    os.makedirs(alldir)
    before = set(os.listdir(s.disk))
    r = snaprestore(snap, "--all", alldir, timeout=TIMEOUT)
    check(os.listdir(parent) == ["all"], "--all wrote outside its directory: %s" %
          os.listdir(parent))
    check(set(os.listdir(s.disk)) == before, "--all wrote next to its parent")
    check(not os.path.exists("/abs/path") and not os.path.exists(os.path.join(s.disk,
                                                                               "escape")),
          "--all followed a name out of its directory")
    # A 200-slash name encodes to 600 bytes, past NAME_MAX: the restore may
    # fail for that, with one line (or shorten the name); every other block
    # lands inside DIR, one file each.
    want = len(names)
    if r.rc != 0:
        one_line_error(r, "--all with hostile names", "/" * 200)
        shutil.rmtree(alldir)
        os.makedirs(alldir)
        r = snaprestore(snap, "--all", alldir, "--skip", "/" * 200, timeout=TIMEOUT)
        want -= 1
    ok(r, "--all with hostile names")
    got = sorted(os.listdir(alldir))
    check(len(got) == want, "--all made %d files for %d blocks: %s" % (len(got), want, got))
    for g in got:
        check("/" not in g and g not in (".", "..") and not g.startswith("."),
              "--all made a file named %r" % g)
        compare_files(src, os.path.join(alldir, g), "--all %s" % g)


def hostile_truncation(s):
    """Cut at every byte of the header region and of the tail, and across
    the trailer: every cut file is refused (--info may describe a file that
    lost only its trailer; restoring it must still fail)."""
    b0, b1 = s.info["blocks"]
    end = s.info["stream-end"]
    eof = s.info["eof-offset"]
    cuts = set(range(0, 4097))
    cuts |= set(range(entry_off(b1), b1["bitmap-offset"] + b1["bitmap-size"] + 17))
    cuts |= set(range(s.info["tail-offset"], end + 1))
    cuts |= set(range(end, len(s.data), 7)) | {len(s.data) - 1}
    pages = [(b["pages-offset"], b["pages-offset"] + b["length"]) for b in s.info["blocks"]]
    rng = random.Random(SEED)
    for lo, hi in pages:
        cuts |= {lo, lo + 1, hi - 1} | {rng.randrange(lo, hi) for _ in range(8)}
    n = 0
    # Past the first block's marker the first 4 KiB are padding: the
    # trailer file is cut there at every 16th byte, its twin at every byte.
    head_end = b0["bitmap-offset"] + b0["bitmap-size"] + 32
    for cut in sorted(cuts):
        for label, full in (("trailer", s.data), ("qemu", s.qemu)):
            if cut >= len(full) or (label == "trailer" and head_end < cut < 4096 and cut % 16):
                continue
            with open(s.work, "wb") as f:
                f.write(full[:cut])
            what = "%s file cut at %d of %d" % (label, cut, len(full))
            r = snaprestore("--info", s.work, timeout=TIMEOUT)
            # Cut right after EOF: a whole stream without its (optional) VM
            # description, which QEMU loads too; only the trailer can tell.
            whole = cut >= end or cut == eof + 1
            if not whole:
                one_line_error(r, what + ": --info")
            else:
                check(r.rc in (0, 1), "%s: --info exit %d" % (what, r.rc))
            # Restoring reads the whole structure; a sample keeps this quick.
            if cut % 16 == 0 or cut >= end - 64 or cut < 256:
                shutil.rmtree(s.outdir, ignore_errors=True)
                os.makedirs(s.alldir)
                r = snaprestore(s.work, "--all", s.alldir, timeout=TIMEOUT)
                if whole and label == "qemu":
                    check(r.rc in (0, 1), "%s: restore exit %d" % (what, r.rc))
                    continue
                one_line_error(r, what + ": restore")
                if whole:
                    check("incomplete" in r.err, "%s: not refused as incomplete\n  %s" % (
                        what, r.describe()))
            n += 1
    note("     %d cut files" % n)


def xxh3_fn():
    """XXH3-64 through the system libxxhash (the tools link it), or Skip."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("xxhash") or "libxxhash.so.0")
    except OSError as e:
        raise Skip("libxxhash not loadable: %s" % e)
    lib.XXH3_64bits.restype = ctypes.c_uint64
    lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return lambda b: lib.XXH3_64bits(bytes(b), len(b))


def hostile_many_blocks(s):
    """65535 blocks (the reader's limit) with a valid trailer listing them
    in reverse: name checks and trailer lookups must not be quadratic
    (they once took 18 s each)."""
    h = xxh3_fn()
    b0 = s.info["blocks"][0]
    e0 = entry_off(b0)
    head = bytearray(s.qemu[:e0])
    struct.pack_into(">Q", head, e0 - 8, PAGE | 4)  # MEM_SIZE: the last block only
    ram_id = next(x["id"] for x in s.info["sections"] if x.get("name") == "ram")
    n = 65535
    path = os.path.join(s.disk, "many.img")
    recs = []
    with open(path, "wb") as f:
        f.write(head)
        off = e0
        for i in range(n):
            name = b"%05d" % i
            length = PAGE if i == n - 1 else 0
            bm = off + 1 + len(name) + 8 + 28
            pages = (bm + 8 + PAGE - 1) // PAGE * PAGE
            f.seek(off)
            f.write(bytes([len(name)]) + name + struct.pack(">QIQQQ", length, 1, PAGE, bm, pages))
            bitmap = bytes(8) if length else b""
            f.write(bitmap)
            sums = struct.pack(">Q", h(bytes(PAGE))) if length else b""
            recs.append(bytes([len(name)]) + name +
                        struct.pack(">QQQQQ", length, bm, pages, h(bitmap), len(sums) // 8) + sums)
            off = pages + length
        tail = struct.pack(">QBIB", 0x10, 0x7E, ram_id, 0)  # EOS, footer, EOF
        f.seek(off)
        f.write(tail)
        end = off + len(tail)
        tab = struct.pack(">QQIIQQQ", 0, end, 65536, n, 0, 0, h(b"")) + b"".join(reversed(recs))
        foot = b"SNAPMRT1" + struct.pack(">IIQQQ", 1, 1, end, len(tab), h(tab))
        f.write(tab + foot + struct.pack(">Q", h(foot)))
    for args, rc in ((["--info", path], 0), (["--verify", path], 0),
                     ([path, "--all", s.alldir], 1)):
        r = snaprestore(*args, timeout=TIMEOUT)
        check(r.rc == rc, "%s: exit %d, expected %d\n  %s" % (" ".join(args[:1]), r.rc, rc,
                                                              r.describe()))
        check(r.seconds < 15, "%s took %.1fs on %d blocks" % (" ".join(args[:1]), r.seconds, n))
    # the same blocks with one name given twice
    with open(path, "r+b") as f:
        f.seek(e0 + 1)
        f.write(b"%05d" % (n - 2))
    r = snaprestore("--info", path, timeout=TIMEOUT)
    one_line_error(r, "65535 blocks, one name twice", "listed twice")
    check(r.seconds < 15, "--info took %.1fs on %d blocks" % (r.seconds, n))
    os.unlink(path)


# ------------------------------------------------------------------ golden

GOLDEN = {
    # file: (--verify exit, restore exit, text the restore error must hold)
    "one-page.snap": (0, 0, None),
    "two-blocks-devstate.snap": (0, 0, None),
    "odd-names.snap": (0, 0, None),
    "all-holes.snap": (0, 0, None),
    "libvirt.snap": (0, 0, None),
    "raw-tail.snap": (0, 0, None),
    "qemu-like.img": (1, 0, None),
    "bad-page.snap": (1, 1, "checksum mismatch in pages 0-8"),
    "bad-bitmap.snap": (1, 1, "bitmap at offset 0x8b fails its checksum"),
    "bad-devstate.snap": (1, 1, "device state at offset"),
    "bad-table.snap": (1, 1, "checksum table"),
    "bad-footer.snap": (1, 1, "checksum table"),
    "incomplete.snap": (1, 1, "incomplete"),
    "torn-footer.snap": (1, 1, "incomplete"),
    "bitmap-tail.img": (1, 1, "bitmap marks pages past the end of the block"),
    "mem-size.img": (1, 1, "offset 0x"),
    "pages-overflow.img": (1, 1, "extends past the end"),
}


def golden():
    if not os.path.isdir(DATA):
        raise Skip("no %s" % DATA)
    d = scratch("shm")
    for name, (vrc, rrc, needle) in sorted(GOLDEN.items()):
        path = os.path.join(DATA, name)
        check(os.path.exists(path), "missing golden file %s" % path)
        check(os.path.getsize(path) < 64 * KiB, "%s is 64 KiB or more" % name)
        v = snaprestore("--verify", path, timeout=TIMEOUT)
        check(v.rc == vrc, "%s: --verify exit %d, expected %d\n  %s" % (name, v.rc, vrc,
                                                                        v.describe()))
        dest = os.path.join(d, name)
        os.makedirs(dest)
        raw = name in ("raw-tail.snap", "qemu-like.img")
        r = snaprestore(path, "--all", dest, "--device-state-raw" if raw else "-d",
                        os.path.join(dest, "devstate"), timeout=TIMEOUT)
        check(r.rc == rrc, "%s: restore exit %d, expected %d\n  %s" % (name, r.rc, rrc,
                                                                       r.describe()))
        if rrc:
            one_line_error(r, name, needle)


def main():
    require_tools()
    cases = Cases("corruption")
    cases.case("golden files", golden)
    try:
        b = make_base()
    except (Failure, Skip) as e:
        print("FAIL: cannot make the base file: %s" % e)
        sys.exit(1)
    cases.case("%d random bit flips" % FLIPS, random_flips, b)
    cases.case("targeted bit flips", targeted_flips, b)
    s = make_small()
    cases.case("hostile offsets and lengths", hostile_offsets, s)
    cases.case("hostile bitmaps and MEM_SIZE", hostile_bitmap_and_size, s)
    cases.case("hostile names", hostile_names, s)
    cases.case("truncation", hostile_truncation, s)
    cases.case("65535 blocks", hostile_many_blocks, s)
    cases.finish()


if __name__ == "__main__":
    main()
