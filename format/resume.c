// SPDX-License-Identifier: MIT
/*
 * Resume record (format/resume.h) in JSON through json-c. The decoder takes
 * nothing on trust: every key is known, every type and bound checked.
 */
#include "resume.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

/* 0..max bytes (min 1 if required), no control byte. */
static bool good_str(const char *s, size_t max, bool required)
{
	size_t n = strlen(s);

	if (n > max || (required && !n))
		return false;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
			return false;
	return true;
}

/* json-c numbers are int64: values must stay below INT64_MAX (see vmdesc.c). */
#define JSON_U64_MAX ((uint64_t)INT64_MAX - 1)

static int add(json_object *o, const char *key, json_object *v)
{
	if (!v || json_object_object_add(o, key, v)) {
		json_object_put(v);
		return -ENOMEM;
	}
	return 0;
}

static int encode_block(json_object *arr, const struct mr_resume_block *b, struct mr_err *err)
{
	json_object *o;
	int r;

	if (!good_str(b->name, MR_NAME_MAX, true))
		return mr_fail(err, -EINVAL, 0, b->name, "bad block name");
	if (b->length % MR_PAGE_SIZE || b->length > JSON_U64_MAX || b->gpa > JSON_U64_MAX)
		return mr_fail(err, -EINVAL, 0, b->name, "bad length or gpa");
	if (!good_str(b->backend, MR_NAME_MAX, false) ||
	    !good_str(b->mem_path, MR_RESUME_PATH_MAX, false))
		return mr_fail(err, -EINVAL, 0, b->name, "bad backend or mem-path");
	o = json_object_new_object();
	if (!o)
		return -ENOMEM;
	r = add(o, "name", json_object_new_string(b->name));
	if (!r)
		r = add(o, "length", json_object_new_int64((int64_t)b->length));
	if (!r)
		r = add(o, "gpa", json_object_new_int64((int64_t)b->gpa));
	if (!r)
		r = add(o, "shared", json_object_new_boolean(b->shared));
	if (!r && b->backend[0])
		r = add(o, "backend", json_object_new_string(b->backend));
	if (!r && b->mem_path[0])
		r = add(o, "mem-path", json_object_new_string(b->mem_path));
	if (!r && json_object_array_add(arr, o))
		r = -ENOMEM;
	if (r)
		json_object_put(o);
	return r;
}

