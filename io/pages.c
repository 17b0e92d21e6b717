// SPDX-License-Identifier: MIT
/* Page-range reads and copy-on-write mappings of one block of a file. */
#include "pages.h"
#include "engine.h"
#include "workers.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

/* Lazy loads write into the shared handle; page reads may run in several threads. */
static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * Block bi with its bitmap (and, with hashes, its chunk hashes) loaded:
 * snap_inspect() keeps neither, since their size follows the file's claim.
 */
static const struct mr_block_info *block_of(int fd, const struct snap_file *f, size_t bi,
					    bool hashes, struct snap_err *err)
{
	const struct mr_block_info *b;
	int r;

	if (bi >= f->img->n_blocks) {
		snap_fail(err, -ENOENT, "the file has %zu blocks, no block %zu", f->img->n_blocks,
			  bi);
		return NULL;
	}
	b = &f->img->blocks[bi];
	pthread_mutex_lock(&load_lock);
	r = snap_file_load_block(fd, f, b, hashes, err);
	pthread_mutex_unlock(&load_lock);
	return r ? NULL : b;
}

/* Records where a failure happened, for the public error; returns code. */
static int at(struct snap_err *err, int code, const char *block, uint64_t off)
{
	if (err) {
		snprintf(err->block, sizeof(err->block), "%s", block);
		err->off = off;
		err->has_off = true;
	}
	return code;
}

/*
 * Pages [first, first + n) of b into buf: runs of set bits are read from the
 * page region, runs of clear bits are zeroed.
 */
static int read_range(int fd, const struct mr_block_info *b, uint64_t first, uint64_t n,
		      uint8_t *buf, struct snap_err *err)
{
	uint64_t end = first + n, run_end;

	for (uint64_t p = first; p < end; p = run_end) {
		bool set = mr_bit_test(b->bitmap, p);
		uint64_t len;

		mr_bitmap_next_run(b->bitmap, p, end, set, &run_end);
		len = (run_end - p) * MR_PAGE_SIZE;
		if (!set) {
			memset(buf + (p - first) * MR_PAGE_SIZE, 0, len);
			continue;
		}
		/* The decoder checked that the page region lies inside the file. */
		uint64_t off = b->hdr.pages_offset + p * MR_PAGE_SIZE;
		long got = snap_pread_full(fd, buf + (p - first) * MR_PAGE_SIZE, len, off);

		if (got < 0)
			return at(err,
				  snap_fail(err, (int)got, "block '%s': reading offset 0x%llx: %s",
					    b->name, (unsigned long long)off, strerror((int)-got)),
				  b->name, off);
		if ((uint64_t)got != len)
			return at(err,
				  snap_fail(err, -ENODATA,
					    "block '%s': the file ends inside the pages at offset "
					    "0x%llx",
					    b->name, (unsigned long long)off),
				  b->name, off);
	}
	return 0;
}

int snap_read_pages(int fd, const struct snap_file *f, size_t bi, uint64_t first, uint64_t n,
		    void *buf, bool verify, struct snap_err *err)
{
	const struct mr_block_info *b;
	const struct mr_trailer_block *tb;
	uint64_t per, c0, c1, lo, hi;
	uint8_t *tmp;
	int r;

	if (err)
		memset(err, 0, sizeof(*err));
	b = block_of(fd, f, bi, verify, err);
	if (!b)
		return err ? err->code : -ENOENT;
	if (first > b->num_pages || n > b->num_pages - first)
		return snap_fail(err, -ERANGE, "block '%s' has %llu pages, not [%llu, +%llu)",
				 b->name, (unsigned long long)b->num_pages,
				 (unsigned long long)first, (unsigned long long)n);
	if (!n)
		return 0;
	if (!verify || !f->trailer)
		return read_range(fd, b, first, n, buf, err);

	tb = mr_trailer_find_block(f->trailer, b->name);
	if (!tb || tb->length != b->length)
		return snap_fail(err, -EBADMSG, "block '%s' is missing from the checksum table",
				 b->name);
	/* A chunk's hash covers all its pages: read the chunks the range touches. */
	per = f->trailer->chunk_size / MR_PAGE_SIZE;
	c0 = first / per;
	c1 = (first + n - 1) / per;
	lo = c0 * per;
	hi = (c1 + 1) * per < b->num_pages ? (c1 + 1) * per : b->num_pages;
	tmp = malloc((hi - lo) * MR_PAGE_SIZE);
	if (!tmp)
		return snap_fail(err, -ENOMEM, "out of memory");
	r = read_range(fd, b, lo, hi - lo, tmp, err);
	for (uint64_t c = c0; !r && c <= c1; c++) {
		uint64_t cfirst, cn;

		mr_trailer_chunk_pages(b->length, f->trailer->chunk_size, c, &cfirst, &cn);
		if (mr_trailer_chunk_hash(tmp + (cfirst - lo) * MR_PAGE_SIZE, b->bitmap, cfirst,
					  cn) != tb->chunk_hashes[c]) {
			r = snap_fail(
				err, -EBADMSG,
				"block '%s': pages %llu-%llu (file offset 0x%llx) fail "
				"their checksum",
				b->name, (unsigned long long)cfirst,
				(unsigned long long)(cfirst + cn - 1),
				(unsigned long long)(b->hdr.pages_offset + cfirst * MR_PAGE_SIZE));
			at(err, r, b->name, b->hdr.pages_offset + cfirst * MR_PAGE_SIZE);
		}
	}
	if (!r)
		memcpy(buf, tmp + (first - lo) * MR_PAGE_SIZE, n * MR_PAGE_SIZE);
	free(tmp);
	return r;
}

