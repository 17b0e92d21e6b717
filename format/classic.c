// SPDX-License-Identifier: MIT
/*
 * Decoder and encoder of QEMU's classic precopy stream with x-ignore-shared
 * (docs/format-classic.md). The decoder reads forward only, through one
 * buffer; every length from the stream is checked before use.
 */
#include "classic.h"
#include "be.h"
#include "layout.h"
#include "stream.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEC_BUF	    65536u
#define ENC_FLUSH   (256u << 10)
#define CAPS_MAX    64u
#define TARGET_BITS 12u

/* RAM flags only a classic stream may carry, besides those in stream.h. */
#define RAM_FLAG_FULL	  0x001u /* obsolete, never written since QEMU 1.x */
#define RAM_FLAG_COMPRESS 0x100u

struct dec {
	const struct mr_classic_ops *ops;
	struct mr_err *err;
	struct mr_classic *c;
	uint64_t off; /* stream offset of the next unconsumed byte */
	size_t pos, len;
	bool eof;
	struct mr_classic_block *last; /* block of the last page record (CONTINUE) */
	uint8_t buf[DEC_BUF];
};

/* Refills the buffer; 0, or -errno from the source. Sets eof at the end. */
static int fill(struct dec *d)
{
	long n;

	if (d->pos < d->len || d->eof)
		return 0;
	d->pos = d->len = 0;
	do
		n = d->ops->read(d->ops->ctx, d->buf, sizeof(d->buf));
	while (n == -EINTR);
	if (n < 0)
		return (int)n;
	if ((size_t)n > sizeof(d->buf))
		return -EIO;
	if (n == 0)
		d->eof = true;
	d->len = (size_t)n;
	return 0;
}

/*
 * Takes exactly n bytes into dst (NULL: discard). A stream that ends first is
 * -ENODATA for the record that starts at rec_off.
 */
static int get(struct dec *d, void *dst, size_t n, uint64_t rec_off, const char *what)
{
	uint8_t *p = dst;

	while (n) {
		int r = fill(d);
		size_t k;

		if (r)
			return mr_fail(d->err, r, d->off, NULL, "read error in %s", what);
		if (d->eof)
			return mr_fail(d->err, -ENODATA, rec_off, NULL, "stream ends inside %s",
				       what);
		k = d->len - d->pos < n ? d->len - d->pos : n;
		if (p) {
			memcpy(p, d->buf + d->pos, k);
			p += k;
		}
		d->pos += k;
		d->off += k;
		n -= k;
	}
	return 0;
}

static int get_u8(struct dec *d, uint8_t *v, uint64_t rec_off, const char *what)
{
	return get(d, v, 1, rec_off, what);
}

static int get_be16(struct dec *d, uint16_t *v, uint64_t rec_off, const char *what)
{
	uint8_t b[2];
	int r = get(d, b, 2, rec_off, what);

	if (!r)
		*v = mr_get_be16(b);
	return r;
}

static int get_be32(struct dec *d, uint32_t *v, uint64_t rec_off, const char *what)
{
	uint8_t b[4];
	int r = get(d, b, 4, rec_off, what);

	if (!r)
		*v = mr_get_be32(b);
	return r;
}

static int get_be64(struct dec *d, uint64_t *v, uint64_t rec_off, const char *what)
{
	uint8_t b[8];
	int r = get(d, b, 8, rec_off, what);

	if (!r)
		*v = mr_get_be64(b);
	return r;
}

/* The next byte without consuming it; -ENODATA at the end of the stream. */
static int peek(struct dec *d, uint8_t *v, const char *what)
{
	int r = fill(d);

	if (r)
		return mr_fail(d->err, r, d->off, NULL, "read error before %s", what);
	if (d->eof)
		return mr_fail(d->err, -ENODATA, d->off, NULL, "stream ends before %s", what);
	*v = d->buf[d->pos];
	return 0;
}

/* str8 into out (MR_NAME_MAX + 1 bytes): 1..255 bytes, no NUL or control byte. */
static int get_name(struct dec *d, char *out, uint64_t rec_off, const char *what)
{
	uint8_t n;
	int r = get_u8(d, &n, rec_off, what);

	if (r)
		return r;
	if (!n)
		return mr_fail(d->err, -EBADMSG, rec_off, NULL, "empty %s", what);
	r = get(d, out, n, rec_off, what);
	if (r)
		return r;
	out[n] = '\0';
	for (unsigned i = 0; i < n; i++)
		if ((uint8_t)out[i] < 0x20 || (uint8_t)out[i] == 0x7f)
			return mr_fail(d->err, -EBADMSG, rec_off, NULL,
				       "%s has a control byte 0x%02x at %u", what, (uint8_t)out[i],
				       i);
	return 0;
}

