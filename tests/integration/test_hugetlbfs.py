#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Guest RAM in hugetlbfs (QEMU's memory-backend-file on a hugetlbfs mount, or
# a hugetlb memfd). A hugetlbfs hole cannot be told from data (SEEK_DATA and
# mincore() say nothing), and a read fault on one takes a huge page from the
# pool or raises SIGBUS when the pool is empty. So: a save must not allocate
# a single huge page, even with the pool empty; a restore into a new file
# allocates only the huge pages that hold data, over an existing one keeps
# every huge page it had (clear pages are written, never punched), and fails
# with one clear line (removing what it created) where hugetlbfs says no.
#
# Needs root (it reserves huge pages and mounts hugetlbfs); exits 77 with the
# reason otherwise. The pool is put back as it was.

import mmap
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403

NR = "/proc/sys/vm/nr_hugepages"
# huge pages of the source image, by content
KINDS = ["hole"] * 8 + ["zero"] * 4 + ["sparse"] * 6 + ["dense"] * 4 + ["edge"] * 2
NEED = 2 * len(KINDS) + 8  # source + a full destination, with room to spare
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Python < 3.13 lacks it (x86 value)


def meminfo(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise Skip("no %s in /proc/meminfo" % key)


def free_huge():
    return meminfo("HugePages_Free")


class Pool:
    """Grows the huge page pool by NEED pages and mounts hugetlbfs; undo()
    removes the files, unmounts and puts the pool back."""

    def __init__(self):
        self.orig = None
        self.mnt = None
        if os.geteuid() != 0:
            raise Skip("needs root to reserve huge pages and mount hugetlbfs")
        with open("/proc/filesystems") as f:
            if "hugetlbfs" not in f.read():
                raise Skip("the kernel has no hugetlbfs")
        self.hp = meminfo("Hugepagesize") * KiB
        if self.hp != 2 * MiB:
            raise Skip("default huge page size is %d KiB, the test is sized for 2 MiB"
                       % (self.hp // KiB))
        with open(NR) as f:
            self.orig = int(f.read())
        want = free_huge() + NEED
        with open(NR, "w") as f:
            f.write(str(self.orig + NEED))
        if free_huge() < want:
            got = free_huge()
            self.undo()
            raise Skip("could not reserve %d huge pages (%d free)" % (NEED, got))
        self.mnt = os.path.join(scratch("disk"), "huge")
        os.mkdir(self.mnt)
        r = subprocess.run(["mount", "-t", "hugetlbfs", "none", self.mnt],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            self.mnt = None
            self.undo()
            raise Skip("mount -t hugetlbfs failed: %s" % r.stdout.decode().strip())

    def path(self, name):
        return os.path.join(self.mnt, name)

    def undo(self):
        if self.mnt:
            for n in os.listdir(self.mnt):
                os.unlink(os.path.join(self.mnt, n))
            subprocess.run(["umount", self.mnt], check=False)
            self.mnt = None
        if self.orig is not None:
            with open(NR, "w") as f:
                f.write(str(self.orig))
            self.orig = None


def huge_content(kinds, hp, seed):
    """The bytes of each huge page (None for a hole) and the number of
    non-zero 4 KiB pages."""
    rng = random.Random(seed)
    out, nonzero = [], 0
    per = hp // PAGE
    for k in kinds:
        if k == "hole":
            out.append(None)
            continue
        b = bytearray(hp)
        if k == "dense":
            b[:] = rng.randbytes(hp)
            for i in range(per):  # no page may come out all zero
                b[i * PAGE] = 1
            nonzero += per
        elif k == "sparse":
            pages = rng.sample(range(per), 5)
            for i in pages:
                b[i * PAGE:(i + 1) * PAGE] = rng.randbytes(PAGE)
                b[i * PAGE] = 2
            nonzero += len(pages)
        elif k == "edge":
            b[hp - 1] = 0x5A  # the very last byte of the huge page
            nonzero += 1
        out.append(bytes(b))
    return out, nonzero


def fill_huge(fd, content, hp):
    """Writes the allocated huge pages of content through a shared mapping
    (hugetlbfs has no write()); holes stay holes."""
    os.ftruncate(fd, len(content) * hp)
    if not content:
        return
    m = mmap.mmap(fd, len(content) * hp, mmap.MAP_SHARED | MAP_NORESERVE)
    try:
        for i, b in enumerate(content):
            if b is not None:
                m[i * hp:(i + 1) * hp] = b
    finally:
        m.close()


def make_huge(path, content, hp):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fill_huge(fd, content, hp)
    finally:
        os.close(fd)


def expected_file(d, content, hp, name):
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        for b in content:
            f.write(b if b is not None else bytes(hp))
    return path


def hog_all(pool):
    """Takes every free huge page into a file of its own; returns it."""
    n = free_huge()
    path = pool.path("hog")
    make_huge(path, [b"\1" * pool.hp] * n, pool.hp)
    check(free_huge() == 0, "could not empty the pool: %d huge pages free" % free_huge())
    return path


def check_stats(st, size, nonzero, what):
    ram = st.get("ram", {})
    check(st.get("status") == "completed", "%s: status %r" % (what, st.get("status")))
    check(ram.get("total") == size, "%s: ram.total %s, expected %d" % (what, ram.get("total"),
                                                                        size))
    check(ram.get("normal") == nonzero,
          "%s: ram.normal %s, expected %d" % (what, ram.get("normal"), nonzero))


class Env:
    def __init__(self, pool):
        self.pool = pool
        self.hp = pool.hp
        self.tmp = scratch("shm")
        self.out = scratch("disk")
        self.content, self.nonzero = huge_content(KINDS, self.hp, 7)
        self.size = len(KINDS) * self.hp
        self.expect = expected_file(self.tmp, self.content, self.hp, "expect.ram")
        self.src = pool.path("src")
        make_huge(self.src, self.content, self.hp)
        self.data_huge = sum(1 for k in KINDS if k in ("sparse", "dense", "edge"))
        alloc = sum(1 for k in KINDS if k != "hole") * self.hp
        check(allocated(self.src) == alloc, "the source allocates %d bytes, expected %d" % (
            allocated(self.src), alloc))
        self.snap = os.path.join(self.out, "huge.snap")


def save_with_pool_empty(env):
    hog = hog_all(env.pool)
    try:
        rsvd = meminfo("HugePages_Rsvd")
        r = ok(snapsave("-o", env.snap, "--ram", "pc.ram=" + env.src, "--json"),
               "save from hugetlbfs with no free huge page")
        check_stats(parse_json(r, "save"), env.size, env.nonzero, "save --json")
        check(free_huge() == 0 and meminfo("HugePages_Rsvd") == rsvd,
              "the save took huge pages: %d free, %d reserved (was 0, %d)" % (
                  free_huge(), meminfo("HugePages_Rsvd"), rsvd))
        alloc = sum(1 for k in KINDS if k != "hole") * env.hp
        check(allocated(env.src) == alloc, "the save allocated source holes: %d bytes, "
              "expected %d" % (allocated(env.src), alloc))
    finally:
        os.unlink(hog)
    dest = os.path.join(env.tmp, "back.ram")
    ok(snaprestore(env.snap, "--ram", "pc.ram=" + dest), "restore into tmpfs")
    compare_files(env.expect, dest, "restored from a hugetlbfs save")
    os.unlink(dest)


def need_snap(env):
    if not os.path.exists(env.snap):
        ok(snapsave("-o", env.snap, "--ram", "pc.ram=" + env.src), "save from hugetlbfs")


def unlink_if(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def restore_into(env, fill):
    """Into a new file, which allocates only the huge pages with data, or
    over one whose every huge page holds `fill` (0xFF or zeros), which keeps
    every huge page: none goes back to the pool, where another guest could
    take it."""
    need_snap(env)
    dest = env.pool.path("new" if fill is None else "full%02x" % fill)
    what = "restore into a new hugetlbfs file" if fill is None else \
        "restore over a hugetlbfs file of 0x%02X" % fill
    try:
        if fill is not None:
            make_huge(dest, [bytes([fill]) * env.hp] * len(KINDS), env.hp)
        ok(snaprestore(env.snap, "--ram", "pc.ram=" + dest), what)
        compare_files(env.expect, dest, what)
        want = env.data_huge * env.hp if fill is None else len(KINDS) * env.hp
        check(allocated(dest) == want, "%s: the destination allocates %d bytes, expected %d"
              % (what, allocated(dest), want))
    finally:
        unlink_if(dest)  # its huge pages back to the pool for the next case


def restore_over_mixed(env):
    """Over a file whose huge pages are in turn stale, holes and zeros: the
    holes without data stay holes (a read through the mapping would take a
    huge page for each), the others stay allocated."""
    need_snap(env)
    dest = env.pool.path("mixed")
    what = "restore over hugetlbfs pages of 0xFF, holes and zeros"
    content = [[b"\xff" * env.hp, None, bytes(env.hp)][i % 3] for i in range(len(KINDS))]
    try:
        make_huge(dest, content, env.hp)
        ok(snaprestore(env.snap, "--ram", "pc.ram=" + dest), what)
        compare_files(env.expect, dest, what)
        want = sum(env.hp for i, k in enumerate(KINDS)
                   if content[i] is not None or k in ("sparse", "dense", "edge"))
        check(allocated(dest) == want, "%s: the destination allocates %d bytes, expected %d"
              % (what, allocated(dest), want))
    finally:
        unlink_if(dest)


def memfd_full(env):
    # QEMU's memory-backend-memfd,hugetlb=on with prealloc: every huge page
    # allocated, so the save may read it through the mapping
    kinds = ["zero", "dense", "sparse", "zero", "edge", "dense"]
    content, nonzero = huge_content(kinds, env.hp, 11)
    expect = expected_file(env.tmp, content, env.hp, "memfd-expect.ram")
    try:
        fd = os.memfd_create("guest-ram", os.MFD_HUGETLB)
    except OSError as e:
        raise Skip("memfd_create(MFD_HUGETLB): %s" % e)
    snap = os.path.join(env.out, "memfd.snap")
    try:
        fill_huge(fd, content, env.hp)
        r = ok(snapsave("-o", snap, "--ram", "pc.ram=fd:%d" % fd, "--json", pass_fds=(fd,)),
               "save from a hugetlb memfd")
        check_stats(parse_json(r, "save"), len(kinds) * env.hp, nonzero, "memfd save --json")
        dest = os.path.join(env.tmp, "memfd-back.ram")
        ok(snaprestore(snap, "--ram", "pc.ram=" + dest), "restore of the memfd save")
        compare_files(expect, dest, "restored from a hugetlb memfd")
        # and back into a new hugetlb memfd, which a manager has only sized
        out = os.memfd_create("restored", os.MFD_HUGETLB)
        try:
            os.ftruncate(out, len(kinds) * env.hp)
            ok(snaprestore(snap, "--ram", "pc.ram=fd:%d" % out, pass_fds=(out,)),
               "restore into a hugetlb memfd")
            got = os.path.join(env.tmp, "memfd-got.ram")
            m = mmap.mmap(out, len(kinds) * env.hp, mmap.MAP_SHARED, mmap.PROT_READ)
            try:
                write_bytes(got, m[:])
            finally:
                m.close()
            compare_files(expect, got, "hugetlb memfd destination")
        finally:
            os.close(out)
    finally:
        os.close(fd)


def errors(env):
    need_snap(env)
    # an offset inside a huge page cannot be mapped
    out = os.path.join(env.out, "bad.snap")
    r = snapsave("-o", out, "--ram", "pc.ram=%s,offset=4096,size=1M" % env.src)
    expect_error(r, 1, "pc.ram", "huge page", what="offset inside a huge page")
    check(not os.path.exists(out), "a failed save left %s" % out)
    # a block that is not a whole number of huge pages cannot size a new file
    small_src = os.path.join(env.tmp, "small.ram")
    write_bytes(small_src, b"\1" * MiB)
    small = os.path.join(env.out, "small.snap")
    ok(snapsave("-o", small, "--ram", "pc.ram=" + small_src), "save of 1 MiB")
    dest = env.pool.path("small")
    r = snaprestore(small, "--ram", "pc.ram=" + dest)
    expect_error(r, 1, "pc.ram", dest, "huge page size", what="1 MiB into hugetlbfs")
    check(not os.path.exists(dest), "a failed restore left the file it created: %s" % dest)
    # a pool that cannot hold the block
    hog = hog_all(env.pool)
    try:
        dest = env.pool.path("nomem")
        r = snaprestore(env.snap, "--ram", "pc.ram=" + dest)
        expect_error(r, 1, "pc.ram", "huge pages", what="restore with the pool empty")
        check(not os.path.exists(dest), "a failed restore left the file it created: %s" % dest)
    finally:
        os.unlink(hog)


def main():
    require_binaries()
    t = Cases("hugetlbfs")
    try:
        pool = Pool()
    except Skip as e:
        t.skip("hugetlbfs", str(e))
        t.finish()
    try:
        env = Env(pool)
        t.case("save a sparse hugetlbfs file with the pool empty", save_with_pool_empty, env)
        t.case("restore into a new hugetlbfs file", restore_into, env, None)
        t.case("restore over a stale hugetlbfs file keeps its pages", restore_into, env, 0xFF)
        t.case("restore over a zeroed hugetlbfs file keeps its pages", restore_into, env, 0)
        t.case("restore over hugetlbfs stale pages, holes and zeros", restore_over_mixed, env)
        t.case("save and restore a hugetlb memfd (fd:N)", memfd_full, env)
        t.case("hugetlbfs errors: offset, size, empty pool", errors, env)
    finally:
        pool.undo()
    t.finish()


if __name__ == "__main__":
    main()
