// SPDX-License-Identifier: MIT
/*
 * Unit tests for format/vmdesc.c: section body sizes from a hand-written
 * VMDESCRIPTION shaped like QEMU 10's, plus hostile and malformed JSON.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "vmdesc.h"

/*
 * Parses a copy of `s` without its NUL, in a buffer of exactly that size,
 * so that ASan catches any read past `len`.
 */
static int parse(const char *s, struct mr_vmdesc **ret)
{
	size_t len = strlen(s);
	char *buf = malloc(len ? len : 1);
	int r;

	assert_non_null(buf);
	memcpy(buf, s, len);
	r = mr_vmdesc_parse(buf, len, ret);
	free(buf);
	return r;
}

/*
 * Shapes as QEMU 10 writes them: "struct" and "tmp" fields carry their whole
 * size (their nested subsections included), arrays come either compressed
 * ("array_len") or one entry per element ("index"), runs of NULL pointers
 * are "nullptr" entries, and old-style sections have one "data" field.
 */
/* Kept as written: clang-format would re-wrap the JSON lines. */
/* clang-format off */
static const char sample[] = "{\n"
	"\"configuration\": {\"vmsd_name\": \"configuration\", \"version\": 1, \"fields\": ["
	"  {\"name\": \"len\", \"type\": \"uint32\", \"size\": 4}]},\n"
	"\"page_size\": 4096,\n"
	"\"devices\": [\n"
	/* 8 + 8 + 16 * 8 = 144 */
	"{\"name\": \"timer\", \"instance_id\": 0, \"vmsd_name\": \"timer\", \"version\": 2,"
	" \"fields\": ["
	"  {\"name\": \"cpu_ticks_offset\", \"type\": \"int64\", \"size\": 8},"
	"  {\"name\": \"unused\", \"type\": \"unused_buffer\", \"size\": 8},"
	"  {\"name\": \"regs\", \"array_len\": 16, \"type\": \"uint64\", \"size\": 8}]},\n"
	/*
	 * fields: 8 * 10 (fpregs) + 2 * 16 (segs, subsection inside the size)
	 * subsections: (6 + 16 + 8) + (6 + 10 + 4 + (6 + 16 + 100)) = 30 + 142
	 * total 80 + 32 + 172 = 284
	 */
	"{\"name\": \"cpu\", \"instance_id\": 0, \"vmsd_name\": \"cpu\", \"version\": 12,"
	" \"fields\": ["
	"  {\"name\": \"env.fpregs\", \"array_len\": 8, \"type\": \"struct\", \"struct\": {"
	"    \"vmsd_name\": \"fpreg\", \"version\": 0, \"fields\": ["
	"      {\"name\": \"tmp\", \"type\": \"tmp\", \"vmsd_name\": \"fpreg_tmp\", \"version\": 0,"
	"       \"fields\": [{\"name\": \"m\", \"type\": \"uint64\", \"size\": 8},"
	"                  {\"name\": \"e\", \"type\": \"uint16\", \"size\": 2}],"
	"       \"size\": 10}]},"
	"   \"size\": 10},"
	"  {\"name\": \"segs\", \"index\": 0, \"type\": \"struct\", \"struct\": {"
	"    \"vmsd_name\": \"seg\", \"version\": 0,"
	"    \"fields\": [{\"name\": \"sel\", \"type\": \"uint32\", \"size\": 4}],"
	"    \"subsections\": [{\"vmsd_name\": \"seg/x\", \"version\": 1,"
	"      \"fields\": [{\"name\": \"q\", \"type\": \"uint8\", \"size\": 1}]}]},"
	"   \"size\": 16},"
	"  {\"name\": \"segs\", \"index\": 1, \"type\": \"struct\", \"struct\": {"
	"    \"vmsd_name\": \"seg\", \"version\": 0,"
	"    \"fields\": [{\"name\": \"sel\", \"type\": \"uint32\", \"size\": 4}],"
	"    \"subsections\": [{\"vmsd_name\": \"seg/x\", \"version\": 1,"
	"      \"fields\": [{\"name\": \"q\", \"type\": \"uint8\", \"size\": 1}]}]},"
	"   \"size\": 16}],"
	" \"subsections\": ["
	"  {\"vmsd_name\": \"cpu/async_pf_msr\", \"version\": 1,"
	"   \"fields\": [{\"name\": \"env.async_pf_en_msr\", \"type\": \"uint64\", \"size\": 8}]},"
	"  {\"vmsd_name\": \"cpu/nested\", \"version\": 1,"
	"   \"fields\": [{\"name\": \"x\", \"type\": \"uint32\", \"size\": 4}],"
	"   \"subsections\": [{\"vmsd_name\": \"cpu/nested/inner\", \"version\": 2,"
	"     \"fields\": [{\"name\": \"y\", \"type\": \"buffer\", \"size\": 100}]}]}]},\n"
	"{\"name\": \"dma\", \"instance_id\": 0, \"vmsd_name\": \"dma\", \"version\": 1,"
	" \"fields\": [{\"name\": \"s\", \"type\": \"uint8\", \"size\": 75}]},\n"
	"{\"name\": \"dma\", \"instance_id\": 1, \"vmsd_name\": \"dma\", \"version\": 1,"
	" \"fields\": [{\"name\": \"s\", \"type\": \"uint8\", \"size\": 76}]},\n"
	/* the same idstr and instance four times, another instance in between */
	"{\"name\": \"dup\", \"instance_id\": 0, \"fields\": [{\"size\": 1}]},\n"
	"{\"name\": \"dup\", \"instance_id\": 0, \"fields\": [{\"size\": 2}]},\n"
	"{\"name\": \"dup\", \"instance_id\": 1, \"fields\": [{\"size\": 3}]},\n"
	"{\"name\": \"dup\", \"instance_id\": 0, \"fields\": [{\"size\": 4}]},\n"
	"{\"name\": \"0000:00:1f.0/ICH9LPC\", \"instance_id\": 0, \"size\": 12,"
	" \"fields\": [{\"name\": \"data\", \"size\": 12, \"type\": \"buffer\"}]},\n"
	"{\"name\": \"empty\", \"instance_id\": 4294967295, \"vmsd_name\": \"e\", \"version\": 1,"
	" \"fields\": [{\"name\": \"none\", \"array_len\": 0, \"type\": \"uint8\", \"size\": 1}]},\n"
	/* 3 NULL pointers, then one present element of 8 bytes */
	"{\"name\": \"nulls\", \"instance_id\": 0, \"vmsd_name\": \"n\", \"version\": 1,"
	" \"fields\": [{\"name\": \"p\", \"array_len\": 3, \"type\": \"nullptr\", \"size\": 1},"
	"             {\"name\": \"p\", \"index\": 3, \"type\": \"uint64\", \"size\": 8}]}\n"
	"]}\n";
