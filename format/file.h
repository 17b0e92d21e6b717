/* SPDX-License-Identifier: MIT */
/*
 * The whole file, read: the trailer, the stream it bounds, the snapmr marker,
 * a completion record moved by appended bytes, and the cross-checks between
 * them (docs/format.md sections 9 and 15). snap_inspect() runs this on a
 * descriptor, the fuzzer on memory.
 */
#ifndef MR_FILE_H
#define MR_FILE_H

#include "reader.h"
#include "trailer.h"

#include <stdbool.h>
#include <stdint.h>

struct mr_file {
	struct mr_image *img;	    /* bitmaps counted, not kept (MR_PARSE_COUNT_BITMAPS) */
	struct mr_trailer *trailer; /* NULL when absent or unusable; no chunk hashes kept */
	int trailer_status;	    /* 0, -ENOENT (none), or why it is unusable */
	char trailer_msg[512];	    /* the reason, when trailer_status is not 0 or -ENOENT */
	bool marker;		    /* written by snapsave: a missing trailer means unfinished */
	uint64_t appended;	    /* bytes after the completion record (0: it ends the file) */
	uint64_t record_off;	    /* where that completion record is, when appended */
	/* Set when mr_file_parse() fails: the stream ends early and no trailer says it ended. */
	bool incomplete;
};

/*
 * Parses the file in src (src->size: the file size) with its stream at
 * `offset`: the trailer first, since it says where the stream ends; if the
 * last 48 bytes are no completion record, one where the stream and its table
 * end (bytes appended after a complete file); then the stream, bounded by the
 * trailer, and the marker. A missing or bad trailer is not an error: it is
 * reported in trailer_status and trailer_msg. Returns 0 with *ret filled (free
 * with mr_file_clear()), or the stream's -errno with err and ret->incomplete.
 */
int mr_file_parse(const struct mr_src *src, uint64_t offset, struct mr_file *ret,
		  struct mr_err *err);
void mr_file_clear(struct mr_file *f);

/* Is the snapmr marker in the padding after the first bitmap that has room for it? */
bool mr_file_has_marker(const struct mr_src *src, const struct mr_image *img);

/*
 * The device state's byte range: the snapmr section, or with `raw` the raw
 * tail after RAM. -EPROTONOSUPPORT (err->off and err->section name the
 * section) when a section precedes RAM, which a tail-only copy would lose;
 * -ENOENT when there is no device-state section.
 */
int mr_file_devstate_range(const struct mr_image *img, bool raw, uint64_t *ret_off,
			   uint64_t *ret_len, struct mr_err *err);

#endif
