// SPDX-License-Identifier: MIT
/*
 * The save pipeline: lays out the stream, lets the workers scan guest memory
 * (through pread copies for tmpfs, see scan_view()) and write non-zero runs
 * at their fixed offsets (O_DIRECT straight from the mapping where allowed),
 * then writes the bitmaps, the device state and EOF through the buffered
 * descriptor and makes it all durable.
 */
#include "snapmr.h"
#include "be.h"
#include "buf.h"
#include "config.h"
#include "layout.h"
#include "stream.h"
#include "trailer.h"
#include "workers.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include <xxhash.h>

#define UNIT_PAGES 1024u /* 4 MiB of guest memory per work unit */
#define SCAN_PAGES 64u	 /* 256 KiB pread window for the zero scan: stays in L2 */
#define COPY_BUF   (1u << 20)

const char *snap_version(void)
{
	return SNAPMR_VERSION;
}

struct unit {
	uint32_t block;
	uint64_t first, end; /* page indices */
};

/*
 * How the zero scan reads a block (see source_scan()):
 *   SCAN_MAP    through the mapping;
 *   SCAN_SHMEM  tmpfs or a memfd: pread copies, holes skipped (SEEK_DATA),
 *               the mapping for runs of dense units;
 *   SCAN_COPY   only pread copies, never a fault: hugetlbfs with holes.
 */
enum scan_how { SCAN_MAP, SCAN_SHMEM, SCAN_COPY };

struct save_block {
	const struct snap_block *b;
	struct mr_block_layout l;
	uint64_t *bitmap; /* written with atomic OR: units may share a word */
	uint64_t num_pages;
	enum scan_how how;
};

struct save_ctx {
	const struct snap_save_args *args;
	struct save_block *blocks;
	struct unit *units;
	size_t n_units;
	atomic_size_t next_unit;
	atomic_uint_fast64_t normal_pages;
	struct mr_trailer_builder *tb;
	uint32_t chunk_size;
	int page_fd; /* O_DIRECT fd or the buffered one */
	int alt_fd;  /* buffered fd to fall back to, or -1 */
	size_t max_pages;
	atomic_uint_fast32_t src_err_blk; /* 1 + the block whose source failed to read, or 0 */
	int src_err;			  /* and why, written by the thread that set it */
};

/* A worker's zero-scan state. */
struct scan {
	uint8_t *buf; /* SCAN_PAGES pages, or NULL: map everything */
	bool dense;   /* the last unit was nearly all data */
	/* Source bytes [hole_from, data_at) of block hole_blk are a hole. */
	uint32_t hole_blk;
	uint64_t hole_from, data_at;
};

/*
 * Is unit u, in a tmpfs source, all hole? One SEEK_DATA per unit at most,
 * less where the last answer still covers it. SEEK_HOLE is not used: on
 * populated memory it walks every page up to the next hole, from every unit.
 */
static bool unit_is_hole(const struct save_block *sb, const struct unit *u, struct scan *sc)
{
	uint64_t start = sb->b->fd_off + u->first * MR_PAGE_SIZE;
	uint64_t end = sb->b->fd_off + u->end * MR_PAGE_SIZE;

	if (sc->hole_blk != u->block || start < sc->hole_from || sc->data_at < start) {
		off_t d = lseek(sb->b->fd, (off_t)start, SEEK_DATA);

		if (d < 0 && errno != ENXIO)
			return false; /* cannot tell: scan it */
		sc->hole_blk = u->block;
		sc->hole_from = start;
		sc->data_at = d < 0 ? UINT64_MAX : (uint64_t)d;
	}
	return sc->data_at >= end;
}

/*
 * May the scan map unit u? Only if every page has memory: a read fault on a
 * tmpfs hole allocates a page. mincore() may miss swapped-out pages, which
 * only sends the unit to the copy path.
 */
