#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Round trips across -j 1/2/8, --direct on/off/auto and --io threads/uring/aio
# (both for saving and restoring), request sizes and queue depths, plus
# --direct on against tmpfs: it works or fails with a clear message.

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403

ENGINES = ["threads", "uring", "aio"]
JOBS = [1, 2, 8]


def blocks_for(src_dir):
    # several blocks so that -j 8 has work to share; sizes not multiples of 1 MiB
    return [
        make_block("pc.ram", src_dir, pattern("mixed", 24 * MiB + 12 * KiB, 11)),
        make_block("/rom@etc/acpi/tables", src_dir, pattern("random", 128 * KiB, 12)),
        make_block("0000:00:01.0/vga.vram", src_dir, pattern("mixed", 16 * MiB, 13)),
    ]


def matrix_case(blocks, out_dir, dest_dir, engine, jobs, direct):
    opts = ["-j", str(jobs), "--direct", direct, "--io", engine]
    out = os.path.join(out_dir, "m-%s-%d-%s.snap" % (engine, jobs, direct))
    st, rst = roundtrip(blocks, out, dest_dir, save_opts=opts, restore_opts=opts,
                        what="%s -j%d --direct %s" % (engine, jobs, direct))
    for label, s in (("save", st), ("restore", rst)):
        check(s.get("engine") == engine,
              "%s --json: engine %r, expected %r" % (label, s.get("engine"), engine))
        check(s.get("jobs") == jobs,
              "%s --json: jobs %r, expected %d" % (label, s.get("jobs"), jobs))
        if direct == "on":
            check(s.get("direct-io") is True, "%s --json: direct-io %r with --direct on" % (
                label, s.get("direct-io")))
        if direct == "off":
            check(s.get("direct-io") is False, "%s --json: direct-io %r with --direct off" % (
                label, s.get("direct-io")))
    os.unlink(out)


def default_jobs(blocks, out_dir, dest_dir):
    # without -j: two workers per online CPU, at most 16, for both tools
    cpus = os.sysconf("SC_NPROCESSORS_ONLN")
    want = min(2 * cpus, 16)
    out = os.path.join(out_dir, "default-j.snap")
    st, rst = roundtrip(blocks, out, dest_dir, what="default -j")
    for label, s in (("save", st), ("restore", rst)):
        check(s.get("jobs") == want, "%s --json without -j: jobs %r, expected %d (2 x %d CPUs)"
              % (label, s.get("jobs"), want, cpus))
    os.unlink(out)


def aio_needs_direct(blocks, out_dir):
    out = os.path.join(out_dir, "aio-off.snap")
    r = snapsave("-o", out, "--ram", "pc.ram=" + blocks[0].src, "--io", "aio",
                 "--direct", "off")
    if r.rc == 0:
        # acceptable only if it really worked
        os.unlink(out)
        return
    check(r.rc in (1, 2), "aio --direct off: exit %d\n  %s" % (r.rc, r.describe()))
    line = expect_error(r, r.rc, "aio", what="aio --direct off")
    check("O_DIRECT" in line or "direct" in line,
          "aio --direct off: message does not say O_DIRECT is needed: %s" % line)
    check(not os.path.exists(out) and not temp_leftovers(out_dir),
          "aio --direct off left files: %r" % os.listdir(out_dir))


def env_engine_first(blocks, out_dir, dest_dir):
    """SNAPMR_IO_ENGINE names the engine the tools try first without --io: the
    tools read it and pass it to the library, which reads no environment."""
    src = ["--ram", "%s=%s" % (blocks[0].name, blocks[0].src)]
    out = os.path.join(out_dir, "env-engine.snap")
    env = dict(os.environ)
    env.pop("SNAPMR_IO_ENGINE", None)
    default = parse_json(ok(snapsave("-o", out, "--json", *src, env=env), "save"), "save")
    os.unlink(out)
    first = "threads" if default.get("engine") != "threads" else "uring"
    if engine_available(first, out_dir):
        raise Skip("the default engine is %r and %r is unavailable" % (default.get("engine"),
                                                                       first))
    env["SNAPMR_IO_ENGINE"] = first
    st = parse_json(ok(snapsave("-o", out, "--json", *src, env=env), "save"), "save")
    check(st.get("engine") == first, "SNAPMR_IO_ENGINE=%s: save used %r" % (first, st.get("engine")))
    dest = os.path.join(dest_dir, "env-engine.ram")
    r = ok(snaprestore(out, "--ram", "%s=%s" % (blocks[0].name, dest), "--json", env=env),
           "restore")
    check(parse_json(r, "restore").get("engine") == first,
          "SNAPMR_IO_ENGINE=%s: restore used another engine" % first)
    os.unlink(dest)
    os.unlink(out)


