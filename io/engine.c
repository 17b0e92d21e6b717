// SPDX-License-Identifier: MIT
/*
 * Engine core: request slots, short-transfer completion, EINTR/EAGAIN retry
 * and the O_DIRECT-to-buffered fallback, in one place for every engine.
 */
#include "engine.h"
#include "config.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>

extern const struct snap_io_ops snap_io_threads_ops;
#if HAVE_LIBURING
extern const struct snap_io_ops snap_io_uring_ops;
#endif
#if HAVE_LIBAIO
extern const struct snap_io_ops snap_io_aio_ops;
#endif

static const struct snap_io_ops *const engines[] = {
#if HAVE_LIBURING
	&snap_io_uring_ops,
#endif
#if HAVE_LIBAIO
	&snap_io_aio_ops,
#endif
	&snap_io_threads_ops,
};

#define N_ENGINES (sizeof(engines) / sizeof(engines[0]))

static const char *engine_names[N_ENGINES + 1];

const char *const *snap_io_engine_names(void)
{
	for (size_t i = 0; i < N_ENGINES; i++)
		engine_names[i] = engines[i]->name;
	return engine_names;
}

const struct snap_io_ops *snap_io_engine_find(const char *name)
{
	for (size_t i = 0; i < N_ENGINES; i++)
		if (!strcmp(engines[i]->name, name))
			return engines[i];
	return NULL;
}

static bool ops_valid(const struct snap_io_ops *ops)
{
	return ops && ops->name && ops->init && ops->queue && ops->reap && ops->cleanup;
}

int snap_io_engine_new(const struct snap_io_ops *ops, unsigned depth, snap_io_done_fn done,
		       void *done_arg, struct snap_io_engine **ret)
{
	struct snap_io_engine *e;
	int r;

	assert(ops_valid(ops));
	if (!depth)
		return -EINVAL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->ops = ops;
	e->depth = depth;
	e->done = done;
	e->done_arg = done_arg;
	e->slots = calloc(depth, sizeof(*e->slots));
	e->free_slots = calloc(depth, sizeof(*e->free_slots));
	if (!e->slots || !e->free_slots) {
		r = -ENOMEM;
		goto free_engine;
	}
	for (unsigned i = 0; i < depth; i++) {
		e->slots[i].slot = i;
		e->free_slots[i] = depth - 1 - i;
	}
	e->n_free = depth;
	r = ops->init(e);
	if (r < 0)
		goto free_engine;
	*ret = e;
	return 0;

free_engine:
	ops->cleanup(e);
	free(e->slots);
	free(e->free_slots);
	free(e);
	return r;
}

void snap_io_engine_free(struct snap_io_engine *e)
{
	if (!e)
		return;
	e->ops->cleanup(e);
	free(e->slots);
	free(e->free_slots);
	free(e);
}

static void set_err(struct snap_io_engine *e, int err)
{
	if (!e->err)
		e->err = err;
}

static void req_failed(struct snap_io_engine *e, struct snap_io_req *r, int err)
{
	if (!e->err)
		e->err_cookie = r->cookie;
	set_err(e, err);
}

static void release(struct snap_io_engine *e, struct snap_io_req *r)
{
	e->free_slots[e->n_free++] = r->slot;
}

/*
 * Handles one completion: finishes the request or prepares the rest of a
 * short transfer or a retry. Returns true if r must be queued again. Every
 * engine's completions pass through here.
 */
static bool complete(struct snap_io_engine *e, struct snap_io_req *r)
{
	long res = r->res;

	if (res == -EINTR || res == -EAGAIN)
		goto requeue;
	if (res == -EINVAL && r->alt_fd >= 0) {
		/* The file system refused O_DIRECT for this request: go buffered. */
		r->fd = r->alt_fd;
		r->alt_fd = -1;
		e->fell_back = true;
		goto requeue;
	}
	if (res < 0) {
		req_failed(e, r, (int)res);
		release(e, r);
		return false;
	}
	if (res == 0) {
		/* Reads past EOF and writes that make no progress are errors. */
		req_failed(e, r, r->write ? -EIO : -ENODATA);
		release(e, r);
		return false;
	}
	if ((size_t)res < r->len) {
		r->buf += res;
		r->off += (uint64_t)res;
		r->len -= (size_t)res;
		goto requeue;
	}
	if (e->done) {
		struct snap_io_req whole = *r;

		whole.buf = r->orig_buf;
		whole.off = r->orig_off;
		whole.len = r->orig_len;
		whole.res = (long)r->orig_len;
		e->done(e->done_arg, &whole);
	}
	release(e, r);
	return false;

requeue:
	if (e->err) {
		release(e, r);
		return false;
	}
	return true;
}

/* Hands r (counted in flight) to the engine; synchronous completions are processed here. */
static int queue_one(struct snap_io_engine *e, struct snap_io_req *r)
{
	for (;;) {
		int q;

		e->n_syscalls++;
		q = e->ops->queue(e, r);
		if (q < 0) {
			e->inflight--;
			set_err(e, q);
			release(e, r);
			return q;
		}
		if (q != SNAP_IO_Q_COMPLETED) {
			e->queued++;
			return 0;
		}
		e->inflight--;
		if (!complete(e, r))
			return 0;
		e->inflight++;
	}
}

static int commit(struct snap_io_engine *e)
{
	int r;

	if (!e->queued || !e->ops->commit)
		return 0;
	r = e->ops->commit(e);
	e->queued = 0;
	if (r < 0)
		set_err(e, r);
	return r;
}

/* Reaps at least `min` completions (bounded by what is in flight). */
static int reap(struct snap_io_engine *e, unsigned min)
{
	struct snap_io_req *done[64];
	int n;

	commit(e);
	if (min > e->inflight)
		min = e->inflight;
	if (!e->inflight)
		return 0;
	if (min > 64)
		min = 64;
	n = e->ops->reap(e, min, done, 64);
	if (n < 0) {
		if (n == -EINTR)
			return 0;
		set_err(e, n);
		return n;
	}
	for (int i = 0; i < n; i++) {
		e->inflight--;
		if (complete(e, done[i])) {
			e->inflight++;
			queue_one(e, done[i]);
		}
	}
	return n;
}

int snap_io_rw(struct snap_io_engine *e, int fd, int alt_fd, bool write, void *buf, uint64_t off,
	       size_t len, void *cookie)
{
	struct snap_io_req *r;

	while (!e->n_free && !e->err)
		if (reap(e, 1) < 0 && !e->n_free)
			break;
	if (e->err)
		return e->err;
	assert(e->n_free);
	r = &e->slots[e->free_slots[--e->n_free]];
	r->fd = fd;
	r->alt_fd = alt_fd;
	r->write = write;
	r->buf = r->orig_buf = buf;
	r->off = r->orig_off = off;
	r->len = r->orig_len = len;
	r->res = 0;
	r->cookie = cookie;
	e->inflight++;
	queue_one(e, r);
	/* Keep the batch small enough that the device never idles. */
	if (e->queued >= e->depth / 4 + 1)
		commit(e);
	return e->err;
}

int snap_io_drain(struct snap_io_engine *e)
{
	while (e->inflight) {
		/*
		 * reap() fails only when the engine can no longer wait: give up
		 * rather than spin; e->err says why and the engine's cleanup
		 * deals with what is still in flight.
		 */
		if (reap(e, e->inflight) < 0)
			break;
	}
	return e->err;
}

int snap_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

long snap_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	size_t got = 0;

	while (got < len) {
		ssize_t n = pread(fd, p + got, len - got, (off_t)(off + got));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (long)got;
}
