/* SPDX-License-Identifier: MIT */
/*
 * Opening what a tool's file argument names: a path, "fd:N" (an inherited
 * descriptor) or "/dev/fdset/N" (a descriptor of an fd set, fdset.h), with
 * QEMU's rules; and the second (O_DIRECT) descriptor on a file already open.
 * Conventions as in fdset.h.
 */
#ifndef SNAP_TOOLS_FDOPEN_H
#define SNAP_TOOLS_FDOPEN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

/* Do x and y (from stat, fstat or fstatat) describe the same file? */
static inline bool snap_same_file(const struct stat *x, const struct stat *y)
{
	return x->st_dev == y->st_dev && x->st_ino == y->st_ino;
}

/* The name an fd set is opened by: SNAP_FDSET_PREFIX "N", never a file. */
#define SNAP_FDSET_PREFIX "/dev/fdset/"

/* True if spec (may be NULL) starts with SNAP_FDSET_PREFIX. */
bool snap_io_is_fdset_spec(const char *spec);

/*
 * True if spec names a descriptor (fd:N or /dev/fdset/N, well formed or not) rather
 * than a path, so the caller cannot create a temporary file and rename it.
 */
bool snap_io_is_fd_spec(const char *spec);

/*
 * Opens spec with open(2) flags; the result is always close-on-exec and the caller
 * owns *ret_fd.
 *  - a path: open(spec, flags | O_CLOEXEC, mode).
 *  - "fd:N": a dup of N, which must be open for the access mode asked (O_RDWR
 *    serves either) and agree on O_DIRECT. N stays open.
 *  - "/dev/fdset/N": never opened as a path. Set N's descriptors are walked newest
 *    first; the first whose F_GETFL matches flags exactly on access mode and on
 *    O_DIRECT is dup'ed (so an O_RDWR one never serves O_WRONLY).
 * For both descriptor forms, as QEMU does: O_SYNC must agree (-EINVAL), then F_SETFL
 * applies the settable flags asked for (O_APPEND, O_NONBLOCK, O_NOATIME, O_ASYNC,
 * O_DIRECT) to the dup, which shares them with the original (so O_APPEND is
 * cleared unless asked for), and O_TRUNC or O_CREAT|O_EXCL truncates the file.
 * mode is ignored for them. Errors: -EINVAL (malformed spec), -EBADF (fd:N not
 * open), -ENOENT (no set N; the message lists the sets), -EACCES (no descriptor
 * matches; the message lists the set's descriptors and what was needed), or
 * open(2)'s error. errbuf never repeats spec: the caller names it.
 */
int snap_io_open(const char *spec, int flags, mode_t mode, int *ret_fd, char *errbuf,
		 size_t errlen);

/*
 * Opens a second descriptor ("twin") on the file fd is open on, with other flags (an
 * O_DIRECT twin: O_DIRECT belongs to an open file description):
 *  - spec "/dev/fdset/N": the set's descriptor matching flags, as snap_io_open();
 *  - spec "fd:N": -EINVAL, one descriptor cannot have a twin;
 *  - otherwise (a path, spec may be NULL): /proc/self/fd/FD is reopened, so no name
 *    is looked up again; only without /proc, openat(dir_fd, name, flags), with
 *    O_NOFOLLOW if nofollow.
 * Whatever the route, the twin must be the same file as fd (st_dev and st_ino), else
 * -EXDEV and a message. Other errors are open(2)'s or snap_io_open()'s.
 */
int snap_io_open_twin(int fd, const char *spec, int dir_fd, const char *name, bool nofollow,
		      int flags, int *ret_fd, char *errbuf, size_t errlen);

#endif
