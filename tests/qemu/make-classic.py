#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Records the classic (precopy, non-mapped-ram) fixtures of tests/test-classic.c:
# a paused QEMU whose main RAM (and pc-dimm RAM) live in shared memory backends
# migrates with x-ignore-shared to `exec:cat>FILE`, so the stream lists every
# block but carries pages only for the small non-shared ones (ROMs, ACPI
# tables, vga.vram). Usage: make-classic.py OUTDIR [QEMU [SUFFIX [-L DIR]...]]
#
# An unpacked QEMU 7.2 (Debian bookworm's qemu-system-x86, dpkg -x into R):
#   QEMU_MODULE_DIR=R/usr/lib/x86_64-linux-gnu/qemu make-classic.py tests/data/classic \
#       R/usr/bin/qemu-system-x86_64 -qemu72 -L /usr/share/seabios -L /usr/share/qemu
# records only the q35 fixture, as q35-qemu72.stream.
#
# Each fixture NAME.stream comes with NAME.json: the machine type, QEMU
# version and QEMU's own block list ("info ramblock"), so the unit test can
# check what the decoder finds against what QEMU reported.

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vm as vmlib  # noqa: E402

FIXTURES = [
    # name, machine, main RAM, dimm, extra args
    ("q35-vga", "q35", "64M", None, ["-device", "VGA"]),
    ("pc", "pc", "64M", None, []),
    ("q35-dimm", "q35", "64M", "32M", []),
]


def ramblocks(vm):
    """QEMU's 'info ramblock' as [{name, offset, used, total}]. Not vm.ramblocks():
    QEMU 7.2 lacks the HVA and RO columns of 10, so count the hex columns from
    the left (Offset, Used, Total)."""
    blocks = []
    for line in vm.qmp.hmp("info ramblock").splitlines():
        f = line.split()
        hexes = [x for x in f if x.startswith("0x")]
        if len(f) < 6 or f[0] == "Block" or len(hexes) < 3:
            continue
        blocks.append({"name": f[0], "offset": int(hexes[0], 16),
                       "used": int(hexes[1], 16), "total": int(hexes[2], 16)})
    return blocks


def record(outdir, name, machine, size, dimm, extra, firmware=()):
    extra = list(extra) + list(firmware)
    path = os.path.join(outdir, name + ".stream")
    with vmlib.VM(machine, size, dimm, extra_args=extra) as vm:
        q = vm.qmp
        caps = [{"capability": "events", "state": True},
                {"capability": "x-ignore-shared", "state": True}]
        q.execute("migrate-set-capabilities", {"capabilities": caps})
        q.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        info = {"machine_type": vm.machine_type(),
                "qemu": q.greeting["version"]["qemu"],
                "ramblocks": ramblocks(vm),
                "shared": sorted(vm.backends)}
        # exec: runs through /bin/sh; the path has no shell metacharacters.
        q.execute("migrate", {"uri": f"exec:cat>{path}"})
        q.wait_migration(timeout=120)
    with open(os.path.join(outdir, name + ".json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{path}: {os.path.getsize(path)} bytes, {info['machine_type']}, "
          f"QEMU {info['qemu']['major']}.{info['qemu']['minor']}.{info['qemu']['micro']}")


def main():
    if len(sys.argv) < 2:
        print("usage: make-classic.py OUTDIR [QEMU [SUFFIX [-L DIR]...]]", file=sys.stderr)
        return 2
    fixtures = FIXTURES
    if len(sys.argv) > 2:
        vmlib.QEMU = sys.argv[2]
    suffix = sys.argv[3] if len(sys.argv) > 3 else ""
    firmware = sys.argv[4:]
    if suffix:
        fixtures = [(f[0] + suffix,) + f[1:] for f in FIXTURES if f[0] == "q35-vga"]
    os.makedirs(sys.argv[1], exist_ok=True)
    for fx in fixtures:
        record(sys.argv[1], *fx, firmware=firmware)
    return 0


if __name__ == "__main__":
    sys.exit(main())
