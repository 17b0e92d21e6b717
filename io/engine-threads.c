// SPDX-License-Identifier: MIT
/*
 * The "threads" engine: each worker thread issues blocking pwritev/preadv.
 * Parallelism comes from the worker pool, so requests complete at once.
 */
#include "engine.h"

#include <errno.h>
#include <sys/uio.h>

static int threads_init(struct snap_io_engine *e)
{
	(void)e;
	return 0;
}

static int threads_queue(struct snap_io_engine *e, struct snap_io_req *r)
{
	struct iovec iov = { .iov_base = r->buf, .iov_len = r->len };
	ssize_t n;

	(void)e;
	if (r->write)
		n = pwritev(r->fd, &iov, 1, (off_t)r->off);
	else
		n = preadv(r->fd, &iov, 1, (off_t)r->off);
	r->res = n < 0 ? -errno : n;
	return SNAP_IO_Q_COMPLETED;
}

static int threads_reap(struct snap_io_engine *e, unsigned min, struct snap_io_req **done,
			unsigned max)
{
	/* Nothing is ever left in flight. */
	(void)e;
	(void)min;
	(void)done;
	(void)max;
	return 0;
}

static void threads_cleanup(struct snap_io_engine *e)
{
	(void)e;
}

const struct snap_io_ops snap_io_threads_ops = {
	.name = "threads",
	.flags = 0,
	.init = threads_init,
	.queue = threads_queue,
	.reap = threads_reap,
	.cleanup = threads_cleanup,
};
