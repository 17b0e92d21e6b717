// SPDX-License-Identifier: MIT
/*
 * Unit tests for format/reader.c: streams built in memory with the encoders,
 * decoded field by field; then hostile streams, each expected to fail with
 * its documented code and location; then seeded random mutations.
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

#include "be.h"
#include "buf.h"
#include "layout.h"
#include "reader.h"
#include "stream.h"
#include "vmdesc.h"

/* ---- in-memory source ---- */

struct mem {
	const uint8_t *data;
	uint64_t len;
	uint64_t fail_off; /* reads touching this offset fail with -EIO */
};

static long mem_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
	const struct mem *m = ctx;
	uint64_t n;

	if (off <= m->fail_off && m->fail_off - off < len)
		return -EIO;
	if (off >= m->len)
		return 0;
	n = m->len - off < len ? m->len - off : len;
	memcpy(buf, m->data + off, (size_t)n);
	return (long)n;
}

/* ---- stream builder ---- */

#define MAX_BLOCKS 4
#define MAX_PARTS  4
#define TIMER_BODY (8 + 3 * 4 + (1 + 1 + 9 + 4 + 2))

struct bblock {
	const char *name;
	uint64_t pages;
};

struct bopts {
	uint64_t base; /* bytes of foreign prefix before the stream */
	const char *machine;
	const char *const *caps;
	unsigned n_caps;
	bool page_bits;
	bool uuid;
	const char *extra_sub; /* an extra configuration subsection (no body) */
	uint32_t ram_id;
	size_t n_blocks;
	struct bblock blocks[MAX_BLOCKS];
	uint64_t align;
	unsigned n_parts;
	bool command;
	bool end;
	bool device; /* a "timer" SECTION_FULL that only the VM description can size */
	bool devstate;
	uint64_t devstate_len;
	bool vmdesc;
};

struct built {
	struct mr_buf b;
	uint64_t cfg_off;
	uint64_t ram_off;
	uint64_t mem_size_off;
	uint64_t total;
	struct mr_block_layout l[MAX_BLOCKS];
	uint64_t *maps[MAX_BLOCKS];
	uint64_t eos_off; /* the EOS word closing the RAM START */
	uint64_t part_off[MAX_PARTS];
	uint64_t cmd_off;
	uint64_t end_off;
	uint64_t dev_off;
	uint64_t ds_off;
	uint64_t ds_data_off;
	uint64_t eof_off;
	uint64_t vmdesc_off;
	uint64_t vmdesc_len;
};

static const char *const caps_mr[] = { "mapped-ram" };

/* Three blocks: a partial last word (70 pages), a single page, and ram0. */
static struct bopts default_opts(void)
{
	struct bopts o = {
		.machine = "pc-q35-10.0",
		.caps = caps_mr,
		.n_caps = 1,
		.ram_id = MR_RAM_SECTION_ID,
		.n_blocks = 3,
		.blocks = { { "ram0", 8 },
			    { "0000:00:01.0/vga.vram", 70 },
			    { "/rom@etc/acpi/rsdp", 1 } },
		.align = MR_PAGE_SIZE,
		.n_parts = 2,
		.command = true,
		.end = true,
		.device = true,
		.devstate = true,
		.devstate_len = 100,
		.vmdesc = true,
	};

	return o;
}

static bool page_set(size_t block, uint64_t page)
{
	return (page * 5 + block) % 7 < 4;
}

static void pad_to(struct mr_buf *b, uint64_t off, uint8_t fill)
{
	uint8_t chunk[4096];

	memset(chunk, fill, sizeof(chunk));
	assert_true(b->len <= off);
	while (b->len < off) {
		uint64_t n = off - b->len < sizeof(chunk) ? off - b->len : sizeof(chunk);

		mr_buf_put(b, chunk, (size_t)n);
		assert_int_equal(b->err, 0);
	}
}

static void put_vmdesc(struct mr_buf *b, const struct bopts *o)
{
	struct mr_buf j = MR_BUF_INIT;

	if (!o->device) {
		mr_encode_vmdesc_devstate(b, o->devstate_len);
		return;
	}
	mr_buf_printf(&j,
		      "{\"page_size\": 4096, \"devices\": ["
		      "{\"name\": \"timer\", \"instance_id\": 0, \"vmsd_name\": \"timer\", "
		      "\"version\": 2, \"fields\": ["
		      "{\"name\": \"a\", \"type\": \"int64\", \"size\": 8}, "
		      "{\"name\": \"b\", \"array_len\": 3, \"type\": \"uint32\", \"size\": 4}], "
		      "\"subsections\": [{\"vmsd_name\": \"timer/sub\", \"version\": 1, "
		      "\"fields\": [{\"name\": \"c\", \"type\": \"uint16\", \"size\": 2}]}]}, "
		      "{\"name\": \"%s\", \"instance_id\": 0, \"fields\": ["
		      "{\"size\": 8}, {\"size\": %llu}]}]}",
		      MR_DEVSTATE_IDSTR, (unsigned long long)o->devstate_len);
	assert_int_equal(j.err, 0);
	mr_buf_u8(b, MR_SEC_VMDESC);
	mr_buf_be32(b, (uint32_t)j.len);
	mr_buf_put(b, j.data, j.len);
	mr_buf_free(&j);
}

static void build(const struct bopts *o, struct built *s)
{
	struct mr_buf *b = &s->b;

	memset(s, 0, sizeof(*s));
	pad_to(b, o->base, 0xee);
	mr_encode_file_header(b);
	s->cfg_off = b->len;
	mr_encode_config(b, o->machine, o->caps, o->n_caps);
	if (o->page_bits) {
		mr_buf_u8(b, MR_SEC_SUBSECTION);
		mr_buf_str8(b, MR_PAGEBITS_SUBSEC);
		mr_buf_be32(b, 1);
		mr_buf_be32(b, MR_PAGE_SHIFT);
	}
	if (o->uuid) {
		mr_buf_u8(b, MR_SEC_SUBSECTION);
		mr_buf_str8(b, MR_UUID_SUBSEC);
		mr_buf_be32(b, 1);
		for (uint8_t i = 0; i < 16; i++)
			mr_buf_u8(b, (uint8_t)(0xa0 + i));
	}
	if (o->extra_sub) {
		mr_buf_u8(b, MR_SEC_SUBSECTION);
		mr_buf_str8(b, o->extra_sub);
		mr_buf_be32(b, 1);
	}

	s->ram_off = b->len;
	for (size_t k = 0; k < o->n_blocks; k++)
		s->total += o->blocks[k].pages * MR_PAGE_SIZE;
	mr_encode_ram_start(b, o->ram_id, s->total);
	s->mem_size_off = b->len - 8;
	for (size_t k = 0; k < o->n_blocks; k++) {
		const struct bblock *bb = &o->blocks[k];
		struct mr_block_layout *l = &s->l[k];
		uint64_t words = mr_bitmap_bytes(bb->pages) / 8;
		uint8_t *raw = malloc(words * 8 + 1);
		struct mr_ram_header h;

		s->maps[k] = calloc(words + 1, sizeof(uint64_t));
		assert_non_null(s->maps[k]);
		assert_non_null(raw);
		for (uint64_t i = 0; i < bb->pages; i++)
			if (page_set(k, i))
				mr_bit_set(s->maps[k], i);
		assert_int_equal(mr_layout_block(b->len, strlen(bb->name), bb->pages * MR_PAGE_SIZE,
						 o->align, l),
				 0);
		h = (struct mr_ram_header){ MR_RAM_HDR_VERSION, MR_PAGE_SIZE, l->bitmap_off,
					    l->pages_off };
		mr_encode_block_entry(b, bb->name, l->length, &h);
		assert_int_equal(b->len, l->bitmap_off);
		mr_bitmap_to_file(s->maps[k], words, raw);
		mr_buf_put(b, raw, words * 8);
		free(raw);
		pad_to(b, l->pages_off, 0);
		for (uint64_t i = 0; i < bb->pages; i++)
			pad_to(b, b->len + MR_PAGE_SIZE, page_set(k, i) ? (uint8_t)(k + 1) : 0);
		assert_int_equal(b->len, l->next_off);
	}
	s->eos_off = b->len;
	mr_encode_ram_eos(b, o->ram_id);
	for (unsigned i = 0; i < o->n_parts; i++) {
		s->part_off[i] = b->len;
		mr_buf_u8(b, MR_SEC_PART);
		mr_buf_be32(b, o->ram_id);
		mr_encode_ram_eos(b, o->ram_id);
	}
	if (o->command) {
		s->cmd_off = b->len;
		mr_buf_u8(b, MR_SEC_COMMAND);
		mr_buf_be16(b, MR_CMD_SWITCHOVER_START);
		mr_buf_be16(b, 0);
	}
	if (o->end) {
		s->end_off = b->len;
		mr_buf_u8(b, MR_SEC_END);
		mr_buf_be32(b, o->ram_id);
		mr_encode_ram_eos(b, o->ram_id);
	}
	if (o->device) {
		s->dev_off = b->len;
		mr_encode_section_full_hdr(b, MR_SEC_FULL, 0, "timer", 0, 2);
		pad_to(b, b->len + 20, 0x11);
		mr_buf_u8(b, MR_SEC_SUBSECTION);
		mr_buf_str8(b, "timer/sub");
		mr_buf_be32(b, 1);
		mr_buf_be16(b, 0x2222);
		assert_int_equal(b->len - s->dev_off, 19 + TIMER_BODY);
		mr_encode_footer(b, 0);
	}
	if (o->devstate) {
		s->ds_off = b->len;
		mr_encode_devstate_hdr(b, o->devstate_len);
		s->ds_data_off = b->len;
		pad_to(b, b->len + o->devstate_len, 0x5a);
		mr_encode_footer(b, MR_DEVSTATE_ID);
	}
	s->eof_off = b->len;
	mr_buf_u8(b, MR_SEC_EOF);
	if (o->vmdesc) {
		s->vmdesc_off = b->len;
		put_vmdesc(b, o);
		s->vmdesc_len = b->len - s->vmdesc_off - 5;
	}
	assert_int_equal(b->err, 0);
}

