/* SPDX-License-Identifier: MIT */
/*
 * QEMU's VM description (the JSON after the EOF byte) as a table of device
 * section body sizes, so that device sections can be walked without knowing
 * any device's schema. Parsed with json-c.
 */
#ifndef MR_VMDESC_H
#define MR_VMDESC_H

#include <stddef.h>
#include <stdint.h>

struct mr_vmdesc;

/*
 * Parses `len` bytes of JSON (not NUL-terminated). Returns 0 and a new table
 * in *ret (free with mr_vmdesc_free), -EBADMSG if the JSON or its shape is
 * invalid, -E2BIG if it holds more than 262144 values (json-c's memory grows
 * with them, about 70 bytes each), -EOVERFLOW if a size sum overflows,
 * -ENOMEM.
 */
int mr_vmdesc_parse(const char *json, size_t len, struct mr_vmdesc **ret);
void mr_vmdesc_free(struct mr_vmdesc *d);

/*
 * Body size of the device section (idstr, instance): the bytes between the
 * end of its SECTION_FULL/START header and its footer, i.e. the fields plus
 * the sent subsections (each 1 + 1 + strlen(name) + 4 bytes of framing plus
 * its own fields, recursively). Devices that appear more than once are
 * matched in order: `nth` counts earlier sections with the same idstr and
 * instance. Returns 0, or -ENOENT if the description has no such entry.
 */
int mr_vmdesc_section_size(const struct mr_vmdesc *d, const char *idstr, uint32_t instance,
			   unsigned nth, uint64_t *ret);

/* page_size from the description (0 if absent). */
uint64_t mr_vmdesc_page_size(const struct mr_vmdesc *d);

#endif
