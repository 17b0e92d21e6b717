/* SPDX-License-Identifier: MIT */
/*
 * Cleanup attributes for the tools' locals, after systemd's fd-util.h: the
 * variable is released when it goes out of scope, on every return path;
 * TAKE_FD() hands a descriptor over and leaves -1 behind.
 */
#ifndef SNAP_TOOLS_CLEANUP_H
#define SNAP_TOOLS_CLEANUP_H

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

/* Closes *fd if it is >= 0, keeping errno (a failure path may still read it). */
static inline void snap_closep(int *fd)
{
	if (*fd >= 0) {
		int e = errno;

		close(*fd);
		errno = e;
	}
}

static inline void snap_freep(void *p)
{
	free(*(void **)p);
}

static inline int snap_take_fd(int *fd)
{
	int r = *fd;

	*fd = -1;
	return r;
}

#define _cleanup_close_ __attribute__((cleanup(snap_closep)))
#define _cleanup_free_	__attribute__((cleanup(snap_freep)))
/* The descriptor, now the caller's; the variable becomes -1. */
#define TAKE_FD(fd) snap_take_fd(&(fd))

#endif
