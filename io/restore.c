// SPDX-License-Identifier: MIT
/*
 * The restore pipeline: workers read every run of present pages straight
 * into the destination mappings (O_DIRECT where allowed) and make sure the
 * pages whose bit is clear end up zero; then the device state is copied out.
 */
#include "snapmr.h"
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

#define UNIT_PAGES    1024u /* 4 MiB per work unit */
#define DEFAULT_MAXIO (1u << 20)
#define COPY_BUF      (1u << 20)

struct runit {
	uint32_t dst;
	uint64_t first, end;
};

struct rblock {
	const struct mr_block_info *info;
	const struct snap_block *dst;
};

struct restore_ctx {
	const struct snap_restore_args *args;
	struct rblock *blocks;
	struct runit *units;
	size_t n_units;
	atomic_size_t next_unit;
	atomic_uint_fast64_t normal_pages;
	int page_fd;
	int alt_fd;
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

/* Clear pages must read as zero: punch them out of the backing file, or memset. */
static void zero_range(const struct snap_block *d, uint64_t first, uint64_t end)
{
	uint64_t off = first * MR_PAGE_SIZE, len = (end - first) * MR_PAGE_SIZE;

	if (d->fd >= 0 && fallocate(d->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				    (off_t)(d->fd_off + off), (off_t)len) == 0)
		return;
	memset((uint8_t *)d->addr + off, 0, len);
}

static int restore_worker(struct snap_pool *pool, void *arg, struct snap_io_engine *e)
{
	struct restore_ctx *c = arg;

	while (!atomic_load(&pool->stop)) {
		size_t i = atomic_fetch_add(&c->next_unit, 1);

		if (i >= c->n_units)
			break;
		struct runit *u = &c->units[i];
		struct rblock *rb = &c->blocks[u->dst];
		const uint64_t *map = rb->info->bitmap;
		uint8_t *base = rb->dst->addr;
		uint64_t pg = u->first, normal = 0;

		while (pg < u->end) {
			uint64_t run_end, first;

			first = mr_bitmap_next_run(map, pg, u->end, true, &run_end);
			if (first > pg && !rb->dst->zeroed)
				zero_range(rb->dst, pg, first);
			if (first >= u->end)
				break;
			normal += run_end - first;
			for (uint64_t p = first; p < run_end;) {
				uint64_t n = run_end - p < c->max_pages ? run_end - p : c->max_pages;
				int r = snap_io_rw(e, c->page_fd, c->alt_fd, false,
						   base + p * MR_PAGE_SIZE,
						   rb->info->hdr.pages_offset + p * MR_PAGE_SIZE,
						   (size_t)(n * MR_PAGE_SIZE), rb);

				if (r)
					return r;
				p += n;
			}
			pg = run_end;
		}
		atomic_fetch_add(&c->normal_pages, normal);
		atomic_fetch_add(&pool->progress, (u->end - u->first) * MR_PAGE_SIZE);
	}
	return 0;
}

static int copy_range(int in, int out, uint64_t off, uint64_t len, struct snap_err *err)
{
	uint8_t *buf = malloc(COPY_BUF);
	uint64_t done = 0;
	int r = 0;

	if (!buf)
		return fail(err, -ENOMEM, "out of memory");
	while (done < len) {
		size_t n = len - done < COPY_BUF ? (size_t)(len - done) : COPY_BUF;
		long got = snap_pread_full(in, buf, n, off + done);

		if (got < 0 || (size_t)got != n) {
			r = got < 0 ? (int)got : -ENODATA;
			r = fail(err, r, "reading the device state at offset 0x%llx: %s",
				 (unsigned long long)(off + done),
				 r == -ENODATA ? "file is truncated" : strerror(-r));
			break;
		}
		for (size_t w = 0; w < n;) {
			ssize_t k = write(out, buf + w, n - w);

			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0) {
				r = k < 0 ? -errno : -EIO;
				r = fail(err, r, "writing the device state: %s", strerror(-r));
				goto out;
			}
			w += (size_t)k;
		}
		done += n;
	}
out:
	free(buf);
	return r;
}

int snap_restore(const struct snap_restore_args *args, const struct snap_opts *opts,
		 struct snap_stats *ret_stats, struct snap_err *err)
{
	static const struct snap_opts no_opts;
	const struct mr_image *img = args->img;
	struct restore_ctx c = {.args = args};
	struct snap_pool pool = {0};
	struct snap_stats st = {0};
	uint64_t total = 0, units_cap = 0;
	bool engine_fallback;
	char ebuf[256];
	double t0 = snap_now();
	int r;

