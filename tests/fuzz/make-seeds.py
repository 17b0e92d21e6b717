#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Regenerates the small files in tests/data/: valid seeds for the fuzzer and
# golden corrupted files for tests/faults/test_corruption.py. Saves tiny RAM
# with the real snapsave, then compacts each file (page regions aligned to
# 4 KiB instead of QEMU's 1 MiB, offsets and trailer hashes rewritten) so
# every file stays under 64 KiB. Needs the built tools and libxxhash.
#
#   SNAPSAVE=build/snapsave/snapsave SNAPRESTORE=build/snaprestore/snaprestore \
#       tests/fuzz/make-seeds.py [--qemu-ref /var/tmp/snapmr-ref/pc-256M.img]

import argparse
import ctypes
import ctypes.util
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")
SNAPSAVE = os.environ.get("SNAPSAVE", os.path.join(ROOT, "build", "snapsave", "snapsave"))
SNAPRESTORE = os.environ.get("SNAPRESTORE",
                             os.path.join(ROOT, "build", "snaprestore", "snaprestore"))
PAGE = 4096
FOOTER = 48
LIMIT = 64 * 1024

_xxh = None


def xxh3(data):
    global _xxh
    if _xxh is None:
        name = ctypes.util.find_library("xxhash") or "libxxhash.so.0"
        _xxh = ctypes.CDLL(name)
        _xxh.XXH3_64bits.restype = ctypes.c_uint64
        _xxh.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return _xxh.XXH3_64bits(bytes(data), len(data))


def run(argv, check=True, **kw):
    p = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    if check and p.returncode != 0:
        sys.exit("failed: %s\n%s" % (" ".join(map(str, argv)), p.stderr.decode()))
    return p


def info(path):
    return json.loads(run([SNAPRESTORE, "--info", "--json", path]).stdout)


def refooter(buf, table_off, table_len, flags=1):
    """Writes a footer for the table at table_off over the last 48 bytes."""
    foot = bytearray(b"SNAPMRT1" + struct.pack(">IIQQQ", 1, flags, table_off, table_len,
                                                 xxh3(buf[table_off:table_off + table_len])))
    foot += struct.pack(">Q", xxh3(foot))
    buf[len(buf) - FOOTER:] = foot


def name_bytes(data, b):
    """A block's raw name: --info --json may escape bytes >= 0x80 one by one."""
    for enc in ("utf-8", "latin-1"):
        try:
            n = b["name"].encode(enc)
        except UnicodeEncodeError:
            continue
        at = b["header-offset"] - 9 - len(n)
        if at >= 0 and data[at] == len(n) and data[at + 1:at + 1 + len(n)] == n:
            return n
    raise ValueError("block %r: name not found before its header" % b["name"])


def entry_offset(data, b):
    return b["header-offset"] - 9 - len(name_bytes(data, b))


def compact(src, align=PAGE):
    """The file at src with its page regions moved to `align` boundaries."""
    with open(src, "rb") as f:
        data = f.read()
    inf = info(src)
    out = bytearray()
    moves = []  # (old_start, old_end, new_start) of every copied range
    cur = None  # where the next copy starts in the old file

    def copy(lo, hi):
        moves.append((lo, hi, len(out)))
        out.extend(data[lo:hi])

    def new_off(old):
        for lo, hi, new in moves:
            if lo <= old <= hi:
                return new + old - lo
        raise ValueError("offset 0x%x was not copied" % old)

    heads = []
    for b in inf["blocks"]:
        entry = entry_offset(data, b)
        start = 0 if cur is None else cur
        bm_end = b["bitmap-offset"] + b["bitmap-size"]
        keep = min(bm_end + 16, b["pages-offset"])  # the snapmr marker, if any
        copy(start, keep)
        out.extend(bytes(-len(out) % align))
        pages_new = len(out)
        copy(b["pages-offset"], b["pages-offset"] + b["length"])
        heads.append((b["header-offset"], b["bitmap-offset"], pages_new))
        cur = b["pages-offset"] + b["length"]
        assert entry >= start
    copy(cur, inf["stream-end"])
    for hdr, bm, pages in heads:
        h = new_off(hdr)
        struct.pack_into(">QQ", out, h + 12, new_off(bm), pages)
    integ = inf.get("integrity", {})
    if integ.get("status") != "complete":
        return out
    tab_off = integ["table-offset"]
    foot = data[-FOOTER:]
    tab_len = struct.unpack(">Q", foot[24:32])[0]
    tab = bytearray(data[tab_off:tab_off + tab_len])
    base, _end, cs, nb, dev_off, dev_len, dev_h = struct.unpack(">QQIIQQQ", tab[:48])
    new_end = len(out)
    struct.pack_into(">QQIIQQQ", tab, 0, base, new_end, cs, nb,
                     new_off(dev_off), dev_len, dev_h)
    p = 48
    for _ in range(nb):
        n = tab[p]
        q = p + 1 + n
        length, bmo, pgo, bmh, nch = struct.unpack(">QQQQQ", tab[q:q + 40])
        struct.pack_into(">QQ", tab, q + 8, new_off(bmo), new_off(pgo))
        p = q + 40 + 8 * nch
    assert p == len(tab)
    out.extend(tab)
    out.extend(bytes(FOOTER))
    refooter(out, new_end, len(tab))
    return out


