// SPDX-License-Identifier: MIT
/* Bounded one-line messages and the JSON string escaper the tools share. */
#include "msg.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct msg msg_init(char *buf, size_t size)
{
	struct msg m = { .buf = size ? buf : NULL, .size = buf ? size : 0 };

	if (m.buf)
		m.buf[0] = '\0';
	return m;
}

void msg_add(struct msg *m, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	if (m->len < m->size)
		n = vsnprintf(m->buf + m->len, m->size - m->len, fmt, ap);
	else
		n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n > 0)
		m->len += (size_t)n;
}

void msg_end(struct msg *m)
{
	if (m->buf && m->len >= m->size && m->size >= 4)
		memcpy(m->buf + m->size - 4, "...", 4);
}

void msg_set(char *buf, size_t size, const char *fmt, ...)
{
	struct msg m = msg_init(buf, size);
	va_list ap;
	int n;

	if (!m.buf)
		return;
	va_start(ap, fmt);
	n = vsnprintf(m.buf, m.size, fmt, ap);
	va_end(ap);
	m.len = n > 0 ? (size_t)n : 0;
	msg_end(&m);
}

/* Length of the well-formed UTF-8 sequence at p (RFC 3629), or 0. */
static size_t utf8_seq_len(const unsigned char *p)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		n = 2;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		n = 3;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		n = 4;
	else
		return 0;
	/* No overlong forms, no UTF-16 surrogates, nothing past U+10FFFF. */
	if (p[0] == 0xe0)
		lo = 0xa0;
	else if (p[0] == 0xed)
		hi = 0x9f;
	else if (p[0] == 0xf0)
		lo = 0x90;
	else if (p[0] == 0xf4)
		hi = 0x8f;
	if (p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	return n;
}

size_t snap_json_escape(const char *s, char out[SNAP_JSON_ESCAPE_MAX])
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)s;
	size_t n = utf8_seq_len(p);

	if (p[0] == '"' || p[0] == '\\') {
		out[0] = '\\';
		out[1] = (char)p[0];
		out[2] = 0;
		return 1;
	}
	if (n && p[0] >= 0x20 && p[0] != 0x7f) {
		memcpy(out, p, n);
		out[n] = 0;
		return n;
	}
	/* A control byte, or a byte of no valid sequence: read as Latin-1. */
	memcpy(out, "\\u00", 4);
	out[4] = hex[p[0] >> 4];
	out[5] = hex[p[0] & 15];
	out[6] = 0;
	return 1;
}

void msg_json_str(struct msg *m, const char *str)
{
	char esc[SNAP_JSON_ESCAPE_MAX];

	while (*str) {
		str += snap_json_escape(str, esc);
		msg_add(m, "%s", esc);
	}
}
