// SPDX-License-Identifier: MIT
/*
 * Engine tests, run once for every compiled-in engine: byte-exact round trips
 * at several depths (buffered and O_DIRECT), the done callback, end of file,
 * the O_DIRECT fallback, sticky errors and the init-failure test hook.
 */
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#define TEST_DIR   "/var/tmp"
#define ALIGN	   4096
#define FILE_SIZE  ((size_t)4 << 20)
#define MAX_CHUNKS 4096

struct chunk {
	uint64_t off;
	size_t len;
};

/* What the done callback must see: every chunk once, as it was submitted. */
struct tracker {
	const uint8_t *base; /* chunk i transfers base[off, off + len) */
	const struct chunk *chunks;
	size_t n;
	bool write;
	unsigned calls[MAX_CHUNKS];
	unsigned bad; /* callbacks with a wrong buf/off/len/res/cookie */
};

static void track_done(void *arg, const struct snap_io_req *r)
{
	struct tracker *t = arg;
	size_t i = (size_t)(uintptr_t)r->cookie;

	if (i >= t->n || r->write != t->write || r->off != t->chunks[i].off ||
	    r->len != t->chunks[i].len || r->buf != t->base + r->off || r->res != (long)r->len) {
		t->bad++;
		return;
	}
	t->calls[i]++;
}

static void tracker_init(struct tracker *t, const uint8_t *base, const struct chunk *c, size_t n,
			 bool write)
{
	memset(t, 0, sizeof(*t));
	t->base = base;
	t->chunks = c;
	t->n = n;
	t->write = write;
}

static void assert_each_done_once(const struct tracker *t)
{
	assert_int_equal(t->bad, 0);
	for (size_t i = 0; i < t->n; i++)
		assert_int_equal(t->calls[i], 1);
}

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64: deterministic, so a failure reproduces. */
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void fill_pattern(uint8_t *buf, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)(rng_next(&seed) >> 32);
}

/* Returns the first differing offset, or -1: assert_int_equal() then names it. */
static long first_diff(const uint8_t *a, const uint8_t *b, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (a[i] != b[i])
			return (long)i;
	return -1;
}

/*
 * Cuts [0, size) into chunks of mixed sizes (multiples of `unit`, mostly
 * up to 8 KiB, some up to 128 KiB or 1 MiB) and shuffles them: positional I/O must not care.
 */
static size_t make_chunks(struct chunk *c, size_t size, size_t unit, uint64_t seed)
{
	size_t n = 0;
	uint64_t off = 0;

	while (off < size) {
		uint64_t x = rng_next(&seed), y = rng_next(&seed);
		size_t len = x % 32 == 0  ? y % (1 << 20) + 1
			     : x % 8 == 0 ? y % (128 << 10) + 1
					  : y % (8 << 10) + 1;

		len = (len + unit - 1) / unit * unit;
		if (len > size - off)
			len = size - off;
		assert_true(n < MAX_CHUNKS);
		c[n++] = (struct chunk){ .off = off, .len = len };
		off += len;
	}
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = rng_next(&seed) % (i + 1);
		struct chunk t = c[i];

		c[i] = c[j];
		c[j] = t;
	}
	return n;
}

/* Opens a fresh, already unlinked file under TEST_DIR; *direct_fd is -1 if O_DIRECT is refused. */
static int open_test_file(int *direct_fd)
{
	char path[] = TEST_DIR "/snapmr-test-engine-XXXXXX";
	int fd = mkostemp(path, O_CLOEXEC);

	assert_true(fd >= 0);
	if (direct_fd)
		*direct_fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
	assert_int_equal(unlink(path), 0);
	return fd;
}

static void *aligned_buf(size_t len)
{
	void *p = NULL;

	assert_int_equal(posix_memalign(&p, ALIGN, len), 0);
	return p;
}

static struct snap_io_engine *engine_new(const struct snap_io_ops *ops, unsigned depth,
					 struct tracker *t)
{
	struct snap_io_engine *e = NULL;
	int r = snap_io_engine_new(ops, depth, t ? track_done : NULL, t, &e);

	if (r < 0) {
		print_message("%s: init failed: %s, skipping\n", ops->name, strerror(-r));
		skip();
	}
	return e;
}

static int rw_chunks(struct snap_io_engine *e, int fd, int alt_fd, bool write, uint8_t *base,
		     const struct chunk *c, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int r = snap_io_rw(e, fd, alt_fd, write, base + c[i].off, c[i].off, c[i].len,
				   (void *)(uintptr_t)i);

		if (r < 0)
			return r;
	}
	return snap_io_drain(e);
}