static void built_free(struct built *s)
{
	for (size_t k = 0; k < MAX_BLOCKS; k++)
		free(s->maps[k]);
	mr_buf_free(&s->b);
}

/* Parses s->b (optionally only its first `len` bytes) from `base`. */
static int parse_n(const struct built *s, uint64_t len, uint64_t base, unsigned flags,
		   struct mr_image **img, struct mr_err *err)
{
	struct mem m = { s->b.data, len, UINT64_MAX };
	struct mr_src src = { mem_pread, &m, len };

	*img = NULL;
	return mr_image_parse(&src, base, flags, img, err);
}

static int parse(const struct built *s, uint64_t base, struct mr_image **img, struct mr_err *err)
{
	return parse_n(s, s->b.len, base, 0, img, err);
}

/* ---- valid streams ---- */

static void check_image(const struct bopts *o, const struct built *s, const struct mr_image *img,
			bool bitmaps)
{
	size_t n = 0;

	assert_int_equal(img->base, o->base);
	assert_int_equal(img->file_size, s->b.len);
	assert_string_equal(img->machine, o->machine);
	assert_int_equal(img->n_caps, o->n_caps);
	for (unsigned i = 0; i < o->n_caps; i++) {
		assert_string_equal(img->caps[i], o->caps[i]);
		assert_true(mr_image_has_cap(img, o->caps[i]));
	}
	assert_false(mr_image_has_cap(img, "multifd"));
	assert_int_equal(img->target_page_bits, o->page_bits ? MR_PAGE_SHIFT : 0);
	assert_int_equal(img->has_uuid, o->uuid);
	if (o->uuid)
		for (unsigned i = 0; i < 16; i++)
			assert_int_equal(img->uuid[i], 0xa0 + i);

	assert_int_equal(img->ram_id, o->ram_id);
	assert_int_equal(img->ram_total, s->total);
	assert_int_equal(img->n_blocks, o->n_blocks);
	for (size_t k = 0; k < o->n_blocks; k++) {
		const struct mr_block_info *bi = &img->blocks[k];
		const struct mr_block_layout *l = &s->l[k];
		uint64_t present = 0;

		assert_string_equal(bi->name, o->blocks[k].name);
		assert_ptr_equal(mr_image_block(img, o->blocks[k].name), bi);
		assert_int_equal(bi->entry_off, l->entry_off);
		assert_int_equal(bi->hdr_off, l->hdr_off);
		assert_int_equal(bi->hdr.version, MR_RAM_HDR_VERSION);
		assert_int_equal(bi->hdr.page_size, MR_PAGE_SIZE);
		assert_int_equal(bi->hdr.bitmap_offset, l->bitmap_off);
		assert_int_equal(bi->hdr.pages_offset, l->pages_off);
		assert_int_equal(bi->length, l->length);
		assert_int_equal(bi->num_pages, o->blocks[k].pages);
		assert_int_equal(bi->bitmap_size, l->bitmap_size);
		for (uint64_t i = 0; i < bi->num_pages; i++)
			present += page_set(k, i);
		if (!bitmaps) {
			assert_null(bi->bitmap);
			assert_int_equal(bi->present, 0);
			continue;
		}
		assert_int_equal(bi->present, present);
		assert_non_null(bi->bitmap);
		assert_memory_equal(bi->bitmap, s->maps[k], bi->bitmap_size);
	}
	assert_null(mr_image_block(img, "pc.ram"));
	assert_int_equal(img->ram_end, s->eos_off);

	/* The sections, in file order, with exact offsets and sizes. */
	const struct mr_section_info *sec = img->sections;

	assert_int_equal(sec[n].type, MR_SEC_START);
	assert_int_equal(sec[n].id, o->ram_id);
	assert_string_equal(sec[n].idstr, "ram");
	assert_int_equal(sec[n].instance, 0);
	assert_int_equal(sec[n].version, MR_RAM_VERSION);
	assert_int_equal(sec[n].off, s->ram_off);
	assert_int_equal(sec[n].size, s->eos_off + 13 - s->ram_off);
	n++;
	for (unsigned i = 0; i < o->n_parts; i++, n++) {
		assert_int_equal(sec[n].type, MR_SEC_PART);
		assert_int_equal(sec[n].id, o->ram_id);
		assert_int_equal(sec[n].off, s->part_off[i]);
		assert_int_equal(sec[n].size, 18);
	}
	if (o->command) {
		assert_int_equal(sec[n].type, MR_SEC_COMMAND);
		assert_int_equal(sec[n].command, MR_CMD_SWITCHOVER_START);
		assert_int_equal(sec[n].off, s->cmd_off);
		assert_int_equal(sec[n].size, 5);
		n++;
	}
	if (o->end) {
		assert_int_equal(sec[n].type, MR_SEC_END);
		assert_int_equal(sec[n].id, o->ram_id);
		assert_int_equal(sec[n].off, s->end_off);
		assert_int_equal(sec[n].size, 18);
		n++;
	}
	if (o->device) {
		assert_int_equal(sec[n].type, MR_SEC_FULL);
		assert_int_equal(sec[n].id, 0);
		assert_string_equal(sec[n].idstr, "timer");
		assert_int_equal(sec[n].instance, 0);
		assert_int_equal(sec[n].version, 2);
		assert_int_equal(sec[n].off, s->dev_off);
		assert_int_equal(sec[n].size, 19 + TIMER_BODY + 5);
		n++;
	}
	assert_int_equal(img->has_devstate, o->devstate);
	if (o->devstate) {
		assert_int_equal(sec[n].type, MR_SEC_FULL);
		assert_int_equal(sec[n].id, MR_DEVSTATE_ID);
		assert_string_equal(sec[n].idstr, MR_DEVSTATE_IDSTR);
		assert_int_equal(sec[n].version, MR_DEVSTATE_VERSION);
		assert_int_equal(sec[n].off, s->ds_off);
		assert_int_equal(sec[n].size, 1 + 4 + 1 + 19 + 4 + 4 + 8 + o->devstate_len + 5);
		assert_int_equal(img->devstate_off, s->ds_data_off);
		assert_int_equal(img->devstate_len, o->devstate_len);
		n++;
	}
	assert_int_equal(img->n_sections, n);
	assert_int_equal(img->eof_off, s->eof_off);
	assert_int_equal(img->has_vmdesc, o->vmdesc);
	if (o->vmdesc) {
		assert_int_equal(img->vmdesc_off, s->vmdesc_off);
		assert_int_equal(img->vmdesc_len, s->vmdesc_len);
		assert_int_equal(img->stream_end, s->b.len);
	} else {
		assert_int_equal(img->stream_end, s->eof_off + 1);
	}
}

