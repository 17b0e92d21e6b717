// SPDX-License-Identifier: MIT
/* Messages, progress and JSON output shared by both command-line tools. */
#include "cli.h"
#include "fdset.h"
#include "outfile.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *cli_prog = "snapmr";
static bool progress_shown;
static char last_error[1024];
static int fd_sock = -1;

void cli_err(const char *fmt, ...)
{
	va_list ap;

	cli_progress_end();
	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
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

int cli_parse_direct(const char *s, enum snap_direct *ret)
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

int cli_parse_uint(const char *s, unsigned min, unsigned max, unsigned *ret)
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
	fprintf(stderr, "\r%s: %s / %s  %3.0f%%  %7.1f MiB/s  ETA %4.0fs ", cli_prog,
		cli_human(p->done, a, sizeof(a)), cli_human(p->total, b, sizeof(b)),
		p->total ? 100.0 * (double)p->done / (double)p->total : 100.0, rate / 1048576.0,
		eta);
	progress_shown = true;
}

void cli_progress_end(void)
{
	if (progress_shown)
		fputc('\n', stderr);
	progress_shown = false;
}

void cli_json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f) /* UTF-8 (>= 0x80) passes through */
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
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

static void on_signal(int sig)
{
	snap_outfile_signal_cleanup();
	signal(sig, SIG_DFL);
	raise(sig);
}

void cli_install_signal_cleanup(void)
{
	struct sigaction sa = { 0 };

	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

int cli_add_fd(const char *arg)
{
	char ebuf[512];

	if (snap_fdset_add_arg(arg, ebuf, sizeof(ebuf)) < 0) {
		cli_err("--add-fd %s: %s", arg, ebuf);
		return 2;
	}
	return 0;
}

int cli_fd_socket_start(const char *spec)
{
	char ebuf[512];
	unsigned n;

	if (snap_fdset_connect(spec, &fd_sock, ebuf, sizeof(ebuf)) < 0) {
		cli_err("--fd-socket %s: %s", spec, ebuf);
		return 1;
	}
	/* The manager sends its descriptors and "start" right away; a minute is generous. */
	if (snap_fdset_recv(fd_sock, 60000, &n, ebuf, sizeof(ebuf)) < 0) {
		cli_err("--fd-socket %s: %s", spec, ebuf);
		close(fd_sock);
		fd_sock = -1;
		return 1;
	}
	return 0;
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