int mr_resume_encode(const struct mr_resume *rec, struct mr_buf *b, struct mr_err *err)
{
	json_object *o, *arr;
	const char *s;
	size_t len;
	int r;

	if (!good_str(rec->machine, MR_NAME_MAX, true) ||
	    !good_str(rec->qemu, MR_RESUME_QEMU_MAX, true))
		return mr_fail(err, -EINVAL, 0, NULL, "bad machine or qemu version");
	if (!rec->ram_id || !rec->n_blocks || rec->n_blocks > MR_RESUME_BLOCKS)
		return mr_fail(err, -EINVAL, 0, NULL, "RAM id %u, %zu blocks", rec->ram_id,
			       rec->n_blocks);
	for (size_t i = 0; i < rec->n_blocks; i++)
		for (size_t j = 0; j < i; j++)
			if (!strcmp(rec->blocks[i].name, rec->blocks[j].name))
				return mr_fail(err, -EINVAL, 0, rec->blocks[i].name,
					       "block listed twice");
	o = json_object_new_object();
	arr = json_object_new_array();
	if (!o || !arr) {
		json_object_put(o);
		json_object_put(arr);
		return -ENOMEM;
	}
	r = add(o, MR_RESUME_KEY, json_object_new_int(MR_RESUME_VERSION));
	if (!r)
		r = add(o, "machine", json_object_new_string(rec->machine));
	if (!r)
		r = add(o, "qemu", json_object_new_string(rec->qemu));
	if (!r)
		r = add(o, "ram-section-id", json_object_new_int64(rec->ram_id));
	if (!r)
		r = add(o, "running", json_object_new_boolean(rec->running));
	if (!r)
		r = add(o, "switchover-start", json_object_new_boolean(rec->switchover_start));
	if (!r)
		r = add(o, "blocks", arr);
	else
		json_object_put(arr);
	for (size_t i = 0; !r && i < rec->n_blocks; i++)
		r = encode_block(arr, &rec->blocks[i], err);
	if (!r) {
		s = json_object_to_json_string_length(
			o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
		if (!s)
			r = -ENOMEM;
		else if (len > MR_RESUME_MAX)
			r = mr_fail(err, -EINVAL, 0, NULL, "record of %zu bytes", len);
		else
			mr_buf_put(b, s, len);
		if (!r)
			r = b->err;
	}
	json_object_put(o);
	return r;
}

/* ---- decoder ---- */

static int get_str(json_object *v, char *out, size_t max, bool required, const char *key,
		   const char *block, struct mr_err *err)
{
	const char *s;
	int n;

	if (!json_object_is_type(v, json_type_string))
		return mr_fail(err, -EBADMSG, 0, block, "%s: not a string", key);
	s = json_object_get_string(v);
	n = json_object_get_string_len(v);
	if (n < 0 || (size_t)n > max)
		return mr_fail(err, -EOVERFLOW, 0, block, "%s: %d bytes (at most %zu)", key, n,
			       max);
	if (memchr(s, '\0', (size_t)n) || !good_str(s, max, required))
		return mr_fail(err, -EBADMSG, 0, block, "%s: empty or has a control byte", key);
	memcpy(out, s, (size_t)n);
	out[n] = '\0';
	return 0;
}

static int get_u64(json_object *v, uint64_t *out, const char *key, const char *block,
		   struct mr_err *err)
{
	int64_t x;

	if (!json_object_is_type(v, json_type_int))
		return mr_fail(err, -EBADMSG, 0, block, "%s: not an integer", key);
	x = json_object_get_int64(v);
	/* json-c clamps out-of-range literals to INT64_MIN/MAX. */
	if (x < 0 || x == INT64_MAX)
		return mr_fail(err, -EBADMSG, 0, block, "%s: out of range", key);
	*out = (uint64_t)x;
	return 0;
}

static int get_bool(json_object *v, bool *out, const char *key, const char *block,
		    struct mr_err *err)
{
	if (!json_object_is_type(v, json_type_boolean))
		return mr_fail(err, -EBADMSG, 0, block, "%s: not a boolean", key);
	*out = json_object_get_boolean(v);
	return 0;
}

enum { K_NAME = 1, K_LENGTH = 2, K_GPA = 4, K_SHARED = 8 };

static int decode_block(json_object *o, struct mr_resume_block *b, struct mr_err *err)
{
	unsigned seen = 0;
	int r = 0;

	if (!json_object_is_type(o, json_type_object))
		return mr_fail(err, -EBADMSG, 0, NULL, "blocks: entry not an object");
	/* The name first, so that later errors can name the block. */
	json_object *nv = json_object_object_get(o, "name");

	if (!nv)
		return mr_fail(err, -EBADMSG, 0, NULL, "blocks: entry without name");
	r = get_str(nv, b->name, MR_NAME_MAX, true, "name", NULL, err);
	if (r)
		return r;
	json_object_object_foreach(o, key, v)
	{
		if (!strcmp(key, "name")) {
			seen |= K_NAME;
		} else if (!strcmp(key, "length")) {
			seen |= K_LENGTH;
			r = get_u64(v, &b->length, key, b->name, err);
			if (!r && b->length % MR_PAGE_SIZE)
				r = mr_fail(err, -EBADMSG, 0, b->name,
					    "length not a multiple of 4096");
		} else if (!strcmp(key, "gpa")) {
			seen |= K_GPA;
			r = get_u64(v, &b->gpa, key, b->name, err);
		} else if (!strcmp(key, "shared")) {
			seen |= K_SHARED;
			r = get_bool(v, &b->shared, key, b->name, err);
		} else if (!strcmp(key, "backend")) {
			r = get_str(v, b->backend, MR_NAME_MAX, true, key, b->name, err);
		} else if (!strcmp(key, "mem-path")) {
			r = get_str(v, b->mem_path, MR_RESUME_PATH_MAX, true, key, b->name, err);
		} else {
			r = mr_fail(err, -EBADMSG, 0, b->name, "unknown key \"%.64s\" in a block",
				    key);
		}
		if (r)
			return r;
	}
	if (seen != (K_NAME | K_LENGTH | K_GPA | K_SHARED))
		return mr_fail(err, -EBADMSG, 0, b->name, "block lacks length, gpa or shared");
	return 0;
}

static int decode_blocks(json_object *v, struct mr_resume *rec, struct mr_err *err)
{
	size_t n;
	int r;

	if (!json_object_is_type(v, json_type_array))
		return mr_fail(err, -EBADMSG, 0, NULL, "blocks: not an array");
	n = json_object_array_length(v);
	if (!n || n > MR_RESUME_BLOCKS)
		return mr_fail(err, n ? -EOVERFLOW : -EBADMSG, 0, NULL, "%zu blocks (1..%u)", n,
			       MR_RESUME_BLOCKS);
	if (rec->blocks)
		return mr_fail(err, -EBADMSG, 0, NULL, "blocks: twice");
	rec->blocks = calloc(n, sizeof(*rec->blocks));
	if (!rec->blocks)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		r = decode_block(json_object_array_get_idx(v, i), &rec->blocks[i], err);
		if (r)
			return r;
		rec->n_blocks = i + 1;
		for (size_t j = 0; j < i; j++)
			if (!strcmp(rec->blocks[i].name, rec->blocks[j].name))
				return mr_fail(err, -EBADMSG, 0, rec->blocks[i].name,
					       "block listed twice");
	}
	return 0;
}

