// SPDX-License-Identifier: MIT
/*
 * Unit tests for format/writer.c: the plan's offsets against the worked
 * example of docs/format.md (section 19) and for several blocks, the marker
 * always given room, overflow refused, and files assembled from the plan's
 * pieces read back by the reader in the planned order.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "file.h"
#include "stream.h"
#include "writer.h"

/* Copies the piece an encoder built to off in the file image, and empties the buffer. */
static void put(struct mr_buf *m, struct mr_buf *b, int r, uint64_t off)
{
	assert_int_equal(r, 0);
	assert_true(off + b->len <= m->len);
	memcpy(m->data + off, b->data, b->len);
	mr_buf_reset(b);
}

/*
 * The file a save writes with every page zero, built only from the plan:
 * bitmaps stay zero, page regions holes. tail: the raw tail, or NULL for the
 * device-state section with ds_len bytes of 0xAB.
 */
static struct mr_buf assemble(struct mr_writer *w, const uint8_t *tail, size_t tail_len,
			      size_t ds_len)
{
	struct mr_buf b = MR_BUF_INIT;
	struct mr_buf m = MR_BUF_INIT;

	if (tail)
		assert_int_equal(mr_writer_set_raw_tail(w, tail_len), 0);
	else
		assert_int_equal(mr_writer_set_devstate_len(w, ds_len), 0);
	m.len = (size_t)w->stream_end;
	m.data = calloc(1, m.len);
	assert_non_null(m.data);
	put(&m, &b, mr_writer_encode_head(w, &b), w->base);
	for (size_t i = 0; i < w->n_blocks; i++)
		put(&m, &b, mr_writer_encode_entry(w, i, &b), w->blocks[i].l.entry_off);
	put(&m, &b, mr_writer_encode_marker(&b), w->marker_off);
	if (tail) {
		memcpy(m.data + w->ram_end, tail, tail_len);
	} else {
		put(&m, &b, mr_writer_encode_devstate_head(w, &b), w->ram_end);
		memset(m.data + w->devstate_off, 0xab, ds_len);
		put(&m, &b, mr_writer_encode_devstate_len(w, &b), w->devstate_len_off);
		put(&m, &b, mr_writer_encode_end(w, &b), w->end_off);
	}
	mr_buf_free(&b);
	return m;
}

/* The reader finds the planned records in the planned order. */
static void check_reads_back(const struct mr_writer *w, struct mr_buf *m)
{
	struct mr_src src = { mr_buf_pread, m, m->len };
	struct mr_image *img = NULL;
	struct mr_err err;

	assert_int_equal(mr_image_parse(&src, w->base, 0, &img, &err), 0);
	assert_int_equal(img->n_blocks, w->n_blocks);
	for (size_t i = 0; i < w->n_blocks; i++) {
		assert_string_equal(img->blocks[i].name, w->blocks[i].name);
		assert_int_equal(img->blocks[i].length, w->blocks[i].length);
		assert_int_equal(img->blocks[i].hdr.bitmap_offset, w->blocks[i].l.bitmap_off);
		assert_int_equal(img->blocks[i].hdr.pages_offset, w->blocks[i].l.pages_off);
	}
	assert_int_equal(img->ram_id, w->ram_id);
	assert_int_equal(img->ram_end, w->ram_end);
	assert_int_equal(img->stream_end, w->stream_end);
	if (w->tail == MR_WTAIL_DEVSTATE) {
		assert_true(img->has_devstate);
		assert_int_equal(img->devstate_off, w->devstate_off);
		assert_int_equal(img->devstate_len, w->devstate_len);
		assert_int_equal(img->n_sections, 2);
		assert_int_equal(img->sections[0].type, MR_SEC_START);
		assert_int_equal(img->sections[1].type, MR_SEC_FULL);
		assert_string_equal(img->sections[1].idstr, MR_DEVSTATE_IDSTR);
		assert_true(img->has_vmdesc);
	}
	assert_true(mr_file_has_marker(&src, img));
	mr_image_free(img);
}

