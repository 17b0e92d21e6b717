// SPDX-License-Identifier: MIT
/* Tests of the integrity trailer: hashing, encode/decode, corruption, hostile values. */
#include "trailer.h"
#include "be.h"

#include <errno.h>
#include <stdbool.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <xxhash.h>

#define PG 4096u

/* ---- in-memory file ---- */

struct memfile {
	uint8_t *data;
	size_t len;
	unsigned max_read; /* 0: unlimited; else short reads of at most this */
	int fail;	   /* nonzero: pread returns this */
};

static long mem_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
	struct memfile *m = ctx;

	if (m->fail)
		return m->fail;
	if (off >= m->len)
		return 0;
	if (len > m->len - off)
		len = m->len - off;
	if (m->max_read && len > m->max_read)
		len = m->max_read;
	memcpy(buf, m->data + off, len);
	return (long)len;
}

static int parse_mem(struct memfile *m, uint64_t size, struct mr_trailer **ret, struct mr_err *err)
{
	struct mr_src src = { mem_pread, m, size };

	return mr_trailer_parse(&src, size, ret, err);
}

/* Parses expecting failure r; checks that *ret stays untouched. */
static int parse_fail(struct memfile *m, uint64_t size, struct mr_err *err)
{
	struct mr_trailer *t = (struct mr_trailer *)(uintptr_t)0x1;
	int r = parse_mem(m, size, &t, err);

	assert_true(r < 0);
	assert_ptr_equal(t, (struct mr_trailer *)(uintptr_t)0x1);
	return r;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	uint64_t x = rng_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

static void fill_random(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)rnd();
}

/* ---- fixture: a fake stream with two blocks, then the trailer ---- */

#define BASE	   0x200u
#define A_BITMAP   0x1000u
#define A_PAGES	   0x2000u
#define A_LEN	   (3u * 65536u + 2u * PG) /* 50 pages: chunks of 16, 16, 16, 2 */
#define B_BITMAP   (A_PAGES + A_LEN)
#define B_PAGES	   (B_BITMAP + PG)
#define B_LEN	   (8u * PG)
#define DEV_OFF	   (B_PAGES + B_LEN)
#define DEV_LEN	   0x1234u
#define STREAM_END (DEV_OFF + DEV_LEN + 0x11u)

struct fixture {
	uint8_t *data; /* stream then trailer */
	size_t len;
	size_t stream_end;
	uint64_t map_a[1];
	uint64_t map_b[1];
	uint32_t chunk_size;
	struct memfile mf;
};

static void hash_block(struct mr_trailer_builder *b, size_t idx, const uint8_t *file,
		       uint64_t pages_off, uint64_t len, const uint64_t *map)
{
	uint32_t cs = mr_trailer_builder_chunk_size(b);

	for (uint64_t c = 0; c < mr_trailer_chunks(len, cs); c++) {
		uint64_t first, n, h;

		mr_trailer_chunk_pages(len, cs, c, &first, &n);
		h = mr_trailer_chunk_hash(file + pages_off + first * PG, map, first, n);
		mr_trailer_builder_set_chunk(b, idx, c, h);
	}
	mr_trailer_builder_set_bitmap_hash(b, idx, mr_trailer_bitmap_hash(map, len / PG));
}

static struct mr_trailer_builder *fixture_builder(struct fixture *f)
{
	struct mr_trailer_builder *b;
	size_t ia, ib;

	assert_int_equal(mr_trailer_builder_new(BASE, f->chunk_size, &b), 0);
	assert_int_equal(mr_trailer_builder_add_block(b, "pc.ram", A_LEN, A_BITMAP, A_PAGES, &ia),
			 0);
	assert_int_equal(mr_trailer_builder_add_block(b, "vga.vram", B_LEN, B_BITMAP, B_PAGES, &ib),
			 0);
	hash_block(b, ia, f->data, A_PAGES, A_LEN, f->map_a);
	hash_block(b, ib, f->data, B_PAGES, B_LEN, f->map_b);
	mr_trailer_builder_set_devstate(b, DEV_OFF, DEV_LEN,
					XXH3_64bits(f->data + DEV_OFF, DEV_LEN));
	return b;
}

static void fixture_init(struct fixture *f, uint32_t chunk_size)
{
	struct mr_buf out = MR_BUF_INIT;
	struct mr_trailer_builder *b;

	memset(f, 0, sizeof(*f));
	f->chunk_size = chunk_size;
	f->stream_end = STREAM_END;
	/* Pages present with gaps, crossing a word boundary; stale bytes under clear bits. */
	f->map_a[0] = 0x0003fff0f0f0ff0full & ((1ull << 50) - 1);
	f->map_b[0] = 0xa5;

	out.data = malloc(STREAM_END);
	assert_non_null(out.data);
	out.cap = out.len = STREAM_END;
	fill_random(out.data, STREAM_END);
	mr_put_le64(out.data + A_BITMAP, f->map_a[0]);
	mr_put_le64(out.data + B_BITMAP, f->map_b[0]);
	f->data = out.data;

	b = fixture_builder(f);
	assert_int_equal(mr_trailer_encode(b, STREAM_END, &out), 0);
	mr_trailer_builder_free(b);
	f->data = out.data;
	f->len = out.len;
	f->mf = (struct memfile){ f->data, f->len, 0, 0 };
}

static void fixture_fini(struct fixture *f)
{
	free(f->data);
}

/* Recomputes both hashes of the fixture's footer (after a deliberate edit). */
static void reseal_footer(struct fixture *f)
{
	uint8_t *foot = f->data + f->len - MR_TRAILER_FOOTER_SIZE;

	mr_put_be64(foot + 40, XXH3_64bits(foot, 40));
}

/* Recomputes the table hash and the footer hash over the table as it is now. */
static void reseal(struct fixture *f)
{
	uint8_t *foot = f->data + f->len - MR_TRAILER_FOOTER_SIZE;
	uint64_t toff = mr_get_be64(foot + 16), tlen = mr_get_be64(foot + 24);

	mr_put_be64(foot + 32, XXH3_64bits(f->data + toff, tlen));
	reseal_footer(f);
}

