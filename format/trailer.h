/* SPDX-License-Identifier: MIT */
/*
 * snapmr's integrity trailer: per-chunk XXH3-64 hashes of every RAM block's
 * logical contents, its bitmap and the device state, appended after the QEMU
 * stream and found from a fixed-size footer in the last bytes of the file.
 */
#ifndef MR_TRAILER_H
#define MR_TRAILER_H

#include "buf.h"
#include "reader.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * File layout. QEMU's loader stops after the VMDESCRIPTION record (or the EOF
 * byte), so bytes after the stream are never read and the file stays loadable
 * by QEMU 10:
 *
 *	[stream_base .. stream_end)	QEMU stream (header .. EOF, VMDESCRIPTION)
 *	[stream_end .. +table_length)	table
 *	[file_size - 48 .. file_size)	footer
 *
 * All integers are big-endian. Hashes are XXH3-64 with seed 0.
 *
 * Footer, 48 bytes, the last bytes of the file:
 *	+0	8	magic "SNAPMRT1"
 *	+8	be32	version: 1, or 2 when the table has extension records
 *	+12	be32	flags: bit 0 COMPLETE (required); other bits zero
 *	+16	be64	table_offset, absolute; equals stream_end
 *	+24	be64	table_length; table_offset + table_length = file_size - 48
 *	+32	be64	XXH3-64 of the table_length table bytes
 *	+40	be64	XXH3-64 of footer bytes +0..+39
 *
 * Table header, 48 bytes:
 *	+0	be64	stream_base: offset of the QEMU stream's "QEVM"
 *	+8	be64	stream_end: first byte after the stream (= table_offset)
 *	+16	be32	chunk_size: power of two, 4096 .. 2^30
 *	+20	be32	n_blocks
 *	+24	be64	devstate_offset \ byte range of the device state inside
 *	+32	be64	devstate_length / [stream_base, stream_end)
 *	+40	be64	XXH3-64 of those devstate_length bytes
 * then n_blocks block records, back to back, nothing after the last:
 *	+0	u8	n, 1..255
 *	+1	n	RAM block name, no NUL, unique in the table
 *	+1+n	be64	length: used_length, a multiple of 4096
 *	+9+n	be64	bitmap_offset; bitmap is ceil(length/4096/64)*8 bytes
 *	+17+n	be64	pages_offset, a multiple of 4096
 *	+25+n	be64	XXH3-64 of the bitmap's bytes as stored in the file
 *	+33+n	be64	n_chunks = ceil(length / chunk_size)
 *	+41+n	8*k	k = n_chunks XXH3-64 chunk hashes
 * Bitmap and page region must lie inside [stream_base, stream_end).
 * Version 2 only: extension records after the last block record, back to
 * back up to the table's end (a version 1 table ends with its last block):
 *	+0	be32	tag: 1 BLOB (opaque bytes for the writer's tool, at most
 *			once); other tags are skipped; never 0x534E4150 ("SNAP",
 *			so that mr_trailer_locate() tells a record from the footer)
 *	+4	be64	length, at most MR_TRAILER_EXT_MAX
 *	+12	length	bytes
 * They are covered by the table hash. The writer uses version 2 only when it
 * has an extension to store, so files without one stay readable by version 1
 * readers.
 *
 * Chunk i of a block covers pages [i*chunk_size/4096, (i+1)*chunk_size/4096)
 * clipped to the block (the last chunk may be shorter). Its hash is taken over
 * the block's LOGICAL contents: a page whose bitmap bit is clear counts as
 * 4096 zero bytes, whatever the file holds there (a hole, or stale bytes of a
 * live save). The hash therefore does not depend on holes, and the bitmap
 * hash catches a flipped bit that would turn a zero page into a stored one.
 *
 * The 64 KiB default chunk matches the save and restore I/O granularity (runs
 * of up to 1 MiB are split into 64 KiB pieces cheaply, and a chunk is hashed
 * while it is still in cache), costs 8 bytes per 64 KiB (0.012 %), and
 * localizes a mismatch to 16 pages.
 *
 * Commit rule: the footer is written last, after the table, and both only
 * after the stream itself is complete. The writer truncates the file before
 * a save (as QEMU does), so a save that crashes before the footer is in place
 * ends in bytes that are not a footer and reads as "no trailer"; a torn table
 * under a present footer fails the table hash; a torn footer fails its own
 * hash or magic. To make a crash always read as "no trailer", write the
 * table, fdatasync, then the footer, fdatasync. The footer's COMPLETE flag is
 * the completion record: the encoder always sets it, and a reader treats a
 * footer without it as no trailer (a tool can clear it, rehashing the footer,
 * to invalidate a trailer in place before it edits the file).
 *
 * The version is checked before the footer hash, so a future footer layout
 * reads as unsupported rather than corrupt. A damaged magic is
 * indistinguishable from a file without a trailer (-ENOENT); every other
 * damage to the trailer is caught by the two hashes.
 *
 * Decoding errors: -ENOENT no trailer (no footer magic in the last 48 bytes,
 * file shorter than 48 bytes, or COMPLETE clear); -EPROTONOSUPPORT footer
 * version not 1 or 2; -EBADMSG bad footer or table hash, reserved flag, value or
 * name not allowed, inconsistent counts, table not directly before the footer;
 * -ENODATA a table record runs past the table's end, or the source returned
 * fewer bytes than file_size promised; -EOVERFLOW an offset or length that
 * wraps or points outside the file or stream; -ENOMEM; other -errno from the
 * source's pread.
 */