static int parse_caps(struct dec *d, uint64_t sub_off)
{
	struct mr_classic *c = d->c;
	bool ignore_shared = false;
	uint32_t n;
	int r;

	if (c->caps)
		return mr_fail(d->err, -EBADMSG, sub_off, NULL, "second capabilities subsection");
	r = get_be32(d, &n, sub_off, "capability count");
	if (r)
		return r;
	if (n > CAPS_MAX)
		return mr_fail(d->err, -EOVERFLOW, sub_off, NULL, "%u capabilities (at most %u)", n,
			       CAPS_MAX);
	c->caps = calloc(n ? n : 1, sizeof(*c->caps));
	if (!c->caps)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		char name[MR_NAME_MAX + 1];

		r = get_name(d, name, sub_off, "capability name");
		if (r)
			return r;
		c->caps[i] = strdup(name);
		if (!c->caps[i])
			return -ENOMEM;
		c->n_caps = i + 1;
		if (!strcmp(name, MR_CAP_IGNORE_SHARED))
			ignore_shared = true;
		else if (!strcmp(name, MR_CAP_MAPPED_RAM))
			return mr_fail(
				d->err, -EPROTONOSUPPORT, sub_off, NULL,
				"capability mapped-ram: a mapped-ram file, not a classic stream");
		else
			return mr_fail(d->err, -EPROTONOSUPPORT, sub_off, NULL,
				       "capability %s is not supported", name);
	}
	if (!ignore_shared)
		return mr_fail(d->err, -EPROTONOSUPPORT, sub_off, NULL,
			       "capability x-ignore-shared is not listed");
	return 0;
}

static int parse_config(struct dec *d)
{
	struct mr_classic *c = d->c;
	uint8_t h[8], t;
	uint32_t len;
	int r;

	r = get(d, h, sizeof(h), 0, "file header");
	if (r)
		return r;
	if (mr_get_be32(h) != MR_FILE_MAGIC)
		return mr_fail(d->err, -EBADMSG, 0, NULL, "bad magic 0x%08x", mr_get_be32(h));
	if (mr_get_be32(h + 4) != MR_FILE_VERSION)
		return mr_fail(d->err, -EPROTONOSUPPORT, 4, NULL, "stream version %u (only 3)",
			       mr_get_be32(h + 4));
	r = get_u8(d, &t, 8, "configuration");
	if (r)
		return r;
	if (t != MR_SEC_CONFIG)
		return mr_fail(d->err, -EBADMSG, 8, NULL,
			       "expected configuration 0x07, found 0x%02x", t);
	r = get_be32(d, &len, 8, "configuration");
	if (r)
		return r;
	if (!len || len > MR_NAME_MAX)
		return mr_fail(d->err, -EBADMSG, 9, NULL, "machine type length %u (1..255)", len);
	r = get(d, c->machine, len, 8, "machine type");
	if (r)
		return r;
	if (memchr(c->machine, '\0', len))
		return mr_fail(d->err, -EBADMSG, 13, NULL, "machine type has a NUL byte");
	for (;;) {
		uint64_t sub_off = d->off;
		char name[MR_NAME_MAX + 1];
		uint32_t version;

		r = peek(d, &t, "the RAM section");
		if (r)
			return r;
		if (t != MR_SEC_SUBSECTION)
			break;
		d->pos++;
		d->off++;
		r = get_name(d, name, sub_off, "configuration subsection name");
		if (!r)
			r = get_be32(d, &version, sub_off, "configuration subsection");
		if (r)
			return r;
		if (!strcmp(name, MR_CAP_SUBSECTION)) {
			r = parse_caps(d, sub_off);
		} else if (!strcmp(name, MR_PAGEBITS_SUBSEC)) {
			uint32_t bits;

			r = get_be32(d, &bits, sub_off, "target-page-bits");
			if (!r && bits != TARGET_BITS)
				r = mr_fail(d->err, -EPROTONOSUPPORT, sub_off, NULL,
					    "target page bits %u (only 12)", bits);
		} else {
			/* configuration/uuid (validate-uuid) included: not carried over. */
			r = mr_fail(d->err, -EPROTONOSUPPORT, sub_off, NULL,
				    "configuration subsection %s is not supported", name);
		}
		if (r)
			return r;
	}
	if (!c->caps)
		return mr_fail(d->err, -EPROTONOSUPPORT, d->off, NULL,
			       "no capabilities: x-ignore-shared is off");
	return 0;
}