/* Writes a pattern through the engine, reads it back through it, compares. */
static void roundtrip(const struct snap_io_ops *ops, int fd, unsigned depth, size_t size,
		      size_t unit, bool aligned, uint64_t seed)
{
	uint8_t *src = aligned ? aligned_buf(size) : malloc(size);
	uint8_t *dst = aligned ? aligned_buf(size) : malloc(size);
	static struct chunk c[MAX_CHUNKS];
	static struct tracker t;
	struct snap_io_engine *e;
	size_t n;

	assert_non_null(src);
	assert_non_null(dst);
	fill_pattern(src, size, seed);

	n = make_chunks(c, size, unit, seed);
	tracker_init(&t, src, c, n, true);
	e = engine_new(ops, depth, &t);
	assert_int_equal(rw_chunks(e, fd, -1, true, src, c, n), 0);
	assert_false(e->fell_back);
	assert_int_equal(e->inflight, 0);
	snap_io_engine_free(e);
	assert_each_done_once(&t);

	/* Read back with a different cut. */
	memset(dst, 0, size);
	n = make_chunks(c, size, unit, seed * 31 + 7);
	tracker_init(&t, dst, c, n, false);
	e = engine_new(ops, depth, &t);
	assert_int_equal(rw_chunks(e, fd, -1, false, dst, c, n), 0);
	snap_io_engine_free(e);
	assert_each_done_once(&t);
	assert_int_equal(first_diff(src, dst, size), -1);

	free(src);
	free(dst);
}

static void test_roundtrip_buffered(void **state)
{
	const struct snap_io_ops *ops = *state;
	static const unsigned depths[] = { 1, 3, 16, 64 };

	for (size_t i = 0; i < sizeof(depths) / sizeof(depths[0]); i++) {
		int fd = open_test_file(NULL);
		struct stat st;

		/* An odd size, so the last request ends mid-page. */
		roundtrip(ops, fd, depths[i], FILE_SIZE + 12345, 1, false, 0x9e3779b97f4a7c15 + i);
		assert_int_equal(fstat(fd, &st), 0);
		assert_int_equal(st.st_size, FILE_SIZE + 12345);
		close(fd);
	}
}

/* Skips the test unless direct_fd is open and takes an aligned O_DIRECT write. */
static void require_direct(int direct_fd)
{
	void *page;
	ssize_t n;

	if (direct_fd < 0) {
		print_message("O_DIRECT open refused under " TEST_DIR ", skipping\n");
		skip();
	}
	page = aligned_buf(ALIGN);
	memset(page, 0, ALIGN);
	n = pwrite(direct_fd, page, ALIGN, 0);
	free(page);
	if (n != ALIGN) {
		print_message("aligned O_DIRECT write refused under " TEST_DIR ": %s, skipping\n",
			      n < 0 ? strerror(errno) : "short write");
		skip();
	}
}

static void test_roundtrip_direct(void **state)
{
	const struct snap_io_ops *ops = *state;
	static const unsigned depths[] = { 1, 8, 32 };

	for (size_t i = 0; i < sizeof(depths) / sizeof(depths[0]); i++) {
		int direct_fd, fd = open_test_file(&direct_fd);

		require_direct(direct_fd);
		roundtrip(ops, direct_fd, depths[i], FILE_SIZE, ALIGN, true, 0x1234567 + i);
		close(direct_fd);
		close(fd);
	}
}

static void test_read_past_eof(void **state)
{
	const struct snap_io_ops *ops = *state;
	int fd = open_test_file(NULL);
	static struct tracker t;
	struct snap_io_engine *e;
	uint8_t buf[8192];
	uint8_t data[10000];
	int r;

	fill_pattern(data, sizeof(data), 42);
	assert_int_equal(snap_pwrite_all(fd, data, sizeof(data), 0), 0);

	/* Ends 6384 bytes past EOF: a short read, then nothing. */
	tracker_init(&t, NULL, NULL, 0, false); /* any callback counts as bad */
	e = engine_new(ops, 4, &t);
	/* A synchronous engine reports at once, an asynchronous one when reaped. */
	r = snap_io_rw(e, fd, -1, false, buf, 8192, sizeof(buf), NULL);
	assert_true(r == 0 || r == -ENODATA);
	assert_int_equal(snap_io_drain(e), -ENODATA);
	assert_int_equal(first_diff(buf, data + 8192, sizeof(data) - 8192), -1);
	snap_io_engine_free(e);

	/* Starts past EOF. */
	e = engine_new(ops, 4, &t);
	snap_io_rw(e, fd, -1, false, buf, 20000, 100, NULL);
	assert_int_equal(snap_io_drain(e), -ENODATA);
	snap_io_engine_free(e);

	/* Ends exactly at EOF: fine. */
	e = engine_new(ops, 4, NULL);
	assert_int_equal(snap_io_rw(e, fd, -1, false, buf, 10000 - 100, 100, NULL), 0);
	assert_int_equal(snap_io_drain(e), 0);
	snap_io_engine_free(e);

	assert_int_equal(t.bad, 0); /* the failed reads never reached the callback */
	close(fd);
}

