// SPDX-License-Identifier: MIT
/*
 * Decoder of mapped-ram migration streams. Walks records with a buffered
 * cursor over the source; every length and offset from the file is checked
 * against the source size, with overflow checks, before it is used.
 */
#include "reader.h"
#include "be.h"
#include "vmdesc.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CUR_BUF	      65536u
#define VMDESC_SCAN   (16u << 20) /* how far back from the end a VM description may start */
#define MAX_SECTIONS  100000u
#define BITMAP_WINDOW (64u << 10) /* bytes of bitmap read at a time */

struct cur {
	const struct mr_src *src;
	uint64_t off; /* next byte to read */
	uint8_t buf[CUR_BUF];
	uint64_t buf_off;
	size_t buf_len;
};

struct parser {
	struct cur c;
	struct mr_image *img;
	struct mr_err *err;
	unsigned flags;
	struct mr_vmdesc *vmdesc;
	bool vmdesc_tried;
	size_t cap_sections;
	size_t cap_blocks;
};

int mr_vfail(struct mr_err *err, int code, uint64_t off, const char *block, const char *fmt,
	     va_list ap)
{
	if (!err)
		return code;
	err->off = off;
	err->section[0] = '\0';
	snprintf(err->block, sizeof(err->block), "%s", block ? block : "");
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	return code;
}

int mr_fail(struct mr_err *err, int code, uint64_t off, const char *block, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	mr_vfail(err, code, off, block, fmt, ap);
	va_end(ap);
	return code;
}

