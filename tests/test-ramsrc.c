// SPDX-License-Identifier: MIT
/*
 * Unit tests for tools/common/ramsrc.c: size and block-spec parsing, and mapping of
 * save sources and restore destinations on real files in a temporary
 * directory.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <unistd.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "ramsrc.h"

/* ---- snap_parse_size ---- */

static void test_parse_size_ok(void **state)
{
	static const struct {
		const char *in;
		uint64_t want;
	} cases[] = {
		{ "0", 0 },
		{ "4096", 4096 },
		{ "4K", 4096 },
		{ "4k", 4096 },
		{ "4KiB", 4096 },
		{ "4kib", 4096 },
		{ "4KB", 4096 },
		{ "512M", 512ull << 20 },
		{ "1G", 1ull << 30 },
		{ "1GiB", 1ull << 30 },
		{ "2T", 2ull << 40 },
		{ "0x100000", 0x100000 },
		{ "0X1000", 0x1000 },
		{ "0x20M", 0x20ull << 20 }, /* as in the format doc's offset=0x20M */
		{ "100B", 100 },
		{ "18446744073709551615", UINT64_MAX },
		{ "16777215T", 16777215ull << 40 },
		{ "17179869183G", 17179869183ull << 30 },
		/* documented as decimal: a leading zero is not octal */
		{ "010", 10 },
		{ "08", 8 },
		{ "0100M", 100ull << 20 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t v = 12345;
		int r = snap_parse_size(cases[i].in, &v);

		if (r || v != cases[i].want)
			print_error("'%s': %d, %llu\n", cases[i].in, r, (unsigned long long)v);
		assert_int_equal(r, 0);
		assert_int_equal(v, cases[i].want);
	}
}

static void test_parse_size_bad(void **state)
{
	static const struct {
		const char *in;
		int want;
	} cases[] = {
		{ "", -EINVAL },
		{ "-1", -EINVAL },
		{ "+1", -EINVAL },
		{ "1X", -EINVAL },
		{ "K", -EINVAL },
		{ "1KK", -EINVAL },
		{ "1iB", -EINVAL },
		{ "1.5G", -EINVAL },
		{ "1 K", -EINVAL },
		{ "1K ", -EINVAL },
		{ " 1", -EINVAL },
		{ "\t1", -EINVAL },
		{ "\n1", -EINVAL },
		{ "0x", -EINVAL },
		{ "0x-1", -EINVAL },
		{ "0x 1", -EINVAL },
		{ "0xg", -EINVAL },
		{ "1E", -EINVAL },
		{ "99999999999T", -ERANGE },
		{ "16777216T", -ERANGE },
		{ "17179869184G", -ERANGE },
		{ "18446744073709551616", -ERANGE },
		{ "0x10000000000000000", -ERANGE },
		{ "99999999999999999999999", -ERANGE },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t v = 12345;
		int r = snap_parse_size(cases[i].in, &v);

		if (r != cases[i].want)
			print_error("'%s': %d, want %d\n", cases[i].in, r, cases[i].want);
		assert_int_equal(r, cases[i].want);
		assert_int_equal(v, 12345); /* untouched on failure */
	}
	assert_int_equal(snap_parse_size(NULL, &(uint64_t){ 0 }), -EINVAL);
}

/* ---- snap_ram_spec_parse ---- */

static void test_spec_parse_ok(void **state)
{
	struct snap_ram_spec s;
	char err[256] = "";

	(void)state;
	assert_int_equal(snap_ram_spec_parse("ram0=/dev/shm/vmram", &s, err, sizeof(err)), 0);
	assert_string_equal(s.name, "ram0");
	assert_string_equal(s.where, "/dev/shm/vmram");
	assert_false(s.has_size);
	assert_int_equal(s.size, 0);
	assert_int_equal(s.offset, 0);
	snap_ram_spec_clear(&s);
	assert_null(s.where);

	assert_int_equal(
		snap_ram_spec_parse("pc.ram=/tmp/x,size=256M,offset=0x1000", &s, err, sizeof(err)),
		0);
	assert_string_equal(s.name, "pc.ram");
	assert_string_equal(s.where, "/tmp/x");
	assert_true(s.has_size);
	assert_int_equal(s.size, 256ull << 20);
	assert_int_equal(s.offset, 0x1000);
	snap_ram_spec_clear(&s);

	/* Options in any order; names with slashes, colons and '@'. */
	assert_int_equal(snap_ram_spec_parse("/rom@etc/acpi/tables=fd:7,offset=8K,size=4096", &s,
					     err, sizeof(err)),
			 0);
	assert_string_equal(s.name, "/rom@etc/acpi/tables");
	assert_string_equal(s.where, "fd:7");
	assert_int_equal(s.size, 4096);
	assert_int_equal(s.offset, 8192);
	snap_ram_spec_clear(&s);

	/* The first '=' splits: a source may contain '='. */
	assert_int_equal(snap_ram_spec_parse("0000:00:01.0/vga.vram=/a=b", &s, err, sizeof(err)),
			 0);
	assert_string_equal(s.name, "0000:00:01.0/vga.vram");
	assert_string_equal(s.where, "/a=b");
	snap_ram_spec_clear(&s);

	/* 255-byte names are the maximum. */
	char arg[300];

	memset(arg, 'n', 255);
	strcpy(arg + 255, "=/p");
	assert_int_equal(snap_ram_spec_parse(arg, &s, err, sizeof(err)), 0);
	assert_int_equal(strlen(s.name), 255);
	snap_ram_spec_clear(&s);
}

static void test_spec_parse_bad(void **state)
{
	static const char *const bad[] = {
		"ram0",			  /* no '=' */
		"",			  /* nothing */
		"=/path",		  /* empty name */
		"ram0=",		  /* empty source */
		"ram0=,size=4096",	  /* empty source with options */
		"ram0=,",		  /* empty source, empty option */
		"ram0=/p,size=1000",	  /* not a page multiple */
		"ram0=/p,size=0",	  /* zero */
		"ram0=/p,size=",	  /* no value */
		"ram0=/p,size=4Q",	  /* bad value */
		"ram0=/p,offset=100",	  /* offset not a page multiple */
		"ram0=/p,offset=-4096",	  /* negative */
		"ram0=/p,foo=1",	  /* unknown option */
		"ram0=/p,sizes=4096",	  /* unknown option with a known prefix */
		"ram0=/p,size",		  /* option without '=' */
		"ram0=/p,size=99999999T", /* overflow */
	};
	struct snap_ram_spec s;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char err[256] = "";
		int r;

		memset(&s, 0x5a, sizeof(s));
		r = snap_ram_spec_parse(bad[i], &s, err, sizeof(err));
		if (r != -EINVAL)
			print_error("'%s': %d\n", bad[i], r);
		assert_int_equal(r, -EINVAL);
		assert_true(err[0] != 0);
		assert_int_equal(s.name[0], 0x5a); /* untouched on failure */
	}

	/* 256-byte name. */
	char arg[300], err[256] = "";

	memset(arg, 'n', 256);
	strcpy(arg + 256, "=/p");
	assert_int_equal(snap_ram_spec_parse(arg, &s, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "255"));
}

