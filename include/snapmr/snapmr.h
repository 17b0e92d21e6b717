/* SPDX-License-Identifier: MIT */
/*
 * libsnapmr: save and restore VM memory in QEMU's mapped-ram file layout.
 *
 * The one public header. A VMM maps its RAM blocks, passes descriptors for
 * the output or input file, and calls snapmr_save(), snapmr_file_open() then
 * snapmr_restore(), snapmr_verify(), snapmr_read_pages() or
 * snapmr_map_block(). The library never prints, never reads the environment
 * and installs no signal handler.
 *
 * Conventions:
 *  - Functions return 0 (or a count) on success and -errno on failure. The
 *    codes each function can return are listed with it; a code not listed is
 *    an errno from the kernel (pread, pwrite, mmap, ...) and means what it
 *    means there.
 *  - On failure, a function that takes a struct snapmr_error fills it (if not
 *    NULL): the same code, the block and file offset concerned when there are
 *    some, and a one-line message that names no file (the caller knows it)
 *    and no command-line option.
 *  - Every struct the caller fills or receives starts with a `size` member the
 *    caller sets to sizeof(the struct) as it was compiled (SNAPMR_INIT does).
 *    The library reads and writes only the members that fit in `size`, so a
 *    program built against an older header keeps working with a newer
 *    library: members added later take their defaults. A `size` larger than
 *    the library knows is accepted only if the unknown bytes are zero, and
 *    is -E2BIG otherwise (the openat2(2) rule). Arrays of structs (blocks)
 *    are laid out with the stride of their first element's `size`.
 *  - Symbols are versioned (SNAPMR_0.1); nothing else is exported.
 *
 * Descriptor passing (QEMU's -add-fd, /dev/fdset/N, SCM_RIGHTS) is not part
 * of this API: a program that links the library already holds its
 * descriptors and passes them as ints. The command-line tools implement it.
 */
#ifndef SNAPMR_SNAPMR_H
#define SNAPMR_SNAPMR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define SNAPMR_API __attribute__((visibility("default")))
#else
#define SNAPMR_API
#endif

#define SNAPMR_VERSION_MAJOR 0
#define SNAPMR_VERSION_MINOR 1

/* A struct of type T with its size member set and everything else zero (defaults). */
#ifdef __cplusplus
#define SNAPMR_INIT(T)               \
	[] {                         \
		T v_ = {};           \
		v_.size = sizeof(T); \
		return v_;           \
	}()
#else
#define SNAPMR_INIT(T) ((T){ .size = sizeof(T) })
#endif

/* "No file offset applies" in struct snapmr_error. */
#define SNAPMR_NO_OFFSET UINT64_MAX

/* What went wrong, for the caller's one-line report. */
struct snapmr_error {
	uint32_t size;
	int code;	   /* -errno, the function's return value */
	uint64_t offset;   /* file offset concerned, or SNAPMR_NO_OFFSET */
	char block[256];   /* RAM block concerned, "" if none */
	char message[512]; /* lower case, no trailing period; names no file */
};

enum snapmr_direct {
	SNAPMR_DIRECT_AUTO = 0, /* O_DIRECT for page data where the file system allows it */
	SNAPMR_DIRECT_ON = 1,	/* a refusal is an error */
	SNAPMR_DIRECT_OFF = 2,
};

struct snapmr_progress {
	uint32_t size;
	uint64_t done;	/* page bytes processed (written, read or skipped as zero) */
	uint64_t total; /* page bytes to process */
	double seconds; /* since the start */
};

/* Called from the thread that called the library, every progress_ms. */
typedef void (*snapmr_progress_fn)(void *arg, const struct snapmr_progress *p);

/* Tuning shared by save, restore and verify; NULL means all defaults. */
struct snapmr_opts {
	uint32_t size;
	unsigned jobs;	      /* worker threads; 0 = two per online CPU, at most 16 */
	const char *engine;   /* "threads", "uring", "aio"; NULL = best available */
	unsigned queue_depth; /* requests in flight per worker; 0 = engine default */
	size_t max_io;	      /* bytes per request, a multiple of 4096; 0 = 1 MiB */
	enum snapmr_direct direct;
	snapmr_progress_fn progress; /* or NULL */
	void *progress_arg;
	unsigned progress_ms; /* interval; 0 = 500 */
	bool no_sync;	      /* save: skip fdatasync (tests on tmpfs only) */
	bool no_verify;	      /* restore: do not check checksums while reading */
};

