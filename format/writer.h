/* SPDX-License-Identifier: MIT */
/*
 * The write side of the file format: a plan of every byte range snapsave
 * writes that is not page data (docs/format.md section 1), and encoders for
 * each piece. The plan does no I/O: io/save.c writes each encoded piece at
 * the offset the plan gives, and the page data and bitmaps at the blocks'
 * layouts.
 */
#ifndef MR_WRITER_H
#define MR_WRITER_H

#include "buf.h"
#include "layout.h"
#include "reader.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One RAM block: the caller sets name and length, mr_writer_plan() the layout. */
struct mr_wblock {
	const char *name; /* 1..255 bytes, no control bytes (the caller checks) */
	uint64_t length;  /* a non-zero multiple of 4096 */
	struct mr_block_layout l;
};

/* What follows the last page region (docs/format.md sections 10-14). */
enum mr_wtail {
	MR_WTAIL_DEVSTATE, /* EOS, footer, snapmr/device-state, EOF, VMDESCRIPTION */
	MR_WTAIL_RAW,	   /* a QEMU stream tail, verbatim (--device-state-raw) */
};

struct mr_writer {
	/* Inputs. */
	uint64_t base;	     /* offset of the stream's first byte */
	const char *machine; /* NULL: MR_DEFAULT_MACHINE */
	uint32_t ram_id;     /* MR_RAM_SECTION_ID, or the raw tail's (mr_writer_check_tail()) */
	struct mr_wblock *blocks; /* the caller's array, in file order */
	size_t n_blocks;
	enum mr_wtail tail;

	/* The plan, from mr_writer_plan(); all offsets absolute. */
	uint64_t total;	     /* RAM bytes: the MEM_SIZE word */
	uint64_t head_len;   /* header, configuration, RAM START, MEM_SIZE: at base */
	uint64_t marker_off; /* the snapmr marker, in the first block's padding */
	uint64_t ram_end;    /* the EOS word after the last page region */
	/* MR_WTAIL_DEVSTATE: the section header (and the EOS word) start at ram_end. */
	uint64_t devstate_len_off; /* its be64 length, patched by mr_writer_encode_devstate_len() */
	uint64_t devstate_off;	   /* the device-state bytes, or the raw tail */

	/* From mr_writer_set_devstate_len() / mr_writer_set_raw_tail(). */
	uint64_t devstate_len;
	uint64_t end_off;    /* devstate footer, EOF, VMDESCRIPTION (MR_WTAIL_DEVSTATE) */
	uint64_t stream_end; /* where the trailer goes */
};

/* The total of the block lengths, or -EOVERFLOW if it wraps or is not page aligned. */
int mr_writer_total(const struct mr_writer *w, uint64_t *ret_total);

/*
 * Lays out the stream up to the tail: the head, every block (the first
 * always with room for the marker), the marker and the EOS word. Returns 0,
 * or -EOVERFLOW with err naming the block whose layout wraps and the offset
 * of its entry.
 */
int mr_writer_plan(struct mr_writer *w, struct mr_err *err);

/* Header, configuration, RAM START and MEM_SIZE: head_len bytes, to write at base. */
int mr_writer_encode_head(const struct mr_writer *w, struct mr_buf *b);
/* Block i's entry and MappedRamHeader, to write at blocks[i].l.entry_off. */
int mr_writer_encode_entry(const struct mr_writer *w, size_t i, struct mr_buf *b);
/* The marker's MR_SNAPMR_MARKER_LEN bytes, to write at marker_off. */
int mr_writer_encode_marker(struct mr_buf *b);

/*
 * MR_WTAIL_DEVSTATE: the RAM EOS word and footer, then the device-state
 * section header with a length of 0, to write at ram_end. The length is
 * known only once the state has been copied (it may come from a pipe).
 */
int mr_writer_encode_devstate_head(const struct mr_writer *w, struct mr_buf *b);
/* Records the device state's length: sets devstate_len, end_off and stream_end. */
int mr_writer_set_devstate_len(struct mr_writer *w, uint64_t len);
/* The be64 length, to write at devstate_len_off over the 0 written first. */
int mr_writer_encode_devstate_len(const struct mr_writer *w, struct mr_buf *b);
/* The section footer, EOF and the VMDESCRIPTION, to write at end_off. */
int mr_writer_encode_end(const struct mr_writer *w, struct mr_buf *b);

/*
 * MR_WTAIL_RAW: decodes a raw tail held in memory exactly as the reader will
 * inside the written file (mr_tail_parse()) and takes the RAM section id its
 * first footer names. Returns 0 or -errno with err (offsets in the tail).
 */
int mr_writer_check_tail(struct mr_writer *w, const uint8_t *tail, size_t len, struct mr_err *err);
/* Places a raw tail of len bytes at ram_end: sets devstate_len and stream_end. */
int mr_writer_set_raw_tail(struct mr_writer *w, uint64_t len);

#endif
