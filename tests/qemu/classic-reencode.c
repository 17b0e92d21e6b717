// SPDX-License-Identifier: MIT
/*
 * Test helper for tests/qemu/test_classic_load.py: decodes a classic
 * x-ignore-shared stream from stdin (a pipe: read once, front to back) and
 * writes on stdout the stream mr_classic_encode() builds from what was
 * decoded, going through a mapped-ram raw tail on the way as snapsave and
 * snaprestore will. Arguments: the names of the shared blocks.
 * Exit 0, or 1 with one line on stderr.
 */
#include "classic.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct shared {
	char **names;
	int n;
	uint8_t *mem[MR_CLASSIC_BLOCKS_MAX];
	size_t n_mem;
};

static long read_fd(void *ctx, void *buf, size_t len)
{
	ssize_t n = read(*(int *)ctx, buf, len);

	return n < 0 ? -errno : (long)n;
}

static int write_fd(void *ctx, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(*(int *)ctx, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int give_memory(void *ctx, struct mr_classic_block *b, size_t n)
{
	struct shared *s = ctx;

	for (size_t i = 0; i < n; i++) {
		int j;

		for (j = 0; j < s->n && strcmp(s->names[j], b[i].name); j++)
			;
		if (j < s->n)
			continue;
		b[i].mem = s->mem[s->n_mem++] = calloc(1, b[i].length ? b[i].length : 1);
		if (!b[i].mem)
			return -ENOMEM;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct shared sh = { .names = argv + 1, .n = argc - 1 };
	int in = 0, out = 1, r;
	struct mr_classic_ops ops = {
		.read = read_fd, .blocks = give_memory, .ctx = &in, .blocks_ctx = &sh
	};
	struct mr_classic_enc_block *eb = NULL;
	struct mr_buf raw = MR_BUF_INIT;
	struct mr_classic *c = NULL;
	struct mr_err err = { 0 };
	size_t dev = 0;
	uint32_t id = 0;
	bool sw = false;

	r = mr_classic_decode(&ops, &c, &err);
	if (r)
		goto fail;
	/* The mapped-ram file keeps the tail behind this prefix; take it apart again. */
	mr_classic_raw_tail_prefix(&raw, c->ram_id, c->switchover_start);
	mr_buf_put(&raw, c->tail, c->tail_len);
	r = raw.err ? raw.err : mr_classic_split_raw_tail(raw.data, raw.len, &dev, &id, &sw, &err);
	if (r)
		goto fail;
	eb = calloc(c->n_blocks, sizeof(*eb));
	if (!eb) {
		r = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < c->n_blocks; i++)
		eb[i] = (struct mr_classic_enc_block){ .name = c->blocks[i].name,
						       .length = c->blocks[i].length,
						       .gpa = c->blocks[i].gpa,
						       .data = c->blocks[i].mem,
						       .bitmap = c->blocks[i].got };
	struct mr_classic_enc e = { .machine = c->machine,
				    .ram_id = id,
				    .blocks = eb,
				    .n_blocks = c->n_blocks,
				    .switchover_start = sw,
				    .tail = raw.data + dev,
				    .tail_len = raw.len - dev,
				    .write = write_fd,
				    .ctx = &out };

	r = mr_classic_encode(&e, &err);
fail:
	if (r)
		fprintf(stderr, "classic-reencode: %s (offset %llu, block \"%s\"): %s\n",
			err.msg[0] ? err.msg : "failed", (unsigned long long)err.off, err.block,
			strerror(-r));
	free(eb);
	mr_buf_free(&raw);
	mr_classic_free(c);
	for (size_t i = 0; i < sh.n_mem; i++)
		free(sh.mem[i]);
	return r ? 1 : 0;
}
