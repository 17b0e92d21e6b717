/* SPDX-License-Identifier: MIT */
/*
 * QEMU's classic (precopy, not mapped-ram) migration stream as QEMU writes it
 * with the x-ignore-shared capability: the RAM section lists every block with
 * its guest address, pages travel inline only for the blocks that are not in
 * a shared memory backend. See docs/format-classic.md.
 *
 * The decoder reads the stream once, front to back, from a sequential source
 * (a pipe): it never seeks and holds at most one read buffer plus the opaque
 * head and tail bytes. Pages go straight into memory the caller provides per
 * block. The encoder writes the stream a destination QEMU started with
 * -incoming defer and x-ignore-shared loads. No threads, no fds, no printing.
 *
 * Error codes (as in reader.h): -EBADMSG bad magic, footer, record or value;
 * -EPROTONOSUPPORT a version, capability or record this code does not handle
 * (postcopy, compression, XBZRLE, RDMA, multifd, early-setup devices);
 * -ENODATA the stream ends inside a record or before its end; -EOVERFLOW a
 * length or offset out of range; -EFBIG the tail exceeds its cap; -ENOMEM;
 * other -errno from the callbacks. struct mr_err names the stream offset of
 * the offending record (counted from the stream's first byte) and the block.
 */
#ifndef MR_CLASSIC_H
#define MR_CLASSIC_H

#include "buf.h"
#include "reader.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MR_CAP_IGNORE_SHARED "x-ignore-shared"
#define MR_CAP_MAPPED_RAM    "mapped-ram"

/* Default cap on the opaque bytes after the RAM section (device state). */
#define MR_CLASSIC_TAIL_MAX (64u << 20)
/* Cap on the COMMAND records kept before the RAM section. */
#define MR_CLASSIC_HEAD_MAX 4096u
/* Cap on the number of blocks in the MEM_SIZE list. */
#define MR_CLASSIC_BLOCKS_MAX 4096u

/* QEMU's COMMAND ids (enum qemu_vm_cmd) that the decoder tells apart. */
#define MR_CMD_OPEN_RETURN_PATH 1u
#define MR_CMD_PING		2u
#define MR_CMD_POSTCOPY_ADVISE	3u

/* One RAM block of the MEM_SIZE list. */
struct mr_classic_block {
	char name[MR_NAME_MAX + 1];
	uint64_t length; /* used_length, a multiple of 4096 */
	uint64_t gpa;	 /* the guest address x-ignore-shared adds */
	/*
	 * Set by the caller's blocks() callback: `length` bytes that receive
	 * the block's pages, or NULL for a block whose pages must not travel
	 * (a shared backend). Owned by the caller.
	 */
	uint8_t *mem;
	/* Filled by the decoder for blocks with memory: */
	uint64_t *got;	     /* pages received (bitmap, host words); owned by the result */
	uint64_t pages;	     /* PAGE records */
	uint64_t zero_pages; /* ZERO records */
};

struct mr_classic_ops {
	/* Reads up to len bytes: returns the count, 0 at end of stream, or -errno. */
	long (*read)(void *ctx, void *buf, size_t len);
	/*
	 * Called once, when the block list is known and before any page: sets
	 * blocks[i].mem for the blocks whose pages may arrive. 0 or -errno
	 * (which the decoder returns). May be NULL: no block takes pages.
	 */
	int (*blocks)(void *blocks_ctx, struct mr_classic_block *blocks, size_t n);
	void *ctx;	   /* for read() */
	void *blocks_ctx;  /* for blocks() */
	uint64_t tail_max; /* 0: MR_CLASSIC_TAIL_MAX */
};

struct mr_classic {
	char machine[MR_NAME_MAX + 1];
	char **caps; /* capability names, as listed */
	unsigned n_caps;

	uint8_t *head; /* COMMAND records before the RAM section, verbatim */
	size_t head_len;