/* Does the file hold data (not a hole) anywhere in [off, end)? */
static bool has_data(int fd, uint64_t off, uint64_t end, uint64_t file_size)
{
	off_t d;

	if (end > file_size)
		return true; /* past the end the mapping would raise SIGBUS */
	d = lseek(fd, (off_t)off, SEEK_DATA);
	if (d < 0)
		return errno != ENXIO; /* no SEEK_DATA: assume data */
	return (uint64_t)d < end;
}

int snap_map_block(int fd, const struct snap_file *f, size_t bi, void **ret_addr,
		   struct snap_err *err)
{
	const struct mr_block_info *b;
	struct stat st;
	unsigned patches = 0;
	uint64_t run_end;
	uint8_t *addr;
	long pg = sysconf(_SC_PAGESIZE);

	if (err)
		memset(err, 0, sizeof(*err));
	b = block_of(fd, f, bi, false, err);
	if (!b)
		return err ? err->code : -ENOENT;
	if (fstat(fd, &st) < 0)
		return snap_fail(err, -errno, "%s", strerror(errno));
	if (!S_ISREG(st.st_mode))
		return snap_fail(err, -EINVAL, "only a regular file can be mapped");
	if (pg <= 0 || b->hdr.pages_offset % (uint64_t)pg)
		return snap_fail(err, -EINVAL,
				 "block '%s': its pages at offset 0x%llx are not aligned to the "
				 "%ld-byte page size",
				 b->name, (unsigned long long)b->hdr.pages_offset, pg);
	if (!b->length)
		return snap_fail(err, -EINVAL, "block '%s' is empty", b->name);
	addr = mmap(NULL, b->length, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd,
		    (off_t)b->hdr.pages_offset);
	if (addr == MAP_FAILED)
		return snap_fail(err, -errno, "block '%s': mmap: %s", b->name, strerror(errno));
	/*
	 * A clear page must read as zeros. In a file written by snapmr or QEMU
	 * it is a hole; where the file holds bytes there instead (stale data, a
	 * copy that lost its holes), cover the run with anonymous zero pages.
	 */
	for (uint64_t p = mr_bitmap_next_run(b->bitmap, 0, b->num_pages, false, &run_end);
	     p < b->num_pages;
	     p = mr_bitmap_next_run(b->bitmap, run_end, b->num_pages, false, &run_end)) {
		uint64_t off = b->hdr.pages_offset + p * MR_PAGE_SIZE;
		uint64_t len = (run_end - p) * MR_PAGE_SIZE;

		if (!has_data(fd, off, off + len, (uint64_t)st.st_size))
			continue;
		if (++patches > SNAP_MAP_MAX_PATCHES) {
			munmap(addr, b->length);
			return snap_fail(err, -E2BIG,
					 "block '%s': more than %u runs of clear pages hold stale "
					 "data in the file; restore it instead of mapping it",
					 b->name, SNAP_MAP_MAX_PATCHES);
		}
		if (mmap(addr + p * MR_PAGE_SIZE, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) {
			int e = errno;

			munmap(addr, b->length);
			return snap_fail(err, -e, "block '%s': mmap: %s", b->name, strerror(e));
		}
	}
	*ret_addr = addr;
	return 0;
}