/* clang-format on */

static int setup_sample(void **state)
{
	struct mr_vmdesc *d = NULL;

	if (parse(sample, &d))
		return -1;
	*state = d;
	return 0;
}

static int teardown_sample(void **state)
{
	mr_vmdesc_free(*state);
	return 0;
}

static uint64_t size_of(const struct mr_vmdesc *d, const char *idstr, uint32_t inst, unsigned nth)
{
	uint64_t v = UINT64_MAX;

	assert_int_equal(mr_vmdesc_section_size(d, idstr, inst, nth, &v), 0);
	return v;
}

static void test_sample_sizes(void **state)
{
	const struct mr_vmdesc *d = *state;

	assert_int_equal(mr_vmdesc_page_size(d), 4096);
	assert_int_equal(size_of(d, "timer", 0, 0), 144);
	assert_int_equal(size_of(d, "cpu", 0, 0), 284);
	assert_int_equal(size_of(d, "dma", 0, 0), 75);
	assert_int_equal(size_of(d, "dma", 1, 0), 76);
	assert_int_equal(size_of(d, "0000:00:1f.0/ICH9LPC", 0, 0), 12);
	assert_int_equal(size_of(d, "empty", UINT32_MAX, 0), 0);
	assert_int_equal(size_of(d, "nulls", 0, 0), 11);
}

static void test_nth_matching(void **state)
{
	const struct mr_vmdesc *d = *state;
	uint64_t v = 42;

	/* instance 1 in between must not count toward instance 0's nth */
	assert_int_equal(size_of(d, "dup", 0, 0), 1);
	assert_int_equal(size_of(d, "dup", 0, 1), 2);
	assert_int_equal(size_of(d, "dup", 0, 2), 4);
	assert_int_equal(size_of(d, "dup", 1, 0), 3);
	assert_int_equal(mr_vmdesc_section_size(d, "dup", 0, 3, &v), -ENOENT);
	assert_int_equal(mr_vmdesc_section_size(d, "dup", 1, 1, &v), -ENOENT);
	assert_int_equal(mr_vmdesc_section_size(d, "dma", 0, 1, &v), -ENOENT);
	assert_int_equal(v, 42);
}

