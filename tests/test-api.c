// SPDX-License-Identifier: MIT
/*
 * The public API through the shared library, as a VMM links it: extensible
 * structs, the structured error, page-range reads (holes as zeros, chunks
 * verified) and copy-on-write mappings (writes never reach the file).
 */
#include <snapmr/snapmr.h>

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <cmocka.h>

#define PAGE	  4096u
#define NPAGES	  300u /* 4.7 chunks of 64 KiB */
#define RAM_BYTES (NPAGES * PAGE)

struct fixture {
	char path[64];
	uint8_t *ram; /* what was saved */
	int fd;	      /* the saved file, read-only */
	snapmr_file *file;
};

/* Page p holds data unless p % 3 == 1 (a zero page, stored as a hole). */
static void fill(uint8_t *ram)
{
	for (unsigned p = 0; p < NPAGES; p++)
		if (p % 3 != 1)
			for (unsigned i = 0; i < PAGE; i++)
				ram[p * PAGE + i] = (uint8_t)(p * 7 + i + 1) | 1;
}

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	struct snapmr_error err = SNAPMR_INIT(struct snapmr_error);
	struct snapmr_opts opts = SNAPMR_INIT(struct snapmr_opts);
	struct snapmr_block blk = SNAPMR_INIT(struct snapmr_block);
	struct snapmr_save_args sa = SNAPMR_INIT(struct snapmr_save_args);
	int out;

	assert_non_null(fx);
	fx->ram = mmap(NULL, RAM_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(fx->ram != MAP_FAILED);
	fill(fx->ram);
	snprintf(fx->path, sizeof(fx->path), "/var/tmp/test-api.XXXXXX");
	out = mkstemp(fx->path);
	assert_true(out >= 0);
	opts.no_sync = true;
	opts.jobs = 2;
	blk.name = "pc.ram";
	blk.addr = fx->ram;
	blk.length = RAM_BYTES;
	blk.fd = -1;
	sa.fd = out;
	sa.direct_fd = -1;
	sa.blocks = &blk;
	sa.n_blocks = 1;
	sa.devstate_fd = -1;
	assert_int_equal(snapmr_save(&sa, &opts, NULL, &err), 0);
	close(out);
	fx->fd = open(fx->path, O_RDONLY | O_CLOEXEC);
	assert_true(fx->fd >= 0);
	assert_int_equal(snapmr_file_open(fx->fd, SNAPMR_OFFSET_DETECT, &fx->file, &err), 0);
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *fx = *state;

	snapmr_file_free(fx->file);
	close(fx->fd);
	unlink(fx->path);
	munmap(fx->ram, RAM_BYTES);
	free(fx);
	return 0;
}

static void test_info(void **state)
{
	struct fixture *fx = *state;
	struct snapmr_file_info info = SNAPMR_INIT(struct snapmr_file_info);
	struct snapmr_block_info bi = SNAPMR_INIT(struct snapmr_block_info);

	assert_int_equal(snapmr_file_info(fx->file, &info), 0);
	assert_int_equal(info.integrity, SNAPMR_INTEGRITY_COMPLETE);
	assert_int_equal(info.n_blocks, 1);
	assert_string_equal(info.machine, "pc-q35-10.0");
	assert_true(info.snapmr_marker);
	assert_int_equal(info.trailing_bytes, 0);
	assert_int_equal(snapmr_file_find_block(fx->file, "pc.ram"), 0);
	assert_int_equal(snapmr_file_find_block(fx->file, "nope"), -ENOENT);
	assert_int_equal(snapmr_file_block(fx->file, 0, &bi), 0);
	assert_string_equal(bi.name, "pc.ram");
	assert_int_equal(bi.pages, NPAGES);
	assert_int_equal(bi.pages_present, NPAGES - NPAGES / 3);
	assert_int_equal(bi.pages_offset % PAGE, 0);
	assert_int_equal(snapmr_file_block(fx->file, 1, &bi), -ENOENT);
	assert_non_null(snapmr_file_capability(fx->file, 0));
	assert_null(snapmr_file_capability(fx->file, info.n_capabilities));
}

