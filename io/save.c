// SPDX-License-Identifier: MIT
/*
 * The save pipeline: lays out the stream, lets the workers scan guest memory
 * and write non-zero runs at their fixed offsets (O_DIRECT straight from the
 * mapping where allowed), then writes the bitmaps, the device state and EOF
 * through the buffered descriptor and makes it all durable.
 */
#include "snapmr.h"
#include "be.h"
#include "buf.h"
#include "config.h"
#include "layout.h"
#include "stream.h"
#include "workers.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#define UNIT_PAGES    1024u	/* 4 MiB of guest memory per work unit */
#define DEFAULT_MAXIO (1u << 20)
#define COPY_BUF      (1u << 20)

const char *snap_version(void)
{
	return SNAPMR_VERSION;
}

struct unit {
	uint32_t block;
	uint64_t first, end; /* page indices */
};

struct save_block {
	const struct snap_block *b;
	struct mr_block_layout l;
	uint64_t *bitmap; /* written with atomic OR: units may share a word */
	uint64_t num_pages;
};

struct save_ctx {
	const struct snap_save_args *args;
	struct save_block *blocks;
	struct unit *units;
	size_t n_units;
	atomic_size_t next_unit;
	atomic_uint_fast64_t normal_pages;
	int page_fd; /* O_DIRECT fd or the buffered one */
	int alt_fd;  /* buffered fd to fall back to, or -1 */
	size_t max_pages;
};

static int fail(struct snap_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct snap_err *err, int code, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		err->code = code;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return code;
}

/* True if the 4 KiB page at p is all zero; reads 64 bytes per step. */
static bool page_is_zero(const uint8_t *p)
{
	const uint64_t *w = (const uint64_t *)(const void *)p;

	/* Most non-zero pages differ early: check the start before the sweep. */
	if (w[0] | w[1])
		return false;
	for (size_t i = 0; i < MR_PAGE_SIZE / 8; i += 8) {
		if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] |
		    w[i + 7])
			return false;
	}
	return true;
}

static int write_run(struct save_ctx *c, struct snap_io_engine *e, struct save_block *sb,
		     uint64_t first, uint64_t end)
{
	uint8_t *base = (uint8_t *)sb->b->addr;

	while (first < end) {
		uint64_t n = end - first < c->max_pages ? end - first : c->max_pages;
		int r = snap_io_rw(e, c->page_fd, c->alt_fd, true, base + first * MR_PAGE_SIZE,
				   sb->l.pages_off + first * MR_PAGE_SIZE,
				   (size_t)(n * MR_PAGE_SIZE), NULL);

		if (r)
			return r;
		first += n;
	}
	return 0;
}

static int save_worker(struct snap_pool *pool, void *arg, struct snap_io_engine *e)
{
	struct save_ctx *c = arg;

	while (!atomic_load(&pool->stop)) {
		size_t i = atomic_fetch_add(&c->next_unit, 1);

		if (i >= c->n_units)
			break;
		struct unit *u = &c->units[i];
		struct save_block *sb = &c->blocks[u->block];
		const uint8_t *base = sb->b->addr;
		uint64_t run = UINT64_MAX, normal = 0;
		uint64_t word = 0, word_idx = u->first / 64;

		for (uint64_t pg = u->first; pg < u->end; pg++) {
			if (pg / 64 != word_idx) {
				if (word)
					__atomic_fetch_or(&sb->bitmap[word_idx], word,
							  __ATOMIC_RELAXED);
				word = 0;
				word_idx = pg / 64;
			}
			if (page_is_zero(base + pg * MR_PAGE_SIZE)) {
				if (run != UINT64_MAX) {
					int r = write_run(c, e, sb, run, pg);

					if (r)
						return r;
					run = UINT64_MAX;
				}
				continue;
			}
			word |= (uint64_t)1 << (pg & 63);
			normal++;
			if (run == UINT64_MAX)
				run = pg;
		}
		if (word)
			__atomic_fetch_or(&sb->bitmap[word_idx], word, __ATOMIC_RELAXED);
		if (run != UINT64_MAX) {
			int r = write_run(c, e, sb, run, u->end);

			if (r)
				return r;
		}
		atomic_fetch_add(&c->normal_pages, normal);
		atomic_fetch_add(&pool->progress, (u->end - u->first) * MR_PAGE_SIZE);
	}
	return 0;
}

