// SPDX-License-Identifier: MIT
/*
 * Unit tests for format/stream.c and format/buf.c: encoders compared byte
 * for byte with the QEMU 10.0.2 file of the format doc (section 11).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "be.h"
#include "buf.h"
#include "stream.h"
#include "vmdesc.h"

/* Bytes 0x0..0x47 of snap.img: file header and configuration section. */
static const uint8_t example_head[] = {
	0x51, 0x45, 0x56, 0x4D, 0x00, 0x00, 0x00, 0x03, 0x07, 0x00, 0x00, 0x00, 0x0B, 'p',  'c',
	'-',  'q',  '3',  '5',	'-',  '1',  '0',  '.',	'0',  0x05, 0x1A, 'c',	'o',  'n',  'f',
	'i',  'g',  'u',  'r',	'a',  't',  'i',  'o',	'n',  '/',  'c',  'a',	'p',  'a',  'b',
	'i',  'l',  'i',  't',	'i',  'e',  's',  0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01,
	0x0A, 'm',  'a',  'p',	'p',  'e',  'd',  '-',	'r',  'a',  'm',
};

/* Bytes 0x47..0x60: RAM SECTION_START id 2 and MEM_SIZE 0x110D2000. */
static const uint8_t example_ram_start[] = {
	0x01, 0x00, 0x00, 0x00, 0x02, 0x03, 'r',  'a',	'm',  0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x11, 0x0D, 0x20, 0x04,
};

/* Bytes 0x60..0x89: the ram0 entry and its MappedRamHeader. */
static const uint8_t example_ram0[] = {
	0x04, 'r',  'a',  'm',	'0',  0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x89, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00,
};

/* Bytes 0x11901000..0x1190100D: EOS and the footer of the RAM START. */
static const uint8_t example_eos[] = {
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x7E, 0x00, 0x00, 0x00, 0x02,
};

static void test_file_header_config(void **state)
{
	static const char *const caps[] = { "mapped-ram" };
	struct mr_buf b = MR_BUF_INIT;

	(void)state;
	mr_encode_file_header(&b);
	assert_int_equal(b.len, 8);
	mr_encode_config(&b, "pc-q35-10.0", caps, 1);
	assert_int_equal(b.err, 0);
	assert_int_equal(b.len, 0x47);
	assert_int_equal(sizeof(example_head), 0x47);
	assert_memory_equal(b.data, example_head, sizeof(example_head));
	mr_buf_free(&b);
}

static void test_config_variants(void **state)
{
	static const char *const caps[] = { "x-ignore-shared", "mapped-ram" };
	struct mr_buf b = MR_BUF_INIT;

	(void)state;
	/* No capabilities: no subsection at all. */
	mr_encode_config(&b, "q35", NULL, 0);
	assert_int_equal(b.len, 1 + 4 + 3);
	assert_memory_equal(b.data, "\x07\x00\x00\x00\x03q35", 8);

	/* Two capabilities in the order given. */
	mr_buf_reset(&b);
	mr_encode_config(&b, "pc", caps, 2);
	assert_int_equal(b.err, 0);
	assert_int_equal(b.len, 7 + 2 + 26 + 4 + 4 + 16 + 11);
	assert_int_equal(mr_get_be32(b.data + 7 + 2 + 26 + 4), 2);
	assert_memory_equal(b.data + 7 + 2 + 26 + 8, "\x0fx-ignore-shared\x0amapped-ram", 27);
	mr_buf_free(&b);
}

static void test_ram_start(void **state)
{
	struct mr_buf b = MR_BUF_INIT;

	(void)state;
	mr_encode_ram_start(&b, 2, 0x110D2000);
	assert_int_equal(b.err, 0);
	assert_int_equal(b.len, 0x60 - 0x47);
	assert_memory_equal(b.data, example_ram_start, sizeof(example_ram_start));
	mr_buf_free(&b);
}

static void test_block_entry(void **state)
{
	const struct mr_ram_header h = {
		.version = 1, .page_size = 4096, .bitmap_offset = 0x89, .pages_offset = 0x100000
	};
	struct mr_block_layout l;
	struct mr_buf b = MR_BUF_INIT;

	(void)state;
	mr_encode_block_entry(&b, "ram0", 0x10000000, &h);
	assert_int_equal(b.err, 0);
	assert_int_equal(b.len, 0x89 - 0x60);
	assert_memory_equal(b.data, example_ram0, sizeof(example_ram0));

	/* The header starts where the layout says it does. */
	assert_int_equal(mr_layout_block(0x60, 4, 0x10000000, MR_PAGES_ALIGN, &l), 0);
	assert_int_equal(0x60 + b.len - MR_RAM_HDR_SIZE, l.hdr_off);
	assert_int_equal(0x60 + b.len, l.bitmap_off);

	/* mr_encode_ram_header alone is the last 28 bytes. */
	mr_buf_reset(&b);
	mr_encode_ram_header(&b, &h);
	assert_int_equal(b.len, MR_RAM_HDR_SIZE);
	assert_memory_equal(b.data, example_ram0 + 13, MR_RAM_HDR_SIZE);
	mr_buf_free(&b);
}