enum {
	T_VERSION = 1,
	T_MACHINE = 2,
	T_QEMU = 4,
	T_RAM = 8,
	T_RUNNING = 16,
	T_SWITCH = 32,
	T_BLOCKS = 64,
	T_ALL = 127
};

static int decode_top(json_object *o, struct mr_resume *rec, struct mr_err *err)
{
	unsigned seen = 0;
	uint64_t x;
	int r = 0;

	if (!json_object_is_type(o, json_type_object))
		return mr_fail(err, -EBADMSG, 0, NULL, "not a JSON object");
	/* The version first: a newer record may have keys this code does not know. */
	json_object *ver = json_object_object_get(o, MR_RESUME_KEY);

	if (!ver)
		return mr_fail(err, -EBADMSG, 0, NULL, "no \"%s\" key", MR_RESUME_KEY);
	r = get_u64(ver, &x, MR_RESUME_KEY, NULL, err);
	if (r)
		return r;
	if (x != MR_RESUME_VERSION)
		return mr_fail(err, -EPROTONOSUPPORT, 0, NULL,
			       "resume record version %llu (only %u)", (unsigned long long)x,
			       MR_RESUME_VERSION);
	json_object_object_foreach(o, key, v)
	{
		if (!strcmp(key, MR_RESUME_KEY)) {
			seen |= T_VERSION;
		} else if (!strcmp(key, "machine")) {
			seen |= T_MACHINE;
			r = get_str(v, rec->machine, MR_NAME_MAX, true, key, NULL, err);
		} else if (!strcmp(key, "qemu")) {
			seen |= T_QEMU;
			r = get_str(v, rec->qemu, MR_RESUME_QEMU_MAX, true, key, NULL, err);
		} else if (!strcmp(key, "ram-section-id")) {
			seen |= T_RAM;
			r = get_u64(v, &x, key, NULL, err);
			if (!r && (!x || x > UINT32_MAX))
				r = mr_fail(err, -EBADMSG, 0, NULL, "ram-section-id %llu",
					    (unsigned long long)x);
			rec->ram_id = (uint32_t)x;
		} else if (!strcmp(key, "running")) {
			seen |= T_RUNNING;
			r = get_bool(v, &rec->running, key, NULL, err);
		} else if (!strcmp(key, "switchover-start")) {
			seen |= T_SWITCH;
			r = get_bool(v, &rec->switchover_start, key, NULL, err);
		} else if (!strcmp(key, "blocks")) {
			seen |= T_BLOCKS;
			r = decode_blocks(v, rec, err);
		} else {
			r = mr_fail(err, -EBADMSG, 0, NULL, "unknown key \"%.64s\"", key);
		}
		if (r)
			return r;
	}
	if (seen != T_ALL)
		return mr_fail(err, -EBADMSG, 0, NULL, "missing key(s): mask 0x%02x of 0x%02x",
			       seen, T_ALL);
	return 0;
}

int mr_resume_decode(const void *json, size_t len, struct mr_resume **ret, struct mr_err *err)
{
	struct json_tokener *tok;
	struct mr_resume *rec;
	json_object *o;
	int r;

	if (len > MR_RESUME_MAX)
		return mr_fail(err, -EOVERFLOW, 0, NULL, "record of %zu bytes (at most %u)", len,
			       MR_RESUME_MAX);
	if (!len || memchr(json, '\0', len))
		return mr_fail(err, -EBADMSG, 0, NULL, "empty record or NUL byte");
	tok = json_tokener_new_ex(16);
	if (!tok)
		return -ENOMEM;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	o = json_tokener_parse_ex(tok, json, (int)len);
	/*
	 * One complete value: strict mode fails on bytes after it other than
	 * white space (checked by the tests), an incomplete value is NULL.
	 */
	if (!o || json_tokener_get_error(tok) != json_tokener_success) {
		r = mr_fail(err, -EBADMSG, 0, NULL, "invalid JSON: %s",
			    json_tokener_error_desc(json_tokener_get_error(tok)));
		json_object_put(o);
		json_tokener_free(tok);
		return r;
	}
	json_tokener_free(tok);
	rec = calloc(1, sizeof(*rec));
	if (!rec) {
		json_object_put(o);
		return -ENOMEM;
	}
	r = decode_top(o, rec, err);
	json_object_put(o);
	if (r) {
		mr_resume_free(rec);
		return r;
	}
	*ret = rec;
	return 0;
}

void mr_resume_free(struct mr_resume *r)
{
	if (!r)
		return;
	free(r->blocks);
	free(r);
}
