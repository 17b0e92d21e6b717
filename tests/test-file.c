// SPDX-License-Identifier: MIT
/*
 * Unit tests for format/file.c: mr_file_parse() on the files of tests/data
 * (complete, appended to, foreign, incomplete, damaged, cut short, refused),
 * the marker and the device-state range rule.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "file.h"
#include "stream.h"

static struct mr_buf load(const char *name)
{
	char path[512];
	struct mr_buf m = { 0 };
	FILE *f;
	long n;

	snprintf(path, sizeof(path), "%s/%s", SNAPMR_TEST_DATA, name);
	f = fopen(path, "rb");
	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	assert_true(n > 0);
	rewind(f);
	m.data = malloc((size_t)n);
	assert_non_null(m.data);
	assert_int_equal(fread(m.data, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	m.len = (size_t)n;
	return m;
}

static int parse(struct mr_buf *m, uint64_t offset, struct mr_file *f, struct mr_err *err)
{
	struct mr_src src = { mr_buf_pread, m, m->len };

	return mr_file_parse(&src, offset, f, err);
}

static void test_complete(void **state)
{
	struct mr_buf m = load("one-page.snap");
	struct mr_file f;
	struct mr_err err;

	(void)state;
	assert_int_equal(parse(&m, 0, &f, &err), 0);
	assert_non_null(f.trailer);
	assert_int_equal(f.trailer_status, 0);
	assert_true(f.marker);
	assert_int_equal(f.appended, 0);
	assert_int_equal(f.img->n_blocks, 1);
	/* The trailer bounds the stream: the table starts where the stream ends. */
	assert_int_equal(f.img->stream_end, f.trailer->stream_end);
	assert_true(f.trailer->stream_end < m.len);
	assert_null(f.trailer->blocks[0].chunk_hashes); /* left for the restore to load */
	mr_file_clear(&f);
	free(m.data);
}

static void test_appended(void **state)
{
	struct mr_buf m = load("appended.snap");
	struct mr_file f;
	struct mr_err err;

	(void)state;
	assert_int_equal(parse(&m, 0, &f, &err), 0);
	assert_non_null(f.trailer);
	assert_int_equal(f.trailer_status, 0);
	assert_int_equal(f.appended, 64);
	assert_int_equal(f.record_off, m.len - 64 - MR_TRAILER_FOOTER_SIZE);
	assert_true(f.marker);
	mr_file_clear(&f);
	free(m.data);
}

static void test_foreign(void **state)
{
	struct mr_buf m = load("qemu-like.img");
	struct mr_file f;
	struct mr_err err;

	(void)state;
	assert_int_equal(parse(&m, 0, &f, &err), 0);
	assert_null(f.trailer);
	assert_int_equal(f.trailer_status, -ENOENT);
	assert_false(f.marker);
	assert_int_equal(f.img->n_blocks, 3);
	assert_int_equal(f.img->stream_end, m.len);
	mr_file_clear(&f);
	free(m.data);
}

/* Marker and no completion record: a snapsave file whose save did not finish. */
static void test_incomplete(void **state)
{
	static const char *const names[] = { "incomplete.snap", "torn-footer.snap" };

	(void)state;
	for (size_t i = 0; i < 2; i++) {
		struct mr_buf m = load(names[i]);
		struct mr_file f;
		struct mr_err err;

		assert_int_equal(parse(&m, 0, &f, &err), 0);
		assert_null(f.trailer);
		assert_int_not_equal(f.trailer_status, 0);
		assert_true(f.marker);
		mr_file_clear(&f);
		free(m.data);
	}
}

static void test_damaged_table(void **state)
{
	struct mr_buf m = load("bad-table.snap");
	struct mr_file f;
	struct mr_err err;

	(void)state;
	assert_int_equal(parse(&m, 0, &f, &err), 0);
	assert_null(f.trailer);
	assert_int_equal(f.trailer_status, -EBADMSG);
	assert_memory_equal(f.trailer_msg, "offset 0x", 9);
	assert_true(f.marker);
	mr_file_clear(&f);
	free(m.data);
}

/* A save cut short inside its stream: the stream's error, flagged incomplete. */
static void test_cut_short(void **state)
{
	struct mr_buf m = load("two-blocks-devstate.snap");
	struct mr_file f;
	struct mr_err err;

	(void)state;
	m.len = 0x30; /* inside the configuration section */
	assert_int_equal(parse(&m, 0, &f, &err), -ENODATA);
	assert_true(f.incomplete);
	assert_null(f.img);
	assert_null(f.trailer);
	free(m.data);
}

