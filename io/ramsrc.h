/* SPDX-License-Identifier: MIT */
/*
 * RAM block specifications (NAME=SOURCE[,size=N][,offset=N]) and their
 * mappings: read-only sources for a save, writable destinations for a restore.
 */
#ifndef SNAP_RAMSRC_H
#define SNAP_RAMSRC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct snap_ram_spec {
	char name[256];
	char *where;	 /* path, fd:N or /dev/fdset/N; owned */
	uint64_t size;	 /* 0 = the source's size (save) or the block length (restore) */
	uint64_t offset; /* where the block starts in the source */
	bool has_size;
};

struct snap_ram_map {
	void *addr;
	uint64_t length;
	int fd;		 /* open descriptor (owned) */
	uint64_t offset; /* of the block in fd */
	bool zeroed;	 /* restore: the destination was created or empty, all zero */
	size_t map_len;	 /* bytes mapped (length rounded for the mapping) */
	void *map_base;
};

/*
 * Parses a size: decimal or 0x hex, optional suffix K, M, G, T (powers of
 * 1024, also KiB/MiB/... and a trailing B). Returns 0 or -EINVAL/-ERANGE.
 */
int snap_parse_size(const char *s, uint64_t *ret);

/* Parses NAME=WHERE[,size=N][,offset=N]; on error writes a message to errbuf. */
int snap_ram_spec_parse(const char *arg, struct snap_ram_spec *ret, char *errbuf, size_t errlen);
void snap_ram_spec_clear(struct snap_ram_spec *s);

/*
 * Opens and maps a save source read-only. Checks the size is a non-zero
 * multiple of 4096 and lies within the source. errbuf gets a message naming
 * the problem (the caller adds the block name).
 */
int snap_ram_map_source(const struct snap_ram_spec *s, struct snap_ram_map *ret, char *errbuf,
			size_t errlen);

/*
 * Opens (creating if needed) and maps a restore destination of `length`
 * bytes, growing a regular file or memfd that is too small.
 */
int snap_ram_map_dest(const struct snap_ram_spec *s, uint64_t length, struct snap_ram_map *ret,
		      char *errbuf, size_t errlen);

/* Unmaps and closes what a map function filled in; a zeroed struct is left alone. */
void snap_ram_unmap(struct snap_ram_map *m);

#endif