	if (!opts)
		opts = &no_opts;
	if (err)
		memset(err, 0, sizeof(*err));
	c.blocks = calloc(args->n_blocks ? args->n_blocks : 1, sizeof(*c.blocks));
	if (!c.blocks)
		return fail(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < args->n_blocks; i++) {
		const struct snap_block *d = &args->blocks[i];
		const struct mr_block_info *bi = mr_image_block(img, d->name);

		if (!bi) {
			r = fail(err, -ENOENT, "block '%s' is not in the file", d->name);
			goto out;
		}
		if (!bi->bitmap && bi->num_pages) {
			r = fail(err, -EINVAL, "block '%s': bitmap not loaded", d->name);
			goto out;
		}
		if (d->length != bi->length) {
			r = fail(err, -EINVAL, "block '%s': destination holds %llu bytes, the file %llu",
				 d->name, (unsigned long long)d->length,
				 (unsigned long long)bi->length);
			goto out;
		}
		for (size_t j = 0; j < i; j++)
			if (!strcmp(args->blocks[j].name, d->name)) {
				r = fail(err, -EINVAL, "block '%s' given twice", d->name);
				goto out;
			}
		c.blocks[i] = (struct rblock){bi, d};
		total += bi->length;
		for (uint64_t pg = 0; pg < bi->num_pages; pg += UNIT_PAGES) {
			if (c.n_units == units_cap) {
				size_t ncap = units_cap ? units_cap * 2 : 256;
				struct runit *nu = realloc(c.units, ncap * sizeof(*nu));

				if (!nu) {
					r = fail(err, -ENOMEM, "out of memory");
					goto out;
				}
				c.units = nu;
				units_cap = ncap;
			}
			c.units[c.n_units++] = (struct runit){
				(uint32_t)i, pg,
				bi->num_pages - pg < UNIT_PAGES ? bi->num_pages : pg + UNIT_PAGES};
		}
	}

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
	if (c.n_units) {
		r = snap_pool_run(&pool, restore_worker, &c, opts, total, t0);
		if (r) {
			if (r == -ENODATA)
				r = fail(err, r, "page data is truncated (file shorter than its page regions)");
			else if (r == -EINVAL && c.page_fd == args->direct_fd && c.alt_fd < 0)
				r = fail(err, r, "the file system refused an O_DIRECT read (try --direct auto or off)");
			else
				r = fail(err, r, "reading page data: %s", strerror(-r));
			goto out;
		}
	}

	if (args->devstate_fd >= 0) {
		uint64_t off, len;

		if (args->devstate_raw) {
			off = img->ram_end;
			len = img->stream_end - img->ram_end;
		} else if (img->has_devstate) {
			off = img->devstate_off;
			len = img->devstate_len;
		} else {
			r = fail(err, -ENOENT,
				 "the file has no snapmr device-state section (a QEMU file keeps device state in its raw stream tail)");
			goto out;
		}
		r = copy_range(args->fd, args->devstate_fd, off, len, err);
		if (r)
			goto out;
		st.devstate_bytes = len;
	}

	st.total_bytes = total;
	st.normal_pages = atomic_load(&c.normal_pages);
	st.zero_pages = total / MR_PAGE_SIZE - st.normal_pages;
	st.page_bytes = st.normal_pages * MR_PAGE_SIZE;
	st.requests = atomic_load(&pool.requests);
	st.seconds = snap_now() - t0;
	st.engine = pool.ops->name;
	st.engine_fallback = engine_fallback;
	st.direct = c.page_fd == args->direct_fd && args->direct_fd >= 0;
	st.direct_fell_back = atomic_load(&pool.fell_back);
	st.jobs = pool.jobs;
	if (ret_stats)
		*ret_stats = st;
	r = 0;
out:
	free(c.blocks);
	free(c.units);
	return r;
}

static long fd_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
	return snap_pread_full(*(int *)ctx, buf, len, off);
}

int snap_inspect(int fd, uint64_t offset, struct mr_image **ret_img, struct snap_err *err)
{
	struct stat st;
	struct mr_src src = {.pread = fd_pread, .ctx = &fd};
	struct mr_err me;
	int r;

	if (err)
		memset(err, 0, sizeof(*err));
	if (fstat(fd, &st) < 0)
		return fail(err, -errno, "%s", strerror(errno));
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		return fail(err, -EINVAL, "not a regular file");
	src.size = (uint64_t)st.st_size;
	if (S_ISBLK(st.st_mode)) {
		off_t end = lseek(fd, 0, SEEK_END);

		if (end < 0)
			return fail(err, -errno, "%s", strerror(errno));
		src.size = (uint64_t)end;
	}
	r = mr_image_parse(&src, offset, 0, ret_img, &me);
	if (r) {
		if (me.block[0])
			return fail(err, r, "offset 0x%llx: block '%s': %s",
				    (unsigned long long)me.off, me.block, me.msg);
		return fail(err, r, "offset 0x%llx: %s", (unsigned long long)me.off, me.msg);
	}
	return 0;
}
