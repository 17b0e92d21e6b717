// SPDX-License-Identifier: MIT
/* The whole-file parse: trailer, stream, marker and their cross-checks. */
#include "file.h"
#include "stream.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void mr_file_clear(struct mr_file *f)
{
	mr_image_free(f->img);
	mr_trailer_free(f->trailer);
	f->img = NULL;
	f->trailer = NULL;
}

bool mr_file_has_marker(const struct mr_src *src, const struct mr_image *img)
{
	for (size_t i = 0; i < img->n_blocks; i++) {
		const struct mr_block_info *b = &img->blocks[i];
		uint64_t at = b->hdr.bitmap_offset + b->bitmap_size;
		char m[MR_SNAPMR_MARKER_LEN];

		if (at < b->hdr.bitmap_offset || b->hdr.pages_offset < at ||
		    b->hdr.pages_offset - at < MR_SNAPMR_MARKER_LEN)
			continue;
		return src->pread(src->ctx, m, sizeof(m), at) == (long)sizeof(m) &&
		       !memcmp(m, MR_SNAPMR_MARKER, sizeof(m));
	}
	return false;
}

int mr_file_devstate_range(const struct mr_image *img, bool raw, uint64_t *ret_off,
			   uint64_t *ret_len, struct mr_err *err)
{
	memset(err, 0, sizeof(*err));
	if (raw) {
		const struct mr_section_info *s = img->n_sections ? &img->sections[0] : NULL;

		/* Early-setup sections before RAM would be lost from a tail-only copy. */
		if (s && (s->type != MR_SEC_START || strcmp(s->idstr, MR_RAM_IDSTR))) {
			err->off = s->off;
			snprintf(err->section, sizeof(err->section), "%s", s->idstr);
			snprintf(err->msg, sizeof(err->msg),
				 "precedes RAM; the raw tail holds only what follows RAM");
			return -EPROTONOSUPPORT;
		}
		*ret_off = img->ram_end;
		*ret_len = img->stream_end - img->ram_end;
	} else if (img->has_devstate) {
		*ret_off = img->devstate_off;
		*ret_len = img->devstate_len;
	} else {
		snprintf(err->msg, sizeof(err->msg),
			 "the file has no snapmr device-state section (a QEMU file keeps device "
			 "state in its raw stream tail)");
		return -ENOENT;
	}
	return 0;
}

/*
 * A complete file with bytes appended after it: the completion record is not
 * in the last 48 bytes but where the stream and its table say it ends. Looks
 * there (the stream parsed without bitmaps, the table's record sizes) and
 * parses the trailer as if the file ended at it. Returns 0 and the trailer's
 * end, or -ENOENT.
 */
static int find_moved_trailer(const struct mr_src *src, uint64_t offset, struct mr_trailer **ret,
			      uint64_t *ret_end)
{
	struct mr_image *img = NULL;
	uint64_t end;
	int r;

	r = mr_image_parse(src, offset, MR_PARSE_NO_BITMAPS, &img, NULL);
	if (!r)
		r = mr_trailer_locate(src, img->stream_end, src->size, &end);
	if (!r && end >= src->size)
		r = -ENOENT;
	if (!r)
		r = mr_trailer_parse_flags(src, end, MR_TRAILER_NO_HASHES, ret, NULL);
	if (!r && ((*ret)->stream_base != offset || (*ret)->stream_end != img->stream_end)) {
		mr_trailer_free(*ret);
		*ret = NULL;
		r = -ENOENT;
	}
	mr_image_free(img);
	if (r)
		return -ENOENT;
	*ret_end = end;
	return 0;
}

/* Drops an unusable trailer, keeping why. */
static void trailer_unusable(struct mr_file *f, int r)
{
	mr_trailer_free(f->trailer);
	f->trailer = NULL;
	f->trailer_status = r;
}

/* The trailer at the end of src, or moved by appended bytes, and whether it fits `offset`. */
static void parse_trailer(const struct mr_src *src, uint64_t offset, struct mr_file *f)
{
	struct mr_err me;
	int r;

	r = mr_trailer_parse_flags(src, src->size, MR_TRAILER_NO_HASHES, &f->trailer, &me);
	if (r == -ENOENT && me.off + MR_TRAILER_FOOTER_SIZE == src->size &&
	    !strcmp(me.msg, "no snapmr trailer")) {
		uint64_t end;

		/* No footer magic at the end: is there a complete file before added bytes? */
		if (!find_moved_trailer(src, offset, &f->trailer, &end)) {
			f->appended = src->size - end;
			f->record_off = end - MR_TRAILER_FOOTER_SIZE;
			r = 0;
		}
	}
	f->trailer_status = r;
	if (!r && f->trailer->stream_base != offset) {
		snprintf(f->trailer_msg, sizeof(f->trailer_msg),
			 "the checksum table describes a stream at offset %llu, not %llu",
			 (unsigned long long)f->trailer->stream_base, (unsigned long long)offset);
		trailer_unusable(f, -EBADMSG);
	} else if (r && r != -ENOENT) {
		snprintf(f->trailer_msg, sizeof(f->trailer_msg), "offset 0x%llx: %s%s%s",
			 (unsigned long long)me.off, me.block[0] ? me.block : "",
			 me.block[0] ? ": " : "", me.msg);
	}
}

int mr_file_parse(const struct mr_src *src, uint64_t offset, struct mr_file *ret,
		  struct mr_err *err)
{
	struct mr_file *f = ret;
	struct mr_src s = *src;
	int r;

	memset(f, 0, sizeof(*f));
	/* The trailer first: it says where the stream ends. */
	parse_trailer(&s, offset, f);
	if (f->trailer)
		s.size = f->trailer->stream_end;

	/* Bitmaps are counted in windows, not kept: their size follows a length the file claims. */
	r = mr_image_parse(&s, offset, MR_PARSE_COUNT_BITMAPS, &f->img, err);
	if (r) {
		/* A save cut short ends inside its stream, with no completion record. */
		f->incomplete = r == -ENODATA && f->trailer_status == -ENOENT;
		mr_file_clear(f);
		return r;
	}
	if (f->trailer && f->img->stream_end != f->trailer->stream_end) {
		snprintf(f->trailer_msg, sizeof(f->trailer_msg),
			 "the checksum table starts at 0x%llx but the stream ends at 0x%llx",
			 (unsigned long long)f->trailer->stream_end,
			 (unsigned long long)f->img->stream_end);
		trailer_unusable(f, -EBADMSG);
	}
	f->marker = mr_file_has_marker(&s, f->img);
	return 0;
}