static void test_not_found(void **state)
{
	const struct mr_vmdesc *d = *state;
	uint64_t v = 42;

	assert_int_equal(mr_vmdesc_section_size(d, "ram", 0, 0, &v), -ENOENT);
	assert_int_equal(mr_vmdesc_section_size(d, "timer", 1, 0, &v), -ENOENT);
	/* no prefix or case folding */
	assert_int_equal(mr_vmdesc_section_size(d, "time", 0, 0, &v), -ENOENT);
	assert_int_equal(mr_vmdesc_section_size(d, "Timer", 0, 0, &v), -ENOENT);
	/* "configuration" is not a device */
	assert_int_equal(mr_vmdesc_section_size(d, "configuration", 0, 0, &v), -ENOENT);
	assert_int_equal(v, 42);
}

static void test_minimal(void **state)
{
	struct mr_vmdesc *d = NULL;
	uint64_t v = 42;

	(void)state;
	/* no page_size, no devices, trailing whitespace */
	assert_int_equal(parse("{\"devices\": []} \n", &d), 0);
	assert_int_equal(mr_vmdesc_page_size(d), 0);
	assert_int_equal(mr_vmdesc_section_size(d, "timer", 0, 0, &v), -ENOENT);
	mr_vmdesc_free(d);
	mr_vmdesc_free(NULL);
}

struct bad_case {
	const char *label;
	const char *json;
	int want;
};

#define DEV(fields) "{\"devices\": [{\"name\": \"d\", \"instance_id\": 0, " fields "}]}"
#define SUB(sub)    DEV("\"fields\": [], \"subsections\": [" sub "]")

static const struct bad_case bad_json[] = {
	{ "empty input", "", -EBADMSG },
	{ "whitespace only", "  \n", -EBADMSG },
	{ "truncated", "{\"devices\": [", -EBADMSG },
	{ "trailing garbage", "{\"devices\": []} x", -EBADMSG },
	{ "two documents", "{\"devices\": []}{}", -EBADMSG },
	{ "trailing comma", "{\"devices\": [],}", -EBADMSG },
	{ "not JSON", "QEVM", -EBADMSG },
	{ "top-level null", "null", -EBADMSG },
	{ "top-level array", "[]", -EBADMSG },
	{ "top-level number", "4096", -EBADMSG },
	{ "unterminated string", "{\"devices\": [], \"x\": \"abc", -EBADMSG },
};