/* ---- mapping ---- */

struct tmp {
	char dir[PATH_MAX / 2];
	char path[PATH_MAX];
};

static int setup_tmp(void **state)
{
	const char *base = getenv("TMPDIR");
	struct tmp *t = calloc(1, sizeof(*t));

	if (!t)
		return -1;
	snprintf(t->dir, sizeof(t->dir), "%s/test-ramsrc.XXXXXX", base && *base ? base : "/tmp");
	if (!mkdtemp(t->dir)) {
		free(t);
		return -1;
	}
	*state = t;
	return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int teardown_tmp(void **state)
{
	struct tmp *t = *state;
	int r = nftw(t->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);

	free(t);
	return r;
}

static const char *tpath(struct tmp *t, const char *name)
{
	snprintf(t->path, sizeof(t->path), "%s/%s", t->dir, name);
	return t->path;
}

static uint8_t pattern(uint64_t off)
{
	return (uint8_t)((off / 4096) * 16 + off % 251 + 1);
}

/* Writes `len` bytes of pattern() to a new file. */
static void write_file(const char *path, uint64_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	uint8_t buf[4096];

	assert_true(fd >= 0);
	for (uint64_t off = 0; off < len;) {
		size_t n = len - off < sizeof(buf) ? (size_t)(len - off) : sizeof(buf);

		for (size_t i = 0; i < n; i++)
			buf[i] = pattern(off + i);
		assert_int_equal(write(fd, buf, n), (ssize_t)n);
		off += n;
	}
	assert_int_equal(close(fd), 0);
}

static uint64_t file_size(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return (uint64_t)st.st_size;
}

static struct snap_ram_spec spec(const char *where, bool has_size, uint64_t size, uint64_t offset)
{
	struct snap_ram_spec s = { .size = size, .offset = offset, .has_size = has_size };

	snprintf(s.name, sizeof(s.name), "blk");
	s.where = (char *)where;
	return s;
}

static void check_pattern(const struct snap_ram_map *m, uint64_t file_off)
{
	const uint8_t *p = m->addr;

	for (uint64_t i = 0; i < m->length; i++)
		if (p[i] != pattern(file_off + i))
			fail_msg("byte %llu: 0x%02x", (unsigned long long)i, p[i]);
}

static void test_map_source(void **state)
{
	struct tmp *t = *state;
	struct snap_ram_map m;
	struct snap_ram_spec s;
	char err[512] = "";
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s", tpath(t, "src"));
	write_file(path, 4 * 4096);

	/* Whole file by default. */
	s = spec(path, false, 0, 0);
	assert_int_equal(snap_ram_map_source(&s, &m, err, sizeof(err)), 0);
	assert_int_equal(m.length, 4 * 4096);
	assert_int_equal(m.offset, 0);
	assert_true(m.fd >= 0);
	assert_true(fcntl(m.fd, F_GETFD) & FD_CLOEXEC);
	assert_int_equal(fcntl(m.fd, F_GETFL) & O_ACCMODE, O_RDONLY);
	check_pattern(&m, 0);
	snap_ram_unmap(&m);
	assert_null(m.map_base);
	snap_ram_unmap(&m); /* twice is harmless */

	/* A size and an offset pick one page. */
	s = spec(path, true, 4096, 8192);
	assert_int_equal(snap_ram_map_source(&s, &m, err, sizeof(err)), 0);
	assert_int_equal(m.length, 4096);
	assert_int_equal(m.offset, 8192);
	check_pattern(&m, 8192);
	snap_ram_unmap(&m);

	/* Offset only: the rest of the file. */
	s = spec(path, false, 0, 4096);
	assert_int_equal(snap_ram_map_source(&s, &m, err, sizeof(err)), 0);
	assert_int_equal(m.length, 3 * 4096);
	check_pattern(&m, 4096);
	snap_ram_unmap(&m);

	/* Exactly up to the end. */
	s = spec(path, true, 8192, 8192);
	assert_int_equal(snap_ram_map_source(&s, &m, err, sizeof(err)), 0);
	snap_ram_unmap(&m);

	/* fd:N, which stays open. */
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char where[32];

	assert_true(fd >= 0);
	snprintf(where, sizeof(where), "fd:%d", fd);
	s = spec(where, true, 4096, 4096);
	assert_int_equal(snap_ram_map_source(&s, &m, err, sizeof(err)), 0);
	assert_int_not_equal(m.fd, fd);
	check_pattern(&m, 4096);
	snap_ram_unmap(&m);
	assert_true(fcntl(fd, F_GETFD) >= 0);
	close(fd);
}

static void test_map_source_errors(void **state)
{
	struct tmp *t = *state;
	struct snap_ram_map m;
	struct snap_ram_spec s;
	char err[512];
	char path[PATH_MAX];

	memset(&m, 0, sizeof(m));
	/* Missing file. */
	s = spec(tpath(t, "missing"), false, 0, 0);
	err[0] = 0;
	assert_int_equal(snap_ram_map_source(&s, &m, err, sizeof(err)), -ENOENT);
	assert_true(err[0] != 0);

	/* Size not a multiple of 4096 (by default the file's own size). */
	snprintf(path, sizeof(path), "%s", tpath(t, "odd"));
	write_file(path, 5000);
	s = spec(path, false, 0, 0);
	err[0] = 0;
	assert_int_equal(snap_ram_map_source(&s, &m, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "4096"));

	/* Empty file. */
	snprintf(path, sizeof(path), "%s", tpath(t, "empty"));
	write_file(path, 0);
	s = spec(path, false, 0, 0);
	assert_int_equal(snap_ram_map_source(&s, &m, err, sizeof(err)), -EINVAL);

	/* Range past the end: with a size, and with an offset alone. */
	snprintf(path, sizeof(path), "%s", tpath(t, "four"));
	write_file(path, 4 * 4096);
	s = spec(path, true, 8192, 12288);
	err[0] = 0;
	assert_int_equal(snap_ram_map_source(&s, &m, err, sizeof(err)), -EINVAL);
	assert_true(err[0] != 0);
	s = spec(path, false, 0, 5 * 4096);
	assert_int_equal(snap_ram_map_source(&s, &m, err, sizeof(err)), -EINVAL);
	s = spec(path, false, 0, 4 * 4096); /* nothing left */
	assert_int_equal(snap_ram_map_source(&s, &m, err, sizeof(err)), -EINVAL);
	s = spec(path, true, 4096, UINT64_MAX - 4095); /* wraps */
	assert_int_equal(snap_ram_map_source(&s, &m, err, sizeof(err)), -EINVAL);

	/* A directory. */
	s = spec(t->dir, false, 0, 0);
	err[0] = 0;
	assert_int_equal(snap_ram_map_source(&s, &m, err, sizeof(err)), -EINVAL);
	assert_true(err[0] != 0);

	/* fd:N not open, or open for writing only. */
	s = spec("fd:987654", false, 0, 0);
	assert_true(snap_ram_map_source(&s, &m, err, sizeof(err)) < 0);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	char where[32];

	assert_true(fd >= 0);
	snprintf(where, sizeof(where), "fd:%d", fd);
	s = spec(where, false, 0, 0);
	assert_true(snap_ram_map_source(&s, &m, err, sizeof(err)) < 0);
	close(fd);

	/* Nothing handed out on failure. */
	assert_null(m.map_base);
}

static void test_map_dest(void **state)
{
	struct tmp *t = *state;
	struct snap_ram_map m;
	struct snap_ram_spec s;
	char err[512] = "";
	char path[PATH_MAX];

	/* A new file is created at the block length, and zero. */
	snprintf(path, sizeof(path), "%s", tpath(t, "new"));
	s = spec(path, false, 0, 0);
	assert_int_equal(snap_ram_map_dest(&s, -1, 3 * 4096, &m, err, sizeof(err)), 0);
	assert_true(m.zeroed);
	assert_int_equal(m.length, 3 * 4096);
	assert_int_equal(file_size(path), 3 * 4096);
	assert_true(fcntl(m.fd, F_GETFD) & FD_CLOEXEC);
	for (uint64_t i = 0; i < m.length; i++)
		assert_int_equal(((uint8_t *)m.addr)[i], 0);
	/* Writes reach the file (a shared mapping). */
	memset((uint8_t *)m.addr + 4096, 0xab, 4096);
	snap_ram_unmap(&m);
	{
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		uint8_t b[2];

		assert_true(fd >= 0);
		assert_int_equal(pread(fd, b, 2, 4095), 2);
		assert_int_equal(b[0], 0);
		assert_int_equal(b[1], 0xab);
		close(fd);
	}
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);

	/* An existing empty file is grown, and counts as zero. */
	snprintf(path, sizeof(path), "%s", tpath(t, "empty"));
	write_file(path, 0);
	s = spec(path, false, 0, 0);
	assert_int_equal(snap_ram_map_dest(&s, -1, 2 * 4096, &m, err, sizeof(err)), 0);
	assert_true(m.zeroed);
	assert_int_equal(file_size(path), 2 * 4096);
	snap_ram_unmap(&m);

	/* An existing file with data: grown, data kept, not zeroed. */
	snprintf(path, sizeof(path), "%s", tpath(t, "data"));
	write_file(path, 4096);
	s = spec(path, false, 0, 0);
	assert_int_equal(snap_ram_map_dest(&s, -1, 2 * 4096, &m, err, sizeof(err)), 0);
	assert_false(m.zeroed);
	assert_int_equal(file_size(path), 2 * 4096);
	for (uint64_t i = 0; i < 4096; i++)
		assert_int_equal(((uint8_t *)m.addr)[i], pattern(i));
	for (uint64_t i = 4096; i < 8192; i++)
		assert_int_equal(((uint8_t *)m.addr)[i], 0);
	snap_ram_unmap(&m);

	/* Exactly the right size: untouched. */
	assert_int_equal(snap_ram_map_dest(&s, -1, 2 * 4096, &m, err, sizeof(err)), 0);
	assert_false(m.zeroed);
	assert_int_equal(file_size(path), 2 * 4096);
	snap_ram_unmap(&m);

	/* With an offset: the part past the old end is zero. */
	s = spec(path, false, 0, 2 * 4096);
	assert_int_equal(snap_ram_map_dest(&s, -1, 4096, &m, err, sizeof(err)), 0);
	assert_true(m.zeroed);
	assert_int_equal(m.offset, 2 * 4096);
	assert_int_equal(file_size(path), 3 * 4096);
	snap_ram_unmap(&m);

	/* A sized file of holes (a manager's fresh memfd) is zero where it has no data. */
	snprintf(path, sizeof(path), "%s", tpath(t, "holes"));
	write_file(path, 4096);
	assert_int_equal(truncate(path, 4 * 4096), 0);
	s = spec(path, false, 0, 2 * 4096);
	assert_int_equal(snap_ram_map_dest(&s, -1, 2 * 4096, &m, err, sizeof(err)), 0);
	assert_true(m.zeroed);
	assert_int_equal(file_size(path), 4 * 4096);
	snap_ram_unmap(&m);
	s = spec(path, false, 0, 0);
	assert_int_equal(snap_ram_map_dest(&s, -1, 4 * 4096, &m, err, sizeof(err)), 0);
	assert_false(m.zeroed);
	snap_ram_unmap(&m);
	snprintf(path, sizeof(path), "%s", tpath(t, "data"));

	/* size= must match the block length. */
	s = spec(path, true, 4096, 0);
	err[0] = 0;
	assert_int_equal(snap_ram_map_dest(&s, -1, 2 * 4096, &m, err, sizeof(err)), -EINVAL);
	assert_true(err[0] != 0);
	s = spec(path, true, 2 * 4096, 0);
	assert_int_equal(snap_ram_map_dest(&s, -1, 2 * 4096, &m, err, sizeof(err)), 0);
	snap_ram_unmap(&m);

	/* A directory, and a path in a missing directory. */
	s = spec(t->dir, false, 0, 0);
	assert_true(snap_ram_map_dest(&s, -1, 4096, &m, err, sizeof(err)) < 0);
	s = spec(tpath(t, "nodir/x"), false, 0, 0);
	assert_int_equal(snap_ram_map_dest(&s, -1, 4096, &m, err, sizeof(err)), -ENOENT);
}