def strip_trailer(buf, inf):
    """A QEMU-shaped copy: no trailer, no snapmr marker."""
    out = bytearray(buf[:inf["stream-end"]])
    b = inf["blocks"][0]
    at = b["bitmap-offset"] + b["bitmap-size"]
    if out[at:at + 16] == b"SNAPMR-TRAILER-1":
        out[at:at + 16] = bytes(16)
    return out


# ------------------------------------------------------------------- sources

def page(kind, rng):
    if kind == "zero":
        return bytes(PAGE)
    if kind == "rand":
        return bytes(rng.getrandbits(8) for _ in range(PAGE))
    if kind == "fill":
        return bytes([rng.randrange(1, 256)]) * PAGE
    if kind == "edge":
        p = bytearray(PAGE)
        p[rng.choice((0, PAGE - 1, rng.randrange(PAGE)))] = 0x5A
        return bytes(p)
    raise ValueError(kind)


def ram(path, kinds, seed):
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for k in kinds:
            if k == "hole":
                f.seek(PAGE, 1)
            else:
                f.write(page(k, rng))
        f.truncate(len(kinds) * PAGE)
    return path


def libvirt_header(xml):
    """libvirt's save image header: magic, then 19 host-endian u32 (version,
    data_len, was_running, compressed, cookieOffset, cookieLen, unused), then
    data_len bytes of XML."""
    xml = xml.encode() + b"\0"
    hdr = b"LibvirtQemudSave" + struct.pack("<19I", 2, len(xml), 1, 0, 0, 0, *([0] * 13))
    return hdr + xml


def qemu_tail(ref, keep):
    """A raw stream tail cut from a QEMU file: the RAM parts and end, the
    device sections named in keep (name, instance), EOF, and a VM description
    that lists only those devices."""
    inf = info(ref)
    with open(ref, "rb") as f:
        f.seek(inf["tail-offset"])
        tail = f.read(inf["tail-size"])
    t0 = inf["tail-offset"]
    out = bytearray(tail[:13])  # RAM EOS word and footer
    for s in inf["sections"]:
        if s["offset"] < t0:
            continue
        if s["type"] in ("part", "end", "command") or (s.get("name"), s.get("instance")) in keep:
            out += tail[s["offset"] - t0:s["offset"] - t0 + s["size"]]
    out += b"\0"
    vd = json.loads(tail[inf["vmdesc"]["offset"] - t0 + 5:])
    vd["devices"] = [d for d in vd["devices"] if (d["name"], d["instance_id"]) in keep]
    js = json.dumps(vd, separators=(",", ":")).encode()
    out += b"\x06" + struct.pack(">I", len(js)) + js
    return bytes(out), js


# -------------------------------------------------------------------- output

def write(name, buf, check=None):
    path = os.path.join(DATA, name)
    assert len(buf) < LIMIT, "%s: %d bytes" % (name, len(buf))
    with open(path, "wb") as f:
        f.write(buf)
    if check is not None:
        r = run([SNAPRESTORE, "--verify", path], check=False)
        if (r.returncode == 0) != check:
            sys.exit("%s: --verify exit %d, expected %s\n%s" % (
                name, r.returncode, "success" if check else "failure", r.stderr.decode()))
    print("%-28s %6d bytes" % (name, len(buf)))
    return path


def save(tmp, out, blocks, *opts, stdin=None):
    args = [SNAPSAVE, "-o", out, "--direct", "off", "--no-sync"]
    for name, path in blocks:
        args += ["--ram", "%s=%s" % (name, path)]
    run(args + list(opts), input=stdin)
    return out


