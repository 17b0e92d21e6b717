/* SPDX-License-Identifier: MIT */
/*
 * libsnapmr: save and restore VM memory in QEMU's mapped-ram file layout.
 *
 * A VMM (or the snapsave/snaprestore tools) maps its RAM blocks, passes
 * descriptors for the output or input file, and calls snap_save(),
 * snap_restore() or snap_inspect(). Functions return 0 or -errno; on failure
 * they fill a struct snap_err with a one-line message naming the block and
 * file offset where that applies. The library never prints.
 */
#ifndef SNAPMR_H
#define SNAPMR_H

#include "reader.h"
#include "trailer.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum snap_direct {
	SNAP_DIRECT_AUTO, /* O_DIRECT for page data when the file system allows it */
	SNAP_DIRECT_ON,	  /* refusal is an error */
	SNAP_DIRECT_OFF,
};

struct snap_err {
	int code;      /* -errno */
	char msg[512]; /* lower case, no file name, no trailing period */
	/* Where, when known (callers zero the struct first): for the public error. */
	bool has_off;
	uint64_t off;	 /* file offset */
	char block[256]; /* RAM block name, "" if none */
	/* What the caller can change to get past it; a tool words it as its option. */
	enum snap_remedy {
		SNAP_REMEDY_NONE,
		SNAP_REMEDY_BUFFERED, /* O_DIRECT was refused: allow buffered I/O */
		SNAP_REMEDY_OFFSET,   /* no stream at the start: it may start later */
	} remedy;
};

struct snap_progress {
	uint64_t done;	/* page bytes processed (written, read or skipped as zero) */
	uint64_t total; /* page bytes to process */
	double seconds; /* since the start */
};

typedef void (*snap_progress_fn)(void *arg, const struct snap_progress *p);

struct snap_opts {
	unsigned jobs;		  /* worker threads; 0 = two per online CPU, at most 16 */
	const char *engine;	  /* "threads", "uring", "aio"; NULL = best available */
	const char *engine_first; /* without engine: tried first (NULL: the default order) */
	unsigned queue_depth;	  /* requests in flight per worker; 0 = engine default */
	size_t max_io;		  /* bytes per request; 0 = 1 MiB */
	enum snap_direct direct;
	snap_progress_fn progress; /* called from the calling thread, or NULL */
	void *progress_arg;
	unsigned progress_ms; /* interval; 0 = 500 */
	bool no_sync;	      /* skip fdatasync (tests, tmpfs); never for real saves */
	bool no_verify;	      /* restore: do not check page checksums while reading */
};

/* Statistics in the spirit of QEMU's query-migrate. */
struct snap_stats {
	uint64_t total_bytes;	 /* logical RAM of all blocks */
	uint64_t normal_pages;	 /* pages transferred */
	uint64_t zero_pages;	 /* pages skipped as zero (save) or left zero (restore) */
	uint64_t page_bytes;	 /* bytes of page data transferred */
	uint64_t stream_bytes;	 /* bytes of everything else written or read */
	uint64_t devstate_bytes; /* device state length */
	uint64_t requests;	 /* I/O submissions */
	double seconds;
	const char *engine;
	bool engine_fallback;  /* the preferred engine could not start; another was used */
	bool direct;	       /* O_DIRECT used for page data */
	bool direct_fell_back; /* auto mode hit a refusal and went buffered */
	unsigned jobs;
};

/* One RAM block in memory. */
struct snap_block {
	const char *name; /* RAMBlock idstr, 1..255 bytes, no NUL */
	void *addr;	  /* page-aligned mapping of `length` bytes (read-only is enough to save) */
	uint64_t length;  /* multiple of 4096 */
	/*
	 * fd backing the mapping at offset fd_off, or -1. A save uses it to skip
	 * holes (SEEK_DATA) without faulting them in; a restore to skip holes and
	 * to check clear pages with pread before writing zeros over them (without
	 * it, they are checked and written through the mapping).
	 */
	int fd;
	uint64_t fd_off;
	bool zeroed; /* restore: memory is known to be all zero, so clear pages need no work */
};

/* How the device state is carried. */
enum snap_devstate_kind {
	SNAP_DEVSTATE_NONE,    /* an empty device-state section */
	SNAP_DEVSTATE_SECTION, /* opaque blob read from fd until EOF, stored as its own section */
	SNAP_DEVSTATE_RAW,     /* a raw QEMU stream tail (starting with the RAM EOS word) appended
				  verbatim */
};