static void test_ram_header_round_trip(void **state)
{
	const struct mr_ram_header in = { .version = 0xfeedbeef,
					  .page_size = 0x0102030405060708ull,
					  .bitmap_offset = UINT64_MAX,
					  .pages_offset = 0x8000000000000000ull };
	struct mr_ram_header out;
	struct mr_buf b = MR_BUF_INIT;

	(void)state;
	mr_encode_ram_header(&b, &in);
	assert_int_equal(b.len, 28);
	assert_memory_equal(b.data, "\xfe\xed\xbe\xef\x01\x02\x03\x04\x05\x06\x07\x08", 12);
	memset(&out, 0, sizeof(out));
	mr_decode_ram_header(b.data, &out);
	assert_int_equal(out.version, in.version);
	assert_int_equal(out.page_size, in.page_size);
	assert_int_equal(out.bitmap_offset, in.bitmap_offset);
	assert_int_equal(out.pages_offset, in.pages_offset);

	/* And from the example bytes. */
	mr_decode_ram_header(example_ram0 + 13, &out);
	assert_int_equal(out.version, 1);
	assert_int_equal(out.page_size, 4096);
	assert_int_equal(out.bitmap_offset, 0x89);
	assert_int_equal(out.pages_offset, 0x100000);
	mr_buf_free(&b);
}

static void test_eos_footer(void **state)
{
	struct mr_buf b = MR_BUF_INIT;

	(void)state;
	mr_encode_ram_eos(&b, 2);
	assert_int_equal(b.len, sizeof(example_eos));
	assert_memory_equal(b.data, example_eos, sizeof(example_eos));

	mr_buf_reset(&b);
	mr_encode_footer(&b, 0x01020304);
	assert_int_equal(b.len, 5);
	assert_memory_equal(b.data, "\x7e\x01\x02\x03\x04", 5);

	/* A PART as in the example: 02, id, EOS, footer = 18 bytes. */
	mr_buf_reset(&b);
	mr_buf_u8(&b, MR_SEC_PART);
	mr_buf_be32(&b, 2);
	mr_encode_ram_eos(&b, 2);
	assert_int_equal(b.len, 18);
	mr_buf_free(&b);
}

static void test_section_full_hdr(void **state)
{
	struct mr_buf b = MR_BUF_INIT;

	(void)state;
	mr_encode_section_full_hdr(&b, MR_SEC_FULL, 44, "globalstate", 0, 1);
	assert_int_equal(b.len, 1 + 4 + 1 + 11 + 4 + 4);
	assert_memory_equal(b.data,
			    "\x04\x00\x00\x00\x2c\x0bglobalstate\x00\x00\x00\x00\x00\x00\x00\x01",
			    b.len);
	mr_buf_free(&b);
}

static void test_devstate_hdr(void **state)
{
	static const uint8_t want[] = {
		0x04, 0x00, 0x00, 0x00, 0x03, 0x13, 's',  'n',	'a',  'p',  'm',  'r',	'/',  'd',
		'e',  'v',  'i',  'c',	'e',  '-',  's',  't',	'a',  't',  'e',  0x00, 0x00, 0x00,
		0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
	};
	struct mr_buf b = MR_BUF_INIT;

	(void)state;
	assert_int_equal(strlen(MR_DEVSTATE_IDSTR), 0x13);
	mr_encode_devstate_hdr(&b, 0x00000123456789abull);
	assert_int_equal(b.err, 0);
	assert_int_equal(b.len, sizeof(want));
	assert_memory_equal(b.data, want, sizeof(want));
	mr_buf_free(&b);
}

