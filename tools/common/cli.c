// SPDX-License-Identifier: MIT
/* Messages, progress and JSON output shared by both command-line tools. */
#include "cli.h"
#include "config.h"
#include "engine.h"
#include "fdopen.h"
#include "fdpass.h"
#include "fdset.h"
#include "msg.h"
#include "ramsrc.h"
#include "outfile.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>

const char *cli_prog = "snapmr";
static bool progress_shown;
static bool progress_json; /* --progress=json: one JSON object per line */
static char last_error[1024];
static int fd_sock = -1;

/*
 * EFBIG from a write under a file size limit (ulimit -f; SIGXFSZ is ignored
 * so that the write fails instead of killing us): name the limit, which
 * "File too large" does not.
 */
static void add_limit_hint(char *msg, size_t cap)
{
	size_t n = strlen(msg);
	struct rlimit rl;

	if (!strstr(msg, strerror(EFBIG)) || getrlimit(RLIMIT_FSIZE, &rl) < 0 ||
	    rl.rlim_cur == RLIM_INFINITY)
		return;
	snprintf(msg + n, cap - n, " (the file size limit, ulimit -f, is %llu bytes)",
		 (unsigned long long)rl.rlim_cur);
}

void cli_err(const char *fmt, ...)
{
	va_list ap;

	cli_progress_end();
	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
	add_limit_hint(last_error, sizeof(last_error));
	fprintf(stderr, "%s: %s\n", cli_prog, last_error);
}