/* An older caller (smaller struct) and a newer one (larger, zero tail) both work. */
static void test_struct_sizes(void **state)
{
	struct fixture *fx = *state;
	struct {
		struct snapmr_file_info info;
		uint64_t future[4];
	} big;
	struct snapmr_file_info small;
	uint32_t old_size = (uint32_t)offsetof(struct snapmr_file_info, n_blocks);

	memset(&big, 0, sizeof(big));
	big.info.size = sizeof(big);
	memset(big.future, 0xaa, sizeof(big.future));
	assert_int_equal(snapmr_file_info(fx->file, &big.info), 0);
	assert_int_equal(big.info.n_blocks, 1);
	assert_int_equal(big.future[0], 0); /* members unknown to the library read as zero */

	memset(&small, 0x55, sizeof(small));
	small.size = old_size;
	assert_int_equal(snapmr_file_info(fx->file, &small), 0);
	assert_int_equal(small.size, old_size);
	assert_int_equal(small.n_blocks, 0x5555555555555555ull); /* beyond its size: untouched */

	/* A newer caller's option the library does not know, set: refused. */
	struct {
		struct snapmr_opts o;
		uint64_t future;
	} opts;
	struct snapmr_error err = SNAPMR_INIT(struct snapmr_error);
	struct snapmr_verify_args va = SNAPMR_INIT(struct snapmr_verify_args);

	memset(&opts, 0, sizeof(opts));
	opts.o.size = sizeof(opts);
	opts.future = 1;
	va.fd = fx->fd;
	va.direct_fd = -1;
	va.file = fx->file;
	assert_int_equal(snapmr_verify(&va, &opts.o, NULL, &err), -E2BIG);
	assert_int_equal(err.code, -E2BIG);
	opts.future = 0;
	assert_int_equal(snapmr_verify(&va, &opts.o, NULL, &err), 0);
}

static void test_read_pages(void **state)
{
	struct fixture *fx = *state;
	struct snapmr_error err = SNAPMR_INIT(struct snapmr_error);
	uint8_t *buf = malloc(RAM_BYTES);
	/* Single pages (data and hole), ranges inside a chunk, across chunks, the tail. */
	static const uint64_t ranges[][2] = { { 0, 1 },	   { 1, 1 },   { 5, 3 },
					      { 10, 20 },  { 15, 2 },  { 14, 60 },
					      { 290, 10 }, { 299, 1 }, { 0, NPAGES } };

	assert_non_null(buf);
	for (size_t k = 0; k < sizeof(ranges) / sizeof(ranges[0]); k++) {
		uint64_t first = ranges[k][0], n = ranges[k][1];

		for (unsigned flags = 0; flags <= SNAPMR_READ_NO_VERIFY; flags++) {
			memset(buf, 0xee, n * PAGE);
			assert_int_equal(
				snapmr_read_pages(fx->fd, fx->file, 0, first, n, buf, flags, &err),
				0);
			assert_memory_equal(buf, fx->ram + first * PAGE, n * PAGE);
		}
	}
	assert_int_equal(snapmr_read_pages(fx->fd, fx->file, 0, NPAGES - 1, 2, buf, 0, &err),
			 -ERANGE);
	assert_int_equal(err.code, -ERANGE);
	assert_int_equal(snapmr_read_pages(fx->fd, fx->file, 3, 0, 1, buf, 0, &err), -ENOENT);
	free(buf);
}

/* A flipped byte in the page data: verified reads fail and say where; unverified do not. */
static void test_read_pages_corrupt(void **state)
{
	struct fixture *fx = *state;
	struct snapmr_error err = SNAPMR_INIT(struct snapmr_error);
	struct snapmr_block_info bi = SNAPMR_INIT(struct snapmr_block_info);
	uint8_t byte, buf[PAGE];
	int wfd = open(fx->path, O_RDWR | O_CLOEXEC);
	uint64_t off;

	assert_true(wfd >= 0);
	assert_int_equal(snapmr_file_block(fx->file, 0, &bi), 0);
	off = bi.pages_offset + 20 * PAGE + 100; /* page 20, in chunk 1 (pages 16-31) */
	assert_int_equal(pread(wfd, &byte, 1, (off_t)off), 1);
	byte ^= 0x40;
	assert_int_equal(pwrite(wfd, &byte, 1, (off_t)off), 1);

	/* Page 17 is intact, but its chunk is not: the chunk is what is checked. */
	assert_int_equal(snapmr_read_pages(fx->fd, fx->file, 0, 17, 1, buf, 0, &err), -EBADMSG);
	assert_string_equal(err.block, "pc.ram");
	assert_int_equal(err.offset, bi.pages_offset + 16 * PAGE);
	assert_non_null(strstr(err.message, "pages 16-31"));
	/* Outside that chunk, and without verification, reads work. */
	assert_int_equal(snapmr_read_pages(fx->fd, fx->file, 0, 40, 1, buf, 0, &err), 0);
	assert_int_equal(
		snapmr_read_pages(fx->fd, fx->file, 0, 17, 1, buf, SNAPMR_READ_NO_VERIFY, &err), 0);
	assert_memory_equal(buf, fx->ram + 17 * PAGE, PAGE);

	byte ^= 0x40;
	assert_int_equal(pwrite(wfd, &byte, 1, (off_t)off), 1);
	close(wfd);
}