/*
 * On ext4/xfs a misaligned buffer on an O_DIRECT fd gets EINVAL, which is
 * what a file system refusing O_DIRECT looks like to the core.
 */
static void test_direct_fallback(void **state)
{
	const struct snap_io_ops *ops = *state;
	int direct_fd, fd = open_test_file(&direct_fd);
	size_t size = (size_t)1 << 20;
	uint8_t *mem = malloc(size + 1), *src = mem + 1, *dst = malloc(size);
	static struct chunk c[MAX_CHUNKS];
	static struct tracker t;
	struct snap_io_engine *e;
	size_t n;

	assert_non_null(mem);
	assert_non_null(dst);
	require_direct(direct_fd);
	if (pwrite(direct_fd, src, 512, 1) >= 0 || errno != EINVAL) {
		print_message("misaligned O_DIRECT I/O is not refused here, skipping\n");
		skip();
	}
	fill_pattern(src, size, 77);
	n = make_chunks(c, size, 1, 77);

	/* Without a buffered fd the refusal is an error. */
	e = engine_new(ops, 8, NULL);
	snap_io_rw(e, direct_fd, -1, true, src, 1, 4096, NULL);
	assert_int_equal(snap_io_drain(e), -EINVAL);
	assert_false(e->fell_back);
	snap_io_engine_free(e);

	/* With one, every request completes there. */
	tracker_init(&t, src, c, n, true);
	e = engine_new(ops, 8, &t);
	assert_int_equal(rw_chunks(e, direct_fd, fd, true, src, c, n), 0);
	assert_true(e->fell_back);
	snap_io_engine_free(e);
	assert_each_done_once(&t);
	assert_int_equal(snap_pread_full(fd, dst, size, 0), (long)size);
	assert_int_equal(first_diff(src, dst, size), -1);

	free(mem);
	free(dst);
	close(direct_fd);
	close(fd);
}

static void test_errors_sticky(void **state)
{
	const struct snap_io_ops *ops = *state;
	int fd = open_test_file(NULL);
	int ro_fd, r;
	static struct tracker t;
	struct snap_io_engine *e;
	char path[64];
	uint8_t buf[4096];
	struct stat st;

	memset(buf, 0xa5, sizeof(buf));
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ro_fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(ro_fd >= 0);

	tracker_init(&t, buf, NULL, 0, true);
	e = engine_new(ops, 4, &t);
	/* A write on a read-only fd fails (now or when reaped) ... */
	r = snap_io_rw(e, ro_fd, -1, true, buf, 0, sizeof(buf), NULL);
	assert_true(r == 0 || r == -EBADF);
	assert_int_equal(snap_io_drain(e), -EBADF);
	/* ... and from then on nothing new starts, even on a good fd. */
	assert_int_equal(snap_io_rw(e, fd, -1, true, buf, 0, sizeof(buf), NULL), -EBADF);
	assert_int_equal(snap_io_rw(e, fd, -1, true, buf, 4096, sizeof(buf), NULL), -EBADF);
	assert_int_equal(snap_io_drain(e), -EBADF);
	assert_int_equal(e->inflight, 0);
	snap_io_engine_free(e);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, 0);
	assert_int_equal(t.bad, 0);

	/* An error in the middle of a batch: the good requests around it do not hide it. */
	e = engine_new(ops, 16, NULL);
	for (unsigned i = 0; i < 8; i++)
		snap_io_rw(e, i == 3 ? ro_fd : fd, -1, true, buf, i * sizeof(buf), sizeof(buf),
			   NULL);
	assert_int_equal(snap_io_drain(e), -EBADF);
	assert_int_equal(snap_io_drain(e), -EBADF);
	snap_io_engine_free(e);

	close(ro_fd);
	close(fd);
}

static const struct snap_io_ops *cur_ops;

static int group_setup(void **state)
{
	*state = (void *)cur_ops;
	return 0;
}

int main(void)
{
	static const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip_buffered), cmocka_unit_test(test_roundtrip_direct),
		cmocka_unit_test(test_read_past_eof),	   cmocka_unit_test(test_direct_fallback),
		cmocka_unit_test(test_errors_sticky),
	};
	const char *const *names = snap_io_engine_names();
	int failed = 0;

	for (size_t i = 0; names[i]; i++) {
		cur_ops = snap_io_engine_find(names[i]);
		print_message("engine %s\n", names[i]);
		failed += cmocka_run_group_tests_name(names[i], tests, group_setup, NULL);
	}
	return failed ? 1 : 0;
}
