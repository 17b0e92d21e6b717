// SPDX-License-Identifier: MIT
/*
 * Instant start against a full restore, through the public API: the time to
 * the first page and to the whole block for snapmr_map_block() (touching
 * every page, as a guest that reads all its memory would), snapmr_read_pages()
 * and snapmr_restore() into anonymous memory. With --drop-caches (root) every
 * method starts from a cold page cache.
 *
 * Usage: lazy-bench [--drop-caches] [--runs N] FILE BLOCK
 * Prints one line per method: median seconds to the first page and to the
 * whole block over N runs (default 3).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* MAP_ANONYMOUS, POSIX_FADV_DONTNEED */
#endif
#include <snapmr/snapmr.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>

#define MAX_RUNS 15

/* Where touched bytes go, so the reads are not optimized out. */
static volatile unsigned long sink;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void drop_caches(int fd, int enabled)
{
	int d;

	/* The file's own pages first (works without root), then everything. */
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	if (!enabled)
		return;
	sync();
	d = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
	if (d >= 0) {
		if (write(d, "3\n", 2) != 2)
			fprintf(stderr, "lazy-bench: cannot drop caches\n");
		close(d);
	}
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Reads one byte of every page and returns their sum. */
static unsigned long touch_all(const volatile uint8_t *p, uint64_t len)
{
	unsigned long sum = 0;

	for (uint64_t i = 0; i < len; i += 4096)
		sum += p[i];
	return sum;
}

int main(int argc, char **argv)
{
	struct snapmr_error err = SNAPMR_INIT(struct snapmr_error);
	struct snapmr_block_info bi = SNAPMR_INIT(struct snapmr_block_info);
	double first[3][MAX_RUNS], full[3][MAX_RUNS];
	static const char *const names[3] = { "map_block (copy-on-write)",
					      "read_pages (4 MiB windows)",
					      "restore (whole block)" };
	int runs = 3, drop = 0, a = 1, fd;
	snapmr_file *f = NULL;
	long idx;

	for (; a < argc && argv[a][0] == '-'; a++) {
		if (!strcmp(argv[a], "--drop-caches"))
			drop = 1;
		else if (!strcmp(argv[a], "--runs") && a + 1 < argc)
			runs = atoi(argv[++a]);
		else
			break;
	}
	if (argc - a != 2 || runs < 1 || runs > MAX_RUNS) {
		fprintf(stderr, "usage: lazy-bench [--drop-caches] [--runs 1-%d] FILE BLOCK\n",
			MAX_RUNS);
		return 2;
	}
	fd = open(argv[a], O_RDONLY | O_CLOEXEC);
	if (fd < 0 || snapmr_file_open(fd, SNAPMR_OFFSET_DETECT, &f, &err)) {
		fprintf(stderr, "lazy-bench: %s: %s\n", argv[a],
			fd < 0 ? "cannot open" : err.message);
		return 1;
	}
	idx = snapmr_file_find_block(f, argv[a + 1]);
	if (idx < 0 || snapmr_file_block(f, (size_t)idx, &bi)) {
		fprintf(stderr, "lazy-bench: %s: no block '%s'\n", argv[a], argv[a + 1]);
		return 1;
	}
	for (int r = 0; r < runs; r++) {
		void *addr;
		uint8_t *mem;
		double t0;

		/* Mapped: usable at once, pages come in as they are touched. */
		drop_caches(fd, drop);
		t0 = now();
		if (snapmr_map_block(fd, f, (size_t)idx, &addr, &err)) {
			fprintf(stderr, "lazy-bench: map: %s\n", err.message);
			return 1;
		}
		sink += ((volatile uint8_t *)addr)[0];
		first[0][r] = now() - t0;
		sink += touch_all(addr, bi.length);
		full[0][r] = now() - t0;
		munmap(addr, bi.length);

		/* Read on demand, in windows, into anonymous memory. */
		mem = mmap(NULL, bi.length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			   0);
		if (mem == MAP_FAILED)
			return 1;
		drop_caches(fd, drop);
		t0 = now();
		for (uint64_t p = 0; p < bi.pages; p += 1024) {
			uint64_t n = bi.pages - p < 1024 ? bi.pages - p : 1024;

			if (snapmr_read_pages(fd, f, (size_t)idx, p, n, mem + p * 4096, 0, &err)) {
				fprintf(stderr, "lazy-bench: read_pages: %s\n", err.message);
				return 1;
			}
			if (!p)
				first[1][r] = now() - t0;
		}
		full[1][r] = now() - t0;

		/* Everything first, then the guest may run. */
		struct snapmr_block dst = SNAPMR_INIT(struct snapmr_block);
		struct snapmr_restore_args ra = SNAPMR_INIT(struct snapmr_restore_args);

		memset(mem, 0, bi.length); /* populated, so the restore measures I/O, not faults */
		dst.name = bi.name;
		dst.addr = mem;
		dst.length = bi.length;
		dst.fd = -1;
		dst.zeroed = true;
		ra.fd = fd;
		ra.direct_fd = -1;
		ra.file = f;
		ra.blocks = &dst;
		ra.n_blocks = 1;
		ra.devstate_fd = -1;
		drop_caches(fd, drop);
		t0 = now();
		if (snapmr_restore(&ra, NULL, NULL, &err)) {
			fprintf(stderr, "lazy-bench: restore: %s\n", err.message);
			return 1;
		}
		full[2][r] = first[2][r] = now() - t0;
		munmap(mem, bi.length);
	}
	printf("%s, block '%s' (%llu MiB, %llu of %llu pages stored), %d run%s, %s cache\n",
	       argv[a], bi.name, (unsigned long long)(bi.length >> 20),
	       (unsigned long long)bi.pages_present, (unsigned long long)bi.pages, runs,
	       runs == 1 ? "" : "s", drop ? "cold" : "warm");
	printf("%-30s %14s %14s\n", "method", "first page s", "whole block s");
	for (int m = 0; m < 3; m++)
		printf("%-30s %14.6f %14.3f\n", names[m], median(first[m], runs),
		       median(full[m], runs));
	snapmr_file_free(f);
	close(fd);
	return 0;
}