/* Statistics in the spirit of QEMU's query-migrate. */
struct snapmr_stats {
	uint32_t size;
	uint64_t total_bytes;	 /* logical RAM of all blocks */
	uint64_t normal_pages;	 /* pages transferred */
	uint64_t zero_pages;	 /* pages skipped as zero (save) or left zero (restore) */
	uint64_t page_bytes;	 /* bytes of page data transferred */
	uint64_t stream_bytes;	 /* bytes of everything else written or read */
	uint64_t devstate_bytes; /* device state length */
	uint64_t requests;	 /* I/O submissions */
	double seconds;
	const char *engine;    /* static string */
	bool engine_fallback;  /* the preferred engine could not start; another was used */
	bool direct;	       /* O_DIRECT used for page data */
	bool direct_fell_back; /* auto mode hit a refusal and went buffered */
	unsigned jobs;
};

/* One RAM block in memory: a source to save, or a destination to restore into. */
struct snapmr_block {
	uint32_t size;
	const char *name; /* RAMBlock idstr, 1..255 bytes */
	void *addr;	  /* page-aligned mapping of `length` bytes (read-only is enough to save) */
	uint64_t length;  /* a multiple of 4096 */
	/*
	 * The descriptor behind the mapping, at offset fd_off, or -1. A save uses
	 * it to skip holes without faulting them in; a restore to tell which
	 * ranges need clearing. Set fd = -1 for anonymous memory.
	 */
	int fd;
	uint64_t fd_off;
	bool zeroed; /* restore: the memory is known to be all zero, so clear pages need no work */
};

/* How a save carries the device state. */
enum snapmr_devstate {
	SNAPMR_DEVSTATE_NONE = 0,    /* an empty device-state section */
	SNAPMR_DEVSTATE_SECTION = 1, /* an opaque blob read from devstate_fd to EOF */
	SNAPMR_DEVSTATE_RAW = 2,     /* a raw QEMU stream tail, checked and appended verbatim */
};

struct snapmr_save_args {
	uint32_t size;
	int fd;		     /* output, opened for writing, seekable, a regular file */
	int direct_fd;	     /* a second open of the same file with O_DIRECT, or -1 */
	uint64_t offset;     /* where the stream starts in the file (QEMU's ,offset=N) */
	const char *machine; /* machine type for the stream; NULL = "pc-q35-10.0" */
	const struct snapmr_block *blocks;
	size_t n_blocks;
	enum snapmr_devstate devstate;
	int devstate_fd; /* read sequentially to EOF; -1 with SNAPMR_DEVSTATE_NONE */
};

/*
 * Writes a complete file: every block's non-zero pages, bitmaps, the device
 * state, checksums, and last a completion record, then makes it durable
 * (fdatasync) unless opts->no_sync. Bytes below args->offset are kept. The
 * caller writes to a temporary name and renames it into place after success
 * if it needs atomic replacement. Fills *ret_stats (may be NULL).
 *
 * Returns 0, or: -EINVAL bad arguments (a block name, length or address, a
 * direct_fd that is not the same file as fd, an output that is not a regular
 * file); -E2BIG a struct size the library does not know with non-zero extra
 * bytes; -EBADMSG a raw device-state tail that is not a valid stream tail;
 * -ENOSPC, -EIO, -EFBIG from the writes; -ENODATA or -EFAULT guest memory was
 * cut short under the save (a truncated backing file); -ENOMEM.
 */
SNAPMR_API int snapmr_save(const struct snapmr_save_args *args, const struct snapmr_opts *opts,
			   struct snapmr_stats *ret_stats, struct snapmr_error *err);

/* A decoded file; opaque. */
typedef struct snapmr_file snapmr_file;

/* snapmr_file_open(): find the stream by itself (0, or after a libvirt header). */
#define SNAPMR_OFFSET_DETECT UINT64_MAX

/*
 * Decodes the file behind fd (a regular file or block device): its stream,
 * starting at `offset` or found with SNAPMR_OFFSET_DETECT, every block's
 * header and bitmap, and its checksum table. A missing or damaged checksum
 * table is not an error here: snapmr_file_info() reports it, for the
 * caller's policy. fd must stay open while the file is used with it; the
 * handle does not own fd. Free *ret with snapmr_file_free().
 *
 * Returns 0, or: -EBADMSG not a mapped-ram stream, or a bad record or value;
 * -EPROTONOSUPPORT an unsupported version or feature; -ENODATA a truncated
 * record (a save cut short); -EOVERFLOW an offset or length outside the
 * file; -EINVAL fd is not a regular file or block device; -ENOMEM.
 */
SNAPMR_API int snapmr_file_open(int fd, uint64_t offset, snapmr_file **ret,
				struct snapmr_error *err);
/* NULL is fine. */
SNAPMR_API void snapmr_file_free(snapmr_file *f);

