// SPDX-License-Identifier: MIT
/*
 * Classic stream decoder/encoder (format/classic.h) and the resume record
 * (format/resume.h): QEMU 10 fixtures from tests/qemu/make-classic.py decoded
 * and re-encoded byte for byte, a synthetic stream truncated at every byte,
 * hostile records, and the resume record's strict decoding.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "be.h"
#include "classic.h"
#include "resume.h"

/* ---- sources and sinks ---- */

struct memsrc {
	const uint8_t *p;
	size_t len, pos;
	size_t chunk; /* bytes per read, 0 = as many as asked */
	int fail_at;  /* return -EIO once pos reaches this (if > 0) */
};

static long mem_read(void *ctx, void *buf, size_t len)
{
	struct memsrc *s = ctx;

	if (s->fail_at > 0 && s->pos >= (size_t)s->fail_at)
		return -EIO;
	if (s->chunk && len > s->chunk)
		len = s->chunk;
	if (len > s->len - s->pos)
		len = s->len - s->pos;
	memcpy(buf, s->p + s->pos, len);
	s->pos += len;
	return (long)len;
}

/* Blocks named "ram0"/"ram1" are shared, the others get memory. */
struct alloc_ctx {
	int ret;	 /* returned by the callback */
	bool all_shared; /* give no block memory */
	uint8_t *mem[64];
	size_t n;
};

static int alloc_blocks(void *ctx, struct mr_classic_block *b, size_t n)
{
	struct alloc_ctx *a = ctx;

	if (a->ret)
		return a->ret;
	for (size_t i = 0; i < n; i++) {
		if (a->all_shared || !b[i].length || !strcmp(b[i].name, "ram0") ||
		    !strcmp(b[i].name, "ram1"))
			continue;
		assert_true(a->n < 64);
		b[i].mem = a->mem[a->n++] = calloc(1, b[i].length);
		assert_non_null(b[i].mem);
	}
	return 0;
}

static void alloc_free(struct alloc_ctx *a)
{
	for (size_t i = 0; i < a->n; i++)
		free(a->mem[i]);
	a->n = 0;
}

static int decode_mem(const uint8_t *p, size_t len, size_t chunk, struct alloc_ctx *a,
		      uint64_t tail_max, struct mr_classic **ret, struct mr_err *err)
{
	struct memsrc s = { .p = p, .len = len, .chunk = chunk };
	struct mr_classic_ops ops = { .read = mem_read,
				      .blocks = alloc_blocks,
				      .ctx = &s,
				      .blocks_ctx = a,
				      .tail_max = tail_max };

	memset(err, 0, sizeof(*err));
	return mr_classic_decode(&ops, ret, err);
}

static uint8_t *read_file(const char *name, size_t *len)
{
	const char *dir = getenv("CLASSIC_DATA");
	char path[4096];
	uint8_t *p;
	FILE *f;
	long n;

	snprintf(path, sizeof(path), "%s/%s", dir ? dir : "tests/data/classic", name);
	f = fopen(path, "rb");
	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	assert_true(n > 0);
	rewind(f);
	p = malloc((size_t)n + 1);
	assert_non_null(p);
	assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
	p[n] = '\0'; /* for the JSON files; not counted in *len */
	fclose(f);
	*len = (size_t)n;
	return p;
}

/* ---- a synthetic stream, built record by record ---- */

struct syn_opt {
	const char *caps[4];
	unsigned n_caps;	/* 0: ["x-ignore-shared"] */
	bool no_caps;		/* no capabilities subsection at all */
	bool zero_caps;		/* a capabilities subsection listing none */
	bool uuid;		/* a configuration/uuid subsection */
	bool pagebits13;	/* configuration/target-page-bits 13 */
	int head_cmd;		/* > 0: COMMAND with this id before RAM START */
	uint16_t head_len;	/* its length, 0: 4 */
	unsigned n_zero_blocks; /* extra blocks of length 0 before ram0 */
	bool early_full;	/* a device SECTION_FULL before RAM START */
	uint32_t ram_version;	/* 0: 4 */
	int64_t memsize_delta;
	uint64_t bios_len; /* 0: 16 KiB */
	const char *dup;   /* list this block name twice */
	bool extra;	   /* one more page record at the end of the PART: */
	uint64_t extra_word;
	const char *extra_name; /* NULL: none (CONTINUE expected in the word) */
	uint32_t part_id;	/* 0: RAM's */
	int mid_cmd;		/* 0: SWITCHOVER_START, -1: none, else that id */
	bool no_vmdesc;
	uint8_t footer_type; /* 0: 0x7e */
	bool eos_extra;	     /* EOS word with ZERO also set, ending the PART */
	bool end_page;	     /* RAM END re-sends pc.bios page 2 (a running source) */
};

struct syn {
	struct mr_buf b;
	size_t mark[64];
	const char *label[64];
	size_t n;
	size_t tail_off;
};

static void mark(struct syn *s, const char *label)
{
	assert_true(s->n < 64);
	s->mark[s->n] = s->b.len;
	s->label[s->n++] = label;
}

static size_t at(const struct syn *s, const char *label)
{
	for (size_t i = 0; i < s->n; i++)
		if (!strcmp(s->label[i], label))
			return s->mark[i];
	fail_msg("no mark %s", label);
	return 0;
}

#define SYN_ID	    7u
#define BIOS_GPA    0xfffc0000ull
#define SYN_MACHINE "pc-q35-10.0"

static uint8_t syn_byte(const char *name, uint64_t off);

/* A page record of block `blk`; `name` is NULL for a CONTINUE record. */
static void page_word(struct syn *s, const char *label, uint64_t off, uint64_t flags,
		      const char *name, const char *blk)
{
	mark(s, label);
	mr_buf_be64(&s->b, off | flags | (name ? 0 : MR_RAM_CONTINUE));
	if (name)
		mr_buf_str8(&s->b, name);
	if (flags & MR_RAM_ZERO) {
		mr_buf_u8(&s->b, 0);
	} else {
		uint8_t page[4096];

		memset(page, syn_byte(blk, off), sizeof(page));
		mr_buf_put(&s->b, page, sizeof(page));
	}
}

/* Page contents the synthetic stream sends, for the checks and the encoder. */
static uint8_t syn_byte(const char *name, uint64_t off)
{
	return (uint8_t)(0x11 + off / 4096 + name[0]);
}

static const char syn_tail[] = "\x04\x00\x00\x00\x00\x05timer\x00\x00\x00\x00\x00\x00\x00\x02"
			       "ABCDEFGH\x7e\x00\x00\x00\x00"
			       "\x00"
			       "\x06\x00\x00\x00\x02{}";

