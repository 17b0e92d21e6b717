#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Produce a reference mapped-ram file with QEMU itself, plus the RAM pattern
# it holds and a JSON description, for interop tests against snapmr.
"""
Writes OUT (QEMU's mapped-ram file), OUT.<backend>.pattern (the exact bytes
put into each RAM backend, sparse) and OUT.json (configuration, QEMU's RAM
blocks, and the load-back result with --verify).

Exit status: 0 ok, 1 failure, 77 when this host cannot do it (no QEMU, or
O_DIRECT refused for --direct-io), so meson reports SKIP.
"""

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vm  # noqa: E402

SKIP = 77


def odirect_ok(directory):
    probe = os.path.join(directory, f".snapmr-odirect-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        return True
    except OSError:
        return False
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="mapped-ram file to write")
    ap.add_argument("--machine", choices=("q35", "pc"), default="q35")
    ap.add_argument("--size", default="256M", help="main RAM (backend ram0)")
    ap.add_argument("--dimm", default=None, help="also plug a pc-dimm backed by ram1 of this size")
    ap.add_argument("--channels", type=int, choices=(0, 1, 2, 3, 4, 8), default=0,
                    help="multifd channels (0 = no multifd)")
    ap.add_argument("--direct-io", action="store_true",
                    help="direct-io parameter (only effective with multifd)")
    ap.add_argument("--offset", type=lambda s: vm.parse_size(s), default=0,
                    help="bytes of foreign prefix before the stream (URI ,offset=)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fdset", action="store_true",
                    help="hand QEMU the file through add-fd instead of a path")
    ap.add_argument("--verify", action="store_true",
                    help="load the file into a fresh QEMU and compare RAM")
    a = ap.parse_args()

    if shutil.which(vm.QEMU) is None:
        print(f"make-ref: SKIP: {vm.QEMU} not found", file=sys.stderr)
        return SKIP
    outdir = os.path.dirname(os.path.abspath(a.out))
    if a.direct_io and not odirect_ok(outdir):
        print(f"make-ref: SKIP: {outdir} refuses O_DIRECT", file=sys.stderr)
        return SKIP

    cfg = dict(machine=a.machine, size=a.size, dimm_size=a.dimm, channels=a.channels,
               direct_io=a.direct_io, offset=a.offset, fdset=a.fdset)
    try:
        pats, info = vm.save_ref(a.out, seed=a.seed, **cfg)
    except RuntimeError as e:
        print(f"make-ref: {e}", file=sys.stderr)
        return 1
    info["file"] = os.path.abspath(a.out)
    info["file_size"] = os.path.getsize(a.out)
    info["patterns"] = {}
    for bid, pat in pats.items():
        p = f"{a.out}.{bid}.pattern"
        vm.write_sparse(p, pat)
        zero = bytes(vm.PAGE)
        info["patterns"][bid] = {
            "file": os.path.abspath(p),
            "size": len(pat),
            "nonzero_pages": sum(1 for o in range(0, len(pat), vm.PAGE)
                                 if pat[o:o + vm.PAGE] != zero),
        }

    rc = 0
    if a.verify:
        try:
            res = vm.load_and_compare(a.out, pats, **cfg)
        except RuntimeError as e:
            print(f"make-ref: verify: {e}", file=sys.stderr)
            return 1
        info["verify"] = {bid: {"bad_pages": b, "first_bad": f} for bid, (b, f) in res.items()}
        if any(b for b, _ in res.values()):
            print(f"make-ref: verify: RAM differs: {info['verify']}", file=sys.stderr)
            rc = 1

    with open(f"{a.out}.json", "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    print(json.dumps({k: info[k] for k in ("file", "machine_type", "file_size")}
                     | ({"verify": info["verify"]} if a.verify else {})))
    return rc


if __name__ == "__main__":
    sys.exit(main())
