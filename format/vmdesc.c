// SPDX-License-Identifier: MIT
/*
 * VMDESCRIPTION parser: reduces QEMU's JSON to one body size per device
 * section. The JSON comes from the file, so every shape is checked.
 */
#include "vmdesc.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

/*
 * QEMU 10's output for q35/pc nests 14 levels; json-c's default limit of 32
 * leaves little room for devices with structs of structs. The limit also
 * bounds the recursion through "subsections" below.
 */
#define VMDESC_MAX_DEPTH 128

/*
 * json-c spends about 70 bytes per value, so a 16 MiB description of bare
 * numbers took 580 MiB. Values are counted before parsing: QEMU 10's
 * descriptions have about 150 per KiB (tests/data/vmdesc.json, 17 devices:
 * 2204 in 14.6 KiB; a q35 guest's 51 KiB, about 8000), so this allows ~30
 * times a q35 guest and bounds json-c's memory near 20 MiB.
 */
#define VMDESC_MAX_VALUES (256u << 10)

/* idstr and subsection names travel behind a u8 length. */
#define VMDESC_NAME_MAX 255

/* u8 QEMU_VM_SUBSECTION, u8 name length, name, be32 version_id */
#define SUBSECTION_FRAMING 6

struct vmdesc_entry {
	char *idstr;
	uint32_t instance;
	uint64_t size;
};

struct mr_vmdesc {
	struct vmdesc_entry *entries;
	size_t n;
	uint64_t page_size;
};

void mr_vmdesc_free(struct mr_vmdesc *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->n; i++)
		free(d->entries[i].idstr);
	free(d->entries);
	free(d);
}

/*
 * A JSON integer in [0, INT64_MAX). QEMU writes every number as int64, and
 * json-c clamps larger literals to INT64_MAX (as int64) instead of failing,
 * so INT64_MAX itself cannot be told apart from garbage.
 */
static int get_u64(json_object *o, uint64_t *ret)
{
	int64_t v;

	if (!json_object_is_type(o, json_type_int))
		return -EBADMSG;
	v = json_object_get_int64(o);
	if (v < 0 || v == INT64_MAX)
		return -EBADMSG;
	*ret = (uint64_t)v;
	return 0;
}

/* A string usable as a stream name: 1..255 bytes, no embedded NUL. */
static int get_name(json_object *o, const char **ret, size_t *ret_len)
{
	const char *s;
	int len;

	if (!json_object_is_type(o, json_type_string))
		return -EBADMSG;
	s = json_object_get_string(o);
	len = json_object_get_string_len(o);
	if (len <= 0 || len > VMDESC_NAME_MAX || memchr(s, '\0', len))
		return -EBADMSG;
	*ret = s;
	*ret_len = len;
	return 0;
}

/* NULL when absent; an explicit JSON null also comes back as NULL. */
static json_object *get_key(json_object *obj, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(obj, key, &v) ? v : NULL;
}

/* Optional keys: present-but-null must fail the type check, not vanish. */
static bool has_key(json_object *obj, const char *key, json_object **ret)
{
	return json_object_object_get_ex(obj, key, ret);
}

/*
 * Bytes of one vmstate body: its fields, then its sent subsections. A
 * field's "size" already covers everything it wrote, nested "struct" and
 * "tmp" bodies with their own subsections included, so fields are not
 * descended into. Arrays are either one entry with "array_len" (elements
 * of equal size) or one entry per element with "index"; the sum is the
 * same.
 */
static int body_size(json_object *vmsd, uint64_t *ret)
{
	json_object *fields, *subs;
	uint64_t total = 0;
	size_t n;
	int r;

	if (!json_object_is_type(vmsd, json_type_object))
		return -EBADMSG;
	fields = get_key(vmsd, "fields");
	if (!json_object_is_type(fields, json_type_array))
		return -EBADMSG;
	n = json_object_array_length(fields);
	for (size_t i = 0; i < n; i++) {
		json_object *f = json_object_array_get_idx(fields, i);
		json_object *alen;
		uint64_t size, count = 1, bytes;

		if (!json_object_is_type(f, json_type_object))
			return -EBADMSG;
		r = get_u64(get_key(f, "size"), &size);
		if (r < 0)
			return r;
		if (has_key(f, "array_len", &alen)) {
			r = get_u64(alen, &count);
			if (r < 0)
				return r;
		}
		if (__builtin_mul_overflow(size, count, &bytes) ||
		    __builtin_add_overflow(total, bytes, &total))
			return -EOVERFLOW;
	}

	if (has_key(vmsd, "subsections", &subs)) {
		if (!json_object_is_type(subs, json_type_array))
			return -EBADMSG;
		n = json_object_array_length(subs);
		for (size_t i = 0; i < n; i++) {
			json_object *s = json_object_array_get_idx(subs, i);
			const char *name;
			size_t name_len;
			uint64_t sub;

			if (!json_object_is_type(s, json_type_object))
				return -EBADMSG;
			r = get_name(get_key(s, "vmsd_name"), &name, &name_len);
			if (r < 0)
				return r;
			r = body_size(s, &sub);
			if (r < 0)
				return r;
			if (__builtin_add_overflow(sub, SUBSECTION_FRAMING + name_len, &sub) ||
			    __builtin_add_overflow(total, sub, &total))
				return -EOVERFLOW;
		}
	}
	*ret = total;
	return 0;
}