static const struct bad_case bad_shape[] = {
	{ "no devices", "{\"page_size\": 4096}", -EBADMSG },
	{ "devices null", "{\"devices\": null}", -EBADMSG },
	{ "devices object", "{\"devices\": {}}", -EBADMSG },
	{ "device not object", "{\"devices\": [1]}", -EBADMSG },
	{ "device null", "{\"devices\": [null]}", -EBADMSG },
	{ "page_size string", "{\"devices\": [], \"page_size\": \"4096\"}", -EBADMSG },
	{ "page_size negative", "{\"devices\": [], \"page_size\": -4096}", -EBADMSG },
	{ "page_size double", "{\"devices\": [], \"page_size\": 4096.0}", -EBADMSG },
	{ "missing name", "{\"devices\": [{\"instance_id\": 0, \"fields\": []}]}", -EBADMSG },
	{ "name not string", "{\"devices\": [{\"name\": 5, \"instance_id\": 0, \"fields\": []}]}",
	  -EBADMSG },
	{ "empty name", "{\"devices\": [{\"name\": \"\", \"instance_id\": 0, \"fields\": []}]}",
	  -EBADMSG },
	{ "name with NUL",
	  "{\"devices\": [{\"name\": \"a\\u0000b\", \"instance_id\": 0, \"fields\": []}]}",
	  -EBADMSG },
	{ "missing instance_id", "{\"devices\": [{\"name\": \"d\", \"fields\": []}]}", -EBADMSG },
	{ "instance_id string",
	  "{\"devices\": [{\"name\": \"d\", \"instance_id\": \"0\", \"fields\": []}]}", -EBADMSG },
	{ "instance_id negative",
	  "{\"devices\": [{\"name\": \"d\", \"instance_id\": -1, \"fields\": []}]}", -EBADMSG },
	{ "instance_id above u32",
	  "{\"devices\": [{\"name\": \"d\", \"instance_id\": 4294967296, \"fields\": []}]}",
	  -EBADMSG },
	{ "missing fields", DEV("\"vmsd_name\": \"d\""), -EBADMSG },
	{ "fields object", DEV("\"fields\": {}"), -EBADMSG },
	{ "field not object", DEV("\"fields\": [8]"), -EBADMSG },
	{ "field without size", DEV("\"fields\": [{\"name\": \"a\", \"type\": \"uint8\"}]"),
	  -EBADMSG },
	{ "size string", DEV("\"fields\": [{\"size\": \"8\"}]"), -EBADMSG },
	{ "size negative", DEV("\"fields\": [{\"size\": -8}]"), -EBADMSG },
	{ "size double", DEV("\"fields\": [{\"size\": 8.5}]"), -EBADMSG },
	{ "size bool", DEV("\"fields\": [{\"size\": true}]"), -EBADMSG },
	{ "size above int64 (json-c clamps)", DEV("\"fields\": [{\"size\": 18446744073709551615}]"),
	  -EBADMSG },
	{ "size far above u64", DEV("\"fields\": [{\"size\": 1000000000000000000000000}]"),
	  -EBADMSG },
	{ "array_len negative", DEV("\"fields\": [{\"size\": 1, \"array_len\": -2}]"), -EBADMSG },
	{ "array_len null", DEV("\"fields\": [{\"size\": 1, \"array_len\": null}]"), -EBADMSG },
	{ "subsections object", DEV("\"fields\": [], \"subsections\": {}"), -EBADMSG },
	{ "subsections null", DEV("\"fields\": [], \"subsections\": null"), -EBADMSG },
	{ "page_size null", "{\"devices\": [], \"page_size\": null}", -EBADMSG },
	{ "subsection not object", SUB("7"), -EBADMSG },
	{ "subsection without vmsd_name", SUB("{\"fields\": []}"), -EBADMSG },
	{ "subsection without fields", SUB("{\"vmsd_name\": \"d/s\"}"), -EBADMSG },
	{ "subsection bad field", SUB("{\"vmsd_name\": \"d/s\", \"fields\": [{}]}"), -EBADMSG },
	{ "nested subsection bad",
	  SUB("{\"vmsd_name\": \"d/s\", \"fields\": [], \"subsections\": [{\"vmsd_name\": 1}]}"),
	  -EBADMSG },
	{ "second device bad",
	  "{\"devices\": [{\"name\": \"a\", \"instance_id\": 0, \"fields\": []},"
	  " {\"name\": \"b\", \"instance_id\": 0}]}",
	  -EBADMSG },
};

static const struct bad_case overflow[] = {
	/* 2^62 * 4 */
	{ "size * array_len",
	  DEV("\"fields\": [{\"size\": 4611686018427387904, \"array_len\": 4}]"), -EOVERFLOW },
	/* 3 * (2^63 - 2) */
	{ "sum of fields",
	  DEV("\"fields\": [{\"size\": 9223372036854775806}, {\"size\": 9223372036854775806},"
	      " {\"size\": 9223372036854775806}]"),
	  -EOVERFLOW },
	{ "fields plus subsection",
	  DEV("\"fields\": [{\"size\": 9223372036854775806}, {\"size\": 9223372036854775806}],"
	      " \"subsections\": [{\"vmsd_name\": \"d/s\", \"fields\": [{\"size\": 10}]}]"),
	  -EOVERFLOW },
	{ "subsection framing",
	  SUB("{\"vmsd_name\": \"d/s\", \"fields\": [{\"size\": 9223372036854775806},"
	      " {\"size\": 9223372036854775806}, {\"size\": 3}]}"),
	  -EOVERFLOW },
};

static void run_cases(const struct bad_case *c, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		static char dummy;
		struct mr_vmdesc *sentinel = (struct mr_vmdesc *)&dummy, *d = sentinel;
		int r = parse(c[i].json, &d);

		if (r == 0 && d != sentinel)
			mr_vmdesc_free(d);
		if (r != c[i].want)
			fail_msg("case \"%s\": got %d, want %d", c[i].label, r, c[i].want);
		if (d != sentinel)
			fail_msg("case \"%s\": *ret written on failure", c[i].label);
	}
}

