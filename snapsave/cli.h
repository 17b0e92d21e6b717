/* SPDX-License-Identifier: MIT */
/* Helpers shared by the snapsave and snaprestore command lines: messages, progress, JSON. */
#ifndef SNAP_CLI_H
#define SNAP_CLI_H

#include "snapmr.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

extern const char *cli_prog;

/* Prints "prog: message" on stderr, once per failure. */
void cli_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "prog: note: message" on stderr. */
void cli_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int cli_parse_direct(const char *s, enum snap_direct *ret);
int cli_parse_uint(const char *s, unsigned min, unsigned max, unsigned *ret);

/* Progress callback: bytes done/total, MiB/s and ETA on one stderr line. */
void cli_progress(void *arg, const struct snap_progress *p);
void cli_progress_end(void);

/* Prints a JSON string literal. */
void cli_json_str(FILE *f, const char *s);
/* Prints statistics as one JSON object, query-migrate style. */
void cli_print_stats_json(FILE *f, const char *status, const struct snap_stats *st);

/* Installs SIGINT/SIGTERM/SIGHUP handlers that remove the save's temporary file. */
void cli_install_signal_cleanup(void);

/* --add-fd fd=F,set=N[,opaque=S]: 0, or 2 after printing the error. */
int cli_add_fd(const char *arg);
/* --fd-socket PATH|fd:N: receives descriptors until "start"; 0 or 1 after printing. */
int cli_fd_socket_start(const char *spec);
/*
 * Sends the result line to the --fd-socket peer (if any) and closes it:
 * the statistics on success, the last error message otherwise.
 */
void cli_fd_socket_finish(bool ok, const struct snap_stats *st);

/* Formats bytes as "1.5 GiB". */
const char *cli_human(uint64_t bytes, char *buf, size_t len);

#endif
