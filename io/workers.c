// SPDX-License-Identifier: MIT
/* Worker threads, engine choice and progress reporting for save and restore. */
#include "workers.h"

#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

int snap_fail(struct snap_err *err, int code, const char *fmt, ...)
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

double snap_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void snap_pool_fail(struct snap_pool *pool, int err)
{
	int zero = 0;

	atomic_compare_exchange_strong(&pool->err, &zero, err);
	atomic_store(&pool->stop, true);
}

/* Tries to start one instance of ops: io_uring may be compiled in yet disabled by sysctl. */
static int try_engine(struct snap_pool *pool, const struct snap_io_ops *ops)
{
	struct snap_io_engine *e;
	int r = snap_io_engine_new(ops, pool->depth ? pool->depth : 8, NULL, NULL, &e);

	if (r == 0)
		snap_io_engine_free(e);
	return r;
}

int snap_pool_pick_engine(struct snap_pool *pool, const char *name, const char *first, bool direct,
			  bool *ret_fallback, char *errbuf, size_t errlen)
{
	const char *const *names = snap_io_engine_names();
	const struct snap_io_ops *order[8];
	size_t n = 0;
	bool failed = false;
	int r;

	*ret_fallback = false;
	if (name) {
		const struct snap_io_ops *ops = snap_io_engine_find(name);

		if (!ops) {
			snprintf(errbuf, errlen, "unknown I/O engine '%s'", name);
			return -EINVAL;
		}
		r = try_engine(pool, ops);
		if (r) {
			snprintf(errbuf, errlen, "I/O engine '%s' cannot start here: %s", name,
				 strerror(-r));
			return r;
		}
		pool->ops = ops;
		return 0;
	}
	/* The default order, led by `first` when it names an engine. */
	if (first && snap_io_engine_find(first))
		order[n++] = snap_io_engine_find(first);
	for (size_t i = 0; names[i] && n < 8; i++)
		if (!first || strcmp(names[i], first))
			order[n++] = snap_io_engine_find(names[i]);
	for (size_t i = 0; i < n; i++) {
		/* libaio is asynchronous only with O_DIRECT: never the default without it. */
		if ((order[i]->flags & SNAP_IO_F_DIRECT_ONLY) && !direct)
			continue;
		r = try_engine(pool, order[i]);
		if (r == 0) {
			pool->ops = order[i];
			*ret_fallback = failed;
			return 0;
		}
		failed = true;
	}
	snprintf(errbuf, errlen, "no I/O engine can start here");
	return -ENOSYS;
}

unsigned snap_default_jobs(void)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	/*
	 * Two workers per CPU: a worker often waits (page faults, pread copies,
	 * a full queue), and another one keeps the device fed meanwhile. On 2
	 * CPUs, 3 GiB of data, medians of 3: restore 2.06 s with 4 workers
	 * against 2.25 s with 2, save 1.84 against 1.97 s; 8 workers saved
	 * slower (2.11 s).
	 */
	if (cpus < 1)
		cpus = 1;
	return cpus > SNAP_MAX_DEFAULT_JOBS / 2 ? SNAP_MAX_DEFAULT_JOBS : (unsigned)cpus * 2;
}

int snap_pool_setup(struct snap_pool *pool, const struct snap_opts *opts, int fd, int direct_fd,
		    int *ret_page_fd, int *ret_alt_fd, bool *ret_fallback, char *errbuf,
		    size_t errlen)
{
	bool direct = direct_fd >= 0 && opts->direct != SNAP_DIRECT_OFF;
	int r;

	pool->jobs = opts->jobs ? opts->jobs : snap_default_jobs();
	pool->max_io = opts->max_io ? opts->max_io : SNAP_DEFAULT_MAX_IO;
	if (pool->max_io < 4096 || pool->max_io % 4096) {
		snprintf(errbuf, errlen, "request size %zu is not a multiple of 4096",
			 pool->max_io);
		return -EINVAL;
	}
	r = snap_pool_pick_engine(pool, opts->engine, opts->engine_first, direct, ret_fallback,
				  errbuf, errlen);
	if (r)
		return r;
	pool->depth = opts->queue_depth
			      ? opts->queue_depth
			      : (pool->ops->flags & SNAP_IO_F_ASYNC ? SNAP_DEFAULT_DEPTH : 1);
	if ((pool->ops->flags & SNAP_IO_F_DIRECT_ONLY) && !direct) {
		snprintf(errbuf, errlen,
			 "I/O engine '%s' needs O_DIRECT, which is off or unavailable here",
			 pool->ops->name);
		return -EINVAL;
	}
	/* Page data goes through the O_DIRECT fd; auto mode may retry on the buffered one. */
	*ret_page_fd = direct ? direct_fd : fd;
	*ret_alt_fd = direct && opts->direct == SNAP_DIRECT_AUTO ? fd : -1;
	return 0;
}

struct thread_arg {
	struct snap_pool *pool;
	snap_worker_fn fn;
	void *arg;
};

static void *thread_main(void *p)
{
	struct thread_arg *ta = p;
	struct snap_pool *pool = ta->pool;
	struct snap_io_engine *e = NULL;
	int r;

	r = snap_io_engine_new(pool->ops, pool->depth, pool->done, ta->arg, &e);
	if (r == 0) {
		r = ta->fn(pool, ta->arg, e);
		int d = snap_io_drain(e);

		if (!r)
			r = d;
		if (r && e->err_cookie) {
			void *none = NULL;

			atomic_compare_exchange_strong(&pool->err_cookie, &none, e->err_cookie);
		}
		atomic_fetch_add(&pool->requests, e->n_syscalls);
		if (e->fell_back)
			atomic_store(&pool->fell_back, true);
		snap_io_engine_free(e);
	}
	if (r)
		snap_pool_fail(pool, r);
	atomic_fetch_add(&pool->finished, 1);
	return NULL;
}

int snap_pool_run(struct snap_pool *pool, snap_worker_fn fn, void *arg,
		  const struct snap_opts *opts, uint64_t total, double t0)
{
	struct thread_arg ta = { pool, fn, arg };
	pthread_t *th;
	unsigned started = 0;
	unsigned interval = opts && opts->progress_ms ? opts->progress_ms : 500;

	th = calloc(pool->jobs, sizeof(*th));
	if (!th)
		return -ENOMEM;
	for (unsigned i = 0; i < pool->jobs; i++) {
		int r = pthread_create(&th[i], NULL, thread_main, &ta);

		if (r) {
			snap_pool_fail(pool, -r);
			break;
		}
		started++;
	}
	if (opts && opts->progress) {
		/* Poll until every worker has finished its share. */
		for (;;) {
			struct snap_progress pr;
			uint64_t done = atomic_load(&pool->progress);

			pr.done = done;
			pr.total = total;
			pr.seconds = snap_now() - t0;
			opts->progress(opts->progress_arg, &pr);
			if (atomic_load(&pool->finished) == started)
				break;
			/*
			 * Short naps: sleeping the whole interval would hold the
			 * run up to 500 ms past the workers' end.
			 */
			for (unsigned ms = 0;
			     ms < interval && atomic_load(&pool->finished) != started; ms += 5)
				usleep(5000);
		}
	}
	for (unsigned i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	free(th);
	return atomic_load(&pool->err);
}

bool snap_block_shrank(const struct snap_block *b)
{
	struct stat st;

	return b->fd >= 0 && fstat(b->fd, &st) == 0 && S_ISREG(st.st_mode) &&
	       (uint64_t)st.st_size < b->fd_off + b->length;
}
