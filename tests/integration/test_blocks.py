#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Many blocks in one file: per-block restores, --all DIR with percent-encoded
# names that must stay inside DIR, --skip, restoring over a destination full
# of 0xFF, offset=/size= sub-ranges, and --info in text and JSON.

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403

# QEMU-style names; sizes all differ and are not all 1 MiB multiples
FIVE = [
    ("pc.ram", "mixed", 32 * MiB + 8 * KiB),
    ("/rom@etc/acpi/tables", "random", 128 * KiB),
    ("0000:00:01.0/vga.vram", "mixed", 16 * MiB),
    ("pc.bios", "zero", 256 * KiB),
    ("/rom@etc/table-loader", "random", 4 * KiB),
]


def five_blocks(src_dir):
    return [make_block(n, src_dir, pattern(k, s, 20 + i), "b%d" % i)
            for i, (n, k, s) in enumerate(FIVE)]


def many(blocks, out_dir, dest_dir):
    out = os.path.join(out_dir, "five.snap")
    roundtrip(blocks, out, dest_dir, what="5 blocks")
    # the text form names every block with its length and pages present
    r = ok(snaprestore("--info", out), "--info")
    text = r.outs
    for b in blocks:
        line = next((l for l in text.splitlines() if l.split()[:1] == [b.name]), None)
        check(line is not None, "--info text does not list block %s:\n%s" % (b.name, text))
        f = line.split()
        check(f[1] == str(b.pat.size), "--info text: %s length %s, expected %d" % (
            b.name, f[1], b.pat.size))
        check(f[2] == "%d/%d" % (b.pat.nonzero_pages, b.pat.pages),
              "--info text: %s pages present %s, expected %d/%d" % (
                  b.name, f[2], b.pat.nonzero_pages, b.pat.pages))
    check("5 blocks" in text, "--info text does not say '5 blocks':\n" + text)
    check("pc-q35" in text, "--info text does not name the machine:\n" + text)
    integ = next((l for l in text.splitlines() if l.startswith("integrity:")), "")
    check(integ.split(None, 1)[1:2] and integ.split(None, 1)[1].startswith(
          "checksums present, complete (65536-byte chunks, table at 0x") and
          integ.endswith(")") and "()" not in integ,
          "--info text: integrity line %r" % integ)


def all_dir(blocks, out_dir, shm):
    out = os.path.join(out_dir, "five.snap")
    if not os.path.exists(out):
        save_blocks(out, blocks)
    parent = os.path.join(shm, "all-parent")
    d = os.path.join(parent, "dir")
    os.makedirs(d)
    ok(snaprestore(out, "--all", d), "--all")
    want = sorted(all_file_name(b.name) for b in blocks)
    check(listdir_all(d) == want, "--all created %r, expected %r" % (listdir_all(d), want))
    check(listdir_all(parent) == ["dir"], "--all wrote outside DIR: %r" % listdir_all(parent))
    check("%2From@etc%2Facpi%2Ftables" in want and "0000:00:01.0%2Fvga.vram" in want,
          "encoding assumption: %r" % want)
    for b in blocks:
        compare_files(b.src, os.path.join(d, all_file_name(b.name)), "--all: block %s" % b.name)


def all_dir_escape(src_dir, out_dir, shm):
    # names that would climb out of DIR or collide if not encoded
    names = ["../escape", "..", ".hidden", "a/b", "a%2Fb", "/", "x/../../y"]
    blocks = [make_block(n, src_dir, pattern("random", 8 * KiB, 40 + i), "esc%d" % i)
              for i, n in enumerate(names)]
    out = os.path.join(out_dir, "escape.snap")
    save_blocks(out, blocks)
    check_info(info_json(out), blocks, "escape names --info")
    top = os.path.join(shm, "esc-top")
    parent = os.path.join(top, "parent")
    d = os.path.join(parent, "dir")
    os.makedirs(d)
    ok(snaprestore(out, "--all", d), "--all with escaping names")
    want = sorted(all_file_name(n) for n in names)
    got = listdir_all(d)
    check(got == want, "--all created %r, expected %r" % (got, want))
    check(len(set(got)) == len(names), "--all names collide: %r" % got)
    for n in got:
        check("/" not in n and n not in (".", "..") and not n.startswith("."),
              "--all file name %r is unsafe" % n)
    check(listdir_all(parent) == ["dir"], "--all wrote into the parent: %r" % listdir_all(parent))
    check(listdir_all(top) == ["parent"], "--all wrote two levels up: %r" % listdir_all(top))
    for b in blocks:
        compare_files(b.src, os.path.join(d, all_file_name(b.name)), "--all: block %r" % b.name)