void cli_note(const char *fmt, ...)
{
	va_list ap;

	cli_progress_end();
	fprintf(stderr, "%s: note: ", cli_prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int parse_direct(const char *s, enum snap_direct *ret)
{
	if (!strcmp(s, "auto"))
		*ret = SNAP_DIRECT_AUTO;
	else if (!strcmp(s, "on"))
		*ret = SNAP_DIRECT_ON;
	else if (!strcmp(s, "off"))
		*ret = SNAP_DIRECT_OFF;
	else
		return -EINVAL;
	return 0;
}

static int parse_uint(const char *s, unsigned min, unsigned max, unsigned *ret)
{
	char *end;
	unsigned long v;

	if (!*s || *s == '-' || *s == '+')
		return -EINVAL;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -EINVAL;
	*ret = (unsigned)v;
	return 0;
}

/* The I/O options: 1 if c is one of them, 0 if not, -EINVAL after a usage error. */
static int io_option(int c, struct cli_common *cc)
{
	uint64_t v;

	switch (c) {
	case 'j':
		if (parse_uint(optarg, 1, 1024, &cc->opts.jobs)) {
			cli_err("--jobs: expected a number from 1 to 1024, got '%s'", optarg);
			return -EINVAL;
		}
		return 1;
	case CLI_OPT_DIRECT:
		if (parse_direct(optarg, &cc->opts.direct)) {
			cli_err("--direct: expected auto, on or off, got '%s'", optarg);
			return -EINVAL;
		}
		return 1;
	case CLI_OPT_IO:
		if (!snap_io_engine_find(optarg)) {
			cli_err("--io: unknown or unavailable engine '%s'", optarg);
			return -EINVAL;
		}
		cc->opts.engine = optarg;
		return 1;
	case CLI_OPT_QD:
		if (parse_uint(optarg, 1, 4096, &cc->opts.queue_depth)) {
			cli_err("--queue-depth: expected a number from 1 to 4096, got '%s'",
				optarg);
			return -EINVAL;
		}
		return 1;
	case CLI_OPT_MAXIO:
		if (snap_parse_size(optarg, &v) || v < 4096 || v % 4096 || v > (1u << 30)) {
			cli_err("--max-io-size: expected a multiple of 4096 up to 1G, got '%s'",
				optarg);
			return -EINVAL;
		}
		cc->opts.max_io = (size_t)v;
		return 1;
	default: return 0;
	}
}

/* getopt's own complaints, ':' (missing argument) and '?' (unknown option). */
static int getopt_error(int c, char **argv)
{
	if (c == ':')
		cli_err("option '%s' needs an argument (see '%s --help')", argv[optind - 1],
			cli_prog);
	/* A short option in a cluster has no argv slot of its own. */
	else if (optopt > 0 && optopt < 256 && strncmp(argv[optind - 1], "--", 2))
		cli_err("invalid option '-%c' (see '%s --help')", optopt, cli_prog);
	else
		cli_err("invalid option '%s' (see '%s --help')", argv[optind - 1], cli_prog);
	return -EINVAL;
}

int cli_common_option(int c, char **argv, struct cli_common *cc, void (*usage)(FILE *))
{
	int r = io_option(c, cc);

	if (r)
		return r;
	switch (c) {
	case CLI_OPT_PROGRESS:
		if (optarg && strcmp(optarg, "human") && strcmp(optarg, "json")) {
			cli_err("--progress: expected human or json, got '%s'", optarg);
			return -EINVAL;
		}
		progress_json = optarg && !strcmp(optarg, "json");
		cc->opts.progress = cli_progress;
		return 1;
	case CLI_OPT_JSON: cc->json = true; return 1;
	case CLI_OPT_OFFSET:
		if (snap_parse_size(optarg, &cc->offset) || cc->offset > (1ull << 62)) {
			cli_err("--offset: bad size '%s'", optarg);
			return -EINVAL;
		}
		cc->has_offset = true;
		return 1;
	case CLI_OPT_ADD_FD: r = cli_add_fd(optarg); return r < 0 ? r : 1;
	case CLI_OPT_FD_SOCKET:
		if (cc->fd_socket) {
			cli_err("--fd-socket: give it once");
			return -EINVAL;
		}
		cc->fd_socket = optarg;
		return 1;
	case 'd':
	case CLI_OPT_RAW:
		if (cc->devstate) {
			cli_err("--device-state and --device-state-raw: give one of them once");
			return -EINVAL;
		}
		cc->devstate = optarg;
		cc->devstate_raw = c == CLI_OPT_RAW;
		return 1;
	case 'h':
		usage(stdout);
		cc->done = true;
		return 1;
	case 'V':
		printf("%s %s\n", cli_prog, SNAPMR_VERSION);
		cc->done = true;
		return 1;
	case ':':
	case '?': return getopt_error(c, argv);
	default: return 0;
	}
}

int cli_common_finish(struct cli_common *cc)
{
	const struct snap_io_ops *ops =
		cc->opts.engine ? snap_io_engine_find(cc->opts.engine) : NULL;

	/* Process policy stays in the tools: the library reads no environment. */
	cc->opts.engine_first = getenv("SNAPMR_IO_ENGINE");
	if (ops && (ops->flags & SNAP_IO_F_DIRECT_ONLY) && cc->opts.direct == SNAP_DIRECT_OFF) {
		cli_err("--io %s needs O_DIRECT (use --direct on or another engine)", ops->name);
		return -EINVAL;
	}
	return 0;
}

int cli_add_ram(struct snap_ram_spec *ram, size_t *n, const char *arg)
{
	char ebuf[512];
	int r;

	if (*n == CLI_MAX_BLOCKS) {
		cli_err("--ram: at most %d blocks", CLI_MAX_BLOCKS);
		return -E2BIG;
	}
	r = snap_ram_spec_parse(arg, &ram[*n], ebuf, sizeof(ebuf));
	if (r < 0) {
		cli_err("--ram: %s", ebuf);
		return r;
	}
	(*n)++;
	for (size_t i = 0; i + 1 < *n; i++)
		if (!strcmp(ram[i].name, ram[*n - 1].name)) {
			cli_err("--ram: block '%s' given twice", ram[i].name);
			return -EEXIST;
		}
	return 0;
}

const char *cli_human(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)bytes;
	unsigned u = 0;

	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", v, units[u]);
	return buf;
}

void cli_progress(void *arg, const struct snap_progress *p)
{
	char a[32], b[32];
	double rate = p->seconds > 0 ? (double)p->done / p->seconds : 0;
	double eta = rate > 0 ? (double)(p->total - p->done) / rate : 0;

	(void)arg;
	if (progress_json) {
		/* query-migrate's words: a manager polls the same fields either way. */
		fprintf(stderr,
			"{\"status\": \"active\", \"total-time-ms\": %.0f, \"ram\": {\"total\": "
			"%llu, \"done\": %llu, \"remaining\": %llu}, \"mib-per-s\": %.1f, "
			"\"expected-ms\": %.0f}\n",
			p->seconds * 1000.0, (unsigned long long)p->total,
			(unsigned long long)p->done, (unsigned long long)(p->total - p->done),
			rate / 1048576.0, eta * 1000.0);
		fflush(stderr);
		return;
	}
	fprintf(stderr, "\r%s: %s / %s  %3.0f%%  %7.1f MiB/s  ETA %4.0fs ", cli_prog,
		cli_human(p->done, a, sizeof(a)), cli_human(p->total, b, sizeof(b)),
		p->total ? 100.0 * (double)p->done / (double)p->total : 100.0, rate / 1048576.0,
		eta);
	progress_shown = true;
}

bool cli_progress_is_json(void)
{
	return progress_json;
}

void cli_progress_end(void)
{
	if (progress_shown)
		fputc('\n', stderr);
	progress_shown = false;
}

void cli_json_str(FILE *f, const char *s)
{
	char esc[SNAP_JSON_ESCAPE_MAX];

	fputc('"', f);
	while (*s) {
		s += snap_json_escape(s, esc);
		fputs(esc, f);
	}
	fputc('"', f);
}

void cli_reserve_std_fds(void)
{
	/*
	 * A closed 0, 1 or 2 would be what the next open() returns: a block
	 * file or the device-state output would then receive printf's output.
	 * /dev/null opened the wrong way round takes the slot and fails every
	 * transfer there with EBADF, as the closed descriptor did.
	 */
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) < 0 && errno == EBADF &&
		    open("/dev/null", fd ? O_RDONLY : O_WRONLY) < 0)
			return;
}