/* COMMAND records before RAM START: kept verbatim unless they change the stream. */
static int parse_head_command(struct dec *d, uint64_t rec_off)
{
	struct mr_classic *c = d->c;
	uint16_t cmd, len;
	uint8_t *p;
	int r;

	r = get_be16(d, &cmd, rec_off, "command");
	if (!r)
		r = get_be16(d, &len, rec_off, "command");
	if (r)
		return r;
	if (cmd == MR_CMD_POSTCOPY_ADVISE)
		return mr_fail(d->err, -EPROTONOSUPPORT, rec_off, NULL,
			       "postcopy-ram is on (POSTCOPY_ADVISE): not supported");
	if (cmd != MR_CMD_OPEN_RETURN_PATH && cmd != MR_CMD_PING)
		return mr_fail(d->err, -EPROTONOSUPPORT, rec_off, NULL,
			       "command %u before the RAM section is not supported", cmd);
	if (c->head_len + 5 + len > MR_CLASSIC_HEAD_MAX)
		return mr_fail(d->err, -EFBIG, rec_off, NULL, "commands before RAM exceed %u bytes",
			       MR_CLASSIC_HEAD_MAX);
	p = realloc(c->head, c->head_len + 5 + len);
	if (!p)
		return -ENOMEM;
	c->head = p;
	p += c->head_len;
	p[0] = MR_SEC_COMMAND;
	mr_put_be16(p + 1, cmd);
	mr_put_be16(p + 3, len);
	r = get(d, p + 5, len, rec_off, "command");
	if (r)
		return r;
	c->head_len += 5 + (size_t)len;
	return 0;
}

static bool bad_ctl(const char *s)
{
	for (; *s; s++)
		if ((uint8_t)*s < 0x20 || (uint8_t)*s == 0x7f)
			return true;
	return false;
}

static int parse_block_list(struct dec *d, uint64_t rec_off, uint64_t total)
{
	struct mr_classic *c = d->c;
	uint64_t left = total;
	size_t cap = 0;
	int r;

	c->ram_total = total;
	while (left) {
		uint64_t entry_off = d->off;
		struct mr_classic_block *b;

		if (c->n_blocks == MR_CLASSIC_BLOCKS_MAX)
			return mr_fail(d->err, -EOVERFLOW, entry_off, NULL,
				       "more than %u blocks in the MEM_SIZE list",
				       MR_CLASSIC_BLOCKS_MAX);
		if (c->n_blocks == cap) {
			size_t ncap = cap ? cap * 2 : 16;

			b = realloc(c->blocks, ncap * sizeof(*b));
			if (!b)
				return -ENOMEM;
			c->blocks = b;
			cap = ncap;
		}
		b = &c->blocks[c->n_blocks];
		memset(b, 0, sizeof(*b));
		r = get_name(d, b->name, entry_off, "block name");
		if (r)
			return r;
		r = get_be64(d, &b->length, entry_off, "block entry");
		if (!r)
			r = get_be64(d, &b->gpa, entry_off, "block entry");
		if (r) {
			if (d->err && !d->err->block[0])
				snprintf(d->err->block, sizeof(d->err->block), "%s", b->name);
			return r;
		}
		if (mr_classic_block(c, b->name))
			return mr_fail(d->err, -EBADMSG, entry_off, b->name, "block listed twice");
		c->n_blocks++;
		if (b->length % MR_PAGE_SIZE)
			return mr_fail(d->err, -EBADMSG, entry_off, b->name,
				       "length 0x%llx is not a multiple of 4096",
				       (unsigned long long)b->length);
		if (b->length > left)
			return mr_fail(
				d->err, -EBADMSG, entry_off, b->name,
				"length 0x%llx exceeds what is left of MEM_SIZE 0x%llx (0x%llx)",
				(unsigned long long)b->length, (unsigned long long)total,
				(unsigned long long)left);
		left -= b->length;
	}
	if (d->ops->blocks) {
		r = d->ops->blocks(d->ops->blocks_ctx, c->blocks, c->n_blocks);
		if (r)
			return mr_fail(d->err, r, rec_off, NULL,
				       "block list rejected by the caller");
	}
	for (size_t i = 0; i < c->n_blocks; i++) {
		struct mr_classic_block *b = &c->blocks[i];

		if (!b->mem)
			continue;
		b->got = calloc(mr_bitmap_bytes(b->length / MR_PAGE_SIZE) + 8, 1);
		if (!b->got)
			return -ENOMEM;
	}
	return 0;
}