static void test_parse_full(void **state)
{
	struct bopts o = default_opts();
	struct built s;
	struct mr_image *img;
	struct mr_err err;

	(void)state;
	build(&o, &s);
	assert_int_equal(parse(&s, 0, &img, &err), 0);
	check_image(&o, &s, img, true);
	mr_image_free(img);

	assert_int_equal(parse_n(&s, s.b.len, 0, MR_PARSE_NO_BITMAPS, &img, &err), 0);
	check_image(&o, &s, img, false);
	mr_image_free(img);
	built_free(&s);
}

static void test_parse_variants(void **state)
{
	static const char *const caps2[] = { "zero-blocks", "mapped-ram", "multifd2" };
	struct mr_image *img;
	struct mr_err err;
	struct built s;

	(void)state;
	/* QEMU's 1 MiB alignment, a foreign prefix, extra subsections, no vmdesc. */
	struct bopts o = default_opts();

	o.base = 0x1234;
	o.align = MR_PAGES_ALIGN;
	o.page_bits = true;
	o.uuid = true;
	o.caps = caps2;
	o.n_caps = 3;
	o.ram_id = 99;
	o.device = false;
	o.vmdesc = false;
	o.n_parts = 0;
	build(&o, &s);
	assert_int_equal(s.l[0].pages_off, 0x100000);
	assert_int_equal(parse(&s, o.base, &img, &err), 0);
	check_image(&o, &s, img, true);
	mr_image_free(img);
	built_free(&s);

	/* Bare minimum: RAM only, no PART/COMMAND/END, no devstate, no vmdesc. */
	o = default_opts();
	o.n_parts = 0;
	o.command = false;
	o.end = false;
	o.device = false;
	o.devstate = false;
	o.vmdesc = false;
	o.n_blocks = 1;
	build(&o, &s);
	assert_int_equal(parse(&s, 0, &img, &err), 0);
	check_image(&o, &s, img, true);
	mr_image_free(img);
	built_free(&s);

	/* Four PARTs; devstate sized by the library's own VM description. */
	o = default_opts();
	o.n_parts = 4;
	o.device = false;
	o.devstate_len = 0;
	build(&o, &s);
	assert_int_equal(parse(&s, 0, &img, &err), 0);
	check_image(&o, &s, img, true);
	mr_image_free(img);
	built_free(&s);

	/* No blocks at all: MEM_SIZE 0 then EOS. */
	o = default_opts();
	o.n_blocks = 0;
	build(&o, &s);
	assert_int_equal(parse(&s, 0, &img, &err), 0);
	check_image(&o, &s, img, true);
	mr_image_free(img);
	built_free(&s);

	/* Trailing bytes after the stream (a trailer) are not part of it. */
	o = default_opts();
	o.device = false;
	build(&o, &s);
	uint64_t len = s.b.len;

	pad_to(&s.b, len + 100, 0x77);
	assert_int_equal(parse(&s, 0, &img, &err), 0);
	assert_true(img->has_vmdesc);
	assert_int_equal(img->stream_end, len);
	assert_int_equal(img->file_size, len + 100);
	mr_image_free(img);
	built_free(&s);
}

/* MappedRamHeader version 0 is accepted, as QEMU's loader does. */
static void test_hdr_version0(void **state)
{
	struct bopts o = default_opts();
	struct mr_image *img;
	struct built s;

	(void)state;
	build(&o, &s);
	mr_put_be32(s.b.data + s.l[1].hdr_off, 0);
	assert_int_equal(parse(&s, 0, &img, NULL), 0);
	assert_int_equal(img->blocks[1].hdr.version, 0);
	mr_image_free(img);
	built_free(&s);
}

/* ---- hostile streams ---- */

/* Expects failure `code` at `off` (and block name, when not NULL). */
static void expect_fail(const struct built *s, uint64_t base, int code, uint64_t off,
			const char *block)
{
	struct mr_image *img = (struct mr_image *)0x1;
	struct mr_err err;
	int r;

	memset(&err, 0x55, sizeof(err));
	r = parse(s, base, &img, &err);
	if (r != code || err.off != off)
		print_error("got %d at 0x%llx (%s: %s), want %d at 0x%llx\n", r,
			    (unsigned long long)err.off, err.block, err.msg, code,
			    (unsigned long long)off);
	assert_int_equal(r, code);
	assert_int_equal(err.off, off);
	assert_non_null(memchr(err.msg, 0, sizeof(err.msg)));
	assert_non_null(memchr(err.block, 0, sizeof(err.block)));
	assert_true(err.msg[0] != 0);
	/* RAM blocks are named in err.block, device sections in err.section. */
	if (block)
		assert_string_equal(err.block[0] ? err.block : err.section, block);
	/* Nothing handed out on failure. */
	assert_ptr_equal(img, NULL);
	/* Without an mr_err the code is the same. */
	assert_int_equal(parse(s, base, &img, NULL), code);
}

static void test_bad_magic_version(void **state)
{
	struct bopts o = default_opts();
	struct built s;

	(void)state;
	build(&o, &s);
	s.b.data[0] = 'X';
	expect_fail(&s, 0, -EBADMSG, 0, "");
	s.b.data[0] = 'Q';
	mr_put_be32(s.b.data + 4, 2);
	expect_fail(&s, 0, -EPROTONOSUPPORT, 4, "");
	mr_put_be32(s.b.data + 4, 4);
	expect_fail(&s, 0, -EPROTONOSUPPORT, 4, "");
	mr_put_be32(s.b.data + 4, 3);
	/* Not the configuration section next. */
	s.b.data[8] = MR_SEC_START;
	expect_fail(&s, 0, -EBADMSG, 8, "");
	s.b.data[8] = MR_SEC_CONFIG;
	/* Machine name of length 0, NUL inside it. */
	mr_put_be32(s.b.data + 9, 0);
	expect_fail(&s, 0, -EBADMSG, 9, "");
	mr_put_be32(s.b.data + 9, 11);
	s.b.data[15] = 0;
	expect_fail(&s, 0, -EBADMSG, 13, "");
	built_free(&s);

	/* With a prefix, offsets stay absolute. */
	o.base = 100;
	build(&o, &s);
	s.b.data[101] = 0;
	expect_fail(&s, 100, -EBADMSG, 100, "");
	/* A base at or past the end. */
	expect_fail(&s, s.b.len, -ENODATA, s.b.len, "");
	built_free(&s);
}

/* The code a stream cut to `k` bytes must fail with (0 = parses). */
static int cut_result(const struct bopts *o, const struct built *s, uint64_t k)
{
	for (size_t b = 0; b < o->n_blocks; b++) {
		if (k < s->l[b].hdr_off + MR_RAM_HDR_SIZE)
			return -ENODATA;
		if (k < s->l[b].next_off)
			return -EOVERFLOW; /* page region past the end */
	}
	if (o->device)
		/* Once its header is read, the timer section needs the cut VM description. */
		return k < s->dev_off + 19 ? -ENODATA : -EPROTONOSUPPORT;
	if (o->devstate && k >= s->ds_data_off && k < s->ds_data_off + o->devstate_len)
		return -EOVERFLOW;
	if (k == s->eof_off + 1)
		return 0; /* no VM description: still a whole stream */
	return -ENODATA;
}

static bool inside_pages(const struct bopts *o, const struct built *s, uint64_t k)
{
	for (size_t b = 0; b < o->n_blocks; b++)
		if (k > s->l[b].pages_off && k + 1 < s->l[b].next_off)
			return (k - s->l[b].pages_off) % 4093 != 0;
	return false;
}

