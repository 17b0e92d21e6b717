// SPDX-License-Identifier: MIT
/* Integrity trailer: chunk hashing, the builder/encoder and the decoder. */
#include "trailer.h"
#include "be.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#define PAGE	     MR_PAGE_SIZE
#define REC_FIXED    40u /* be64 length, bitmap_offset, pages_offset, bitmap hash, n_chunks */
#define REC_MIN	     (1u + 1u + REC_FIXED)
#define READ_MAX     (1u << 30)
#define TABLE_WINDOW (64u << 10) /* table bytes read at a time; a multiple of 8 */

/* ---- hashing ---- */

static const uint8_t zero_page[PAGE];

/* First index in [i, end) whose bit differs from `set`, or end. */
static uint64_t run_end(const uint64_t *map, uint64_t i, uint64_t end, bool set)
{
	while (i < end) {
		unsigned int sh = i & 63;
		uint64_t w = map[i >> 6];
		uint64_t diff = (set ? ~w : w) >> sh;

		if (diff) {
			uint64_t r = i + (uint64_t)__builtin_ctzll(diff);

			return r < end ? r : end;
		}
		i += 64 - sh;
	}
	return end;
}

/*
 * Hash of npages zero pages. Idle guests are mostly zero, and hashing the
 * same zeros again for every chunk would cost as much as hashing data: the
 * value for each chunk length up to 1 MiB is computed once. Threads racing
 * to fill an entry store the same value.
 */
#define ZERO_CACHE 256u

static uint64_t zero_hash(uint64_t npages)
{
	static uint64_t cache[ZERO_CACHE + 1];
	static bool known[ZERO_CACHE + 1];
	XXH3_state_t st;
	uint64_t h;

	if (npages <= ZERO_CACHE && __atomic_load_n(&known[npages], __ATOMIC_ACQUIRE))
		return __atomic_load_n(&cache[npages], __ATOMIC_RELAXED);
	XXH3_INITSTATE(&st);
	XXH3_64bits_reset(&st);
	for (uint64_t j = 0; j < npages; j++)
		XXH3_64bits_update(&st, zero_page, PAGE);
	h = XXH3_64bits_digest(&st);
	if (npages <= ZERO_CACHE) {
		__atomic_store_n(&cache[npages], h, __ATOMIC_RELAXED);
		__atomic_store_n(&known[npages], true, __ATOMIC_RELEASE);
	}
	return h;
}

uint64_t mr_trailer_chunk_hash(const void *data, const uint64_t *bitmap, uint64_t first_page,
			       uint64_t npages)
{
	const uint8_t *p = data;
	uint64_t last = first_page + npages, i = first_page;
	XXH3_state_t st;

	assert(npages <= SIZE_MAX / PAGE && last >= first_page);
	if (!bitmap || run_end(bitmap, first_page, last, true) == last) {
		assert(data || !npages);
		return XXH3_64bits(data, (size_t)(npages * PAGE));
	}

	if (run_end(bitmap, first_page, last, false) == last)
		return zero_hash(npages);

	XXH3_INITSTATE(&st);
	XXH3_64bits_reset(&st);
	while (i < last) {
		bool set = mr_bit_test(bitmap, i);
		uint64_t e = run_end(bitmap, i, last, set);

		if (set) {
			assert(data);
			XXH3_64bits_update(&st, p + (i - first_page) * PAGE,
					   (size_t)((e - i) * PAGE));
		} else {
			/* Clear pages are never read: they may be holes or stale bytes. */
			for (uint64_t j = i; j < e; j++)
				XXH3_64bits_update(&st, zero_page, PAGE);
		}
		i = e;
	}
	return XXH3_64bits_digest(&st);
}

uint64_t mr_trailer_bitmap_hash(const uint64_t *map, uint64_t num_pages)
{
	uint64_t words = num_pages / 64 + (num_pages % 64 != 0);
	uint8_t tmp[64 * 8];
	XXH3_state_t st;

	XXH3_INITSTATE(&st);
	XXH3_64bits_reset(&st);
	for (uint64_t w = 0; w < words;) {
		size_t n = 0;

		for (; n < 64 && w < words; n++, w++)
			mr_put_le64(tmp + n * 8, map[w]);
		XXH3_64bits_update(&st, tmp, n * 8);
	}
	return XXH3_64bits_digest(&st);
}

/* Same as mr_bitmap_bytes(); kept here so the module links without layout.c. */
static uint64_t bitmap_bytes(uint64_t num_pages)
{
	return (num_pages / 64 + (num_pages % 64 != 0)) * 8;
}

