#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Records the classic (precopy, non-mapped-ram) fixtures of tests/test-classic.c:
# a paused QEMU whose main RAM (and pc-dimm RAM) live in shared memory backends
# migrates with x-ignore-shared to `exec:cat>FILE`, so the stream lists every
# block but carries pages only for the small non-shared ones (ROMs, ACPI
# tables, vga.vram). Usage: make-classic.py OUTDIR [QEMU]
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


def record(outdir, name, machine, size, dimm, extra):
    path = os.path.join(outdir, name + ".stream")
    with vmlib.VM(machine, size, dimm, extra_args=extra) as vm:
        q = vm.qmp
        caps = [{"capability": "events", "state": True},
                {"capability": "x-ignore-shared", "state": True}]
        q.execute("migrate-set-capabilities", {"capabilities": caps})
        q.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        info = {"machine_type": vm.machine_type(),
                "qemu": q.greeting["version"]["qemu"],
                "ramblocks": vm.ramblocks(),
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
        print("usage: make-classic.py OUTDIR [QEMU]", file=sys.stderr)
        return 2
    if len(sys.argv) > 2:
        vmlib.QEMU = sys.argv[2]
    os.makedirs(sys.argv[1], exist_ok=True)
    for fx in FIXTURES:
        record(sys.argv[1], *fx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
