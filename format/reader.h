/* SPDX-License-Identifier: MIT */
/*
 * Decoder of a mapped-ram migration stream: walks the file header, the
 * configuration, every section before and after RAM, and loads each RAM
 * block's header and bitmap. Every offset and length read from the file is
 * validated against the file's size before use. No threads, no policy.
 *
 * Error codes: -EBADMSG bad magic, footer, record or value; -EPROTONOSUPPORT
 * unsupported version or feature; -ENODATA truncated record; -EOVERFLOW an
 * offset or length that wraps or points outside the file; -ENOMEM; other
 * -errno from the source's pread.
 */
#ifndef MR_READER_H
#define MR_READER_H

#include "layout.h"
#include "stream.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Random-access byte source: the file being decoded. */
struct mr_src {
	/* Returns bytes read (short only at end of file) or -errno. */
	long (*pread)(void *ctx, void *buf, size_t len, uint64_t off);
	void *ctx;
	uint64_t size; /* where the stream data may end (file size, or trailer start) */
};

/* Where decoding failed, for the caller's one-line message. */
struct mr_err {
	uint64_t off;	   /* file offset of the offending record */
	char block[256];   /* RAM block name, "" if none */
	char section[256]; /* device section name, "" if none */
	char msg[192];	   /* what is wrong, lower case, no trailing period */
};

struct mr_block_info {
	char name[MR_NAME_MAX + 1];
	uint64_t entry_off;
	uint64_t hdr_off;
	struct mr_ram_header hdr;
	uint64_t length;
	uint64_t num_pages;
	uint64_t bitmap_size;
	uint64_t present; /* pages whose bit is set */
	uint64_t *bitmap; /* host words, num_pages bits; owned by the image */
};

struct mr_section_info {
	uint8_t type; /* enum mr_sec_type */
	uint32_t id;
	char idstr[MR_NAME_MAX + 1]; /* "ram" for RAM PART/END, "" for COMMAND */
	uint32_t instance;
	uint32_t version;
	uint16_t command; /* COMMAND only */
	uint64_t off;	  /* offset of the type byte */
	uint64_t size;	  /* bytes from the type byte through the footer */
};

struct mr_image {
	uint64_t base;	    /* stream start (the ,offset=N of QEMU's URI) */
	uint64_t file_size; /* bytes the source holds */
	char machine[MR_NAME_MAX + 1];
	char **caps;
	unsigned n_caps;
	uint32_t target_page_bits; /* 0 when the subsection is absent */
	bool has_uuid;
	uint8_t uuid[16];

	uint32_t ram_id;
	uint64_t ram_total; /* MEM_SIZE */
	struct mr_block_info *blocks;
	size_t n_blocks;
	uint64_t ram_end; /* first byte after the last page region: the raw tail */

	struct mr_section_info *sections; /* every section after configuration */
	size_t n_sections;

	bool has_devstate;     /* snapmr's own device-state section */
	uint64_t devstate_off; /* first data byte */
	uint64_t devstate_len;

	uint64_t eof_off;
	bool has_vmdesc;
	uint64_t vmdesc_off; /* the 0x06 byte */
	uint64_t vmdesc_len; /* JSON bytes */
	uint64_t stream_end; /* first byte after the stream */
};

/* Most RAM blocks a stream (and so a trailer) may list: bounds the memory they take. */
#define MR_MAX_BLOCKS 65536u

/*
 * Fills err (if not NULL) with the offset, the block ("" for NULL) and the
 * formatted message, clearing its section (the caller may name one after);
 * returns code. The one error helper of format/.
 */
int mr_fail(struct mr_err *err, int code, uint64_t off, const char *block, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
int mr_vfail(struct mr_err *err, int code, uint64_t off, const char *block, const char *fmt,
	     va_list ap) __attribute__((format(printf, 5, 0)));

/* Flags for mr_image_parse(). */
#define MR_PARSE_NO_BITMAPS 0x1u /* do not load the bitmaps (counts stay 0) */
/* Read the bitmaps in windows to count pages and check them, keep none (bitmap NULL). */
#define MR_PARSE_COUNT_BITMAPS 0x2u

/*
 * Decodes the stream that starts at `base` in src. On success *ret_img is a
 * new image the caller frees with mr_image_free(). On failure returns -errno
 * and fills *err (if not NULL).
 */
int mr_image_parse(const struct mr_src *src, uint64_t base, unsigned flags,
		   struct mr_image **ret_img, struct mr_err *err);
void mr_image_free(struct mr_image *img);

/*
 * (Re)reads block b's bitmap from src in fixed-size windows: checks that it
 * lies inside src and marks no page past the block, counts b->present, and
 * when `keep` stores it in b->bitmap (owned by the image; bitmap_size bytes,
 * the only allocation that grows with the block). Returns 0 or -errno with
 * *err filled (if not NULL).
 */
int mr_block_load_bitmap(const struct mr_src *src, struct mr_block_info *b, bool keep,
			 struct mr_err *err);

/* Bytes at the start of a raw tail: the RAM EOS word and the RAM START's footer. */
#define MR_TAIL_HEAD_SIZE 13u

/*
 * Decodes a raw stream tail (section 14 of docs/format.md: the bytes from the
 * RAM EOS word after the last page region to the end of the stream) held in
 * src at offset 0, exactly as mr_image_parse() decodes it inside a file: the
 * EOS word and footer, then every section, EOF and an optional VM
 * description, which must end at src->size. Stores the RAM section id the
 * tail names. Returns 0 or -errno with *err (offsets relative to the tail).
 */
int mr_tail_parse(const struct mr_src *src, uint32_t *ret_ram_id, struct mr_err *err);

/* True if the image lists capability `name`. */
bool mr_image_has_cap(const struct mr_image *img, const char *name);
/* The block named `name`, or NULL. */
const struct mr_block_info *mr_image_block(const struct mr_image *img, const char *name);

/* What mr_detect_stream() found in front of the stream. */
enum mr_container {
	MR_CONTAINER_NONE,	      /* the file starts with the stream */
	MR_CONTAINER_LIBVIRT,	      /* a libvirt save image header ("LibvirtQemudSave") */
	MR_CONTAINER_LIBVIRT_PARTIAL, /* libvirt's header of a save that never finished */
};

#define MR_LIBVIRT_MAGIC	 "LibvirtQemudSave"
#define MR_LIBVIRT_MAGIC_PARTIAL "LibvirtQemudPart"
#define MR_LIBVIRT_HDR_SIZE	 92u /* magic[16], 19 host-endian u32 fields */

/*
 * Finds where the migration stream starts: offset 0, or after a libvirt save
 * image header (its XML and cookie follow the fixed header; data_len counts
 * them). Returns 0 and the offset, or -EBADMSG if neither form is found.
 */
int mr_detect_stream(const struct mr_src *src, uint64_t *ret_offset, enum mr_container *ret_kind);

/*
 * Finds a VMDESCRIPTION record that ends exactly at `end` (QEMU writes it
 * last): returns 0 and its record offset and JSON length, or -ENOENT.
 */
int mr_find_vmdesc(const struct mr_src *src, uint64_t lo, uint64_t end, uint64_t *ret_off,
		   uint64_t *ret_len);

#endif