static void test_vmdesc_devstate(void **state)
{
	const uint64_t len = 0x123456789ull;
	struct mr_buf b = MR_BUF_INIT;
	struct mr_vmdesc *d = NULL;
	json_object *root, *devs, *dev, *v;
	uint64_t size = 0;
	uint32_t n;

	(void)state;
	mr_encode_vmdesc_devstate(&b, len);
	assert_int_equal(b.err, 0);
	assert_true(b.len > 5);
	assert_int_equal(b.data[0], MR_SEC_VMDESC);
	n = mr_get_be32(b.data + 1);
	assert_int_equal(n, b.len - 5);
	assert_int_equal(b.data[5], '{');
	assert_null(memchr(b.data + 5, 0, n));

	/* Well-formed JSON of QEMU's shape. */
	char *text = strndup((const char *)b.data + 5, n);

	assert_non_null(text);
	root = json_tokener_parse(text);
	free(text);
	assert_non_null(root);
	assert_true(json_object_object_get_ex(root, "page_size", &v));
	assert_int_equal(json_object_get_int64(v), 4096);
	assert_true(json_object_object_get_ex(root, "devices", &devs));
	assert_true(json_object_is_type(devs, json_type_array));
	assert_int_equal(json_object_array_length(devs), 1);
	dev = json_object_array_get_idx(devs, 0);
	assert_true(json_object_object_get_ex(dev, "name", &v));
	assert_string_equal(json_object_get_string(v), MR_DEVSTATE_IDSTR);
	assert_true(json_object_object_get_ex(dev, "instance_id", &v));
	assert_int_equal(json_object_get_int64(v), 0);
	assert_true(json_object_object_get_ex(dev, "version", &v));
	assert_int_equal(json_object_get_int64(v), MR_DEVSTATE_VERSION);
	json_object_put(root);

	/* It sizes the section body: the be64 length plus the data. */
	assert_int_equal(mr_vmdesc_parse((const char *)b.data + 5, n, &d), 0);
	assert_int_equal(mr_vmdesc_section_size(d, MR_DEVSTATE_IDSTR, 0, 0, &size), 0);
	assert_int_equal(size, 8 + len);
	assert_int_equal(mr_vmdesc_page_size(d), 4096);
	mr_vmdesc_free(d);

	/* An earlier error is kept and nothing is appended. */
	mr_buf_reset(&b);
	b.err = -ENOMEM;
	mr_encode_vmdesc_devstate(&b, 1);
	assert_int_equal(b.err, -ENOMEM);
	assert_int_equal(b.len, 0);
	mr_buf_free(&b);
}

static void test_buf_be(void **state)
{
	struct mr_buf b = MR_BUF_INIT;

	(void)state;
	mr_buf_u8(&b, 0xab);
	mr_buf_be16(&b, 0x0102);
	mr_buf_be32(&b, 0x03040506);
	mr_buf_be64(&b, 0x0708090a0b0c0d0eull);
	mr_buf_put(&b, "xy", 2);
	mr_buf_put(&b, NULL, 0);
	assert_int_equal(b.err, 0);
	assert_int_equal(b.len, 17);
	assert_memory_equal(b.data,
			    "\xab\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0exy", 17);

	/* Growth past the first allocation keeps the contents. */
	for (unsigned i = 0; i < 10000; i++)
		mr_buf_be32(&b, i);
	assert_int_equal(b.err, 0);
	assert_int_equal(b.len, 17 + 40000);
	assert_true(b.cap >= b.len);
	for (unsigned i = 0; i < 10000; i++)
		assert_int_equal(mr_get_be32(b.data + 17 + 4 * i), i);
	mr_buf_free(&b);
	assert_null(b.data);
	assert_int_equal(b.len, 0);
	mr_buf_free(&b); /* twice is fine */
}

static void test_buf_error_latch(void **state)
{
	char s[300];
	struct mr_buf b = MR_BUF_INIT;

	(void)state;
	memset(s, 'a', sizeof(s));
	s[255] = 0;
	mr_buf_str8(&b, s); /* 255 bytes: fine */
	assert_int_equal(b.err, 0);
	assert_int_equal(b.len, 256);
	assert_int_equal(b.data[0], 255);

	s[255] = 'a';
	s[256] = 0;
	mr_buf_str8(&b, s); /* 256 bytes: latched */
	assert_int_equal(b.err, -EINVAL);
	assert_int_equal(b.len, 256);
	/* Everything after the error is dropped and the first error kept. */
	mr_buf_u8(&b, 1);
	mr_buf_be64(&b, 2);
	mr_buf_str8(&b, "ok");
	mr_buf_printf(&b, "%d", 3);
	mr_buf_json_str(&b, "x");
	assert_int_equal(b.err, -EINVAL);
	assert_int_equal(b.len, 256);

	/* Records with a long idstr latch too. */
	mr_buf_reset(&b);
	assert_int_equal(b.err, 0);
	assert_int_equal(b.len, 0);
	mr_encode_section_full_hdr(&b, MR_SEC_FULL, 1, s, 0, 1);
	assert_int_equal(b.err, -EINVAL);

	/* A latched -ENOMEM is not overwritten by a later -EINVAL. */
	mr_buf_reset(&b);
	b.err = -ENOMEM;
	mr_buf_str8(&b, s);
	assert_int_equal(b.err, -ENOMEM);
	mr_buf_free(&b);
}