static const char *flag_name(uint64_t flags)
{
	if (flags & MR_RAM_XBZRLE)
		return "XBZRLE";
	if (flags & RAM_FLAG_COMPRESS)
		return "COMPRESS_PAGE";
	if (flags & MR_RAM_HOOK)
		return "HOOK (RDMA)";
	if (flags & MR_RAM_MULTIFD_FLUSH)
		return "MULTIFD_FLUSH";
	return NULL;
}

static int parse_page(struct dec *d, uint64_t rec_off, uint64_t w)
{
	uint64_t flags = w & MR_RAM_FLAG_MASK, addr = w & ~(uint64_t)MR_RAM_FLAG_MASK;
	struct mr_classic_block *b;
	uint8_t fillv;
	int r;

	if (!d->c->ram_total)
		return mr_fail(d->err, -EBADMSG, rec_off, NULL,
			       "page record before the block list");
	if (flags & MR_RAM_CONTINUE) {
		b = d->last;
		if (!b)
			return mr_fail(d->err, -EBADMSG, rec_off, NULL,
				       "CONTINUE page record without a previous block");
	} else {
		char name[MR_NAME_MAX + 1];

		r = get_name(d, name, rec_off, "page record block name");
		if (r)
			return r;
		b = mr_classic_block(d->c, name);
		if (!b)
			return mr_fail(d->err, -EBADMSG, rec_off, name,
				       "page record for a block not in the MEM_SIZE list");
	}
	if (!b->mem)
		return mr_fail(d->err, -EBADMSG, rec_off, b->name,
			       "page record for a block without memory (shared?)");
	if (addr >= b->length)
		return mr_fail(d->err, -EOVERFLOW, rec_off, b->name,
			       "page offset 0x%llx outside the block (length 0x%llx)",
			       (unsigned long long)addr, (unsigned long long)b->length);
	d->last = b;
	if (flags & MR_RAM_ZERO) {
		r = get_u8(d, &fillv, rec_off, "zero page record");
		if (r)
			return r;
		/*
		 * Senders always write 0; loaders since QEMU 8.2 refuse anything
		 * else (older ones filled the page with it).
		 */
		if (fillv)
			return mr_fail(d->err, -EBADMSG, rec_off, b->name,
				       "zero page record with fill byte 0x%02x", fillv);
		memset(b->mem + addr, 0, MR_PAGE_SIZE);
		b->zero_pages++;
	} else {
		r = get(d, b->mem + addr, MR_PAGE_SIZE, rec_off, "page record");
		if (r)
			return r;
		b->pages++;
	}
	mr_bit_set(b->got, addr / MR_PAGE_SIZE);
	return 0;
}

/* Words of one RAM section part, up to and including EOS. */
static int parse_ram_part(struct dec *d, bool start)
{
	for (;;) {
		uint64_t rec_off = d->off, w, flags;
		const char *bad;
		int r;

		r = get_be64(d, &w, rec_off, "RAM record");
		if (r)
			return r;
		flags = w & MR_RAM_FLAG_MASK;
		bad = flag_name(flags);
		if (bad)
			return mr_fail(d->err, -EPROTONOSUPPORT, rec_off, NULL,
				       "RAM flag %s (word 0x%016llx) is not supported", bad,
				       (unsigned long long)w);
		if (flags & MR_RAM_EOS) {
			if (flags != MR_RAM_EOS)
				return mr_fail(d->err, -EBADMSG, rec_off, NULL,
					       "EOS with other RAM flags 0x%03llx",
					       (unsigned long long)flags);
			return 0;
		}
		if (flags == MR_RAM_MEM_SIZE) {
			if (!start || d->c->ram_total || d->c->n_blocks)
				return mr_fail(d->err, -EBADMSG, rec_off, NULL,
					       "MEM_SIZE outside the first RAM part or twice");
			if (!(w & ~(uint64_t)MR_RAM_FLAG_MASK))
				return mr_fail(d->err, -EBADMSG, rec_off, NULL, "MEM_SIZE total 0");
			r = parse_block_list(d, rec_off, w & ~(uint64_t)MR_RAM_FLAG_MASK);
		} else if ((flags & ~(uint64_t)MR_RAM_CONTINUE) == MR_RAM_ZERO ||
			   (flags & ~(uint64_t)MR_RAM_CONTINUE) == MR_RAM_PAGE) {
			r = parse_page(d, rec_off, w);
		} else {
			r = mr_fail(d->err, -EBADMSG, rec_off, NULL, "bad RAM flags 0x%03llx",
				    (unsigned long long)flags);
		}
		if (r)
			return r;
	}
}