static bool stdout_reported;

int cli_stdout_flush(void)
{
	bool failed = ferror(stdout);

	int r;

	if (stdout_reported)
		return -EIO;
	errno = 0;
	if (fflush(stdout) == 0 && !failed)
		return 0;
	r = errno ? -errno : -EIO;
	cli_err("stdout: %s", strerror(-r));
	stdout_reported = true;
	return r;
}

int cli_stdout_close(void)
{
	int r = cli_stdout_flush();

	/* EBADF: stdout was closed and nothing was written to it, which is fine. */
	if (fclose(stdout) != 0 && errno != EBADF && !r) {
		r = -errno;
		cli_err("stdout: %s", strerror(-r));
	}
	return r;
}

void cli_print_stats_json(FILE *f, const char *status, const struct snap_stats *st)
{
	double mibs = st->seconds > 0 ? (double)st->page_bytes / 1048576.0 / st->seconds : 0;

	fprintf(f,
		"{\"status\": \"%s\", \"total-time-ms\": %.0f, \"ram\": {\"total\": %llu, "
		"\"transferred\": %llu, \"normal\": %llu, \"normal-bytes\": %llu, "
		"\"duplicate\": %llu, \"mbps\": %.1f, \"mib-per-s\": %.1f}, "
		"\"device-state-bytes\": %llu, \"stream-bytes\": %llu, \"requests\": %llu, "
		"\"engine\": ",
		status, st->seconds * 1000.0, (unsigned long long)st->total_bytes,
		(unsigned long long)(st->page_bytes + st->stream_bytes),
		(unsigned long long)st->normal_pages, (unsigned long long)st->page_bytes,
		(unsigned long long)st->zero_pages, mibs * 8.388608, mibs,
		(unsigned long long)st->devstate_bytes, (unsigned long long)st->stream_bytes,
		(unsigned long long)st->requests);
	cli_json_str(f, st->engine ? st->engine : "");
	fprintf(f, ", \"jobs\": %u, \"direct-io\": %s, \"direct-io-fell-back\": %s}\n", st->jobs,
		st->direct ? "true" : "false", st->direct_fell_back ? "true" : "false");
}