/* Replaces the table (from stream_end) by tab/tlen and writes a fresh valid footer. */
static void replace_table(struct fixture *f, const uint8_t *tab, size_t tlen)
{
	uint8_t *d = realloc(f->data, f->stream_end + tlen + MR_TRAILER_FOOTER_SIZE);
	uint8_t *foot;

	assert_non_null(d);
	memmove(d + f->stream_end, tab, tlen);
	f->data = d;
	f->len = f->stream_end + tlen + MR_TRAILER_FOOTER_SIZE;
	foot = d + f->len - MR_TRAILER_FOOTER_SIZE;
	memcpy(foot, MR_TRAILER_MAGIC, 8);
	mr_put_be32(foot + 8, MR_TRAILER_VERSION);
	mr_put_be32(foot + 12, MR_TRAILER_F_COMPLETE);
	mr_put_be64(foot + 16, f->stream_end);
	mr_put_be64(foot + 24, tlen);
	reseal(f);
	f->mf = (struct memfile){ f->data, f->len, 0, 0 };
}

static uint8_t *table(struct fixture *f)
{
	return f->data + f->stream_end;
}

static size_t table_len(const struct fixture *f)
{
	return f->len - f->stream_end - MR_TRAILER_FOOTER_SIZE;
}

/* File offset of block record field: rec 0 = "pc.ram", rec 1 = "vga.vram". */
#define REC0	    (MR_TRAILER_TABLE_HDR)
#define REC0_FIELDS (REC0 + 1 + 6)
#define REC0_CHUNKS (REC0_FIELDS + 40)

static int expect_parse(struct fixture *f, int want, const char *block)
{
	struct mr_err err;
	int r;

	memset(&err, 0x55, sizeof(err));
	r = parse_fail(&f->mf, f->len, &err);
	assert_int_equal(r, want);
	assert_true(err.msg[0] != '\0' && memchr(err.msg, 0, sizeof(err.msg)));
	assert_true(err.off <= f->len);
	if (block)
		assert_string_equal(err.block, block);
	return r;
}

/* ---- tests ---- */

static void test_chunk_hash_logical(void **state)
{
	enum { NP = 200 };
	static uint8_t data[NP * PG], logical[NP * PG];
	uint64_t map[4];
	static const uint64_t patterns[][4] = {
		{ ~0ull, ~0ull, ~0ull, ~0ull },
		{ 0, 0, 0, 0 },
		{ 0x5555555555555555ull, 0xaaaaaaaaaaaaaaaaull, 1, 0x8000000000000000ull },
		{ 0xffffffff00000000ull, 0x00000000ffffffffull, 0, ~0ull },
		{ 0, 0, 0, 0 }, /* random below */
	};
	const uint64_t ranges[][2] = { { 0, NP },    { 0, 16 },	  { 61, 16 }, { 63, 2 }, { 64, 64 },
				       { 100, 100 }, { 190, 10 }, { 5, 1 },   { 0, 0 } };

	(void)state;
	fill_random(data, sizeof(data));
	for (size_t p = 0; p < sizeof(patterns) / sizeof(patterns[0]); p++) {
		memcpy(map, patterns[p], sizeof(map));
		if (p == 4)
			for (int i = 0; i < 4; i++)
				map[i] = rnd();
		for (size_t r = 0; r < sizeof(ranges) / sizeof(ranges[0]); r++) {
			uint64_t first = ranges[r][0], n = ranges[r][1];
			const uint8_t *chunk = data + first * PG;

			for (uint64_t i = 0; i < n; i++) {
				if (mr_bit_test(map, first + i))
					memcpy(logical + i * PG, chunk + i * PG, PG);
				else
					memset(logical + i * PG, 0, PG);
			}
			assert_true(mr_trailer_chunk_hash(chunk, map, first, n) ==
				    XXH3_64bits(logical, n * PG));
		}
	}

	/* NULL bitmap: every page present. */
	assert_true(mr_trailer_chunk_hash(data, NULL, 0, 16) == XXH3_64bits(data, 16 * PG));
	/* No page present: data is never read, NULL is allowed. */
	memset(logical, 0, 16 * PG);
	memset(map, 0, sizeof(map));
	assert_true(mr_trailer_chunk_hash(NULL, map, 3, 16) == XXH3_64bits(logical, 16 * PG));
	/* Stale bytes under clear bits do not change the hash. */
	map[0] = 0x0f0f;
	{
		uint64_t h = mr_trailer_chunk_hash(data, map, 0, 16);

		memset(data + 4 * PG, 0xee, 4 * PG);
		assert_true(mr_trailer_chunk_hash(data, map, 0, 16) == h);
		data[PG] ^= 1; /* a present page does */
		assert_true(mr_trailer_chunk_hash(data, map, 0, 16) != h);
	}
}

static void test_bitmap_hash(void **state)
{
	const uint64_t sizes[] = { 0, 1, 63, 64, 65, 1000, 64 * 70 };
	uint64_t map[70];
	uint8_t bytes[70 * 8];

	(void)state;
	for (int i = 0; i < 70; i++)
		map[i] = rnd();
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		uint64_t words = (sizes[s] + 63) / 64;

		for (uint64_t w = 0; w < words; w++)
			for (int b = 0; b < 8; b++)
				bytes[w * 8 + b] = (uint8_t)(map[w] >> (8 * b));
		assert_true(mr_trailer_bitmap_hash(map, sizes[s]) == XXH3_64bits(bytes, words * 8));
	}
}

static void test_chunk_geometry(void **state)
{
	uint64_t first, n;

	(void)state;
	assert_int_equal(mr_trailer_chunks(0, 65536), 0);
	assert_int_equal(mr_trailer_chunks(PG, 65536), 1);
	assert_int_equal(mr_trailer_chunks(65536, 65536), 1);
	assert_int_equal(mr_trailer_chunks(65536 + PG, 65536), 2);
	assert_int_equal(mr_trailer_chunks(A_LEN, 65536), 4);
	mr_trailer_chunk_pages(A_LEN, 65536, 2, &first, &n);
	assert_int_equal(first, 32);
	assert_int_equal(n, 16);
	mr_trailer_chunk_pages(A_LEN, 65536, 3, &first, &n);
	assert_int_equal(first, 48);
	assert_int_equal(n, 2);
}

