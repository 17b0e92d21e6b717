/* SPDX-License-Identifier: MIT */
/*
 * The resume record: what snapsave --qmp keeps about the source VM so that
 * snaprestore can rebuild the classic stream a waiting QEMU loads (the block
 * list with guest addresses, which blocks live in shared backends, the RAM
 * section id). QEMU never reads it. One JSON object, strictly decoded; see
 * docs/format-classic.md section 9.
 *
 * Error codes: -EBADMSG invalid JSON, unknown or missing key, wrong type or
 * value; -EPROTONOSUPPORT another record version; -EOVERFLOW a record,
 * string or list over its bound; -EINVAL (encoder) a field it cannot write;
 * -ENOMEM.
 */
#ifndef MR_RESUME_H
#define MR_RESUME_H

#include "buf.h"
#include "layout.h"
#include "reader.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MR_RESUME_KEY	   "snapmr-resume"
#define MR_RESUME_VERSION  1u
#define MR_RESUME_MAX	   (1u << 20) /* bytes of JSON */
#define MR_RESUME_BLOCKS   4096u
#define MR_RESUME_PATH_MAX 4096u /* mem-path bytes */
#define MR_RESUME_QEMU_MAX 63u	 /* version string bytes */

struct mr_resume_block {
	char name[MR_NAME_MAX + 1];	       /* RAMBlock idstr */
	uint64_t length;		       /* used_length, a multiple of 4096 */
	uint64_t gpa;			       /* as the classic stream listed it */
	bool shared;			       /* in a shared backend: restored from/to its file */
	char backend[MR_NAME_MAX + 1];	       /* memory backend id, "" if unknown */
	char mem_path[MR_RESUME_PATH_MAX + 1]; /* backend file, "" if unknown */
};

struct mr_resume {
	char machine[MR_NAME_MAX + 1];	   /* exact versioned machine type */
	char qemu[MR_RESUME_QEMU_MAX + 1]; /* source QEMU version, e.g. "10.0.2" */
	uint32_t ram_id;		   /* the source's RAM section id, not 0 */
	bool running;			   /* the guest ran before snapsave paused it */
	bool switchover_start;		   /* the stream had COMMAND SWITCHOVER_START */
	struct mr_resume_block *blocks;
	size_t n_blocks;
};

/* Appends the record's JSON (no NUL) to b. 0, -EINVAL (err says which field) or -ENOMEM. */
int mr_resume_encode(const struct mr_resume *r, struct mr_buf *b, struct mr_err *err);

/*
 * Decodes len bytes of JSON. On success *ret is a new record freed with
 * mr_resume_free(); on failure -errno and *err (if not NULL) names the key.
 */
int mr_resume_decode(const void *json, size_t len, struct mr_resume **ret, struct mr_err *err);
void mr_resume_free(struct mr_resume *r);

#endif