/*
 * Two blocks in one file at different offsets (one backing file for several
 * blocks): mapping the lower block must not cut the file short and destroy
 * the upper one.
 */
static void test_map_dest_shared_file(void **state)
{
	struct tmp *t = *state;
	struct snap_ram_map hi, lo;
	struct snap_ram_spec s;
	char err[512] = "";
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s", tpath(t, "shared"));
	s = spec(path, false, 0, 4 * 4096);
	assert_int_equal(snap_ram_map_dest(&s, -1, 4096, &hi, err, sizeof(err)), 0);
	assert_true(hi.zeroed);
	assert_int_equal(file_size(path), 5 * 4096);
	memset(hi.addr, 0xcd, 4096);

	s = spec(path, false, 0, 0);
	assert_int_equal(snap_ram_map_dest(&s, -1, 2 * 4096, &lo, err, sizeof(err)), 0);
	/* The file has data, but only past this block: its range is a hole. */
	assert_true(lo.zeroed);
	assert_int_equal(file_size(path), 5 * 4096);
	memset(lo.addr, 0x11, 2 * 4096);
	/* Still mapped and still holding its data (a cut file would SIGBUS here). */
	for (size_t i = 0; i < 4096; i++)
		assert_int_equal(((uint8_t *)hi.addr)[i], 0xcd);
	snap_ram_unmap(&lo);
	snap_ram_unmap(&hi);
	assert_int_equal(file_size(path), 5 * 4096);
}