/* Refused streams keep the reader's code, offset and block; nothing is incomplete. */
static void test_refused(void **state)
{
	struct mr_buf m = load("bitmap-tail.img");
	struct mr_file f;
	struct mr_err err;

	(void)state;
	assert_int_equal(parse(&m, 0, &f, &err), -EBADMSG);
	assert_false(f.incomplete);
	assert_int_equal(err.off, 0xa02b);
	assert_string_equal(err.block, "pc.rom");
	free(m.data);

	m = load("huge-claim.img");
	assert_int_equal(parse(&m, 0, &f, &err), -EOVERFLOW);
	assert_int_equal(err.off, 0x83);
	assert_string_equal(err.block, "pc.ram");
	free(m.data);
}

/* The stream behind a libvirt header: the trailer describes it at its offset only. */
static void test_offset(void **state)
{
	struct mr_buf m = load("libvirt.snap");
	struct mr_file f;
	struct mr_err err;

	(void)state;
	assert_int_equal(parse(&m, 127, &f, &err), 0);
	assert_non_null(f.trailer);
	assert_int_equal(f.trailer->stream_base, 127);
	assert_true(f.marker);
	mr_file_clear(&f);
	assert_int_equal(parse(&m, 0, &f, &err), -EBADMSG);
	free(m.data);
}

static void test_marker(void **state)
{
	struct mr_buf m = load("one-page.snap");
	struct mr_src src = { mr_buf_pread, &m, m.len };
	const struct mr_block_info *b;
	struct mr_file f;
	struct mr_err err;

	(void)state;
	assert_int_equal(parse(&m, 0, &f, &err), 0);
	b = &f.img->blocks[0];
	assert_memory_equal(m.data + b->hdr.bitmap_offset + b->bitmap_size, MR_SNAPMR_MARKER,
			    MR_SNAPMR_MARKER_LEN);
	assert_true(mr_file_has_marker(&src, f.img));
	m.data[b->hdr.bitmap_offset + b->bitmap_size + 3] ^= 1;
	assert_false(mr_file_has_marker(&src, f.img));
	mr_file_clear(&f);
	assert_int_equal(parse(&m, 0, &f, &err), 0);
	assert_false(f.marker);
	mr_file_clear(&f);
	free(m.data);
}

static void test_devstate_range(void **state)
{
	struct mr_buf m = load("two-blocks-devstate.snap");
	struct mr_section_info sec = { .type = MR_SEC_FULL, .idstr = "timer", .off = 0x40 };
	struct mr_image fake = { .sections = &sec, .n_sections = 1 };
	struct mr_file f;
	struct mr_err err;
	uint64_t off, len;

	(void)state;
	assert_int_equal(parse(&m, 0, &f, &err), 0);
	assert_int_equal(mr_file_devstate_range(f.img, false, &off, &len, &err), 0);
	assert_int_equal(off, f.img->devstate_off);
	assert_int_equal(len, 700);
	assert_int_equal(mr_file_devstate_range(f.img, true, &off, &len, &err), 0);
	assert_int_equal(off, f.img->ram_end);
	assert_int_equal(len, f.img->stream_end - f.img->ram_end);
	mr_file_clear(&f);
	free(m.data);

	m = load("qemu-like.img");
	assert_int_equal(parse(&m, 0, &f, &err), 0);
	assert_int_equal(mr_file_devstate_range(f.img, false, &off, &len, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "no snapmr device-state section"));
	mr_file_clear(&f);
	free(m.data);

	/* A section before RAM would be lost from a tail-only copy. */
	assert_int_equal(mr_file_devstate_range(&fake, true, &off, &len, &err), -EPROTONOSUPPORT);
	assert_string_equal(err.section, "timer");
	assert_int_equal(err.off, 0x40);
	sec = (struct mr_section_info){ .type = MR_SEC_START, .idstr = MR_RAM_IDSTR };
	assert_int_equal(mr_file_devstate_range(&fake, true, &off, &len, &err), 0);
}

int main(void)
{
	const struct CMUnitTest file_tests[] = {
		cmocka_unit_test(test_complete),      cmocka_unit_test(test_appended),
		cmocka_unit_test(test_foreign),	      cmocka_unit_test(test_incomplete),
		cmocka_unit_test(test_damaged_table), cmocka_unit_test(test_cut_short),
		cmocka_unit_test(test_refused),	      cmocka_unit_test(test_offset),
		cmocka_unit_test(test_marker),	      cmocka_unit_test(test_devstate_range),
	};

	return cmocka_run_group_tests_name("file", file_tests, NULL, NULL);
}