	uint32_t ram_id;
	uint64_t ram_total; /* MEM_SIZE */
	struct mr_classic_block *blocks;
	size_t n_blocks;
	unsigned ram_parts;    /* PART sections of RAM */
	bool switchover_start; /* a COMMAND SWITCHOVER_START came before RAM END */
	uint64_t tail_off;     /* stream offset of the first byte after the RAM END footer */
	uint8_t *tail;	       /* device sections, EOF, VMDESCRIPTION, verbatim */
	size_t tail_len;
};

/*
 * Decodes a whole stream from ops->read. On success *ret is a new result the
 * caller frees with mr_classic_free() (which leaves blocks[].mem alone). On
 * failure returns -errno, fills *err (if not NULL), and the memory the
 * blocks() callback handed out may hold part of the pages.
 */
int mr_classic_decode(const struct mr_classic_ops *ops, struct mr_classic **ret,
		      struct mr_err *err);
void mr_classic_free(struct mr_classic *c);

/* The block named `name`, or NULL. */
struct mr_classic_block *mr_classic_block(const struct mr_classic *c, const char *name);

/* One block for the encoder. */
struct mr_classic_enc_block {
	const char *name; /* 1..255 bytes */
	uint64_t length;  /* a multiple of 4096 */
	uint64_t gpa;
	/*
	 * NULL: a shared block, listed but no page sent. Otherwise `length`
	 * bytes, every page sent: all-zero ones as ZERO records, the rest as
	 * PAGE records.
	 */
	const uint8_t *data;
	/* Optional with data: a page whose bit is clear is sent as zero, data unread. */
	const uint64_t *bitmap;
};

struct mr_classic_enc {
	const char *machine; /* exact versioned machine type, 1..255 bytes */
	uint32_t ram_id;     /* the source's RAM section id, not 0 */
	const struct mr_classic_enc_block *blocks;
	size_t n_blocks;
	bool switchover_start; /* write COMMAND SWITCHOVER_START before RAM END */
	const uint8_t *head;   /* optional COMMAND records to write before RAM START */
	size_t head_len;
	const uint8_t *tail; /* device sections, EOF, VMDESCRIPTION: written verbatim */
	size_t tail_len;
	/* Takes all len bytes or returns -errno. */
	int (*write)(void *ctx, const void *buf, size_t len);
	void *ctx;
};

/*
 * Writes the stream: header, configuration ["x-ignore-shared"], RAM START
 * (MEM_SIZE list with GPAs, EOS), one RAM PART with the pages of the blocks
 * that have data (EOS), the optional SWITCHOVER_START, RAM END (EOS), then
 * the tail. Returns 0, -EINVAL for bad arguments (err names the block), or
 * the write callback's -errno. Memory use is bounded by one 256 KiB buffer.
 */
int mr_classic_encode(const struct mr_classic_enc *e, struct mr_err *err);

/* A write callback for mr_classic_encode() appending to the mr_buf `ctx`. */
int mr_classic_write_buf(void *ctx, const void *buf, size_t len);

/*
 * The bytes a mapped-ram file puts between its last page region and the
 * device sections of `c`: EOS + footer of RAM START, SWITCHOVER_START if the
 * classic stream had one, RAM END (EOS + footer). Followed by c->tail they
 * form the raw tail of SNAP_DEVSTATE_RAW (docs/format.md section 14).
 */
void mr_classic_raw_tail_prefix(struct mr_buf *b, uint32_t ram_id, bool switchover_start);

/*
 * The reverse, on a mapped-ram raw tail (`len` bytes from its RAM EOS word
 * on): skips EOS + footer, RAM PART/END parts that carry only EOS and
 * COMMAND records. Returns 0 with the offset of the first device byte, the
 * RAM id and whether SWITCHOVER_START was seen; -ENODATA if it is cut short,
 * -EBADMSG for anything else before the device sections (err->off is
 * relative to `raw`).
 */
int mr_classic_split_raw_tail(const uint8_t *raw, size_t len, size_t *ret_dev_off,
			      uint32_t *ret_ram_id, bool *ret_switchover, struct mr_err *err);

#endif
