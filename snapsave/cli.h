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

/* Formats bytes as "1.5 GiB". */
const char *cli_human(uint64_t bytes, char *buf, size_t len);

#endif