static void test_truncation(void **state)
{
	struct bopts o = default_opts();
	struct built s;
	struct mr_image *img;
	struct mr_err err;

	(void)state;
	for (int pass = 0; pass < 2; pass++) {
		o.base = 7;
		o.device = pass == 0;
		build(&o, &s);
		/*
		 * Every cut outside the page regions (header region, block entries,
		 * bitmaps, the sections after RAM), byte by byte; inside the page
		 * regions, their edges and a sample.
		 */
		for (uint64_t k = 0; k < s.b.len; k++) {
			if (inside_pages(&o, &s, k))
				continue;
			int want = cut_result(&o, &s, k);
			int r = parse_n(&s, k, 7, 0, &img, &err);

			if (r != want)
				print_error("cut at 0x%llx: %d (%s at 0x%llx), want %d\n",
					    (unsigned long long)k, r, err.msg,
					    (unsigned long long)err.off, want);
			assert_int_equal(r, want);
			if (r) {
				assert_null(img);
				assert_true(err.off <= (k > 7 ? k : 7));
			} else {
				assert_false(img->has_vmdesc);
				assert_int_equal(img->stream_end, k);
				mr_image_free(img);
			}
		}
		built_free(&s);
	}
}

static void test_ram_header_values(void **state)
{
	struct bopts o = default_opts();
	const char *name = o.blocks[1].name;
	struct built s;
	uint8_t *h;

	(void)state;
	build(&o, &s);
	h = s.b.data + s.l[1].hdr_off;
	const uint64_t hoff = s.l[1].hdr_off, pages = s.l[1].pages_off, bm = s.l[1].bitmap_off;

	mr_put_be32(h, 2);
	expect_fail(&s, 0, -EPROTONOSUPPORT, hoff, name);
	mr_put_be32(h, 0xffffffff);
	expect_fail(&s, 0, -EPROTONOSUPPORT, hoff, name);
	mr_put_be32(h, 1);

	mr_put_be64(h + 4, 8192);
	expect_fail(&s, 0, -EPROTONOSUPPORT, hoff + 4, name);
	mr_put_be64(h + 4, 0);
	expect_fail(&s, 0, -EPROTONOSUPPORT, hoff + 4, name);
	mr_put_be64(h + 4, 4096);

	/* pages_offset not 4096-aligned (QEMU: "bad alignment"). */
	mr_put_be64(h + 20, pages + 0x800);
	expect_fail(&s, 0, -EBADMSG, hoff + 20, name);
	mr_put_be64(h + 20, pages + 1);
	expect_fail(&s, 0, -EBADMSG, hoff + 20, name);
	/* Backwards: before the end of this header, even to offset 0. */
	mr_put_be64(h + 20, s.l[1].entry_off & ~(uint64_t)4095);
	expect_fail(&s, 0, -EBADMSG, hoff + 20, name);
	mr_put_be64(h + 20, 0);
	expect_fail(&s, 0, -EBADMSG, hoff + 20, name);
	/* Past the end of the file, and wrapping. */
	mr_put_be64(h + 20, (s.b.len + 4095) & ~(uint64_t)4095);
	expect_fail(&s, 0, -EOVERFLOW, hoff + 20, name);
	mr_put_be64(h + 20, pages + 4096 * 1000);
	expect_fail(&s, 0, -EOVERFLOW, hoff + 20, name);
	mr_put_be64(h + 20, UINT64_MAX & ~(uint64_t)4095);
	expect_fail(&s, 0, -EOVERFLOW, hoff + 20, name);
	mr_put_be64(h + 20, pages);

	/* Bitmap past the end, straddling it, wrapping. */
	mr_put_be64(h + 12, s.b.len);
	expect_fail(&s, 0, -EOVERFLOW, hoff + 12, name);
	mr_put_be64(h + 12, s.b.len - 15);
	expect_fail(&s, 0, -EOVERFLOW, hoff + 12, name);
	mr_put_be64(h + 12, UINT64_MAX - 3);
	expect_fail(&s, 0, -EOVERFLOW, hoff + 12, name);
	mr_put_be64(h + 12, UINT64_MAX);
	expect_fail(&s, 0, -EOVERFLOW, hoff + 12, name);
	mr_put_be64(h + 12, bm);

	/* Length not a page multiple. */
	mr_put_be64(h - 8, s.l[1].length + 1);
	expect_fail(&s, 0, -EBADMSG, s.l[1].entry_off, name);
	mr_put_be64(h - 8, s.l[1].length);
	built_free(&s);

	/* A bitmap after the VM description, ending exactly at the end, is fine. */
	struct mr_image *img;

	o.device = false;
	build(&o, &s);
	uint64_t moved = s.b.len;

	uint8_t saved[16];

	memcpy(saved, s.b.data + s.l[1].bitmap_off, 16);
	memset(s.b.data + s.l[1].bitmap_off, 0, 16);
	mr_buf_put(&s.b, saved, 16);
	mr_put_be64(s.b.data + s.l[1].hdr_off + 12, moved);
	assert_int_equal(parse(&s, 0, &img, NULL), 0);
	assert_int_equal(img->blocks[1].hdr.bitmap_offset, moved);
	assert_memory_equal(img->blocks[1].bitmap, s.maps[1], 16);
	assert_int_equal(img->stream_end, moved);
	mr_image_free(img);
	built_free(&s);
}

static void test_bitmap_tail(void **state)
{
	struct bopts o = default_opts();
	const char *name = o.blocks[1].name;
	struct mr_image *img;
	struct built s;

	(void)state;
	/* Block 1 has 70 pages: bits 70..127 of its bitmap must be clear. */
	build(&o, &s);
	s.b.data[s.l[1].bitmap_off + 70 / 8] |= 1 << (70 % 8);
	expect_fail(&s, 0, -EBADMSG, s.l[1].bitmap_off, name);
	s.b.data[s.l[1].bitmap_off + 70 / 8] &= (uint8_t) ~(1 << (70 % 8));
	s.b.data[s.l[1].bitmap_off + 15] = 0x80;
	expect_fail(&s, 0, -EBADMSG, s.l[1].bitmap_off, name);
	/* Not looked at when the bitmaps are not loaded. */
	assert_int_equal(parse_n(&s, s.b.len, 0, MR_PARSE_NO_BITMAPS, &img, NULL), 0);
	mr_image_free(img);
	s.b.data[s.l[1].bitmap_off + 15] = 0;
	/* The last valid bit is fine. */
	s.b.data[s.l[1].bitmap_off + 69 / 8] |= 1 << (69 % 8);
	assert_int_equal(parse(&s, 0, &img, NULL), 0);
	assert_true(mr_bit_test(img->blocks[1].bitmap, 69));
	mr_image_free(img);
	built_free(&s);
}

static void test_mem_size(void **state)
{
	struct bopts o = default_opts();
	struct built s;

	(void)state;
	build(&o, &s);
	/* Smaller: the 70-page block overruns the total. */
	mr_put_be64(s.b.data + s.mem_size_off, (s.total - 4096 * 2) | MR_RAM_MEM_SIZE);
	expect_fail(&s, 0, -EBADMSG, s.l[1].entry_off, o.blocks[1].name);
	/* The list ends early and the next block entry reads as a RAM word. */
	mr_put_be64(s.b.data + s.mem_size_off, (s.total - 4096) | MR_RAM_MEM_SIZE);
	expect_fail(&s, 0, -EBADMSG, s.l[2].entry_off, "");
	mr_put_be64(s.b.data + s.mem_size_off, (s.total - 4096 * 71) | MR_RAM_MEM_SIZE);
	expect_fail(&s, 0, -EBADMSG, s.l[1].entry_off, "");
	/* Larger: the EOS word is taken for a block entry with an empty name. */
	mr_put_be64(s.b.data + s.mem_size_off, (s.total + 4096) | MR_RAM_MEM_SIZE);
	expect_fail(&s, 0, -EBADMSG, s.eos_off, "");
	/* MEM_SIZE with another flag. */
	mr_put_be64(s.b.data + s.mem_size_off, s.total | MR_RAM_MEM_SIZE | MR_RAM_ZERO);
	expect_fail(&s, 0, -EBADMSG, s.mem_size_off, "");
	mr_put_be64(s.b.data + s.mem_size_off, s.total | MR_RAM_MEM_SIZE | MR_RAM_PAGE);
	expect_fail(&s, 0, -EBADMSG, s.mem_size_off, "");
	built_free(&s);
}