static int parse_footer(struct dec *d, uint32_t id)
{
	uint64_t off = d->off;
	uint8_t t;
	uint32_t got;
	int r;

	r = get_u8(d, &t, off, "section footer");
	if (!r)
		r = get_be32(d, &got, off, "section footer");
	if (r)
		return r;
	if (t != MR_SEC_FOOTER || got != id)
		return mr_fail(d->err, -EBADMSG, off, NULL,
			       "bad footer 0x%02x id %u for RAM section id %u", t, got, id);
	return 0;
}

static int parse_ram_start(struct dec *d)
{
	for (;;) {
		uint64_t off = d->off;
		char idstr[MR_NAME_MAX + 1];
		uint32_t id, instance, version;
		uint8_t t;
		int r;

		r = get_u8(d, &t, off, "section");
		if (r == -ENODATA)
			return mr_fail(d->err, r, off, NULL, "stream ends before the RAM section");
		if (r)
			return r;
		if (t == MR_SEC_COMMAND) {
			r = parse_head_command(d, off);
			if (r)
				return r;
			continue;
		}
		if (t != MR_SEC_START && t != MR_SEC_FULL)
			return mr_fail(d->err, -EBADMSG, off, NULL,
				       "expected the RAM section, found type 0x%02x", t);
		r = get_be32(d, &id, off, "section header");
		if (!r)
			r = get_name(d, idstr, off, "section idstr");
		if (!r)
			r = get_be32(d, &instance, off, "section header");
		if (!r)
			r = get_be32(d, &version, off, "section header");
		if (r)
			return r;
		if (t == MR_SEC_FULL || strcmp(idstr, MR_RAM_IDSTR)) {
			r = mr_fail(d->err, -EPROTONOSUPPORT, off, NULL,
				    "%s section %s before the RAM section is not supported",
				    t == MR_SEC_FULL ? "device" : "iterative", idstr);
			if (d->err)
				snprintf(d->err->section, sizeof(d->err->section), "%s", idstr);
			return r;
		}
		if (version != MR_RAM_VERSION)
			return mr_fail(d->err, -EPROTONOSUPPORT, off, NULL,
				       "RAM section version %u (only 4)", version);
		if (instance)
			return mr_fail(d->err, -EBADMSG, off, NULL, "RAM section instance %u",
				       instance);
		d->c->ram_id = id;
		r = parse_ram_part(d, true);
		if (!r && !d->c->ram_total)
			r = mr_fail(d->err, -EBADMSG, off, NULL, "RAM section without MEM_SIZE");
		return r ? r : parse_footer(d, id);
	}
}

