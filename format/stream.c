// SPDX-License-Identifier: MIT
/* Encoders for the records of a mapped-ram migration stream. */
#include "stream.h"
#include "be.h"

const char *mr_sec_type_name(uint8_t type)
{
	switch ((enum mr_sec_type)type) {
	case MR_SEC_START: return "start";
	case MR_SEC_PART: return "part";
	case MR_SEC_END: return "end";
	case MR_SEC_FULL: return "full";
	case MR_SEC_COMMAND: return "command";
	case MR_SEC_EOF:
	case MR_SEC_SUBSECTION:
	case MR_SEC_VMDESC:
	case MR_SEC_CONFIG:
	case MR_SEC_FOOTER: break;
	}
	return "other";
}

void mr_encode_file_header(struct mr_buf *b)
{
	mr_buf_be32(b, MR_FILE_MAGIC);
	mr_buf_be32(b, MR_FILE_VERSION);
}

void mr_encode_config(struct mr_buf *b, const char *machine, const char *const *caps,
		      unsigned n_caps)
{
	size_t n = 0;

	while (machine[n])
		n++;
	mr_buf_u8(b, MR_SEC_CONFIG);
	mr_buf_be32(b, (uint32_t)n);
	mr_buf_put(b, machine, n);
	if (!n_caps)
		return;
	mr_buf_u8(b, MR_SEC_SUBSECTION);
	mr_buf_str8(b, MR_CAP_SUBSECTION);
	mr_buf_be32(b, 1);
	mr_buf_be32(b, n_caps);
	for (unsigned i = 0; i < n_caps; i++)
		mr_buf_str8(b, caps[i]);
}

void mr_encode_section_full_hdr(struct mr_buf *b, uint8_t type, uint32_t id, const char *idstr,
				uint32_t instance, uint32_t version)
{
	mr_buf_u8(b, type);
	mr_buf_be32(b, id);
	mr_buf_str8(b, idstr);
	mr_buf_be32(b, instance);
	mr_buf_be32(b, version);
}

void mr_encode_footer(struct mr_buf *b, uint32_t id)
{
	mr_buf_u8(b, MR_SEC_FOOTER);
	mr_buf_be32(b, id);
}

void mr_encode_ram_start(struct mr_buf *b, uint32_t id, uint64_t total)
{
	mr_encode_section_full_hdr(b, MR_SEC_START, id, MR_RAM_IDSTR, 0, MR_RAM_VERSION);
	mr_buf_be64(b, total | MR_RAM_MEM_SIZE);
}

void mr_encode_ram_header(struct mr_buf *b, const struct mr_ram_header *h)
{
	mr_buf_be32(b, h->version);
	mr_buf_be64(b, h->page_size);
	mr_buf_be64(b, h->bitmap_offset);
	mr_buf_be64(b, h->pages_offset);
}

void mr_encode_block_entry(struct mr_buf *b, const char *name, uint64_t length,
			   const struct mr_ram_header *h)
{
	mr_buf_str8(b, name);
	mr_buf_be64(b, length);
	mr_encode_ram_header(b, h);
}

void mr_encode_ram_eos(struct mr_buf *b, uint32_t id)
{
	mr_buf_be64(b, MR_RAM_EOS);
	mr_encode_footer(b, id);
}

void mr_encode_devstate_hdr(struct mr_buf *b, uint64_t length)
{
	mr_encode_section_full_hdr(b, MR_SEC_FULL, MR_DEVSTATE_ID, MR_DEVSTATE_IDSTR, 0,
				   MR_DEVSTATE_VERSION);
	mr_buf_be64(b, length);
}

void mr_encode_vmdesc_devstate(struct mr_buf *b, uint64_t length)
{
	struct mr_buf j = MR_BUF_INIT;

	/*
	 * Same shape as QEMU's description, so generic stream walkers (QEMU's
	 * analyze-migration.py, our reader) can size the section.
	 */
	mr_buf_printf(&j,
		      "{\"page_size\": %u, \"devices\": [{\"name\": \"%s\", "
		      "\"instance_id\": 0, \"vmsd_name\": \"%s\", \"version\": %u, "
		      "\"fields\": [{\"name\": \"length\", \"type\": \"uint64\", \"size\": 8}, "
		      "{\"name\": \"data\", \"type\": \"buffer\", \"size\": %llu}]}]}",
		      MR_PAGE_SIZE, MR_DEVSTATE_IDSTR, MR_DEVSTATE_IDSTR, MR_DEVSTATE_VERSION,
		      (unsigned long long)length);
	if (j.err) {
		if (!b->err)
			b->err = j.err;
	} else {
		mr_buf_u8(b, MR_SEC_VMDESC);
		mr_buf_be32(b, (uint32_t)j.len);
		mr_buf_put(b, j.data, j.len);
	}
	mr_buf_free(&j);
}

void mr_decode_ram_header(const uint8_t *p, struct mr_ram_header *h)
{
	h->version = mr_get_be32(p);
	h->page_size = mr_get_be64(p + 4);
	h->bitmap_offset = mr_get_be64(p + 12);
	h->pages_offset = mr_get_be64(p + 20);
}
