/* SPDX-License-Identifier: MIT */
/*
 * I/O engines: one ops struct per engine (threads/psync, io_uring, libaio),
 * chosen by name from a static table. The core here owns the request slots,
 * completes short transfers, retries EINTR/EAGAIN and falls back from an
 * O_DIRECT descriptor to a buffered one on EINVAL, so engines only move
 * bytes. One engine instance belongs to one thread.
 */
#ifndef SNAP_IO_ENGINE_H
#define SNAP_IO_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct snap_io_req {
	int fd;
	int alt_fd; /* buffered fd to retry on if `fd` (O_DIRECT) refuses with EINVAL, or -1 */
	bool write;
	uint8_t *buf;
	uint64_t off;
	size_t len; /* bytes still to transfer */
	long res;   /* set by the engine: bytes moved or -errno */
	void *cookie;
	/* private to the core */
	uint8_t *orig_buf;
	uint64_t orig_off;
	size_t orig_len;
	unsigned slot;
};

/* Engine capability flags. */
#define SNAP_IO_F_ASYNC	      0x1u /* queue() only queues; completions come from reap() */
#define SNAP_IO_F_DIRECT_ONLY 0x2u /* asynchronous only with O_DIRECT (libaio) */

/* Return values of ops->queue. */
#define SNAP_IO_Q_QUEUED    0
#define SNAP_IO_Q_COMPLETED 1

struct snap_io_engine;

struct snap_io_ops {
	const char *name;
	unsigned flags;
	/* Sets up e->priv for e->depth requests in flight. -errno on failure. */
	int (*init)(struct snap_io_engine *e);
	/* Queues r (Q_QUEUED) or performs it at once with r->res set (Q_COMPLETED); -errno. */
	int (*queue)(struct snap_io_engine *e, struct snap_io_req *r);
	/* Submits what queue() collected. Optional. -errno. */
	int (*commit)(struct snap_io_engine *e);
	/* Waits for at least `min` completions, stores up to `max` in done[]; count or -errno. */
	int (*reap)(struct snap_io_engine *e, unsigned min, struct snap_io_req **done,
		    unsigned max);
	/* Frees e->priv; must accept a half-initialised engine. */
	void (*cleanup)(struct snap_io_engine *e);
};

/* Called for every request that completed in full (res == bytes), in the engine's thread. */
typedef void (*snap_io_done_fn)(void *arg, const struct snap_io_req *r);

struct snap_io_engine {
	const struct snap_io_ops *ops;
	void *priv;
	unsigned depth;
	/* private to the core */
	struct snap_io_req *slots;
	unsigned *free_slots;
	unsigned n_free;
	unsigned inflight;
	unsigned queued; /* queued but not committed */
	snap_io_done_fn done;
	void *done_arg;
	int err;	     /* first error, sticky */
	void *err_cookie;    /* the cookie of the request that failed first, if one did */
	bool fell_back;	     /* an O_DIRECT request was retried on the buffered fd */
	uint64_t n_syscalls; /* submissions, for statistics */
};

/* The engine named `name`, or NULL if unknown or not compiled in. */
const struct snap_io_ops *snap_io_engine_find(const char *name);
/* Names of the compiled-in engines, NULL-terminated, in order of preference. */
const char *const *snap_io_engine_names(void);

/*
 * Creates an engine instance with `depth` request slots. On success the
 * caller owns *ret and frees it with snap_io_engine_free().
 */
int snap_io_engine_new(const struct snap_io_ops *ops, unsigned depth, snap_io_done_fn done,
		       void *done_arg, struct snap_io_engine **ret);
void snap_io_engine_free(struct snap_io_engine *e);

/*
 * Starts one transfer of len bytes; waits for a free slot if all are busy.
 * Returns 0 or the first error seen so far (-errno); after an error no new
 * I/O is started.
 */
int snap_io_rw(struct snap_io_engine *e, int fd, int alt_fd, bool write, void *buf, uint64_t off,
	       size_t len, void *cookie);
/* Waits for every transfer started so far. Returns 0 or the first error. */
int snap_io_drain(struct snap_io_engine *e);

/* Plain helpers for small sequential records, EINTR and short counts handled. */
int snap_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);
/* Returns bytes read (less than len only at end of file) or -errno. */
long snap_pread_full(int fd, void *buf, size_t len, uint64_t off);

#endif