static void test_bad_json(void **state)
{
	(void)state;
	run_cases(bad_json, sizeof(bad_json) / sizeof(bad_json[0]));
}

static void test_bad_shape(void **state)
{
	(void)state;
	run_cases(bad_shape, sizeof(bad_shape) / sizeof(bad_shape[0]));
}

static void test_overflow(void **state)
{
	(void)state;
	run_cases(overflow, sizeof(overflow) / sizeof(overflow[0]));
}

static void test_largest_sizes(void **state)
{
	struct mr_vmdesc *d = NULL;
	uint64_t v = 0;

	(void)state;
	/* 2 * (2^63 - 2) + 3 = 2^64 - 1: fits exactly */
	assert_int_equal(parse(DEV("\"fields\": [{\"size\": 9223372036854775806},"
				   " {\"size\": 9223372036854775806}, {\"size\": 3}]"),
			       &d),
			 0);
	assert_int_equal(mr_vmdesc_section_size(d, "d", 0, 0, &v), 0);
	assert_true(v == UINT64_MAX);
	mr_vmdesc_free(d);
}

/* Builds `prefix` + n * `open` + `mid` + n * `close` + `suffix`. */
static char *nest(const char *prefix, const char *open, const char *mid, const char *close,
		  const char *suffix, unsigned n)
{
	size_t len = strlen(prefix) + n * (strlen(open) + strlen(close)) + strlen(mid) +
		     strlen(suffix) + 1;
	char *s = malloc(len);

	assert_non_null(s);
	strcpy(s, prefix);
	for (unsigned i = 0; i < n; i++)
		strcat(s, open);
	strcat(s, mid);
	for (unsigned i = 0; i < n; i++)
		strcat(s, close);
	strcat(s, suffix);
	return s;
}

static void test_deep_nesting(void **state)
{
	struct mr_vmdesc *d = NULL;
	uint64_t v = 0;
	char *s;

	(void)state;
	/* hostile depth inside an ignored key: refused by the tokener, no crash */
	s = nest("{\"devices\": [], \"x\": ", "[", "1", "]", "}", 100000);
	assert_int_equal(parse(s, &d), -EBADMSG);
	free(s);

	/* 20 levels of subsections (60 JSON levels), each "d/s" + 1 byte of field */
	s = nest("{\"devices\": [{\"name\": \"d\", \"instance_id\": 0, \"fields\": []",
		 ", \"subsections\": [{\"vmsd_name\": \"d/s\", \"fields\": [{\"size\": 1}]", "",
		 "}]", "}]}", 20);
	assert_int_equal(parse(s, &d), 0);
	assert_int_equal(mr_vmdesc_section_size(d, "d", 0, 0, &v), 0);
	assert_int_equal(v, 20 * (6 + 3 + 1));
	mr_vmdesc_free(d);
	free(s);
}

static void test_not_nul_terminated(void **state)
{
	static const char text[] = "{\"devices\": [{\"name\": \"d\", \"instance_id\": 3,"
				   " \"fields\": [{\"size\": 5}]}]}GARBAGE";
	struct mr_vmdesc *d = NULL;
	uint64_t v = 0;

	(void)state;
	assert_int_equal(mr_vmdesc_parse(text, strlen(text) - strlen("GARBAGE"), &d), 0);
	assert_int_equal(mr_vmdesc_section_size(d, "d", 3, 0, &v), 0);
	assert_int_equal(v, 5);
	mr_vmdesc_free(d);

	/* a NUL inside the given length is not an early end of document */
	assert_int_equal(mr_vmdesc_parse("{\"devices\": []}\0{", 17, &d), -EBADMSG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_sample_sizes, setup_sample, teardown_sample),
		cmocka_unit_test_setup_teardown(test_nth_matching, setup_sample, teardown_sample),
		cmocka_unit_test_setup_teardown(test_not_found, setup_sample, teardown_sample),
		cmocka_unit_test(test_minimal),
		cmocka_unit_test(test_bad_json),
		cmocka_unit_test(test_bad_shape),
		cmocka_unit_test(test_overflow),
		cmocka_unit_test(test_largest_sizes),
		cmocka_unit_test(test_deep_nesting),
		cmocka_unit_test(test_not_nul_terminated),
	};

	return cmocka_run_group_tests_name("vmdesc", tests, NULL, NULL);
}