static void test_map_block(void **state)
{
	struct fixture *fx = *state;
	struct snapmr_error err = SNAPMR_INIT(struct snapmr_error);
	struct snapmr_block_info bi = SNAPMR_INIT(struct snapmr_block_info);
	struct stat before, after;
	uint8_t *m, page[PAGE];
	void *addr;

	assert_int_equal(snapmr_file_block(fx->file, 0, &bi), 0);
	assert_int_equal(fstat(fx->fd, &before), 0);
	assert_int_equal(snapmr_map_block(fx->fd, fx->file, 0, &addr, &err), 0);
	m = addr;
	assert_memory_equal(m, fx->ram, RAM_BYTES); /* holes read as zeros */
	/* Writes, to a data page and to a hole, stay private. */
	memset(m, 0x11, PAGE);
	memset(m + PAGE, 0x22, PAGE);
	assert_int_equal(pread(fx->fd, page, PAGE, (off_t)bi.pages_offset), PAGE);
	assert_memory_equal(page, fx->ram, PAGE);
	assert_int_equal(munmap(addr, bi.length), 0);
	assert_int_equal(fstat(fx->fd, &after), 0);
	assert_int_equal(before.st_blocks, after.st_blocks); /* no hole was filled */
	assert_int_equal(before.st_mtime, after.st_mtime);

	/* Page 4 is clear; give the file stale bytes there: the mapping still reads zeros. */
	int wfd = open(fx->path, O_RDWR | O_CLOEXEC);

	assert_true(wfd >= 0);
	memset(page, 0x99, PAGE);
	assert_int_equal(pwrite(wfd, page, PAGE, (off_t)(bi.pages_offset + 4 * PAGE)), PAGE);
	close(wfd);
	assert_int_equal(snapmr_map_block(fx->fd, fx->file, 0, &addr, &err), 0);
	assert_memory_equal(addr, fx->ram, RAM_BYTES);
	assert_int_equal(munmap(addr, bi.length), 0);

	/* Not a regular file: refused with the reason. */
	int pfd[2];

	assert_int_equal(pipe(pfd), 0);
	assert_int_equal(snapmr_map_block(pfd[0], fx->file, 0, &addr, &err), -EINVAL);
	assert_non_null(strstr(err.message, "regular file"));
	close(pfd[0]);
	close(pfd[1]);
}

