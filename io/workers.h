/* SPDX-License-Identifier: MIT */
/*
 * The worker pool shared by save and restore: N threads pull work units from
 * an atomic counter (so they all finish together), each with its own I/O
 * engine instance; the calling thread reports progress while they run.
 */
#ifndef SNAP_WORKERS_H
#define SNAP_WORKERS_H

#include "engine.h"
#include "snapmr.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct snap_pool {
	const struct snap_io_ops *ops;
	unsigned jobs;
	unsigned depth;
	size_t max_io;
	snap_io_done_fn done; /* per-request completion hook, or NULL */
	/* filled by the workers */
	atomic_uint_fast64_t progress; /* bytes processed */
	atomic_uint_fast64_t requests;
	atomic_bool fell_back;
	atomic_int err;
	void *_Atomic err_cookie; /* the cookie of the first failed request, if any */
	atomic_bool stop;	  /* set on the first error so others quit early */
	atomic_uint finished;	  /* workers that have returned */
};

/*
 * Called in each worker with its engine; returns 0 or -errno. Must check
 * pool->stop between units.
 */
typedef int (*snap_worker_fn)(struct snap_pool *pool, void *arg, struct snap_io_engine *e);

/*
 * Chooses the engine: `name`, or the first compiled-in engine, in the order
 * uring, aio, threads (led by the engine `first` names, if any: the tools
 * take it from the SNAPMR_IO_ENGINE environment variable), whose init works
 * here; aio only when `direct`,
 * since libaio is synchronous without O_DIRECT. Fills pool->ops;
 * *ret_fallback is true when a preferred engine failed to start. errbuf
 * names the problem.
 */
int snap_pool_pick_engine(struct snap_pool *pool, const char *name, const char *first, bool direct,
			  bool *ret_fallback, char *errbuf, size_t errlen);

#define SNAP_DEFAULT_MAX_IO   (1u << 20) /* bytes per request */
#define SNAP_MAX_DEFAULT_JOBS 16u

/* Workers when -j is not given: two per online CPU, at most SNAP_MAX_DEFAULT_JOBS. */
unsigned snap_default_jobs(void);
#define SNAP_DEFAULT_DEPTH 16u /* requests in flight per worker, async engines */

/*
 * Applies opts to the pool (jobs, request size, engine, depth) and chooses
 * the descriptor for page data: direct_fd when O_DIRECT is wanted and
 * available, with fd as the fallback in auto mode (*ret_alt_fd, else -1).
 */
int snap_pool_setup(struct snap_pool *pool, const struct snap_opts *opts, int fd, int direct_fd,
		    int *ret_page_fd, int *ret_alt_fd, bool *ret_fallback, char *errbuf,
		    size_t errlen);

/*
 * Runs fn in pool->jobs threads and reports progress every opts->progress_ms
 * (total = total bytes of work). Returns the first worker error, or 0.
 */
int snap_pool_run(struct snap_pool *pool, snap_worker_fn fn, void *arg,
		  const struct snap_opts *opts, uint64_t total, double t0);

/* Fills err (if not NULL) with code and the formatted message; returns code. */
int snap_fail(struct snap_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Monotonic seconds. */
double snap_now(void);

/*
 * Is b's backing file now shorter than the block (cut short by another
 * process while it was mapped)? Only regular files can tell.
 */
bool snap_block_shrank(const struct snap_block *b);

/* Records err as the pool's first error and asks the others to stop. */
void snap_pool_fail(struct snap_pool *pool, int err);

typedef uint64_t snap_v16 __attribute__((vector_size(16), aligned(16)));

/*
 * True if the 4 KiB page at p (page aligned) is all zero. Most data pages
 * differ in their first bytes; zero pages are read 256 bytes per check in
 * 16-byte vectors, which keeps the scan at memory speed. Inline: the save's
 * zero scan and the restore's clearing call it once per page.
 */
static inline bool snap_page_is_zero(const uint8_t *p)
{
	const snap_v16 *v = (const snap_v16 *)(const void *)p;

	if (((const uint64_t *)(const void *)p)[0])
		return false;
	for (size_t i = 0; i < 4096 / 16; i += 16) {
		snap_v16 acc = v[i] | v[i + 1] | v[i + 2] | v[i + 3] | v[i + 4] | v[i + 5] |
			       v[i + 6] | v[i + 7] | v[i + 8] | v[i + 9] | v[i + 10] | v[i + 11] |
			       v[i + 12] | v[i + 13] | v[i + 14] | v[i + 15];

		if (acc[0] | acc[1])
			return false;
	}
	return true;
}

#endif