static void build(struct syn *s, const struct syn_opt *o)
{
	uint64_t bios_len = o->bios_len ? o->bios_len : 0x4000;
	uint64_t total = 0x10000 + bios_len + 0x1000 + (uint64_t)o->memsize_delta;

	memset(s, 0, sizeof(*s));
	mark(s, "header");
	mr_encode_file_header(&s->b);
	mark(s, "config");
	mr_buf_u8(&s->b, MR_SEC_CONFIG);
	mr_buf_be32(&s->b, sizeof(SYN_MACHINE) - 1);
	mr_buf_put(&s->b, SYN_MACHINE, sizeof(SYN_MACHINE) - 1);
	if (o->pagebits13) {
		mark(s, "pagebits");
		mr_buf_u8(&s->b, MR_SEC_SUBSECTION);
		mr_buf_str8(&s->b, MR_PAGEBITS_SUBSEC);
		mr_buf_be32(&s->b, 1);
		mr_buf_be32(&s->b, 13);
	}
	if (!o->no_caps) {
		mark(s, "caps");
		mr_buf_u8(&s->b, MR_SEC_SUBSECTION);
		mr_buf_str8(&s->b, MR_CAP_SUBSECTION);
		mr_buf_be32(&s->b, 1);
		unsigned n = o->zero_caps ? 0 : o->n_caps ? o->n_caps : 1;

		mr_buf_be32(&s->b, n);
		for (unsigned i = 0; i < n; i++)
			mr_buf_str8(&s->b, o->n_caps && i < 4 && o->caps[i] ? o->caps[i]
									    : MR_CAP_IGNORE_SHARED);
	}
	if (o->uuid) {
		mark(s, "uuid");
		mr_buf_u8(&s->b, MR_SEC_SUBSECTION);
		mr_buf_str8(&s->b, MR_UUID_SUBSEC);
		mr_buf_be32(&s->b, 1);
		mr_buf_put(&s->b, "0123456789abcdef", 16);
	}
	if (o->head_cmd > 0) {
		mark(s, "head");
		mr_buf_u8(&s->b, MR_SEC_COMMAND);
		mr_buf_be16(&s->b, (uint16_t)o->head_cmd);
		mr_buf_be16(&s->b, o->head_len ? o->head_len : 4);
		for (unsigned i = 0; i < (o->head_len ? o->head_len : 4u); i++)
			mr_buf_u8(&s->b, i == 3);
	}
	if (o->early_full) {
		mark(s, "early");
		mr_encode_section_full_hdr(&s->b, MR_SEC_FULL, 3, "virtio-mem-early", 0, 1);
	}
	mark(s, "start");
	mr_encode_section_full_hdr(&s->b, MR_SEC_START, SYN_ID, MR_RAM_IDSTR, 0,
				   o->ram_version ? o->ram_version : MR_RAM_VERSION);
	mark(s, "memsize");
	mr_buf_be64(&s->b, total | MR_RAM_MEM_SIZE);
	for (unsigned i = 0; i < o->n_zero_blocks; i++) {
		char name[16];

		snprintf(name, sizeof(name), "z%u", i);
		if (i == MR_CLASSIC_BLOCKS_MAX)
			mark(s, "entry-over");
		mr_buf_str8(&s->b, name);
		mr_buf_be64(&s->b, 0);
		mr_buf_be64(&s->b, 0);
	}
	mark(s, "entry-ram0");
	mr_buf_str8(&s->b, "ram0");
	mr_buf_be64(&s->b, 0x10000);
	mr_buf_be64(&s->b, 0);
	mark(s, "entry-bios");
	mr_buf_str8(&s->b, o->dup ? o->dup : "pc.bios");
	mr_buf_be64(&s->b, bios_len);
	mr_buf_be64(&s->b, BIOS_GPA);
	mark(s, "entry-rsdp");
	mr_buf_str8(&s->b, "rsdp");
	mr_buf_be64(&s->b, 0x1000);
	mr_buf_be64(&s->b, 0);
	mark(s, "start-eos");
	mr_buf_be64(&s->b, MR_RAM_EOS);
	mark(s, "start-footer");
	mr_encode_footer(&s->b, SYN_ID);
	mark(s, "part");
	mr_buf_u8(&s->b, MR_SEC_PART);
	mr_buf_be32(&s->b, o->part_id ? o->part_id : SYN_ID);
	page_word(s, "pg0", 0, MR_RAM_PAGE, "pc.bios", "pc.bios");
	page_word(s, "pg1", 0x1000, MR_RAM_ZERO, NULL, "pc.bios");
	page_word(s, "pg2", 0x2000, MR_RAM_PAGE, NULL, "pc.bios");
	page_word(s, "pg3", 0x3000, MR_RAM_ZERO, NULL, "pc.bios");
	page_word(s, "pg4", 0, MR_RAM_PAGE, "rsdp", "rsdp");
	if (o->extra) {
		mark(s, "extra");
		mr_buf_be64(&s->b, o->extra_word);
		if (o->extra_name)
			mr_buf_str8(&s->b, o->extra_name);
		mr_buf_u8(&s->b, 0);
	}
	mark(s, "part-eos");
	mr_buf_be64(&s->b, MR_RAM_EOS | (o->eos_extra ? MR_RAM_ZERO : 0));
	mark(s, "part-footer");
	mr_buf_u8(&s->b, o->footer_type ? o->footer_type : MR_SEC_FOOTER);
	mr_buf_be32(&s->b, SYN_ID);
	if (o->mid_cmd >= 0) {
		mark(s, "cmd");
		mr_buf_u8(&s->b, MR_SEC_COMMAND);
		mr_buf_be16(&s->b, o->mid_cmd ? (uint16_t)o->mid_cmd : MR_CMD_SWITCHOVER_START);
		mr_buf_be16(&s->b, 0);
	}
	mark(s, "end");
	mr_buf_u8(&s->b, MR_SEC_END);
	mr_buf_be32(&s->b, SYN_ID);
	if (o->end_page) {
		mark(s, "end-page");
		mr_buf_be64(&s->b, 0x2000 | MR_RAM_PAGE);
		mr_buf_str8(&s->b, "pc.bios");
		for (int i = 0; i < 4096; i++)
			mr_buf_u8(&s->b, 0xee);
	}
	mark(s, "end-eos");
	mr_buf_be64(&s->b, MR_RAM_EOS);
	mark(s, "end-footer");
	mr_encode_footer(&s->b, SYN_ID);
	mark(s, "tail");
	s->tail_off = s->b.len;
	mr_buf_put(&s->b, syn_tail, sizeof(syn_tail) - 1 - (o->no_vmdesc ? 7 : 0));
	mark(s, "eof");
	assert_int_equal(s->b.err, 0);
}