/*
 * Guest memory is read and written through shared mappings. If a backing
 * file is cut short under us (or its storage fails), touching the lost range
 * raises SIGBUS: name the block and end like any other failure rather than
 * die with "Bus error". The handler makes only async-signal-safe calls.
 */
struct watched {
	const char *name;
	uintptr_t base;
	size_t len;
};

static struct watched watched[CLI_MAX_BLOCKS];
static volatile sig_atomic_t n_watched;
/* A file this run created: removed on failure while its name still holds its inode. */
struct created {
	int dirfd;
	dev_t dev;
	ino_t ino;
	char name[NAME_MAX + 1];
};

/* Every block file and the device-state output's temporary file. */
static struct created abort_remove[CLI_MAX_BLOCKS + 1];
static volatile sig_atomic_t n_abort_remove;
static const char *fault_what = "the run was abandoned";
static int fault_taken;

void cli_watch_memory(const char *name, const void *base, size_t len)
{
	if (n_watched < CLI_MAX_BLOCKS) {
		watched[n_watched] = (struct watched){ name, (uintptr_t)base, len };
		n_watched = n_watched + 1;
	}
}

int cli_remove_on_abort(int dirfd, const char *name, const struct stat *st)
{
	struct created *c;

	if (n_abort_remove == CLI_MAX_BLOCKS + 1 || strlen(name) > NAME_MAX)
		return -ENOSPC;
	c = &abort_remove[n_abort_remove];
	c->dirfd = dirfd;
	c->dev = st->st_dev;
	c->ino = st->st_ino;
	memcpy(c->name, name, strlen(name) + 1);
	/* Filled in before it counts: a signal handler may read it any time. */
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	n_abort_remove = n_abort_remove + 1;
	return 0;
}

void cli_forget_memory(void)
{
	n_watched = 0;
	n_abort_remove = 0;
}

/*
 * Async-signal-safe (fstatat and unlinkat are): a name someone replaced since
 * (a symlink, another file) is left alone, never what it points to.
 */