static void test_map_dest_fd(void **state)
{
	struct tmp *t = *state;
	struct snap_ram_map m;
	struct snap_ram_spec s;
	char err[512] = "", where[32];
	char path[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s", tpath(t, "byfd"));
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	snprintf(where, sizeof(where), "fd:%d", fd);
	s = spec(where, false, 0, 0);
	assert_int_equal(snap_ram_map_dest(&s, -1, 2 * 4096, &m, err, sizeof(err)), 0);
	assert_true(m.zeroed);
	assert_int_not_equal(m.fd, fd);
	memset(m.addr, 0x42, 2 * 4096);
	snap_ram_unmap(&m);
	/* The caller's descriptor is still open and sees the data. */
	uint8_t b = 0;

	assert_int_equal(pread(fd, &b, 1, 8191), 1);
	assert_int_equal(b, 0x42);

	/* Now it holds data: not zeroed. */
	assert_int_equal(snap_ram_map_dest(&s, -1, 2 * 4096, &m, err, sizeof(err)), 0);
	assert_false(m.zeroed);
	snap_ram_unmap(&m);
	close(fd);

	/* A read-only descriptor cannot be a destination. */
	fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	snprintf(where, sizeof(where), "fd:%d", fd);
	s = spec(where, false, 0, 0);
	assert_true(snap_ram_map_dest(&s, -1, 2 * 4096, &m, err, sizeof(err)) < 0);
	close(fd);

	/* Not a descriptor number. */
	s = spec("fd:x", false, 0, 0);
	assert_int_equal(snap_ram_map_dest(&s, -1, 4096, &m, err, sizeof(err)), -EINVAL);
}

/* Asserts that spec s refuses to map in dirfd with an error naming why. */
static void refused_in_dir(const char *where, int dirfd, const char *why)
{
	struct snap_ram_spec s = spec(where, false, 0, 0);
	struct snap_ram_map m;
	char err[512] = "";

	int r = snap_ram_map_dest(&s, dirfd, 4096, &m, err, sizeof(err));

	if (r != -EPERM || !strstr(err, why) || !strstr(err, where))
		print_error("'%s': %d %s\n", where, r, err);
	assert_int_equal(r, -EPERM);
	assert_non_null(strstr(err, why));
	assert_non_null(strstr(err, where));
}

/*
 * In a directory (snaprestore --all): created with O_EXCL and reported as
 * created, this user's own file reused, anything else refused untouched.
 */
static void test_map_dest_in_dir(void **state)
{
	struct tmp *t = *state;
	struct snap_ram_map m;
	struct snap_ram_spec s;
	char err[512] = "", outside[PATH_MAX], where[PATH_MAX];
	struct stat st;
	int dirfd = open(t->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	assert_true(dirfd >= 0);
	snprintf(where, sizeof(where), "%s", tpath(t, "blk"));
	s = spec(where, false, 0, 0);
	assert_int_equal(snap_ram_map_dest(&s, dirfd, 2 * 4096, &m, err, sizeof(err)), 0);
	assert_true(m.created);
	assert_int_equal(m.dirfd, dirfd);
	assert_false(m.own_dirfd);
	assert_string_equal(m.name, "blk");
	assert_int_equal(fstat(m.fd, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	snap_ram_unmap(&m);
	/* The caller's directory stays open. */
	assert_true(fcntl(dirfd, F_GETFD) >= 0);
	assert_int_equal(snap_ram_map_dest(&s, dirfd, 2 * 4096, &m, err, sizeof(err)), 0);
	assert_false(m.created);
	snap_ram_unmap(&m);

	/* A symlink, to a file or to nowhere, is never followed. */
	snprintf(outside, sizeof(outside), "%s", tpath(t, "outside"));
	write_file(outside, 4096);
	assert_int_equal(symlink(outside, tpath(t, "link")), 0);
	snprintf(where, sizeof(where), "%s", tpath(t, "link"));
	refused_in_dir(where, dirfd, "symbolic link");
	assert_int_equal(file_size(outside), 4096);
	snprintf(outside, sizeof(outside), "%s", tpath(t, "nowhere"));
	snprintf(where, sizeof(where), "%s", tpath(t, "dangling"));
	assert_int_equal(symlink(outside, where), 0);
	refused_in_dir(where, dirfd, "symbolic link");
	assert_int_equal(access(outside, F_OK), -1);

	/* A second link to a file, a FIFO, another user's file. */
	snprintf(outside, sizeof(outside), "%s", tpath(t, "outside"));
	assert_int_equal(link(outside, tpath(t, "hard")), 0);
	snprintf(where, sizeof(where), "%s", tpath(t, "hard"));
	refused_in_dir(where, dirfd, "2 hard links");
	assert_int_equal(mkfifo(tpath(t, "fifo"), 0600), 0);
	snprintf(where, sizeof(where), "%s", tpath(t, "fifo"));
	refused_in_dir(where, dirfd, "not a regular file");
	if (geteuid() == 0) {
		snprintf(where, sizeof(where), "%s", tpath(t, "foreign"));
		write_file(where, 4096);
		assert_int_equal(chown(where, 65534, 65534), 0);
		refused_in_dir(where, dirfd, "owned by uid 65534");
		assert_int_equal(file_size(where), 4096);
	}

	/* Created, then refused (size= does not match after the open): removed again. */
	snprintf(where, sizeof(where), "%s", tpath(t, "toolarge"));
	s = spec(where, false, 0, 1ull << 62);
	assert_true(snap_ram_map_dest(&s, dirfd, 1ull << 62, &m, err, sizeof(err)) < 0);
	assert_int_equal(access(where, F_OK), -1);
	close(dirfd);
}

/* A path the user named: O_EXCL decides "created"; its directory comes along for removal. */
static void test_map_dest_created(void **state)
{
	struct tmp *t = *state;
	struct snap_ram_map m;
	struct snap_ram_spec s;
	char err[512] = "", path[PATH_MAX], target[PATH_MAX];

	snprintf(path, sizeof(path), "%s", tpath(t, "named"));
	s = spec(path, false, 0, 0);
	assert_int_equal(snap_ram_map_dest(&s, -1, 4096, &m, err, sizeof(err)), 0);
	assert_true(m.created);
	assert_true(m.own_dirfd);
	assert_string_equal(m.name, "named");
	assert_int_equal(faccessat(m.dirfd, "named", F_OK, 0), 0);
	snap_ram_unmap(&m);
	assert_int_equal(snap_ram_map_dest(&s, -1, 4096, &m, err, sizeof(err)), 0);
	assert_false(m.created);
	snap_ram_unmap(&m);

	/* Through a symlink the user named: its existing target is used, not created. */
	snprintf(target, sizeof(target), "%s", path);
	snprintf(path, sizeof(path), "%s", tpath(t, "named-link"));
	assert_int_equal(symlink(target, path), 0);
	s = spec(path, false, 0, 0);
	assert_int_equal(snap_ram_map_dest(&s, -1, 4096, &m, err, sizeof(err)), 0);
	assert_false(m.created);
	snap_ram_unmap(&m);
	/* A dangling one creates nothing where it points. */
	snprintf(target, sizeof(target), "%s", tpath(t, "not-there"));
	snprintf(path, sizeof(path), "%s", tpath(t, "dangling-named"));
	assert_int_equal(symlink(target, path), 0);
	s = spec(path, false, 0, 0);
	assert_int_equal(snap_ram_map_dest(&s, -1, 4096, &m, err, sizeof(err)), -ENOENT);
	assert_int_equal(access(target, F_OK), -1);
}

int main(void)
{
	const struct CMUnitTest ramsrc_tests[] = {
		cmocka_unit_test(test_parse_size_ok),
		cmocka_unit_test(test_parse_size_bad),
		cmocka_unit_test(test_spec_parse_ok),
		cmocka_unit_test(test_spec_parse_bad),
		cmocka_unit_test_setup_teardown(test_map_source, setup_tmp, teardown_tmp),
		cmocka_unit_test_setup_teardown(test_map_source_errors, setup_tmp, teardown_tmp),
		cmocka_unit_test_setup_teardown(test_map_dest, setup_tmp, teardown_tmp),
		cmocka_unit_test_setup_teardown(test_map_dest_shared_file, setup_tmp, teardown_tmp),
		cmocka_unit_test_setup_teardown(test_map_dest_fd, setup_tmp, teardown_tmp),
		cmocka_unit_test_setup_teardown(test_map_dest_in_dir, setup_tmp, teardown_tmp),
		cmocka_unit_test_setup_teardown(test_map_dest_created, setup_tmp, teardown_tmp),
	};

	return cmocka_run_group_tests_name("ramsrc", ramsrc_tests, NULL, NULL);
}