def shm_direct_on(blocks, shm_out, dest_dir):
    out = os.path.join(shm_out, "direct-on.snap")
    args = ["-o", out, "--json", "--direct", "on", "--no-sync"]
    for b in blocks:
        args += ["--ram", "%s=%s" % (b.name, b.src)]
    r = snapsave(*args)
    if r.rc == 0:
        note("     --direct on to tmpfs works here (kernel tmpfs supports O_DIRECT)")
        check_save_stats(parse_json(r, "save"), blocks, "--direct on to tmpfs")
        restore_blocks(out, blocks, dest_dir, "--direct", "on", what="restore --direct on tmpfs")
        os.unlink(out)
    else:
        expect_error(r, 1, out, "O_DIRECT", what="--direct on to tmpfs")
        check(not os.path.exists(out) and not temp_leftovers(shm_out),
              "failed --direct on left files: %r" % os.listdir(shm_out))


def auto_direct(blocks, out_dir, shm_out, dest_dir):
    # default --direct auto: works everywhere, with or without O_DIRECT
    for d in (out_dir, shm_out):
        out = os.path.join(d, "auto.snap")
        extra = ["--no-sync"] if d == shm_out else []
        roundtrip(blocks, out, dest_dir, save_opts=extra, what="--direct auto in %s" % d)
        os.unlink(out)


def io_sizes(blocks, out_dir, dest_dir, engine, mio, qd):
    opts = ["--io", engine, "--max-io-size", mio, "--queue-depth", str(qd), "-j", "2"]
    if engine == "aio":
        opts += ["--direct", "on"]
    out = os.path.join(out_dir, "io-%s-%s.snap" % (engine, mio))
    roundtrip(blocks, out, dest_dir, save_opts=opts, restore_opts=opts,
              what="%s --max-io-size %s --queue-depth %d" % (engine, mio, qd))
    os.unlink(out)


def engine_fallback(blocks, out_dir, dest_dir, no_direct):
    """The fault shim (FAILSHIM_ENGINE_INIT) makes engines refuse to start, as
    io_uring does when disabled by sysctl: the default choice falls back with a
    one-line note, an explicitly named engine fails clearly."""
    shim = os.environ.get("FAILSHIM")
    if not shim or not os.path.exists(shim):
        raise Skip("FAILSHIM (tests/faults/failshim.so) is not built")
    env = dict(os.environ, LD_PRELOAD=shim)
    out = os.path.join(out_dir, "fallback.snap")
    src = ["--ram", "%s=%s" % (blocks[0].name, blocks[0].src)]
    cases = [("uring", "aio" if not no_direct else "threads"), ("uring,aio", "threads")]
    for hook, expect in cases:
        env["FAILSHIM_ENGINE_INIT"] = hook
        r = ok(snapsave("-o", out, "--json", *src, env=env), "save with %s failing" % hook)
        st = parse_json(r, "save")
        check(st.get("engine") == expect, "with %s failing, save used %r, expected %r" %
              (hook, st.get("engine"), expect))
        lines = error_lines(r)
        check(len(lines) == 1 and "note:" in lines[0] and expect in lines[0],
              "with %s failing, expected one note naming %r, got %r" % (hook, expect, lines))
        dest = os.path.join(dest_dir, "fallback.ram")
        r = ok(snaprestore(out, "--ram", "%s=%s" % (blocks[0].name, dest), "--json", env=env),
               "restore with %s failing" % hook)
        check(parse_json(r, "restore").get("engine") == expect,
              "restore with %s failing did not use %s" % (hook, expect))
        compare_files(blocks[0].src, dest, "restore with %s failing" % hook)
        os.unlink(dest)
        os.unlink(out)
    env["FAILSHIM_ENGINE_INIT"] = "uring"
    r = snapsave("-o", out, "--io", "uring", *src, env=env)
    expect_error(r, 1, "uring", what="--io uring while io_uring cannot start")
    check(not os.path.exists(out) and not temp_leftovers(out_dir),
          "failed --io uring left files: %r" % os.listdir(out_dir))


