/* SPDX-License-Identifier: MIT */
/*
 * Big-endian load/store helpers for the QEMU migration stream. Every integer
 * in the stream goes through these; structs are never cast onto buffers.
 */
#ifndef MR_BE_H
#define MR_BE_H

#include <stdint.h>

static inline void mr_put_be16(uint8_t *p, uint16_t v)
{
	p[0] = v >> 8;
	p[1] = v;
}

static inline void mr_put_be32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static inline void mr_put_be64(uint8_t *p, uint64_t v)
{
	mr_put_be32(p, v >> 32);
	mr_put_be32(p + 4, (uint32_t)v);
}

static inline uint16_t mr_get_be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t mr_get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t mr_get_be64(const uint8_t *p)
{
	return (uint64_t)mr_get_be32(p) << 32 | mr_get_be32(p + 4);
}

/* Little-endian 64-bit, for the page bitmap (host layout on x86-64). */
static inline void mr_put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = v >> (8 * i);
}

static inline uint64_t mr_get_le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

#endif