static void check_round_trip(uint32_t chunk_size)
{
	struct fixture f;
	struct mr_trailer *t = NULL;
	const struct mr_trailer_block *a, *b;
	struct mr_buf again = MR_BUF_INIT;
	struct mr_trailer_builder *bld;
	uint32_t cs = chunk_size ? chunk_size : MR_TRAILER_CHUNK_DEFAULT;

	fixture_init(&f, chunk_size);
	assert_int_equal(parse_mem(&f.mf, f.len, &t, NULL), 0);
	assert_non_null(t);
	assert_int_equal(t->version, 1);
	assert_int_equal(t->flags, MR_TRAILER_F_COMPLETE);
	assert_int_equal(t->table_offset, STREAM_END);
	assert_int_equal(t->table_length, table_len(&f));
	assert_int_equal(t->stream_base, BASE);
	assert_int_equal(t->stream_end, STREAM_END);
	assert_int_equal(t->chunk_size, cs);
	assert_int_equal(t->devstate_offset, DEV_OFF);
	assert_int_equal(t->devstate_length, DEV_LEN);
	assert_true(t->devstate_hash == XXH3_64bits(f.data + DEV_OFF, DEV_LEN));
	assert_int_equal(t->n_blocks, 2);

	a = mr_trailer_find_block(t, "pc.ram");
	b = mr_trailer_find_block(t, "vga.vram");
	assert_non_null(a);
	assert_non_null(b);
	assert_null(mr_trailer_find_block(t, "pc.ra"));
	assert_null(mr_trailer_find_block(t, "pc.ram0"));
	assert_int_equal(a->record_off, STREAM_END + REC0);
	assert_int_equal(a->length, A_LEN);
	assert_int_equal(a->bitmap_offset, A_BITMAP);
	assert_int_equal(a->bitmap_size, 8);
	assert_int_equal(a->pages_offset, A_PAGES);
	assert_int_equal(a->n_chunks, mr_trailer_chunks(A_LEN, cs));
	assert_int_equal(b->length, B_LEN);
	assert_int_equal(b->n_chunks, mr_trailer_chunks(B_LEN, cs));

	/* A verifier's view: every stored hash matches the file's logical contents. */
	for (size_t i = 0; i < t->n_blocks; i++) {
		const struct mr_trailer_block *blk = &t->blocks[i];
		uint64_t map = mr_get_le64(f.data + blk->bitmap_offset);

		assert_true(blk->bitmap_hash == XXH3_64bits(f.data + blk->bitmap_offset, 8));
		for (uint64_t c = 0; c < blk->n_chunks; c++) {
			uint64_t first, n;

			mr_trailer_chunk_pages(blk->length, cs, c, &first, &n);
			assert_true(blk->chunk_hashes[c] ==
				    mr_trailer_chunk_hash(f.data + blk->pages_offset + first * PG,
							  &map, first, n));
		}
	}

	/* Encoding is deterministic and appends to what the buffer holds. */
	bld = fixture_builder(&f);
	mr_buf_put(&again, "xyz", 3);
	assert_int_equal(mr_trailer_encode(bld, STREAM_END, &again), 0);
	assert_int_equal(again.len, 3 + f.len - STREAM_END);
	assert_memory_equal(again.data, "xyz", 3);
	assert_memory_equal(again.data + 3, f.data + STREAM_END, f.len - STREAM_END);
	assert_memory_equal(f.data + f.len - 48, MR_TRAILER_MAGIC, 8);

	mr_buf_free(&again);
	mr_trailer_builder_free(bld);
	mr_trailer_free(t);
	fixture_fini(&f);
}

static void test_round_trip(void **state)
{
	(void)state;
	check_round_trip(0);
	check_round_trip(4096);
	check_round_trip(1u << 30);
}

static void test_round_trip_empty(void **state)
{
	struct mr_trailer_builder *b;
	struct mr_buf out = MR_BUF_INIT;
	struct memfile m;
	struct mr_trailer *t;

	(void)state;
	/* No blocks, empty device state, stream of zero bytes at offset 0. */
	assert_int_equal(mr_trailer_builder_new(0, 0, &b), 0);
	mr_trailer_builder_set_devstate(b, 0, 0, XXH3_64bits(NULL, 0));
	assert_int_equal(mr_trailer_encode(b, 0, &out), 0);
	assert_int_equal(out.len, MR_TRAILER_TABLE_HDR + MR_TRAILER_FOOTER_SIZE);
	m = (struct memfile){ out.data, out.len, 0, 0 };
	assert_int_equal(parse_mem(&m, out.len, &t, NULL), 0);
	assert_int_equal(t->n_blocks, 0);
	assert_int_equal(t->stream_end, 0);
	assert_null(mr_trailer_find_block(t, "pc.ram"));
	mr_trailer_free(t);
	mr_trailer_builder_free(b);
	mr_buf_free(&out);
}

static void test_short_reads(void **state)
{
	struct fixture f;
	struct mr_trailer *t;
	struct mr_err err;

	(void)state;
	fixture_init(&f, 0);
	f.mf.max_read = 3;
	assert_int_equal(parse_mem(&f.mf, f.len, &t, NULL), 0);
	mr_trailer_free(t);

	f.mf.max_read = 0;
	f.mf.fail = -EIO;
	assert_int_equal(parse_fail(&f.mf, f.len, &err), -EIO);

	/* The source holds fewer bytes than the caller's file size. */
	f.mf.fail = 0;
	f.mf.len = f.len - 1;
	assert_int_equal(parse_fail(&f.mf, f.len, &err), -ENODATA);
	fixture_fini(&f);
}