def progress(blocks, out_dir, dest_dir):
    # --progress: one line rewritten with \r, ended by a newline, at 100 %;
    # --progress=json: one query-migrate style object per line, done never
    # going back, the last one complete; anything else is a usage error.
    total = sum(b.pat.size for b in blocks)
    out = os.path.join(out_dir, "progress.snap")
    ram = []
    for b in blocks:
        ram += ["--ram", "%s=%s" % (b.name, b.src)]
    slow = ["-j", "1", "--io", "threads", "--max-io-size", "4K"]
    r = ok(snapsave("-o", out, "--progress", *(ram + slow)), "save --progress")
    check(r.err.startswith("\rsnapsave: ") and r.err.endswith("\n") and "100%" in r.err,
          "save --progress: stderr %r" % r.err[-300:])
    check(r.err.count("\n") == 1, "save --progress: more than one line: %r" % r.err[-300:])
    dests = []
    for i, b in enumerate(blocks):
        dests += ["--ram", "%s=%s" % (b.name, os.path.join(dest_dir, "p%d.ram" % i))]
    for tool, args in ((snapsave, ["-o", out] + ram), (snaprestore, [out] + dests)):
        r = ok(tool("--progress=json", *(args + slow)), "--progress=json")
        lines = [l for l in r.err.splitlines() if l.strip()]
        check(lines, "--progress=json printed nothing")
        done = -1
        for line in lines:
            try:
                o = json.loads(line)
            except ValueError:
                fail("--progress=json: not JSON: %r" % line)
            ram_o = o.get("ram", {})
            check(o.get("status") == "active" and ram_o.get("total") == total,
                  "--progress=json: %r (total %d)" % (line, total))
            check(ram_o["done"] >= done and ram_o["remaining"] == total - ram_o["done"],
                  "--progress=json: done went back or remaining is wrong: %r" % line)
            check(o.get("total-time-ms", -1) >= 0 and o.get("mib-per-s", -1) >= 0,
                  "--progress=json: %r" % line)
            done = ram_o["done"]
        check(done == total, "--progress=json: last line %r, expected done %d" % (lines[-1],
                                                                                 total))
        note("  %s --progress=json: %d lines" % (os.path.basename(r.argv[0]), len(lines)))
    for i in range(len(blocks)):
        compare_files(blocks[i].src, os.path.join(dest_dir, "p%d.ram" % i), "after progress")
        os.unlink(os.path.join(dest_dir, "p%d.ram" % i))
    r = snapsave("-o", out, "--progress=xml", *ram)
    expect_error(r, 2, "--progress", "xml", what="--progress=xml")
    os.unlink(out)


def main():
    require_binaries()
    src_dir = scratch("shm")
    dest_dir = scratch("shm")
    shm_out = scratch("shm")
    out_dir = scratch("disk")
    no_direct = None if direct_supported(out_dir) else \
        "O_DIRECT is refused in %s (set SNAPMR_TEST_DISK to a disk directory)" % out_dir
    blocks = blocks_for(src_dir)
    t = Cases("options")
    for engine in ENGINES:
        why = engine_available(engine, out_dir) if not (engine == "aio" and no_direct) \
            else no_direct
        for jobs in JOBS:
            for direct in ("on", "off"):
                label = "--io %s -j %d --direct %s" % (engine, jobs, direct)
                if engine == "aio" and direct == "off":
                    continue
                reason = why or (no_direct if direct == "on" else None)
                if reason:
                    t.skip(label, reason)
                    continue
                t.case(label, matrix_case, blocks, out_dir, dest_dir, engine, jobs, direct)
    if not no_direct and engine_available("aio", out_dir) is None:
        t.case("--io aio --direct off is refused clearly", aio_needs_direct, blocks, out_dir)
    t.case("default -j is two per CPU", default_jobs, blocks, out_dir, dest_dir)
    t.case("--progress and --progress=json", progress, blocks, out_dir, dest_dir)
    t.case("engine fallback when io_uring/libaio cannot start", engine_fallback, blocks, out_dir,
           dest_dir, no_direct)
    t.case("SNAPMR_IO_ENGINE leads the default order", env_engine_first, blocks, out_dir,
           dest_dir)
    t.case("--direct auto on disk and tmpfs", auto_direct, blocks, out_dir, shm_out, dest_dir)
    t.case("--direct on to tmpfs works or fails clearly", shm_direct_on, blocks, shm_out,
           dest_dir)
    for engine in ENGINES:
        for mio, qd in (("4K", 1), ("64K", 32), ("8M", 4)):
            label = "--io %s --max-io-size %s --queue-depth %d" % (engine, mio, qd)
            why = no_direct if engine == "aio" and no_direct else \
                engine_available(engine, out_dir)
            if why:
                t.skip(label, why)
                continue
            t.case(label, io_sizes, blocks, out_dir, dest_dir, engine, mio, qd)
    t.finish()


if __name__ == "__main__":
    main()
