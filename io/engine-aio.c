// SPDX-License-Identifier: MIT
/*
 * The "aio" engine: Linux native AIO through libaio. Only O_DIRECT transfers
 * are asynchronous; on a buffered fd io_submit() does the I/O before returning.
 */
#include "engine.h"
#include "engine-internal.h"

#include <assert.h>
#include <errno.h>
#include <libaio.h>
#include <stdlib.h>
#include <string.h>

struct aio_priv {
	io_context_t ctx;
	struct iocb *iocbs; /* depth control blocks */
	struct iocb **free; /* unused ones */
	unsigned n_free;
	struct iocb **pending; /* prepared, not yet taken by io_submit */
	unsigned n_pending;
	struct snap_io_req **refused; /* rejected by io_submit; handed out by reap */
	unsigned n_refused;
	struct io_event *events;
	unsigned in_kernel; /* submitted and not yet reaped */
};

static void aio_cleanup(struct snap_io_engine *e)
{
	struct aio_priv *p = e->priv;

	if (!p)
		return;
	/* io_destroy() waits for what is still in flight, so buffers are safe afterwards. */
	if (p->ctx)
		io_destroy(p->ctx);
	free(p->iocbs);
	free(p->free);
	free(p->pending);
	free(p->refused);
	free(p->events);
	free(p);
	e->priv = NULL;
}

static int aio_init(struct snap_io_engine *e)
{
	struct aio_priv *p;
	unsigned n = e->depth;
	int r;

	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	e->priv = p;
	p->iocbs = calloc(n, sizeof(*p->iocbs));
	p->free = calloc(n, sizeof(*p->free));
	p->pending = calloc(n, sizeof(*p->pending));
	p->refused = calloc(n, sizeof(*p->refused));
	p->events = calloc(n, sizeof(*p->events));
	if (!p->iocbs || !p->free || !p->pending || !p->refused || !p->events)
		return -ENOMEM; /* the core calls aio_cleanup() */
	for (unsigned i = 0; i < n; i++)
		p->free[i] = &p->iocbs[i];
	p->n_free = n;
	/* -EAGAIN past fs.aio-max-nr, -ENOSYS without CONFIG_AIO: caller falls back. */
	r = io_setup((int)n, &p->ctx);
	if (r < 0) {
		p->ctx = 0;
		return r;
	}
	return 0;
}

static int aio_queue(struct snap_io_engine *e, struct snap_io_req *r)
{
	struct aio_priv *p = e->priv;
	size_t len = r->len > SNAP_IO_MAX_LEN ? SNAP_IO_MAX_LEN : r->len;
	struct iocb *cb;

	/* The core never has more than depth requests in flight. */
	assert(p->n_free);
	cb = p->free[--p->n_free];
	if (r->write)
		io_prep_pwrite(cb, r->fd, r->buf, len, (long long)r->off);
	else
		io_prep_pread(cb, r->fd, r->buf, len, (long long)r->off);
	cb->data = r;
	p->pending[p->n_pending++] = cb;
	return SNAP_IO_Q_QUEUED;
}

/*
 * Hands the pending control blocks to the kernel. io_submit() stops at the
 * first one it rejects: that one completes with the error (so the core can
 * fall back or record it) and submission goes on with the rest. On -EAGAIN
 * the remainder waits for the next commit or reap.
 */
static void submit_pending(struct aio_priv *p)
{
	unsigned sent = 0;

	while (sent < p->n_pending) {
		int ret = io_submit(p->ctx, (long)(p->n_pending - sent), p->pending + sent);

		if (ret > 0) {
			sent += (unsigned)ret;
			p->in_kernel += (unsigned)ret;
		} else if (ret == -EINTR) {
			continue;
		} else if (ret == -EAGAIN || ret == 0) {
			break;
		} else {
			struct iocb *cb = p->pending[sent++];
			struct snap_io_req *r = cb->data;

			r->res = ret;
			p->refused[p->n_refused++] = r;
			p->free[p->n_free++] = cb;
		}
	}
	memmove(p->pending, p->pending + sent, (p->n_pending - sent) * sizeof(*p->pending));
	p->n_pending -= sent;
}

static int aio_commit(struct snap_io_engine *e)
{
	submit_pending(e->priv);
	return 0;
}

static int aio_reap(struct snap_io_engine *e, unsigned min, struct snap_io_req **done, unsigned max)
{
	struct aio_priv *p = e->priv;
	unsigned n = 0, want, nr;
	int ret;

	if (p->n_pending)
		submit_pending(p);
	while (p->n_refused && n < max)
		done[n++] = p->refused[--p->n_refused];
	if (n >= min || n == max)
		return (int)n;
	if (!p->in_kernel)
		/* Nothing to wait for: io_submit() keeps refusing with EAGAIN. */
		return p->n_pending ? -EAGAIN : (int)n;
	want = min - n < p->in_kernel ? min - n : p->in_kernel;
	nr = max - n < p->in_kernel ? max - n : p->in_kernel;
	ret = io_getevents(p->ctx, (long)want, (long)nr, p->events, NULL);
	if (ret < 0)
		return n ? (int)n : ret;
	for (int i = 0; i < ret; i++) {
		struct iocb *cb = p->events[i].obj;

		((struct snap_io_req *)cb->data)->res = (long)p->events[i].res;
		done[n++] = cb->data;
		p->free[p->n_free++] = cb;
	}
	p->in_kernel -= (unsigned)ret;
	return (int)n;
}

const struct snap_io_ops snap_io_aio_ops = {
	.name = "aio",
	.flags = SNAP_IO_F_ASYNC | SNAP_IO_F_DIRECT_ONLY,
	.init = aio_init,
	.queue = aio_queue,
	.commit = aio_commit,
	.reap = aio_reap,
	.cleanup = aio_cleanup,
};
