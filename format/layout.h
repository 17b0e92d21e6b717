/* SPDX-License-Identifier: MIT */
/*
 * Offset arithmetic of the mapped-ram layout and the page bitmap. Every
 * function that takes values from a file checks for overflow and returns
 * -EOVERFLOW rather than wrapping.
 */
#ifndef MR_LAYOUT_H
#define MR_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MR_PAGE_SIZE	4096u
#define MR_PAGE_SHIFT	12
#define MR_PAGES_ALIGN	0x100000u /* QEMU's writer rounds pages_offset up to 1 MiB */
#define MR_RAM_HDR_SIZE 28u
#define MR_NAME_MAX	255u

/* Where one block's pieces sit in the file; all offsets absolute. */
struct mr_block_layout {
	uint64_t entry_off;   /* u8 name length */
	uint64_t hdr_off;     /* MappedRamHeader */
	uint64_t bitmap_off;  /* = hdr_off + 28 */
	uint64_t bitmap_size; /* bytes, whole 64-bit words */
	uint64_t pages_off;   /* roundup(bitmap end, align) */
	uint64_t length;      /* used_length */
	uint64_t next_off;    /* pages_off + length: next entry or EOS */
};

/* Bytes of bitmap for num_pages pages: ceil(num_pages / 64) * 8. */
uint64_t mr_bitmap_bytes(uint64_t num_pages);

/* Rounds v up to a power-of-two alignment; -EOVERFLOW if it wraps. */
int mr_align_up(uint64_t v, uint64_t align, uint64_t *ret);

/*
 * Lays out a block entry that starts at entry_off with a name of name_len
 * bytes and length bytes of RAM, QEMU's way. align is the page region
 * alignment (MR_PAGES_ALIGN to match QEMU). Returns 0, -EINVAL (length not a
 * page multiple, name too long, bad align) or -EOVERFLOW.
 */
int mr_layout_block(uint64_t entry_off, size_t name_len, uint64_t length, uint64_t align,
		    struct mr_block_layout *ret);

/*
 * As mr_layout_block(), with at least `room` bytes of padding between the
 * bitmap and the page region (snapsave's marker); the region then moves on by
 * one alignment step when QEMU's layout would leave less.
 */
int mr_layout_block_room(uint64_t entry_off, size_t name_len, uint64_t length, uint64_t align,
			 uint64_t room, struct mr_block_layout *ret);

/* Bitmap of host 64-bit words, bit i of word i/64 = page i (LSB first). */
static inline bool mr_bit_test(const uint64_t *map, uint64_t i)
{
	return (map[i >> 6] >> (i & 63)) & 1;
}

static inline void mr_bit_set(uint64_t *map, uint64_t i)
{
	map[i >> 6] |= (uint64_t)1 << (i & 63);
}

/* Number of set bits among the first nbits. */
uint64_t mr_bitmap_count(const uint64_t *map, uint64_t nbits);

/*
 * Finds the next run of bits equal to `set` in [start, end): returns the
 * first index of the run (end if none) and stores its end in *run_end.
 */
uint64_t mr_bitmap_next_run(const uint64_t *map, uint64_t start, uint64_t end, bool set,
			    uint64_t *run_end);

/* Encodes/decodes the file form: little-endian 64-bit words (see format doc 5.4). */
void mr_bitmap_to_file(const uint64_t *map, uint64_t words, uint8_t *out);
void mr_bitmap_from_file(const uint8_t *in, uint64_t words, uint64_t *map);

/* True if bits at index >= nbits in the last word are all zero. */
bool mr_bitmap_tail_clear(const uint64_t *map, uint64_t nbits);

#endif
