// SPDX-License-Identifier: MIT
/*
 * How a VMM restores with libsnapmr, three ways: the whole block into
 * anonymous memory (snapmr_restore), a few pages on demand
 * (snapmr_read_pages), and an instant start from a copy-on-write mapping of
 * the file (snapmr_map_block). Checks that all three agree. Build:
 *   cc vmm-restore.c $(pkg-config --cflags --libs snapmr) -o vmm-restore
 * Usage: vmm-restore FILE BLOCK
 */
#define _GNU_SOURCE /* MAP_ANONYMOUS */
#include <snapmr/snapmr.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

int main(int argc, char **argv)
{
	struct snapmr_error err = SNAPMR_INIT(struct snapmr_error);
	struct snapmr_block_info bi = SNAPMR_INIT(struct snapmr_block_info);
	struct snapmr_stats st = SNAPMR_INIT(struct snapmr_stats);
	snapmr_file *file = NULL;
	uint8_t *mem, *mapped, page[4096];
	void *addr;
	long idx;
	int fd;

	if (argc != 3) {
		fprintf(stderr, "usage: vmm-restore FILE BLOCK\n");
		return 2;
	}
	fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0 || snapmr_file_open(fd, SNAPMR_OFFSET_DETECT, &file, &err)) {
		fprintf(stderr, "%s: %s\n", argv[1], fd < 0 ? "cannot open" : err.message);
		return 1;
	}
	idx = snapmr_file_find_block(file, argv[2]);
	if (idx < 0 || snapmr_file_block(file, (size_t)idx, &bi)) {
		fprintf(stderr, "%s: no block '%s'\n", argv[1], argv[2]);
		return 1;
	}

	/* 1. The whole block into anonymous memory: no descriptor behind it (fd = -1). */
	mem = mmap(NULL, bi.length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 1;
	struct snapmr_block dst = SNAPMR_INIT(struct snapmr_block);
	dst.name = bi.name;
	dst.addr = mem;
	dst.length = bi.length;
	dst.fd = -1;
	dst.zeroed = true; /* fresh anonymous memory reads as zeros */
	struct snapmr_restore_args ra = SNAPMR_INIT(struct snapmr_restore_args);
	ra.fd = fd;
	ra.direct_fd = -1;
	ra.file = file;
	ra.blocks = &dst;
	ra.n_blocks = 1;
	ra.devstate_fd = -1;
	if (snapmr_restore(&ra, NULL, &st, &err)) {
		fprintf(stderr, "%s: restore: %s\n", argv[1], err.message);
		return 1;
	}
	printf("restored '%s': %llu data pages in %.3f s\n", bi.name,
	       (unsigned long long)st.normal_pages, st.seconds);

	/* 2. One page on demand (the last one), verified against its checksum chunk. */
	if (snapmr_read_pages(fd, file, (size_t)idx, bi.pages - 1, 1, page, 0, &err) ||
	    memcmp(page, mem + bi.length - 4096, 4096)) {
		fprintf(stderr, "%s: read_pages: %s\n", argv[1], err.message);
		return 1;
	}

	/* 3. An instant start: the block mapped copy-on-write, faulted in on touch. */
	if (snapmr_map_block(fd, file, (size_t)idx, &addr, &err)) {
		fprintf(stderr, "%s: map: %s\n", argv[1], err.message);
		return 1;
	}
	mapped = addr;
	if (memcmp(mapped, mem, bi.length)) {
		fprintf(stderr, "%s: the mapping differs from the restore\n", argv[1]);
		return 1;
	}
	mapped[0] ^= 0xff; /* a private copy: the file does not change */
	munmap(addr, bi.length);
	munmap(mem, bi.length);
	snapmr_file_free(file);
	close(fd);
	printf("restore, page read and mapping agree\n");
	return 0;
}
