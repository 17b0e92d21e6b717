/* SPDX-License-Identifier: MIT */
/*
 * The output file of a save: a temporary name in the target's directory,
 * opened twice (buffered and O_DIRECT, as QEMU does), renamed over the final
 * path only after the data is durable. A descriptor output (fd:N,
 * /dev/fdset/N) is written in place; there the trailer's completion record is
 * what tells a finished file from a half-written one.
 */
#ifndef SNAP_OUTFILE_H
#define SNAP_OUTFILE_H

#include "snapmr.h"

#include <stdbool.h>
#include <stdint.h>

struct snap_outfile {
	char *final_path;    /* NULL for a descriptor output */
	char *tmp_path;	     /* owned; unlinked on abort */
	int fd;		     /* buffered, O_WRONLY */
	int direct_fd;	     /* O_DIRECT, or -1 */
	bool direct_refused; /* auto mode: the file system refused O_DIRECT */
	char direct_err[128];
};

/*
 * Opens the output named by spec (a path, fd:N or /dev/fdset/N). For a path
 * the directory must exist; a temporary file is created next to it. With
 * `offset` and a path, the first `offset` bytes of an existing file at the
 * path are carried over (a manager's header). Returns 0 or -errno with a
 * message in errbuf.
 */
int snap_outfile_open(struct snap_outfile *o, const char *spec, enum snap_direct direct,
		      uint64_t offset, char *errbuf, size_t errlen);

/* Renames the temporary file over the final path and syncs the directory. */
int snap_outfile_commit(struct snap_outfile *o, char *errbuf, size_t errlen);

/* Closes descriptors and removes the temporary file if not committed; NULL-safe. */
void snap_outfile_abort(struct snap_outfile *o);

/* Async-signal-safe: unlinks the temporary file of the output being written. */
void snap_outfile_signal_cleanup(void);

#endif
