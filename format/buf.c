// SPDX-License-Identifier: MIT
/* Growable byte buffer with big-endian appenders. */
#include "buf.h"
#include "be.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mr_buf_free(struct mr_buf *b)
{
	free(b->data);
	*b = (struct mr_buf)MR_BUF_INIT;
}

void mr_buf_reset(struct mr_buf *b)
{
	b->len = 0;
	b->err = 0;
}

static uint8_t *grow(struct mr_buf *b, size_t n)
{
	if (b->err)
		return NULL;
	if (n > SIZE_MAX - b->len) {
		b->err = -ENOMEM;
		return NULL;
	}
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		uint8_t *p;

		while (cap < b->len + n)
			cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
		p = realloc(b->data, cap);
		if (!p) {
			b->err = -ENOMEM;
			return NULL;
		}
		b->data = p;
		b->cap = cap;
	}
	b->len += n;
	return b->data + b->len - n;
}

void mr_buf_put(struct mr_buf *b, const void *p, size_t n)
{
	uint8_t *d = grow(b, n);

	if (d && n)
		memcpy(d, p, n);
}

void mr_buf_u8(struct mr_buf *b, uint8_t v)
{
	mr_buf_put(b, &v, 1);
}

void mr_buf_be16(struct mr_buf *b, uint16_t v)
{
	uint8_t *d = grow(b, 2);

	if (d)
		mr_put_be16(d, v);
}

void mr_buf_be32(struct mr_buf *b, uint32_t v)
{
	uint8_t *d = grow(b, 4);

	if (d)
		mr_put_be32(d, v);
}

void mr_buf_be64(struct mr_buf *b, uint64_t v)
{
	uint8_t *d = grow(b, 8);

	if (d)
		mr_put_be64(d, v);
}

void mr_buf_str8(struct mr_buf *b, const char *s)
{
	size_t n = strlen(s);

	if (n > 255) {
		if (!b->err)
			b->err = -EINVAL;
		return;
	}
	mr_buf_u8(b, (uint8_t)n);
	mr_buf_put(b, s, n);
}

void mr_buf_printf(struct mr_buf *b, const char *fmt, ...)
{
	va_list ap;
	char small[256];
	int n;

	va_start(ap, fmt);
	n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0) {
		if (!b->err)
			b->err = -EINVAL;
		return;
	}
	if ((size_t)n < sizeof(small)) {
		mr_buf_put(b, small, (size_t)n);
		return;
	}
	uint8_t *d = grow(b, (size_t)n + 1);

	if (!d)
		return;
	va_start(ap, fmt);
	vsnprintf((char *)d, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len--; /* drop the NUL */
}

void mr_buf_json_str(struct mr_buf *b, const char *s)
{
	mr_buf_u8(b, '"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\') {
			mr_buf_u8(b, '\\');
			mr_buf_u8(b, *p);
		} else if (*p < 0x20 || *p == 0x7f) {
			mr_buf_printf(b, "\\u%04x", *p);
		} else {
			mr_buf_u8(b, *p);
		}
	}
	mr_buf_u8(b, '"');
}

long mr_buf_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
	const struct mr_buf *b = ctx;

	if (off >= b->len)
		return 0;
	if (len > b->len - off)
		len = b->len - (size_t)off;
	memcpy(buf, b->data + off, len);
	return (long)len;
}
