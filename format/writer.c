// SPDX-License-Identifier: MIT
/* The stream plan and the encoders of every piece snapsave writes around the pages. */
#include "writer.h"
#include "stream.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const char *const writer_caps[] = { "mapped-ram" };

static const char *machine_of(const struct mr_writer *w)
{
	return w->machine ? w->machine : MR_DEFAULT_MACHINE;
}

int mr_writer_total(const struct mr_writer *w, uint64_t *ret_total)
{
	uint64_t total = 0;

	/* MEM_SIZE shares its word with the flags: the total must leave them clear. */
	for (size_t i = 0; i < w->n_blocks; i++)
		if (__builtin_add_overflow(total, w->blocks[i].length, &total) ||
		    (total & MR_RAM_FLAG_MASK))
			return -EOVERFLOW;
	*ret_total = total;
	return 0;
}

int mr_writer_encode_head(const struct mr_writer *w, struct mr_buf *b)
{
	mr_encode_file_header(b);
	mr_encode_config(b, machine_of(w), writer_caps, 1);
	mr_encode_ram_start(b, w->ram_id, w->total);
	return b->err;
}

int mr_writer_plan(struct mr_writer *w, struct mr_err *err)
{
	struct mr_buf head = MR_BUF_INIT;
	uint64_t off;
	int r;

	if (err)
		memset(err, 0, sizeof(*err));
	r = mr_writer_total(w, &w->total);
	if (!r)
		r = mr_writer_encode_head(w, &head);
	w->head_len = head.len;
	mr_buf_free(&head);
	if (r) {
		if (err)
			snprintf(err->msg, sizeof(err->msg), "%s",
				 r == -EOVERFLOW ? "total RAM size overflows" : "out of memory");
		return r;
	}
	if (__builtin_add_overflow(w->base, w->head_len, &off))
		return -EOVERFLOW;
	w->marker_off = 0;
	for (size_t i = 0; i < w->n_blocks; i++) {
		struct mr_wblock *wb = &w->blocks[i];

		/*
		 * The first block always has room for the marker: without it a
		 * file that lost its trailer would pass for a QEMU file.
		 */
		r = mr_layout_block_room(off, strlen(wb->name), wb->length, MR_PAGES_ALIGN,
					 i ? 0 : MR_SNAPMR_MARKER_LEN, &wb->l);
		if (r) {
			if (err) {
				err->off = off;
				snprintf(err->block, sizeof(err->block), "%s", wb->name);
				snprintf(err->msg, sizeof(err->msg), "layout overflows");
			}
			return r;
		}
		off = wb->l.next_off;
	}
	/* Padding before a page region, which QEMU never writes nor reads. */
	if (w->n_blocks)
		w->marker_off = w->blocks[0].l.bitmap_off + w->blocks[0].l.bitmap_size;
	w->ram_end = off;
	/* The section header ends in its be64 length. */
	r = mr_writer_encode_devstate_head(w, &head);
	w->devstate_len_off = w->ram_end + head.len - 8;
	mr_buf_free(&head);
	if (r)
		return r;
	w->devstate_off = w->tail == MR_WTAIL_RAW ? w->ram_end : w->devstate_len_off + 8;
	return 0;
}

int mr_writer_encode_entry(const struct mr_writer *w, size_t i, struct mr_buf *b)
{
	const struct mr_wblock *wb = &w->blocks[i];
	struct mr_ram_header h = { MR_RAM_HDR_VERSION, MR_PAGE_SIZE, wb->l.bitmap_off,
				   wb->l.pages_off };

	mr_encode_block_entry(b, wb->name, wb->length, &h);
	return b->err;
}

int mr_writer_encode_marker(struct mr_buf *b)
{
	mr_buf_put(b, MR_SNAPMR_MARKER, MR_SNAPMR_MARKER_LEN);
	return b->err;
}

int mr_writer_encode_devstate_head(const struct mr_writer *w, struct mr_buf *b)
{
	mr_encode_ram_eos(b, w->ram_id);
	mr_encode_devstate_hdr(b, 0);
	return b->err;
}

int mr_writer_set_devstate_len(struct mr_writer *w, uint64_t len)
{
	struct mr_buf end = MR_BUF_INIT;
	int r;

	if (__builtin_add_overflow(w->devstate_off, len, &w->end_off))
		return -EOVERFLOW;
	w->devstate_len = len;
	r = mr_writer_encode_end(w, &end);
	if (!r && __builtin_add_overflow(w->end_off, end.len, &w->stream_end))
		r = -EOVERFLOW;
	mr_buf_free(&end);
	return r;
}

int mr_writer_encode_devstate_len(const struct mr_writer *w, struct mr_buf *b)
{
	mr_buf_be64(b, w->devstate_len);
	return b->err;
}

int mr_writer_encode_end(const struct mr_writer *w, struct mr_buf *b)
{
	mr_encode_footer(b, MR_DEVSTATE_ID);
	mr_buf_u8(b, MR_SEC_EOF);
	mr_encode_vmdesc_devstate(b, w->devstate_len);
	return b->err;
}

int mr_writer_check_tail(struct mr_writer *w, const uint8_t *tail, size_t len, struct mr_err *err)
{
	struct mr_buf t = { (uint8_t *)tail, len, len, 0 };
	struct mr_src src = { .pread = mr_buf_pread, .ctx = &t, .size = len };

	return mr_tail_parse(&src, &w->ram_id, err);
}

int mr_writer_set_raw_tail(struct mr_writer *w, uint64_t len)
{
	if (__builtin_add_overflow(w->ram_end, len, &w->stream_end))
		return -EOVERFLOW;
	w->devstate_off = w->ram_end;
	w->devstate_len = len;
	return 0;
}