static void test_block_names(void **state)
{
	struct bopts o = default_opts();
	struct built s;

	(void)state;
	o.blocks[2].name = o.blocks[0].name;
	build(&o, &s);
	expect_fail(&s, 0, -EBADMSG, s.l[2].entry_off, o.blocks[0].name);
	built_free(&s);

	o = default_opts();
	o.blocks[1].name = "";
	build(&o, &s);
	expect_fail(&s, 0, -EBADMSG, s.l[1].entry_off, "");
	built_free(&s);

	o = default_opts();
	build(&o, &s);
	s.b.data[s.l[1].entry_off + 3] = 0;
	expect_fail(&s, 0, -EBADMSG, s.l[1].entry_off, "");
	built_free(&s);
}

static void test_config(void **state)
{
	static const char *const caps_other[] = { "x-ignore-shared" };
	struct bopts o = default_opts();
	struct mr_image *img;
	struct built s;

	(void)state;
	o.extra_sub = "configuration/foo";
	build(&o, &s);
	expect_fail(&s, 0, -EPROTONOSUPPORT, s.ram_off - 1 - 1 - 17 - 4, "");
	built_free(&s);

	o.extra_sub = "other/foo";
	build(&o, &s);
	expect_fail(&s, 0, -EBADMSG, s.ram_off - 1 - 1 - 9 - 4, "");
	built_free(&s);

	/* target-page-bits other than 12. */
	o = default_opts();
	o.page_bits = true;
	build(&o, &s);
	mr_put_be32(s.b.data + s.ram_off - 4, 13);
	expect_fail(&s, 0, -EPROTONOSUPPORT, s.ram_off - 4 - 4 - 1 - 30 - 1, "");
	built_free(&s);

	/* No mapped-ram capability, or no capability subsection at all. */
	o = default_opts();
	o.caps = caps_other;
	build(&o, &s);
	expect_fail(&s, 0, -EPROTONOSUPPORT, s.ram_off, "");
	built_free(&s);
	/* x-ignore-shared with mapped-ram: QEMU 10.0 cannot write it, we do not read it. */
	static const char *const caps_ignore[] = { "x-ignore-shared", "mapped-ram" };
	o.caps = caps_ignore;
	o.n_caps = 2;
	build(&o, &s);
	expect_fail(&s, 0, -EPROTONOSUPPORT, s.ram_off, "");
	built_free(&s);
	o.caps = caps_other;
	o.n_caps = 1;
	o.n_caps = 0;
	build(&o, &s);
	expect_fail(&s, 0, -EPROTONOSUPPORT, s.ram_off, "");
	built_free(&s);

	/* A capability count beyond any real list. */
	o = default_opts();
	build(&o, &s);
	mr_put_be32(s.b.data + 0x38, 1000);
	expect_fail(&s, 0, -EBADMSG, 0x18, "");
	/* A count larger than what follows: the next bytes are read as names. */
	mr_put_be32(s.b.data + 0x38, 3);
	assert_int_not_equal(parse(&s, 0, &img, NULL), 0);
	built_free(&s);
}

/*
 * The capability subsection twice: QEMU would read the list twice; the
 * reader must not lose track of the first list (it used to leak it and
 * index past the second one).
 */
static void test_caps_twice(void **state)
{
	struct bopts o = default_opts();
	struct mr_image *img = NULL;
	struct mr_block_layout l;
	struct mr_buf t = MR_BUF_INIT;
	struct mr_err err;
	struct built s;
	int r;

	(void)state;
	o.n_blocks = 1;
	o.device = false;
	build(&o, &s);
	/* Splice a second copy of the subsection (0x18..0x47) in, re-lay the block. */
	mr_buf_put(&t, s.b.data, 0x47);
	mr_buf_put(&t, s.b.data + 0x18, 0x47 - 0x18);
	mr_encode_ram_start(&t, o.ram_id, s.total);
	assert_int_equal(
		mr_layout_block(t.len, strlen(o.blocks[0].name), s.l[0].length, MR_PAGE_SIZE, &l),
		0);
	struct mr_ram_header h = { 1, 4096, l.bitmap_off, l.pages_off };

	mr_encode_block_entry(&t, o.blocks[0].name, l.length, &h);
	mr_buf_put(&t, s.b.data + s.l[0].bitmap_off, l.bitmap_size);
	pad_to(&t, l.next_off, 0);
	mr_buf_put(&t, s.b.data + s.eos_off, s.b.len - s.eos_off);
	assert_int_equal(t.err, 0);

	struct mem m = { t.data, t.len, UINT64_MAX };
	struct mr_src src = { mem_pread, &m, t.len };

	r = mr_image_parse(&src, 0, 0, &img, &err);
	if (!r)
		mr_image_free(img);
	assert_int_equal(r, -EBADMSG);
	assert_int_equal(err.off, 0x47);
	assert_null(img);
	mr_buf_free(&t);
	built_free(&s);
}

static void test_sections(void **state)
{
	struct bopts o = default_opts();
	struct built s;

	(void)state;
	build(&o, &s);
	/* Unknown section types where a section may start. */
	static const uint8_t bad_types[] = { 0x09, 0x05, 0x06, 0x07, 0x7e, 0xff };

	for (size_t i = 0; i < sizeof(bad_types); i++) {
		s.b.data[s.cmd_off] = bad_types[i];
		expect_fail(&s, 0, -EBADMSG, s.cmd_off, "");
	}
	s.b.data[s.cmd_off] = MR_SEC_COMMAND;

	/* Footer: wrong id, wrong marker. */
	mr_put_be32(s.b.data + s.eos_off + 9, 3);
	expect_fail(&s, 0, -EBADMSG, s.eos_off + 8, "ram");
	mr_put_be32(s.b.data + s.eos_off + 9, o.ram_id);
	s.b.data[s.eos_off + 8] = 0x7f;
	expect_fail(&s, 0, -EBADMSG, s.eos_off + 8, "ram");
	s.b.data[s.eos_off + 8] = MR_SEC_FOOTER;
	mr_put_be32(s.b.data + s.part_off[1] + 14, 0);
	expect_fail(&s, 0, -EBADMSG, s.part_off[1] + 13, "ram");
	mr_put_be32(s.b.data + s.part_off[1] + 14, o.ram_id);
	built_free(&s);
}

static void test_ram_flags(void **state)
{
	struct bopts o = default_opts();
	struct built s;

	(void)state;
	build(&o, &s);
	/* START: PAGE or ZERO where EOS should be, or combined with it. */
	static const uint64_t bad[] = { MR_RAM_PAGE,
					MR_RAM_ZERO,
					MR_RAM_EOS | MR_RAM_PAGE,
					MR_RAM_EOS | MR_RAM_ZERO,
					MR_RAM_XBZRLE,
					MR_RAM_HOOK,
					MR_RAM_MULTIFD_FLUSH,
					MR_RAM_CONTINUE,
					0 };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		mr_put_be64(s.b.data + s.eos_off, bad[i]);
		expect_fail(&s, 0, -EBADMSG, s.eos_off, "");
	}
	/* A second MEM_SIZE in the same START. */
	mr_put_be64(s.b.data + s.eos_off, MR_RAM_MEM_SIZE);
	expect_fail(&s, 0, -EBADMSG, s.eos_off, "");
	mr_put_be64(s.b.data + s.eos_off, MR_RAM_EOS);

	/* PART and END: only EOS. */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		mr_put_be64(s.b.data + s.part_off[0] + 5, bad[i]);
		expect_fail(&s, 0, -EBADMSG, s.part_off[0] + 5, "");
	}
	mr_put_be64(s.b.data + s.part_off[0] + 5, MR_RAM_MEM_SIZE);
	expect_fail(&s, 0, -EBADMSG, s.part_off[0] + 5, "");
	mr_put_be64(s.b.data + s.part_off[0] + 5, MR_RAM_EOS);
	mr_put_be64(s.b.data + s.end_off + 5, MR_RAM_ZERO | MR_RAM_EOS);
	expect_fail(&s, 0, -EBADMSG, s.end_off + 5, "");
	mr_put_be64(s.b.data + s.end_off + 5, MR_RAM_EOS);

	/* PART/END naming a section other than RAM. */
	mr_put_be32(s.b.data + s.part_off[0] + 1, 7);
	expect_fail(&s, 0, -EPROTONOSUPPORT, s.part_off[0], "");
	mr_put_be32(s.b.data + s.part_off[0] + 1, o.ram_id);
	built_free(&s);
}

