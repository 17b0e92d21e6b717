/* SPDX-License-Identifier: MIT */
/*
 * Random access to one block of a decoded file, for a VMM that wants some
 * pages now rather than the whole block: read a page range (verified chunk
 * by chunk when the file has checksums), or map the block's page region
 * copy-on-write so the guest can start before anything is read.
 */
#ifndef SNAP_PAGES_H
#define SNAP_PAGES_H

#include "snapmr.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Reads pages [first, first + n) of block `bi` of f into buf: stored pages
 * from fd, clear pages as zeros. With verify and a trailer, the chunks the
 * range touches are read whole and checked against their hashes. Returns 0,
 * -ENOENT (no such block), -ERANGE (range outside the block), -EBADMSG
 * (checksum mismatch, or a trailer without the block), -ENODATA (the file
 * ends early), -ENOMEM or pread's -errno; err names block and offset.
 */
int snap_read_pages(int fd, const struct snap_file *f, size_t bi, uint64_t first, uint64_t n,
		    void *buf, bool verify, struct snap_err *err);

/*
 * Maps block `bi` MAP_PRIVATE from fd at its page region, with anonymous
 * zero pages over clear pages the file holds data for (or that lie past its
 * end). Returns 0 and the address (munmap it with the block's length),
 * -ENOENT, -EINVAL (not a regular file, region not page-aligned), -E2BIG
 * (more than SNAP_MAP_MAX_PATCHES such ranges), or mmap's -errno.
 */
int snap_map_block(int fd, const struct snap_file *f, size_t bi, void **ret_addr,
		   struct snap_err *err);

/* Each patch is a VMA; stay far below vm.max_map_count (65530 by default). */
#define SNAP_MAP_MAX_PATCHES 4096u

#endif