static void test_builder_rejects(void **state)
{
	struct mr_trailer_builder *b;
	struct mr_buf out = MR_BUF_INIT;
	char long_name[300];
	size_t idx;
	int r;

	(void)state;
	assert_int_equal(mr_trailer_builder_new(0, 1000, &b), -EINVAL);
	assert_int_equal(mr_trailer_builder_new(0, 2048, &b), -EINVAL);
	assert_int_equal(mr_trailer_builder_new(0, 3 * PG, &b), -EINVAL);
	assert_int_equal(mr_trailer_builder_new(0, 1u << 31, &b), -EINVAL);
	assert_int_equal(mr_trailer_builder_new(0x1000, 0, &b), 0);
	assert_int_equal(mr_trailer_builder_chunk_size(b), MR_TRAILER_CHUNK_DEFAULT);

	memset(long_name, 'x', sizeof(long_name));
	long_name[256] = '\0';
	assert_int_equal(mr_trailer_builder_add_block(b, "", PG, 0x1000, 0x2000, &idx), -EINVAL);
	assert_int_equal(mr_trailer_builder_add_block(b, long_name, PG, 0x1000, 0x2000, &idx),
			 -EINVAL);
	long_name[255] = '\0';
	assert_int_equal(mr_trailer_builder_add_block(b, long_name, PG, 0x1000, 0x2000, &idx), 0);
	assert_int_equal(mr_trailer_builder_add_block(b, long_name, PG, 0x1000, 0x2000, &idx),
			 -EINVAL);
	assert_int_equal(mr_trailer_builder_add_block(b, "a", 100, 0x1000, 0x2000, &idx), -EINVAL);
	assert_int_equal(mr_trailer_builder_add_block(b, "a", PG, 0x1000, 0x2001, &idx), -EINVAL);
	/* Page region wraps. */
	r = mr_trailer_builder_add_block(b, "a", 2 * PG, 0x1000, UINT64_MAX - PG + 1, &idx);
	assert_int_equal(r, -EINVAL);
	assert_int_equal(mr_trailer_builder_add_block(b, "a", 2 * 65536, 0x1008, 0x3000, &idx), 0);
	assert_int_equal(idx, 1);

	mr_buf_put(&out, "abc", 3);
	/* Nothing set yet. */
	assert_int_equal(mr_trailer_encode(b, 0x100000, &out), -EINVAL);
	mr_trailer_builder_set_devstate(b, 0x40000, 0x10, 7);
	mr_trailer_builder_set_bitmap_hash(b, 0, 1);
	mr_trailer_builder_set_bitmap_hash(b, 1, 2);
	mr_trailer_builder_set_chunk(b, 0, 0, 3);
	mr_trailer_builder_set_chunk(b, 1, 1, 4);
	assert_int_equal(mr_trailer_encode(b, 0x100000, &out), -EINVAL); /* chunk 1/0 missing */
	mr_trailer_builder_set_chunk(b, 1, 0, 5);
	/* Ranges must fit [base, stream_end). */
	assert_int_equal(mr_trailer_encode(b, 0x800, &out), -EINVAL);
	assert_int_equal(mr_trailer_encode(b, 0x23000 - 1, &out), -EINVAL);
	assert_int_equal(mr_trailer_encode(b, 0x40000 + 0xf, &out), -EINVAL);
	assert_int_equal(out.len, 3);
	assert_int_equal(out.err, 0);
	assert_int_equal(mr_trailer_encode(b, 0x40010, &out), 0);
	assert_int_equal(out.len, 3 + 48 + (1 + 255 + 40 + 8) + (1 + 1 + 40 + 16) + 48);

	/* A device state below the stream base is refused. */
	mr_trailer_builder_set_devstate(b, 0xfff, 1, 7);
	out.len = 3;
	assert_int_equal(mr_trailer_encode(b, 0x40010, &out), -EINVAL);
	assert_int_equal(out.len, 3);

	/* A latched buffer error is returned as is. */
	out.err = -ENOMEM;
	mr_trailer_builder_set_devstate(b, 0x40000, 0x10, 7);
	assert_int_equal(mr_trailer_encode(b, 0x40010, &out), -ENOMEM);

	mr_buf_free(&out);
	mr_trailer_builder_free(b);
}

static void test_every_bit_flip(void **state)
{
	struct fixture f;
	size_t flips = 0;

	(void)state;
	fixture_init(&f, 0);
	for (size_t byte = f.stream_end; byte < f.len; byte++) {
		bool in_foot = byte >= f.len - MR_TRAILER_FOOTER_SIZE;
		size_t fo = byte - (f.len - MR_TRAILER_FOOTER_SIZE);

		for (int bit = 0; bit < 8; bit++) {
			struct mr_err err;
			int want = -EBADMSG, r;

			if (in_foot && fo < 8)
				want = -ENOENT; /* magic gone: indistinguishable from no trailer */
			else if (in_foot && fo < 12)
				want = -EPROTONOSUPPORT;
			f.data[byte] ^= (uint8_t)(1u << bit);
			r = parse_fail(&f.mf, f.len, &err);
			f.data[byte] ^= (uint8_t)(1u << bit);
			if (r != want)
				fail_msg("flip of byte %zu bit %d: got %d, want %d (%s)", byte, bit,
					 r, want, err.msg);
			flips++;
		}
	}
	assert_int_equal(flips, 8 * (table_len(&f) + MR_TRAILER_FOOTER_SIZE));

	/* Sanity: the untouched file still parses. */
	{
		struct mr_trailer *t;

		assert_int_equal(parse_mem(&f.mf, f.len, &t, NULL), 0);
		mr_trailer_free(t);
	}
	fixture_fini(&f);
}

static void test_truncation(void **state)
{
	struct fixture f;
	struct mr_err err;

	(void)state;
	fixture_init(&f, 0);
	/* Cut anywhere inside the trailer, including just before it and with no stream. */
	for (size_t len = 0; len < f.len; len++) {
		f.mf.len = len;
		if (parse_fail(&f.mf, len, &err) != -ENOENT)
			fail_msg("truncated to %zu: %s", len, err.msg);
	}
	/* Bytes appended after the footer hide it too. */
	f.data = realloc(f.data, f.len + 1);
	assert_non_null(f.data);
	f.data[f.len] = 0;
	f.mf = (struct memfile){ f.data, f.len + 1, 0, 0 };
	assert_int_equal(parse_fail(&f.mf, f.len + 1, &err), -ENOENT);
	fixture_fini(&f);
}

