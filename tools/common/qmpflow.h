/* SPDX-License-Identifier: MIT */
/*
 * What snapsave --qmp and snaprestore --qmp share: connecting with the tools'
 * messages, migration capabilities and max-bandwidth set for one migration
 * and put back afterwards, a pipe handed to QEMU with getfd, waiting for the
 * migration's end, and the timed phases that --progress and --json report.
 */
#ifndef SNAP_QMPFLOW_H
#define SNAP_QMPFLOW_H

#include "qmp.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

/* Timeouts of QMP commands that answer at once, and of a whole migration. */
#define QF_CMD_MS     10000
#define QF_CONNECT_MS 5000
#define QF_MIGRATE_MS 600000

/* Connects to spec; on failure prints one line naming the cause and the fix. */
int qf_connect(const char *spec, struct qmp **ret_q);

#define QF_MAX_CAPS 8

/* Capabilities set for the migration, with the values they had. */
struct qf_caps {
	const char *name[QF_MAX_CAPS];
	bool old[QF_MAX_CAPS];
	size_t n;
	bool bandwidth_set;
	int64_t old_bandwidth;
};

/*
 * Turns x-ignore-shared on and what would change the stream (mapped-ram,
 * multifd, postcopy-ram, xbzrle, validate-uuid...) off where the QEMU has them,
 * and, with `bandwidth`, max-bandwidth to its maximum. Remembers the old values
 * in c. x-ignore-shared missing is -ENOTSUP (not printed: the caller names the
 * fix). Other failures print a line.
 */
int qf_caps_set(struct qmp *q, struct qf_caps *c, bool bandwidth);

/* Puts back what qf_caps_set() changed; 0 or -errno with a printed note. */
int qf_caps_restore(struct qmp *q, struct qf_caps *c);

/*
 * Makes a pipe and passes one end to QEMU as `fdname` (getfd). write_end
 * chooses which end QEMU gets; the other end is returned in *ret_fd.
 */
int qf_pipe_getfd(struct qmp *q, const char *fdname, bool qemu_writes, int *ret_fd);

/*
 * Polls query-migrate until the migration leaves its active states: 0 when
 * it completed, -EIO (message printed, with QEMU's error-desc) otherwise.
 */
int qf_wait_migration(struct qmp *q, const char *what);

/* Timed phases. */
#define QF_MAX_PHASES 8
struct qf_phases {
	const char *name[QF_MAX_PHASES];
	double ms[QF_MAX_PHASES];
	size_t n;
	double t0; /* start of the current phase */
	bool progress, json;
};

void qf_phases_init(struct qf_phases *p, bool progress, bool json);
/* Ends the current phase under `name` and starts the next one; reports it with --progress. */
void qf_phase(struct qf_phases *p, const char *name);
/* Prints `"phases": {...}` members into an open JSON object on f. */
void qf_phases_json(FILE *f, const struct qf_phases *p);

/*
 * memory-backend-memfd,share=on, which QEMU 7.2 leaves out of the
 * x-ignore-shared stream, is reached through QEMU's own descriptor: fills
 * path with /proc/PID/fd/N (PID from the socket's SO_PEERCRED) and *ret_st
 * with that memfd's identity, to be compared with what gets opened. QEMU
 * names every such memfd "memory-backend-memfd", so the backend's size picks
 * it out: a size two memfd backends (or descriptors) share, or that none
 * has, is refused with a printed line naming backend d of md[0..n_md).
 */
int qf_memfd_path(struct qmp *q, const struct qmp_memdev *md, size_t n_md,
		  const struct qmp_memdev *d, char *path, size_t len, struct stat *ret_st);

/* 0 when fd is the memfd qf_memfd_path() found, else -ESTALE with a printed line. */
int qf_memfd_check(const struct stat *want, int fd, const char *id);

/* memory-backend-memfd with share=on. */
bool qf_is_shared_memfd(const struct qmp_memdev *d);

/* "a.b.c" into buf. */
void qf_version_str(struct qmp *q, char *buf, size_t len);

#endif