/* RAM PART sections, commands, then RAM END. */
static int parse_ram_rest(struct dec *d)
{
	struct mr_classic *c = d->c;

	for (;;) {
		uint64_t off = d->off;
		uint16_t cmd, len;
		uint32_t id;
		uint8_t t;
		int r;

		r = get_u8(d, &t, off, "RAM section end");
		if (r == -ENODATA)
			return mr_fail(d->err, r, off, NULL, "stream ends before RAM END");
		if (r)
			return r;
		if (t == MR_SEC_COMMAND) {
			r = get_be16(d, &cmd, off, "command");
			if (!r)
				r = get_be16(d, &len, off, "command");
			if (r)
				return r;
			if (cmd != MR_CMD_SWITCHOVER_START || len)
				return mr_fail(d->err, -EPROTONOSUPPORT, off, NULL,
					       "command %u (length %u) inside RAM is not supported",
					       cmd, len);
			c->switchover_start = true;
			continue;
		}
		if (t != MR_SEC_PART && t != MR_SEC_END)
			return mr_fail(d->err, -EBADMSG, off, NULL,
				       "expected RAM PART or END, found type 0x%02x", t);
		r = get_be32(d, &id, off, "section header");
		if (r)
			return r;
		if (id != c->ram_id)
			return mr_fail(d->err, -EBADMSG, off, NULL,
				       "section id %u is not RAM's (%u)", id, c->ram_id);
		r = parse_ram_part(d, false);
		if (!r)
			r = parse_footer(d, id);
		if (r)
			return r;
		if (t == MR_SEC_END)
			return 0;
		c->ram_parts++;
	}
}

/* Reads from src over memory, for mr_find_vmdesc() on the tail. */
static long mem_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
	const struct mr_classic *c = ctx;

	if (off >= c->tail_len)
		return 0;
	if (len > c->tail_len - off)
		len = c->tail_len - off;
	memcpy(buf, c->tail + off, len);
	return (long)len;
}

static int parse_tail(struct dec *d)
{
	struct mr_classic *c = d->c;
	uint64_t max = d->ops->tail_max ? d->ops->tail_max : MR_CLASSIC_TAIL_MAX;
	size_t cap = 0;
	uint64_t voff, vlen;

	c->tail_off = d->off;
	for (;;) {
		size_t k;
		int r = fill(d);

		if (r)
			return mr_fail(d->err, r, d->off, NULL, "read error in the device state");
		if (d->eof)
			break;
		k = d->len - d->pos;
		if (c->tail_len + k > max)
			return mr_fail(d->err, -EFBIG, c->tail_off, NULL,
				       "device state after RAM exceeds %llu bytes",
				       (unsigned long long)max);
		if (c->tail_len + k > cap) {
			size_t ncap = cap ? cap : DEC_BUF;
			uint8_t *p;

			while (ncap < c->tail_len + k) {
				if (ncap > SIZE_MAX / 2)
					return -ENOMEM;
				ncap *= 2;
			}
			p = realloc(c->tail, ncap);
			if (!p)
				return -ENOMEM;
			c->tail = p;
			cap = ncap;
		}
		memcpy(c->tail + c->tail_len, d->buf + d->pos, k);
		c->tail_len += k;
		d->pos += k;
		d->off += k;
	}
	/*
	 * The device sections cannot be walked without their schema, but a
	 * complete stream ends with the EOF byte and the VMDESCRIPTION running
	 * to its last byte: a source that died mid-way leaves neither.
	 */
	struct mr_src src = { .pread = mem_pread, .ctx = c, .size = c->tail_len };
	int r = mr_find_vmdesc(&src, 0, c->tail_len, &voff, &vlen);

	if (r == -ENOMEM)
		return r;
	if (!r && voff > 0 && c->tail[voff - 1] == MR_SEC_EOF)
		return 0;
	return mr_fail(
		d->err, -ENODATA, d->off, NULL,
		"stream ends without EOF and VMDESCRIPTION (cut short, or suppress-vmdesc on)");
}

int mr_classic_decode(const struct mr_classic_ops *ops, struct mr_classic **ret, struct mr_err *err)
{
	struct dec *d = calloc(1, sizeof(*d));
	int r;

	if (!d)
		return -ENOMEM;
	d->c = calloc(1, sizeof(*d->c));
	if (!d->c) {
		free(d);
		return -ENOMEM;
	}
	d->ops = ops;
	d->err = err;
	r = parse_config(d);
	if (!r)
		r = parse_ram_start(d);
	if (!r)
		r = parse_ram_rest(d);
	if (!r)
		r = parse_tail(d);
	if (r == -ENOMEM)
		mr_fail(err, r, d->off, NULL, "out of memory");
	if (r)
		mr_classic_free(d->c);
	else
		*ret = d->c;
	free(d);
	return r;
}

void mr_classic_free(struct mr_classic *c)
{
	if (!c)
		return;
	for (unsigned i = 0; i < c->n_caps; i++)
		free(c->caps[i]);
	free(c->caps);
	for (size_t i = 0; i < c->n_blocks; i++)
		free(c->blocks[i].got);
	free(c->blocks);
	free(c->head);
	free(c->tail);
	free(c);
}