def flip(buf, off, bit=0):
    b = bytearray(buf)
    b[off] ^= 1 << bit
    return b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qemu-ref", default="/var/tmp/snapmr-ref/pc-256M.img")
    a = ap.parse_args()
    os.makedirs(DATA, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="snapmr-seeds-")
    try:
        make(tmp, a)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make(tmp, a):
    j = lambda n: os.path.join(tmp, n)  # noqa: E731

    # valid files
    r1 = ram(j("one.ram"), ["rand"], 1)
    one = compact(save(tmp, j("one.snap"), [("pc.ram", r1)]))
    write("one-page.snap", one, True)

    big = ram(j("big.ram"), ["rand", "zero", "hole", "fill", "edge", "hole", "rand", "zero",
                             "fill"], 2)
    rom = ram(j("rom.ram"), ["edge", "hole"], 3)
    dev = j("dev")
    with open(dev, "wb") as f:
        f.write(bytes(random.Random(4).getrandbits(8) for _ in range(700)))
    mixed = compact(save(tmp, j("mixed.snap"), [("pc.ram", big), ("pc.rom", rom)], "-d", dev))
    write("two-blocks-devstate.snap", mixed, True)

    odd = ram(j("odd.ram"), ["rand", "hole", "hole", "hole", "fill"], 5)
    names = [("/rom@etc/acpi/tables", odd), ("pc.bios", r1), ("ram0", rom),
             ("a/../b", r1), ("\u00e9t\u00e9", r1)]
    many = compact(save(tmp, j("names.snap"), names, "-d", "/dev/null",
                        "-m", "pc-i440fx-10.0"))
    write("odd-names.snap", many, True)

    holes = ram(j("holes.ram"), ["hole"] * 4, 6)
    write("all-holes.snap", compact(save(tmp, j("holes.snap"), [("pc.ram", holes)],
                                         "-d", "-", stdin=b"x" * 300)), True)

    # a libvirt save image around the stream (snapsave --offset keeps the header)
    lv = libvirt_header("<domain><name>seed</name></domain>")
    with open(j("lv.snap"), "wb") as f:
        f.write(lv)
    lvs = compact(save(tmp, j("lv.snap"), [("pc.ram", r1)], "--offset", str(len(lv))))
    write("libvirt.snap", lvs, True)

    # QEMU-shaped: real device sections and VM description cut from a QEMU file
    if os.path.exists(a.qemu_ref):
        keep = {("timer", 0), ("cpu_common", 0), ("cpu", 0), ("apic", 0), ("kvmclock", 0),
                ("PCIBUS", 0), ("dma", 0), ("dma", 1), ("i8259", 0), ("i8259", 1),
                ("hpet", 0), ("fdc", 0), ("ps2kbd", 0),
                ("pckbd", 0), ("port92", 0), ("globalstate", 0)}
        tail, js = qemu_tail(a.qemu_ref, keep)
        with open(j("tail"), "wb") as f:
            f.write(tail)
        qb = [("ram0", odd), ("/rom@etc/acpi/tables", r1), ("pc.bios", r1)]
        raw = compact(save(tmp, j("raw.snap"), qb, "--device-state-raw", j("tail"),
                           "-m", "pc-i440fx-10.0"))
        write("raw-tail.snap", raw, True)
        write("qemu-like.img", strip_trailer(raw, info(os.path.join(DATA, "raw-tail.snap"))))
        write("vmdesc.json", js)
    else:
        print("no QEMU reference file %s: raw-tail.snap, qemu-like.img and vmdesc.json "
              "not regenerated" % a.qemu_ref)

    # golden corrupted files (expectations in tests/faults/test_corruption.py)
    base = os.path.join(DATA, "two-blocks-devstate.snap")
    inf = info(base)
    b0 = inf["blocks"][0]
    data = bytearray(open(base, "rb").read())
    write("bad-page.snap", flip(data, b0["pages-offset"] + 5), False)
    write("bad-bitmap.snap", flip(data, b0["bitmap-offset"], 2), False)  # page 2: a zero page
    write("bad-devstate.snap", flip(data, inf["device-state"]["offset"] + 17, 7), False)
    tab = inf["integrity"]["table-offset"]
    write("bad-table.snap", flip(data, tab + 60), False)
    write("bad-footer.snap", flip(data, len(data) - 20), False)
    inc = bytearray(data)
    tlen = len(data) - FOOTER - tab
    refooter(inc, tab, tlen, flags=0)
    write("incomplete.snap", inc, False)
    write("torn-footer.snap", data[:len(data) - 7], False)
    q = strip_trailer(data, inf)
    tailbits = bytearray(q)
    rom_b = inf["blocks"][1]  # 2 pages: bit 2 lies past the block
    tailbits[rom_b["bitmap-offset"]] |= 0x04
    write("bitmap-tail.img", tailbits)
    # MEM_SIZE at the end of the RAM START record, just before the first entry
    ms = bytearray(q)
    msz = entry_offset(q, b0) - 8
    total = struct.unpack(">Q", ms[msz:msz + 8])[0]
    assert total & 0xfff == 4 and total >> 12 << 12 == inf["ram-total"]
    struct.pack_into(">Q", ms, msz, (inf["ram-total"] + PAGE) | 4)
    write("mem-size.img", ms)
    over = bytearray(q)
    struct.pack_into(">Q", over, b0["header-offset"] + 20, 0xFFFFFFFFFFFFF000)
    write("pages-overflow.img", over)


if __name__ == "__main__":
    main()