def skip_and_mix(blocks, out_dir, shm):
    out = os.path.join(out_dir, "five.snap")
    if not os.path.exists(out):
        save_blocks(out, blocks)
    d = os.path.join(shm, "mix")
    os.makedirs(d)
    explicit = os.path.join(shm, "explicit-pc.ram")
    args = [out, "--ram", "pc.ram=" + explicit, "--all", d,
            "--skip", "/rom@etc/acpi/tables", "--skip", "pc.bios"]
    ok(snaprestore(*args), "--ram + --all + --skip")
    compare_files(blocks[0].src, explicit, "--ram pc.ram")
    want = sorted(all_file_name(b.name) for b in blocks
                  if b.name not in ("pc.ram", "/rom@etc/acpi/tables", "pc.bios"))
    check(listdir_all(d) == want, "--all with --skip created %r, expected %r" % (
        listdir_all(d), want))
    for b in blocks:
        p = os.path.join(d, all_file_name(b.name))
        if os.path.exists(p):
            compare_files(b.src, p, "--all: block %s" % b.name)
    # --skip of everything but one, without --all
    only = os.path.join(shm, "only-vram")
    args = [out, "--ram", "0000:00:01.0/vga.vram=" + only]
    for b in blocks:
        if b.name != "0000:00:01.0/vga.vram":
            args += ["--skip", b.name]
    ok(snaprestore(*args), "--skip all but one")
    compare_files(blocks[2].src, only, "--skip all but vga.vram")


def over_ff(blocks, out_dir, shm):
    # an existing destination full of 0xFF must come back with zeros where
    # the source has zeros (holes and written zeros alike), on tmpfs and disk
    out = os.path.join(out_dir, "five.snap")
    if not os.path.exists(out):
        save_blocks(out, blocks)
    for d, opts in ((shm, []), (shm, ["--io", "threads", "-j", "1"]),
                    (shm, ["--direct", "off", "-j", "8"]), (out_dir, [])):
        args = [out]
        dests = []
        for i, b in enumerate(blocks):
            dest = os.path.join(d, "ff%d.ram" % i)
            fill_file(dest, b.pat.size, 0xFF)
            dests.append(dest)
            args += ["--ram", "%s=%s" % (b.name, dest)]
        ok(snaprestore(*(args + opts)), "restore over 0xFF %s" % " ".join(opts))
        for b, dest in zip(blocks, dests):
            compare_files(b.src, dest, "over 0xFF in %s %s: block %s" % (d, " ".join(opts),
                                                                          b.name))
            os.unlink(dest)
    # a larger destination keeps its bytes past the block (it may hold other
    # blocks there); a smaller one is grown to the block length
    big = os.path.join(shm, "ff-big.ram")
    fill_file(big, blocks[1].pat.size * 3, 0xFF)
    small = os.path.join(shm, "ff-small.ram")
    fill_file(small, 4 * KiB, 0xFF)
    args = [out, "--ram", "/rom@etc/acpi/tables=" + big, "--ram", "pc.ram=" + small]
    for b in blocks:
        if b.name not in ("/rom@etc/acpi/tables", "pc.ram"):
            args += ["--skip", b.name]
    ok(snaprestore(*args), "restore into larger/smaller 0xFF files")
    n = blocks[1].pat.size
    check(os.path.getsize(big) == 3 * n, "larger destination resized to %d bytes, expected "
          "its %d bytes kept" % (os.path.getsize(big), 3 * n))
    with open(big, "rb") as f, open(blocks[1].src, "rb") as s:
        head, tail = f.read(n), f.read()
        check(head == s.read(), "larger 0xFF destination: the block differs")
        check(tail == b"\xff" * (2 * n), "larger 0xFF destination: bytes past the block changed")
    compare_files(blocks[0].src, small, "smaller 0xFF destination")


def subrange(src_dir, out_dir, shm):
    # two blocks cut out of one file with offset=/size=, restored with offset=
    whole = make_block("whole", src_dir, pattern("mixed", 12 * MiB, 60), "whole")
    lo, hi = 4 * MiB, 8 * MiB
    out = os.path.join(out_dir, "sub.snap")
    ok(snapsave("-o", out, "--ram", "lo=%s,size=%d" % (whole.src, lo),
                "--ram", "hi=%s,offset=%d,size=%d" % (whole.src, lo, hi)), "save sub-ranges")
    info = info_json(out)
    check([(b["name"], b["length"]) for b in info["blocks"]] == [("lo", lo), ("hi", hi)],
          "sub-range --info: %r" % info["blocks"])
    dest = os.path.join(shm, "sub-dest.ram")
    fill_file(dest, 12 * MiB, 0xFF)
    ok(snaprestore(out, "--ram", "lo=" + dest, "--ram", "hi=%s,offset=%d" % (dest, lo)),
       "restore sub-ranges")
    compare_files(whole.src, dest, "sub-range restore into one file")