#define MR_TRAILER_MAGIC	 "SNAPMRT1"
#define MR_TRAILER_VERSION	 1u
#define MR_TRAILER_VERSION_EXT	 2u /* the table may have extension records */
#define MR_TRAILER_EXT_BLOB	 1u
#define MR_TRAILER_EXT_HDR	 12u
#define MR_TRAILER_EXT_MAX	 (16u << 20)
#define MR_TRAILER_F_COMPLETE	 0x1u
#define MR_TRAILER_FOOTER_SIZE	 48u
#define MR_TRAILER_TABLE_HDR	 48u
#define MR_TRAILER_CHUNK_DEFAULT 65536u
#define MR_TRAILER_CHUNK_MIN	 4096u
#define MR_TRAILER_CHUNK_MAX	 (1u << 30)

/* Number of chunk_size chunks that cover length bytes. */
static inline uint64_t mr_trailer_chunks(uint64_t length, uint32_t chunk_size)
{
	return length / chunk_size + (length % chunk_size != 0);
}

/*
 * Pages covered by chunk idx (< mr_trailer_chunks()) of a block of length
 * bytes: stores the first page index and the page count.
 */
static inline void mr_trailer_chunk_pages(uint64_t length, uint32_t chunk_size, uint64_t idx,
					  uint64_t *ret_first, uint64_t *ret_npages)
{
	uint64_t per = chunk_size / MR_PAGE_SIZE, pages = length / MR_PAGE_SIZE, first = idx * per;

	*ret_first = first;
	*ret_npages = pages - first < per ? pages - first : per;
}

/*
 * XXH3-64 of npages pages of a block starting at page first_page, whose bytes
 * are at data (page j of the chunk at data + j * 4096). bitmap is the block's
 * whole bitmap in host words (bit i of word i/64 = page i), or NULL when every
 * page is present. Pages whose bit is clear hash as zeros and their bytes are
 * not read; data may be NULL if no bit in the range is set. Thread-safe.
 */
uint64_t mr_trailer_chunk_hash(const void *data, const uint64_t *bitmap, uint64_t first_page,
			       uint64_t npages);

/*
 * XXH3-64 of a bitmap's file form (little-endian words, format doc 5.4):
 * ceil(num_pages / 64) host words from map, hashed as they would be stored.
 */
uint64_t mr_trailer_bitmap_hash(const uint64_t *map, uint64_t num_pages);

/*
 * Builder, used by the writer. Add every block first (single-threaded); then
 * mr_trailer_builder_set_chunk() calls on distinct (block, chunk) pairs may
 * run concurrently without locks. The other setters are single-threaded.
 */
struct mr_trailer_builder;

/*
 * chunk_size 0 means MR_TRAILER_CHUNK_DEFAULT. Returns 0 and a builder the
 * caller frees with mr_trailer_builder_free(), -EINVAL for a bad chunk_size,
 * or -ENOMEM.
 */
int mr_trailer_builder_new(uint64_t stream_base, uint32_t chunk_size,
			   struct mr_trailer_builder **ret);
void mr_trailer_builder_free(struct mr_trailer_builder *b);
uint32_t mr_trailer_builder_chunk_size(const struct mr_trailer_builder *b);

/*
 * Declares a block (offsets absolute, as in its MappedRamHeader); its
 * n_chunks hash slots start unset. Stores the block's index for the setters.
 * Returns 0, -EINVAL (name empty, longer than 255 or duplicate, length or
 * pages_offset not a multiple of 4096, range wraps) or -ENOMEM. name is
 * copied.
 */
int mr_trailer_builder_add_block(struct mr_trailer_builder *b, const char *name, uint64_t length,
				 uint64_t bitmap_offset, uint64_t pages_offset, size_t *ret_index);

/* Records chunk `chunk` of block `block` (both asserted in range). */
void mr_trailer_builder_set_chunk(struct mr_trailer_builder *b, size_t block, uint64_t chunk,
				  uint64_t hash);
