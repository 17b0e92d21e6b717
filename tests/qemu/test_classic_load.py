#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# The classic stream snapmr writes loads into QEMU: a paused source with its
# RAM in shared backends migrates with x-ignore-shared through a pipe into
# classic-reencode (format/classic.c decodes, goes through a mapped-ram raw
# tail, encodes), and a destination started with -incoming defer on copies of
# the backends loads the result: query-migrate must say "completed" and the
# backends must still hold the source's pattern. Exits 77 without QEMU >= 9.
#
# Env: CLASSIC_REENCODE (path of the helper), QEMU (default qemu-system-x86_64);
# QEMU72_ROOT: optionally, a root where Debian bookworm's qemu-system-x86 7.2 is
# unpacked (apt-get download + dpkg -x): the q35 case then runs with it too.

import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vm as vmlib  # noqa: E402

CASES = [
    # machine, main RAM, dimm, extra args
    ("q35", "64M", None, ["-device", "VGA"]),
    ("pc", "64M", "32M", []),
]


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(77)


def qemu_version():
    try:
        out = subprocess.run([vmlib.QEMU, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for word in out.split():
        parts = word.split(".")
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            return int(parts[0]), int(parts[1])
    return None


def set_caps(vm):
    caps = [{"capability": "events", "state": True},
            {"capability": "x-ignore-shared", "state": True}]
    vm.qmp.execute("migrate-set-capabilities", {"capabilities": caps})


def run_case(tool, tmp, machine, size, dimm, extra):
    src_stream = os.path.join(tmp, "src.stream")
    out_stream = os.path.join(tmp, "out.stream")
    with vmlib.VM(machine, size, dimm, extra_args=extra) as src:
        pats = src.fill(seed=7)
        shared = list(src.backends)
        set_caps(src)
        src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        # QEMU writes into a pipe; the helper reads it once, front to back.
        # tee keeps QEMU's own bytes for the comparison (a VM migrates once).
        cmd = f"exec:tee {src_stream} | {tool} {' '.join(shared)} >{out_stream}"
        src.qmp.execute("migrate", {"uri": cmd})
        src.qmp.wait_migration(timeout=120)
    with open(src_stream, "rb") as a, open(out_stream, "rb") as b:
        same = a.read() == b.read()
    with vmlib.VM(machine, size, dimm, incoming=True, extra_args=extra) as dst:
        for bid, pat in pats.items():
            vmlib.fill_file(dst.backend_path(bid), pat)
        set_caps(dst)
        dst.qmp.execute("migrate-incoming", {"uri": f"exec:cat {out_stream}"})
        info = dst.qmp.wait_migration(timeout=120)
        bad = {bid: n for bid, (n, _) in dst.compare(pats).items() if n}
        status = dst.qmp.execute("query-status")["status"]
    print(f"{machine}{'+dimm' if dimm else ''}: {os.path.getsize(out_stream)} bytes, "
          f"byte-identical to QEMU's: {same}, load {info['status']}, runstate {status}, "
          f"bad pages {bad or 0}")
    return info["status"] == "completed" and not bad


def main():
    tool = os.environ.get("CLASSIC_REENCODE")
    if not tool or not os.access(tool, os.X_OK):
        skip("CLASSIC_REENCODE is not set to the built helper")
    if shutil.which(vmlib.QEMU) is None:
        skip(f"{vmlib.QEMU} not found")
    ver = qemu_version()
    if ver is None or ver < (9, 0):
        skip(f"needs QEMU >= 9.0, found {ver}")
    ok = True
    for case in CASES:
        with tempfile.TemporaryDirectory(prefix="snapmr-classic-") as tmp:
            ok = run_case(tool, tmp, *case) and ok
    root = os.environ.get("QEMU72_ROOT")
    if root:
        vmlib.QEMU = os.path.join(root, "usr/bin/qemu-system-x86_64")
        os.environ["QEMU_MODULE_DIR"] = os.path.join(root, "usr/lib/x86_64-linux-gnu/qemu")
        machine, size, dimm, extra = CASES[0]
        extra = extra + ["-L", "/usr/share/seabios", "-L", "/usr/share/qemu"]
        print(f"QEMU 7.2 from {root}:")
        with tempfile.TemporaryDirectory(prefix="snapmr-classic-") as tmp:
            ok = run_case(tool, tmp, machine, size, dimm, extra) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