static void test_no_trailer(void **state)
{
	static const char qemu_tail[] =
		"\x00\x06\x00\x00\x00\x40"
		"{\"page_size\": 4096, \"devices\": [], \"configuration\": {}}";
	uint8_t file[8192];
	struct memfile m = { file, sizeof(file), 0, 0 };
	struct mr_err err;

	(void)state;
	/* A QEMU-written file ends with its VMDESCRIPTION JSON. */
	fill_random(file, sizeof(file));
	memcpy(file, "QEVM\0\0\0\3", 8);
	memcpy(file + sizeof(file) - (sizeof(qemu_tail) - 1), qemu_tail, sizeof(qemu_tail) - 1);
	assert_int_equal(parse_fail(&m, sizeof(file), &err), -ENOENT);
	assert_int_equal(err.off, sizeof(file) - 48);
	/* A crashed save whose file was extended but never got its footer. */
	memset(file + 4096, 0, 4096);
	assert_int_equal(parse_fail(&m, sizeof(file), &err), -ENOENT);
	/* Tiny and empty files. */
	assert_int_equal(parse_fail(&m, 47, &err), -ENOENT);
	assert_int_equal(parse_fail(&m, 0, &err), -ENOENT);
}

static void test_hostile_footer(void **state)
{
	struct fixture f;
	uint8_t *foot;
	uint64_t foot_off;

	(void)state;
	fixture_init(&f, 0);
	foot_off = f.len - 48;
	foot = f.data + foot_off;

	/* Version 3, even with a valid hash (2 adds extension records: none here is fine). */
	mr_put_be32(foot + 8, 3);
	reseal_footer(&f);
	expect_parse(&f, -EPROTONOSUPPORT, "");
	mr_put_be32(foot + 8, 2);
	reseal_footer(&f);
	{
		struct mr_trailer *t = NULL;

		assert_int_equal(parse_mem(&f.mf, f.len, &t, NULL), 0);
		assert_null(t->blob);
		mr_trailer_free(t);
	}
	mr_put_be32(foot + 8, 1);

	/* Reserved flag, and COMPLETE clear. */
	mr_put_be32(foot + 12, MR_TRAILER_F_COMPLETE | 0x80000000u);
	reseal_footer(&f);
	expect_parse(&f, -EBADMSG, "");
	mr_put_be32(foot + 12, 0);
	reseal_footer(&f);
	expect_parse(&f, -ENOENT, "");
	mr_put_be32(foot + 12, MR_TRAILER_F_COMPLETE);

	/* table_offset + table_length wraps. */
	mr_put_be64(foot + 16, UINT64_MAX - 8);
	reseal_footer(&f);
	expect_parse(&f, -EOVERFLOW, "");
	mr_put_be64(foot + 16, STREAM_END);
	mr_put_be64(foot + 24, UINT64_MAX);
	reseal_footer(&f);
	expect_parse(&f, -EOVERFLOW, "");
	/* Table runs into the footer / past the end of the file. */
	mr_put_be64(foot + 24, table_len(&f) + 1);
	reseal_footer(&f);
	expect_parse(&f, -EOVERFLOW, "");
	mr_put_be64(foot + 24, 1ull << 40);
	reseal_footer(&f);
	expect_parse(&f, -EOVERFLOW, "");
	/* Gap between the table and the footer. */
	mr_put_be64(foot + 24, table_len(&f) - 1);
	reseal_footer(&f);
	expect_parse(&f, -EBADMSG, "");
	/* Table starts beyond the file. */
	mr_put_be64(foot + 16, f.len + 100);
	mr_put_be64(foot + 24, 0);
	reseal_footer(&f);
	expect_parse(&f, -EOVERFLOW, "");
	/* Table shorter than its header, adjacent to the footer. */
	mr_put_be64(foot + 16, foot_off - 10);
	mr_put_be64(foot + 24, 10);
	reseal(&f);
	expect_parse(&f, -ENODATA, "");
	/* Table moved earlier: its stream end no longer names the table. */
	mr_put_be64(foot + 16, STREAM_END - 8);
	mr_put_be64(foot + 24, table_len(&f) + 8);
	reseal(&f);
	expect_parse(&f, -EBADMSG, "");
	fixture_fini(&f);
}

/* Edits the fixture's table with a big-endian value at table offset at, then reseals. */
static void poke64(struct fixture *f, size_t at, uint64_t v)
{
	mr_put_be64(table(f) + at, v);
	reseal(f);
}

static void poke32(struct fixture *f, size_t at, uint32_t v)
{
	mr_put_be32(table(f) + at, v);
	reseal(f);
}