struct snap_save_args {
	int fd;		     /* output, opened for writing, seekable, buffered */
	int direct_fd;	     /* second open of the same file with O_DIRECT, or -1 */
	uint64_t offset;     /* stream start in the file (QEMU's ,offset=N) */
	const char *machine; /* machine type for the configuration section; NULL = "pc-q35-10.0" */
	const struct snap_block *blocks;
	size_t n_blocks;
	enum snap_devstate_kind devstate;
	int devstate_fd; /* read sequentially to EOF */
	/*
	 * Optional opaque bytes (1..16 MiB) kept in the trailer's BLOB extension
	 * record, which QEMU never reads: snap_inspect() returns them in
	 * file->trailer->blob. NULL/0: none.
	 */
	const void *blob;
	size_t blob_len;
};

/*
 * Writes the stream to args->fd and makes it durable (fdatasync) unless
 * opts->no_sync. Does not truncate below args->offset. On success fills
 * *ret_stats (may be NULL).
 */
int snap_save(const struct snap_save_args *args, const struct snap_opts *opts,
	      struct snap_stats *ret_stats, struct snap_err *err);

/* A decoded file: the stream, and the trailer when there is one. */
struct snap_file {
	struct mr_image *img;
	struct mr_trailer *trailer; /* NULL when absent or unusable */
	int trailer_status;	    /* 0, -ENOENT (none), or why it is unusable */
	char trailer_msg[512];	    /* the reason, when trailer_status is not 0 or -ENOENT */
	bool marker;		    /* written by snapsave: a missing trailer means unfinished */
	uint64_t appended;	    /* bytes after the completion record (0: it ends the file) */
	uint64_t record_off;	    /* where that completion record is, when appended */
	uint64_t file_size;
	uint64_t allocated; /* bytes the file occupies on disk */
};

/*
 * Decodes the file behind fd (stream at `offset`) and its trailer, in memory
 * that does not grow with the lengths the file claims: bitmaps are counted
 * (mr_block_info.present) but not kept, chunk hashes are checked but not
 * kept; snap_restore() and snap_verify() load them for the blocks they read.
 * A completion record followed by extra bytes is found where the stream and
 * its table end (appended, record_off). A missing or bad trailer is not an error here: it is
 * reported in trailer_status for the caller's policy. The caller frees *ret with snap_file_free().
 */
int snap_inspect(int fd, uint64_t offset, struct snap_file **ret, struct snap_err *err);

/*
 * Finds the stream offset of the file behind fd: 0, or after a libvirt save
 * image header. *ret_kind tells which (enum mr_container).
 */
int snap_detect_offset(int fd, uint64_t *ret_offset, enum mr_container *ret_kind,
		       struct snap_err *err);
void snap_file_free(struct snap_file *f);

/*
 * snap_inspect() keeps no bitmap and no chunk hash (their size follows a
 * length the file claims): loads block bi's bitmap, and with `check` its
 * chunk hashes when the file has a trailer, into f. Not thread-safe: callers
 * that share f between threads serialize it. Returns 0 or -errno with err
 * naming the block and offset.
 */
int snap_file_load_block(int fd, const struct snap_file *f, const struct mr_block_info *bi,
			 bool check, struct snap_err *err);

/* One checksum mismatch: pages [first_page, first_page + npages) of a block. */
struct snap_mismatch {
	const char *block;
	uint64_t first_page;
	uint64_t npages;
	uint64_t file_off; /* where those pages are stored */
};

typedef void (*snap_mismatch_fn)(void *arg, const struct snap_mismatch *m);

struct snap_restore_args {
	int fd;	       /* input, readable */
	int direct_fd; /* O_DIRECT open of the same file, or -1 */
	const struct snap_file *file;
	/* Destinations, matched by name; blocks of the file without one are left out. */
	const struct snap_block *blocks;
	size_t n_blocks;
	int devstate_fd;   /* receives the device state (section or raw tail), or -1 */
	bool devstate_raw; /* write the raw stream tail instead of the section body */
};

/*
 * Reads every present page into the destinations and zeroes the others.
 * With a trailer and without opts->no_verify, every chunk is checked against
 * its checksum as it arrives; the first mismatch fails the restore.
 */
int snap_restore(const struct snap_restore_args *args, const struct snap_opts *opts,
		 struct snap_stats *ret_stats, struct snap_err *err);

/*
 * Checks a file without restoring it: the trailer against the stream, every
 * block's bitmap, every chunk of page data and the device state. Calls
 * `mismatch` for each bad chunk (in the calling thread, after the workers
 * finish); stores the number of mismatches in *ret_bad. Returns 0 when the
 * checks could run (look at *ret_bad), -ENOENT if the file has no trailer,
 * or another -errno.
 */
int snap_verify(int fd, int direct_fd, const struct snap_file *file, const struct snap_opts *opts,
		snap_mismatch_fn mismatch, void *arg, uint64_t *ret_bad,
		struct snap_stats *ret_stats, struct snap_err *err);

/* Version string of the library. */
const char *snap_version(void);

#endif
