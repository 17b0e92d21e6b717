// SPDX-License-Identifier: MIT
/*
 * Unit tests for format/layout.c: offset arithmetic checked against the
 * QEMU 10.0.2 file of the format doc (section 11), overflow handling, and
 * the page bitmap helpers against naive references.
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

#include "layout.h"

static void test_bitmap_bytes(void **state)
{
	(void)state;
	assert_int_equal(mr_bitmap_bytes(0), 0);
	assert_int_equal(mr_bitmap_bytes(1), 8);
	assert_int_equal(mr_bitmap_bytes(63), 8);
	assert_int_equal(mr_bitmap_bytes(64), 8);
	assert_int_equal(mr_bitmap_bytes(65), 16);
	assert_int_equal(mr_bitmap_bytes(128), 16);
	assert_int_equal(mr_bitmap_bytes(129), 24);
	assert_int_equal(mr_bitmap_bytes(65536), 0x2000);
	/* The largest page count a uint64_t length can describe. */
	assert_int_equal(mr_bitmap_bytes(UINT64_MAX / MR_PAGE_SIZE), (uint64_t)1 << 49);
}

static void test_align_up(void **state)
{
	uint64_t v;

	(void)state;
	assert_int_equal(mr_align_up(0, 4096, &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(mr_align_up(1, 4096, &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(mr_align_up(4096, 4096, &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(mr_align_up(4097, 4096, &v), 0);
	assert_int_equal(v, 8192);
	assert_int_equal(mr_align_up(0x2089, MR_PAGES_ALIGN, &v), 0);
	assert_int_equal(v, 0x100000);
	assert_int_equal(mr_align_up(12345, 1, &v), 0);
	assert_int_equal(v, 12345);
	assert_int_equal(mr_align_up(UINT64_MAX, 1, &v), 0);
	assert_int_equal(v, UINT64_MAX);
	/* The last aligned value is reachable, one past it is not. */
	assert_int_equal(mr_align_up(UINT64_MAX - 4095, 4096, &v), 0);
	assert_int_equal(v, UINT64_MAX - 4095);
	assert_int_equal(mr_align_up((uint64_t)1 << 63, (uint64_t)1 << 63, &v), 0);
	assert_int_equal(v, (uint64_t)1 << 63);

	v = 42;
	assert_int_equal(mr_align_up(UINT64_MAX - 4094, 4096, &v), -EOVERFLOW);
	assert_int_equal(mr_align_up(UINT64_MAX, 2, &v), -EOVERFLOW);
	assert_int_equal(mr_align_up(((uint64_t)1 << 63) + 1, (uint64_t)1 << 63, &v), -EOVERFLOW);
	assert_int_equal(mr_align_up(1, 0, &v), -EINVAL);
	assert_int_equal(mr_align_up(1, 3, &v), -EINVAL);
	assert_int_equal(mr_align_up(1, 6000, &v), -EINVAL);
	assert_int_equal(v, 42); /* untouched on failure */
}

/* One row of the table in section 11 of the format doc. */
struct example_block {
	uint64_t entry;
	const char *name;
	uint64_t length;
	uint64_t hdr;
	uint64_t bitmap;
	uint64_t bitmap_size;
	uint64_t pages;
	uint64_t next;
};

static const struct example_block example[] = {
	{ 0x60, "ram0", 0x10000000, 0x6D, 0x89, 0x2000, 0x100000, 0x10100000 },
	{ 0x10100000, "0000:00:01.0/vga.vram", 0x1000000, 0x1010001E, 0x1010003A, 0x200, 0x10200000,
	  0x11200000 },
	{ 0x11200000, "/rom@etc/acpi/tables", 0x20000, 0x1120001D, 0x11200039, 8, 0x11300000,
	  0x11320000 },
	{ 0x11320000, "pc.bios", 0x40000, 0x11320010, 0x1132002C, 8, 0x11400000, 0x11440000 },
	{ 0x11440000, "0000:00:02.0/e1000e.rom", 0x40000, 0x11440020, 0x1144003C, 8, 0x11500000,
	  0x11540000 },
	{ 0x11540000, "pc.rom", 0x20000, 0x1154000F, 0x1154002B, 8, 0x11600000, 0x11620000 },
	{ 0x11620000, "0000:00:01.0/vga.rom", 0x10000, 0x1162001D, 0x11620039, 8, 0x11700000,
	  0x11710000 },
	{ 0x11710000, "/rom@etc/table-loader", 0x1000, 0x1171001E, 0x1171003A, 8, 0x11800000,
	  0x11801000 },
	{ 0x11801000, "/rom@etc/acpi/rsdp", 0x1000, 0x1180101B, 0x11801037, 8, 0x11900000,
	  0x11901000 },
};

#define N_EXAMPLE (sizeof(example) / sizeof(example[0]))

static void test_layout_worked_example(void **state)
{
	uint64_t entry = 0x60, total = 0;

	(void)state;
	for (size_t i = 0; i < N_EXAMPLE; i++) {
		const struct example_block *e = &example[i];
		struct mr_block_layout l;

		/* Chained: each entry starts where the previous page region ends. */
		assert_int_equal(entry, e->entry);
		assert_int_equal(
			mr_layout_block(entry, strlen(e->name), e->length, MR_PAGES_ALIGN, &l), 0);
		assert_int_equal(l.entry_off, e->entry);
		assert_int_equal(l.hdr_off, e->hdr);
		assert_int_equal(l.bitmap_off, e->bitmap);
		assert_int_equal(l.bitmap_off, l.hdr_off + MR_RAM_HDR_SIZE);
		assert_int_equal(l.bitmap_size, e->bitmap_size);
		assert_int_equal(l.pages_off, e->pages);
		assert_int_equal(l.length, e->length);
		assert_int_equal(l.next_off, e->next);
		entry = l.next_off;
		total += e->length;
	}
	/* EOS of the RAM START sits right after the last block. */
	assert_int_equal(entry, 0x11901000);
	assert_int_equal(total, 0x110D2000);
}

static void test_layout_small_align(void **state)
{
	struct mr_block_layout l;

	(void)state;
	/* 4 KiB alignment, as the loader allows (format doc 10). */
	assert_int_equal(mr_layout_block(0x60, 4, 3 * 4096, MR_PAGE_SIZE, &l), 0);
	assert_int_equal(l.hdr_off, 0x6D);
	assert_int_equal(l.bitmap_off, 0x89);
	assert_int_equal(l.bitmap_size, 8);
	assert_int_equal(l.pages_off, 0x1000);
	assert_int_equal(l.next_off, 0x4000);

	/* A bitmap ending exactly on the boundary is not pushed further. */
	assert_int_equal(mr_layout_block(4096 - 8 - 28 - 8 - 1 - 3, 3, 4096, MR_PAGE_SIZE, &l), 0);
	assert_int_equal(l.bitmap_off + l.bitmap_size, 4096);
	assert_int_equal(l.pages_off, 4096);

	/* Empty name and zero length are legal arithmetic. */
	assert_int_equal(mr_layout_block(0, 0, 0, MR_PAGE_SIZE, &l), 0);
	assert_int_equal(l.hdr_off, 9);
	assert_int_equal(l.bitmap_off, 37);
	assert_int_equal(l.bitmap_size, 0);
	assert_int_equal(l.pages_off, 4096);
	assert_int_equal(l.next_off, 4096);

	/* 255-byte name is the maximum. */
	assert_int_equal(mr_layout_block(0, 255, 4096, MR_PAGES_ALIGN, &l), 0);
	assert_int_equal(l.hdr_off, 264);
}

static void test_layout_einval(void **state)
{
	struct mr_block_layout l;

	(void)state;
	memset(&l, 0xa5, sizeof(l));
	assert_int_equal(mr_layout_block(0x60, 256, 4096, MR_PAGES_ALIGN, &l), -EINVAL);
	assert_int_equal(mr_layout_block(0x60, 4, 4095, MR_PAGES_ALIGN, &l), -EINVAL);
	assert_int_equal(mr_layout_block(0x60, 4, 4097, MR_PAGES_ALIGN, &l), -EINVAL);
	assert_int_equal(mr_layout_block(0x60, 4, 4096, 2048, &l), -EINVAL);
	assert_int_equal(mr_layout_block(0x60, 4, 4096, 0, &l), -EINVAL);
	assert_int_equal(mr_layout_block(0x60, 4, 4096, 4096 * 3, &l), -EINVAL);
	/* ret_* is written only on success. */
	assert_int_equal(l.entry_off, 0xa5a5a5a5a5a5a5a5ull);
	assert_int_equal(l.next_off, 0xa5a5a5a5a5a5a5a5ull);
}

static void test_layout_overflow(void **state)
{
	const uint64_t huge = UINT64_MAX & ~(uint64_t)(MR_PAGE_SIZE - 1);
	struct mr_block_layout l;

	(void)state;
	memset(&l, 0x5a, sizeof(l));
	/* header offset wraps */
	assert_int_equal(mr_layout_block(UINT64_MAX - 5, 4, 4096, MR_PAGE_SIZE, &l), -EOVERFLOW);
	assert_int_equal(mr_layout_block(UINT64_MAX, 0, 0, MR_PAGE_SIZE, &l), -EOVERFLOW);
	/* bitmap offset wraps (header fits) */
	assert_int_equal(mr_layout_block(UINT64_MAX - 13 - 20, 4, 4096, MR_PAGE_SIZE, &l),
			 -EOVERFLOW);
	/* bitmap end wraps */
	assert_int_equal(mr_layout_block(UINT64_MAX - 13 - 28 - 4, 4, 4096, MR_PAGE_SIZE, &l),
			 -EOVERFLOW);
	/* rounding up the page region offset wraps */
	assert_int_equal(mr_layout_block(UINT64_MAX - 0x1000, 4, 0, MR_PAGE_SIZE, &l), -EOVERFLOW);
	assert_int_equal(mr_layout_block(UINT64_MAX - 0x100000, 4, 4096, MR_PAGES_ALIGN, &l),
			 -EOVERFLOW);
	/* page region end wraps: huge length */
	assert_int_equal(mr_layout_block(0x60, 4, huge, MR_PAGES_ALIGN, &l), -EOVERFLOW);
	assert_int_equal(mr_layout_block((uint64_t)1 << 63, 4, (uint64_t)1 << 63, MR_PAGE_SIZE, &l),
			 -EOVERFLOW);
	assert_int_equal(l.hdr_off, 0x5a5a5a5a5a5a5a5aull);

	/* Large but representable: a 2^63-byte block. */
	assert_int_equal(mr_layout_block(0, 4, (uint64_t)1 << 63, MR_PAGE_SIZE, &l), 0);
	assert_int_equal(l.bitmap_size, (uint64_t)1 << 48);
	assert_int_equal(l.pages_off, ((uint64_t)1 << 48) + 0x1000);
	assert_int_equal(l.next_off, ((uint64_t)1 << 63) + ((uint64_t)1 << 48) + 0x1000);

	/*
	 * Shifting the entry by a multiple of 4096 shifts every offset by the
	 * same amount: place a page region to end exactly at 2^64 (wraps) and
	 * one page below it (fits).
	 */
	struct mr_block_layout base;
	uint64_t delta;

	assert_int_equal(mr_layout_block(0, 4, (uint64_t)3 << 62, MR_PAGE_SIZE, &base), 0);
	delta = 0 - base.next_off;
	assert_int_equal(delta % MR_PAGE_SIZE, 0);
	assert_int_equal(mr_layout_block(delta, 4, (uint64_t)3 << 62, MR_PAGE_SIZE, &l),
			 -EOVERFLOW);
	assert_int_equal(mr_layout_block(delta - 4096, 4, (uint64_t)3 << 62, MR_PAGE_SIZE, &l), 0);
	assert_int_equal(l.next_off, UINT64_MAX - 4095);
	assert_int_equal(l.pages_off, base.pages_off + delta - 4096);
}

static void test_bit_order(void **state)
{
	uint64_t map[3] = { 0 };
	uint8_t out[24], back_bytes[24];
	uint64_t back[3];

	(void)state;
	/* page i <-> byte i/8, bit i%8, least significant bit first */
	mr_bit_set(map, 0);
	mr_bit_set(map, 9);
	mr_bit_set(map, 63);
	mr_bit_set(map, 64);
	mr_bit_set(map, 130);
	mr_bit_set(map, 191);
	mr_bitmap_to_file(map, 3, out);

	const uint8_t want[24] = {
		0x01, 0x02, 0, 0, 0, 0, 0, 0x80, /* pages 0, 9, 63 */
		0x01, 0,    0, 0, 0, 0, 0, 0,	 /* page 64 */
		0x04, 0,    0, 0, 0, 0, 0, 0x80, /* pages 130, 191 */
	};

	assert_memory_equal(out, want, sizeof(want));
	for (uint64_t i = 0; i < 192; i++)
		assert_int_equal(mr_bit_test(map, i), (out[i / 8] >> (i % 8)) & 1);

	mr_bitmap_from_file(want, 3, back);
	assert_memory_equal(back, map, sizeof(map));

	/* The example file: bytes 0x89..0x888 all 0xFF, byte 0xD09 = 0x01. */
	uint64_t *ram0 = calloc(1024, sizeof(uint64_t));
	uint8_t *file = malloc(0x2000);

	assert_non_null(ram0);
	assert_non_null(file);
	for (uint64_t i = 0; i < 16384; i++)
		mr_bit_set(ram0, i);
	mr_bit_set(ram0, 25600);
	mr_bitmap_to_file(ram0, 1024, file);
	for (size_t i = 0; i < 0x800; i++)
		assert_int_equal(file[i], 0xff);
	for (size_t i = 0x800; i < 0x2000; i++)
		assert_int_equal(file[i], i == 3200 ? 0x01 : 0);
	assert_int_equal(mr_bitmap_count(ram0, 65536), 16385);
	free(file);
	free(ram0);

	/* Decoding arbitrary bytes and re-encoding gives the same bytes. */
	for (size_t i = 0; i < sizeof(back_bytes); i++)
		back_bytes[i] = (uint8_t)(i * 37 + 11);
	mr_bitmap_from_file(back_bytes, 3, back);
	mr_bitmap_to_file(back, 3, out);
	assert_memory_equal(out, back_bytes, sizeof(out));
	assert_int_equal(back[0] & 0xff, back_bytes[0]);
	assert_int_equal(back[0] >> 56, back_bytes[7]);
}

/* xorshift64*: reproducible without libc's rand(). */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

/* Random words biased to produce long runs, all-zero and all-one words. */
static void random_bitmap(uint64_t *map, size_t words, uint64_t *seed)
{
	for (size_t i = 0; i < words; i++) {
		switch (rng_next(seed) % 5) {
		case 0: map[i] = 0; break;
		case 1: map[i] = UINT64_MAX; break;
		case 2: map[i] = rng_next(seed); break;
		case 3: /* one boundary inside the word */
			map[i] = UINT64_MAX << (rng_next(seed) % 64);
			break;
		default: map[i] = UINT64_MAX >> (rng_next(seed) % 64); break;
		}
	}
}

static bool naive_test(const uint64_t *map, uint64_t i)
{
	return (map[i / 64] >> (i % 64)) & 1;
}

static uint64_t naive_count(const uint64_t *map, uint64_t nbits)
{
	uint64_t n = 0;

	for (uint64_t i = 0; i < nbits; i++)
		n += naive_test(map, i);
	return n;
}

static uint64_t naive_next_run(const uint64_t *map, uint64_t start, uint64_t end, bool set,
			       uint64_t *run_end)
{
	uint64_t i = start, first;

	while (i < end && naive_test(map, i) != set)
		i++;
	first = i;
	while (i < end && naive_test(map, i) == set)
		i++;
	*run_end = i;
	return first;
}

static void test_bitmap_count(void **state)
{
	uint64_t map[8], seed = 0x1234567;

	(void)state;
	memset(map, 0xff, sizeof(map));
	assert_int_equal(mr_bitmap_count(map, 0), 0);
	assert_int_equal(mr_bitmap_count(map, 1), 1);
	assert_int_equal(mr_bitmap_count(map, 63), 63);
	assert_int_equal(mr_bitmap_count(map, 64), 64);
	assert_int_equal(mr_bitmap_count(map, 65), 65);
	assert_int_equal(mr_bitmap_count(map, 512), 512);
	for (int iter = 0; iter < 2000; iter++) {
		uint64_t nbits = rng_next(&seed) % 513;

		random_bitmap(map, 8, &seed);
		assert_int_equal(mr_bitmap_count(map, nbits), naive_count(map, nbits));
	}
}

static void check_runs(const uint64_t *map, uint64_t start, uint64_t end, bool set)
{
	uint64_t i = start;

	/* Walk the whole range run by run, as the restore pipeline does. */
	for (;;) {
		uint64_t got_end = 0xdead, want_end;
		uint64_t got = mr_bitmap_next_run(map, i, end, set, &got_end);
		uint64_t want = naive_next_run(map, i, end, set, &want_end);

		assert_int_equal(got, want);
		if (want >= end) {
			assert_int_equal(got, end);
			assert_int_equal(got_end, end);
			break;
		}
		assert_int_equal(got_end, want_end);
		assert_true(got_end > got);
		i = got_end;
	}
}

static void test_bitmap_next_run(void **state)
{
	uint64_t map[6], seed = 0xfeedface;

	(void)state;
	/* Hand-made: a set run that crosses two word boundaries. */
	memset(map, 0, sizeof(map));
	for (uint64_t i = 60; i < 200; i++)
		mr_bit_set(map, i);
	uint64_t e, s = mr_bitmap_next_run(map, 0, 384, true, &e);

	assert_int_equal(s, 60);
	assert_int_equal(e, 200);
	s = mr_bitmap_next_run(map, 0, 384, false, &e);
	assert_int_equal(s, 0);
	assert_int_equal(e, 60);
	s = mr_bitmap_next_run(map, 200, 384, false, &e);
	assert_int_equal(s, 200);
	assert_int_equal(e, 384);
	s = mr_bitmap_next_run(map, 200, 384, true, &e);
	assert_int_equal(s, 384);
	assert_int_equal(e, 384);
	/* Clipped by end inside a run, starting inside a run. */
	s = mr_bitmap_next_run(map, 100, 128, true, &e);
	assert_int_equal(s, 100);
	assert_int_equal(e, 128);
	/* Empty range. */
	s = mr_bitmap_next_run(map, 70, 70, true, &e);
	assert_int_equal(s, 70);
	assert_int_equal(e, 70);
	/* Bits set past `end` are ignored. */
	s = mr_bitmap_next_run(map, 0, 60, true, &e);
	assert_int_equal(s, 60);
	assert_int_equal(e, 60);
	/* All ones / all zeros over several words. */
	memset(map, 0xff, sizeof(map));
	s = mr_bitmap_next_run(map, 3, 383, true, &e);
	assert_int_equal(s, 3);
	assert_int_equal(e, 383);
	s = mr_bitmap_next_run(map, 3, 383, false, &e);
	assert_int_equal(s, 383);
	assert_int_equal(e, 383);

	for (int iter = 0; iter < 5000; iter++) {
		uint64_t end = rng_next(&seed) % 385;
		uint64_t start = end ? rng_next(&seed) % (end + 1) : 0;

		random_bitmap(map, 6, &seed);
		check_runs(map, start, end, true);
		check_runs(map, start, end, false);
	}
}

static void test_bitmap_tail_clear(void **state)
{
	uint64_t map[2] = { UINT64_MAX, 0 };

	(void)state;
	assert_true(mr_bitmap_tail_clear(map, 64));
	assert_true(mr_bitmap_tail_clear(map, 128));
	assert_true(mr_bitmap_tail_clear(map, 65));
	map[1] = 1;
	assert_true(mr_bitmap_tail_clear(map, 65));
	map[1] = 2;
	assert_false(mr_bitmap_tail_clear(map, 65));
	map[1] = (uint64_t)1 << 63;
	assert_false(mr_bitmap_tail_clear(map, 127));
	assert_true(mr_bitmap_tail_clear(map, 128));
	map[0] = (uint64_t)1 << 3;
	assert_true(mr_bitmap_tail_clear(map, 4));
	assert_false(mr_bitmap_tail_clear(map, 3));
	assert_false(mr_bitmap_tail_clear(map, 1));
	map[0] = 0;
	assert_true(mr_bitmap_tail_clear(map, 0));
	assert_true(mr_bitmap_tail_clear(map, 1));
}

int main(void)
{
	const struct CMUnitTest layout_tests[] = {
		cmocka_unit_test(test_bitmap_bytes),
		cmocka_unit_test(test_align_up),
		cmocka_unit_test(test_layout_worked_example),
		cmocka_unit_test(test_layout_small_align),
		cmocka_unit_test(test_layout_einval),
		cmocka_unit_test(test_layout_overflow),
		cmocka_unit_test(test_bit_order),
		cmocka_unit_test(test_bitmap_count),
		cmocka_unit_test(test_bitmap_next_run),
		cmocka_unit_test(test_bitmap_tail_clear),
	};

	return cmocka_run_group_tests_name("layout", layout_tests, NULL, NULL);
}