static void test_hostile_table(void **state)
{
	struct fixture f;
	uint8_t *orig;
	size_t tl;

	(void)state;
	fixture_init(&f, 0);
	tl = table_len(&f);
	orig = malloc(tl);
	assert_non_null(orig);
	memcpy(orig, table(&f), tl);
#define RESET() replace_table(&f, orig, tl)

	/* Header. */
	poke64(&f, 0, STREAM_END + 1); /* base after end */
	expect_parse(&f, -EBADMSG, "");
	RESET();
	poke64(&f, 8, STREAM_END + 4096); /* stream end is not the table */
	expect_parse(&f, -EBADMSG, "");
	RESET();
	const uint32_t bad_cs[] = {
		0, 1, 2048, 4095, 3 * 4096, 65536 + 4096, 1u << 31, UINT32_MAX
	};
	for (size_t i = 0; i < sizeof(bad_cs) / sizeof(bad_cs[0]); i++) {
		poke32(&f, 16, bad_cs[i]);
		expect_parse(&f, -EBADMSG, "");
	}
	RESET();
	poke32(&f, 20, UINT32_MAX); /* n_blocks cannot fit */
	expect_parse(&f, -ENODATA, "");
	RESET();
	poke32(&f, 20, 3); /* one record more than present */
	expect_parse(&f, -ENODATA, "");
	RESET();
	poke32(&f, 20, 1); /* one record left over */
	expect_parse(&f, -EBADMSG, "");
	RESET();
	poke64(&f, 24, UINT64_MAX - 4); /* device state wraps */
	expect_parse(&f, -EOVERFLOW, "");
	RESET();
	poke64(&f, 24, BASE - 1); /* device state before the stream */
	expect_parse(&f, -EOVERFLOW, "");
	RESET();
	poke64(&f, 32, STREAM_END - DEV_OFF + 1); /* device state past the stream */
	expect_parse(&f, -EOVERFLOW, "");
	RESET();

	/* Block record 0 ("pc.ram"). */
	table(&f)[REC0] = 0; /* empty name */
	reseal(&f);
	expect_parse(&f, -EBADMSG, "");
	RESET();
	table(&f)[REC0 + 3] = 0; /* NUL in name */
	reseal(&f);
	expect_parse(&f, -EBADMSG, "");
	RESET();
	{
		/* Two records named "vga.vram": record 1's name replaces record 0's. */
		uint8_t *t2 = malloc(tl + 2);
		size_t rec1 = REC0_CHUNKS + 4 * 8;

		assert_non_null(t2);
		memcpy(t2, orig, REC0);
		memcpy(t2 + REC0, orig + rec1, 1 + 8); /* u8 8 "vga.vram" */
		memcpy(t2 + REC0 + 9, orig + REC0 + 7, tl - REC0 - 7);
		replace_table(&f, t2, tl + 2);
		expect_parse(&f, -EBADMSG, "vga.vram");
		free(t2);
	}
	RESET();
	poke64(&f, REC0_FIELDS, A_LEN + 1); /* length not page aligned */
	expect_parse(&f, -EBADMSG, "pc.ram");
	RESET();
	poke64(&f, REC0_FIELDS + 16, A_PAGES + 8); /* pages_offset not page aligned */
	expect_parse(&f, -EBADMSG, "pc.ram");
	RESET();
	poke64(&f, REC0_FIELDS + 16, UINT64_MAX - 4095); /* page region wraps */
	expect_parse(&f, -EOVERFLOW, "pc.ram");
	RESET();
	poke64(&f, REC0_FIELDS + 16, STREAM_END & ~(uint64_t)4095); /* past stream end */
	expect_parse(&f, -EOVERFLOW, "pc.ram");
	RESET();
	poke64(&f, REC0_FIELDS + 16, 0); /* before the stream base */
	expect_parse(&f, -EOVERFLOW, "pc.ram");
	RESET();
	poke64(&f, REC0_FIELDS, UINT64_MAX & ~(uint64_t)4095); /* huge length */
	expect_parse(&f, -EOVERFLOW, "pc.ram");
	RESET();
	poke64(&f, REC0_FIELDS + 8, UINT64_MAX - 3); /* bitmap wraps */
	expect_parse(&f, -EOVERFLOW, "pc.ram");
	RESET();
	poke64(&f, REC0_FIELDS + 8, STREAM_END - 4); /* bitmap crosses stream end */
	expect_parse(&f, -EOVERFLOW, "pc.ram");
	RESET();
	poke64(&f, REC0_FIELDS + 8, BASE - 1); /* bitmap before the stream */
	expect_parse(&f, -EOVERFLOW, "pc.ram");
	RESET();
	const uint64_t bad_n[] = { 0, 3, 5, 1ull << 61, UINT64_MAX };
	for (size_t i = 0; i < sizeof(bad_n) / sizeof(bad_n[0]); i++) {
		poke64(&f, REC0_FIELDS + 32, bad_n[i]);
		expect_parse(&f, -EBADMSG, "pc.ram");
	}
	RESET();
	/* Last record's hashes cut short, counts consistent. */
	replace_table(&f, orig, tl - 8);
	expect_parse(&f, -ENODATA, "vga.vram");
	/* Name cut short (a 200-byte name in a 50-byte record area). */
	replace_table(&f, orig, REC0 + 50);
	table(&f)[REC0] = 200;
	poke32(&f, 20, 1);
	expect_parse(&f, -ENODATA, "");
	/* Fixed fields cut short. */
	replace_table(&f, orig, REC0 + 7 + 39);
	poke32(&f, 20, 1);
	expect_parse(&f, -ENODATA, "pc.ram");
	/* A record that is fine on its own but whose hashes overrun. */
	replace_table(&f, orig, REC0_CHUNKS + 8);
	poke32(&f, 20, 1);
	expect_parse(&f, -ENODATA, "pc.ram");

	RESET();
	{
		struct mr_trailer *t;

		assert_int_equal(parse_mem(&f.mf, f.len, &t, NULL), 0);
		mr_trailer_free(t);
	}
#undef RESET
	free(orig);
	fixture_fini(&f);
}

static void test_free_null(void **state)
{
	(void)state;
	mr_trailer_free(NULL);
	mr_trailer_builder_free(NULL);
}

/* ---- bounded memory ---- */

/* A file of `size` bytes: `tail` at its end, zeros before (a sparse file). */
struct sparsefile {
	const uint8_t *tail;
	size_t tail_len;
	uint64_t size;
	size_t max_read;
};

static long sparse_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
	struct sparsefile *sp = ctx;
	uint64_t tail_off = sp->size - sp->tail_len;
	size_t n;

	if (len > sp->max_read)
		sp->max_read = len;
	if (off >= sp->size)
		return 0;
	n = sp->size - off < len ? (size_t)(sp->size - off) : len;
	memset(buf, 0, n);
	for (size_t i = 0; i < n; i++)
		if (off + i >= tail_off)
			((uint8_t *)buf)[i] = sp->tail[off + i - tail_off];
	return (long)n;
}

