#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""QEMU <-> snapmr interoperability tests.

QEMU (>= 9.0) saves paused guests whose RAM holds a known pattern to
mapped-ram files (multifd off/on, 2/4 channels, direct-io, ,offset= prefix);
snaprestore must describe them like QEMU does and restore every block
exactly. snapsave then rebuilds files from the restored blocks plus the raw
stream tail, and fresh QEMUs must load them (multifd off/on, direct-io) with
guest RAM equal to the pattern. Machine types q35 and pc, RAM sizes that are
not powers of two / not MiB multiples, and two memory backends (pc-dimm).

Environment: SNAPSAVE, SNAPRESTORE (default ../../build/... relative to this
script), QEMU (default qemu-system-x86_64), SNAPMR_ACCEL (kvm or tcg),
SNAPMR_TEST_DISK (default /var/tmp: needs O_DIRECT for the direct-io cases),
SNAPMR_TEST_SHM (default /dev/shm), SNAPMR_TEST_KEEP=1 keeps the work files.

Exit status: 0 pass, 1 failure, 77 skip (no usable QEMU >= 9.0).
"""

import os
import re
import signal
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from snaptest import (EXIT_SKIP, SNAPRESTORE, SNAPSAVE, Cases, Failure,  # noqa: E402
                      all_file_name, check, direct_supported, fail, info_json, note,
                      require_binaries, run, scratch, scratch_base, scratch_remove)

sys.path.insert(0, HERE)
import vm as V  # noqa: E402

PAGE = V.PAGE
MIN_QEMU = (9, 0)
PREFIX_OFFSET = 0x1234
WORK_DIR = scratch_base("disk")
SHM_DIR = scratch_base("shm")
CMD_TIMEOUT = 300

def _on_signal(signum, _frame):
    raise SystemExit(f"interrupted by signal {signum}")


# ---------------------------------------------------------------------------
# Environment probes.

def qemu_version():
    """(major, minor) of $QEMU, or None with a reason."""
    try:
        p = subprocess.run([V.QEMU, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"cannot run {V.QEMU} --version: {e}"
    m = re.search(r"version (\d+)\.(\d+)", p.stdout)
    if p.returncode != 0 or not m:
        return None, f"{V.QEMU} --version gave no version (rc {p.returncode})"
    return (int(m.group(1)), int(m.group(2))), p.stdout.splitlines()[0]


# ---------------------------------------------------------------------------
# Independent reading of a mapped-ram file (cross-checks snaprestore --info).

def read_at(f, off, n):
    f.seek(off)
    b = f.read(n)
    if len(b) != n:
        fail(f"{f.name}: short read of {n} bytes at {off:#x}")
    return b


def check_layout(path, info, offset, machine_type):
    """Checks the file's bytes against its --info description and the format
    rules of mapped-ram-format.md (header, config, MEM_SIZE, per-block entry
    and MappedRamHeader, EOS + footer after the last block)."""
    with open(path, "rb") as f:
        head = read_at(f, offset, 13 + len(machine_type))
        check(head[:8] == b"QEVM\0\0\0\x03", f"{path}: bad file header at {offset:#x}: {head[:8].hex()}")
        check(head[8] == 0x07 and struct.unpack(">I", head[9:13])[0] == len(machine_type)
              and head[13:] == machine_type.encode(),
              f"{path}: configuration section does not name {machine_type!r}: {head[8:].hex()}")
        blocks = info["blocks"]
        total = sum(b["length"] for b in blocks)
        check(info.get("ram-total") == total, f"{path}: ram-total {info.get('ram-total')} != sum of lengths {total}")
        for i, b in enumerate(blocks):
            name = b["name"].encode()
            entry = b["header-offset"] - 8 - len(name) - 1
            if i == 0:
                (mem,) = struct.unpack(">Q", read_at(f, entry - 8, 8))
                check(mem == total | 4, f"{path}: MEM_SIZE word {mem:#x} != {total | 4:#x}")
            else:
                prev = blocks[i - 1]
                check(entry == prev["pages-offset"] + prev["length"],
                      f"{path}: block {b['name']} entry at {entry:#x}, expected right after the "
                      f"previous page region at {prev['pages-offset'] + prev['length']:#x}")
            raw = read_at(f, entry, 1 + len(name) + 8 + 28)
            n = len(name)
            (length,) = struct.unpack(">Q", raw[1 + n:9 + n])
            ver, psz, bmo, pgo = struct.unpack(">IQQQ", raw[9 + n:])
            where = f"{path}: block {b['name']}"
            check(raw[0] == n and raw[1:1 + n] == name, f"{where}: idstr bytes at {entry:#x} differ")
            check(length == b["length"], f"{where}: stored length {length} != info {b['length']}")
            check(ver == 1 and psz == PAGE, f"{where}: MappedRamHeader version {ver} page_size {psz}")
            check(bmo == b["bitmap-offset"] and pgo == b["pages-offset"],
                  f"{where}: header offsets bitmap {bmo:#x} pages {pgo:#x} != info "
                  f"{b['bitmap-offset']:#x} {b['pages-offset']:#x}")
            check(pgo % PAGE == 0, f"{where}: pages_offset {pgo:#x} not page aligned")
            npages = length // PAGE
            check(b["pages"] == npages and b["bitmap-size"] == (npages + 63) // 64 * 8,
                  f"{where}: pages {b['pages']} / bitmap-size {b['bitmap-size']} inconsistent with length")
            check(bmo >= offset and bmo + b["bitmap-size"] <= pgo or bmo >= pgo + length,
                  f"{where}: bitmap [{bmo:#x}+{b['bitmap-size']:#x}) overlaps its page region")
        last = blocks[-1]
        eos = read_at(f, last["pages-offset"] + last["length"], 13)
        sid = info.get("ram-section-id")
        check(eos == struct.pack(">QBI", 0x10, 0x7E, sid),
              f"{path}: after the last block expected EOS + footer(id {sid}), got {eos.hex()}")


def check_restored_blocks(path, info, files):
    """Every restored block equals the file's pages under set bits and zero
    under clear bits (independently of snaprestore's reader)."""
    zero = bytes(PAGE)
    with open(path, "rb") as f:
        for b in info["blocks"]:
            dest = files[b["name"]]
            bitmap = read_at(f, b["bitmap-offset"], b["bitmap-size"])
            region = read_at(f, b["pages-offset"], b["length"]) if b["length"] else b""
            with open(dest, "rb") as g:
                got = g.read()
            mv_r, mv_g = memoryview(region), memoryview(got)
            bad, first, present = 0, [], 0
            for i in range(b["length"] // PAGE):
                s = slice(i * PAGE, (i + 1) * PAGE)
                if bitmap[i >> 3] >> (i & 7) & 1:
                    present += 1
                    good = mv_g[s] == mv_r[s]
                else:
                    good = mv_g[s] == zero
                if not good:
                    bad += 1
                    if len(first) < 8:
                        first.append(i)
            check(bad == 0, f"restored block {b['name']}: {bad} pages differ from the file "
                            f"(bitmap-selected data / zero), first {first}")
            check(present == b["pages-present"],
                  f"block {b['name']}: {present} bits set, info says {b['pages-present']}")


# ---------------------------------------------------------------------------
# snaprestore / snapsave steps.

def offset_args(offset):
    return ["--offset", hex(offset)] if offset else []


def check_info(info, path, case, offset, ours):
    """--info --json against QEMU's own view of the VM."""
    check(info.get("offset") == offset, f"{path}: info offset {info.get('offset')} != {offset}")
    check(info.get("machine") == case.machine_type,
          f"{path}: machine {info.get('machine')!r} != QEMU's {case.machine_type!r}")
    check("mapped-ram" in (info.get("capabilities") or []),
          f"{path}: capabilities {info.get('capabilities')} lack mapped-ram")
    got = [(b["name"], b["length"]) for b in info.get("blocks", [])]
    want = [(b["name"], b["used"]) for b in case.ramblocks]
    check(got == want, f"{path}: blocks differ from QEMU's 'info ramblock':\n"
                       f"      file: {got}\n      qemu: {want}")
    secs = info.get("sections") or []
    full = [s for s in secs if s.get("type") == "full"]
    names = {s.get("name") for s in full}
    for need in ("timer", "cpu_common", "globalstate"):
        check(need in names, f"{path}: device section {need!r} missing (have {sorted(map(str, names))[:12]}...)")
    bad = [s for s in full if not (isinstance(s.get("name"), str) and s["name"]
                                   and isinstance(s.get("size"), int) and s["size"] > 0)]
    check(not bad, f"{path}: FULL sections without a name or size: {bad[:3]}")
    vd = info.get("vmdesc")
    check(isinstance(vd, dict), f"{path}: no VMDESCRIPTION reported")
    size = info.get("file-size")
    if isinstance(vd, dict):
        end = vd["offset"] + 5 + vd["size"]
        if ours:
            check(size > end, f"{path}: snapsave file ends at the VMDESCRIPTION ({end:#x}), "
                              f"no integrity trailer after it")
        else:
            check(size == end, f"{path}: QEMU file size {size} != end of VMDESCRIPTION {end}")
    st = (info.get("integrity") or {}).get("status")
    if ours:
        check(st == "complete", f"{path}: integrity status {st!r}, expected 'complete'")
    else:
        check(st == "none", f"{path}: integrity status {st!r} for a QEMU file, expected 'none'")


def restore(path, info, offset, tag):
    """snaprestore FILE --all DIR --device-state-raw TAIL; returns
    ({block name: restored file}, tail path, restore dir)."""
    d = scratch("shm", f"interop-restore-{tag}")
    tail = os.path.join(d, "tail.raw")
    blocks = os.path.join(d, "blocks")
    os.mkdir(blocks)
    args = [SNAPRESTORE, path, "--all", blocks, "--device-state-raw", tail] + offset_args(offset)
    p = run(args, timeout=CMD_TIMEOUT)
    check(p.rc == 0, f"snaprestore {path} failed: {p.describe()}")
    lines = [ln for ln in p.err.splitlines() if ln.strip()]
    check(len(lines) == 1 and "restoring unverified" in lines[0],
          f"snaprestore of a QEMU file: expected exactly one stderr line with "
          f"'restoring unverified', got {lines}")
    files = {}
    for b in info["blocks"]:
        f = os.path.join(blocks, all_file_name(b["name"]))
        check(os.path.isfile(f), f"restored block {b['name']!r} missing (expected {f})")
        check(os.path.getsize(f) == b["length"],
              f"restored block {b['name']}: size {os.path.getsize(f)} != {b['length']}")
        files[b["name"]] = f
    extra = set(os.listdir(blocks)) - {os.path.basename(f) for f in files.values()}
    check(not extra, f"snaprestore --all wrote unexpected files {sorted(extra)}")
    with open(path, "rb") as f:
        want = read_at(f, info["tail-offset"], info["tail-size"])
    with open(tail, "rb") as f:
        got = f.read()
    check(got == want, f"--device-state-raw: {len(got)} bytes differ from the file's tail "
                       f"({info['tail-size']} bytes at {info['tail-offset']:#x})")
    last = info["blocks"][-1]
    check(info["tail-offset"] == last["pages-offset"] + last["length"]
          and want.startswith(struct.pack(">QBI", 0x10, 0x7E, info["ram-section-id"])),
          f"stream tail at {info['tail-offset']:#x} starts with {want[:13].hex()}, expected the "
          f"EOS + footer that follow the last block (at {last['pages-offset'] + last['length']:#x})")
    check(info["tail-offset"] + info["tail-size"] == info["file-size"],
          "the stream tail of a QEMU file does not run to the end of the file")
    return files, tail, d


def check_verify_refuses(path, offset):
    args = [SNAPRESTORE, "--verify", path] + offset_args(offset)
    p = run(args, timeout=CMD_TIMEOUT)
    out = p.outs + p.err
    check(p.rc == 1 and "no checksums" in out,
          f"snaprestore --verify on a QEMU file: expected rc 1 and 'no checksums', got "
          f"{p.describe()}")


def snapsave_blocks(case, files, tail, out, offset=0):
    args = [SNAPSAVE, "--machine", case.machine_type, "--device-state-raw", tail,
            "-o", out, "--no-sync"]
    for b in case.ramblocks:
        args += ["--ram", f"{b['name']}={files[b['name']]}"]
    p = run(args + offset_args(offset), timeout=CMD_TIMEOUT)
    check(p.rc == 0, f"snapsave -> {out} failed: {p.describe()}")
    v = run([SNAPRESTORE, "--verify", out] + offset_args(offset), timeout=CMD_TIMEOUT)
    check(v.rc == 0, f"snaprestore --verify on snapsave's output: {v.describe()}")


# ---------------------------------------------------------------------------
# QEMU steps.

class Case:
    def __init__(self, name, machine, size, dimm=None, seed=1):
        self.name, self.machine = name, machine
        self.size, self.dimm, self.seed = V.parse_size(size), dimm, seed
        self.patterns = None        # {backend id: bytes}
        self.machine_type = None
        self.ramblocks = None
        self.bios = None            # pc.bios as QEMU maps it (pmemsave)
        self.work = None

    def vm(self, incoming=False):
        return V.VM(self.machine, self.size, self.dimm, incoming=incoming)


def qemu_save(case, out, channels=0, direct_io=False, offset=0):
    """A fresh paused source VM with the case's pattern saves to `out`."""
    if offset:
        with open(out, "wb") as f:
            f.write(b"SNAPMR-INTEROP-PREFIX\n".ljust(offset, b"\xee"))
    with case.vm() as vm:
        if case.patterns is None:
            case.patterns = {bid: V.make_pattern(size, case.seed + i)
                             for i, (bid, (_, size)) in enumerate(vm.backends.items())}
        for bid, pat in case.patterns.items():
            V.fill_file(vm.backend_path(bid), pat)
        mt, rb = vm.machine_type(), vm.ramblocks()
        if case.machine_type is None:
            case.machine_type, case.ramblocks = mt, rb
            bios = [b for b in rb if b["name"] == "pc.bios"]
            if bios:
                dump = os.path.join(case.work, "bios.pmem")
                n = bios[0]["used"]
                vm.qmp.execute("pmemsave", {"val": (1 << 32) - n, "size": n, "filename": dump})
                with open(dump, "rb") as f:
                    case.bios = f.read()
                os.unlink(dump)
        else:
            check(mt == case.machine_type and rb == case.ramblocks,
                  "QEMU's machine type / RAM blocks changed between two identical VMs")
        try:
            vm.save(out, offset=offset, channels=channels, direct_io=direct_io, timeout=CMD_TIMEOUT)
        except RuntimeError as e:
            fail(f"QEMU save failed: {e}")
    if offset:
        with open(out, "rb") as f:
            check(f.read(22) == b"SNAPMR-INTEROP-PREFIX\n", "QEMU did not keep the file prefix")


def qemu_load(case, path, channels=0, direct_io=False, offset=0):
    """A fresh -incoming defer VM loads `path`; its RAM must equal the pattern."""
    with case.vm(incoming=True) as vm:
        try:
            vm.load(path, offset=offset, channels=channels, direct_io=direct_io, timeout=CMD_TIMEOUT)
        except RuntimeError as e:
            fail(f"QEMU failed to load {path}: {e}")
        st = vm.qmp.execute("query-status").get("status")
        check(st not in ("inmigrate", "internal-error", "io-error", "shutdown"),
              f"destination status after load is {st!r}")
        for bid, (bad, first) in vm.compare(case.patterns).items():
            check(bad == 0, f"QEMU loaded {os.path.basename(path)}: backend {bid} has "
                            f"{bad} pages differing from the pattern, first {first}")


def step(label, fn, *a, **kw):
    """One step of a case, timed; a failure ends it (and the steps that need it)."""
    t = time.monotonic()
    try:
        r = fn(*a, **kw)
    except BaseException:
        note(f"  {label}: FAILED ({time.monotonic() - t:.1f}s)")
        raise
    note(f"  {label}: ok ({time.monotonic() - t:.1f}s)")
    return r


def qemu_file_checks(case, tag, path, offset):
    """Step 1 + 4 for one QEMU-written file; returns (files, tail, restore dir)."""
    info = info_json(path, *offset_args(offset))
    check_info(info, path, case, offset, ours=False)
    check_layout(path, info, offset, case.machine_type)
    check_verify_refuses(path, offset)
    files, tail, rdir = restore(path, info, offset, tag)
    for bid, pat in case.patterns.items():
        check(bid in files, f"backend {bid} is not a block in the file")
        bad, first = V.compare_file(files[bid], pat)
        check(bad == 0, f"restored {bid} differs from the pattern in {bad} pages, first {first}")
    check_restored_blocks(path, info, files)
    if case.bios is not None and "pc.bios" in files:
        with open(files["pc.bios"], "rb") as f:
            check(f.read() == case.bios, "restored pc.bios differs from QEMU's mapped BIOS (pmemsave)")
    return files, tail, rdir


def snapsave_checks(case, tag, files, tail, out, offset=0):
    """Step 2 (file side): snapsave, then --info/--verify/layout on its output."""
    if offset:
        with open(out, "wb") as f:
            f.write(b"OUR-PREFIX\n".ljust(offset, b"\x5a"))
    snapsave_blocks(case, files, tail, out, offset)
    info = info_json(out, *offset_args(offset))
    check_info(info, out, case, offset, ours=True)
    check_layout(out, info, offset, case.machine_type)
    if offset:
        with open(out, "rb") as f:
            check(f.read(11) == b"OUR-PREFIX\n", "snapsave --offset did not keep the file prefix")


# ---------------------------------------------------------------------------
# The cases.

def case_q35_64m(case, dio):
    """q35, 64 MiB: QEMU saves with every mapped-ram variant; snapsave output
    loads without and with multifd + direct-io, and with a prefix."""
    saves = [("nomfd", 0, False, 0), ("mfd2", 2, False, 0), ("mfd4", 4, False, 0)]
    saves += [("mfd2-dio", 2, True, 0)] if dio else []
    saves += [("offset", 0, False, PREFIX_OFFSET), ("mfd4-offset", 4, False, PREFIX_OFFSET)]
    kept = {}
    failed = []     # a failed variant does not stop the others
    for tag, ch, d, off in saves:
        path = os.path.join(case.work, f"qemu-{tag}.img")
        label = f"QEMU save {tag} (channels {ch}, direct-io {d}, offset {off:#x}) -> restore"
        try:
            step(f"{label}: save", qemu_save, case, path, ch, d, off)
            files, tail, rdir = step(f"{label}: check", qemu_file_checks, case, tag, path, off)
        except Failure as e:
            failed.append(f"{label}: {e}")
            continue
        finally:
            if os.path.exists(path) and tag not in ("nomfd", "offset"):
                os.unlink(path)
        if tag in ("nomfd", "offset"):
            kept[tag] = (files, tail, rdir)
        else:
            scratch_remove(rdir)

    if "nomfd" in kept:
        files, tail, rdir = kept["nomfd"]
        out = os.path.join(case.work, "snapsave.img")
        try:
            step("snapsave from the restored blocks", snapsave_checks, case, "ours", files, tail, out)
            step("QEMU loads snapsave output (multifd off)", qemu_load, case, out)
            if dio:
                step("QEMU loads snapsave output (multifd 2, direct-io)", qemu_load, case, out,
                     channels=2, direct_io=True)
            step("QEMU loads snapsave output (multifd 4)", qemu_load, case, out, channels=4)
        except Failure as e:
            failed.append(f"snapsave output: {e}")
        scratch_remove(rdir)
    if "offset" in kept:
        files, tail, rdir = kept["offset"]
        out = os.path.join(case.work, "snapsave-offset.img")
        try:
            step(f"snapsave --offset {PREFIX_OFFSET:#x}", snapsave_checks, case, "ours-off",
                 files, tail, out, PREFIX_OFFSET)
            step(f"QEMU loads it with ,offset={PREFIX_OFFSET:#x} (multifd 2"
                 f"{', direct-io' if dio else ''})", qemu_load, case, out, channels=2,
                 direct_io=dio, offset=PREFIX_OFFSET)
        except Failure as e:
            failed.append(f"snapsave --offset output: {e}")
        scratch_remove(rdir)
    if failed:
        fail("\n".join(failed))


def case_simple(case, dio, save_channels, loads):
    """One QEMU save -> restore checks -> snapsave -> QEMU loads."""
    path = os.path.join(case.work, "qemu.img")
    step(f"QEMU save (channels {save_channels})", qemu_save, case, path, save_channels)
    files, tail, rdir = step("restore checks", qemu_file_checks, case, "qemu", path, 0)
    os.unlink(path)
    out = os.path.join(case.work, "snapsave.img")
    step("snapsave from the restored blocks", snapsave_checks, case, "ours", files, tail, out)
    scratch_remove(rdir)
    for ch, d in loads:
        if d and not dio:
            continue
        step(f"QEMU loads snapsave output (channels {ch}, direct-io {d})", qemu_load, case, out,
             channels=ch, direct_io=d)


def run_case(case, fn):
    case.work = scratch("disk", "interop-" + case.name)
    try:
        fn(case)
    finally:
        case.patterns = None
        scratch_remove(case.work)


def main():
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)

    ver, why = qemu_version()
    if ver is None:
        print(f"SKIP: {why}")
        return EXIT_SKIP
    if ver < MIN_QEMU:
        print(f"SKIP: {why}: mapped-ram needs QEMU >= {MIN_QEMU[0]}.{MIN_QEMU[1]}")
        return EXIT_SKIP
    if not os.path.isdir(SHM_DIR):
        print(f"SKIP: no {SHM_DIR}")
        return EXIT_SKIP
    require_binaries()
    dio = direct_supported(WORK_DIR)
    print(f"{why}; accel {V.default_accel()}; work dir {WORK_DIR}"
          f"{'' if dio else ' (no O_DIRECT there: direct-io cases skipped)'}", flush=True)

    cases = [
        (Case("q35-64M", "q35", "64M", seed=11), lambda c: case_q35_64m(c, dio)),
        # 257 MiB + a 64 MiB pc-dimm on a second backend, i440fx.
        (Case("pc-257M+dimm64M", "pc", "257M", dimm="64M", seed=21),
         lambda c: case_simple(c, dio, 2, [(0, False), (4, True)])),
        # RAM not a multiple of 1 MiB: the next block entry is not MiB aligned.
        (Case("q35-64M+8K", "q35", (64 << 20) + 8192, seed=31),
         lambda c: case_simple(c, dio, 0, [(2, False), (2, True)])),
    ]
    t = Cases("qemu-interop")
    try:
        for case, fn in cases:
            note(f"== {case.name}")
            t.case(case.name, run_case, case, fn)
    finally:
        V._kill_live()
    t.finish()


if __name__ == "__main__":
    sys.exit(main())
