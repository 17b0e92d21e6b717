#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Device state: from a file, from stdin (-d -), 0 bytes, multi-MiB, none;
# restored to a file and to stdout (-d -), compared byte for byte.

import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403


def roundtrip_dev(blk, out_dir, shm, data, how_in, how_out, label):
    out = os.path.join(out_dir, "dev.snap")
    args = ["-o", out, "--json", "--ram", "pc.ram=" + blk.src]
    stdin = None
    if how_in == "file":
        src = os.path.join(shm, "dev.in")
        write_bytes(src, data)
        args += ["-d", src]
    elif how_in == "stdin":
        args += ["-d", "-"]
        stdin = data
    elif how_in == "none":
        pass
    st = parse_json(ok(snapsave(*args, input=stdin), label + ": save"), label)
    check_save_stats(st, [blk], label + ": save --json", devstate_len=len(data))
    check_info(info_json(out), [blk], label + ": --info --json", devstate_len=len(data))
    check_sparse(out, [blk], label, extra=len(data))
    dest = os.path.join(shm, "dev-dest.ram")
    rargs = [out, "--ram", "pc.ram=" + dest]
    if how_out == "file":
        devout = os.path.join(shm, "dev.out")
        # an existing longer file is replaced, not overwritten in place
        write_bytes(devout, b"\xee" * (len(data) + 8192))
        r = ok(snaprestore(*(rargs + ["-d", devout])), label + ": restore")
        with open(devout, "rb") as f:
            got = f.read()
    else:
        r = ok(snaprestore(*(rargs + ["-d", "-"])), label + ": restore")
        got = r.out
    check(len(got) == len(data), "%s: restored device state has %d bytes, expected %d" % (
        label, len(got), len(data)))
    check(got == data, "%s: restored device state differs" % label)
    compare_files(blk.src, dest, label + ": block pc.ram")
    os.unlink(out)
    os.unlink(dest)


def stdin_pipe(blk, out_dir, shm):
    # a real pipe (not a file redirected to stdin), written in pieces
    data = os.urandom(2 * MiB + 5)
    out = os.path.join(out_dir, "pipe.snap")
    p = subprocess.Popen([SNAPSAVE, "-o", out, "--ram", "pc.ram=" + blk.src, "-d", "-"],
                         stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    for i in range(0, len(data), 65536 + 3):
        p.stdin.write(data[i:i + 65536 + 3])
    p.stdin.close()
    err = p.stderr.read().decode()
    rc = p.wait(timeout=120)
    check(rc == 0, "save from a pipe: exit %d: %s" % (rc, err))
    r = ok(snaprestore(out, "--skip", "pc.ram", "-d", "-"), "restore device state only")
    check(r.out == data, "device state through a pipe differs (%d vs %d bytes)" % (
        len(r.out), len(data)))
    # and to a pipe on stdout
    p = subprocess.Popen([SNAPRESTORE, out, "--skip", "pc.ram", "-d", "-"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = b""
    while True:
        b = p.stdout.read(4096)
        if not b:
            break
        got += b
    rc = p.wait(timeout=120)
    check(rc == 0 and got == data, "device state to a pipe: exit %d, %d bytes" % (rc, len(got)))


def main():
    require_binaries()
    shm = scratch("shm")
    out_dir = scratch("disk")
    blk = make_block("pc.ram", shm, pattern("mixed", 8 * MiB, 77))
    t = Cases("devstate")
    sizes = [("0 B", b""), ("1 B", b"\x00"), ("4 KiB", os.urandom(4096)),
             ("5 MiB+123", os.urandom(5 * MiB + 123))]
    for label, data in sizes:
        for how_in in ("file", "stdin"):
            for how_out in ("file", "stdout"):
                name = "%s from %s to %s" % (label, how_in, how_out)
                t.case(name, roundtrip_dev, blk, out_dir, shm, data, how_in, how_out, name)
    t.case("no -d restores 0 bytes", roundtrip_dev, blk, out_dir, shm, b"", "none", "file",
           "no device state")
    t.case("stdin and stdout as pipes", stdin_pipe, blk, out_dir, shm)
    t.finish()


if __name__ == "__main__":
    main()