/* How much a file can be trusted. */
enum snapmr_integrity {
	SNAPMR_INTEGRITY_COMPLETE = 0,	 /* checksums present, completion record intact */
	SNAPMR_INTEGRITY_NONE = 1,	 /* no checksums: not written by snapmr (e.g. by QEMU) */
	SNAPMR_INTEGRITY_INCOMPLETE = 2, /* written by snapmr, never finished */
	SNAPMR_INTEGRITY_DAMAGED = 3,	 /* the checksum table is present but unusable */
};

/* What precedes the stream. */
enum snapmr_container {
	SNAPMR_CONTAINER_NONE = 0,	      /* the file starts with the stream */
	SNAPMR_CONTAINER_LIBVIRT = 1,	      /* a libvirt save image header */
	SNAPMR_CONTAINER_LIBVIRT_PARTIAL = 2, /* libvirt's header of an unfinished save */
};

/* The whole-file facts; strings live as long as the handle. */
struct snapmr_file_info {
	uint32_t size;
	enum snapmr_container container;
	uint64_t stream_offset; /* the stream's first byte */
	uint64_t stream_end;	/* first byte after the stream */
	const char *machine;	/* machine type */
	size_t n_capabilities;	/* migration capabilities: snapmr_file_capability() */
	size_t n_blocks;	/* RAM blocks: snapmr_file_block() */
	size_t n_sections;	/* device sections: snapmr_file_section() */
	uint32_t ram_section_id;
	uint64_t ram_total;    /* the RAM section's total of block lengths */
	uint64_t tail_offset;  /* the raw stream tail after RAM */
	bool has_device_state; /* snapmr's own device-state section */
	uint64_t device_state_offset;
	uint64_t device_state_length;
	uint64_t eof_offset;
	bool has_vmdesc; /* QEMU's VM description record */
	uint64_t vmdesc_offset;
	uint64_t vmdesc_length;
	uint64_t file_size;
	uint64_t allocated; /* bytes the file occupies on disk */
	enum snapmr_integrity integrity;
	const char *integrity_detail; /* why, for DAMAGED; "" otherwise */
	uint32_t chunk_size;	      /* checksum granularity, 0 without checksums */
	uint64_t table_offset;	      /* checksum table, 0 without checksums */
	bool snapmr_marker;	      /* written by snapmr */
	uint64_t trailing_bytes;      /* bytes after the completion record (appended later) */
};

/* Fills *ret (whose size the caller set). Returns 0, -EINVAL or -E2BIG. */
SNAPMR_API int snapmr_file_info(const snapmr_file *f, struct snapmr_file_info *ret);
/* Capability i (< n_capabilities), e.g. "mapped-ram"; NULL past the end. */
SNAPMR_API const char *snapmr_file_capability(const snapmr_file *f, size_t i);

struct snapmr_block_info {
	uint32_t size;
	const char *name;
	uint64_t length;	/* bytes */
	uint64_t pages;		/* 4 KiB pages */
	uint64_t pages_present; /* pages whose bitmap bit is set (stored in the file) */
	uint64_t header_offset; /* the block's mapped-ram header */
	uint64_t bitmap_offset;
	uint64_t bitmap_size;
	uint64_t pages_offset; /* page i of the block is stored at pages_offset + i * 4096 */
};

/* Block i (< n_blocks). Returns 0, -ENOENT past the end, -EINVAL or -E2BIG. */
SNAPMR_API int snapmr_file_block(const snapmr_file *f, size_t i, struct snapmr_block_info *ret);
/* The index of the block named `name`, or -ENOENT. */
SNAPMR_API long snapmr_file_find_block(const snapmr_file *f, const char *name);

enum snapmr_section_type {
	SNAPMR_SECTION_START = 1,
	SNAPMR_SECTION_PART = 2,
	SNAPMR_SECTION_END = 3,
	SNAPMR_SECTION_FULL = 4,
	SNAPMR_SECTION_COMMAND = 8,
};

struct snapmr_section_info {
	uint32_t size;
	enum snapmr_section_type type;
	uint32_t id;	   /* section id; 0 for a command */
	const char *name;  /* device idstr for START and FULL, "" otherwise */
	uint32_t instance; /* START and FULL */
	uint32_t version;  /* START and FULL */
	uint16_t command;  /* COMMAND */
	uint64_t offset;   /* the section's first byte */
	uint64_t length;   /* through its footer */
};

/* Section i (< n_sections). Returns 0, -ENOENT past the end, -EINVAL or -E2BIG. */
SNAPMR_API int snapmr_file_section(const snapmr_file *f, size_t i, struct snapmr_section_info *ret);

