// SPDX-License-Identifier: MIT
/*
 * The QMP form of the fd-passing protocol (docs/fd-passing.md): a hand-written
 * parser for the one JSON object a line holds, kept instead of json-c because it
 * rejects duplicate keys. It reads untrusted socket input: tests/fuzz/fuzz-fdproto.c.
 */
#include "fdproto-json.h"
#include "msg.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Just enough JSON for one QMP command object, without a library. */
struct jp {
	const char *p;
	const char *line;
	struct snap_fdproto_req *req;
	char *errbuf;
	size_t errlen;
};

static void jws(struct jp *j)
{
	while (*j->p == ' ' || *j->p == '\t')
		j->p++;
}

static int jfail(struct jp *j, const char *what)
{
	msg_set(j->errbuf, j->errlen, "bad JSON at column %zu: %s", (size_t)(j->p - j->line) + 1,
		what);
	return -EINVAL;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes a string into out (size > the line length, so it always fits) or skips it. */
static int jstring(struct jp *j, char *out)
{
	static const char esc_from[] = "\"\\/bfnrt", esc_to[] = "\"\\/\b\f\n\r\t";
	size_t n = 0;

	if (*j->p != '"')
		return jfail(j, "expected a string");
	j->p++;
	for (;;) {
		unsigned char c = (unsigned char)*j->p;
		unsigned cp = 0;
		const char *esc;

		if (!c)
			return jfail(j, "unterminated string");
		j->p++;
		if (c == '"')
			break;
		if (c < 0x20)
			return jfail(j, "control character in a string");
		if (c != '\\') {
			if (out)
				out[n++] = (char)c;
			continue;
		}
		c = (unsigned char)*j->p++;
		if (c == 'u') {
			for (int i = 0; i < 4; i++) {
				int h = hexval(*j->p);

				if (h < 0)
					return jfail(j, "bad \\u escape");
				cp = cp << 4 | (unsigned)h;
				j->p++;
			}
			if (!cp || (cp >= 0xd800 && cp <= 0xdfff))
				return jfail(j, "\\u0000 and surrogate escapes are not supported");
		} else if (c && (esc = strchr(esc_from, c))) {
			cp = (unsigned char)esc_to[esc - esc_from];
		} else {
			j->p--;
			return jfail(j, "bad escape");
		}
		if (!out)
			continue;
		if (cp < 0x80) {
			out[n++] = (char)cp;
		} else if (cp < 0x800) {
			out[n++] = (char)(0xc0 | cp >> 6);
			out[n++] = (char)(0x80 | (cp & 0x3f));
		} else {
			out[n++] = (char)(0xe0 | cp >> 12);
			out[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
			out[n++] = (char)(0x80 | (cp & 0x3f));
		}
	}
	if (out)
		out[n] = '\0';
	return 0;
}

/* An integer, no fraction or exponent (QMP's "int"), here never negative. */
static int jint(struct jp *j, int64_t *ret)
{
	bool neg = *j->p == '-', digits = false, overflow = false;
	int64_t v = 0;

	j->p += neg;
	for (; *j->p >= '0' && *j->p <= '9'; j->p++) {
		int d = *j->p - '0';

		digits = true;
		if (v > (INT64_MAX - d) / 10)
			overflow = true;
		else
			v = v * 10 + d;
	}
	if (*j->p == '.' || *j->p == 'e' || *j->p == 'E')
		return jfail(j, "expected an integer");
	if (neg || !digits || overflow)
		return jfail(j, "expected a non-negative integer");
	*ret = v;
	return 0;
}

/* Iterates the members of an object: calls member() for each key. */
static int jobject(struct jp *j, int (*member)(struct jp *j, const char *key, unsigned *seen),
		   unsigned *seen)
{
	char key[32];

	jws(j);
	if (*j->p != '{')
		return jfail(j, "expected an object");
	j->p++;
	jws(j);
	if (*j->p == '}') {
		j->p++;
		return 0;
	}
	for (;;) {
		const char *k = j->p;
		int r;

		r = jstring(j, NULL);
		if (r < 0)
			return r;
		/* Keys are short and plain: compare the raw text between the quotes. */
		if ((size_t)(j->p - k) - 2 >= sizeof(key) ||
		    memchr(k + 1, '\\', (size_t)(j->p - k) - 2))
			snprintf(key, sizeof(key), "?");
		else
			snprintf(key, sizeof(key), "%.*s", (int)(j->p - k) - 2, k + 1);
		jws(j);
		if (*j->p != ':')
			return jfail(j, "expected ':'");
		j->p++;
		jws(j);
		r = member(j, key, seen);
		if (r < 0)
			return r;
		jws(j);
		if (*j->p == '}') {
			j->p++;
			return 0;
		}
		if (*j->p != ',')
			return jfail(j, "expected ',' or '}'");
		j->p++;
		jws(j);
	}
}

enum {
	SEEN_EXECUTE = 1,
	SEEN_ARGS = 2,
	SEEN_ID = 4,
	SEEN_FDSET = 8,
	SEEN_OPAQUE = 16,
	SEEN_ANY_ARG = 32
};

static int jonce(struct jp *j, unsigned *seen, unsigned bit, const char *key)
{
	if (*seen & bit) {
		msg_set(j->errbuf, j->errlen, "key '%s' given twice", key);
		return -EINVAL;
	}
	*seen |= bit;
	return 0;
}

static int jargument(struct jp *j, const char *key, unsigned *seen)
{
	struct snap_fdproto_req *q = j->req;
	int r;

	if (!strcmp(key, "fdset-id")) {
		r = jonce(j, seen, SEEN_FDSET, key);
		return r < 0 ? r : jint(j, &q->set_id);
	}
	if (!strcmp(key, "opaque")) {
		r = jonce(j, seen, SEEN_OPAQUE, key);
		if (r < 0)
			return r;
		q->has_opaque = true;
		return jstring(j, q->opaque);
	}
	msg_set(j->errbuf, j->errlen, "parameter '%s' is unexpected", key);
	return -EINVAL;
}

static int jtop(struct jp *j, const char *key, unsigned *seen)
{
	struct snap_fdproto_req *q = j->req;
	int r;

	if (!strcmp(key, "execute")) {
		char name[SNAP_FDSET_LINE_MAX];

		r = jonce(j, seen, SEEN_EXECUTE, key);
		if (r >= 0)
			r = jstring(j, name);
		if (r < 0)
			return r;
		if (!strcmp(name, "add-fd")) {
			q->cmd = SNAP_FDPROTO_ADD_FD;
		} else if (!strcmp(name, "start")) {
			q->cmd = SNAP_FDPROTO_START;
		} else {
			msg_set(j->errbuf, j->errlen,
				"the command '%.64s' has not been found (add-fd, start)", name);
			return -EINVAL;
		}
		return 0;
	}
	if (!strcmp(key, "arguments")) {
		unsigned args_seen = 0;

		r = jonce(j, seen, SEEN_ARGS, key);
		if (r < 0)
			return r;
		/* The command may come after its arguments: check them once both are known. */
		r = jobject(j, jargument, &args_seen);
		if (r < 0)
			return r;
		if (args_seen)
			*seen |= SEEN_ANY_ARG;
		return 0;
	}
	if (!strcmp(key, "id")) {
		const char *start = j->p;

		r = jonce(j, seen, SEEN_ID, key);
		if (r < 0)
			return r;
		if (*j->p == '"') {
			r = jstring(j, NULL);
		} else {
			int64_t v;

			r = jint(j, &v);
		}
		if (r < 0)
			return r;
		q->id = start;
		q->id_len = (size_t)(j->p - start);
		return 0;
	}
	msg_set(j->errbuf, j->errlen, "key '%s' is unexpected (execute, arguments, id)", key);
	return -EINVAL;
}

int snap_fdproto_parse_json(const char *line, struct snap_fdproto_req *req, char *errbuf,
			    size_t errlen)
{
	struct jp j = { .p = line, .line = line, .req = req, .errbuf = errbuf, .errlen = errlen };
	unsigned seen = 0;
	int r;

	req->set_id = -1;
	req->has_opaque = false;
	req->opaque[0] = '\0';
	req->id = NULL;
	req->id_len = 0;
	/* Decoded strings fit req->opaque because they are never longer than the line. */
	if (strlen(line) >= SNAP_FDSET_LINE_MAX) {
		msg_set(errbuf, errlen, "line longer than %d bytes", SNAP_FDSET_LINE_MAX);
		return -EMSGSIZE;
	}
	r = jobject(&j, jtop, &seen);
	if (r < 0)
		return r;
	jws(&j);
	if (*j.p)
		return jfail(&j, "text after the object");
	if (!(seen & SEEN_EXECUTE)) {
		msg_set(errbuf, errlen, "key 'execute' is missing");
		return -EINVAL;
	}
	if (req->cmd == SNAP_FDPROTO_START && (seen & SEEN_ANY_ARG)) {
		msg_set(errbuf, errlen, "start takes no arguments");
		return -EINVAL;
	}
	return 0;
}