/* docs/format.md section 19: 16 MiB pc.ram, 1000 bytes of device state. */
static void test_worked_example(void **state)
{
	struct mr_wblock blk = { .name = "pc.ram", .length = 16u << 20 };
	struct mr_writer w = { .ram_id = MR_RAM_SECTION_ID, .blocks = &blk, .n_blocks = 1 };
	struct mr_err err;
	struct mr_buf m = MR_BUF_INIT;

	(void)state;
	assert_int_equal(mr_writer_plan(&w, &err), 0);
	assert_int_equal(w.total, 16u << 20);
	assert_int_equal(w.head_len, 0x60);
	assert_int_equal(blk.l.entry_off, 0x60);
	assert_int_equal(blk.l.hdr_off, 0x6f);
	assert_int_equal(blk.l.bitmap_off, 0x8b);
	assert_int_equal(blk.l.bitmap_size, 0x200);
	assert_int_equal(w.marker_off, 0x28b);
	assert_int_equal(blk.l.pages_off, 0x100000);
	assert_int_equal(w.ram_end, 0x1100000);
	assert_int_equal(w.devstate_len_off, 0x110002e);
	assert_int_equal(w.devstate_off, 0x1100036);
	m = assemble(&w, NULL, 0, 1000);
	assert_int_equal(w.end_off, 0x110041e);
	assert_int_equal(w.stream_end, 0x110051d);
	assert_memory_equal(m.data, "QEVM", 4);
	assert_memory_equal(m.data + 0x18, "\x05\x1a" MR_CAP_SUBSECTION, 28);
	assert_memory_equal(m.data + 0x1100000, "\0\0\0\0\0\0\0\x10\x7e\0\0\0\x02", 13);
	assert_int_equal(m.data[0x1100423], MR_SEC_EOF);
	assert_int_equal(m.data[0x1100424], MR_SEC_VMDESC);
	check_reads_back(&w, &m);
	free(m.data);
}

static void test_several_blocks(void **state)
{
	struct mr_wblock blk[] = {
		{ .name = "a", .length = 4096 },
		{ .name = "vga.vram", .length = 2u << 20 },
		{ .name = "/rom@etc/acpi/tables", .length = 8192 },
	};
	struct mr_writer w = { .base = 4096,
			       .machine = "pc-i440fx-9.2",
			       .ram_id = MR_RAM_SECTION_ID,
			       .blocks = blk,
			       .n_blocks = 3 };
	struct mr_err err;
	struct mr_buf m = MR_BUF_INIT;

	(void)state;
	assert_int_equal(mr_writer_plan(&w, &err), 0);
	assert_int_equal(w.total, 4096 + (2u << 20) + 8192);
	assert_int_equal(blk[0].l.entry_off, w.base + w.head_len);
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(blk[i].l.hdr_off,
				 blk[i].l.entry_off + 1 + strlen(blk[i].name) + 8);
		assert_int_equal(blk[i].l.bitmap_off, blk[i].l.hdr_off + MR_RAM_HDR_SIZE);
		assert_int_equal(blk[i].l.pages_off % MR_PAGES_ALIGN, 0);
		assert_true(blk[i].l.pages_off >= blk[i].l.bitmap_off + blk[i].l.bitmap_size);
		assert_int_equal(blk[i].l.next_off, blk[i].l.pages_off + blk[i].length);
		/* Each entry follows the previous page region directly. */
		if (i)
			assert_int_equal(blk[i].l.entry_off, blk[i - 1].l.next_off);
	}
	assert_int_equal(w.marker_off, blk[0].l.bitmap_off + blk[0].l.bitmap_size);
	assert_true(w.marker_off + MR_SNAPMR_MARKER_LEN <= blk[0].l.pages_off);
	assert_int_equal(w.ram_end, blk[2].l.next_off);
	m = assemble(&w, NULL, 0, 0);
	check_reads_back(&w, &m);
	free(m.data);
}

/* Where QEMU's rule leaves 8 bytes after the first bitmap, the region moves on 1 MiB. */
static void test_marker_always_has_room(void **state)
{
	struct mr_wblock blk = { .name = "pc.ram", .length = 4096 };
	struct mr_writer w = { .ram_id = MR_RAM_SECTION_ID, .blocks = &blk, .n_blocks = 1 };
	struct mr_block_layout qemu;
	struct mr_err err;
	struct mr_buf m = MR_BUF_INIT;

	(void)state;
	assert_int_equal(mr_writer_plan(&w, &err), 0);
	/* entry + 1 + 6 + 8 + 28 = bitmap, + 8 = bitmap end, 8 bytes short of 1 MiB. */
	w.base = MR_PAGES_ALIGN - 8 - (1 + 6 + 8 + MR_RAM_HDR_SIZE + 8) - w.head_len;
	assert_int_equal(mr_writer_plan(&w, &err), 0);
	assert_int_equal(mr_layout_block(w.base + w.head_len, 6, 4096, MR_PAGES_ALIGN, &qemu), 0);
	assert_int_equal(qemu.pages_off - (qemu.bitmap_off + qemu.bitmap_size), 8);
	assert_int_equal(w.marker_off, MR_PAGES_ALIGN - 8);
	assert_int_equal(blk.l.pages_off, 2 * MR_PAGES_ALIGN);
	m = assemble(&w, NULL, 0, 5);
	check_reads_back(&w, &m);
	free(m.data);
}