void cli_remove_aborted(void)
{
	for (int i = 0; i < n_abort_remove; i++) {
		const struct created *c = &abort_remove[i];
		struct stat st;

		if (fstatat(c->dirfd, c->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    st.st_dev == c->dev && st.st_ino == c->ino)
			unlinkat(c->dirfd, c->name, 0);
	}
}

static void put(char *buf, size_t *len, size_t cap, const char *s)
{
	while (*s && *len + 1 < cap)
		buf[(*len)++] = *s++;
}

static void put_hex(char *buf, size_t *len, size_t cap, uint64_t v)
{
	char tmp[19] = "0x";
	int n = 2;

	for (int shift = 60; shift >= 0; shift -= 4)
		if (v >> shift || shift == 0 || n > 2)
			tmp[n++] = "0123456789abcdef"[(v >> shift) & 15];
	tmp[n] = 0;
	put(buf, len, cap, tmp);
}

/* A JSON string body (without its quotes); snap_json_escape() is async-signal-safe. */
static void put_json(char *buf, size_t *len, size_t cap, const char *s)
{
	char esc[SNAP_JSON_ESCAPE_MAX];

	while (*s) {
		s += snap_json_escape(s, esc);
		/* Whole pieces only: a cut UTF-8 sequence would make the line invalid. */
		if (*len + strlen(esc) + 1 > cap)
			break;
		put(buf, len, cap, esc);
	}
}

static void write_all(int fd, const char *p, size_t len)
{
	while (len) {
		ssize_t n = write(fd, p, len);

		if (n <= 0 && errno != EINTR)
			return; /* nothing more can be done about it */
		if (n > 0) {
			p += n;
			len -= (size_t)n;
		}
	}
}

/*
 * The one line of a run that ends in a signal handler, on stderr and to a
 * manager on --fd-socket (as for any failure). Async-signal-safe.
 */
static void report_end(const char *body)
{
	char line[1024];
	size_t len = 0;

	if (progress_shown)
		put(line, &len, sizeof(line), "\n");
	put(line, &len, sizeof(line), cli_prog);
	put(line, &len, sizeof(line), ": ");
	put(line, &len, sizeof(line), body);
	put(line, &len, sizeof(line), "\n");
	write_all(STDERR_FILENO, line, len);
	if (fd_sock >= 0) {
		len = 0;
		put(line, &len, sizeof(line), "{\"status\": \"failed\", \"error\": \"");
		put_json(line, &len, sizeof(line), body);
		put(line, &len, sizeof(line), "\"}\n");
		write_all(fd_sock, line, len);
	}
}

/* One report, however many threads fault or take signals: the first one ends the process. */
static void take_the_end(void)
{
	if (__atomic_exchange_n(&fault_taken, 1, __ATOMIC_SEQ_CST))
		for (;;)
			pause();
}

static void on_fault(int sig, siginfo_t *si, void *uc)
{
	uintptr_t a = (uintptr_t)si->si_addr;
	char body[640];
	size_t n = 0;
	int i;

	(void)uc;
	for (i = 0; i < n_watched; i++)
		if (a - watched[i].base < watched[i].len)
			break;
	if (i == n_watched) { /* not guest memory: a real bug, keep the core dump */
		signal(sig, SIG_DFL);
		return;
	}
	take_the_end();
	put(body, &n, sizeof(body), "block '");
	put(body, &n, sizeof(body), watched[i].name);
	put(body, &n, sizeof(body), "': its memory at offset ");
	put_hex(body, &n, sizeof(body), a - watched[i].base);
	put(body, &n, sizeof(body),
	    " vanished (SIGBUS): the backing file was truncated or its "
	    "storage failed; ");
	put(body, &n, sizeof(body), fault_what);
	body[n] = 0;
	report_end(body);
	snap_outfile_signal_cleanup();
	cli_remove_aborted();
	_exit(1);
}

/*
 * Every signal whose default action ends the process, but SIGKILL and SIGSTOP
 * (which cannot be caught) and the faults a bug raises (SIGSEGV, SIGILL,
 * SIGFPE, SIGTRAP; SIGBUS is on_fault's). SIGPIPE and SIGXFSZ are ignored
 * instead: the write fails with EPIPE or EFBIG and the normal error path
 * reports it.
 */
static const int fatal_signals[] = {
	SIGHUP,	   SIGINT,  SIGQUIT,   SIGABRT, SIGUSR1, SIGUSR2, SIGALRM, SIGTERM,
	SIGSTKFLT, SIGXCPU, SIGVTALRM, SIGPROF, SIGIO,	 SIGPWR,  SIGSYS,
};

static void fatal_set(sigset_t *set)
{
	sigemptyset(set);
	for (size_t i = 0; i < sizeof(fatal_signals) / sizeof(fatal_signals[0]); i++)
		sigaddset(set, fatal_signals[i]);
	for (int s = SIGRTMIN; s <= SIGRTMAX; s++)
		sigaddset(set, s);
	sigaddset(set, SIGBUS);
}

static void put_signame(char *buf, size_t *len, size_t cap, int sig)
{
	/* glibc calls SIGIO by its other name, SIGPOLL; kill -l says SIGIO. */
	const char *abbrev = sig == SIGIO ? "IO" : sig < SIGRTMIN ? sigabbrev_np(sig) : NULL;

	put(buf, len, cap, "SIG");
	if (abbrev) {
		put(buf, len, cap, abbrev);
		return;
	}
	put(buf, len, cap, "RTMIN+");
	sig -= SIGRTMIN;
	if (sig >= 10)
		put(buf, len, cap, (char[]){ (char)('0' + sig / 10), 0 });
	put(buf, len, cap, (char[]){ (char)('0' + sig % 10), 0 });
}

static void on_signal(int sig)
{
	char body[256];
	size_t n = 0;

	take_the_end();
	put(body, &n, sizeof(body), "killed by ");
	put_signame(body, &n, sizeof(body), sig);
	put(body, &n, sizeof(body), "; ");
	put(body, &n, sizeof(body), fault_what);
	body[n] = 0;
	report_end(body);
	snap_outfile_signal_cleanup();
	cli_remove_aborted();
	/* Blocked until we return, then the default action: the process dies by sig. */
	signal(sig, SIG_DFL);
	raise(sig);
}

void cli_install_fault_handler(const char *what)
{
	struct sigaction sa = { 0 };

	fault_what = what;
	sa.sa_sigaction = on_fault;
	sa.sa_flags = SA_SIGINFO;
	fatal_set(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
}

void cli_install_signal_cleanup(void)
{
	struct sigaction sa = { 0 };
	sigset_t set;

	sa.sa_handler = on_signal;
	fatal_set(&sa.sa_mask);
	fatal_set(&set);
	for (int s = 1; s <= SIGRTMAX; s++) {
		struct sigaction old;

		/* An ignored signal stays ignored (nohup, a shell's background job). */
		if (s == SIGBUS || sigismember(&set, s) != 1 || sigaction(s, NULL, &old) < 0 ||
		    old.sa_handler == SIG_IGN)
			continue;
		sigaction(s, &sa, NULL);
	}
	signal(SIGPIPE, SIG_IGN);
	signal(SIGXFSZ, SIG_IGN);
}

int cli_add_fd(const char *arg)
{
	char ebuf[512];
	int r = snap_fdset_add_arg(arg, ebuf, sizeof(ebuf));

	if (r < 0)
		cli_err("--add-fd %s: %s", arg, ebuf);
	return r;
}

int cli_fd_socket_start(const char *spec)
{
	char ebuf[512];
	unsigned n;
	int r;

	r = snap_fdset_connect(spec, &fd_sock, ebuf, sizeof(ebuf));
	if (r < 0) {
		cli_err("--fd-socket %s: %s", spec, ebuf);
		return r;
	}
	/* The manager sends its descriptors and "start" right away; a minute is generous. */
	r = snap_fdset_recv(fd_sock, 60000, &n, ebuf, sizeof(ebuf));
	if (r < 0) {
		cli_err("--fd-socket %s: %s", spec, ebuf);
		close(fd_sock);
		fd_sock = -1;
	}
	return r;
}

void cli_fd_socket_finish(bool ok, const struct snap_stats *st)
{
	char *line = NULL;
	size_t len = 0;
	FILE *f;

	if (fd_sock < 0)
		return;
	f = open_memstream(&line, &len);
	if (f) {
		if (ok && st) {
			cli_print_stats_json(f, "completed", st);
		} else if (ok) {
			fprintf(f, "{\"status\": \"completed\"}\n");
		} else {
			fprintf(f, "{\"status\": \"failed\", \"error\": ");
			cli_json_str(f, last_error[0] ? last_error : "failed");
			fprintf(f, "}\n");
		}
		fclose(f);
		snap_fdset_send_result(fd_sock, line);
		free(line);
	}
	close(fd_sock);
	fd_sock = -1;
}

const char *cli_remedy(const struct snap_err *e)
{
	switch (e->remedy) {
	case SNAP_REMEDY_BUFFERED: return " (try --direct auto or off)";
	case SNAP_REMEDY_OFFSET: return " (give --offset N if the stream starts later)";
	case SNAP_REMEDY_NONE: break;
	}
	return "";
}