/* Decodes s; returns the code, err filled, result freed. */
static int try_decode(struct syn *s, struct mr_err *err)
{
	struct alloc_ctx a = { 0 };
	struct mr_classic *c = NULL;
	int r = decode_mem(s->b.data, s->b.len, 0, &a, 0, &c, err);

	mr_classic_free(c);
	alloc_free(&a);
	return r;
}

static void expect(const struct syn_opt *o, int code, const char *label, size_t delta,
		   const char *block, const char *msg_part)
{
	struct syn s;
	struct mr_err err;
	int r;

	build(&s, o);
	r = try_decode(&s, &err);
	if (!code && !r) {
		mr_buf_free(&s.b);
		return;
	}
	if (r != code || err.off != at(&s, label) + delta || (block && strcmp(err.block, block)) ||
	    (msg_part && !strstr(err.msg, msg_part)))
		fail_msg("got %d at 0x%llx block \"%s\" msg \"%s\"; want %d at %s+%zu (0x%zx)", r,
			 (unsigned long long)err.off, err.block, err.msg, code, label, delta,
			 at(&s, label) + delta);
	mr_buf_free(&s.b);
}

/* ---- tests: the synthetic stream ---- */

static void test_syn_decode(void **state)
{
	struct alloc_ctx a = { 0 };
	struct mr_classic *c = NULL;
	struct mr_classic_block *b;
	struct mr_err err;
	struct syn s;

	(void)state;
	build(&s, &(struct syn_opt){ 0 });
	/* Odd read sizes: records straddle every buffer refill. */
	for (size_t chunk = 0; chunk < 8; chunk++) {
		assert_int_equal(decode_mem(s.b.data, s.b.len, chunk, &a, 0, &c, &err), 0);
		assert_string_equal(c->machine, SYN_MACHINE);
		assert_int_equal(c->n_caps, 1);
		assert_string_equal(c->caps[0], MR_CAP_IGNORE_SHARED);
		assert_int_equal(c->ram_id, SYN_ID);
		assert_int_equal(c->ram_total, 0x15000);
		assert_int_equal(c->n_blocks, 3);
		assert_int_equal(c->ram_parts, 1);
		assert_true(c->switchover_start);
		assert_int_equal(c->head_len, 0);
		b = mr_classic_block(c, "ram0");
		assert_non_null(b);
		assert_null(b->mem);
		assert_null(b->got);
		b = mr_classic_block(c, "pc.bios");
		assert_int_equal(b->gpa, BIOS_GPA);
		assert_int_equal(b->length, 0x4000);
		assert_int_equal(b->pages, 2);
		assert_int_equal(b->zero_pages, 2);
		assert_int_equal(b->got[0], 0xf);
		for (uint64_t off = 0; off < 0x4000; off += 4096) {
			uint8_t want =
				off == 0x1000 || off == 0x3000 ? 0 : syn_byte("pc.bios", off);

			assert_int_equal(b->mem[off], want);
			assert_int_equal(b->mem[off + 4095], want);
		}
		b = mr_classic_block(c, "rsdp");
		assert_int_equal(b->mem[100], syn_byte("rsdp", 0));
		assert_int_equal(c->tail_off, s.tail_off);
		assert_int_equal(c->tail_len, sizeof(syn_tail) - 1);
		assert_memory_equal(c->tail, syn_tail, c->tail_len);
		mr_classic_free(c);
		alloc_free(&a);
	}
	mr_buf_free(&s.b);
}

/* Every prefix of the stream is -ENODATA at the record it cuts. */
static void test_truncation(void **state)
{
	struct syn s;

	(void)state;
	build(&s, &(struct syn_opt){ .head_cmd = MR_CMD_PING });
	for (size_t t = 0; t < s.b.len; t++) {
		struct alloc_ctx a = { 0 };
		struct mr_classic *c = NULL;
		struct mr_err err;
		size_t rec = 0;
		int r;

		for (size_t i = 0; i < s.n; i++)
			if (s.mark[i] <= t)
				rec = s.mark[i];
		/* The header's fields are all in one record at 0; the tail is reported where it
		 * ends. */
		if (t >= s.tail_off)
			rec = t;
		r = decode_mem(s.b.data, t, 0, &a, 0, &c, &err);
		if (r != -ENODATA || err.off != rec)
			fail_msg("cut at %zu: %d at %llu (%s), want -ENODATA at %zu", t, r,
				 (unsigned long long)err.off, err.msg, rec);
		alloc_free(&a);
	}
	mr_buf_free(&s.b);
}

static void test_config_rejects(void **state)
{
	(void)state;
	struct syn s;
	struct mr_err err;

	build(&s, &(struct syn_opt){ 0 });
	s.b.data[0] ^= 1;
	assert_int_equal(try_decode(&s, &err), -EBADMSG);
	assert_int_equal(err.off, 0);
	s.b.data[0] ^= 1;
	s.b.data[7] = 2;
	assert_int_equal(try_decode(&s, &err), -EPROTONOSUPPORT);
	assert_int_equal(err.off, 4);
	s.b.data[7] = 3;
	s.b.data[8] = MR_SEC_START;
	assert_int_equal(try_decode(&s, &err), -EBADMSG);
	assert_int_equal(err.off, 8);
	s.b.data[8] = MR_SEC_CONFIG;
	mr_put_be32(s.b.data + 9, 0);
	assert_int_equal(try_decode(&s, &err), -EBADMSG);
	mr_put_be32(s.b.data + 9, 256);
	assert_int_equal(try_decode(&s, &err), -EBADMSG);
	mr_buf_free(&s.b);

	expect(&(struct syn_opt){ .no_caps = true }, -EPROTONOSUPPORT, "start", 0, "",
	       "x-ignore-shared is off");
	expect(&(struct syn_opt){ .caps = { "mapped-ram" }, .n_caps = 1 }, -EPROTONOSUPPORT, "caps",
	       0, "", "mapped-ram");
	expect(&(struct syn_opt){ .caps = { "x-ignore-shared", "zero-blocks" }, .n_caps = 2 },
	       -EPROTONOSUPPORT, "caps", 0, "", "zero-blocks");
	expect(&(struct syn_opt){ .caps = { "validate-uuid" }, .n_caps = 1 }, -EPROTONOSUPPORT,
	       "caps", 0, "", "validate-uuid");
	expect(&(struct syn_opt){ .caps = { "" }, .n_caps = 1 }, -EBADMSG, "caps", 0, "",
	       "empty capability");
	expect(&(struct syn_opt){ .zero_caps = true }, -EPROTONOSUPPORT, "caps", 0, "",
	       "x-ignore-shared is not listed");
	expect(&(struct syn_opt){ .n_caps = 65 }, -EOVERFLOW, "caps", 0, "", "65 capabilities");
	expect(&(struct syn_opt){ .uuid = true }, -EPROTONOSUPPORT, "uuid", 0, "",
	       "configuration/uuid");
	expect(&(struct syn_opt){ .pagebits13 = true }, -EPROTONOSUPPORT, "pagebits", 0, "",
	       "page bits 13");
}

