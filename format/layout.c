// SPDX-License-Identifier: MIT
/* Offset arithmetic and bitmap helpers for the mapped-ram layout. */
#include "layout.h"
#include "be.h"

#include <errno.h>

uint64_t mr_bitmap_bytes(uint64_t num_pages)
{
	/* num_pages <= 2^52 for any length that fits uint64_t, so no wrap. */
	return ((num_pages + 63) / 64) * 8;
}

int mr_align_up(uint64_t v, uint64_t align, uint64_t *ret)
{
	uint64_t r;

	if (!align || (align & (align - 1)))
		return -EINVAL;
	if (__builtin_add_overflow(v, align - 1, &r))
		return -EOVERFLOW;
	*ret = r & ~(align - 1);
	return 0;
}

int mr_layout_block(uint64_t entry_off, size_t name_len, uint64_t length, uint64_t align,
		    struct mr_block_layout *ret)
{
	return mr_layout_block_room(entry_off, name_len, length, align, 0, ret);
}

int mr_layout_block_room(uint64_t entry_off, size_t name_len, uint64_t length, uint64_t align,
			 uint64_t room, struct mr_block_layout *ret)
{
	struct mr_block_layout l;
	uint64_t bitmap_end, min_pages;
	int r;

	if (name_len > MR_NAME_MAX || (length % MR_PAGE_SIZE) || align < MR_PAGE_SIZE)
		return -EINVAL;
	l.entry_off = entry_off;
	l.length = length;
	/* u8 len + name + be64 length */
	if (__builtin_add_overflow(entry_off, 1 + name_len + 8, &l.hdr_off) ||
	    __builtin_add_overflow(l.hdr_off, MR_RAM_HDR_SIZE, &l.bitmap_off))
		return -EOVERFLOW;
	l.bitmap_size = mr_bitmap_bytes(length / MR_PAGE_SIZE);
	if (__builtin_add_overflow(l.bitmap_off, l.bitmap_size, &bitmap_end) ||
	    __builtin_add_overflow(bitmap_end, room, &min_pages))
		return -EOVERFLOW;
	r = mr_align_up(min_pages, align, &l.pages_off);
	if (r < 0)
		return r;
	if (__builtin_add_overflow(l.pages_off, length, &l.next_off))
		return -EOVERFLOW;
	*ret = l;
	return 0;
}

uint64_t mr_bitmap_count(const uint64_t *map, uint64_t nbits)
{
	uint64_t n = 0, full = nbits / 64;

	for (uint64_t i = 0; i < full; i++)
		n += (uint64_t)__builtin_popcountll(map[i]);
	if (nbits & 63)
		n += (uint64_t)__builtin_popcountll(map[full] &
						    (((uint64_t)1 << (nbits & 63)) - 1));
	return n;
}

uint64_t mr_bitmap_next_run(const uint64_t *map, uint64_t start, uint64_t end, bool set,
			    uint64_t *run_end)
{
	uint64_t i = start;

	/* Skip bits that are not `set`, a word at a time where possible. */
	while (i < end) {
		uint64_t w = map[i >> 6];

		if (!set)
			w = ~w;
		w >>= (i & 63);
		if (w) {
			i += (uint64_t)__builtin_ctzll(w);
			break;
		}
		i = (i | 63) + 1;
	}
	if (i >= end) {
		*run_end = end;
		return end;
	}
	uint64_t first = i;

	while (i < end) {
		uint64_t w = map[i >> 6];

		if (set)
			w = ~w;
		w >>= (i & 63);
		if (w) {
			i += (uint64_t)__builtin_ctzll(w);
			break;
		}
		i = (i | 63) + 1;
	}
	*run_end = i < end ? i : end;
	return first;
}

void mr_bitmap_to_file(const uint64_t *map, uint64_t words, uint8_t *out)
{
	for (uint64_t i = 0; i < words; i++)
		mr_put_le64(out + i * 8, map[i]);
}

void mr_bitmap_from_file(const uint8_t *in, uint64_t words, uint64_t *map)
{
	for (uint64_t i = 0; i < words; i++)
		map[i] = mr_get_le64(in + i * 8);
}

bool mr_bitmap_tail_clear(const uint64_t *map, uint64_t nbits)
{
	if (!(nbits & 63))
		return true;
	return !(map[nbits / 64] >> (nbits & 63));
}