/* True once chunk `chunk` of block `block` has been set. */
bool mr_trailer_builder_chunk_is_set(const struct mr_trailer_builder *b, size_t block,
				     uint64_t chunk);
/* Records the hash of a block's bitmap (mr_trailer_bitmap_hash()). */
void mr_trailer_builder_set_bitmap_hash(struct mr_trailer_builder *b, size_t block, uint64_t hash);
/* Records the device-state range and its XXH3-64. */
void mr_trailer_builder_set_devstate(struct mr_trailer_builder *b, uint64_t offset, uint64_t length,
				     uint64_t hash);
/*
 * Stores len bytes (copied; 1..MR_TRAILER_EXT_MAX) as the table's BLOB
 * extension record, which makes the footer version 2. Returns 0, -EINVAL
 * or -ENOMEM.
 */
int mr_trailer_builder_set_blob(struct mr_trailer_builder *b, const void *data, size_t len);

/*
 * Appends table + footer to out, for writing at file offset stream_end (the
 * footer's table_offset); the file then ends right after them. Returns 0,
 * -EINVAL if a chunk, bitmap hash or the device state was never set or a
 * range does not fit [stream_base, stream_end), -ENOMEM (or out's latched
 * error). On failure out->len is restored; its error stays latched.
 */
int mr_trailer_encode(const struct mr_trailer_builder *b, uint64_t stream_end, struct mr_buf *out);

/* A decoded trailer. Every value has been validated as described above. */
struct mr_trailer_block {
	char name[MR_NAME_MAX + 1];
	uint64_t record_off; /* file offset of the record's name length byte */
	uint64_t length;
	uint64_t bitmap_offset;
	uint64_t bitmap_size; /* bytes, ceil(length / 4096 / 64) * 8 */
	uint64_t pages_offset;
	uint64_t bitmap_hash;
	uint64_t n_chunks;
	uint64_t hashes_off;	/* file offset of the first chunk hash */
	uint64_t *chunk_hashes; /* n_chunks entries, owned by the trailer; NULL until loaded */
};

struct mr_trailer {
	uint32_t version;
	uint32_t flags;
	uint64_t table_offset;
	uint64_t table_length;
	uint64_t stream_base;
	uint64_t stream_end; /* = table_offset; a valid src->size for mr_image_parse() */
	uint32_t chunk_size;
	uint64_t devstate_offset;
	uint64_t devstate_length;
	uint64_t devstate_hash;
	struct mr_trailer_block *blocks;
	size_t n_blocks;
	uint8_t *blob; /* the BLOB extension record's bytes (owned), NULL without one */
	size_t blob_len;
	/* The blocks sorted by name, for mr_trailer_find_block(); NULL if fewer than 2. */
	const struct mr_trailer_block **by_name;
};

/*
 * Finds and validates the trailer of a file of file_size bytes read through
 * src (src->size is not consulted). On success *ret is a new trailer the
 * caller frees with mr_trailer_free(). On failure returns -errno (see above)
 * and, if err is not NULL, fills it with the offset, block and reason.
 */
int mr_trailer_parse(const struct mr_src *src, uint64_t file_size, struct mr_trailer **ret,
		     struct mr_err *err);

/* Flags for mr_trailer_parse_flags(). */
#define MR_TRAILER_NO_HASHES 0x1u /* check the table, keep no chunk hashes (chunk_hashes NULL) */

/*
 * As mr_trailer_parse(). The table is read in fixed windows: its hash is
 * checked before any record is decoded, and memory grows only with the chunk
 * hashes kept (none with MR_TRAILER_NO_HASHES).
 */
int mr_trailer_parse_flags(const struct mr_src *src, uint64_t file_size, unsigned flags,
			   struct mr_trailer **ret, struct mr_err *err);

/*
 * Loads blk's chunk hashes (left out by MR_TRAILER_NO_HASHES) from src; does
 * nothing if they are loaded. Returns 0 or -errno with *err filled.
 */
int mr_trailer_load_hashes(const struct mr_src *src, struct mr_trailer_block *blk,
			   struct mr_err *err);

/*
 * Where the trailer of a table at table_offset (the stream's end) would end,
 * from the sizes its records give (nothing is checked: mr_trailer_parse() on
 * a file that ends there does that). Used to find a completion record with
 * bytes appended after it. Returns 0 and that end (<= file_size), -ENOENT if
 * the bytes there do not describe a table, or another -errno.
 */
int mr_trailer_locate(const struct mr_src *src, uint64_t table_offset, uint64_t file_size,
		      uint64_t *ret_end);
void mr_trailer_free(struct mr_trailer *t);

/* The block named name, or NULL; a binary search. Valid as long as t. */
const struct mr_trailer_block *mr_trailer_find_block(const struct mr_trailer *t, const char *name);

#endif