/* Restore into anonymous memory, an INCOMPLETE file refused without force. */
static void test_restore(void **state)
{
	struct fixture *fx = *state;
	struct snapmr_error err = SNAPMR_INIT(struct snapmr_error);
	struct snapmr_block dst = SNAPMR_INIT(struct snapmr_block);
	struct snapmr_restore_args ra = SNAPMR_INIT(struct snapmr_restore_args);
	struct snapmr_stats st = SNAPMR_INIT(struct snapmr_stats);
	uint8_t *mem =
		mmap(NULL, RAM_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	assert_true(mem != MAP_FAILED);
	memset(mem, 0x77, RAM_BYTES); /* stale: clear pages must end zero */
	dst.name = "pc.ram";
	dst.addr = mem;
	dst.length = RAM_BYTES;
	dst.fd = -1;
	ra.fd = fx->fd;
	ra.direct_fd = -1;
	ra.file = fx->file;
	ra.blocks = &dst;
	ra.n_blocks = 1;
	ra.devstate_fd = -1;
	assert_int_equal(snapmr_restore(&ra, NULL, &st, &err), 0);
	assert_memory_equal(mem, fx->ram, RAM_BYTES);
	assert_int_equal(st.normal_pages, NPAGES - NPAGES / 3);

	dst.name = "missing";
	assert_int_equal(snapmr_restore(&ra, NULL, NULL, &err), -ENOENT);
	assert_string_equal(err.block, "missing");
	assert_int_equal(err.offset, SNAPMR_NO_OFFSET);
	munmap(mem, RAM_BYTES);
}

/* The library names no command-line option: the tools add their own hints. */
static void test_messages_name_no_option(void **state)
{
	struct snapmr_error err = SNAPMR_INIT(struct snapmr_error);
	char path[] = "/var/tmp/test-api-junk.XXXXXX";
	snapmr_file *f = NULL;
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "not a migration stream at all", 29), 29);
	assert_int_equal(snapmr_file_open(fd, SNAPMR_OFFSET_DETECT, &f, &err), -EBADMSG);
	assert_non_null(strstr(err.message, "not a QEMU migration stream"));
	assert_null(strstr(err.message, "--"));
	close(fd);
	unlink(path);
}

/* Bytes appended after a complete file: still complete, and counted. */
static void test_appended(void **state)
{
	struct fixture *fx = *state;
	struct snapmr_error err = SNAPMR_INIT(struct snapmr_error);
	struct snapmr_file_info info = SNAPMR_INIT(struct snapmr_file_info);
	snapmr_file *f = NULL;
	int wfd = open(fx->path, O_WRONLY | O_APPEND | O_CLOEXEC);

	assert_true(wfd >= 0);
	assert_int_equal(write(wfd, "tail-bytes", 10), 10);
	close(wfd);
	assert_int_equal(snapmr_file_open(fx->fd, SNAPMR_OFFSET_DETECT, &f, &err), 0);
	assert_int_equal(snapmr_file_info(f, &info), 0);
	assert_int_equal(info.integrity, SNAPMR_INTEGRITY_COMPLETE);
	assert_int_equal(info.trailing_bytes, 10);
	snapmr_file_free(f);
}

/* Outputs that could not be read back are refused before anything is written. */
static void test_save_refusals(void **state)
{
	struct fixture *fx = *state;
	struct snapmr_error err = SNAPMR_INIT(struct snapmr_error);
	struct snapmr_block blk = SNAPMR_INIT(struct snapmr_block);
	struct snapmr_save_args sa = SNAPMR_INIT(struct snapmr_save_args);
	char other[] = "/var/tmp/test-api-other.XXXXXX";
	int pfd[2], ofd;

	blk.name = "pc.ram";
	blk.addr = fx->ram;
	blk.length = RAM_BYTES;
	blk.fd = -1;
	sa.blocks = &blk;
	sa.n_blocks = 1;
	sa.devstate_fd = -1;

	assert_int_equal(pipe(pfd), 0);
	sa.fd = pfd[1];
	sa.direct_fd = -1;
	assert_int_equal(snapmr_save(&sa, NULL, NULL, &err), -EINVAL);
	assert_non_null(strstr(err.message, "not a regular file"));
	close(pfd[0]);
	close(pfd[1]);

	ofd = mkstemp(other);
	assert_true(ofd >= 0);
	sa.fd = ofd;
	sa.direct_fd = fx->fd; /* another file */
	assert_int_equal(snapmr_save(&sa, NULL, NULL, &err), -EINVAL);
	assert_non_null(strstr(err.message, "not the same file"));
	struct stat st;

	assert_int_equal(fstat(ofd, &st), 0);
	assert_int_equal(st.st_size, 0); /* nothing written */
	close(ofd);
	unlink(other);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_info, setup, teardown),
		cmocka_unit_test_setup_teardown(test_struct_sizes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_pages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_pages_corrupt, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_block, setup, teardown),
		cmocka_unit_test_setup_teardown(test_restore, setup, teardown),
		cmocka_unit_test_setup_teardown(test_save_refusals, setup, teardown),
		cmocka_unit_test_setup_teardown(test_appended, setup, teardown),
		cmocka_unit_test(test_messages_name_no_option),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
