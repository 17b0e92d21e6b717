/* SPDX-License-Identifier: MIT */
/*
 * The output file of a save: a temporary name in the target's directory,
 * opened twice (buffered and O_DIRECT, as QEMU does, both checked to be the
 * one inode), renamed over the final name only after the data is durable. A descriptor output
 * (fd:N, /dev/fdset/N) is written in place; there the trailer's completion record is what tells a
 * finished file from a half-written one.
 */
#ifndef SNAP_OUTFILE_H
#define SNAP_OUTFILE_H

#include "snapmr.h"

#include <stdbool.h>
#include <stdint.h>

struct snap_outfile {
	char *final_path;    /* as given, for messages; NULL for a descriptor output */
	int dir_fd;	     /* the output directory, or -1: every name is relative to it */
	char *final_name;    /* in dir_fd */
	char *tmp_name;	     /* in dir_fd; owned; removed on abort if it is still ours */
	int fd;		     /* buffered, O_WRONLY */
	int direct_fd;	     /* O_DIRECT, or -1 */
	bool direct_refused; /* auto mode: the file system refused O_DIRECT */
	char direct_err[256];
	char **reaped; /* stale temporaries removed from dir_fd (names), for notes */
	size_t n_reaped;
};

/*
 * Opens the output named by spec (a path, fd:N or /dev/fdset/N). For a path
 * the directory must exist; it is opened once (symbolic links in spec are
 * followed then, and only then) and everything after works relative to it:
 * stale temporaries of the same name whose process is gone and which the
 * caller's user owns are removed (o->reaped names them), the temporary file
 * DIR/.NAME.snapmr-PID-XXXXXX is created (O_EXCL, O_NOFOLLOW, mode 0600), and
 * its O_DIRECT twin is reopened without a name lookup and checked to be the
 * same inode. With `offset` and a path, the first `offset` bytes of the
 * existing regular file NAME are carried over (a manager's header). A
 * descriptor output must be a regular file. Returns 0 or -errno with a
 * message in errbuf.
 */
int snap_outfile_open(struct snap_outfile *o, const char *spec, enum snap_direct direct,
		      uint64_t offset, char *errbuf, size_t errlen);

/*
 * Renames the temporary file over the final name (renameat in the directory)
 * and syncs the directory. Fails, never reporting success, unless the
 * temporary name holds the file written before the rename and the final name
 * holds it after.
 */
int snap_outfile_commit(struct snap_outfile *o, char *errbuf, size_t errlen);

/*
 * Closes descriptors and removes the temporary file if not committed (only if
 * its name still holds the file written; else the file is emptied, wherever
 * it went); NULL-safe.
 */
void snap_outfile_abort(struct snap_outfile *o);

/* Async-signal-safe: removes the temporary file of the output being written, as abort does. */
void snap_outfile_signal_cleanup(void);

#endif