static bool unit_resident(const struct save_block *sb, const struct unit *u)
{
	unsigned char vec[UNIT_PAGES];
	size_t n = (size_t)(u->end - u->first);

	if (mincore((uint8_t *)sb->b->addr + u->first * MR_PAGE_SIZE, n * MR_PAGE_SIZE, vec))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!(vec[i] & 1))
			return false;
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

/*
 * Hashes the chunks that lie wholly inside pages [lo, hi) of unit u, reading
 * page p at view + (p - vfirst) * 4096 and the unit's own copy of its bitmap
 * words (local[k] is word w0 + k); chunks that straddle units are left for
 * the main thread.
 */
static void hash_range(struct save_ctx *c, const struct unit *u, const uint64_t *local, uint64_t w0,
		       const uint8_t *view, uint64_t vfirst, uint64_t lo, uint64_t hi)
{
	const struct save_block *sb = &c->blocks[u->block];
	uint64_t per = c->chunk_size / MR_PAGE_SIZE;

	for (uint64_t ch = (lo + per - 1) / per; ch * per < hi; ch++) {
		uint64_t first = ch * per;
		uint64_t n = sb->num_pages - first < per ? sb->num_pages - first : per;

		if (first + n > hi)
			break;
		mr_trailer_builder_set_chunk(
			c->tb, u->block, ch,
			mr_trailer_chunk_hash(view + (first - vfirst) * MR_PAGE_SIZE, local,
					      first - w0 * 64, n));
	}
}

static int source_failed(struct save_ctx *c, uint32_t block, long got)
{
	int r = got < 0 ? (int)got : -ENODATA;
	uint_fast32_t none = 0;

	if (atomic_compare_exchange_strong(&c->src_err_blk, &none, block + 1))
		c->src_err = r;
	return r;
}

/*
 * Where the zero scan reads pages [w, w + n): the mapping, or a copy made
 * with pread. Mapping a tmpfs page costs more than copying it (faultaround
 * walks and maps every 4 KiB page, then munmap tears it down), so mostly-zero
 * memory is scanned through copies and only its data pages get mapped, by
 * the O_DIRECT writes. For 4 GiB with 5 % data, 2 threads: 12.8 GiB/s with
 * 256 KiB preads against 7.6 GiB/s mapped with MADV_POPULATE_READ.
 */
static const uint8_t *scan_view(struct save_ctx *c, const struct unit *u, struct scan *sc,
				bool copy, uint64_t w, uint64_t n, int *ret)
{
	const struct save_block *sb = &c->blocks[u->block];
	long got;

	*ret = 0;
	if (!copy)
		return (const uint8_t *)sb->b->addr + w * MR_PAGE_SIZE;
	got = snap_pread_full(sb->b->fd, sc->buf, (size_t)(n * MR_PAGE_SIZE),
			      sb->b->fd_off + w * MR_PAGE_SIZE);
	if (got != (long)(n * MR_PAGE_SIZE))
		*ret = source_failed(c, u->block, got);
	return sc->buf;
}

static int save_unit(struct save_ctx *c, struct snap_io_engine *e, const struct unit *u,
		     struct scan *sc, uint64_t *ret_normal)
{
	uint64_t local[UNIT_PAGES / 64 + 1] = { 0 };
	struct save_block *sb = &c->blocks[u->block];
	const uint8_t *base = sb->b->addr;
	uint64_t run = UINT64_MAX, normal = 0, w0 = u->first / 64;
	bool copy;
	int r;

	if (sb->how == SCAN_SHMEM && unit_is_hole(sb, u, sc)) {
		*ret_normal = 0;
		return 0;
	}
	copy = sb->how == SCAN_COPY ||
	       (sb->how == SCAN_SHMEM && !(sc->dense && unit_resident(sb, u)));
#ifdef MADV_POPULATE_READ
	/* Map the unit's pages in one call rather than a fault per 16 pages. */
	if (!copy)
		madvise((void *)(base + u->first * MR_PAGE_SIZE),
			(u->end - u->first) * MR_PAGE_SIZE, MADV_POPULATE_READ);
#endif