static int add_device(struct mr_vmdesc *d, json_object *dev)
{
	struct vmdesc_entry *e = &d->entries[d->n];
	const char *name;
	size_t name_len;
	uint64_t instance;
	int r;

	if (!json_object_is_type(dev, json_type_object))
		return -EBADMSG;
	r = get_name(get_key(dev, "name"), &name, &name_len);
	if (r < 0)
		return r;
	r = get_u64(get_key(dev, "instance_id"), &instance);
	if (r < 0)
		return r;
	if (instance > UINT32_MAX)
		return -EBADMSG;
	r = body_size(dev, &e->size);
	if (r < 0)
		return r;
	e->idstr = strndup(name, name_len);
	if (!e->idstr)
		return -ENOMEM;
	e->instance = (uint32_t)instance;
	d->n++;
	return 0;
}

/*
 * An upper bound of the number of values in a JSON text: one per '[', '{',
 * ',' and ':' outside strings, plus the top-level one. Linear, no memory.
 */
static size_t count_values(const char *json, size_t len)
{
	size_t n = 1;
	bool in_str = false;

	for (size_t i = 0; i < len; i++) {
		char c = json[i];

		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = false;
		} else if (c == '"') {
			in_str = true;
		} else if (c == '[' || c == '{' || c == ',' || c == ':') {
			n++;
		}
	}
	return n;
}

/* Parses all of json[0..len); trailing bytes after the value are an error. */
static int parse_json(const char *json, size_t len, json_object **ret)
{
	struct json_tokener *tok;
	json_object *root = NULL;
	enum json_tokener_error jerr = json_tokener_continue;
	size_t done = 0;

	/* json-c would stop at a NUL and call the prefix a document. */
	if (!len || memchr(json, '\0', len))
		return -EBADMSG;
	if (count_values(json, len) > VMDESC_MAX_VALUES)
		return -E2BIG;
	tok = json_tokener_new_ex(VMDESC_MAX_DEPTH);
	if (!tok)
		return -ENOMEM;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	/* The tokener takes an int length; feed larger input in pieces. */
	while (done < len && jerr == json_tokener_continue) {
		size_t chunk = len - done > INT_MAX ? INT_MAX : len - done;

		root = json_tokener_parse_ex(tok, json + done, (int)chunk);
		jerr = json_tokener_get_error(tok);
		done += jerr == json_tokener_success ? json_tokener_get_parse_end(tok) : chunk;
	}
	json_tokener_free(tok);
	if (jerr != json_tokener_success || done != len) {
		json_object_put(root);
		/* json-c reports allocation failure only as a generic error. */
		return -EBADMSG;
	}
	*ret = root;
	return 0;
}

int mr_vmdesc_parse(const char *json, size_t len, struct mr_vmdesc **ret)
{
	json_object *root, *devices, *ps;
	struct mr_vmdesc *d;
	size_t n;
	int r;

	r = parse_json(json, len, &root);
	if (r < 0)
		return r;

	r = -EBADMSG;
	if (!json_object_is_type(root, json_type_object))
		goto out_root;
	devices = get_key(root, "devices");
	if (!json_object_is_type(devices, json_type_array))
		goto out_root;

	r = -ENOMEM;
	d = calloc(1, sizeof(*d));
	if (!d)
		goto out_root;
	n = json_object_array_length(devices);
	if (n) {
		d->entries = calloc(n, sizeof(*d->entries));
		if (!d->entries)
			goto out_desc;
	}

	if (has_key(root, "page_size", &ps)) {
		r = get_u64(ps, &d->page_size);
		if (r < 0)
			goto out_desc;
	}
	for (size_t i = 0; i < n; i++) {
		r = add_device(d, json_object_array_get_idx(devices, i));
		if (r < 0)
			goto out_desc;
	}

	json_object_put(root);
	*ret = d;
	return 0;

out_desc:
	mr_vmdesc_free(d);
out_root:
	json_object_put(root);
	return r;
}

int mr_vmdesc_section_size(const struct mr_vmdesc *d, const char *idstr, uint32_t instance,
			   unsigned nth, uint64_t *ret)
{
	for (size_t i = 0; i < d->n; i++) {
		const struct vmdesc_entry *e = &d->entries[i];

		if (e->instance != instance || strcmp(e->idstr, idstr))
			continue;
		if (nth--)
			continue;
		*ret = e->size;
		return 0;
	}
	return -ENOENT;
}

uint64_t mr_vmdesc_page_size(const struct mr_vmdesc *d)
{
	return d->page_size;
}