static void test_buf_printf(void **state)
{
	char big[1000];
	struct mr_buf b = MR_BUF_INIT;

	(void)state;
	mr_buf_printf(&b, "%s=%u", "a", 42u);
	assert_int_equal(b.len, 4);
	assert_memory_equal(b.data, "a=42", 4);
	memset(big, 'z', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	mr_buf_printf(&b, "[%s]", big); /* longer than the stack buffer */
	assert_int_equal(b.err, 0);
	assert_int_equal(b.len, 4 + 1 + 999 + 1);
	assert_int_equal(b.data[5], 'z');
	assert_int_equal(b.data[b.len - 1], ']');
	mr_buf_printf(&b, "!");
	assert_int_equal(b.len, 4 + 1 + 999 + 1 + 1);
	assert_int_equal(b.data[b.len - 1], '!');
	assert_int_equal(b.data[b.len - 2], ']');
	mr_buf_free(&b);
}

static void test_buf_json_str(void **state)
{
	static const char in[] = "a\"b\\c/d\n\t\x01\x1f\x7f \xc3\xa9";
	static const char want[] = "\"a\\\"b\\\\c/d\\u000a\\u0009\\u0001\\u001f\\u007f \xc3\xa9\"";
	struct mr_buf b = MR_BUF_INIT;
	json_object *o;

	(void)state;
	mr_buf_json_str(&b, in);
	assert_int_equal(b.err, 0);
	assert_int_equal(b.len, strlen(want));
	assert_memory_equal(b.data, want, b.len);

	/* json-c reads it back as the original string. */
	mr_buf_u8(&b, 0);
	o = json_tokener_parse((const char *)b.data);
	assert_non_null(o);
	assert_true(json_object_is_type(o, json_type_string));
	assert_string_equal(json_object_get_string(o), in);
	json_object_put(o);

	mr_buf_reset(&b);
	mr_buf_json_str(&b, "");
	assert_int_equal(b.len, 2);
	assert_memory_equal(b.data, "\"\"", 2);
	mr_buf_free(&b);
}

/* mr_buf_pread(): whole reads inside, a short read at the end, 0 past it. */
static void test_buf_pread(void **state)
{
	struct mr_buf b = MR_BUF_INIT;
	uint8_t out[8];

	(void)state;
	mr_buf_put(&b, "0123456789", 10);
	assert_int_equal(mr_buf_pread(&b, out, 4, 2), 4);
	assert_memory_equal(out, "2345", 4);
	assert_int_equal(mr_buf_pread(&b, out, 8, 7), 3);
	assert_memory_equal(out, "789", 3);
	assert_int_equal(mr_buf_pread(&b, out, 8, 10), 0);
	assert_int_equal(mr_buf_pread(&b, out, 8, UINT64_MAX), 0);
	mr_buf_free(&b);
}

/* The names snaprestore --info --json gives section types. */
static void test_sec_type_name(void **state)
{
	(void)state;
	assert_string_equal(mr_sec_type_name(MR_SEC_START), "start");
	assert_string_equal(mr_sec_type_name(MR_SEC_PART), "part");
	assert_string_equal(mr_sec_type_name(MR_SEC_END), "end");
	assert_string_equal(mr_sec_type_name(MR_SEC_FULL), "full");
	assert_string_equal(mr_sec_type_name(MR_SEC_COMMAND), "command");
	assert_string_equal(mr_sec_type_name(MR_SEC_EOF), "other");
	assert_string_equal(mr_sec_type_name(0x42), "other");
	assert_true(mr_sec_is_named(MR_SEC_START) && mr_sec_is_named(MR_SEC_FULL));
	assert_false(mr_sec_is_named(MR_SEC_PART) || mr_sec_is_named(MR_SEC_COMMAND));
	assert_true(mr_sec_is_command(MR_SEC_COMMAND));
	assert_false(mr_sec_is_command(MR_SEC_END));
}

int main(void)
{
	const struct CMUnitTest stream_tests[] = {
		cmocka_unit_test(test_file_header_config),
		cmocka_unit_test(test_config_variants),
		cmocka_unit_test(test_ram_start),
		cmocka_unit_test(test_block_entry),
		cmocka_unit_test(test_ram_header_round_trip),
		cmocka_unit_test(test_eos_footer),
		cmocka_unit_test(test_section_full_hdr),
		cmocka_unit_test(test_devstate_hdr),
		cmocka_unit_test(test_vmdesc_devstate),
		cmocka_unit_test(test_buf_be),
		cmocka_unit_test(test_buf_error_latch),
		cmocka_unit_test(test_buf_printf),
		cmocka_unit_test(test_buf_json_str),
		cmocka_unit_test(test_sec_type_name),
		cmocka_unit_test(test_buf_pread),
	};

	return cmocka_run_group_tests_name("stream", stream_tests, NULL, NULL);
}
