// SPDX-License-Identifier: MIT
/*
 * The "uring" engine: one io_uring per engine instance. queue() fills SQEs,
 * commit() submits them in one io_uring_enter, reap() waits and drains CQEs.
 */
#include "engine.h"
#include "engine-internal.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>

#define FIXED_FILES 4 /* a save or restore uses two descriptors: O_DIRECT and buffered */

struct uring_priv {
	struct io_uring ring;
	unsigned pending; /* SQEs prepared and not yet reaped */
	bool fixed;	  /* the file table below is registered with the ring */
	int files[FIXED_FILES];
};

/*
 * Registered files spare the kernel a file table lookup and reference per
 * request. The table starts sparse (-1) and is filled as descriptors first
 * appear; when it is full or registration fails, requests use plain fds.
 */
static int fixed_index(struct uring_priv *p, int fd)
{
	if (!p->fixed)
		return -1;
	for (int i = 0; i < FIXED_FILES; i++) {
		if (p->files[i] == fd)
			return i;
		if (p->files[i] == -1) {
			if (io_uring_register_files_update(&p->ring, (unsigned)i, &fd, 1) != 1)
				return -1;
			p->files[i] = fd;
			return i;
		}
	}
	return -1;
}

/* Submission errors after which the SQEs stay in the ring and are sent again later. */
static bool transient(int ret)
{
	return ret == -EAGAIN || ret == -EBUSY || ret == -EINTR;
}

static int uring_init(struct snap_io_engine *e)
{
	struct io_uring_params params;
	struct uring_priv *p;
	int r;

	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	/*
	 * Completions are only looked at from reap(), so the kernel need not
	 * interrupt us to post them (COOP_TASKRUN), and one refused SQE must not
	 * hold back the rest of a batch (SUBMIT_ALL). Both need 5.19; older
	 * kernels answer EINVAL and get a plain ring.
	 */
	memset(&params, 0, sizeof(params));
	params.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL;
	r = io_uring_queue_init_params(e->depth, &p->ring, &params);
	if (r == -EINVAL)
		r = io_uring_queue_init(e->depth, &p->ring, 0);
	if (r < 0) {
		/* -ENOSYS, -EPERM (kernel.io_uring_disabled), -ENOMEM: caller falls back. */
		free(p);
		return r;
	}
	for (int i = 0; i < FIXED_FILES; i++)
		p->files[i] = -1;
	p->fixed = io_uring_register_files(&p->ring, p->files, FIXED_FILES) == 0;
	e->priv = p;
	return 0;
}

static int uring_queue(struct snap_io_engine *e, struct snap_io_req *r)
{
	struct uring_priv *p = e->priv;
	struct io_uring_sqe *sqe = io_uring_get_sqe(&p->ring);
	unsigned len = r->len > SNAP_IO_MAX_LEN ? SNAP_IO_MAX_LEN : (unsigned)r->len;

	if (!sqe) {
		/* Cannot happen while depth <= SQ size, but a full SQ ring is no reason to fail. */
		int ret = io_uring_submit(&p->ring);

		if (ret < 0 && !transient(ret))
			return ret;
		sqe = io_uring_get_sqe(&p->ring);
		if (!sqe)
			return -EBUSY;
	}
	int idx = fixed_index(p, r->fd);

	if (r->write)
		io_uring_prep_write(sqe, idx >= 0 ? idx : r->fd, r->buf, len, r->off);
	else
		io_uring_prep_read(sqe, idx >= 0 ? idx : r->fd, r->buf, len, r->off);
	if (idx >= 0)
		sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data(sqe, r);
	p->pending++;
	return SNAP_IO_Q_QUEUED;
}

static int uring_commit(struct snap_io_engine *e)
{
	struct uring_priv *p = e->priv;
	int ret = io_uring_submit(&p->ring);

	/* What the kernel did not take stays in the SQ ring; reap() submits it. */
	if (ret < 0 && !transient(ret))
		return ret;
	return 0;
}

/* Moves up to max ready completions into done[]. */
static unsigned take(struct uring_priv *p, struct snap_io_req **done, unsigned max)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;

	io_uring_for_each_cqe(&p->ring, head, cqe)
	{
		struct snap_io_req *r;

		if (n == max)
			break;
		r = io_uring_cqe_get_data(cqe);
		r->res = cqe->res;
		if (done)
			done[n] = r;
		n++;
	}
	io_uring_cq_advance(&p->ring, n);
	p->pending -= n;
	return n;
}

static int uring_reap(struct snap_io_engine *e, unsigned min, struct snap_io_req **done,
		      unsigned max)
{
	struct uring_priv *p = e->priv;

	if (min > max)
		min = max;
	/* submit_and_wait also sends SQEs an earlier commit left behind. */
	while (io_uring_cq_ready(&p->ring) < min) {
		int ret = io_uring_submit_and_wait(&p->ring, min);

		if (ret == -EINTR)
			return ret;
		if (ret < 0 && !transient(ret))
			return ret;
	}
	return (int)take(p, done, max);
}

static void uring_cleanup(struct snap_io_engine *e)
{
	struct uring_priv *p = e->priv;

	if (!p)
		return;
	/*
	 * After a failed drain requests may still be in flight. Closing the ring
	 * does not stop io-wq workers already copying into the caller's buffers,
	 * so wait for them while the kernel still answers.
	 */
	while (p->pending) {
		int ret = io_uring_submit_and_wait(&p->ring, 1);

		if (ret < 0 && ret != -EINTR)
			break;
		take(p, NULL, p->pending);
	}
	/*
	 * Drop the registered files now: the ring itself is torn down
	 * asynchronously after close, and until then it would keep an unlinked
	 * temporary file's blocks allocated (a save retried at once on a full
	 * file system would hit ENOSPC).
	 */
	if (p->fixed)
		io_uring_unregister_files(&p->ring);
	io_uring_queue_exit(&p->ring);
	free(p);
	e->priv = NULL;
}

const struct snap_io_ops snap_io_uring_ops = {
	.name = "uring",
	.flags = SNAP_IO_F_ASYNC,
	.init = uring_init,
	.queue = uring_queue,
	.commit = uring_commit,
	.reap = uring_reap,
	.cleanup = uring_cleanup,
};