struct snapmr_restore_args {
	uint32_t size;
	int fd;	       /* the file f was opened from */
	int direct_fd; /* an O_DIRECT open of the same file, or -1 */
	const snapmr_file *file;
	/* Destinations, matched to the file's blocks by name; other blocks are left out. */
	const struct snapmr_block *blocks;
	size_t n_blocks;
	int devstate_fd;   /* receives the device state, or -1 */
	bool devstate_raw; /* the raw stream tail instead of snapmr's device-state section */
	bool force;	   /* restore an INCOMPLETE or DAMAGED file, unverified */
};

/*
 * Reads every present page into the destinations and makes every other page
 * zero, whatever the destination held. With checksums and without
 * opts->no_verify every chunk is checked as it arrives and the first
 * mismatch fails the restore (the destination then holds a partial restore).
 *
 * Returns 0, or: -EBADMSG a checksum mismatch (err names the block and file
 * offset); -EPERM an INCOMPLETE or DAMAGED file without args->force; -ENOENT
 * a destination block not in the file, or no device-state section;
 * -EINVAL a destination whose length differs from the file's block;
 * -EFAULT destination memory shrank; -EIO, -ENOMEM.
 */
SNAPMR_API int snapmr_restore(const struct snapmr_restore_args *args,
			      const struct snapmr_opts *opts, struct snapmr_stats *ret_stats,
			      struct snapmr_error *err);

/* One checksum mismatch: pages [first_page, first_page + n_pages) of a block. */
struct snapmr_mismatch {
	uint32_t size;
	const char *block;
	uint64_t first_page;
	uint64_t n_pages;
	uint64_t file_offset; /* where those pages are stored */
};

typedef void (*snapmr_mismatch_fn)(void *arg, const struct snapmr_mismatch *m);

struct snapmr_verify_args {
	uint32_t size;
	int fd;
	int direct_fd; /* or -1 */
	const snapmr_file *file;
	snapmr_mismatch_fn mismatch; /* called per bad chunk, in the caller's thread; or NULL */
	void *arg;
};

/*
 * Checks a file without restoring it: the checksum table against the stream,
 * every bitmap, every chunk of page data and the device state. Returns the
 * number of mismatching chunks (0 = intact), or: -ENOENT the file has no
 * checksums (integrity NONE or INCOMPLETE); -EBADMSG a DAMAGED table; -EIO,
 * -ENOMEM.
 */
SNAPMR_API long long snapmr_verify(const struct snapmr_verify_args *args,
				   const struct snapmr_opts *opts, struct snapmr_stats *ret_stats,
				   struct snapmr_error *err);

/* Flags for snapmr_read_pages(). */
#define SNAPMR_READ_NO_VERIFY 0x1u

/*
 * Reads pages [first_page, first_page + n_pages) of block `block` into buf
 * (n_pages * 4096 bytes): stored pages from the file, pages whose bit is
 * clear as zeros. With checksums, and without SNAPMR_READ_NO_VERIFY, the
 * checksum chunks the range touches are read whole and checked, so at most
 * one chunk on each side is read beyond the range. Safe to call from
 * several threads at once on one handle.
 *
 * Returns 0, or: -ERANGE the range is not inside the block; -ENOENT no such
 * block; -EBADMSG a checksum mismatch; -ENODATA the file ends early; -EIO,
 * -ENOMEM.
 */
SNAPMR_API int snapmr_read_pages(int fd, const snapmr_file *f, size_t block, uint64_t first_page,
				 uint64_t n_pages, void *buf, unsigned flags,
				 struct snapmr_error *err);

/*
 * Maps block `block` copy-on-write for an instant start: MAP_PRIVATE of the
 * file at the block's page region, readable and writable. Pages whose bit is
 * clear read as zeros (the file's holes; a clear page the file holds data
 * for is covered by an anonymous zero page). Writes go to private copies and
 * never reach the file. Pages fault in from the file (through the page
 * cache) on first touch.
 *
 * Conditions: fd is a regular file opened for reading, not with O_DIRECT;
 * the page region is page-aligned in the file; the file must not change
 * while mapped (a truncation makes touching the lost range raise SIGBUS).
 * Nothing is verified on this path: the checksums cover the logical
 * contents, which are only read as the guest touches them. Run
 * snapmr_verify() first (or alongside) where that matters.
 *
 * Returns 0 and the mapping in *ret_addr (unmap it with munmap(addr,
 * length)), or: -ENOENT no such block; -EINVAL not a regular file, or a
 * region not page-aligned; -E2BIG too many stale clear ranges to cover
 * (restore instead); -ENOMEM and mmap's other codes.
 */
SNAPMR_API int snapmr_map_block(int fd, const snapmr_file *f, size_t block, void **ret_addr,
				struct snapmr_error *err);

/* The library's version, "MAJOR.MINOR.PATCH". */
SNAPMR_API const char *snapmr_version(void);

#ifdef __cplusplus
}
#endif

#endif