	/* Windows at multiples of SCAN_PAGES hold whole chunks (64 KiB by default). */
	for (uint64_t w = u->first, n; w < u->end; w += n) {
		uint64_t stop = (w / SCAN_PAGES + 1) * SCAN_PAGES;
		const uint8_t *view;

		n = (stop < u->end ? stop : u->end) - w;
		view = scan_view(c, u, sc, copy, w, n, &r);

		if (r)
			return r;
		for (uint64_t pg = w; pg < w + n; pg++) {
			if (snap_page_is_zero(view + (pg - w) * MR_PAGE_SIZE)) {
				if (run != UINT64_MAX) {
					r = write_run(c, e, sb, run, pg);
					if (r)
						return r;
					run = UINT64_MAX;
				}
				continue;
			}
			local[pg / 64 - w0] |= (uint64_t)1 << (pg & 63);
			normal++;
			if (run == UINT64_MAX)
				run = pg;
		}
		/* Hash a copy while it is in cache: the mapping would fault data pages in. */
		if (copy)
			hash_range(c, u, local, w0, view, w, w, w + n);
	}
	/* Nearly all data: copying would only add work to the mapping the writes need. */
	sc->dense = normal * 8 > (u->end - u->first) * 7;
	if (run != UINT64_MAX) {
		r = write_run(c, e, sb, run, u->end);
		if (r)
			return r;
	}
	/* Hash while the unit is still in cache, then publish its bits. */
	if (!copy || c->chunk_size > SCAN_PAGES * MR_PAGE_SIZE)
		hash_range(c, u, local, w0, base, 0, u->first, u->end);
	for (uint64_t w = w0; w <= (u->end - 1) / 64; w++)
		if (local[w - w0])
			__atomic_fetch_or(&sb->bitmap[w], local[w - w0], __ATOMIC_RELAXED);
	*ret_normal = normal;
	return 0;
}

static int save_worker(struct snap_pool *pool, void *arg, struct snap_io_engine *e)
{
	struct save_ctx *c = arg;
	struct scan sc = { .hole_blk = UINT32_MAX };
	int r = 0;

	if (posix_memalign((void **)&sc.buf, MR_PAGE_SIZE, SCAN_PAGES * MR_PAGE_SIZE))
		return -ENOMEM;
	while (!atomic_load(&pool->stop)) {
		size_t i = atomic_fetch_add(&c->next_unit, 1);
		uint64_t normal;

		if (i >= c->n_units)
			break;
		r = save_unit(c, e, &c->units[i], &sc, &normal);
		if (r)
			break;
		atomic_fetch_add(&c->normal_pages, normal);
		atomic_fetch_add(&pool->progress,
				 (c->units[i].end - c->units[i].first) * MR_PAGE_SIZE);
	}
	free(sc.buf);
	return r;
}

/* Adds units for pages [first, end), cut at multiples of UNIT_PAGES so chunks never straddle. */
static int add_unit(struct save_ctx *c, size_t *cap, uint32_t block, uint64_t first, uint64_t end)
{
	while (first < end) {
		uint64_t stop = (first / UNIT_PAGES + 1) * UNIT_PAGES;

		if (stop > end)
			stop = end;
		if (c->n_units == *cap) {
			size_t ncap = *cap ? *cap * 2 : 256;
			struct unit *u = realloc(c->units, ncap * sizeof(*u));

			if (!u)
				return -ENOMEM;
			c->units = u;
			*cap = ncap;
		}
		c->units[c->n_units++] = (struct unit){ block, first, stop };
		first = stop;
	}
	return 0;
}

/*
 * tmpfs and memfds are scanned through copies (scan_view()). hugetlbfs maps a
 * whole huge page per entry, so the mapping is cheap, but a read fault on a
 * hole takes a huge page from the pool, or raises SIGBUS when the pool is
 * empty; neither SEEK_DATA nor mincore() tells its holes from data. A file
 * whose every huge page is allocated has no holes and is mapped; any other
 * is read only through pread, which returns zeros for holes without
 * allocating.
 */
