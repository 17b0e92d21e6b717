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
	/* Restore: this call created the file (its O_CREAT|O_EXCL open succeeded). */
	bool created;
	int dirfd;	  /* created: the directory holding it, else -1 */
	bool own_dirfd;	  /* dirfd is closed by snap_ram_unmap() */
	const char *name; /* created: its name in dirfd (points into the spec) */
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
 *
 * With dirfd < 0, s->where is fd:N, /dev/fdset/N or a path the user named:
 * a symlink there is followed (to an existing file only). With dirfd >= 0
 * (snaprestore --all), s->where is DIR/NAME with dirfd open on DIR, and NAME
 * is opened in dirfd without following a symlink; an existing NAME is used
 * only if it is a regular file with one link owned by this user (else
 * -EPERM, errbuf says why).
 *
 * A missing file is created with O_CREAT|O_EXCL, mode 0600, and only then
 * is ret->created set, with ret->dirfd and ret->name saying where it is (the
 * caller's dirfd, or its parent directory opened here) so that a failed run
 * can remove exactly that file. On failure this call leaves nothing created.
 */
int snap_ram_map_dest(const struct snap_ram_spec *s, int dirfd, uint64_t length,
		      struct snap_ram_map *ret, char *errbuf, size_t errlen);

/*
 * Opens the directory holding path (O_RDONLY|O_DIRECTORY) and points *ret_name
 * at path's last component. -EISDIR when path ends in '/'.
 */
int snap_open_parent(const char *path, int *ret_dirfd, const char **ret_name);

/*
 * Creates a new file ".NAME.snapmr-XXXXXX" (NAME shortened to fit) in dirfd
 * with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600, opened O_WRONLY|O_CLOEXEC; its
 * name goes to tmp (tmplen >= NAME_MAX + 1). Returns the descriptor or -errno.
 */
int snap_create_temp_at(int dirfd, const char *name, char *tmp, size_t tmplen);

/* Unmaps and closes what a map function filled in; a zeroed struct is left alone. */
void snap_ram_unmap(struct snap_ram_map *m);

#endif
