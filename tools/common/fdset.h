/* SPDX-License-Identifier: MIT */
/*
 * fd sets with QEMU's semantics: the process-wide registry and QEMU's -add-fd syntax.
 * Sets are filled over a UNIX socket by fdpass.h and opened as /dev/fdset/N by
 * fdopen.h. These are the tools' modules, not the library's API.
 */
#ifndef SNAP_TOOLS_FDSET_H
#define SNAP_TOOLS_FDSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Conventions for the whole module: functions return 0 (or a count) on success and
 * -errno on failure. errbuf (may be NULL) receives a one-line message, lower case,
 * without a trailing period, and is written only on failure; a message that does
 * not fit ends in "...". Every descriptor the module creates is close-on-exec. The
 * registry is process-wide and protected by a mutex.
 */

/*
 * Parses QEMU's -add-fd syntax "fd=F,set=N[,opaque=STR]" (decimal numbers, keys in
 * any order, each once; ",," in opaque stands for a comma). F must be >= 3, open,
 * and not close-on-exec: an inherited descriptor, as QEMU demands. The registry
 * takes a close-on-exec dup of F and then closes F, as QEMU does.
 * -EINVAL for bad syntax, -EBADF if F is not open (or is an O_PATH descriptor),
 * -EBUSY if F is close-on-exec (already in use here, e.g. given twice).
 */
int snap_fdset_add_arg(const char *arg, char *errbuf, size_t errlen);

/*
 * Adds fd to set set_id (< 0: the lowest id no set uses, as QMP add-fd without
 * fdset-id). On success the registry owns fd (FD_CLOEXEC is set on it) and
 * *ret_set_id (may be NULL) is the set used; on failure the caller still owns fd.
 * opaque may be NULL; it is copied. -EBADF if fd is not open or is O_PATH, -EEXIST
 * if fd is already in the registry, -EINVAL if opaque has control characters.
 */
int snap_fdset_add_fd(int64_t set_id, int fd, const char *opaque, int64_t *ret_set_id, char *errbuf,
		      size_t errlen);

struct snap_fdset_entry {
	int64_t set_id;
	int fd;		    /* the registry's descriptor: do not close */
	int flags;	    /* F_GETFL at query time, -1 if that failed */
	const char *opaque; /* NULL if none */
};

/*
 * Snapshot of the registry (QEMU's query-fdsets): sets by ascending id, each set's
 * descriptors newest first, which is selection order. The caller frees
 * *ret_entries (one allocation, opaque strings included) with free(); it is NULL
 * when *ret_n is 0. -ENOMEM.
 */
int snap_fdset_query(struct snap_fdset_entry **ret_entries, size_t *ret_n);

/*
 * Writes a one-line summary of every set ("set 1: fd 7 O_WRONLY without O_DIRECT
 * opaque \"x\"; ...", or "no fd sets") to buf. Returns the number of descriptors
 * held; never fails.
 */
int snap_fdset_describe(char *buf, size_t len);

/* Closes every descriptor and forgets every set (for tests and exit). */
void snap_fdset_clear(void);

#endif
