/* SPDX-License-Identifier: MIT */
/*
 * A growable byte buffer for building stream records. Appends never fail
 * individually: the first allocation failure is latched in ->err so callers
 * check once after building a record.
 */
#ifndef MR_BUF_H
#define MR_BUF_H

#include <stddef.h>
#include <stdint.h>

struct mr_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
	int err; /* 0 or -ENOMEM, sticky */
};

#define MR_BUF_INIT           \
	{                     \
		NULL, 0, 0, 0 \
	}

void mr_buf_free(struct mr_buf *b);
void mr_buf_reset(struct mr_buf *b);
void mr_buf_put(struct mr_buf *b, const void *p, size_t n);
void mr_buf_u8(struct mr_buf *b, uint8_t v);
void mr_buf_be16(struct mr_buf *b, uint16_t v);
void mr_buf_be32(struct mr_buf *b, uint32_t v);
void mr_buf_be64(struct mr_buf *b, uint64_t v);
/* A u8 length then the bytes; -EINVAL latched if the string exceeds 255. */
void mr_buf_str8(struct mr_buf *b, const char *s);
/* printf-style append of text (used for JSON); no terminating NUL counted. */
void mr_buf_printf(struct mr_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/*
 * An mr_src read callback over the bytes of the struct mr_buf in ctx: short
 * only at its end. For streams held in memory (a raw tail, tests, fuzzing).
 */
long mr_buf_pread(void *ctx, void *buf, size_t len, uint64_t off);
/* Appends s as a JSON string literal, quotes included. */
void mr_buf_json_str(struct mr_buf *b, const char *s);

#endif