static bool chunk_size_ok(uint32_t cs)
{
	return cs >= MR_TRAILER_CHUNK_MIN && cs <= MR_TRAILER_CHUNK_MAX && !(cs & (cs - 1));
}

/* True if [off, off + len) lies inside [lo, hi); false also if it wraps. */
static bool range_in(uint64_t off, uint64_t len, uint64_t lo, uint64_t hi)
{
	uint64_t end;

	if (__builtin_add_overflow(off, len, &end))
		return false;
	return off >= lo && end <= hi;
}

/* ---- builder ---- */

struct tb_block {
	char name[MR_NAME_MAX + 1];
	uint64_t length;
	uint64_t bitmap_offset;
	uint64_t pages_offset;
	uint64_t bitmap_hash;
	bool have_bitmap;
	uint64_t n_chunks;
	uint64_t *hashes;
	/* One byte per chunk: distinct objects, so workers on disjoint chunks never race. */
	uint8_t *have;
};

struct mr_trailer_builder {
	uint64_t stream_base;
	uint32_t chunk_size;
	struct tb_block *blocks;
	size_t n_blocks;
	size_t cap;
	bool have_devstate;
	uint64_t devstate_offset;
	uint64_t devstate_length;
	uint64_t devstate_hash;
	uint8_t *blob; /* the BLOB extension, NULL without one */
	size_t blob_len;
};

int mr_trailer_builder_new(uint64_t stream_base, uint32_t chunk_size,
			   struct mr_trailer_builder **ret)
{
	struct mr_trailer_builder *b;

	if (!chunk_size)
		chunk_size = MR_TRAILER_CHUNK_DEFAULT;
	if (!chunk_size_ok(chunk_size))
		return -EINVAL;
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->stream_base = stream_base;
	b->chunk_size = chunk_size;
	*ret = b;
	return 0;
}

void mr_trailer_builder_free(struct mr_trailer_builder *b)
{
	if (!b)
		return;
	for (size_t i = 0; i < b->n_blocks; i++) {
		free(b->blocks[i].hashes);
		free(b->blocks[i].have);
	}
	free(b->blocks);
	free(b->blob);
	free(b);
}

uint32_t mr_trailer_builder_chunk_size(const struct mr_trailer_builder *b)
{
	return b->chunk_size;
}