static enum scan_how source_scan(int fd)
{
	struct statfs sf;
	struct stat st;

	if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode) || fstatfs(fd, &sf))
		return SCAN_MAP;
	if (sf.f_type == TMPFS_MAGIC)
		return SCAN_SHMEM;
	if (sf.f_type == HUGETLBFS_MAGIC && sf.f_bsize > 0) {
		uint64_t hp = (uint64_t)sf.f_bsize; /* the huge page size */
		uint64_t pages = ((uint64_t)st.st_size + hp - 1) / hp;

		if ((uint64_t)st.st_blocks * 512 < pages * hp)
			return SCAN_COPY;
	}
	return SCAN_MAP;
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

	/* tmpfs holes are found per unit (unit_is_hole()); hugetlbfs reports none. */
	if (b->fd < 0 || c->blocks[idx].how != SCAN_MAP)
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
static int64_t copy_stream(int in, int out, uint64_t off, XXH3_state_t *h, struct snap_err *err,
			   const char *what)
{
	uint8_t *buf = malloc(COPY_BUF);
	int64_t total = 0;

	if (!buf)
		return snap_fail(err, -ENOMEM, "out of memory");
	for (;;) {
		ssize_t n = read(in, buf, COPY_BUF);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			int e = -errno;

			free(buf);
			return snap_fail(err, e, "reading the %s: %s", what, strerror(-e));
		}
		if (n == 0)
			break;
		int r = snap_pwrite_all(out, buf, (size_t)n, off + (uint64_t)total);

		XXH3_64bits_update(h, buf, (size_t)n);

		if (r) {
			free(buf);
			return snap_fail(err, r, "writing the %s at offset 0x%llx: %s", what,
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
			return snap_fail(err, -EINVAL, "block %zu: name must have 1 to 255 bytes",
					 i);
		for (size_t k = 0; k < n; k++)
			if ((unsigned char)b->name[k] < 0x20 || b->name[k] == 0x7f)
				return snap_fail(err, -EINVAL,
						 "block %zu: name contains control characters", i);
		if (!b->length || b->length % MR_PAGE_SIZE)
			return snap_fail(
				err, -EINVAL,
				"block '%s': length %llu is not a non-zero multiple of 4096",
				b->name, (unsigned long long)b->length);
		if ((uintptr_t)b->addr % MR_PAGE_SIZE)
			return snap_fail(err, -EINVAL, "block '%s': mapping is not page aligned",
					 b->name);
		for (size_t j = 0; j < i; j++)
			if (!strcmp(a->blocks[j].name, b->name))
				return snap_fail(err, -EINVAL, "block '%s' given twice", b->name);
	}
	if (!a->n_blocks)
		return snap_fail(err, -EINVAL, "no RAM blocks to save");
	return 0;
}

/* Everything snap_save() carries between its phases. */
struct save_run {
	const struct snap_save_args *args;
	const struct snap_opts *opts;
	struct snap_err *err;
	struct save_ctx c;
	struct snap_pool pool;
	struct mr_buf b;
	uint64_t total;	  /* RAM bytes */
	uint64_t end;	  /* next stream byte to write */
	uint64_t meta;	  /* non-page bytes written */
	uint64_t skipped; /* bytes of holes never scanned */
	uint32_t ram_id;
	uint8_t tail_head[13];
	uint64_t devstate_off, devstate_len;
	XXH3_state_t *dh;
	bool engine_fallback;
};

static int write_at(struct save_run *s, const void *buf, size_t len, uint64_t off, const char *what)
{
	int r = snap_pwrite_all(s->args->fd, buf, len, off);

	if (r)
		return snap_fail(s->err, r, "writing %s at offset 0x%llx: %s", what,
				 (unsigned long long)off, strerror(-r));
	s->meta += len;
	return 0;
}

/*
 * Header, configuration and every block entry, then the file sized to the
 * end of the last page region: O_DIRECT writes inside i_size avoid the
 * serialised size-extending path of ext4 and XFS.
 */
static int write_head(struct save_run *s)
{
	static const char *const caps[] = { "mapped-ram" };
	const struct snap_save_args *args = s->args;
	const char *machine = args->machine ? args->machine : MR_DEFAULT_MACHINE;
	struct save_ctx *c = &s->c;
	size_t units_cap = 0;
	bool marked = false;
	uint64_t off;
	int r;

	mr_encode_file_header(&s->b);
	mr_encode_config(&s->b, machine, caps, 1);
	mr_encode_ram_start(&s->b, s->ram_id, s->total);
	if (s->b.err)
		return snap_fail(s->err, s->b.err, "out of memory");
	off = args->offset + s->b.len;
	for (size_t i = 0; i < args->n_blocks; i++) {
		struct save_block *sb = &c->blocks[i];
		struct mr_ram_header h;

		sb->b = &args->blocks[i];
		sb->num_pages = sb->b->length / MR_PAGE_SIZE;
		sb->how = source_scan(sb->b->fd);
		r = mr_layout_block(off, strlen(sb->b->name), sb->b->length, MR_PAGES_ALIGN,
				    &sb->l);
		if (r)
			return snap_fail(s->err, r, "block '%s': layout overflows at offset 0x%llx",
					 sb->b->name, (unsigned long long)off);
		sb->bitmap = calloc(sb->l.bitmap_size / 8 ? sb->l.bitmap_size / 8 : 1, 8);
		if (!sb->bitmap)
			return snap_fail(s->err, -ENOMEM, "out of memory for the bitmap of '%s'",
					 sb->b->name);
		r = mr_trailer_builder_add_block(c->tb, sb->b->name, sb->b->length,
						 sb->l.bitmap_off, sb->l.pages_off, &(size_t){ 0 });
		if (r)
			return snap_fail(s->err, r,
					 "block '%s': cannot be described in the trailer",
					 sb->b->name);
		h = (struct mr_ram_header){ MR_RAM_HDR_VERSION, MR_PAGE_SIZE, sb->l.bitmap_off,
					    sb->l.pages_off };
		mr_encode_block_entry(&s->b, sb->b->name, sb->b->length, &h);
		if (s->b.err)
			return snap_fail(s->err, s->b.err, "out of memory");
		/* Entries after the first start right after the previous page region. */
		r = write_at(s, s->b.data, s->b.len, i ? sb->l.entry_off : args->offset,
			     "a block header");
		if (r)
			return r;
		mr_buf_reset(&s->b);
		/*
		 * The marker goes into padding before a page region, which QEMU
		 * never writes nor reads: it says a trailer must follow.
		 */
		if (!marked && sb->l.pages_off - (sb->l.bitmap_off + sb->l.bitmap_size) >=
				       MR_SNAPMR_MARKER_LEN) {
			r = write_at(s, MR_SNAPMR_MARKER, MR_SNAPMR_MARKER_LEN,
				     sb->l.bitmap_off + sb->l.bitmap_size, "the snapmr marker");
			if (r)
				return r;
			marked = true;
		}
		off = sb->l.next_off;
		r = plan_block(c, &units_cap, (uint32_t)i, &s->skipped);
		if (r)
			return snap_fail(s->err, r, "out of memory");
	}
	s->end = off;

	struct stat st;

	if (fstat(args->fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size < s->end &&
	    ftruncate(args->fd, (off_t)s->end) < 0)
		return snap_fail(s->err, -errno, "sizing the output to 0x%llx bytes: %s",
				 (unsigned long long)s->end, strerror(errno));
	return 0;
}

static int write_pages(struct save_run *s, double t0)
{
	const struct snap_save_args *args = s->args;
	const struct snap_opts *opts = s->opts;
	struct snap_pool *pool = &s->pool;
	struct save_ctx *c = &s->c;
	char ebuf[256];
	int r;

	r = snap_pool_setup(pool, opts, args->fd, args->direct_fd, &c->page_fd, &c->alt_fd,
			    &s->engine_fallback, ebuf, sizeof(ebuf));
	if (r)
		return snap_fail(s->err, r, "%s", ebuf);
	c->max_pages = pool->max_io / MR_PAGE_SIZE;
	atomic_store(&pool->progress, s->skipped);
	r = snap_pool_run(pool, save_worker, c, opts, s->total, t0);
	if (r == -EINVAL && c->page_fd == args->direct_fd && c->alt_fd < 0)
		return snap_fail(
			s->err, r,
			"the file system refused an O_DIRECT write (try --direct auto or off)");
	/*
	 * A source cut short under the scan reads as holes past its new end
	 * (SEEK_DATA says ENXIO), not as an error: refuse a file that would
	 * restore zeros for memory the guest had. The writes from the lost
	 * range fail with EFAULT, which this names better too.
	 */
	for (size_t i = 0; i < args->n_blocks; i++)
		if (snap_block_shrank(c->blocks[i].b))
			return snap_fail(s->err, r ? r : -ENODATA,
					 "block '%s': its source shrank during the save",
					 c->blocks[i].b->name);
	if (r && atomic_load(&c->src_err_blk)) {
		const char *name = c->blocks[atomic_load(&c->src_err_blk) - 1].b->name;

		if (c->src_err == -ENODATA)
			return snap_fail(s->err, r, "block '%s': its source shrank during the save",
					 name);
		return snap_fail(s->err, r, "block '%s': reading its source: %s", name,
				 strerror(-c->src_err));
	}
	if (r)
		return snap_fail(s->err, r, "writing page data: %s", strerror(-r));
	return 0;
}

/* Bitmaps, written last as QEMU does, and the chunks no single unit covered. */
static int write_bitmaps(struct save_run *s)
{
	struct save_ctx *c = &s->c;
	uint32_t cs = c->chunk_size;

	for (size_t i = 0; i < s->args->n_blocks; i++) {
		struct save_block *sb = &c->blocks[i];
		uint64_t chunks = mr_trailer_chunks(sb->b->length, cs);
		uint8_t *raw;
		int r;

		for (uint64_t ch = 0; ch < chunks; ch++) {
			uint64_t first, n;

			if (mr_trailer_builder_chunk_is_set(c->tb, i, ch))
				continue;
			/* Holes and chunks split between units: clear pages are not read. */
			mr_trailer_chunk_pages(sb->b->length, cs, ch, &first, &n);
			mr_trailer_builder_set_chunk(
				c->tb, i, ch,
				mr_trailer_chunk_hash((const uint8_t *)sb->b->addr +
							      first * MR_PAGE_SIZE,
						      sb->bitmap, first, n));
		}
		mr_trailer_builder_set_bitmap_hash(
			c->tb, i, mr_trailer_bitmap_hash(sb->bitmap, sb->num_pages));
		raw = malloc(sb->l.bitmap_size ? sb->l.bitmap_size : 1);
		if (!raw)
			return snap_fail(s->err, -ENOMEM, "out of memory");
		mr_bitmap_to_file(sb->bitmap, sb->l.bitmap_size / 8, raw);
		char what[300];

		snprintf(what, sizeof(what), "the bitmap of block '%s'", sb->b->name);
		r = write_at(s, raw, sb->l.bitmap_size, sb->l.bitmap_off, what);
		free(raw);
		if (r)
			return r;
	}
	return 0;
}

/* The stream after RAM: a raw QEMU tail verbatim, or EOS, device state, EOF, description. */
static int write_tail(struct save_run *s)
{
	const struct snap_save_args *args = s->args;
	struct mr_buf *b = &s->b;
	uint64_t len_off;
	int64_t n = 0;
	uint8_t be[8];
	int r;

	mr_buf_reset(b);
	if (args->devstate == SNAP_DEVSTATE_RAW) {
		s->devstate_off = s->end;
		XXH3_64bits_update(s->dh, s->tail_head, sizeof(s->tail_head));
		r = write_at(s, s->tail_head, sizeof(s->tail_head), s->end, "the stream tail");
		if (r)
			return r;
		n = copy_stream(args->devstate_fd, args->fd, s->end + sizeof(s->tail_head), s->dh,
				s->err, "raw device-state tail");
		if (n < 0)
			return (int)n;
		s->devstate_len = (uint64_t)n + sizeof(s->tail_head);
		s->meta += (uint64_t)n;
		s->end += s->devstate_len;
		return 0;
	}
	mr_encode_ram_eos(b, s->ram_id);
	mr_encode_devstate_hdr(b, 0);
	if (b->err)
		return snap_fail(s->err, b->err, "out of memory");
	len_off = s->end + b->len - 8;
	s->devstate_off = s->end + b->len;
	r = write_at(s, b->data, b->len, s->end, "the device-state section");
	if (r)
		return r;
	if (args->devstate == SNAP_DEVSTATE_SECTION) {
		n = copy_stream(args->devstate_fd, args->fd, s->devstate_off, s->dh, s->err,
				"device state");
		if (n < 0)
			return (int)n;
	}
	/* The length is known only now when the state came from a pipe. */
	mr_put_be64(be, (uint64_t)n);
	r = snap_pwrite_all(args->fd, be, 8, len_off);
	if (r)
		return snap_fail(s->err, r, "writing the device-state length at offset 0x%llx: %s",
				 (unsigned long long)len_off, strerror(-r));
	s->devstate_len = (uint64_t)n;
	s->meta += (uint64_t)n;
	s->end = s->devstate_off + (uint64_t)n;
	mr_buf_reset(b);
	mr_encode_footer(b, MR_DEVSTATE_ID);
	mr_buf_u8(b, MR_SEC_EOF);
	mr_encode_vmdesc_devstate(b, (uint64_t)n);
	if (b->err)
		return snap_fail(s->err, b->err, "out of memory");
	r = write_at(s, b->data, b->len, s->end, "the end of the stream");
	if (r)
		return r;
	s->end += b->len;
	return 0;
}

static int sync_out(struct save_run *s, const char *what)
{
	int r;

	if (s->opts->no_sync)
		return 0;
	do
		r = fdatasync(s->args->fd);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return 0;
	return snap_fail(s->err, -errno, "flushing %s to disk: %s", what, strerror(errno));
}

/*
 * The trailer, and with it the completion record: table, sync, footer,
 * sync. Until the footer is durable the file reads as unfinished.
 */
static int write_trailer(struct save_run *s)
{
	struct mr_buf *b = &s->b;
	size_t table_len;
	int r;

	mr_trailer_builder_set_devstate(s->c.tb, s->devstate_off, s->devstate_len,
					XXH3_64bits_digest(s->dh));
	mr_buf_reset(b);
	r = mr_trailer_encode(s->c.tb, s->end, b);
	if (r)
		return snap_fail(s->err, r, "encoding the trailer: %s", strerror(-r));
	table_len = b->len - MR_TRAILER_FOOTER_SIZE;
	r = write_at(s, b->data, table_len, s->end, "the checksum table");
	if (!r)
		r = sync_out(s, "the file");
	if (!r)
		r = write_at(s, b->data + table_len, MR_TRAILER_FOOTER_SIZE, s->end + table_len,
			     "the completion record");
	if (r)
		return r;
	s->end += b->len;
	return 0;
}

int snap_save(const struct snap_save_args *args, const struct snap_opts *opts,
	      struct snap_stats *ret_stats, struct snap_err *err)
{
	static const struct snap_opts no_opts;
	struct save_run s = { .args = args, .opts = opts ? opts : &no_opts, .err = err };
	struct snap_stats st = { 0 };
	struct snap_err dummy;
	struct stat fst;
	double t0 = snap_now();
	int r;

	if (!s.err)
		s.err = &dummy;
	memset(s.err, 0, sizeof(*s.err));
	s.c.args = args;
	s.b = (struct mr_buf)MR_BUF_INIT;
	s.ram_id = MR_RAM_SECTION_ID;
	r = check_args(args, s.err);
	if (r)
		return r;
	if (args->machine && (!*args->machine || strlen(args->machine) > MR_NAME_MAX))
		return snap_fail(s.err, -EINVAL, "machine name must have 1 to 255 bytes");
	for (size_t i = 0; i < args->n_blocks; i++)
		if (__builtin_add_overflow(s.total, args->blocks[i].length, &s.total) ||
		    (s.total & MR_RAM_FLAG_MASK))
			return snap_fail(s.err, -EOVERFLOW, "total RAM size overflows");

	/* A raw tail starts with the RAM EOS word and the footer naming the RAM section id. */
	if (args->devstate == SNAP_DEVSTATE_RAW) {
		r = read_exact(args->devstate_fd, s.tail_head, sizeof(s.tail_head));
		if (r)
			return snap_fail(s.err, r, "reading the raw device-state tail: %s",
					 r == -ENODATA ? "shorter than 13 bytes" : strerror(-r));
		if (mr_get_be64(s.tail_head) != MR_RAM_EOS || s.tail_head[8] != MR_SEC_FOOTER)
			return snap_fail(
				s.err, -EBADMSG,
				"the raw device-state tail does not start with the RAM EOS "
				"word and footer");
		s.ram_id = mr_get_be32(s.tail_head + 9);
		if (s.ram_id == 0)
			return snap_fail(s.err, -EBADMSG, "the raw tail names RAM section id 0");
	}

	/* Start from the offset, as QEMU does: nothing stale may survive past it. */
	if (fstat(args->fd, &fst) == 0 && S_ISREG(fst.st_mode) &&
	    (uint64_t)fst.st_size > args->offset && ftruncate(args->fd, (off_t)args->offset) < 0)
		return snap_fail(s.err, -errno, "truncating the output to %llu bytes: %s",
				 (unsigned long long)args->offset, strerror(errno));

	s.c.blocks = calloc(args->n_blocks, sizeof(*s.c.blocks));
	s.dh = XXH3_createState();
	r = s.c.blocks && s.dh ? mr_trailer_builder_new(args->offset, 0, &s.c.tb) : -ENOMEM;
	if (r) {
		snap_fail(s.err, r, "out of memory");
		goto out;
	}
	XXH3_64bits_reset(s.dh);
	s.c.chunk_size = mr_trailer_builder_chunk_size(s.c.tb);

	r = write_head(&s);
	if (!r)
		r = write_pages(&s, t0);
	if (!r)
		r = write_bitmaps(&s);
	if (!r)
		r = write_tail(&s);
	if (!r)
		r = sync_out(&s, "the stream");
	if (!r)
		r = write_trailer(&s);
	if (!r)
		r = sync_out(&s, "the completion record");
	if (r)
		goto out;

	st.total_bytes = s.total;
	st.normal_pages = atomic_load(&s.c.normal_pages);
	st.zero_pages = s.total / MR_PAGE_SIZE - st.normal_pages;
	st.page_bytes = st.normal_pages * MR_PAGE_SIZE;
	st.stream_bytes = s.meta;
	st.devstate_bytes = s.devstate_len;
	st.requests = atomic_load(&s.pool.requests);
	st.seconds = snap_now() - t0;
	st.engine = s.pool.ops->name;
	st.engine_fallback = s.engine_fallback;
	st.direct = s.c.page_fd == args->direct_fd && args->direct_fd >= 0;
	st.direct_fell_back = atomic_load(&s.pool.fell_back);
	st.jobs = s.pool.jobs;
	if (ret_stats)
		*ret_stats = st;
out:
	for (size_t i = 0; s.c.blocks && i < args->n_blocks; i++)
		free(s.c.blocks[i].bitmap);
	free(s.c.blocks);
	free(s.c.units);
	mr_trailer_builder_free(s.c.tb);
	XXH3_freeState(s.dh);
	mr_buf_free(&s.b);
	return r;
}
