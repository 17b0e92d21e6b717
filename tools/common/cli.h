/* SPDX-License-Identifier: MIT */
/* Helpers shared by the snapsave and snaprestore command lines: messages, progress, JSON. */
#ifndef SNAP_CLI_H
#define SNAP_CLI_H

#include "ramsrc.h"
#include "snapmr.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

extern const char *cli_prog;

/* Prints "prog: message" on stderr, once per failure. */
void cli_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "prog: note: message" on stderr. */
void cli_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Options both tools take; each tool numbers its own from CLI_OPT_LOCAL. */
enum cli_opt {
	CLI_OPT_DIRECT = 256,
	CLI_OPT_IO,
	CLI_OPT_QD,
	CLI_OPT_MAXIO,
	CLI_OPT_PROGRESS,
	CLI_OPT_JSON,
	CLI_OPT_OFFSET,
	CLI_OPT_ADD_FD,
	CLI_OPT_FD_SOCKET,
	CLI_OPT_RAW,
	CLI_OPT_LOCAL,
};

#define CLI_COMMON_LONG_OPTS                                                  \
	{ "jobs", required_argument, NULL, 'j' },                             \
		{ "direct", required_argument, NULL, CLI_OPT_DIRECT },        \
		{ "io", required_argument, NULL, CLI_OPT_IO },                \
		{ "queue-depth", required_argument, NULL, CLI_OPT_QD },       \
		{ "max-io-size", required_argument, NULL, CLI_OPT_MAXIO },    \
		{ "progress", optional_argument, NULL, CLI_OPT_PROGRESS },    \
		{ "json", no_argument, NULL, CLI_OPT_JSON },                  \
		{ "offset", required_argument, NULL, CLI_OPT_OFFSET },        \
		{ "add-fd", required_argument, NULL, CLI_OPT_ADD_FD },        \
		{ "fd-socket", required_argument, NULL, CLI_OPT_FD_SOCKET },  \
		{ "device-state", required_argument, NULL, 'd' },             \
		{ "device-state-raw", required_argument, NULL, CLI_OPT_RAW }, \
		{ "help", no_argument, NULL, 'h' },                           \
	{                                                                     \
		"version", no_argument, NULL, 'V'                             \
	}

/* What the shared options set. */
struct cli_common {
	struct snap_opts opts;
	bool json;
	const char *fd_socket;
	uint64_t offset;
	bool has_offset;
	const char *devstate; /* -d or --device-state-raw argument */
	bool devstate_raw;
	bool done; /* --help or --version was printed: exit 0 */
};

/*
 * The CLI helpers return 0 (or a count) or -errno and print their one error
 * line themselves; only main() turns results into exit codes (0, 1 failure,
 * 2 usage).
 *
 * Handles option c if both tools share it: returns 1 when handled, 0 when it
 * is the tool's own, -errno after printing a usage error. --help and --version
 * print (usage() prints the tool's help) and set cc->done.
 */
int cli_common_option(int c, char **argv, struct cli_common *cc, void (*usage)(FILE *));

/*
 * After the options: what the environment decides (SNAPMR_IO_ENGINE, the
 * engine tried first when --io is not given) and the checks that need several
 * options. 0, or -EINVAL after printing a usage error.
 */
int cli_common_finish(struct cli_common *cc);

/* The option that gets past a library error, as " (try ...)", or "". */
const char *cli_remedy(const struct snap_err *e);

/* Progress callback: bytes done/total, MiB/s and ETA on one stderr line. */
void cli_progress(void *arg, const struct snap_progress *p);
void cli_progress_end(void);
/* --progress=json was given. */
bool cli_progress_is_json(void);

/* Prints a JSON string literal. */
void cli_json_str(FILE *f, const char *s);
/*
 * First thing in main(): a closed stdin, stdout or stderr gets /dev/null
 * opened the wrong way round, so no file the tool opens takes its number and
 * a write to a closed stdout still fails.
 */
void cli_reserve_std_fds(void);
/*
 * Flushes stdout; if that or any earlier write to it failed (full disk,
 * closed descriptor, reader gone), prints "prog: stdout: why" once and
 * returns -errno. A tool that printed results must not exit 0 then.
 */
int cli_stdout_flush(void);
/* cli_stdout_flush(), then fclose(stdout) checked too: the last call before exit. */
int cli_stdout_close(void);
/* Prints statistics as one JSON object, query-migrate style. */
void cli_print_stats_json(FILE *f, const char *status, const struct snap_stats *st);

/*
 * Installs SIGINT/SIGTERM/SIGHUP handlers that remove the save's temporary
 * file and the files given to cli_remove_on_abort() (files a restore created).
 */
void cli_install_signal_cleanup(void);

/*
 * SIGBUS inside guest memory (a backing file cut short, failed storage):
 * cli_install_fault_handler() makes it one error line naming the block,
 * ending with what (e.g. "the save was abandoned"), removes the save's
 * temporary file and the files given to cli_remove_on_abort(), and exits 1.
 * cli_watch_memory() registers each block's mapping; names must outlive the
 * run.
 */
void cli_install_fault_handler(const char *what);
void cli_watch_memory(const char *name, const void *base, size_t len);
/*
 * A file this run created (its O_CREAT|O_EXCL open succeeded): name inside the
 * directory dirfd (open until the run ends), st its fstat. Failure, a signal
 * or a fault removes it with unlinkat(), and only while the name still holds
 * that inode. 0, or -ENOSPC (too many, or name longer than NAME_MAX).
 */
int cli_remove_on_abort(int dirfd, const char *name, const struct stat *st);
/* Removes the cli_remove_on_abort() files now (a run that failed); async-signal-safe. */
void cli_remove_aborted(void);
/* Before the mappings go: their addresses may be reused. */
void cli_forget_memory(void);

/* --add-fd fd=F,set=N[,opaque=S]: 0, or -errno after printing the error. */
int cli_add_fd(const char *arg);
/* --fd-socket PATH|fd:N: receives descriptors until "start"; 0 or -errno after printing. */
int cli_fd_socket_start(const char *spec);
/*
 * Sends the result line to the --fd-socket peer (if any) and closes it:
 * the statistics on success, the last error message otherwise.
 */
void cli_fd_socket_finish(bool ok, const struct snap_stats *st);

#define CLI_MAX_BLOCKS 256

/*
 * --ram NAME=WHERE[,size=N][,offset=N]: appends to ram[*n] (capacity
 * CLI_MAX_BLOCKS); 0, or -errno after printing the error. The caller clears
 * the first *n specs.
 */
int cli_add_ram(struct snap_ram_spec *ram, size_t *n, const char *arg);

/* Formats bytes as "1.5 GiB". */
const char *cli_human(uint64_t bytes, char *buf, size_t len);

#endif