static void test_table_windows(void **state)
{
	/* A 256 MiB table of zeros, correctly hashed: read and hashed in windows. */
	const uint64_t tlen = 256ull << 20;
	uint8_t foot[MR_TRAILER_FOOTER_SIZE];
	uint8_t *zeros = calloc(1, 1 << 20);
	XXH3_state_t *h = XXH3_createState();
	struct sparsefile sp = { foot, sizeof(foot), tlen + sizeof(foot), 0 };
	struct mr_src src = { sparse_pread, &sp, sp.size };
	struct mr_trailer *t = NULL;
	struct mr_err err;

	(void)state;
	assert_non_null(zeros);
	assert_non_null(h);
	XXH3_64bits_reset(h);
	for (uint64_t done = 0; done < tlen; done += 1 << 20)
		XXH3_64bits_update(h, zeros, 1 << 20);
	memcpy(foot, MR_TRAILER_MAGIC, 8);
	mr_put_be32(foot + 8, MR_TRAILER_VERSION);
	mr_put_be32(foot + 12, MR_TRAILER_F_COMPLETE);
	mr_put_be64(foot + 16, 0);
	mr_put_be64(foot + 24, tlen);
	mr_put_be64(foot + 32, XXH3_64bits_digest(h));
	mr_put_be64(foot + 40, XXH3_64bits(foot, 40));
	/* The hash passes; the zero header then has chunk size 0. */
	assert_int_equal(mr_trailer_parse(&src, sp.size, &t, &err), -EBADMSG);
	assert_non_null(strstr(err.msg, "chunk size"));
	assert_null(t);
	assert_true(sp.max_read <= 65536);
	XXH3_freeState(h);
	free(zeros);
}

static void test_lazy_hashes(void **state)
{
	struct fixture f;
	struct mr_trailer *full = NULL, *lazy = NULL;
	struct mr_src src;
	struct mr_err err;

	(void)state;
	fixture_init(&f, 4096);
	src = (struct mr_src){ mem_pread, &f.mf, f.len };
	assert_int_equal(mr_trailer_parse(&src, f.len, &full, &err), 0);
	assert_int_equal(mr_trailer_parse_flags(&src, f.len, MR_TRAILER_NO_HASHES, &lazy, &err), 0);
	assert_int_equal(lazy->n_blocks, 2);
	for (size_t i = 0; i < lazy->n_blocks; i++) {
		struct mr_trailer_block *b = &lazy->blocks[i];

		assert_null(b->chunk_hashes);
		assert_int_equal(b->hashes_off, full->blocks[i].hashes_off);
		assert_int_equal(mr_trailer_load_hashes(&src, b, &err), 0);
		assert_memory_equal(b->chunk_hashes, full->blocks[i].chunk_hashes, b->n_chunks * 8);
		/* Loaded once. */
		assert_int_equal(mr_trailer_load_hashes(&src, b, &err), 0);
	}
	mr_trailer_free(full);

	/* A read failure while loading is reported with the block. */
	lazy->blocks[0].chunk_hashes = (free(lazy->blocks[0].chunk_hashes), NULL);
	f.mf.fail = -EIO;
	assert_int_equal(mr_trailer_load_hashes(&src, &lazy->blocks[0], &err), -EIO);
	assert_string_equal(err.block, "pc.ram");
	assert_null(lazy->blocks[0].chunk_hashes);
	mr_trailer_free(lazy);
	fixture_fini(&f);
}

static void test_locate(void **state)
{
	struct fixture f;
	struct mr_src src;
	struct mr_trailer *t = NULL;
	uint64_t end = 0;
	uint8_t *d;

	(void)state;
	fixture_init(&f, 65536);
	/* Bytes appended after the footer: the table's records still say where it ends. */
	d = realloc(f.data, f.len + 1000);
	assert_non_null(d);
	f.data = d;
	memset(d + f.len, 0xab, 1000);
	f.mf = (struct memfile){ f.data, f.len + 1000, 0, 0 };
	src = (struct mr_src){ mem_pread, &f.mf, f.len + 1000 };
	assert_int_equal(parse_fail(&f.mf, f.len + 1000, NULL), -ENOENT);
	assert_int_equal(mr_trailer_locate(&src, STREAM_END, f.len + 1000, &end), 0);
	assert_int_equal(end, f.len);
	assert_int_equal(mr_trailer_parse(&src, end, &t, NULL), 0);
	mr_trailer_free(t);
	/* Not a table there: wrong offset, too short a file, a record running past it. */
	assert_int_equal(mr_trailer_locate(&src, STREAM_END + 1, f.len + 1000, &end), -ENOENT);
	assert_int_equal(mr_trailer_locate(&src, STREAM_END, STREAM_END + 40, &end), -ENOENT);
	assert_int_equal(mr_trailer_locate(&src, STREAM_END, f.len - 1, &end), -ENOENT);
	poke64(&f, REC0_FIELDS + 32, UINT64_MAX / 4); /* n_chunks */
	assert_int_equal(mr_trailer_locate(&src, STREAM_END, f.len + 1000, &end), -ENOENT);
	fixture_fini(&f);
}

static void test_many_records(void **state)
{
	/* More records than a stream may have blocks: refused before they are allocated. */
	const uint32_t n = MR_MAX_BLOCKS + 1;
	size_t tlen = MR_TRAILER_TABLE_HDR + (size_t)n * 42;
	uint8_t *tab = calloc(1, tlen);
	struct fixture f;

	(void)state;
	assert_non_null(tab);
	fixture_init(&f, 65536);
	memcpy(tab, table(&f), MR_TRAILER_TABLE_HDR);
	mr_put_be32(tab + 20, n);
	replace_table(&f, tab, tlen);
	expect_parse(&f, -EBADMSG, NULL);
	{
		struct mr_err err;

		parse_fail(&f.mf, f.len, &err);
		assert_non_null(strstr(err.msg, "at most 65536"));
	}
	free(tab);
	fixture_fini(&f);
}

/* Sets the footer version of a fixture (after replace_table()) and reseals it. */
static void set_version(struct fixture *f, uint32_t v)
{
	mr_put_be32(f->data + f->len - MR_TRAILER_FOOTER_SIZE + 8, v);
	reseal_footer(f);
}

/* The fixture's table followed by extension records recs/rlen, as version v. */
static void append_ext(struct fixture *f, const uint8_t *recs, size_t rlen, uint32_t v)
{
	size_t tlen = mr_get_be64(f->data + f->len - MR_TRAILER_FOOTER_SIZE + 24);
	uint8_t *tab = malloc(tlen + rlen);

	assert_non_null(tab);
	memcpy(tab, table(f), tlen);
	memcpy(tab + tlen, recs, rlen);
	replace_table(f, tab, tlen + rlen);
	set_version(f, v);
	free(tab);
}