static int add_unit(struct save_ctx *c, size_t *cap, uint32_t block, uint64_t first, uint64_t end)
{
	while (first < end) {
		uint64_t n = end - first < UNIT_PAGES ? end - first : UNIT_PAGES;

		if (c->n_units == *cap) {
			size_t ncap = *cap ? *cap * 2 : 256;
			struct unit *u = realloc(c->units, ncap * sizeof(*u));

			if (!u)
				return -ENOMEM;
			c->units = u;
			*cap = ncap;
		}
		c->units[c->n_units++] = (struct unit){block, first, first + n};
		first += n;
	}
	return 0;
}

/*
 * Splits a block into units, leaving out the holes of its backing file: a
 * hole is zero by definition, and reading it through a shared mapping would
 * allocate memory for nothing (tmpfs, hugetlbfs).
 */
static int plan_block(struct save_ctx *c, size_t *cap, uint32_t idx, uint64_t *ret_skipped)
{
	const struct snap_block *b = c->blocks[idx].b;
	uint64_t pages = b->length / MR_PAGE_SIZE, pos = 0, skipped = 0;

	if (b->fd < 0)
		return add_unit(c, cap, idx, 0, pages);
	while (pos < b->length) {
		off_t data = lseek(b->fd, (off_t)(b->fd_off + pos), SEEK_DATA);
		off_t hole;
		uint64_t d, h;

		if (data < 0) {
			if (errno == ENXIO) { /* only a hole up to the end */
				skipped += b->length - pos;
				break;
			}
			/* No SEEK_DATA here: scan everything. */
			return add_unit(c, cap, idx, pos / MR_PAGE_SIZE, pages);
		}
		d = (uint64_t)data < b->fd_off ? 0 : (uint64_t)data - b->fd_off;
		if (d >= b->length) {
			skipped += b->length - pos;
			break;
		}
		hole = lseek(b->fd, data, SEEK_HOLE);
		h = hole < 0 ? b->length : (uint64_t)hole - b->fd_off;
		if (h > b->length)
			h = b->length;
		d &= ~(uint64_t)(MR_PAGE_SIZE - 1);
		h = (h + MR_PAGE_SIZE - 1) & ~(uint64_t)(MR_PAGE_SIZE - 1);
		if (d < pos)
			d = pos;
		skipped += d - pos;
		int r = add_unit(c, cap, idx, d / MR_PAGE_SIZE, h / MR_PAGE_SIZE);

		if (r)
			return r;
		pos = h > d ? h : d + MR_PAGE_SIZE;
	}
	*ret_skipped += skipped;
	return 0;
}

/* Reads the whole of fd into out->fd at off; returns bytes copied or -errno. */
static int64_t copy_stream(int in, int out, uint64_t off, struct snap_err *err, const char *what)
{
	uint8_t *buf = malloc(COPY_BUF);
	int64_t total = 0;

	if (!buf)
		return fail(err, -ENOMEM, "out of memory");
	for (;;) {
		ssize_t n = read(in, buf, COPY_BUF);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			int e = -errno;

			free(buf);
			return fail(err, e, "reading the %s: %s", what, strerror(-e));
		}
		if (n == 0)
			break;
		int r = snap_pwrite_all(out, buf, (size_t)n, off + (uint64_t)total);

		if (r) {
			free(buf);
			return fail(err, r, "writing the %s at offset 0x%llx: %s", what,
				    (unsigned long long)(off + (uint64_t)total), strerror(-r));
		}
		total += n;
	}
	free(buf);
	return total;
}

