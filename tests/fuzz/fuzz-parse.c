// SPDX-License-Identifier: MIT
/*
 * libFuzzer target for the file decoders: the input is a whole file, read
 * through an in-memory mr_src by mr_file_parse(), as snap_inspect() reads a
 * file on disk, and by the trailer, stream and VM-description parsers alone.
 */
#include "file.h"
#include "reader.h"
#include "trailer.h"
#include "vmdesc.h"
#include "be.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

/* The input, read only, through mr_buf_pread(). */
static struct mr_buf mem(const uint8_t *data, size_t len)
{
	return (struct mr_buf){ .data = (uint8_t *)data, .len = len, .cap = len };
}

/* Touches every decoded field so the sanitizers see uninitialized or freed data. */
static void walk_image(const struct mr_image *img)
{
	volatile uint64_t sink = 0;

	(void)mr_image_has_cap(img, "mapped-ram");
	for (size_t i = 0; i < img->n_blocks; i++) {
		const struct mr_block_info *b = &img->blocks[i];

		if (mr_image_block(img, b->name) == NULL)
			abort();
		sink += b->length + b->present + b->hdr.pages_offset + b->hdr.bitmap_offset;
		if (b->bitmap && b->num_pages)
			sink += mr_bitmap_count(b->bitmap, b->num_pages);
	}
	for (size_t i = 0; i < img->n_sections; i++)
		sink += img->sections[i].off + img->sections[i].size +
			strlen(img->sections[i].idstr);
	sink += img->ram_end + img->stream_end + img->devstate_len + img->vmdesc_len;
	(void)sink;
}

/* A raw tail [off, off + len) of data, decoded as snapsave checks it. */
static void parse_tail(const uint8_t *data, uint64_t off, uint64_t len)
{
	struct mr_buf m = mem(data + off, (size_t)len);
	struct mr_src src = { mr_buf_pread, &m, len };
	struct mr_err err;
	uint32_t id;

	(void)mr_tail_parse(&src, &id, &err);
}

static void parse_image(const struct mr_src *src, uint64_t base, unsigned flags)
{
	struct mr_image *img = NULL;
	struct mr_err err;

	if (mr_image_parse(src, base, flags, &img, &err) == 0) {
		walk_image(img);
		if (img->stream_end <= src->size && img->ram_end <= img->stream_end)
			parse_tail(((const struct mr_buf *)src->ctx)->data, img->ram_end,
				   img->stream_end - img->ram_end);
		mr_image_free(img);
	}
}

static void parse_vmdesc(const char *json, size_t len)
{
	struct mr_vmdesc *d = NULL;
	uint64_t size;

	if (mr_vmdesc_parse(json, len, &d))
		return;
	(void)mr_vmdesc_page_size(d);
	(void)mr_vmdesc_section_size(d, "ram", 0, 0, &size);
	(void)mr_vmdesc_section_size(d, "timer", 0, 0, &size);
	mr_vmdesc_free(d);
}

/*
 * The file as snap_inspect() reads it (mr_file_parse()), then each block's
 * bitmap and chunk hashes loaded as a restore does, through a source that
 * ends where the trailer says the stream ends.
 */
static void parse_whole(const struct mr_src *src, uint64_t base)
{
	struct mr_src bounded = *src;
	struct mr_file f;
	struct mr_err err;

	if (mr_file_parse(src, base, &f, &err))
		return;
	if (f.appended && f.record_off + MR_TRAILER_FOOTER_SIZE + f.appended != src->size)
		abort(); /* the moved completion record must end where the appended bytes start */
	walk_image(f.img);
	if (f.trailer)
		bounded.size = f.trailer->stream_end;
	for (size_t i = 0; i < f.img->n_blocks; i++)
		if (mr_block_load_bitmap(&bounded, &f.img->blocks[i], true, &err) == 0)
			walk_image(f.img);
	for (size_t i = 0; f.trailer && i < f.trailer->n_blocks; i++) {
		if (mr_trailer_find_block(f.trailer, f.trailer->blocks[i].name) == NULL)
			abort();
		(void)mr_trailer_load_hashes(&bounded, &f.trailer->blocks[i], &err);
	}
	mr_file_clear(&f);
}

/* Runs every decoder over one file image. */
static void parse_file(const uint8_t *data, size_t size)
{
	struct mr_buf m = mem(data, size);
	struct mr_src src = { mr_buf_pread, &m, size };
	struct mr_trailer *t = NULL;
	enum mr_container kind;
	struct mr_err err;
	uint64_t base = 0, voff, vlen;

	parse_whole(&src, 0);
	/* The trailer with every chunk hash kept, and the stream where it says. */
	if (mr_trailer_parse(&src, size, &t, &err) == 0) {
		if (t->stream_base)
			parse_whole(&src, t->stream_base);
		mr_trailer_free(t);
	}
	parse_image(&src, 0, 0);
	parse_image(&src, 0, MR_PARSE_NO_BITMAPS);
	/* The whole input as a raw tail (it starts with an EOS word). */
	parse_tail(data, 0, size);
	if (mr_detect_stream(&src, &base, &kind) == 0 && base)
		parse_whole(&src, base);
	if (mr_find_vmdesc(&src, 0, src.size, &voff, &vlen) == 0) {
		if (voff + 5 + vlen > size)
			abort(); /* mr_find_vmdesc promised a record inside the file */
		parse_vmdesc((const char *)data + voff + 5, (size_t)vlen);
	}
}

/*
 * Both trailer hashes rewritten to match the input, so mutations of the
 * table reach the table parser instead of failing the checksum.
 */
static void fix_trailer_hashes(uint8_t *data, size_t size)
{
	uint8_t *foot;
	uint64_t toff, tlen;

	if (size < MR_TRAILER_FOOTER_SIZE)
		return;
	foot = data + size - MR_TRAILER_FOOTER_SIZE;
	if (memcmp(foot, MR_TRAILER_MAGIC, 8))
		return;
	toff = mr_get_be64(foot + 16);
	tlen = mr_get_be64(foot + 24);
	if (toff <= size - MR_TRAILER_FOOTER_SIZE && tlen <= size - MR_TRAILER_FOOTER_SIZE - toff)
		mr_put_be64(foot + 32, XXH3_64bits(data + toff, (size_t)tlen));
	mr_put_be64(foot + 40, XXH3_64bits(foot, 40));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *copy;

	parse_file(data, size);
	if (size && data[0] == '{')
		parse_vmdesc((const char *)data, size);

	copy = malloc(size ? size : 1);
	if (!copy)
		return 0;
	memcpy(copy, data, size);
	fix_trailer_hashes(copy, size);
	if (size && memcmp(copy, data, size))
		parse_file(copy, size);
	free(copy);
	return 0;
}