static void test_device_sections(void **state)
{
	struct bopts o = default_opts();
	struct mr_image *img;
	struct built s;

	(void)state;
	/* Unknown device and no VM description. */
	o.vmdesc = false;
	build(&o, &s);
	expect_fail(&s, 0, -EPROTONOSUPPORT, s.dev_off, "timer");
	built_free(&s);

	/* A VM description that does not list it. */
	o = default_opts();
	o.vmdesc = false;
	build(&o, &s);
	mr_encode_vmdesc_devstate(&s.b, o.devstate_len);
	expect_fail(&s, 0, -EPROTONOSUPPORT, s.dev_off, "timer");
	built_free(&s);

	/* The body is skipped by its described size, unread; a wrong footer id is caught. */
	o = default_opts();
	build(&o, &s);
	assert_int_equal(parse(&s, 0, &img, NULL), 0);
	mr_image_free(img);
	s.b.data[s.dev_off + 19 + 20 + 1] = 10;	       /* subsection name length 9 -> 10 */
	assert_int_equal(parse(&s, 0, &img, NULL), 0); /* body size is from the description */
	mr_image_free(img);
	mr_put_be32(s.b.data + s.dev_off + 19 + TIMER_BODY + 1, 1);
	expect_fail(&s, 0, -EBADMSG, s.dev_off + 19 + TIMER_BODY, "timer");
	built_free(&s);

	/* An iterative section other than RAM cannot be walked. */
	o = default_opts();
	build(&o, &s);
	s.b.data[s.dev_off] = MR_SEC_START;
	expect_fail(&s, 0, -EPROTONOSUPPORT, s.dev_off, "timer");
	built_free(&s);

	/* Devstate length overflowing or past the end. */
	o = default_opts();
	build(&o, &s);
	const uint64_t len_off = s.ds_data_off - 8;

	mr_put_be64(s.b.data + len_off, UINT64_MAX);
	expect_fail(&s, 0, -EOVERFLOW, s.ds_off, MR_DEVSTATE_IDSTR);
	mr_put_be64(s.b.data + len_off, UINT64_MAX - s.ds_data_off + 1);
	expect_fail(&s, 0, -EOVERFLOW, s.ds_off, MR_DEVSTATE_IDSTR);
	mr_put_be64(s.b.data + len_off, s.b.len - s.ds_data_off + 1);
	expect_fail(&s, 0, -EOVERFLOW, s.ds_off, MR_DEVSTATE_IDSTR);
	/* Shorter: the footer lands in the data. */
	mr_put_be64(s.b.data + len_off, o.devstate_len - 1);
	expect_fail(&s, 0, -EBADMSG, s.ds_data_off + o.devstate_len - 1, MR_DEVSTATE_IDSTR);
	mr_put_be64(s.b.data + len_off, o.devstate_len);
	built_free(&s);

	/* RAM section version other than 4; RAM twice; no RAM at all. */
	o = default_opts();
	build(&o, &s);
	mr_put_be32(s.b.data + s.ram_off + 13, 5);
	expect_fail(&s, 0, -EPROTONOSUPPORT, s.ram_off, "");
	mr_put_be32(s.b.data + s.ram_off + 13, 4);
	s.b.data[s.ram_off] = MR_SEC_EOF;
	expect_fail(&s, 0, -EBADMSG, 0, "");
	built_free(&s);
}

static void test_pread_error(void **state)
{
	struct bopts o = default_opts();
	struct mr_image *img = NULL;
	struct mr_err err;
	struct built s;

	(void)state;
	build(&o, &s);
	const uint64_t offs[] = { 0,
				  s.l[0].hdr_off,
				  s.l[1].bitmap_off,
				  s.l[2].entry_off,
				  s.ds_data_off,
				  s.vmdesc_off + 10 };

	for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
		struct mem m = { s.b.data, s.b.len, offs[i] };
		struct mr_src src = { mem_pread, &m, s.b.len };
		int r = mr_image_parse(&src, 0, 0, &img, &err);

		/* The cursor reads ahead, so every one of these is hit. */
		assert_int_equal(r, -EIO);
		assert_null(img);
		assert_string_not_equal(err.msg, "");
	}
	built_free(&s);
}

/* ---- bounded memory: a sparse source claiming a huge block ---- */

/*
 * A file of `size` bytes that holds `head` at 0 and `tail` at tail_off and
 * reads as zero elsewhere, like a sparse file. Records the longest read.
 */
struct sparse {
	const uint8_t *head;
	uint64_t head_len;
	const uint8_t *tail;
	uint64_t tail_off, tail_len;
	uint64_t size;
	size_t max_read;
};

static void copy_part(uint8_t *dst, uint64_t off, size_t n, const uint8_t *part, uint64_t at,
		      uint64_t len)
{
	uint64_t lo = off > at ? off : at, hi = off + n < at + len ? off + n : at + len;

	if (lo < hi)
		memcpy(dst + (lo - off), part + (lo - at), (size_t)(hi - lo));
}

static long sparse_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
	struct sparse *sp = ctx;
	size_t n;

	if (len > sp->max_read)
		sp->max_read = len;
	if (off >= sp->size)
		return 0;
	n = sp->size - off < len ? (size_t)(sp->size - off) : len;
	memset(buf, 0, n);
	copy_part(buf, off, n, sp->head, 0, sp->head_len);
	copy_part(buf, off, n, sp->tail, sp->tail_off, sp->tail_len);
	return (long)n;
}

/* One block of `length` bytes; its bitmap's first byte marks 8 pages. */
static void build_claim(uint64_t length, struct mr_buf *head, struct mr_buf *tail,
			struct sparse *sp)
{
	struct mr_block_layout l;
	struct mr_ram_header h;

	mr_encode_file_header(head);
	mr_encode_config(head, "pc-q35-10.0", caps_mr, 1);
	mr_encode_ram_start(head, MR_RAM_SECTION_ID, length);
	assert_int_equal(mr_layout_block(head->len, 6, length, MR_PAGES_ALIGN, &l), 0);
	h = (struct mr_ram_header){ MR_RAM_HDR_VERSION, MR_PAGE_SIZE, l.bitmap_off, l.pages_off };
	mr_encode_block_entry(head, "pc.ram", length, &h);
	mr_buf_u8(head, 0xff);
	mr_encode_ram_eos(tail, MR_RAM_SECTION_ID);
	mr_buf_u8(tail, MR_SEC_EOF);
	assert_int_equal(head->err, 0);
	assert_int_equal(tail->err, 0);
	*sp = (struct sparse){ head->data, head->len, tail->data,
			       l.next_off, tail->len, l.next_off + tail->len,
			       0 };
}