static int read_exact(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ENODATA;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int check_args(const struct snap_save_args *a, struct snap_err *err)
{
	for (size_t i = 0; i < a->n_blocks; i++) {
		const struct snap_block *b = &a->blocks[i];
		size_t n = b->name ? strlen(b->name) : 0;

		if (!n || n > MR_NAME_MAX)
			return fail(err, -EINVAL, "block %zu: name must have 1 to 255 bytes", i);
		if (!b->length || b->length % MR_PAGE_SIZE)
			return fail(err, -EINVAL,
				    "block '%s': length %llu is not a non-zero multiple of 4096",
				    b->name, (unsigned long long)b->length);
		if ((uintptr_t)b->addr % MR_PAGE_SIZE)
			return fail(err, -EINVAL, "block '%s': mapping is not page aligned",
				    b->name);
		for (size_t j = 0; j < i; j++)
			if (!strcmp(a->blocks[j].name, b->name))
				return fail(err, -EINVAL, "block '%s' given twice", b->name);
	}
	if (!a->n_blocks)
		return fail(err, -EINVAL, "no RAM blocks to save");
	return 0;
}

int snap_save(const struct snap_save_args *args, const struct snap_opts *opts,
	      struct snap_stats *ret_stats, struct snap_err *err)
{
	static const struct snap_opts no_opts;
	static const char *const caps[] = {"mapped-ram"};
	const char *machine = args->machine ? args->machine : MR_DEFAULT_MACHINE;
	struct save_ctx c = {.args = args};
	struct snap_pool pool = {0};
	struct snap_stats st = {0};
	struct mr_buf b = MR_BUF_INIT;
	uint64_t total = 0, off, skipped = 0, end;
	uint32_t ram_id = MR_RAM_SECTION_ID;
	uint8_t tail_head[13];
	size_t units_cap = 0;
	bool engine_fallback;
	char ebuf[256];
	double t0 = snap_now();
	int r;

	if (!opts)
		opts = &no_opts;
	if (err)
		memset(err, 0, sizeof(*err));
	r = check_args(args, err);
	if (r)
		return r;
	if (strlen(machine) == 0 || strlen(machine) > MR_NAME_MAX)
		return fail(err, -EINVAL, "machine name must have 1 to 255 bytes");

	/* A raw tail starts with the RAM EOS word and the footer naming the RAM section id. */
	if (args->devstate == SNAP_DEVSTATE_RAW) {
		r = read_exact(args->devstate_fd, tail_head, sizeof(tail_head));
		if (r)
			return fail(err, r, "reading the raw device-state tail: %s",
				    r == -ENODATA ? "shorter than 13 bytes" : strerror(-r));
		if (mr_get_be64(tail_head) != MR_RAM_EOS || tail_head[8] != MR_SEC_FOOTER)
			return fail(err, -EBADMSG,
				    "the raw device-state tail does not start with the RAM EOS word and footer");
		ram_id = mr_get_be32(tail_head + 9);
		if (ram_id == 0)
			return fail(err, -EBADMSG, "the raw tail names RAM section id 0");
	}

	for (size_t i = 0; i < args->n_blocks; i++)
		if (__builtin_add_overflow(total, args->blocks[i].length, &total) ||
		    (total & MR_RAM_FLAG_MASK))
			return fail(err, -EOVERFLOW, "total RAM size overflows");
	c.blocks = calloc(args->n_blocks, sizeof(*c.blocks));
	if (!c.blocks)
		return fail(err, -ENOMEM, "out of memory");

	/* Stream head: header, configuration, RAM START with the block list. */
	mr_encode_file_header(&b);
	mr_encode_config(&b, machine, caps, 1);
	mr_encode_ram_start(&b, ram_id, total);
	if (b.err) {
		r = fail(err, b.err, "out of memory");
		goto out;
	}
	off = args->offset + b.len;
	for (size_t i = 0; i < args->n_blocks; i++) {
		struct save_block *sb = &c.blocks[i];
		struct mr_ram_header h;

		sb->b = &args->blocks[i];
		sb->num_pages = sb->b->length / MR_PAGE_SIZE;
		r = mr_layout_block(off, strlen(sb->b->name), sb->b->length, MR_PAGES_ALIGN,
				    &sb->l);
		if (r) {
			r = fail(err, r, "block '%s': layout overflows at offset 0x%llx", sb->b->name,
				 (unsigned long long)off);
			goto out;
		}
		sb->bitmap = calloc(sb->l.bitmap_size / 8 ? sb->l.bitmap_size / 8 : 1, 8);
		if (!sb->bitmap) {
			r = fail(err, -ENOMEM, "out of memory for the bitmap of '%s'", sb->b->name);
			goto out;
		}
		h = (struct mr_ram_header){MR_RAM_HDR_VERSION, MR_PAGE_SIZE, sb->l.bitmap_off,
					   sb->l.pages_off};
		mr_encode_block_entry(&b, sb->b->name, sb->b->length, &h);
		if (b.err) {
			r = fail(err, b.err, "out of memory");
			goto out;
		}
		/* Entries after the first start right after the previous page region. */
		r = snap_pwrite_all(args->fd, b.data, b.len, i ? sb->l.entry_off : args->offset);
		if (r) {
			r = fail(err, r, "writing the header of block '%s' at offset 0x%llx: %s",
				 sb->b->name, (unsigned long long)sb->l.entry_off, strerror(-r));
			goto out;
		}
		mr_buf_reset(&b);
		off = sb->l.next_off;
		r = plan_block(&c, &units_cap, (uint32_t)i, &skipped);
		if (r) {
			r = fail(err, r, "out of memory");
			goto out;
		}
	}
	end = off; /* the EOS word after the last page region */

	/* Pages. */
	pool.jobs = opts->jobs ? opts->jobs : (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
	if (pool.jobs < 1)
		pool.jobs = 1;
	pool.max_io = opts->max_io ? opts->max_io : DEFAULT_MAXIO;
	if (pool.max_io < MR_PAGE_SIZE || pool.max_io % MR_PAGE_SIZE) {
		r = fail(err, -EINVAL, "request size %zu is not a multiple of 4096", pool.max_io);
		goto out;
	}
	c.max_pages = pool.max_io / MR_PAGE_SIZE;
	r = snap_pool_pick_engine(&pool, opts->engine, &engine_fallback, ebuf, sizeof(ebuf));
	if (r) {
		r = fail(err, r, "%s", ebuf);
		goto out;
	}
	pool.depth = opts->queue_depth ? opts->queue_depth
				       : (pool.ops->flags & SNAP_IO_F_ASYNC ? 8 : 1);
	if (args->direct_fd >= 0 && opts->direct != SNAP_DIRECT_OFF) {
		c.page_fd = args->direct_fd;
		c.alt_fd = opts->direct == SNAP_DIRECT_AUTO ? args->fd : -1;
	} else {
		c.page_fd = args->fd;
		c.alt_fd = -1;
	}
	if ((pool.ops->flags & SNAP_IO_F_DIRECT_ONLY) && c.page_fd == args->fd) {
		r = fail(err, -EINVAL, "I/O engine '%s' needs O_DIRECT (use --direct on or another engine)",
			 pool.ops->name);
		goto out;
	}
	atomic_store(&pool.progress, skipped);
	r = snap_pool_run(&pool, save_worker, &c, opts, total, t0);
	if (r) {
		if (r == -EINVAL && c.page_fd == args->direct_fd && c.alt_fd < 0)
			r = fail(err, r, "the file system refused an O_DIRECT write (try --direct auto or off)");
		else
			r = fail(err, r, "writing page data: %s", strerror(-r));
		goto out;
	}

	/* Bitmaps, written last as QEMU does, through the buffered descriptor. */
	for (size_t i = 0; i < args->n_blocks; i++) {
		struct save_block *sb = &c.blocks[i];

		uint8_t *raw = malloc(sb->l.bitmap_size ? sb->l.bitmap_size : 1);

		if (!raw) {
			r = fail(err, -ENOMEM, "out of memory");
			goto out;
		}
		mr_bitmap_to_file(sb->bitmap, sb->l.bitmap_size / 8, raw);
		r = snap_pwrite_all(args->fd, raw, sb->l.bitmap_size, sb->l.bitmap_off);
		free(raw);
		if (r) {
			r = fail(err, r, "writing the bitmap of block '%s' at offset 0x%llx: %s",
				 sb->b->name, (unsigned long long)sb->l.bitmap_off, strerror(-r));
			goto out;
		}
	}

	/* Tail: EOS + footer, device state, EOF, VM description. */
	mr_buf_reset(&b);
	if (args->devstate == SNAP_DEVSTATE_RAW) {
		int64_t n;

		r = snap_pwrite_all(args->fd, tail_head, sizeof(tail_head), end);
		if (r) {
			r = fail(err, r, "writing the stream tail at offset 0x%llx: %s",
				 (unsigned long long)end, strerror(-r));
			goto out;
		}
		n = copy_stream(args->devstate_fd, args->fd, end + sizeof(tail_head), err,
				"raw device-state tail");
		if (n < 0) {
			r = (int)n;
			goto out;
		}
		st.devstate_bytes = (uint64_t)n + sizeof(tail_head);
		end += st.devstate_bytes;
	} else {
		uint64_t len_off, data_off;
		int64_t n = 0;

		mr_encode_ram_eos(&b, ram_id);
		mr_encode_devstate_hdr(&b, 0);
		if (b.err) {
			r = fail(err, b.err, "out of memory");
			goto out;
		}
		len_off = end + b.len - 8;
		data_off = end + b.len;
		r = snap_pwrite_all(args->fd, b.data, b.len, end);
		if (!r && args->devstate == SNAP_DEVSTATE_SECTION) {
			n = copy_stream(args->devstate_fd, args->fd, data_off, err, "device state");
			if (n < 0) {
				r = (int)n;
				goto out;
			}
		}
		if (!r) {
			uint8_t be[8];

			/* The length is known only now when the state came from a pipe. */
			mr_put_be64(be, (uint64_t)n);
			r = snap_pwrite_all(args->fd, be, 8, len_off);
		}
		st.devstate_bytes = (uint64_t)n;
		end = data_off + (uint64_t)n;
		mr_buf_reset(&b);
		mr_encode_footer(&b, MR_DEVSTATE_ID);
		mr_buf_u8(&b, MR_SEC_EOF);
		mr_encode_vmdesc_devstate(&b, (uint64_t)n);
		if (!r && b.err)
			r = b.err;
		if (!r)
			r = snap_pwrite_all(args->fd, b.data, b.len, end);
		if (r) {
			r = fail(err, r, "writing the device-state section at offset 0x%llx: %s",
				 (unsigned long long)end, strerror(-r));
			goto out;
		}
		end += b.len;
	}

	/* Drop anything an older, longer file left behind. */
	struct stat sbuf;

	if (fstat(args->fd, &sbuf) == 0 && S_ISREG(sbuf.st_mode) && (uint64_t)sbuf.st_size > end &&
	    ftruncate(args->fd, (off_t)end) < 0) {
		r = fail(err, -errno, "truncating the output to 0x%llx bytes: %s",
			 (unsigned long long)end, strerror(errno));
		goto out;
	}
	if (!opts->no_sync && fdatasync(args->fd) < 0) {
		r = fail(err, -errno, "flushing the output to disk: %s", strerror(errno));
		goto out;
	}

	st.total_bytes = total;
	st.normal_pages = atomic_load(&c.normal_pages);
	st.zero_pages = total / MR_PAGE_SIZE - st.normal_pages;
	st.page_bytes = st.normal_pages * MR_PAGE_SIZE;
	st.stream_bytes = end - args->offset - st.page_bytes;
	st.requests = atomic_load(&pool.requests);
	st.seconds = snap_now() - t0;
	st.engine = pool.ops->name;
	st.direct = c.page_fd == args->direct_fd && args->direct_fd >= 0;
	st.direct_fell_back = atomic_load(&pool.fell_back);
	st.jobs = pool.jobs;
	st.engine_fallback = engine_fallback;
	if (ret_stats)
		*ret_stats = st;
	r = 0;
out:
	for (size_t i = 0; i < args->n_blocks; i++)
		free(c.blocks[i].bitmap);
	free(c.blocks);
	free(c.units);
	mr_buf_free(&b);
	return r;
}