int mr_trailer_builder_add_block(struct mr_trailer_builder *b, const char *name, uint64_t length,
				 uint64_t bitmap_offset, uint64_t pages_offset, size_t *ret_index)
{
	size_t len = strlen(name);
	struct tb_block *blk;
	uint64_t n, end;

	if (!len || len > MR_NAME_MAX || length % PAGE || pages_offset % PAGE ||
	    __builtin_add_overflow(pages_offset, length, &end) ||
	    __builtin_add_overflow(bitmap_offset, bitmap_bytes(length / PAGE), &end))
		return -EINVAL;
	for (size_t i = 0; i < b->n_blocks; i++)
		if (!strcmp(b->blocks[i].name, name))
			return -EINVAL;
	if (b->n_blocks == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 8;
		struct tb_block *p;

		if (cap > SIZE_MAX / sizeof(*p))
			return -ENOMEM;
		p = realloc(b->blocks, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		b->blocks = p;
		b->cap = cap;
	}
	n = mr_trailer_chunks(length, b->chunk_size);
	if (n > SIZE_MAX / sizeof(uint64_t))
		return -ENOMEM;
	blk = &b->blocks[b->n_blocks];
	*blk = (struct tb_block){ 0 };
	memcpy(blk->name, name, len + 1);
	blk->length = length;
	blk->bitmap_offset = bitmap_offset;
	blk->pages_offset = pages_offset;
	blk->n_chunks = n;
	blk->hashes = calloc(n ? n : 1, sizeof(uint64_t));
	blk->have = calloc(n ? n : 1, 1);
	if (!blk->hashes || !blk->have) {
		free(blk->hashes);
		free(blk->have);
		return -ENOMEM;
	}
	*ret_index = b->n_blocks++;
	return 0;
}

void mr_trailer_builder_set_chunk(struct mr_trailer_builder *b, size_t block, uint64_t chunk,
				  uint64_t hash)
{
	assert(block < b->n_blocks && chunk < b->blocks[block].n_chunks);
	b->blocks[block].hashes[chunk] = hash;
	b->blocks[block].have[chunk] = 1;
}

bool mr_trailer_builder_chunk_is_set(const struct mr_trailer_builder *b, size_t block,
				     uint64_t chunk)
{
	assert(block < b->n_blocks && chunk < b->blocks[block].n_chunks);
	return b->blocks[block].have[chunk];
}

void mr_trailer_builder_set_bitmap_hash(struct mr_trailer_builder *b, size_t block, uint64_t hash)
{
	assert(block < b->n_blocks);
	b->blocks[block].bitmap_hash = hash;
	b->blocks[block].have_bitmap = true;
}

void mr_trailer_builder_set_devstate(struct mr_trailer_builder *b, uint64_t offset, uint64_t length,
				     uint64_t hash)
{
	b->devstate_offset = offset;
	b->devstate_length = length;
	b->devstate_hash = hash;
	b->have_devstate = true;
}

int mr_trailer_builder_set_blob(struct mr_trailer_builder *b, const void *data, size_t len)
{
	uint8_t *p;

	if (!len || len > MR_TRAILER_EXT_MAX)
		return -EINVAL;
	p = malloc(len);
	if (!p)
		return -ENOMEM;
	memcpy(p, data, len);
	free(b->blob);
	b->blob = p;
	b->blob_len = len;
	return 0;
}

/* Checks everything the decoder will check; returns the table size or 0. */
static size_t table_size(const struct mr_trailer_builder *b, uint64_t stream_end)
{
	uint64_t base = b->stream_base;
	size_t size = MR_TRAILER_TABLE_HDR;

	if (stream_end < base || !b->have_devstate || b->n_blocks > UINT32_MAX ||
	    !range_in(b->devstate_offset, b->devstate_length, base, stream_end))
		return 0;
	for (size_t i = 0; i < b->n_blocks; i++) {
		const struct tb_block *blk = &b->blocks[i];
		uint64_t bm = bitmap_bytes(blk->length / PAGE);
		size_t rec;

		if (!blk->have_bitmap ||
		    !range_in(blk->pages_offset, blk->length, base, stream_end) ||
		    !range_in(blk->bitmap_offset, bm, base, stream_end))
			return 0;
		for (uint64_t c = 0; c < blk->n_chunks; c++)
			if (!blk->have[c])
				return 0;
		/* n_chunks * 8 fits: the hashes array was allocated. */
		rec = 1 + strlen(blk->name) + REC_FIXED + (size_t)blk->n_chunks * 8;
		if (__builtin_add_overflow(size, rec, &size))
			return 0;
	}
	if (b->blob && __builtin_add_overflow(size, MR_TRAILER_EXT_HDR + b->blob_len, &size))
		return 0;
	return size;
}

int mr_trailer_encode(const struct mr_trailer_builder *b, uint64_t stream_end, struct mr_buf *out)
{
	size_t start = out->len, tsize = table_size(b, stream_end);
	uint8_t foot[MR_TRAILER_FOOTER_SIZE];

	if (out->err)
		return out->err;
	if (!tsize)
		return -EINVAL;

	mr_buf_be64(out, b->stream_base);
	mr_buf_be64(out, stream_end);
	mr_buf_be32(out, b->chunk_size);
	mr_buf_be32(out, (uint32_t)b->n_blocks);
	mr_buf_be64(out, b->devstate_offset);
	mr_buf_be64(out, b->devstate_length);
	mr_buf_be64(out, b->devstate_hash);
	for (size_t i = 0; i < b->n_blocks; i++) {
		const struct tb_block *blk = &b->blocks[i];

		mr_buf_str8(out, blk->name);
		mr_buf_be64(out, blk->length);
		mr_buf_be64(out, blk->bitmap_offset);
		mr_buf_be64(out, blk->pages_offset);
		mr_buf_be64(out, blk->bitmap_hash);
		mr_buf_be64(out, blk->n_chunks);
		for (uint64_t c = 0; c < blk->n_chunks; c++)
			mr_buf_be64(out, blk->hashes[c]);
	}
	if (b->blob) {
		mr_buf_be32(out, MR_TRAILER_EXT_BLOB);
		mr_buf_be64(out, b->blob_len);
		mr_buf_put(out, b->blob, b->blob_len);
	}
	if (out->err) {
		out->len = start;
		return out->err;
	}
	assert(out->len - start == tsize);

	memcpy(foot, MR_TRAILER_MAGIC, 8);
	mr_put_be32(foot + 8, b->blob ? MR_TRAILER_VERSION_EXT : MR_TRAILER_VERSION);
	mr_put_be32(foot + 12, MR_TRAILER_F_COMPLETE);
	mr_put_be64(foot + 16, stream_end);
	mr_put_be64(foot + 24, tsize);
	mr_put_be64(foot + 32, XXH3_64bits(out->data + start, tsize));
	mr_put_be64(foot + 40, XXH3_64bits(foot, 40));
	mr_buf_put(out, foot, sizeof(foot));
	if (out->err) {
		out->len = start;
		return out->err;
	}
	return 0;
}

/* ---- decoder ---- */

static int read_exact(const struct mr_src *src, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;

	while (len) {
		size_t want = len < READ_MAX ? len : READ_MAX;
		long n = src->pread(src->ctx, p, want, off);

		if (n < 0)
			return (int)n;
		if (n == 0)
			return -ENODATA;
		if ((unsigned long)n > want)
			return -EIO;
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/*
 * A cursor over the table, read from the source in windows: a table length
 * from the file sizes no allocation. off is the file offset of the next byte,
 * left the table bytes after it.
 */
struct cur {
	const struct mr_src *src;
	uint64_t off;
	uint64_t left;
	uint8_t *buf; /* TABLE_WINDOW bytes */
	uint64_t buf_off;
	size_t buf_len;
	int err; /* a read error, reported instead of "truncated" */
};

/* The next n (<= TABLE_WINDOW) table bytes, or NULL if the table ends first. */
static const uint8_t *take(struct cur *c, size_t n)
{
	const uint8_t *p;

	if (n > c->left)
		return NULL;
	if (c->off < c->buf_off || c->off + n > c->buf_off + c->buf_len) {
		size_t want = c->left < TABLE_WINDOW ? (size_t)c->left : TABLE_WINDOW;
		int r = read_exact(c->src, c->buf, want, c->off);

		if (r) {
			c->err = r;
			return NULL;
		}
		c->buf_off = c->off;
		c->buf_len = want;
	}
	p = c->buf + (c->off - c->buf_off);
	c->off += n;
	c->left -= n;
	return p;
}

/* The error for a failed take(): the read's, else a short table. */
static int take_err(const struct cur *c)
{
	return c->err ? c->err : -ENODATA;
}

/* What a failed take() means, for the message. */
static const char *take_what(const struct cur *c)
{
	return c->err ? "unreadable" : "truncated";
}

static int cmp_block_name(const void *a, const void *b)
{
	const struct mr_trailer_block *const *x = a, *const *y = b;

	return strcmp((*x)->name, (*y)->name);
}

/*
 * Rejects duplicate names. The sorted index stays in t->by_name so that
 * lookups are O(log n) too: hostile tables of many blocks stay fast.
 */
static int check_unique(struct mr_trailer *t, struct mr_err *err)
{
	const struct mr_trailer_block **idx;
	int r = 0;

	if (t->n_blocks < 2)
		return 0;
	idx = calloc(t->n_blocks, sizeof(*idx));
	if (!idx)
		return mr_fail(err, -ENOMEM, t->table_offset, NULL, "out of memory");
	for (size_t i = 0; i < t->n_blocks; i++)
		idx[i] = &t->blocks[i];
	qsort(idx, t->n_blocks, sizeof(*idx), cmp_block_name);
	for (size_t i = 1; i < t->n_blocks; i++) {
		if (!strcmp(idx[i - 1]->name, idx[i]->name)) {
			/* Name the later record. */
			const struct mr_trailer_block *d = idx[i];

			if (idx[i - 1]->record_off > d->record_off)
				d = idx[i - 1];

			r = mr_fail(err, -EBADMSG, d->record_off, d->name,
				    "duplicate block name in trailer");
			free(idx);
			return r;
		}
	}
	t->by_name = idx;
	return 0;
}

static int load_hashes(struct cur *c, struct mr_trailer_block *blk, struct mr_err *err);

static int parse_block(struct cur *c, const struct mr_trailer *t, struct mr_trailer_block *blk,
		       unsigned flags, struct mr_err *err)
{
	uint64_t base = t->stream_base, end = t->stream_end;
	const uint8_t *p;
	uint64_t want;
	size_t n;

	blk->record_off = c->off;
	p = take(c, 1);
	if (!p)
		return mr_fail(err, take_err(c), c->off, NULL, "trailer block record %s",
			       take_what(c));
	n = p[0];
	if (!n)
		return mr_fail(err, -EBADMSG, blk->record_off, NULL, "empty block name in trailer");
	p = take(c, n);
	if (!p)
		return mr_fail(err, take_err(c), blk->record_off, NULL, "trailer block name %s",
			       take_what(c));
	if (memchr(p, 0, n))
		return mr_fail(err, -EBADMSG, blk->record_off, NULL, "NUL in trailer block name");
	memcpy(blk->name, p, n);
	blk->name[n] = '\0';

	p = take(c, REC_FIXED);
	if (!p)
		return mr_fail(err, take_err(c), blk->record_off, blk->name,
			       "trailer block record %s", take_what(c));
	blk->length = mr_get_be64(p);
	blk->bitmap_offset = mr_get_be64(p + 8);
	blk->pages_offset = mr_get_be64(p + 16);
	blk->bitmap_hash = mr_get_be64(p + 24);
	blk->n_chunks = mr_get_be64(p + 32);

	if (blk->length % PAGE || blk->pages_offset % PAGE)
		return mr_fail(err, -EBADMSG, blk->record_off, blk->name,
			       "block length %#llx or pages offset %#llx not page aligned",
			       (unsigned long long)blk->length,
			       (unsigned long long)blk->pages_offset);
	if (!range_in(blk->pages_offset, blk->length, base, end))
		return mr_fail(err, -EOVERFLOW, blk->record_off, blk->name,
			       "page region %#llx+%#llx outside the stream",
			       (unsigned long long)blk->pages_offset,
			       (unsigned long long)blk->length);
	blk->bitmap_size = bitmap_bytes(blk->length / PAGE);
	if (!range_in(blk->bitmap_offset, blk->bitmap_size, base, end))
		return mr_fail(err, -EOVERFLOW, blk->record_off, blk->name,
			       "bitmap %#llx+%#llx outside the stream",
			       (unsigned long long)blk->bitmap_offset,
			       (unsigned long long)blk->bitmap_size);
	want = mr_trailer_chunks(blk->length, t->chunk_size);
	if (blk->n_chunks != want)
		return mr_fail(err, -EBADMSG, blk->record_off, blk->name,
			       "%llu chunk hashes, expected %llu",
			       (unsigned long long)blk->n_chunks, (unsigned long long)want);
	if (blk->n_chunks > c->left / 8)
		return mr_fail(err, -ENODATA, blk->record_off, blk->name,
			       "trailer chunk hashes truncated");

	blk->hashes_off = c->off;
	if (flags & MR_TRAILER_NO_HASHES) {
		/* Hashed with the table already; loaded when a restore needs them. */
		c->off += blk->n_chunks * 8;
		c->left -= blk->n_chunks * 8;
		return 0;
	}
	return load_hashes(c, blk, err);
}

/* Reads blk's n_chunks hashes at the cursor (at blk->hashes_off). */
static int load_hashes(struct cur *c, struct mr_trailer_block *blk, struct mr_err *err)
{
	uint64_t *h = calloc(blk->n_chunks ? blk->n_chunks : 1, sizeof(uint64_t));

	if (!h)
		return mr_fail(err, -ENOMEM, blk->record_off, blk->name, "out of memory");
	for (uint64_t i = 0; i < blk->n_chunks;) {
		uint64_t k =
			blk->n_chunks - i < TABLE_WINDOW / 8 ? blk->n_chunks - i : TABLE_WINDOW / 8;
		const uint8_t *p = take(c, (size_t)k * 8);

		if (!p) {
			free(h);
			return mr_fail(err, take_err(c), blk->record_off, blk->name,
				       "trailer chunk hashes %s", take_what(c));
		}
		for (uint64_t j = 0; j < k; j++)
			h[i + j] = mr_get_be64(p + j * 8);
		i += k;
	}
	free(blk->chunk_hashes);
	blk->chunk_hashes = h;
	return 0;
}

/* Extension records (version 2): from the cursor to the table's end. */
static int parse_extensions(struct cur *c, struct mr_trailer *t, struct mr_err *err)
{
	while (c->left) {
		uint64_t at = c->off, len;
		const uint8_t *p = take(c, MR_TRAILER_EXT_HDR);
		uint32_t tag;

		if (!p)
			return mr_fail(err, take_err(c), at, NULL, "trailer extension record %s",
				       take_what(c));
		tag = mr_get_be32(p);
		len = mr_get_be64(p + 4);
		if (len > c->left)
			return mr_fail(err, -ENODATA, at, NULL,
				       "trailer extension of %llu bytes runs past the table",
				       (unsigned long long)len);
		if (len > MR_TRAILER_EXT_MAX)
			return mr_fail(err, -EOVERFLOW, at, NULL,
				       "trailer extension of %llu bytes (at most %u)",
				       (unsigned long long)len, MR_TRAILER_EXT_MAX);
		if (tag != MR_TRAILER_EXT_BLOB) {
			/* Another writer's record: covered by the table hash, not ours to read. */
			c->off += len;
			c->left -= len;
			continue;
		}
		if (t->blob || !len)
			return mr_fail(err, -EBADMSG, at, NULL, "%s trailer blob record",
				       t->blob ? "second" : "empty");
		t->blob = malloc(len);
		if (!t->blob)
			return mr_fail(err, -ENOMEM, at, NULL, "out of memory");
		t->blob_len = (size_t)len;
		for (size_t done = 0; done < len;) {
			size_t n = len - done < TABLE_WINDOW ? (size_t)(len - done) : TABLE_WINDOW;

			p = take(c, n);
			if (!p)
				return mr_fail(err, take_err(c), at, NULL, "trailer blob %s",
					       take_what(c));
			memcpy(t->blob + done, p, n);
			done += n;
		}
	}
	return 0;
}

/* Parses the table (read through c) into t, whose footer fields are already set. */
static int parse_table(struct cur *cp, struct mr_trailer *t, unsigned flags, struct mr_err *err)
{
	uint64_t toff = t->table_offset;
	struct cur c = *cp;
	const uint8_t *p;
	uint32_t n_blocks;
	int r;

	p = take(&c, MR_TRAILER_TABLE_HDR);
	if (!p)
		return mr_fail(err, take_err(&c), c.off, NULL, "trailer table header %s",
			       take_what(&c));
	t->stream_base = mr_get_be64(p);
	t->stream_end = mr_get_be64(p + 8);
	t->chunk_size = mr_get_be32(p + 16);
	n_blocks = mr_get_be32(p + 20);
	t->devstate_offset = mr_get_be64(p + 24);
	t->devstate_length = mr_get_be64(p + 32);
	t->devstate_hash = mr_get_be64(p + 40);

	if (t->stream_end != toff)
		return mr_fail(err, -EBADMSG, toff, NULL,
			       "trailer stream end %#llx is not the table offset",
			       (unsigned long long)t->stream_end);
	if (t->stream_base > t->stream_end)
		return mr_fail(err, -EBADMSG, toff, NULL,
			       "trailer stream base %#llx after stream end",
			       (unsigned long long)t->stream_base);
	if (!chunk_size_ok(t->chunk_size))
		return mr_fail(err, -EBADMSG, toff + 16, NULL, "trailer chunk size %u not allowed",
			       t->chunk_size);
	if (!range_in(t->devstate_offset, t->devstate_length, t->stream_base, t->stream_end))
		return mr_fail(err, -EOVERFLOW, toff + 24, NULL,
			       "device state %#llx+%#llx outside the stream",
			       (unsigned long long)t->devstate_offset,
			       (unsigned long long)t->devstate_length);
	if (n_blocks > c.left / REC_MIN)
		return mr_fail(err, -ENODATA, toff + 20, NULL,
			       "%u trailer block records do not fit the table", n_blocks);
	/* A stream lists no more: the records' memory is bounded, whatever the table holds. */
	if (n_blocks > MR_MAX_BLOCKS)
		return mr_fail(err, -EBADMSG, toff + 20, NULL,
			       "%u trailer block records (at most %u)", n_blocks, MR_MAX_BLOCKS);

	if (n_blocks) {
		t->blocks = calloc(n_blocks, sizeof(*t->blocks));
		if (!t->blocks)
			return mr_fail(err, -ENOMEM, toff, NULL, "out of memory");
	}
	for (uint32_t i = 0; i < n_blocks; i++) {
		r = parse_block(&c, t, &t->blocks[i], flags, err);
		/* Count the block first so mr_trailer_free() releases its hashes. */
		t->n_blocks++;
		if (r < 0)
			return r;
	}
	if (t->version == MR_TRAILER_VERSION_EXT) {
		r = parse_extensions(&c, t, err);
		if (r < 0)
			return r;
	}
	if (c.left)
		return mr_fail(err, -EBADMSG, c.off, NULL,
			       "%llu stray bytes after the trailer blocks",
			       (unsigned long long)c.left);
	return check_unique(t, err);
}

/* XXH3-64 of [off, off+len) of src, read in windows of buf (TABLE_WINDOW bytes). */
static int hash_range(const struct mr_src *src, uint64_t off, uint64_t len, uint8_t *buf,
		      uint64_t *ret)
{
	XXH3_state_t st;

	XXH3_64bits_reset(&st);
	while (len) {
		size_t n = len < TABLE_WINDOW ? (size_t)len : TABLE_WINDOW;
		int r = read_exact(src, buf, n, off);

		if (r)
			return r;
		XXH3_64bits_update(&st, buf, n);
		off += n;
		len -= n;
	}
	*ret = XXH3_64bits_digest(&st);
	return 0;
}

int mr_trailer_parse(const struct mr_src *src, uint64_t file_size, struct mr_trailer **ret,
		     struct mr_err *err)
{
	return mr_trailer_parse_flags(src, file_size, 0, ret, err);
}

/* Decodes the footer read at foot_off into t and checks it against the file. */
static int check_footer(struct mr_trailer *t, const uint8_t *foot, uint64_t foot_off,
			struct mr_err *err)
{
	uint64_t table_end;

	t->version = mr_get_be32(foot + 8);
	t->flags = mr_get_be32(foot + 12);
	t->table_offset = mr_get_be64(foot + 16);
	t->table_length = mr_get_be64(foot + 24);
	if (t->version != MR_TRAILER_VERSION && t->version != MR_TRAILER_VERSION_EXT)
		return mr_fail(err, -EPROTONOSUPPORT, foot_off + 8, NULL,
			       "trailer version %u not supported", t->version);
	if (mr_get_be64(foot + 40) != XXH3_64bits(foot, 40))
		return mr_fail(err, -EBADMSG, foot_off, NULL, "trailer footer checksum mismatch");
	if (t->flags & ~MR_TRAILER_F_COMPLETE)
		return mr_fail(err, -EBADMSG, foot_off + 12, NULL, "reserved trailer flags %#x set",
			       t->flags);
	if (!(t->flags & MR_TRAILER_F_COMPLETE))
		return mr_fail(err, -ENOENT, foot_off + 12, NULL, "trailer not marked complete");
	if (__builtin_add_overflow(t->table_offset, t->table_length, &table_end) ||
	    table_end > foot_off)
		return mr_fail(err, -EOVERFLOW, foot_off + 16, NULL,
			       "trailer table %#llx+%#llx outside the file",
			       (unsigned long long)t->table_offset,
			       (unsigned long long)t->table_length);
	if (table_end != foot_off)
		return mr_fail(err, -EBADMSG, foot_off + 16, NULL,
			       "trailer table does not end at the footer");
	return 0;
}

/* The table, hashed whole (against the footer's hash) before any of it is believed or sized. */
static int check_table(const struct mr_src *src, struct mr_trailer *t, const uint8_t *foot,
		       unsigned flags, struct mr_err *err)
{
	struct cur c = { .src = src };
	uint64_t h = 0;
	int r;

	c.buf = malloc(TABLE_WINDOW);
	if (!c.buf)
		return mr_fail(err, -ENOMEM, t->table_offset, NULL, "out of memory");
	r = hash_range(src, t->table_offset, t->table_length, c.buf, &h);
	if (r < 0)
		r = mr_fail(err, r, t->table_offset, NULL, "cannot read the trailer table");
	else if (mr_get_be64(foot + 32) != h)
		r = mr_fail(err, -EBADMSG, t->table_offset, NULL,
			    "trailer table checksum mismatch");
	if (!r) {
		c.off = t->table_offset;
		c.left = t->table_length;
		r = parse_table(&c, t, flags, err);
	}
	free(c.buf);
	return r < 0 ? r : 0;
}

int mr_trailer_parse_flags(const struct mr_src *src, uint64_t file_size, unsigned flags,
			   struct mr_trailer **ret, struct mr_err *err)
{
	uint8_t foot[MR_TRAILER_FOOTER_SIZE];
	struct mr_trailer *t;
	uint64_t foot_off;
	int r;

	if (file_size < MR_TRAILER_FOOTER_SIZE)
		return mr_fail(err, -ENOENT, file_size, NULL, "no snapmr trailer");
	foot_off = file_size - MR_TRAILER_FOOTER_SIZE;
	r = read_exact(src, foot, sizeof(foot), foot_off);
	if (r < 0)
		return mr_fail(err, r, foot_off, NULL, "cannot read the trailer footer");
	if (memcmp(foot, MR_TRAILER_MAGIC, 8))
		return mr_fail(err, -ENOENT, foot_off, NULL, "no snapmr trailer");

	t = calloc(1, sizeof(*t));
	if (!t)
		return mr_fail(err, -ENOMEM, file_size, NULL, "out of memory");
	r = check_footer(t, foot, foot_off, err);
	if (!r)
		r = check_table(src, t, foot, flags, err);
	if (r) {
		mr_trailer_free(t);
		return r;
	}
	*ret = t;
	return 0;
}

int mr_trailer_load_hashes(const struct mr_src *src, struct mr_trailer_block *blk,
			   struct mr_err *err)
{
	struct cur c = { .src = src, .off = blk->hashes_off, .left = blk->n_chunks * 8 };
	int r;

	if (blk->chunk_hashes)
		return 0;
	c.buf = malloc(TABLE_WINDOW);
	if (!c.buf)
		return mr_fail(err, -ENOMEM, blk->record_off, blk->name, "out of memory");
	r = load_hashes(&c, blk, err);
	free(c.buf);
	return r;
}

int mr_trailer_locate(const struct mr_src *src, uint64_t table_offset, uint64_t file_size,
		      uint64_t *ret_end)
{
	uint8_t h[MR_TRAILER_TABLE_HDR], rec[1 + MR_NAME_MAX + REC_FIXED];
	uint64_t off = table_offset + MR_TRAILER_TABLE_HDR;
	uint32_t n_blocks;
	int r;

	if (table_offset > file_size || file_size - table_offset < MR_TRAILER_TABLE_HDR)
		return -ENOENT;
	r = read_exact(src, h, sizeof(h), table_offset);
	if (r)
		return r == -ENODATA ? -ENOENT : r;
	/* The table names the stream end it follows. */
	n_blocks = mr_get_be32(h + 20);
	if (mr_get_be64(h + 8) != table_offset || n_blocks > MR_MAX_BLOCKS)
		return -ENOENT;
	for (uint32_t i = 0; i < n_blocks; i++) {
		uint64_t len, n;

		if (off >= file_size)
			return -ENOENT;
		len = file_size - off < sizeof(rec) ? file_size - off : sizeof(rec);
		r = read_exact(src, rec, (size_t)len, off);
		if (r)
			return r == -ENODATA ? -ENOENT : r;
		n = rec[0];
		if (len < 1 + n + REC_FIXED)
			return -ENOENT;
		/* name length byte, name, five be64 fields, then n_chunks hashes */
		n = mr_get_be64(rec + 1 + n + 32);
		if (n > file_size / 8 ||
		    __builtin_add_overflow(off, 1 + (uint64_t)rec[0] + REC_FIXED + n * 8, &off))
			return -ENOENT;
	}
	/*
	 * Extension records (version 2) until the footer's magic: no tag
	 * starts like it. Each record takes at least 12 bytes, so the loop
	 * ends within the file.
	 */
	for (;;) {
		uint8_t x[MR_TRAILER_EXT_HDR];
		uint64_t len;

		if (off >= file_size || file_size - off < sizeof(x))
			return -ENOENT;
		r = read_exact(src, x, sizeof(x), off);
		if (r)
			return r == -ENODATA ? -ENOENT : r;
		if (!memcmp(x, MR_TRAILER_MAGIC, 8))
			break;
		len = mr_get_be64(x + 4);
		if (len > MR_TRAILER_EXT_MAX ||
		    __builtin_add_overflow(off, MR_TRAILER_EXT_HDR + len, &off))
			return -ENOENT;
	}
	if (__builtin_add_overflow(off, MR_TRAILER_FOOTER_SIZE, &off) || off > file_size)
		return -ENOENT;
	*ret_end = off;
	return 0;
}

void mr_trailer_free(struct mr_trailer *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n_blocks; i++)
		free(t->blocks[i].chunk_hashes);
	free(t->blocks);
	free(t->by_name);
	free(t->blob);
	free(t);
}

const struct mr_trailer_block *mr_trailer_find_block(const struct mr_trailer *t, const char *name)
{
	if (t->by_name) {
		size_t lo = 0, hi = t->n_blocks;

		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			int c = strcmp(t->by_name[mid]->name, name);

			if (!c)
				return t->by_name[mid];
			if (c < 0)
				lo = mid + 1;
			else
				hi = mid;
		}
		return NULL;
	}
	for (size_t i = 0; i < t->n_blocks; i++)
		if (!strcmp(t->blocks[i].name, name))
			return &t->blocks[i];
	return NULL;
}