struct mr_classic_block *mr_classic_block(const struct mr_classic *c, const char *name)
{
	for (size_t i = 0; i < c->n_blocks; i++)
		if (!strcmp(c->blocks[i].name, name))
			return &c->blocks[i];
	return NULL;
}

/* ---- encoder ---- */

struct enc {
	const struct mr_classic_enc *e;
	struct mr_buf b;
};

static int flush(struct enc *w, size_t min)
{
	int r;

	if (w->b.err)
		return w->b.err;
	if (w->b.len < min || !w->b.len)
		return 0;
	r = w->e->write(w->e->ctx, w->b.data, w->b.len);
	mr_buf_reset(&w->b);
	return r;
}

static bool page_is_zero(const uint8_t *p)
{
	static const uint8_t zero[MR_PAGE_SIZE];

	return !memcmp(p, zero, MR_PAGE_SIZE);
}

static int check_enc(const struct mr_classic_enc *e, struct mr_err *err)
{
	size_t n = e->machine ? strlen(e->machine) : 0;
	uint64_t total = 0;

	if (!n || n > MR_NAME_MAX)
		return mr_fail(err, -EINVAL, 0, NULL, "machine type length %zu (1..255)", n);
	if (!e->ram_id)
		return mr_fail(err, -EINVAL, 0, NULL, "RAM section id 0");
	if (!e->n_blocks || e->n_blocks > MR_CLASSIC_BLOCKS_MAX || !e->write)
		return mr_fail(err, -EINVAL, 0, NULL, "%zu blocks or no writer", e->n_blocks);
	for (size_t i = 0; i < e->n_blocks; i++) {
		const struct mr_classic_enc_block *b = &e->blocks[i];
		size_t len = b->name ? strlen(b->name) : 0;

		if (!len || len > MR_NAME_MAX || bad_ctl(b->name))
			return mr_fail(err, -EINVAL, 0, b->name, "bad block name");
		if (b->length % MR_PAGE_SIZE || b->length > UINT64_MAX - total)
			return mr_fail(err, -EINVAL, 0, b->name, "bad block length 0x%llx",
				       (unsigned long long)b->length);
		total += b->length;
		for (size_t j = 0; j < i; j++)
			if (!strcmp(e->blocks[j].name, b->name))
				return mr_fail(err, -EINVAL, 0, b->name, "block listed twice");
	}
	/* The low 12 bits of the MEM_SIZE word carry the flags. */
	if (!total || total & MR_RAM_FLAG_MASK)
		return mr_fail(err, -EINVAL, 0, NULL, "total RAM 0x%llx",
			       (unsigned long long)total);
	return 0;
}

static int encode_pages(struct enc *w)
{
	const struct mr_classic_enc *e = w->e;
	bool first = true;
	int r;

	for (size_t i = 0; i < e->n_blocks; i++) {
		const struct mr_classic_enc_block *b = &e->blocks[i];

		if (!b->data)
			continue;
		for (uint64_t pg = 0; pg < b->length / MR_PAGE_SIZE; pg++) {
			const uint8_t *p = b->data + pg * MR_PAGE_SIZE;
			bool zero = (b->bitmap && !mr_bit_test(b->bitmap, pg)) || page_is_zero(p);
			uint64_t w64 = pg * MR_PAGE_SIZE | (zero ? MR_RAM_ZERO : MR_RAM_PAGE);

			/* Like QEMU: the block name only when the block changes. */
			if (!first && pg)
				w64 |= MR_RAM_CONTINUE;
			mr_buf_be64(&w->b, w64);
			if (!(w64 & MR_RAM_CONTINUE))
				mr_buf_str8(&w->b, b->name);
			first = false;
			if (zero) {
				mr_buf_u8(&w->b, 0);
				continue;
			}
			r = flush(w, 0);
			if (!r)
				r = e->write(e->ctx, p, MR_PAGE_SIZE);
			if (r)
				return r;
		}
		r = flush(w, ENC_FLUSH);
		if (r)
			return r;
	}
	return 0;
}

