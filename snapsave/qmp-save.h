/* SPDX-License-Identifier: MIT */
/*
 * snapsave --qmp: saves a running or paused QEMU through its QMP monitor
 * (docs/snapsave.md, "Saving a VM over QMP").
 */
#ifndef SNAP_QMP_SAVE_H
#define SNAP_QMP_SAVE_H

#include "cli.h"

#include <stdbool.h>

struct qmp_save_args {
	const char *qmp;    /* UNIX socket path or fd:N */
	const char *output; /* as -o */
	bool resume;	    /* let the guest run on after the file is durable */
	bool quit;	    /* end QEMU after the file is durable */
	const struct cli_common *cc;
};

/*
 * Completes a from the parsed options (output, the shared options) and checks
 * they fit --qmp: 0, or 2 after a usage error line.
 */
int qmp_save_check_args(struct qmp_save_args *a, const char *output, size_t n_ram,
			const char *machine, const struct cli_common *cc);

/* Runs the whole flow; prints its errors. Returns the exit status (0 or 1). */
int qmp_save(const struct qmp_save_args *a);

#endif