static int fail(struct parser *p, int code, uint64_t off, const char *block, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static int fail(struct parser *p, int code, uint64_t off, const char *block, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	mr_vfail(p->err, code, off, block, fmt, ap);
	va_end(ap);
	return code;
}

/* Like fail(), for a device section named `name` rather than a RAM block. */
#define fail_sec(p, code, off, name, ...)                                                     \
	(fail((p), (code), (off), NULL, __VA_ARGS__),                                         \
	 (p)->err ? snprintf((p)->err->section, sizeof((p)->err->section), "%s", (name)) : 0, \
	 (code))

/* Reads exactly n bytes at the cursor; -ENODATA if the source ends first. */
static int cur_read(struct cur *c, void *dst, size_t n)
{
	uint8_t *d = dst;

	while (n) {
		if (c->off >= c->buf_off && c->off < c->buf_off + c->buf_len) {
			size_t at = (size_t)(c->off - c->buf_off);
			size_t k = c->buf_len - at < n ? c->buf_len - at : n;

			memcpy(d, c->buf + at, k);
			d += k;
			c->off += k;
			n -= k;
			continue;
		}
		if (c->off >= c->src->size)
			return -ENODATA;
		uint64_t avail = c->src->size - c->off;
		size_t want = avail < CUR_BUF ? (size_t)avail : CUR_BUF;
		long r = c->src->pread(c->src->ctx, c->buf, want, c->off);

		if (r < 0)
			return (int)r;
		if (r == 0)
			return -ENODATA;
		c->buf_off = c->off;
		c->buf_len = (size_t)r;
	}
	return 0;
}

static int cur_u8(struct cur *c, uint8_t *v)
{
	return cur_read(c, v, 1);
}

static int cur_be16(struct cur *c, uint16_t *v)
{
	uint8_t b[2];
	int r = cur_read(c, b, 2);

	if (!r)
		*v = mr_get_be16(b);
	return r;
}

static int cur_be32(struct cur *c, uint32_t *v)
{
	uint8_t b[4];
	int r = cur_read(c, b, 4);

	if (!r)
		*v = mr_get_be32(b);
	return r;
}

static int cur_be64(struct cur *c, uint64_t *v)
{
	uint8_t b[8];
	int r = cur_read(c, b, 8);

	if (!r)
		*v = mr_get_be64(b);
	return r;
}

/* u8 length + bytes into a NUL-terminated name; rejects embedded NULs. */
static int cur_str8(struct cur *c, char out[MR_NAME_MAX + 1], uint8_t *ret_len)
{
	uint8_t n;
	int r = cur_u8(c, &n);

	if (r)
		return r;
	r = cur_read(c, out, n);
	if (r)
		return r;
	out[n] = 0;
	if (strlen(out) != n)
		return -EBADMSG;
	if (ret_len)
		*ret_len = n;
	return 0;
}

static int cur_skip(struct cur *c, uint64_t n)
{
	uint64_t end;

	if (__builtin_add_overflow(c->off, n, &end) || end > c->src->size)
		return -ENODATA;
	c->off = end;
	return 0;
}

static const char *rd_what(int r)
{
	return r == -ENODATA ? "truncated" : r == -EBADMSG ? "malformed" : "unreadable";
}

static struct mr_section_info *add_section(struct parser *p)
{
	struct mr_image *img = p->img;

	if (img->n_sections == p->cap_sections) {
		size_t cap = p->cap_sections ? p->cap_sections * 2 : 64;
		struct mr_section_info *s;

		if (img->n_sections >= MAX_SECTIONS)
			return NULL;
		if (cap > MAX_SECTIONS)
			cap = MAX_SECTIONS;
		s = realloc(img->sections, cap * sizeof(*s));
		if (!s)
			return NULL;
		img->sections = s;
		p->cap_sections = cap;
	}
	memset(&img->sections[img->n_sections], 0, sizeof(img->sections[0]));
	return &img->sections[img->n_sections++];
}

/* Magic and version. */
static int parse_file_header(struct parser *p)
{
	struct mr_image *img = p->img;
	uint32_t magic, version;
	int r;

	r = cur_be32(&p->c, &magic);
	if (!r)
		r = cur_be32(&p->c, &version);
	if (r)
		return fail(p, r, img->base, NULL, "file header %s", rd_what(r));
	if (magic != MR_FILE_MAGIC)
		return fail(p, -EBADMSG, img->base, NULL,
			    "not a QEMU migration stream (magic 0x%08x, expected 0x%08x)", magic,
			    MR_FILE_MAGIC);
	if (version != MR_FILE_VERSION)
		return fail(p, -EPROTONOSUPPORT, img->base + 4, NULL,
			    "unsupported stream version %u (expected %u)", version,
			    MR_FILE_VERSION);
	return 0;
}

/* The configuration section's type byte and machine name. */
static int parse_machine(struct parser *p)
{
	struct mr_image *img = p->img;
	struct cur *c = &p->c;
	uint64_t cfg_off = c->off;
	uint32_t n;
	uint8_t t;
	int r;

	/* The configuration section is optional in QEMU's grammar, expected here. */
	r = cur_u8(c, &t);
	if (r)
		return fail(p, r, cfg_off, NULL, "configuration section %s", rd_what(r));
	if (t != MR_SEC_CONFIG)
		return fail(p, -EBADMSG, cfg_off, NULL,
			    "expected the configuration section (0x07), found 0x%02x", t);
	r = cur_be32(c, &n);
	if (r)
		return fail(p, r, cfg_off, NULL, "configuration section %s", rd_what(r));
	if (n == 0 || n > MR_NAME_MAX)
		return fail(p, -EBADMSG, cfg_off + 1, NULL, "machine name length %u out of range",
			    n);
	r = cur_read(c, img->machine, n);
	if (r)
		return fail(p, r, cfg_off + 5, NULL, "machine name %s", rd_what(r));
	img->machine[n] = 0;
	if (strlen(img->machine) != n)
		return fail(p, -EBADMSG, cfg_off + 5, NULL, "machine name contains a NUL byte");
	return 0;
}

/* The body of configuration/capabilities: be32 count, count str8 names. */
static int parse_caps(struct parser *p, uint64_t sub_off)
{
	struct mr_image *img = p->img;
	char name[MR_NAME_MAX + 1];
	uint32_t count;
	int r;

	/* A second list would replace the first and desync n_caps. */
	if (img->caps)
		return fail(p, -EBADMSG, sub_off, NULL, "capability list given twice");
	r = cur_be32(&p->c, &count);
	if (r)
		return fail(p, r, sub_off, NULL, "capability list %s", rd_what(r));
	if (count > 64)
		return fail(p, -EBADMSG, sub_off, NULL, "capability count %u out of range", count);
	img->caps = calloc(count ? count : 1, sizeof(char *));
	if (!img->caps)
		return fail(p, -ENOMEM, sub_off, NULL, "out of memory");
	for (uint32_t i = 0; i < count; i++) {
		r = cur_str8(&p->c, name, NULL);
		if (r)
			return fail(p, r, sub_off, NULL, "capability %u %s", i, rd_what(r));
		img->caps[i] = strdup(name);
		if (!img->caps[i])
			return fail(p, -ENOMEM, sub_off, NULL, "out of memory");
		img->n_caps++;
	}
	return 0;
}

/* One configuration subsection after its marker byte at sub_off. */
static int parse_subsection(struct parser *p, uint64_t sub_off)
{
	struct mr_image *img = p->img;
	struct cur *c = &p->c;
	char name[MR_NAME_MAX + 1];
	uint32_t sub_version;
	int r;

	r = cur_str8(c, name, NULL);
	if (!r)
		r = cur_be32(c, &sub_version);
	if (r)
		return fail(p, r, sub_off, NULL, "configuration subsection %s", rd_what(r));
	if (sub_version != 1)
		return fail(p, -EPROTONOSUPPORT, sub_off, NULL,
			    "configuration subsection '%s' version %u (expected 1)", name,
			    sub_version);
	if (strncmp(name, "configuration", 13))
		return fail(p, -EBADMSG, sub_off, NULL,
			    "unexpected subsection '%s' in the configuration", name);
	if (!strcmp(name, MR_CAP_SUBSECTION))
		return parse_caps(p, sub_off);
	if (!strcmp(name, MR_PAGEBITS_SUBSEC)) {
		r = cur_be32(c, &img->target_page_bits);
		if (r)
			return fail(p, r, sub_off, NULL, "target-page-bits %s", rd_what(r));
		if (img->target_page_bits != MR_PAGE_SHIFT)
			return fail(p, -EPROTONOSUPPORT, sub_off, NULL,
				    "target page size 2^%u is not supported (only 4 KiB)",
				    img->target_page_bits);
		return 0;
	}
	if (!strcmp(name, MR_UUID_SUBSEC)) {
		r = cur_read(c, img->uuid, 16);
		if (r)
			return fail(p, r, sub_off, NULL, "uuid %s", rd_what(r));
		img->has_uuid = true;
		return 0;
	}
	return fail(p, -EPROTONOSUPPORT, sub_off, NULL, "unknown configuration subsection '%s'",
		    name);
}

static int parse_header(struct parser *p)
{
	struct cur *c = &p->c;
	uint8_t t;
	int r;

	r = parse_file_header(p);
	if (!r)
		r = parse_machine(p);
	while (!r) {
		uint64_t sub_off = c->off;

		r = cur_u8(c, &t);
		if (r)
			return fail(p, r, sub_off, NULL, "stream ends after the configuration");
		if (t != MR_SEC_SUBSECTION) {
			c->off = sub_off; /* not ours: the first section */
			return 0;
		}
		r = parse_subsection(p, sub_off);
	}
	return r;
}

static int cmp_block_name(const void *a, const void *b)
{
	const struct mr_block_info *const *x = a, *const *y = b;
	int c = strcmp((*x)->name, (*y)->name);

	/* Equal names stay in file order, so the later entry is the one reported. */
	return c ? c : ((*x)->entry_off > (*y)->entry_off) - ((*x)->entry_off < (*y)->entry_off);
}

/*
 * Rejects a block name listed twice. Sorting keeps this O(n log n): a
 * pairwise check let a hostile file of 65536 blocks cost seconds of strcmp.
 */
static int check_unique_blocks(struct parser *p)
{
	struct mr_image *img = p->img;
	const struct mr_block_info **idx;
	int r = 0;

	if (img->n_blocks < 2)
		return 0;
	idx = calloc(img->n_blocks, sizeof(*idx));
	if (!idx)
		return fail(p, -ENOMEM, img->blocks[0].entry_off, NULL, "out of memory");
	for (size_t i = 0; i < img->n_blocks; i++)
		idx[i] = &img->blocks[i];
	qsort(idx, img->n_blocks, sizeof(*idx), cmp_block_name);
	for (size_t i = 1; i < img->n_blocks; i++) {
		if (!strcmp(idx[i - 1]->name, idx[i]->name)) {
			r = fail(p, -EBADMSG, idx[i]->entry_off, idx[i]->name,
				 "RAM block listed twice");
			break;
		}
	}
	free(idx);
	return r;
}

static int parse_block(struct parser *p, uint64_t *remaining)
{
	struct mr_image *img = p->img;
	struct cur *c = &p->c;
	struct mr_block_info *b = &img->blocks[img->n_blocks];
	uint8_t hdr[MR_RAM_HDR_SIZE], nlen;
	uint64_t end, bitmap_end;
	int r;

	memset(b, 0, sizeof(*b));
	b->entry_off = c->off;
	r = cur_str8(c, b->name, &nlen);
	if (r)
		return fail(p, r, b->entry_off, NULL, "RAM block name %s", rd_what(r));
	if (!nlen)
		return fail(p, -EBADMSG, b->entry_off, NULL, "empty RAM block name");
	for (uint8_t i = 0; i < nlen; i++)
		if ((uint8_t)b->name[i] < 0x20 || b->name[i] == 0x7f)
			return fail(p, -EBADMSG, b->entry_off, NULL,
				    "RAM block name contains control characters");
	r = cur_be64(c, &b->length);
	if (r)
		return fail(p, r, b->entry_off, b->name, "block length %s", rd_what(r));
	b->hdr_off = c->off;
	r = cur_read(c, hdr, sizeof(hdr));
	if (r)
		return fail(p, r, b->hdr_off, b->name, "mapped-ram header %s", rd_what(r));
	mr_decode_ram_header(hdr, &b->hdr);

	if (b->length % MR_PAGE_SIZE)
		return fail(p, -EBADMSG, b->entry_off, b->name,
			    "length 0x%llx is not a multiple of 4096",
			    (unsigned long long)b->length);
	if (b->length > *remaining)
		return fail(p, -EBADMSG, b->entry_off, b->name,
			    "length 0x%llx exceeds the RAM total left (0x%llx)",
			    (unsigned long long)b->length, (unsigned long long)*remaining);
	if (b->hdr.version > MR_RAM_HDR_VERSION)
		return fail(p, -EPROTONOSUPPORT, b->hdr_off, b->name,
			    "mapped-ram header version %u is not supported", b->hdr.version);
	if (b->hdr.page_size != MR_PAGE_SIZE)
		return fail(p, -EPROTONOSUPPORT, b->hdr_off + 4, b->name,
			    "page size %llu is not supported (only 4096)",
			    (unsigned long long)b->hdr.page_size);
	if (b->hdr.pages_offset % MR_PAGE_SIZE)
		return fail(p, -EBADMSG, b->hdr_off + 20, b->name,
			    "page region offset 0x%llx is not 4096-aligned",
			    (unsigned long long)b->hdr.pages_offset);
	/* The next record starts after the page region: it must move forward. */
	if (b->hdr.pages_offset < c->off)
		return fail(p, -EBADMSG, b->hdr_off + 20, b->name,
			    "page region offset 0x%llx lies before the header end 0x%llx",
			    (unsigned long long)b->hdr.pages_offset, (unsigned long long)c->off);
	if (__builtin_add_overflow(b->hdr.pages_offset, b->length, &end) || end > p->c.src->size)
		return fail(p, -EOVERFLOW, b->hdr_off + 20, b->name,
			    "page region 0x%llx+0x%llx extends past the end of the stream (0x%llx)",
			    (unsigned long long)b->hdr.pages_offset, (unsigned long long)b->length,
			    (unsigned long long)p->c.src->size);
	b->num_pages = b->length / MR_PAGE_SIZE;
	b->bitmap_size = mr_bitmap_bytes(b->num_pages);
	if (__builtin_add_overflow(b->hdr.bitmap_offset, b->bitmap_size, &bitmap_end) ||
	    bitmap_end > p->c.src->size)
		return fail(p, -EOVERFLOW, b->hdr_off + 12, b->name,
			    "bitmap 0x%llx+0x%llx extends past the end of the stream (0x%llx)",
			    (unsigned long long)b->hdr.bitmap_offset,
			    (unsigned long long)b->bitmap_size, (unsigned long long)p->c.src->size);

	if (!(p->flags & MR_PARSE_NO_BITMAPS)) {
		r = mr_block_load_bitmap(p->c.src, b, !(p->flags & MR_PARSE_COUNT_BITMAPS), p->err);
		if (r)
			return r;
	}
	*remaining -= b->length;
	c->off = end;
	img->n_blocks++;
	return 0;
}

/*
 * Reads a bitmap in fixed windows: memory is the window, plus the bitmap
 * itself only when it is kept. A claimed length sizes nothing before the
 * bitmap is known to lie inside the source, and counting a 512 MiB bitmap
 * (a 16 TiB block) costs 64 KiB.
 */
int mr_block_load_bitmap(const struct mr_src *src, struct mr_block_info *b, bool keep,
			 struct mr_err *err)
{
	const uint64_t win_words = BITMAP_WINDOW / 8, words = b->bitmap_size / 8;
	uint64_t end, present = 0;
	uint64_t *map = NULL, *tmp = NULL;
	uint8_t *raw = NULL;
	int r = 0;

	b->present = 0;
	if (__builtin_add_overflow(b->hdr.bitmap_offset, b->bitmap_size, &end) || end > src->size)
		return mr_fail(err, -EOVERFLOW, b->hdr.bitmap_offset, b->name,
			       "bitmap 0x%llx+0x%llx extends past the end of the stream (0x%llx)",
			       (unsigned long long)b->hdr.bitmap_offset,
			       (unsigned long long)b->bitmap_size, (unsigned long long)src->size);
	if (!words)
		return 0;
	raw = malloc(BITMAP_WINDOW);
	if (keep)
		map = malloc(b->bitmap_size);
	else
		tmp = malloc(BITMAP_WINDOW);
	if (!raw || (keep ? !map : !tmp)) {
		r = mr_fail(err, -ENOMEM, b->hdr.bitmap_offset, b->name,
			    "out of memory for a 0x%llx-byte bitmap",
			    (unsigned long long)(keep ? b->bitmap_size : BITMAP_WINDOW));
		goto out;
	}
	for (uint64_t w = 0; w < words; w += win_words) {
		uint64_t n = words - w < win_words ? words - w : win_words;
		uint64_t off = b->hdr.bitmap_offset + w * 8;
		uint64_t *dst = keep ? map + w : tmp;
		uint64_t bits = b->num_pages - w * 64 < n * 64 ? b->num_pages - w * 64 : n * 64;
		long got = src->pread(src->ctx, raw, (size_t)(n * 8), off);

		if (got < 0 || (uint64_t)got != n * 8) {
			r = got < 0 ? (int)got : -ENODATA;
			r = mr_fail(err, r, off, b->name, "bitmap %s", rd_what(r));
			goto out;
		}
		mr_bitmap_from_file(raw, n, dst);
		/* Only the last window holds bits past the block. */
		if (w + n == words && !mr_bitmap_tail_clear(dst, bits)) {
			r = mr_fail(err, -EBADMSG, b->hdr.bitmap_offset, b->name,
				    "bitmap marks pages past the end of the block");
			goto out;
		}
		present += mr_bitmap_count(dst, bits);
	}
	b->present = present;
	if (keep) {
		free(b->bitmap);
		b->bitmap = map;
		map = NULL;
	}
out:
	free(map);
	free(tmp);
	free(raw);
	return r;
}

/* Reads be64 words of a RAM section part up to EOS; only MEM_SIZE and EOS are valid. */
static int parse_ram_words(struct parser *p, uint64_t sec_off, bool start)
{
	struct mr_image *img = p->img;
	struct cur *c = &p->c;
	bool mem_size_seen = false;
	int r;

	for (;;) {
		uint64_t w_off = c->off, w, flags;

		r = cur_be64(c, &w);
		if (r)
			return fail(p, r, w_off, NULL, "RAM section %s", rd_what(r));
		flags = w & MR_RAM_FLAG_MASK;
		if (flags & MR_RAM_EOS) {
			if (flags != MR_RAM_EOS)
				return fail(p, -EBADMSG, w_off, NULL, "unexpected RAM flags 0x%llx",
					    (unsigned long long)flags);
			return 0;
		}
		if (flags != MR_RAM_MEM_SIZE || !start || mem_size_seen)
			return fail(p, -EBADMSG, w_off, NULL,
				    "unexpected RAM flags 0x%llx in a mapped-ram stream",
				    (unsigned long long)flags);
		mem_size_seen = true;
		uint64_t remaining = w & ~(uint64_t)MR_RAM_FLAG_MASK;

		img->ram_total = remaining;
		/* Each block consumes at least 4096 bytes of the total or of the file. */
		while (remaining) {
			if (img->n_blocks == p->cap_blocks) {
				/* Doubling: growing by a constant step copies O(n^2) bytes. */
				size_t cap = p->cap_blocks ? p->cap_blocks * 2 : 16;
				struct mr_block_info *nb;

				if (img->n_blocks >= MR_MAX_BLOCKS)
					return fail(p, -EBADMSG, c->off, NULL,
						    "too many RAM blocks");
				nb = realloc(img->blocks, cap * sizeof(*nb));
				if (!nb)
					return fail(p, -ENOMEM, c->off, NULL, "out of memory");
				img->blocks = nb;
				p->cap_blocks = cap;
			}
			uint8_t peek[8];
			uint64_t at = c->off;

			/* An EOS word where a block should be: the total claims too much. */
			if (!cur_read(c, peek, sizeof(peek)) && mr_get_be64(peek) == MR_RAM_EOS)
				return fail(
					p, -EBADMSG, at, NULL,
					"MEM_SIZE total exceeds the listed blocks by 0x%llx bytes",
					(unsigned long long)remaining);
			c->off = at;
			uint64_t before = remaining;

			r = parse_block(p, &remaining);
			if (r) {
				/* The failed block is not counted, so its bitmap is ours to free.
				 */
				free(img->blocks[img->n_blocks].bitmap);
				return r;
			}
			if (remaining == before) {
				/* A zero-length block: allowed, but guard against a loop. */
				if (img->n_blocks >= MR_MAX_BLOCKS)
					return fail(p, -EBADMSG, c->off, NULL,
						    "too many RAM blocks");
			}
		}
		r = check_unique_blocks(p);
		if (r)
			return r;
		img->ram_end = c->off;
		(void)sec_off;
	}
}

static int parse_footer(struct parser *p, uint32_t id, const char *what)
{
	struct cur *c = &p->c;
	uint64_t off = c->off;
	uint8_t t;
	uint32_t fid;
	int r = cur_u8(c, &t);

	if (!r)
		r = cur_be32(c, &fid);
	if (r)
		return fail_sec(p, r, off, what, "section footer %s", rd_what(r));
	if (t != MR_SEC_FOOTER || fid != id)
		return fail_sec(p, -EBADMSG, off, what,
				"bad section footer (0x%02x id %u, expected 0x7e id %u)", t, fid,
				id);
	return 0;
}

static int load_vmdesc(struct parser *p)
{
	const struct mr_src *src = p->c.src;
	uint64_t off, len;
	char *json;
	int r;

	if (p->vmdesc_tried)
		return p->vmdesc ? 0 : -ENOENT;
	p->vmdesc_tried = true;
	r = mr_find_vmdesc(src, p->c.off, src->size, &off, &len);
	if (r)
		return r;
	json = malloc(len ? len : 1);
	if (!json)
		return -ENOMEM;
	long n = src->pread(src->ctx, json, len, off + 5);

	if (n < 0 || (uint64_t)n != len) {
		free(json);
		return n < 0 ? (int)n : -ENODATA;
	}
	r = mr_vmdesc_parse(json, len, &p->vmdesc);
	free(json);
	return r;
}

/* Number of earlier sections with the same idstr and instance (for repeated devices). */
static unsigned section_nth(const struct mr_image *img, const struct mr_section_info *s)
{
	unsigned n = 0;

	for (const struct mr_section_info *o = img->sections; o < s; o++)
		if ((o->type == MR_SEC_FULL || o->type == MR_SEC_START) &&
		    o->instance == s->instance && !strcmp(o->idstr, s->idstr))
			n++;
	return n;
}

/* Walks sections up to EOF and the optional VM description; ram_seen for a raw tail. */
/* The RAM SECTION_START (header read): its checks, words, blocks and EOS. */
static int parse_ram_start(struct parser *p, const struct mr_section_info *s, uint64_t off,
			   bool *ram_seen)
{
	struct mr_image *img = p->img;
	int r;

	if (*ram_seen)
		return fail(p, -EBADMSG, off, NULL, "second RAM section start");
	if (s->instance != 0)
		return fail(p, -EBADMSG, off, NULL, "RAM section instance %u (expected 0)",
			    s->instance);
	if (s->version != MR_RAM_VERSION)
		return fail(p, -EPROTONOSUPPORT, off, NULL, "RAM section version %u (expected %u)",
			    s->version, MR_RAM_VERSION);
	if (!mr_image_has_cap(img, "mapped-ram"))
		return fail(p, -EPROTONOSUPPORT, off, NULL,
			    "not a mapped-ram stream (capability missing)");
	if (mr_image_has_cap(img, "x-ignore-shared"))
		return fail(p, -EPROTONOSUPPORT, off, NULL,
			    "x-ignore-shared with mapped-ram is not "
			    "supported (QEMU 10.0 cannot save it either)");
	*ram_seen = true;
	img->ram_id = s->id;
	r = parse_ram_words(p, off, true);
	if (r)
		return r;
	if (!img->n_blocks && !img->ram_end)
		img->ram_end = p->c.off - 8;
	return 0;
}

/* snapmr's device-state section (header read): be64 length and that many bytes. */
static int parse_devstate(struct parser *p, const struct mr_section_info *s, uint64_t off)
{
	struct mr_image *img = p->img;
	uint64_t len;
	int r;

	if (img->has_devstate)
		return fail_sec(p, -EBADMSG, off, s->idstr, "second device-state section");
	if (s->instance != 0 || s->version != MR_DEVSTATE_VERSION)
		return fail_sec(p, -EPROTONOSUPPORT, off, s->idstr,
				"instance %u version %u (expected 0 and %u)", s->instance,
				s->version, MR_DEVSTATE_VERSION);
	r = cur_be64(&p->c, &len);
	if (r)
		return fail_sec(p, r, off, s->idstr, "length %s", rd_what(r));
	img->has_devstate = true;
	img->devstate_off = p->c.off;
	img->devstate_len = len;
	if (cur_skip(&p->c, len))
		return fail_sec(p, -EOVERFLOW, off, s->idstr,
				"device state of 0x%llx bytes extends past "
				"the end of the stream",
				(unsigned long long)len);
	return 0;
}

/* A QEMU device section (header read), skipped by the size its VM description gives. */
static int skip_device(struct parser *p, const struct mr_section_info *s, uint64_t off)
{
	uint64_t body;
	int r;

	r = load_vmdesc(p);
	if (r == -ENOMEM)
		return fail_sec(p, r, off, s->idstr, "out of memory");
	if (r)
		return fail_sec(p, -EPROTONOSUPPORT, off, s->idstr,
				"cannot size device section (no usable VM "
				"description: %s)",
				r == -E2BIG ? "too many values" : strerror(-r));
	r = mr_vmdesc_section_size(p->vmdesc, s->idstr, s->instance, section_nth(p->img, s), &body);
	if (r)
		return fail_sec(p, -EPROTONOSUPPORT, off, s->idstr,
				"device section instance %u is not in the "
				"VM description",
				s->instance);
	if (cur_skip(&p->c, body))
		return fail_sec(p, -ENODATA, off, s->idstr,
				"device section of 0x%llx bytes is truncated",
				(unsigned long long)body);
	return 0;
}

/* A START or FULL section: header, body by kind, footer. */
static int parse_named(struct parser *p, struct mr_section_info *s, uint64_t off, bool *ram_seen)
{
	struct cur *c = &p->c;
	int r;

	r = cur_be32(c, &s->id);
	if (!r)
		r = cur_str8(c, s->idstr, NULL);
	if (!r)
		r = cur_be32(c, &s->instance);
	if (!r)
		r = cur_be32(c, &s->version);
	if (r)
		return fail(p, r, off, NULL, "section header %s", rd_what(r));
	if (s->type == MR_SEC_START && !strcmp(s->idstr, MR_RAM_IDSTR))
		r = parse_ram_start(p, s, off, ram_seen);
	else if (s->type == MR_SEC_FULL && !strcmp(s->idstr, MR_DEVSTATE_IDSTR))
		r = parse_devstate(p, s, off);
	else if (s->type == MR_SEC_FULL)
		r = skip_device(p, s, off);
	else
		return fail_sec(p, -EPROTONOSUPPORT, off, s->idstr,
				"cannot walk iterative section '%s' (id %u)", s->idstr, s->id);
	if (r)
		return r;
	return parse_footer(p, s->id, s->idstr);
}

/* A PART or END section: only of the RAM section, only EOS words. */
static int parse_ram_part(struct parser *p, struct mr_section_info *s, uint64_t off, bool ram_seen)
{
	int r;

	r = cur_be32(&p->c, &s->id);
	if (r)
		return fail(p, r, off, NULL, "section header %s", rd_what(r));
	if (!ram_seen || s->id != p->img->ram_id)
		return fail(p, -EPROTONOSUPPORT, off, NULL, "cannot walk part of section id %u",
			    s->id);
	snprintf(s->idstr, sizeof(s->idstr), "%s", MR_RAM_IDSTR);
	r = parse_ram_words(p, off, false);
	if (r)
		return r;
	return parse_footer(p, s->id, MR_RAM_IDSTR);
}

static int parse_command(struct parser *p, struct mr_section_info *s, uint64_t off)
{
	uint16_t len;
	int r;

	r = cur_be16(&p->c, &s->command);
	if (!r)
		r = cur_be16(&p->c, &len);
	if (!r)
		r = cur_skip(&p->c, len);
	if (r)
		return fail(p, r, off, NULL, "command record %s", rd_what(r));
	return 0;
}

/* An optional VM description follows EOF and ends the stream. */
static int parse_vmdesc_record(struct parser *p)
{
	struct mr_image *img = p->img;
	struct cur *c = &p->c;
	uint64_t off = c->off;
	uint32_t len;
	uint8_t t;
	int r;

	if (cur_u8(c, &t) || t != MR_SEC_VMDESC) {
		c->off = off;
		return 0;
	}
	r = cur_be32(c, &len);
	if (!r)
		r = cur_skip(c, len);
	if (r)
		return fail(p, r, off, NULL, "VM description %s", rd_what(r));
	img->has_vmdesc = true;
	img->vmdesc_off = off;
	img->vmdesc_len = len;
	img->stream_end = c->off;
	return 0;
}

static int parse_sections(struct parser *p, bool ram_seen)
{
	struct mr_image *img = p->img;
	struct cur *c = &p->c;
	int r;

	for (;;) {
		uint64_t off = c->off;
		struct mr_section_info *s;
		uint8_t t;

		r = cur_u8(c, &t);
		if (r)
			return fail(p, r, off, NULL, "stream ends before the EOF marker");
		if (t == MR_SEC_EOF) {
			img->eof_off = off;
			img->stream_end = c->off;
			break;
		}
		s = add_section(p);
		if (!s)
			return fail(p, p->cap_sections >= MAX_SECTIONS ? -EBADMSG : -ENOMEM, off,
				    NULL,
				    p->cap_sections >= MAX_SECTIONS ? "more than %u sections"
								    : "out of memory (%u sections)",
				    MAX_SECTIONS);
		s->type = t;
		s->off = off;
		switch (t) {
		case MR_SEC_START:
		case MR_SEC_FULL: r = parse_named(p, s, off, &ram_seen); break;
		case MR_SEC_PART:
		case MR_SEC_END: r = parse_ram_part(p, s, off, ram_seen); break;
		case MR_SEC_COMMAND: r = parse_command(p, s, off); break;
		default: return fail(p, -EBADMSG, off, NULL, "unknown section type 0x%02x", t);
		}
		if (r)
			return r;
		s->size = c->off - off;
	}
	if (!ram_seen)
		return fail(p, -EBADMSG, img->base, NULL, "stream has no RAM section");
	return parse_vmdesc_record(p);
}

static struct parser *parser_new(const struct mr_src *src, uint64_t base, unsigned flags,
				 struct mr_err *err)
{
	struct parser *p;

	if (err)
		memset(err, 0, sizeof(*err));
	p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->img = calloc(1, sizeof(*p->img));
	if (!p->img) {
		free(p);
		return NULL;
	}
	p->c.src = src;
	p->c.off = base;
	p->err = err;
	p->flags = flags;
	p->img->base = base;
	p->img->file_size = src->size;
	return p;
}

/* Frees the parser; hands the image to *ret_img on success, frees it otherwise. */
static int parser_finish(struct parser *p, int r, struct mr_image **ret_img)
{
	mr_vmdesc_free(p->vmdesc);
	if (r || !ret_img)
		mr_image_free(p->img);
	else
		*ret_img = p->img;
	free(p);
	return r;
}

int mr_image_parse(const struct mr_src *src, uint64_t base, unsigned flags,
		   struct mr_image **ret_img, struct mr_err *err)
{
	struct parser *p = parser_new(src, base, flags, err);
	int r;

	if (!p)
		return -ENOMEM;
	if (base >= src->size)
		r = fail(p, -ENODATA, base, NULL,
			 "stream offset is at or past the end of the file");
	else
		r = parse_header(p);
	if (!r)
		r = parse_sections(p, false);
	return parser_finish(p, r, ret_img);
}

int mr_tail_parse(const struct mr_src *src, uint32_t *ret_ram_id, struct mr_err *err)
{
	struct parser *p = parser_new(src, 0, MR_PARSE_NO_BITMAPS, err);
	uint8_t head[MR_TAIL_HEAD_SIZE];
	int r;

	if (!p)
		return -ENOMEM;
	/* The RAM START's EOS word and footer: they name the RAM section id. */
	r = cur_read(&p->c, head, sizeof(head));
	if (r) {
		r = fail(p, r, 0, NULL, "the tail is shorter than the RAM EOS word and footer");
		goto out;
	}
	p->c.off = 0;
	p->img->ram_id = mr_get_be32(head + 9);
	if (mr_get_be64(head) != MR_RAM_EOS || head[8] != MR_SEC_FOOTER) {
		r = fail(p, -EBADMSG, 0, NULL,
			 "the tail does not start with the RAM EOS word and footer");
		goto out;
	}
	if (!p->img->ram_id) {
		r = fail(p, -EBADMSG, 9, NULL, "the tail names RAM section id 0");
		goto out;
	}
	r = parse_ram_words(p, 0, false);
	if (!r)
		r = parse_footer(p, p->img->ram_id, MR_RAM_IDSTR);
	if (!r)
		r = parse_sections(p, true);
	/* Whatever follows the stream would sit between it and the trailer. */
	if (!r && p->img->stream_end != src->size)
		r = fail(p, -EBADMSG, p->img->stream_end, NULL,
			 "%llu bytes after the end of the stream",
			 (unsigned long long)(src->size - p->img->stream_end));
	if (!r && ret_ram_id)
		*ret_ram_id = p->img->ram_id;
out:
	return parser_finish(p, r, NULL);
}

void mr_image_free(struct mr_image *img)
{
	if (!img)
		return;
	for (unsigned i = 0; i < img->n_caps; i++)
		free(img->caps[i]);
	free(img->caps);
	for (size_t i = 0; i < img->n_blocks; i++)
		free(img->blocks[i].bitmap);
	free(img->blocks);
	free(img->sections);
	free(img);
}

bool mr_image_has_cap(const struct mr_image *img, const char *name)
{
	for (unsigned i = 0; i < img->n_caps; i++)
		if (!strcmp(img->caps[i], name))
			return true;
	return false;
}

const struct mr_block_info *mr_image_block(const struct mr_image *img, const char *name)
{
	for (size_t i = 0; i < img->n_blocks; i++)
		if (!strcmp(img->blocks[i].name, name))
			return &img->blocks[i];
	return NULL;
}

int mr_find_vmdesc(const struct mr_src *src, uint64_t lo, uint64_t end, uint64_t *ret_off,
		   uint64_t *ret_len)
{
	uint64_t start = end > lo + VMDESC_SCAN ? end - VMDESC_SCAN : lo;
	uint64_t span = end - start;
	uint8_t *buf;
	int r = -ENOENT;

	if (end <= lo || span < 6)
		return -ENOENT;
	buf = malloc(span);
	if (!buf)
		return -ENOMEM;
	long n = src->pread(src->ctx, buf, span, start);

	if (n < 0 || (uint64_t)n != span) {
		free(buf);
		return n < 0 ? (int)n : -ENODATA;
	}
	/* The record is 0x06, be32 N, then N bytes of JSON running exactly to `end`. */
	for (uint64_t i = span - 6 + 1; i-- > 0;) {
		if (buf[i] == MR_SEC_VMDESC && buf[i + 5] == '{' &&
		    mr_get_be32(buf + i + 1) == span - i - 5) {
			*ret_off = start + i;
			*ret_len = span - i - 5;
			r = 0;
			break;
		}
	}
	free(buf);
	return r;
}

int mr_detect_stream(const struct mr_src *src, uint64_t *ret_offset, enum mr_container *ret_kind)
{
	uint8_t h[MR_LIBVIRT_HDR_SIZE], q[8];
	enum mr_container kind;
	uint64_t off;
	long n;

	n = src->pread(src->ctx, h, sizeof(h), 0);
	if (n < 0)
		return (int)n;
	if (n >= 8 && mr_get_be32(h) == MR_FILE_MAGIC) {
		*ret_offset = 0;
		*ret_kind = MR_CONTAINER_NONE;
		return 0;
	}
	if (n < (long)sizeof(h))
		return -EBADMSG;
	if (!memcmp(h, MR_LIBVIRT_MAGIC, 16))
		kind = MR_CONTAINER_LIBVIRT;
	else if (!memcmp(h, MR_LIBVIRT_MAGIC_PARTIAL, 16))
		kind = MR_CONTAINER_LIBVIRT_PARTIAL;
	else
		return -EBADMSG;
	/* data_len is in the writer's byte order: little-endian on x86 hosts. */
	off = MR_LIBVIRT_HDR_SIZE + ((uint64_t)h[20] | (uint64_t)h[21] << 8 |
				     (uint64_t)h[22] << 16 | (uint64_t)h[23] << 24);
	n = src->pread(src->ctx, q, sizeof(q), off);
	if (n != (long)sizeof(q) || mr_get_be32(q) != MR_FILE_MAGIC)
		return -EBADMSG;
	*ret_offset = off;
	*ret_kind = kind;
	return 0;
}
