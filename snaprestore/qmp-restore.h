/* SPDX-License-Identifier: MIT */
/*
 * snaprestore --qmp: brings a file saved by snapsave --qmp back into a QEMU
 * started with -incoming defer (docs/snaprestore.md, "Restoring over QMP").
 */
#ifndef SNAP_QMP_RESTORE_H
#define SNAP_QMP_RESTORE_H

#include "cli.h"
#include "snapmr.h"

#include <stdbool.h>

struct qmp_restore_args {
	const char *qmp;  /* UNIX socket path or fd:N */
	const char *file; /* for messages */
	bool paused;	  /* keep the guest paused even if it ran when saved */
	const struct cli_common *cc;
};

/* Runs the flow on the inspected file f (fd, dfd as snap_restore takes them). Returns 0 or 1. */
int qmp_restore(const struct qmp_restore_args *a, int fd, int dfd, const struct snap_file *f);

#endif