int mr_classic_encode(const struct mr_classic_enc *e, struct mr_err *err)
{
	static const char *const caps[] = { MR_CAP_IGNORE_SHARED };
	struct enc w = { .e = e, .b = MR_BUF_INIT };
	uint64_t total = 0;
	int r;

	r = check_enc(e, err);
	if (r)
		return r;
	for (size_t i = 0; i < e->n_blocks; i++)
		total += e->blocks[i].length;
	mr_encode_file_header(&w.b);
	mr_encode_config(&w.b, e->machine, caps, 1);
	mr_buf_put(&w.b, e->head, e->head_len);
	mr_encode_ram_start(&w.b, e->ram_id, total);
	for (size_t i = 0; i < e->n_blocks; i++) {
		mr_buf_str8(&w.b, e->blocks[i].name);
		mr_buf_be64(&w.b, e->blocks[i].length);
		mr_buf_be64(&w.b, e->blocks[i].gpa);
	}
	mr_encode_ram_eos(&w.b, e->ram_id);
	mr_buf_u8(&w.b, MR_SEC_PART);
	mr_buf_be32(&w.b, e->ram_id);
	r = encode_pages(&w);
	if (r)
		goto out;
	/* The prefix's EOS + footer close the PART, then come the command and END. */
	mr_classic_raw_tail_prefix(&w.b, e->ram_id, e->switchover_start);
	r = flush(&w, 0);
	if (!r && e->tail_len)
		r = e->write(e->ctx, e->tail, e->tail_len);
out:
	mr_buf_free(&w.b);
	if (r)
		mr_fail(err, r, 0, NULL, "cannot write the stream");
	return r;
}

int mr_classic_write_buf(void *ctx, const void *buf, size_t len)
{
	struct mr_buf *b = ctx;

	mr_buf_put(b, buf, len);
	return b->err;
}

void mr_classic_raw_tail_prefix(struct mr_buf *b, uint32_t ram_id, bool switchover_start)
{
	mr_encode_ram_eos(b, ram_id);
	if (switchover_start) {
		mr_buf_u8(b, MR_SEC_COMMAND);
		mr_buf_be16(b, MR_CMD_SWITCHOVER_START);
		mr_buf_be16(b, 0);
	}
	mr_buf_u8(b, MR_SEC_END);
	mr_buf_be32(b, ram_id);
	mr_encode_ram_eos(b, ram_id);
}

int mr_classic_split_raw_tail(const uint8_t *raw, size_t len, size_t *ret_dev_off,
			      uint32_t *ret_ram_id, bool *ret_switchover, struct mr_err *err)
{
	bool switchover = false;
	uint32_t id;
	size_t p;

	/* The RAM START's EOS and footer, then PART/END parts and commands. */
	if (len < 13)
		return mr_fail(err, -ENODATA, 0, NULL, "raw tail shorter than EOS and footer");
	if (mr_get_be64(raw) != MR_RAM_EOS || raw[8] != MR_SEC_FOOTER)
		return mr_fail(err, -EBADMSG, 0, NULL,
			       "raw tail does not start with RAM EOS, footer");
	id = mr_get_be32(raw + 9);
	p = 13;
	for (;;) {
		size_t off = p;
		uint8_t t;

		if (len - p < 1)
			return mr_fail(err, -ENODATA, off, NULL, "raw tail ends before RAM END");
		t = raw[p];
		if (t == MR_SEC_COMMAND) {
			if (len - p < 5 || len - p - 5 < mr_get_be16(raw + p + 3))
				return mr_fail(err, -ENODATA, off, NULL,
					       "raw tail ends in a command");
			if (mr_get_be16(raw + p + 1) == MR_CMD_SWITCHOVER_START)
				switchover = true;
			p += 5 + (size_t)mr_get_be16(raw + p + 3);
			continue;
		}
		if (t != MR_SEC_PART && t != MR_SEC_END)
			break;
		if (len - p < 18)
			return mr_fail(err, -ENODATA, off, NULL, "raw tail ends in a RAM part");
		if (mr_get_be32(raw + p + 1) != id || mr_get_be64(raw + p + 5) != MR_RAM_EOS ||
		    raw[p + 13] != MR_SEC_FOOTER || mr_get_be32(raw + p + 14) != id)
			return mr_fail(err, -EBADMSG, off, NULL,
				       "RAM part in the raw tail is not EOS-only with id %u", id);
		p += 18;
		if (t == MR_SEC_END)
			break;
	}
	*ret_dev_off = p;
	*ret_ram_id = id;
	*ret_switchover = switchover;
	return 0;
}