static size_t ext_rec(uint8_t *p, uint32_t tag, const void *data, uint64_t len)
{
	mr_put_be32(p, tag);
	mr_put_be64(p + 4, len);
	memcpy(p + 12, data, (size_t)len);
	return MR_TRAILER_EXT_HDR + (size_t)len;
}

static void test_blob_extension(void **state)
{
	/* Larger than one table window, so the blob is gathered across reads. */
	const size_t blen = 3 * 65536 + 123;
	uint8_t *blob = malloc(blen), recs[64];
	struct mr_buf out = MR_BUF_INIT;
	struct mr_trailer_builder *b;
	struct mr_trailer *t = NULL;
	struct mr_err err;
	struct fixture f;
	struct mr_src src;
	uint64_t end = 0;
	size_t n;

	(void)state;
	assert_non_null(blob);
	fill_random(blob, blen);
	/* Without a blob: version 1, as before. */
	fixture_init(&f, 65536);
	assert_int_equal(parse_mem(&f.mf, f.len, &t, NULL), 0);
	assert_int_equal(t->version, MR_TRAILER_VERSION);
	assert_null(t->blob);
	mr_trailer_free(t);

	/* With one: version 2, returned intact, blocks unchanged; located with bytes after it. */
	b = fixture_builder(&f);
	assert_int_equal(mr_trailer_builder_set_blob(b, blob, 0), -EINVAL);
	assert_int_equal(mr_trailer_builder_set_blob(b, blob, MR_TRAILER_EXT_MAX + 1ul), -EINVAL);
	assert_int_equal(mr_trailer_builder_set_blob(b, blob, blen), 0);
	mr_buf_put(&out, f.data, STREAM_END);
	assert_int_equal(mr_trailer_encode(b, STREAM_END, &out), 0);
	mr_trailer_builder_free(b);
	mr_buf_put(&out, "appended", 8);
	f.mf = (struct memfile){ out.data, out.len, 0, 0 };
	assert_int_equal(parse_mem(&f.mf, out.len - 8, &t, NULL), 0);
	assert_int_equal(t->version, MR_TRAILER_VERSION_EXT);
	assert_int_equal(t->blob_len, blen);
	assert_memory_equal(t->blob, blob, blen);
	assert_int_equal(t->n_blocks, 2);
	assert_non_null(mr_trailer_find_block(t, "vga.vram"));
	mr_trailer_free(t);
	src = (struct mr_src){ mem_pread, &f.mf, out.len };
	assert_int_equal(mr_trailer_locate(&src, STREAM_END, out.len, &end), 0);
	assert_int_equal(end, out.len - 8);
	mr_buf_free(&out);
	f.mf = (struct memfile){ f.data, f.len, 0, 0 };

	/* An unknown record is skipped; the blob after it is found. */
	n = ext_rec(recs, 7, "other", 5);
	n += ext_rec(recs + n, MR_TRAILER_EXT_BLOB, "blob", 4);
	append_ext(&f, recs, n, MR_TRAILER_VERSION_EXT);
	assert_int_equal(parse_mem(&f.mf, f.len, &t, NULL), 0);
	assert_int_equal(t->blob_len, 4);
	assert_memory_equal(t->blob, "blob", 4);
	mr_trailer_free(t);
	fixture_fini(&f);

	/* The same records in a version 1 table are stray bytes. */
	fixture_init(&f, 65536);
	append_ext(&f, recs, n, MR_TRAILER_VERSION);
	assert_int_equal(parse_fail(&f.mf, f.len, &err), -EBADMSG);
	assert_non_null(strstr(err.msg, "stray bytes"));
	fixture_fini(&f);

	/* Two blobs, an empty one, a length past the table, a cut header, version 3. */
	fixture_init(&f, 65536);
	n = ext_rec(recs, MR_TRAILER_EXT_BLOB, "a", 1);
	n += ext_rec(recs + n, MR_TRAILER_EXT_BLOB, "b", 1);
	append_ext(&f, recs, n, MR_TRAILER_VERSION_EXT);
	assert_int_equal(parse_fail(&f.mf, f.len, &err), -EBADMSG);
	assert_non_null(strstr(err.msg, "second trailer blob"));
	fixture_fini(&f);
	fixture_init(&f, 65536);
	append_ext(&f, recs, ext_rec(recs, MR_TRAILER_EXT_BLOB, "", 0), MR_TRAILER_VERSION_EXT);
	assert_int_equal(parse_fail(&f.mf, f.len, &err), -EBADMSG);
	fixture_fini(&f);
	fixture_init(&f, 65536);
	n = ext_rec(recs, MR_TRAILER_EXT_BLOB, "abcd", 4);
	mr_put_be64(recs + 4, 5);
	append_ext(&f, recs, n, MR_TRAILER_VERSION_EXT);
	assert_int_equal(parse_fail(&f.mf, f.len, &err), -ENODATA);
	fixture_fini(&f);
	fixture_init(&f, 65536);
	append_ext(&f, recs, 7, MR_TRAILER_VERSION_EXT);
	assert_int_equal(parse_fail(&f.mf, f.len, &err), -ENODATA);
	set_version(&f, 3);
	assert_int_equal(parse_fail(&f.mf, f.len, &err), -EPROTONOSUPPORT);
	fixture_fini(&f);
	free(blob);
}

int main(void)
{
	/* clang-format off */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_chunk_hash_logical),
		cmocka_unit_test(test_bitmap_hash),
		cmocka_unit_test(test_chunk_geometry),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_round_trip_empty),
		cmocka_unit_test(test_short_reads),
		cmocka_unit_test(test_builder_rejects),
		cmocka_unit_test(test_every_bit_flip),
		cmocka_unit_test(test_truncation),
		cmocka_unit_test(test_no_trailer),
		cmocka_unit_test(test_hostile_footer),
		cmocka_unit_test(test_hostile_table),
		cmocka_unit_test(test_free_null),
		cmocka_unit_test(test_table_windows),
		cmocka_unit_test(test_lazy_hashes),
		cmocka_unit_test(test_locate),
		cmocka_unit_test(test_many_records),
		cmocka_unit_test(test_blob_extension),
	};
	/* clang-format on */

	return cmocka_run_group_tests_name("trailer", tests, NULL, NULL);
}