static void test_before_ram_rejects(void **state)
{
	struct alloc_ctx a = { 0 };
	struct mr_classic *c = NULL;
	struct mr_err err;
	struct syn s;

	(void)state;
	expect(&(struct syn_opt){ .head_cmd = MR_CMD_POSTCOPY_ADVISE }, -EPROTONOSUPPORT, "head", 0,
	       "", "postcopy-ram");
	expect(&(struct syn_opt){ .head_cmd = 10 }, -EPROTONOSUPPORT, "head", 0, "", "command 10");
	expect(&(struct syn_opt){ .head_cmd = MR_CMD_PING, .head_len = MR_CLASSIC_HEAD_MAX },
	       -EFBIG, "head", 0, "", "exceed");
	expect(&(struct syn_opt){ .early_full = true }, -EPROTONOSUPPORT, "early", 0, "",
	       "virtio-mem-early");
	expect(&(struct syn_opt){ .ram_version = 5 }, -EPROTONOSUPPORT, "start", 0, "",
	       "version 5");

	/* Harmless commands before RAM are kept verbatim. */
	build(&s, &(struct syn_opt){ .head_cmd = MR_CMD_PING });
	assert_int_equal(decode_mem(s.b.data, s.b.len, 0, &a, 0, &c, &err), 0);
	assert_int_equal(c->head_len, 9);
	assert_memory_equal(c->head, s.b.data + at(&s, "head"), 9);
	mr_classic_free(c);
	alloc_free(&a);
	mr_buf_free(&s.b);
}

static void test_block_list_rejects(void **state)
{
	(void)state;
	/* MEM_SIZE smaller than the blocks: the block that overruns it is named. */
	expect(&(struct syn_opt){ .memsize_delta = -0x2000 }, -EBADMSG, "entry-bios", 0, "pc.bios",
	       "exceeds");
	/* Smaller by exactly the last block: its entry is read as a RAM record. */
	expect(&(struct syn_opt){ .memsize_delta = -0x1000 }, -EBADMSG, "entry-rsdp", 0, "",
	       "bad RAM flags");
	/* Larger: the EOS word is read as a block entry with an empty name. */
	expect(&(struct syn_opt){ .memsize_delta = 0x1000 }, -EBADMSG, "start-eos", 0, "",
	       "empty block name");
	expect(&(struct syn_opt){ .bios_len = 0x4800, .memsize_delta = -0x800 }, -EBADMSG,
	       "entry-bios", 0, "pc.bios", "multiple of 4096");
	expect(&(struct syn_opt){ .dup = "ram0" }, -EBADMSG, "entry-bios", 0, "ram0", "twice");
	/* The list is bounded even when lengths of 0 never use up MEM_SIZE. */
	expect(&(struct syn_opt){ .n_zero_blocks = MR_CLASSIC_BLOCKS_MAX + 1 }, -EOVERFLOW,
	       "entry-over", 0, "", "more than 4096 blocks");
	expect(&(struct syn_opt){ .n_zero_blocks = MR_CLASSIC_BLOCKS_MAX - 3 }, 0, "eof", 0, NULL,
	       NULL);
	expect(&(struct syn_opt){ .dup = "a\tb" }, -EBADMSG, "entry-bios", 0, "", "control byte");
}

