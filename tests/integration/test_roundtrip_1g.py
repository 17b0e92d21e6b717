#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# One 1 GiB round trip with mixed content and a multi-MiB device state,
# all on tmpfs (--no-sync), compared byte for byte.

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403

SIZE = 1 * GiB


def main():
    require_binaries()
    shm = scratch("shm")
    st = os.statvfs(shm)
    # source + saved file (about half) + restored copy
    need = 3 * SIZE
    if st.f_bavail * st.f_frsize < need:
        print("SKIP: %s has less than %d MiB free for a 1 GiB round trip" % (shm, need // MiB))
        sys.exit(EXIT_SKIP)
    t = Cases("roundtrip-1g")

    def run_1g():
        pat = pattern("mixed", SIZE, seed=1234)
        blk = make_block("pc.ram", shm, pat)
        dev = os.path.join(shm, "dev.bin")
        devdata = os.urandom(3 * MiB + 17)
        write_bytes(dev, devdata)
        out = os.path.join(shm, "vm.snap")
        note("1 GiB: %d non-zero pages, %d zero pages" % (pat.nonzero_pages, pat.zero_pages))
        st = save_blocks(out, [blk], "--no-sync", "-d", dev, what="save 1 GiB")
        check_save_stats(st, [blk], "save 1 GiB --json", devstate_len=len(devdata))
        check_info(info_json(out), [blk], "1 GiB --info --json", devstate_len=len(devdata))
        check_sparse(out, [blk], "1 GiB", extra=len(devdata))
        os.unlink(dev)
        devout = os.path.join(shm, "dev.out")
        rst, dests = restore_blocks(out, [blk], shm, "-d", devout, what="restore 1 GiB")
        check(rst["ram"]["normal"] == pat.nonzero_pages,
              "restore --json: ram.normal %s, expected %d" % (rst["ram"]["normal"],
                                                              pat.nonzero_pages))
        with open(devout, "rb") as f:
            check(f.read() == devdata, "restored device state differs")

    t.case("mixed 1G", run_1g)
    t.finish()


if __name__ == "__main__":
    main()