/* A raw tail: its RAM section id goes into the RAM START, the tail follows RAM verbatim. */
static void test_raw_tail(void **state)
{
	struct mr_wblock blk[] = { { .name = "ram0", .length = 8192 },
				   { .name = "pc.bios", .length = 4096 } };
	struct mr_writer w = {
		.ram_id = MR_RAM_SECTION_ID, .blocks = blk, .n_blocks = 2, .tail = MR_WTAIL_RAW
	};
	struct mr_buf tail = MR_BUF_INIT;
	struct mr_err err;
	struct mr_buf m = MR_BUF_INIT;

	(void)state;
	mr_encode_ram_eos(&tail, 7);
	mr_buf_u8(&tail, MR_SEC_EOF);
	assert_int_equal(tail.err, 0);
	assert_int_equal(mr_writer_check_tail(&w, tail.data, tail.len, &err), 0);
	assert_int_equal(w.ram_id, 7);
	assert_int_equal(mr_writer_plan(&w, &err), 0);
	assert_int_equal(w.devstate_off, w.ram_end);
	m = assemble(&w, tail.data, tail.len, 0);
	assert_int_equal(w.stream_end, w.ram_end + tail.len);
	assert_int_equal(w.devstate_len, tail.len);
	check_reads_back(&w, &m);
	free(m.data);

	/* A tail the reader would refuse is refused before anything is planned. */
	tail.data[8] = 0x7d;
	assert_int_equal(mr_writer_check_tail(&w, tail.data, tail.len, &err), -EBADMSG);
	mr_buf_free(&tail);
}

static void test_overflow_refused(void **state)
{
	struct mr_wblock blk[] = { { .name = "a", .length = 4096 },
				   { .name = "big", .length = UINT64_MAX & ~(uint64_t)4095 } };
	struct mr_writer w = { .ram_id = MR_RAM_SECTION_ID, .blocks = blk, .n_blocks = 2 };
	struct mr_err err;
	uint64_t total;

	(void)state;
	/* The total wraps. */
	assert_int_equal(mr_writer_total(&w, &total), -EOVERFLOW);
	assert_int_equal(mr_writer_plan(&w, &err), -EOVERFLOW);
	assert_string_equal(err.msg, "total RAM size overflows");
	assert_string_equal(err.block, "");
	/* A total that would touch the MEM_SIZE flags. */
	blk[0].length = 4096;
	blk[1].length = 0x800;
	assert_int_equal(mr_writer_total(&w, &total), -EOVERFLOW);

	/* One block whose layout runs past 2^64: named, with its entry's offset. */
	w.blocks = &blk[1];
	w.n_blocks = 1;
	blk[1].length = UINT64_MAX & ~(uint64_t)4095;
	assert_int_equal(mr_writer_plan(&w, &err), -EOVERFLOW);
	assert_string_equal(err.block, "big");
	assert_int_equal(err.off, w.head_len);

	/* A base so high that the head wraps, and tails that wrap. */
	blk[1].length = 4096;
	w.base = UINT64_MAX - 10;
	assert_int_equal(mr_writer_plan(&w, &err), -EOVERFLOW);
	w.base = 0;
	assert_int_equal(mr_writer_plan(&w, &err), 0);
	assert_int_equal(mr_writer_set_devstate_len(&w, UINT64_MAX - 10), -EOVERFLOW);
	assert_int_equal(mr_writer_set_raw_tail(&w, UINT64_MAX - 10), -EOVERFLOW);
}

int main(void)
{
	const struct CMUnitTest writer_tests[] = {
		cmocka_unit_test(test_worked_example),
		cmocka_unit_test(test_several_blocks),
		cmocka_unit_test(test_marker_always_has_room),
		cmocka_unit_test(test_raw_tail),
		cmocka_unit_test(test_overflow_refused),
	};

	return cmocka_run_group_tests_name("writer", writer_tests, NULL, NULL);
}