static void test_page_rejects(void **state)
{
	(void)state;
	static const struct {
		uint64_t flags;
		const char *name;
	} bad[] = {
		{ MR_RAM_XBZRLE, "XBZRLE" },
		{ 0x100, "COMPRESS_PAGE" },
		{ MR_RAM_HOOK, "HOOK" },
		{ MR_RAM_MULTIFD_FLUSH, "MULTIFD_FLUSH" },
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect(&(struct syn_opt){ .extra = true, .extra_word = bad[i].flags },
		       -EPROTONOSUPPORT, "extra", 0, "", bad[i].name);
	expect(&(struct syn_opt){ .extra = true, .extra_word = 0x400 }, -EBADMSG, "extra", 0, "",
	       "bad RAM flags");
	expect(&(struct syn_opt){ .extra = true, .extra_word = 0x001 }, -EBADMSG, "extra", 0, "",
	       "bad RAM flags");
	expect(&(struct syn_opt){ .extra = true, .extra_word = MR_RAM_ZERO | MR_RAM_PAGE },
	       -EBADMSG, "extra", 0, "", "bad RAM flags");
	expect(&(struct syn_opt){ .extra = true, .extra_word = MR_RAM_MEM_SIZE | 0x1000 }, -EBADMSG,
	       "extra", 0, "", "MEM_SIZE");
	expect(&(struct syn_opt){ .eos_extra = true }, -EBADMSG, "part-eos", 0, "", "EOS");
	/* A page for a block the MEM_SIZE list does not have. */
	expect(&(struct syn_opt){ .extra = true, .extra_word = MR_RAM_ZERO, .extra_name = "nope" },
	       -EBADMSG, "extra", 0, "nope", "not in the MEM_SIZE list");
	/* A page for a shared block (no memory given). */
	expect(&(struct syn_opt){ .extra = true, .extra_word = MR_RAM_ZERO, .extra_name = "ram0" },
	       -EBADMSG, "extra", 0, "ram0", "without memory");
	/* Past the end of the block (CONTINUE: rsdp, 4 KiB). */
	expect(&(struct syn_opt){ .extra = true,
				  .extra_word = 0x1000 | MR_RAM_ZERO | MR_RAM_CONTINUE },
	       -EOVERFLOW, "extra", 0, "rsdp", "outside the block");
	expect(&(struct syn_opt){ .part_id = 9 }, -EBADMSG, "part", 0, "", "not RAM's");
	expect(&(struct syn_opt){ .footer_type = 0x7f }, -EBADMSG, "part-footer", 0, "",
	       "bad footer");
	expect(&(struct syn_opt){ .mid_cmd = MR_CMD_PING }, -EPROTONOSUPPORT, "cmd", 0, "",
	       "command 2");
	expect(&(struct syn_opt){ .no_vmdesc = true }, -ENODATA, "eof", 0, "", "VMDESCRIPTION");
}

/* A running source re-sends dirty pages, also in RAM END: the last copy wins. */
static void test_page_resent(void **state)
{
	struct alloc_ctx a = { 0 };
	struct mr_classic *c = NULL;
	struct mr_classic_block *b;
	struct mr_err err;
	struct syn s;

	(void)state;
	build(&s, &(struct syn_opt){ .end_page = true });
	assert_int_equal(decode_mem(s.b.data, s.b.len, 0, &a, 0, &c, &err), 0);
	b = mr_classic_block(c, "pc.bios");
	assert_int_equal(b->pages, 3);
	assert_int_equal(b->mem[0x2000], 0xee);
	assert_int_equal(b->mem[0x2fff], 0xee);
	assert_int_equal(b->mem[0], syn_byte("pc.bios", 0));
	assert_int_equal(b->got[0], 0xf);
	mr_classic_free(c);
	alloc_free(&a);
	mr_buf_free(&s.b);
}

static void test_continue_first(void **state)
{
	struct syn s;
	struct mr_err err;

	(void)state;
	build(&s, &(struct syn_opt){ 0 });
	/* Make the first page record a CONTINUE one: the name becomes page data. */
	s.b.data[at(&s, "pg0") + 7] |= MR_RAM_CONTINUE;
	assert_int_equal(try_decode(&s, &err), -EBADMSG);
	assert_int_equal(err.off, at(&s, "pg0"));
	assert_non_null(strstr(err.msg, "CONTINUE"));
	s.b.data[at(&s, "pg0") + 7] &= ~MR_RAM_CONTINUE;
	/* A zero page record whose fill byte is not 0 (QEMU >= 8.2 refuses it too). */
	s.b.data[at(&s, "pg1") + 8] = 0xff;
	assert_int_equal(try_decode(&s, &err), -EBADMSG);
	assert_int_equal(err.off, at(&s, "pg1"));
	assert_string_equal(err.block, "pc.bios");
	assert_non_null(strstr(err.msg, "fill byte 0xff"));
	mr_buf_free(&s.b);
}

static int fail_blocks(void *ctx, struct mr_classic_block *b, size_t n)
{
	(void)ctx;
	(void)b;
	(void)n;
	return -EMFILE;
}

static void test_callbacks_and_caps(void **state)
{
	struct alloc_ctx a = { 0 };
	struct mr_classic *c = NULL;
	struct mr_err err;
	struct syn s;

	(void)state;
	build(&s, &(struct syn_opt){ 0 });
	/* The read error is passed on, at the offset reached. */
	struct memsrc src = { .p = s.b.data, .len = s.b.len, .chunk = 16, .fail_at = 96 };
	struct mr_classic_ops ops = { .read = mem_read, .ctx = &src };

	assert_int_equal(mr_classic_decode(&ops, &c, &err), -EIO);
	assert_int_equal(err.off, 96);
	/* The block callback's error is passed on. */
	src = (struct memsrc){ .p = s.b.data, .len = s.b.len };
	ops.blocks = fail_blocks;
	assert_int_equal(mr_classic_decode(&ops, &c, &err), -EMFILE);
	assert_int_equal(err.off, at(&s, "memsize"));
	/* Without a callback no block has memory: the first page is refused. */
	src = (struct memsrc){ .p = s.b.data, .len = s.b.len };
	ops.blocks = NULL;
	assert_int_equal(mr_classic_decode(&ops, &c, &err), -EBADMSG);
	assert_string_equal(err.block, "pc.bios");
	/* The tail cap. */
	assert_int_equal(decode_mem(s.b.data, s.b.len, 0, &a, 10, &c, &err), -EFBIG);
	assert_int_equal(err.off, s.tail_off);
	alloc_free(&a);
	assert_int_equal(decode_mem(s.b.data, s.b.len, 0, &a, sizeof(syn_tail) - 1, &c, &err), 0);
	mr_classic_free(c);
	alloc_free(&a);
	mr_buf_free(&s.b);
}

/* ---- encoder ---- */

static void syn_blocks(struct mr_classic_enc_block *b, uint8_t *bios, uint8_t *rsdp)
{
	memset(bios, 0, 0x4000);
	memset(bios, syn_byte("pc.bios", 0), 0x1000);
	memset(bios + 0x2000, syn_byte("pc.bios", 0x2000), 0x1000);
	memset(rsdp, syn_byte("rsdp", 0), 0x1000);
	b[0] = (struct mr_classic_enc_block){ .name = "ram0", .length = 0x10000 };
	b[1] = (struct mr_classic_enc_block){
		.name = "pc.bios", .length = 0x4000, .gpa = BIOS_GPA, .data = bios
	};
	b[2] = (struct mr_classic_enc_block){ .name = "rsdp", .length = 0x1000, .data = rsdp };
}

static void test_encode_syn(void **state)
{
	static uint8_t bios[0x4000], rsdp[0x1000];
	struct mr_classic_enc_block blk[3];
	struct mr_buf out = MR_BUF_INIT;
	struct mr_err err;
	struct syn s;
	uint64_t map = 0xf; /* every bios page present */

	(void)state;
	syn_blocks(blk, bios, rsdp);
	struct mr_classic_enc e = { .machine = SYN_MACHINE,
				    .ram_id = SYN_ID,
				    .blocks = blk,
				    .n_blocks = 3,
				    .switchover_start = true,
				    .tail = (const uint8_t *)syn_tail,
				    .tail_len = sizeof(syn_tail) - 1,
				    .write = mr_classic_write_buf,
				    .ctx = &out };

	build(&s, &(struct syn_opt){ 0 });
	assert_int_equal(mr_classic_encode(&e, &err), 0);
	assert_int_equal(out.len, s.b.len);
	assert_memory_equal(out.data, s.b.data, s.b.len);

	/* A clear bit sends a zero page whatever the data holds (stale bytes). */
	blk[1].bitmap = &map;
	memset(bios + 0x1000, 0x5a, 0x1000);
	map = 0xd;
	mr_buf_reset(&out);
	assert_int_equal(mr_classic_encode(&e, &err), 0);
	assert_memory_equal(out.data, s.b.data, s.b.len);
	/* Without the bitmap the stale page is sent as data. */
	blk[1].bitmap = NULL;
	mr_buf_reset(&out);
	assert_int_equal(mr_classic_encode(&e, &err), 0);
	assert_int_equal(out.len, s.b.len + 4095);
	mr_buf_free(&out);
	mr_buf_free(&s.b);
}

static int fail_write(void *ctx, const void *buf, size_t len)
{
	size_t *left = ctx;

	(void)buf;
	if (len > *left)
		return -ENOSPC;
	*left -= len;
	return 0;
}

static void test_encode_rejects(void **state)
{
	static uint8_t bios[0x4000], rsdp[0x1000];
	static char longname[300];
	struct mr_classic_enc_block blk[3];
	struct mr_err err;
	size_t left = 1000;

	(void)state;
	syn_blocks(blk, bios, rsdp);
	struct mr_classic_enc e = { .machine = SYN_MACHINE,
				    .ram_id = SYN_ID,
				    .blocks = blk,
				    .n_blocks = 3,
				    .write = fail_write,
				    .ctx = &left };

	assert_int_equal(mr_classic_encode(&e, &err), -ENOSPC);
	e.ram_id = 0;
	assert_int_equal(mr_classic_encode(&e, &err), -EINVAL);
	e.ram_id = SYN_ID;
	e.machine = "";
	assert_int_equal(mr_classic_encode(&e, &err), -EINVAL);
	e.machine = SYN_MACHINE;
	memset(longname, 'x', 256);
	blk[2].name = longname;
	assert_int_equal(mr_classic_encode(&e, &err), -EINVAL);
	blk[2].name = "pc.bios";
	assert_int_equal(mr_classic_encode(&e, &err), -EINVAL);
	assert_string_equal(err.block, "pc.bios");
	blk[2].name = "rsdp";
	blk[2].length = 100;
	assert_int_equal(mr_classic_encode(&e, &err), -EINVAL);
	assert_string_equal(err.block, "rsdp");
	blk[2].length = 0x1000;
	e.n_blocks = 0;
	assert_int_equal(mr_classic_encode(&e, &err), -EINVAL);
}

/* ---- raw tail of a mapped-ram file ---- */

static void test_raw_tail(void **state)
{
	struct mr_buf b = MR_BUF_INIT;
	struct mr_err err;
	size_t dev;
	uint32_t id;
	bool sw;

	(void)state;
	for (int with = 0; with < 2; with++) {
		mr_buf_reset(&b);
		mr_classic_raw_tail_prefix(&b, SYN_ID, with);
		size_t plen = b.len;

		assert_int_equal(plen, 13 + 18 + (with ? 5 : 0));
		mr_buf_put(&b, syn_tail, sizeof(syn_tail) - 1);
		assert_int_equal(mr_classic_split_raw_tail(b.data, b.len, &dev, &id, &sw, &err), 0);
		assert_int_equal(dev, plen);
		assert_int_equal(id, SYN_ID);
		assert_int_equal(sw, with);
		/* Cut anywhere before the device bytes: -ENODATA. */
		for (size_t t = 0; t < plen; t++)
			assert_int_equal(mr_classic_split_raw_tail(b.data, t, &dev, &id, &sw, &err),
					 -ENODATA);
	}
	/* QEMU's own shape with PART sections; a plain snapsave tail (device section next). */
	mr_buf_reset(&b);
	mr_encode_ram_eos(&b, 2);
	for (int i = 0; i < 3; i++) {
		mr_buf_u8(&b, MR_SEC_PART);
		mr_buf_be32(&b, 2);
		mr_encode_ram_eos(&b, 2);
	}
	mr_buf_put(&b, syn_tail, sizeof(syn_tail) - 1);
	assert_int_equal(mr_classic_split_raw_tail(b.data, b.len, &dev, &id, &sw, &err), 0);
	assert_int_equal(dev, 13 + 3 * 18);
	assert_false(sw);
	/* A PART with pages in it, or another id, is not a mapped-ram tail. */
	b.data[13 + 5 + 7] = MR_RAM_EOS | MR_RAM_ZERO;
	assert_int_equal(mr_classic_split_raw_tail(b.data, b.len, &dev, &id, &sw, &err), -EBADMSG);
	assert_int_equal(err.off, 13);
	b.data[13 + 5 + 7] = MR_RAM_EOS;
	b.data[13 + 18 + 4] = 3;
	assert_int_equal(mr_classic_split_raw_tail(b.data, b.len, &dev, &id, &sw, &err), -EBADMSG);
	assert_int_equal(err.off, 31);
	b.data[13 + 18 + 4] = 2;
	b.data[13 + 13] = 0x7f; /* the first PART's footer */
	assert_int_equal(mr_classic_split_raw_tail(b.data, b.len, &dev, &id, &sw, &err), -EBADMSG);
	assert_int_equal(err.off, 13);
	b.data[13 + 13] = MR_SEC_FOOTER;
	b.data[13 + 17] = 9; /* its id */
	assert_int_equal(mr_classic_split_raw_tail(b.data, b.len, &dev, &id, &sw, &err), -EBADMSG);
	b.data[13 + 17] = 2;
	assert_int_equal(mr_classic_split_raw_tail(b.data, b.len, &dev, &id, &sw, &err), 0);
	b.data[7] = 0x11;
	assert_int_equal(mr_classic_split_raw_tail(b.data, b.len, &dev, &id, &sw, &err), -EBADMSG);
	mr_buf_free(&b);
}

/* ---- QEMU 10 fixtures ---- */

/* Recorded by tests/qemu/make-classic.py; SWITCHOVER_START only from QEMU 10 machine types. */
static const struct {
	const char *name;
	bool switchover;
	unsigned parts; /* RAM PART sections QEMU wrote */
} fixtures[] = {
	{ "q35-vga", true, 1 },	       { "pc", true, 1 },
	{ "q35-dimm", true, 1 },       { "q35-vga-qemu72", false, 1 },
	{ "q35-vga-2parts", true, 2 },
};

/* Checks the decoded blocks against QEMU's own "info ramblock" list. */
static void check_against_qemu(const struct mr_classic *c, const char *fx)
{
	char name[64];
	size_t len;
	uint8_t *js;
	json_object *o, *blocks, *qemu;

	snprintf(name, sizeof(name), "%s.json", fx);
	js = read_file(name, &len);
	o = json_tokener_parse((const char *)js); /* read_file() adds a NUL */
	assert_non_null(o);
	assert_true(json_object_object_get_ex(o, "machine_type", &qemu));
	assert_string_equal(c->machine, json_object_get_string(qemu));
	assert_true(json_object_object_get_ex(o, "ramblocks", &blocks));
	assert_int_equal(json_object_array_length(blocks), c->n_blocks);
	for (size_t i = 0; i < c->n_blocks; i++) {
		json_object *e = json_object_array_get_idx(blocks, i), *v;
		const struct mr_classic_block *b;

		assert_true(json_object_object_get_ex(e, "name", &v));
		b = mr_classic_block(c, json_object_get_string(v));
		assert_non_null(b);
		assert_true(json_object_object_get_ex(e, "used", &v));
		assert_int_equal(b->length, (uint64_t)json_object_get_int64(v));
	}
	json_object_put(o);
	free(js);
}

static void test_fixtures(void **state)
{
	(void)state;
	for (size_t f = 0; f < sizeof(fixtures) / sizeof(fixtures[0]); f++) {
		struct alloc_ctx a = { 0 };
		struct mr_classic *c = NULL;
		struct mr_classic_enc_block eb[64];
		struct mr_buf out = MR_BUF_INIT, raw = MR_BUF_INIT;
		struct mr_err err;
		char name[64];
		size_t len, dev;
		uint32_t id;
		bool sw;
		uint8_t *p;
		int r;

		snprintf(name, sizeof(name), "%s.stream", fixtures[f].name);
		p = read_file(name, &len);
		r = decode_mem(p, len, 0, &a, 0, &c, &err);
		if (r)
			fail_msg("%s: %d at 0x%llx block %s: %s", name, r,
				 (unsigned long long)err.off, err.block, err.msg);
		check_against_qemu(c, fixtures[f].name);
		assert_int_equal(c->switchover_start, fixtures[f].switchover);
		assert_int_equal(c->head_len, 0);
		assert_true(c->ram_id != 0);
		assert_true(c->n_blocks <= 64);
		for (size_t i = 0; i < c->n_blocks; i++) {
			struct mr_classic_block *b = &c->blocks[i];
			uint64_t np = b->length / 4096;

			if (!strcmp(b->name, "pc.bios"))
				assert_int_equal(b->gpa, 0xfffc0000);
			if (!b->mem) {
				assert_int_equal(b->pages + b->zero_pages, 0);
			} else {
				/* A paused source sends every page of a non-shared block once. */
				assert_int_equal(b->pages + b->zero_pages, np);
				assert_int_equal(mr_bitmap_count(b->got, np), np);
			}
			eb[i] = (struct mr_classic_enc_block){ .name = b->name,
							       .length = b->length,
							       .gpa = b->gpa,
							       .data = b->mem,
							       .bitmap = b->got };
		}
		struct mr_classic_enc e = { .machine = c->machine,
					    .ram_id = c->ram_id,
					    .blocks = eb,
					    .n_blocks = c->n_blocks,
					    .switchover_start = c->switchover_start,
					    .tail = c->tail,
					    .tail_len = c->tail_len,
					    .write = mr_classic_write_buf,
					    .ctx = &out };

		assert_int_equal(mr_classic_encode(&e, &err), 0);
		assert_int_equal(c->tail_off + c->tail_len, len);
		assert_int_equal(c->ram_parts, fixtures[f].parts);
		if (c->ram_parts == 1) {
			/* Re-encoded: QEMU's stream byte for byte. */
			assert_int_equal(out.len, len);
			assert_memory_equal(out.data, p, len);
		} else {
			/* One PART instead of QEMU's (18 bytes of framing each), same content. */
			struct mr_classic *c2 = NULL;
			struct alloc_ctx a2 = { 0 };

			assert_int_equal(out.len, len - 18 * (c->ram_parts - 1));
			assert_int_equal(decode_mem(out.data, out.len, 0, &a2, 0, &c2, &err), 0);
			assert_int_equal(c2->n_blocks, c->n_blocks);
			for (size_t i = 0; i < c->n_blocks; i++) {
				if (!c->blocks[i].mem)
					continue;
				assert_memory_equal(c2->blocks[i].mem, c->blocks[i].mem,
						    c->blocks[i].length);
				assert_int_equal(c2->blocks[i].zero_pages, c->blocks[i].zero_pages);
			}
			assert_memory_equal(c2->tail, c->tail, c->tail_len);
			mr_classic_free(c2);
			alloc_free(&a2);
		}

		/* Through a mapped-ram raw tail and back. */
		mr_classic_raw_tail_prefix(&raw, c->ram_id, c->switchover_start);
		mr_buf_put(&raw, c->tail, c->tail_len);
		assert_int_equal(mr_classic_split_raw_tail(raw.data, raw.len, &dev, &id, &sw, &err),
				 0);
		assert_int_equal(id, c->ram_id);
		assert_int_equal(sw, c->switchover_start);
		assert_int_equal(raw.len - dev, c->tail_len);
		assert_memory_equal(raw.data + dev, c->tail, c->tail_len);

		/* One byte per read gives the same result. */
		struct mr_classic *c1 = NULL;
		struct alloc_ctx a1 = { 0 };

		assert_int_equal(decode_mem(p, len, 1, &a1, 0, &c1, &err), 0);
		assert_int_equal(c1->tail_len, c->tail_len);
		for (size_t i = 0; i < c->n_blocks; i++)
			if (c->blocks[i].mem)
				assert_memory_equal(c1->blocks[i].mem, c->blocks[i].mem,
						    c->blocks[i].length);
		mr_classic_free(c1);
		alloc_free(&a1);

		/* With no memory for any block, the first page is refused by name. */
		struct alloc_ctx none = { .all_shared = true };

		assert_int_equal(decode_mem(p, len, 0, &none, 0, &c1, &err), -EBADMSG);
		assert_non_null(strstr(err.msg, "without memory"));
		assert_true(err.block[0] != '\0');

		mr_buf_free(&out);
		mr_buf_free(&raw);
		mr_classic_free(c);
		alloc_free(&a);
		free(p);
	}
}

/* ---- resume record ---- */

static struct mr_resume_block res_blocks[2] = {
	{ .name = "ram0",
	  .length = 0x4000000,
	  .shared = true,
	  .backend = "ram0",
	  .mem_path = "/dev/shm/vm-ram0" },
	{ .name = "pc.bios", .length = 0x40000, .gpa = 0xfffc0000 },
};

static struct mr_resume res = { .machine = "pc-q35-10.0",
				.qemu = "10.0.2",
				.ram_id = 1,
				.running = true,
				.switchover_start = true,
				.blocks = res_blocks,
				.n_blocks = 2 };

static int resume_decode_str(const char *s, struct mr_err *err)
{
	struct mr_resume *r = NULL;
	int ret = mr_resume_decode(s, strlen(s), &r, err);

	mr_resume_free(r);
	return ret;
}

static void test_resume_roundtrip(void **state)
{
	struct mr_buf b = MR_BUF_INIT;
	struct mr_resume *r = NULL;
	struct mr_err err;

	(void)state;
	assert_int_equal(mr_resume_encode(&res, &b, &err), 0);
	assert_int_equal(mr_resume_decode(b.data, b.len, &r, &err), 0);
	assert_string_equal(r->machine, res.machine);
	assert_string_equal(r->qemu, res.qemu);
	assert_int_equal(r->ram_id, 1);
	assert_true(r->running);
	assert_true(r->switchover_start);
	assert_int_equal(r->n_blocks, 2);
	assert_memory_equal(&r->blocks[0], &res_blocks[0], sizeof(res_blocks[0]));
	assert_memory_equal(&r->blocks[1], &res_blocks[1], sizeof(res_blocks[1]));
	/* Re-encoding the decoded record gives the same bytes. */
	struct mr_buf b2 = MR_BUF_INIT;

	assert_int_equal(mr_resume_encode(r, &b2, &err), 0);
	assert_int_equal(b2.len, b.len);
	assert_memory_equal(b2.data, b.data, b.len);
	mr_resume_free(r);
	mr_buf_free(&b);
	mr_buf_free(&b2);
}

#define REC_HEAD "{\"snapmr-resume\":1,\"machine\":\"pc-q35-10.0\",\"qemu\":\"10.0.2\","
#define REC_MID	 "\"ram-section-id\":1,\"running\":false,\"switchover-start\":true,"
#define BLK(x)	 "\"blocks\":[{\"name\":\"ram0\",\"length\":4096,\"gpa\":0,\"shared\":true" x "}]"

static void test_resume_rejects(void **state)
{
	struct mr_err err;
	struct mr_buf b = MR_BUF_INIT;
	static struct mr_resume_block bad[2];
	struct mr_resume rec = res;
	char big[700];

	(void)state;
	assert_int_equal(resume_decode_str(REC_HEAD REC_MID BLK("") "}", &err), 0);
	assert_int_equal(resume_decode_str("{\"snapmr-resume\":2}", &err), -EPROTONOSUPPORT);
	assert_int_equal(resume_decode_str(REC_HEAD REC_MID BLK("") ",\"x\":1}", &err), -EBADMSG);
	assert_non_null(strstr(err.msg, "unknown key"));
	assert_int_equal(resume_decode_str(REC_HEAD REC_MID BLK(",\"y\":1") "}", &err), -EBADMSG);
	assert_string_equal(err.block, "ram0");
	assert_int_equal(resume_decode_str(REC_HEAD BLK("") "}", &err), -EBADMSG);
	assert_non_null(strstr(err.msg, "missing"));
	assert_int_equal(resume_decode_str(REC_HEAD REC_MID BLK(",\"backend\":7") "}", &err),
			 -EBADMSG);
	assert_int_equal(resume_decode_str(REC_HEAD REC_MID BLK(",\"backend\":\"\"") "}", &err),
			 -EBADMSG);
	assert_int_equal(resume_decode_str(REC_HEAD "\"ram-section-id\":0,\"running\":false,"
						    "\"switchover-start\":true," BLK("") "}",
					   &err),
			 -EBADMSG);
	assert_int_equal(resume_decode_str(REC_HEAD REC_MID
					   "\"blocks\":[{\"name\":\"a\",\"length\":4095,\"gpa\":0,"
					   "\"shared\":true}]}",
					   &err),
			 -EBADMSG);
	assert_int_equal(resume_decode_str(REC_HEAD REC_MID
					   "\"blocks\":[{\"name\":\"a\",\"length\":-4096,\"gpa\":0,"
					   "\"shared\":true}]}",
					   &err),
			 -EBADMSG);
	assert_int_equal(resume_decode_str(REC_HEAD REC_MID
					   "\"blocks\":[{\"name\":\"a\",\"length\":4096,\"gpa\":0,"
					   "\"shared\":1}]}",
					   &err),
			 -EBADMSG);
	assert_int_equal(resume_decode_str(REC_HEAD REC_MID "\"blocks\":[]}", &err), -EBADMSG);
	/* Two blocks with one name. */
	assert_int_equal(
		resume_decode_str(
			REC_HEAD REC_MID
			"\"blocks\":[{\"name\":\"a\",\"length\":0,\"gpa\":0,\"shared\":true},"
			"{\"name\":\"a\",\"length\":0,\"gpa\":0,\"shared\":true}]}",
			&err),
		-EBADMSG);
	assert_non_null(strstr(err.msg, "twice"));
	/* A 256-byte block name. */
	memset(big, 'n', sizeof(big));
	snprintf(big, sizeof(big),
		 "%s%s\"blocks\":[{\"name\":\"%0256d\",\"length\":0,\"gpa\":0,"
		 "\"shared\":true}]}",
		 REC_HEAD, REC_MID, 0);
	assert_int_equal(resume_decode_str(big, &err), -EOVERFLOW);
	/* Not JSON, trailing bytes, a NUL, too long. */
	assert_int_equal(resume_decode_str("{", &err), -EBADMSG);
	assert_int_equal(resume_decode_str(REC_HEAD REC_MID BLK("") "} x", &err), -EBADMSG);
	assert_int_equal(resume_decode_str(REC_HEAD REC_MID BLK("") "}{}", &err), -EBADMSG);
	assert_int_equal(resume_decode_str(REC_HEAD REC_MID BLK("") "}1", &err), -EBADMSG);
	assert_int_equal(resume_decode_str("[1]", &err), -EBADMSG);
	assert_int_equal(mr_resume_decode("{}\0", 3, &(struct mr_resume *){ NULL }, &err),
			 -EBADMSG);
	assert_int_equal(
		mr_resume_decode("{}", MR_RESUME_MAX + 1, &(struct mr_resume *){ NULL }, &err),
		-EOVERFLOW);

	/* The encoder refuses what the decoder would. */
	bad[0] = res_blocks[0];
	bad[1] = res_blocks[0];
	rec.blocks = bad;
	assert_int_equal(mr_resume_encode(&rec, &b, &err), -EINVAL);
	snprintf(bad[1].name, sizeof(bad[1].name), "x\ny");
	assert_int_equal(mr_resume_encode(&rec, &b, &err), -EINVAL);
	snprintf(bad[1].name, sizeof(bad[1].name), "b");
	bad[1].length = 1;
	assert_int_equal(mr_resume_encode(&rec, &b, &err), -EINVAL);
	bad[1].length = 0;
	bad[1].gpa = UINT64_MAX;
	assert_int_equal(mr_resume_encode(&rec, &b, &err), -EINVAL);
	bad[1].gpa = 0;
	rec.ram_id = 0;
	assert_int_equal(mr_resume_encode(&rec, &b, &err), -EINVAL);
	rec.ram_id = 1;
	assert_int_equal(mr_resume_encode(&rec, &b, &err), 0);
	mr_buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_syn_decode),
		cmocka_unit_test(test_truncation),
		cmocka_unit_test(test_config_rejects),
		cmocka_unit_test(test_before_ram_rejects),
		cmocka_unit_test(test_block_list_rejects),
		cmocka_unit_test(test_page_rejects),
		cmocka_unit_test(test_page_resent),
		cmocka_unit_test(test_continue_first),
		cmocka_unit_test(test_callbacks_and_caps),
		cmocka_unit_test(test_encode_syn),
		cmocka_unit_test(test_encode_rejects),
		cmocka_unit_test(test_raw_tail),
		cmocka_unit_test(test_fixtures),
		cmocka_unit_test(test_resume_roundtrip),
		cmocka_unit_test(test_resume_rejects),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