static void test_bounded_bitmaps(void **state)
{
	/* 16 TiB: a 512 MiB bitmap, of which nothing may be held or read at once. */
	const uint64_t length = 16ull << 40;
	struct mr_buf head = MR_BUF_INIT, tail = MR_BUF_INIT;
	struct mr_image *img = NULL;
	struct sparse sp;
	struct mr_src src = { sparse_pread, &sp, 0 };
	struct mr_err err;
	struct mr_block_info *b;

	(void)state;
	build_claim(length, &head, &tail, &sp);
	src.size = sp.size;
	assert_int_equal(mr_image_parse(&src, 0, MR_PARSE_COUNT_BITMAPS, &img, &err), 0);
	b = &img->blocks[0];
	assert_int_equal(b->length, length);
	assert_int_equal(b->present, 8);
	assert_null(b->bitmap);
	assert_true(sp.max_read <= 65536);

	/* Loaded later (a restore), windowed reads too; a shorter source is refused. */
	struct mr_block_info small = *b;

	small.length = small.num_pages = 0;
	small.num_pages = 128;
	small.bitmap_size = 16;
	assert_int_equal(mr_block_load_bitmap(&src, &small, true, &err), 0);
	assert_non_null(small.bitmap);
	assert_int_equal(small.present, 8);
	assert_int_equal(small.bitmap[0], 0xff);
	free(small.bitmap);
	src.size = b->hdr.bitmap_offset + 100;
	assert_int_equal(mr_block_load_bitmap(&src, b, true, &err), -EOVERFLOW);
	assert_null(b->bitmap);
	assert_string_equal(err.block, "pc.ram");
	mr_image_free(img);

	/* A bitmap bit past the block's end is found in the last window. */
	sp.max_read = 0;
	src.size = sp.size;
	mr_buf_free(&head);
	mr_buf_free(&tail);
	build_claim(length - MR_PAGE_SIZE, &head, &tail, &sp);
	src.size = sp.size;
	assert_int_equal(mr_image_parse(&src, 0, MR_PARSE_COUNT_BITMAPS, &img, &err), 0);
	mr_image_free(img);
	{
		uint8_t last = 0x80; /* page num_pages (one past the end) */
		struct sparse sp2 = sp;
		struct mr_src src2 = { sparse_pread, &sp2, sp.size };
		struct mr_block_layout l;

		assert_int_equal(mr_layout_block(0, 6, length - MR_PAGE_SIZE, MR_PAGES_ALIGN, &l),
				 0);
		/* The bitmap's last byte: bit 7 is page 8*k+7 = num_pages when length - 4 KiB. */
		sp2.tail = &last;
		sp2.tail_len = 1;
		sp2.tail_off = sp.head_len - 1 + l.bitmap_size - 1;
		assert_int_equal(mr_image_parse(&src2, 0, MR_PARSE_COUNT_BITMAPS, &img, &err),
				 -EBADMSG);
		assert_non_null(strstr(err.msg, "past the end of the block"));
	}
	mr_buf_free(&head);
	mr_buf_free(&tail);
}

/* ---- raw tails ---- */

static int tail_parse(const uint8_t *data, uint64_t len, uint32_t *id, struct mr_err *err)
{
	struct mem m = { data, len, UINT64_MAX };
	struct mr_src src = { mem_pread, &m, len };

	return mr_tail_parse(&src, id, err);
}

static void test_tail_parse(void **state)
{
	struct bopts o = default_opts();
	struct built s;
	struct mr_err err;
	uint32_t id = 0;
	uint8_t *t;
	uint64_t len;

	(void)state;
	o.ram_id = 7;
	build(&o, &s);
	len = s.b.len - s.eos_off;
	t = malloc(len + 1);
	assert_non_null(t);
	memcpy(t, s.b.data + s.eos_off, len);

	/* The tail of a full stream (parts, command, end, device, devstate, description). */
	assert_int_equal(tail_parse(t, len, &id, &err), 0);
	assert_int_equal(id, 7);

	/* Cut anywhere: refused, with an offset inside the tail. */
	for (uint64_t k = 0; k < len; k++) {
		memset(&err, 0x55, sizeof(err));
		assert_true(tail_parse(t, k, &id, &err) < 0);
		assert_true(err.off <= len);
		assert_non_null(memchr(err.msg, 0, sizeof(err.msg)));
		assert_true(err.msg[0] != 0);
	}

	/*
	 * Bytes after the stream would sit between it and the trailer. With a
	 * QEMU device section they also hide the VM description that sizes it.
	 */
	t[len] = 0;
	assert_int_equal(tail_parse(t, len + 1, &id, &err), -EPROTONOSUPPORT);
	assert_string_equal(err.section, "timer");
	{
		struct bopts o2 = default_opts();
		struct built s2;
		uint64_t len2;

		o2.device = false;
		build(&o2, &s2);
		len2 = s2.b.len - s2.eos_off;
		mr_buf_u8(&s2.b, 0);
		assert_int_equal(tail_parse(s2.b.data + s2.eos_off, len2, &id, &err), 0);
		assert_int_equal(tail_parse(s2.b.data + s2.eos_off, len2 + 1, &id, &err), -EBADMSG);
		assert_int_equal(err.off, len2);
		assert_non_null(strstr(err.msg, "1 bytes after the end of the stream"));
		built_free(&s2);
	}

	/* Not a RAM EOS and footer; RAM id 0; a footer naming another id. */
	t[7] ^= 0x01;
	assert_int_equal(tail_parse(t, len, &id, &err), -EBADMSG);
	assert_int_equal(err.off, 0);
	t[7] ^= 0x01;
	mr_put_be32(t + 9, 0);
	assert_int_equal(tail_parse(t, len, &id, &err), -EBADMSG);
	assert_int_equal(err.off, 9);
	mr_put_be32(t + 9, 7);
	t[s.part_off[0] - s.eos_off + 1 + 4 + 8 + 4] ^= 0xff; /* first PART's footer id */
	assert_int_equal(tail_parse(t, len, &id, &err), -EBADMSG);
	t[s.part_off[0] - s.eos_off + 1 + 4 + 8 + 4] ^= 0xff;

	/* Garbage after the head: an unknown section type at offset 13. */
	memset(t + MR_TAIL_HEAD_SIZE, 0x67, len - MR_TAIL_HEAD_SIZE);
	assert_int_equal(tail_parse(t, len, &id, &err), -EBADMSG);
	assert_int_equal(err.off, MR_TAIL_HEAD_SIZE);

	free(t);
	built_free(&s);
}

/* A VM description is refused before json-c builds more than 262144 values. */
static void test_vmdesc_values(void **state)
{
	const size_t max = 256u << 10;
	struct mr_buf b = MR_BUF_INIT;
	struct mr_vmdesc *d = NULL;

	(void)state;
	/* The top level, "{", ":", "[", ",", ":", "[" and one per comma: max exactly. */
	mr_buf_printf(&b, "{\"devices\": [], \"x\": [");
	for (size_t i = 0; i < max - 7; i++)
		mr_buf_printf(&b, "0,");
	mr_buf_printf(&b, "0]}");
	assert_int_equal(b.err, 0);
	assert_int_equal(mr_vmdesc_parse((const char *)b.data, b.len, &d), 0);
	mr_vmdesc_free(d);
	d = NULL;
	b.len -= 2;
	mr_buf_printf(&b, ",0]}");
	assert_int_equal(mr_vmdesc_parse((const char *)b.data, b.len, &d), -E2BIG);
	assert_null(d);

	/* Commas, colons and brackets inside strings (escaped quotes too) are not values. */
	mr_buf_reset(&b);
	mr_buf_printf(&b, "{\"devices\": [], \"s\": \"\\\"");
	for (size_t i = 0; i < max; i++)
		mr_buf_printf(&b, ",:[{");
	mr_buf_printf(&b, "\"}");
	assert_int_equal(b.err, 0);
	assert_int_equal(mr_vmdesc_parse((const char *)b.data, b.len, &d), 0);
	mr_vmdesc_free(d);
	mr_buf_free(&b);
}

static void test_find_vmdesc(void **state)
{
	struct bopts o = default_opts();
	struct built s;
	uint64_t off = 0, len = 0;

	(void)state;
	build(&o, &s);
	struct mem m = { s.b.data, s.b.len, UINT64_MAX };
	struct mr_src src = { mem_pread, &m, s.b.len };

	assert_int_equal(mr_find_vmdesc(&src, 0, s.b.len, &off, &len), 0);
	assert_int_equal(off, s.vmdesc_off);
	assert_int_equal(len, s.vmdesc_len);
	assert_int_equal(mr_find_vmdesc(&src, s.vmdesc_off, s.b.len, &off, &len), 0);
	assert_int_equal(off, s.vmdesc_off);
	/* The record must lie within [lo, end) and end exactly at `end`. */
	off = len = 1;
	assert_int_equal(mr_find_vmdesc(&src, s.vmdesc_off + 1, s.b.len, &off, &len), -ENOENT);
	assert_int_equal(mr_find_vmdesc(&src, 0, s.b.len - 1, &off, &len), -ENOENT);
	assert_int_equal(mr_find_vmdesc(&src, s.b.len, s.b.len, &off, &len), -ENOENT);
	assert_int_equal(mr_find_vmdesc(&src, 0, 3, &off, &len), -ENOENT);
	assert_int_equal(off, 1);
	assert_int_equal(len, 1);
	built_free(&s);

	/* The smallest record: 06 00000001 '{' at the very end. */
	static const uint8_t tiny[] = { 0, 0, MR_SEC_VMDESC, 0, 0, 0, 1, '{' };
	struct mem t = { tiny, sizeof(tiny), UINT64_MAX };
	struct mr_src tsrc = { mem_pread, &t, sizeof(tiny) };

	assert_int_equal(mr_find_vmdesc(&tsrc, 0, sizeof(tiny), &off, &len), 0);
	assert_int_equal(off, 2);
	assert_int_equal(len, 1);
	assert_int_equal(mr_find_vmdesc(&tsrc, 2, sizeof(tiny), &off, &len), 0);
	assert_int_equal(mr_find_vmdesc(&tsrc, 3, sizeof(tiny), &off, &len), -ENOENT);

	/* No vmdesc: nothing found. */
	o.vmdesc = false;
	o.device = false;
	build(&o, &s);
	m = (struct mem){ s.b.data, s.b.len, UINT64_MAX };
	src.size = s.b.len;
	assert_int_equal(mr_find_vmdesc(&src, 0, s.b.len, &off, &len), -ENOENT);
	built_free(&s);
}

