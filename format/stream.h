/* SPDX-License-Identifier: MIT */
/*
 * QEMU migration stream constants and record encoders for the mapped-ram
 * layout (see docs/format.md). Encoders append to an mr_buf; they do no I/O.
 */
#ifndef MR_STREAM_H
#define MR_STREAM_H

#include "buf.h"
#include "layout.h"

#include <stdbool.h>
#include <stdint.h>

#define MR_FILE_MAGIC	0x5145564Du /* "QEVM" */
#define MR_FILE_VERSION 3u

enum mr_sec_type {
	MR_SEC_EOF = 0x00,
	MR_SEC_START = 0x01,
	MR_SEC_PART = 0x02,
	MR_SEC_END = 0x03,
	MR_SEC_FULL = 0x04,
	MR_SEC_SUBSECTION = 0x05,
	MR_SEC_VMDESC = 0x06,
	MR_SEC_CONFIG = 0x07,
	MR_SEC_COMMAND = 0x08,
	MR_SEC_FOOTER = 0x7e,
};

/* "start", "part", "end", "full", "command", or "other" for any other type byte. */
const char *mr_sec_type_name(uint8_t type);

/* START and FULL headers carry an idstr, an instance and a version. */
static inline bool mr_sec_is_named(uint8_t type)
{
	return type == MR_SEC_START || type == MR_SEC_FULL;
}

/* A COMMAND record has a command number and no section id. */
static inline bool mr_sec_is_command(uint8_t type)
{
	return type == MR_SEC_COMMAND;
}

/* RAM section flags: the low 12 bits of each be64 word. */
#define MR_RAM_ZERO	     0x002u
#define MR_RAM_MEM_SIZE	     0x004u
#define MR_RAM_PAGE	     0x008u
#define MR_RAM_EOS	     0x010u
#define MR_RAM_CONTINUE	     0x020u
#define MR_RAM_XBZRLE	     0x040u
#define MR_RAM_HOOK	     0x080u
#define MR_RAM_MULTIFD_FLUSH 0x200u
#define MR_RAM_FLAG_MASK     0xfffu

#define MR_RAM_IDSTR	   "ram"
#define MR_RAM_VERSION	   4u
#define MR_RAM_HDR_VERSION 1u

/* Default RAM section id: QEMU's on q35/pc (never 0, see format doc 10). */
#define MR_RAM_SECTION_ID 2u

#define MR_CMD_SWITCHOVER_START 11u

#define MR_CAP_SUBSECTION  "configuration/capabilities"
#define MR_PAGEBITS_SUBSEC "configuration/target-page-bits"
#define MR_UUID_SUBSEC	   "configuration/uuid"

/*
 * The opaque device-state section snapsave writes after RAM: a SECTION_FULL
 * with this idstr whose body is be64 length + that many bytes.
 */
#define MR_DEVSTATE_IDSTR   "snapmr/device-state"
#define MR_DEVSTATE_VERSION 1u
#define MR_DEVSTATE_ID	    3u

#define MR_DEFAULT_MACHINE "pc-q35-10.0"

/*
 * Written by snapsave into the padding between a bitmap and its page region
 * (never written nor read by QEMU): this file must end in a snapmr trailer.
 */
#define MR_SNAPMR_MARKER     "SNAPMR-TRAILER-1"
#define MR_SNAPMR_MARKER_LEN 16u

struct mr_ram_header {
	uint32_t version;
	uint64_t page_size;
	uint64_t bitmap_offset;
	uint64_t pages_offset;
};

/* File header (magic, version) and the configuration section. */
void mr_encode_file_header(struct mr_buf *b);
void mr_encode_config(struct mr_buf *b, const char *machine, const char *const *caps,
		      unsigned n_caps);

/* START/FULL section header: type, be32 id, str8 idstr, be32 instance, be32 version. */
void mr_encode_section_full_hdr(struct mr_buf *b, uint8_t type, uint32_t id, const char *idstr,
				uint32_t instance, uint32_t version);
void mr_encode_footer(struct mr_buf *b, uint32_t id);

/* RAM START header plus the MEM_SIZE word for `total` bytes of blocks. */
void mr_encode_ram_start(struct mr_buf *b, uint32_t id, uint64_t total);
/* One block entry: str8 name, be64 length, the 28-byte MappedRamHeader. */
void mr_encode_block_entry(struct mr_buf *b, const char *name, uint64_t length,
			   const struct mr_ram_header *h);
void mr_encode_ram_header(struct mr_buf *b, const struct mr_ram_header *h);
/* be64 EOS word then the footer: the end of a RAM section part. */
void mr_encode_ram_eos(struct mr_buf *b, uint32_t id);

/* Header of the device-state section up to and including its be64 length. */
void mr_encode_devstate_hdr(struct mr_buf *b, uint64_t length);
/* The VMDESCRIPTION record describing the device-state section. */
void mr_encode_vmdesc_devstate(struct mr_buf *b, uint64_t length);

/* Decodes a MappedRamHeader from 28 bytes. */
void mr_decode_ram_header(const uint8_t *p, struct mr_ram_header *h);

#endif
