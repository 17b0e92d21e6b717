/* SPDX-License-Identifier: MIT */
/*
 * One-line messages for the tools' errbuf/errlen convention: a bounded builder
 * that marks a message cut short with "...", and the JSON string escaper.
 */
#ifndef SNAP_TOOLS_MSG_H
#define SNAP_TOOLS_MSG_H

#include <stddef.h>

/* Appends to buf, remembers overflow; msg_end() marks it with "..." at the end. */
struct msg {
	char *buf;
	size_t size;
	size_t len; /* what would have been written */
};

/* A builder over buf (may be NULL or size 0: everything is then dropped); buf becomes "". */
struct msg msg_init(char *buf, size_t size);
void msg_add(struct msg *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Ends a message that did not fit with "...". */
void msg_end(struct msg *m);
/* The whole message in one call: buf (may be NULL) gets fmt, ending in "..." if cut. */
void msg_set(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Room for one snap_json_escape() piece and its NUL. */
#define SNAP_JSON_ESCAPE_MAX 7

/*
 * JSON string content for the character at s (not its NUL): a well-formed
 * UTF-8 sequence passes through whole; '"', '\\', control bytes and every
 * byte that starts no well-formed sequence become \u00XX (that is, such a
 * byte is read as Latin-1), so the text is always valid UTF-8. Writes the
 * NUL-terminated piece to out and returns the bytes of s consumed (1 to 4).
 * Async-signal-safe.
 */
size_t snap_json_escape(const char *s, char out[SNAP_JSON_ESCAPE_MAX]);

/* Appends str as JSON string content (without the quotes). */
void msg_json_str(struct msg *m, const char *str);

#endif