/* ---- random mutations ---- */

/* Overridable for longer local runs: -DMUTATION_ITERS=2000000 -DMUTATION_SEED=... */
#ifndef MUTATION_ITERS
#define MUTATION_ITERS 20000
#endif
#ifndef MUTATION_SEED
#define MUTATION_SEED 0x5eed5eed12345678ull
#endif

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

struct range {
	uint64_t lo, hi;
};

static void check_invariants(const struct mr_image *img, uint64_t size)
{
	assert_true(img->ram_end <= size);
	assert_true(img->stream_end <= size);
	assert_true(img->eof_off < img->stream_end);
	assert_true(img->n_sections >= 1);
	for (size_t i = 0; i < img->n_blocks; i++) {
		const struct mr_block_info *b = &img->blocks[i];

		assert_true(b->hdr.pages_offset + b->length <= size);
		assert_true(b->hdr.pages_offset + b->length <= img->ram_end);
		assert_true(b->hdr.bitmap_offset + b->bitmap_size <= size);
		assert_true(b->present <= b->num_pages);
		assert_int_equal(b->hdr.pages_offset % MR_PAGE_SIZE, 0);
		assert_true(b->hdr.version <= 1);
		if (b->bitmap)
			assert_int_equal(mr_bitmap_count(b->bitmap, b->num_pages), b->present);
	}
	for (size_t i = 0; i < img->n_sections; i++)
		assert_true(img->sections[i].off + img->sections[i].size <= img->eof_off);
	if (img->has_devstate)
		assert_true(img->devstate_off + img->devstate_len <= img->eof_off);
	if (img->has_vmdesc)
		assert_int_equal(img->vmdesc_off + 5 + img->vmdesc_len, img->stream_end);
}

static void test_mutations(void **state)
{
	static const uint8_t interesting[] = { 0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07,
					       0x08, 0x10, 0x7e, 0x7f, 0x80, 0xfe, 0xff };
	struct bopts o = default_opts();
	struct built s;
	uint64_t seed = MUTATION_SEED;
	unsigned counts[5] = { 0 };

	(void)state;
	o.blocks[0].pages = 3;
	o.devstate_len = 16;
	build(&o, &s);

	/* Mutate where the structure is: headers, bitmaps, the device tail. */
	struct range ranges[MAX_BLOCKS + 1];
	size_t nr = 0;
	uint64_t total = 0;

	ranges[nr++] = (struct range){ 0, s.l[0].bitmap_off + s.l[0].bitmap_size };
	for (size_t k = 1; k < o.n_blocks; k++)
		ranges[nr++] =
			(struct range){ s.l[k].entry_off, s.l[k].bitmap_off + s.l[k].bitmap_size };
	ranges[nr++] = (struct range){ s.eos_off, s.b.len };
	for (size_t i = 0; i < nr; i++)
		total += ranges[i].hi - ranges[i].lo;

	/* An exact-size copy, so that the sanitizers see any stray access. */
	uint8_t *data = malloc(s.b.len);
	struct {
		uint64_t off;
		uint8_t v;
	} undo[64];

	assert_non_null(data);
	memcpy(data, s.b.data, s.b.len);
	for (long iter = 0; iter < MUTATION_ITERS; iter++) {
		unsigned n_mut = 1 + (unsigned)(rng_next(&seed) % 4), nu = 0;
		uint64_t len = s.b.len;

		for (unsigned j = 0; j < n_mut; j++) {
			uint64_t pick = rng_next(&seed) % total, off = 0;
			unsigned width = 1;

			for (size_t i = 0; i < nr; i++) {
				if (pick < ranges[i].hi - ranges[i].lo) {
					off = ranges[i].lo + pick;
					break;
				}
				pick -= ranges[i].hi - ranges[i].lo;
			}
			switch (rng_next(&seed) % 6) {
			case 0: width = 1; break;
			case 1: width = 4; break;
			default: width = 1 + (unsigned)(rng_next(&seed) % 8); break;
			}
			for (unsigned w = 0; w < width && off + w < s.b.len; w++) {
				uint64_t r = rng_next(&seed);

				undo[nu].off = off + w;
				undo[nu].v = data[off + w];
				nu++;
				switch (r % 4) {
				case 0: data[off + w] ^= (uint8_t)(1u << ((r >> 8) % 8)); break;
				case 1:
					data[off + w] = interesting[(r >> 8) % sizeof(interesting)];
					break;
				default: data[off + w] = (uint8_t)(r >> 16); break;
				}
			}
		}
		if (rng_next(&seed) % 10 == 0)
			len = rng_next(&seed) % (s.b.len + 1);

		struct mem m = { data, len, UINT64_MAX };
		struct mr_src src = { mem_pread, &m, len };
		struct mr_image *img = NULL;
		struct mr_err err;
		int r = mr_image_parse(&src, 0, iter % 3 ? 0 : MR_PARSE_NO_BITMAPS, &img, &err);

		switch (r) {
		case 0:
			counts[0]++;
			check_invariants(img, len);
			mr_image_free(img);
			break;
		case -EBADMSG: counts[1]++; break;
		case -EPROTONOSUPPORT: counts[2]++; break;
		case -ENODATA: counts[3]++; break;
		case -EOVERFLOW: counts[4]++; break;
		default:
			print_error("iteration %ld: unexpected %d (%s at 0x%llx)\n", iter, r,
				    err.msg, (unsigned long long)err.off);
			fail();
		}
		if (r) {
			assert_null(img);
			assert_true(err.off <= len || err.off <= s.b.len);
			assert_non_null(memchr(err.msg, 0, sizeof(err.msg)));
		}
		while (nu--)
			data[undo[nu].off] = undo[nu].v;
	}
	print_message("mutations: %u ok, %u EBADMSG, %u EPROTONOSUPPORT, %u ENODATA, "
		      "%u EOVERFLOW\n",
		      counts[0], counts[1], counts[2], counts[3], counts[4]);
	/* The mutator must reach both outcomes to mean anything. */
	assert_true(counts[0] > 100);
	assert_true(counts[1] > 100);
	free(data);
	built_free(&s);
}

int main(void)
{
	const struct CMUnitTest reader_tests[] = {
		cmocka_unit_test(test_parse_full),   cmocka_unit_test(test_parse_variants),
		cmocka_unit_test(test_hdr_version0), cmocka_unit_test(test_bad_magic_version),
		cmocka_unit_test(test_truncation),   cmocka_unit_test(test_ram_header_values),
		cmocka_unit_test(test_bitmap_tail),  cmocka_unit_test(test_mem_size),
		cmocka_unit_test(test_block_names),  cmocka_unit_test(test_config),
		cmocka_unit_test(test_caps_twice),   cmocka_unit_test(test_sections),
		cmocka_unit_test(test_ram_flags),    cmocka_unit_test(test_device_sections),
		cmocka_unit_test(test_pread_error),  cmocka_unit_test(test_find_vmdesc),
		cmocka_unit_test(test_mutations),    cmocka_unit_test(test_bounded_bitmaps),
		cmocka_unit_test(test_tail_parse),   cmocka_unit_test(test_vmdesc_values),
	};

	return cmocka_run_group_tests_name("reader", reader_tests, NULL, NULL);
}