def partly_populated(src_dir, out_dir, shm):
    # A tmpfs destination that holds stale bytes in some 4 MiB work units,
    # none in others and both within one: pages come in through the mapping
    # where memory exists and by pwrite from a bounce buffer where it does
    # not; clear pages must read as zero in all three kinds of unit.
    size = 20 * MiB
    blk = make_block("pc.ram", src_dir, pattern("mixed", size, 70), "partly")
    out = os.path.join(out_dir, "partly.snap")
    ok(snapsave("-o", out, "--ram", "pc.ram=" + blk.src), "save for partly populated")
    stale = [(0, 4 * MiB), (5 * MiB, 1 * MiB), (7 * MiB + 4 * KiB, 8 * KiB),
             (16 * MiB - 4 * KiB, 8 * KiB), (size - 4 * KiB, 4 * KiB)]
    # also: all holes (a memfd a manager sized with ftruncate, no clearing
    # needed), and a block at offset 1M of a file whose only data is before it
    cases = [(stale, 0, opts) for opts in ([], ["--io", "threads", "-j", "1"],
                                           ["--direct", "off", "-j", "3"], ["--no-verify"])]
    cases += [([], 0, []), ([(0, 1 * MiB)], 1 * MiB, []),
              ([(0, 1 * MiB), (1 * MiB + size - 4 * KiB, 4 * KiB)], 1 * MiB, [])]
    for stale_runs, base, opts in cases:
        what = "destination with stale %r at offset %d %s" % (stale_runs, base, " ".join(opts))
        dest = os.path.join(shm, "partly.ram")
        fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, base + size)
            for off, n in stale_runs:
                os.pwrite(fd, b"\xee" * n, off)
        finally:
            os.close(fd)
        ok(snaprestore(out, "--ram", "pc.ram=%s,offset=%d" % (dest, base), *opts),
           "restore into a " + what)
        with open(dest, "rb") as f, open(blk.src, "rb") as s:
            head = f.read(base)
            check(head == b"\xee" * base, what + ": bytes before the block changed")
            check(f.read() == s.read(), what + ": the block differs")
        os.unlink(dest)
    os.unlink(out)


def shm_huge(path):
    """True if the tmpfs holding path may back files with huge pages."""
    best, opts = "", ""
    with open("/proc/self/mounts") as f:
        for line in f:
            mnt, o = line.split()[1], line.split()[3]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, opts = mnt, o
    return any(o.startswith("huge=") and o != "huge=never" for o in opts.split(","))


def fresh_keeps_holes(src_dir, out_dir, shm):
    # A new tmpfs destination gets memory for the data pages only: the
    # populator threads fault in data runs ahead of the reads, nothing else.
    size = 24 * MiB
    blk = make_block("pc.ram", src_dir, pattern("mixed", size, 71), "fresh")
    out = os.path.join(out_dir, "fresh.snap")
    ok(snapsave("-o", out, "--ram", "pc.ram=" + blk.src), "save for a fresh restore")
    data = blk.pat.nonzero_pages * PAGE
    check(0 < data < size, "fresh: the pattern needs data and zero pages")
    for opts in ([], ["-j", "2"], ["-j", "8", "--io", "threads"], ["--no-verify"]):
        what = "fresh tmpfs destination %s" % " ".join(opts)
        dest = os.path.join(shm, "fresh.ram")
        ok(snaprestore(out, "--ram", "pc.ram=" + dest, *opts), "restore into a " + what)
        used = os.stat(dest).st_blocks * 512
        if shm_huge(dest):      # a huge page may cover zero pages too
            check(data <= used < size, "%s: %d bytes allocated" % (what, used))
        else:
            check(used == data, "%s: %d bytes allocated for %d of data" % (what, used, data))
        compare_files(blk.src, dest, what)
        os.unlink(dest)
    os.unlink(out)


def stream_offset(blocks, out_dir, shm):
    # --offset N: a caller's header (libvirt style) stays in the first N bytes
    out = os.path.join(out_dir, "offset.snap")
    prefix = b"LibvirtQemudSave" + os.urandom(8192 - 16)
    write_bytes(out, prefix + b"old stream to be replaced" * 100)
    st = save_blocks(out, blocks[:2], "--offset", "8192")
    check_save_stats(st, blocks[:2], "--offset save --json")
    with open(out, "rb") as f:
        check(f.read(8192) == prefix, "--offset 8192: the prefix was changed")
    info = info_json(out, "--offset", "8192")
    check_info(info, blocks[:2], "--offset --info")
    r = snaprestore("--info", out)
    check(r.rc != 0, "--info without --offset accepted a file that starts with a header")
    restore_blocks(out, blocks[:2], shm, "--offset", "8192", what="--offset restore")


def main():
    require_binaries()
    src_dir = scratch("shm")
    shm = scratch("shm")
    out_dir = scratch("disk")
    blocks = five_blocks(src_dir)
    t = Cases("blocks")
    t.case("5 blocks round trip + --info", many, blocks, out_dir, shm)
    t.case("--all DIR percent-encoded", all_dir, blocks, out_dir, shm)
    t.case("--all DIR names that try to escape", all_dir_escape, src_dir, out_dir, shm)
    t.case("--skip with --ram and --all", skip_and_mix, blocks, out_dir, shm)
    t.case("restore over 0xFF", over_ff, blocks, out_dir, shm)
    t.case("offset=/size= sub-ranges", subrange, src_dir, out_dir, shm)
    t.case("restore into a partly populated tmpfs file", partly_populated, src_dir, out_dir,
           shm)
    t.case("restore into a new tmpfs file keeps zero pages as holes", fresh_keeps_holes,
           src_dir, out_dir, shm)
    t.case("--offset keeps a header in front", stream_offset, blocks, out_dir, shm)
    t.finish()


if __name__ == "__main__":
    main()
