// SPDX-License-Identifier: MIT
/*
 * The descriptor-passing session of docs/fd-passing.md: the socket to the
 * manager, deadlines, recvmsg with SCM_RIGHTS (MSG_CTRUNC is an error), the text
 * and QMP forms of each line, replies, and the result line at the end.
 */
#include "fdpass.h"
#include "cleanup.h"
#include "fdproto-json.h"
#include "fdset-internal.h"
#include "msg.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

/* Room for this many descriptors per recvmsg, so that "two fds on one line" is told
 * apart from truncation; more than this is reported as truncated control data. */
#define CMSG_FDS 16

int snap_fdset_connect(const char *spec, int *ret_sock, char *errbuf, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	_cleanup_close_ int s = -1;
	int r;

	if (!spec || !*spec) {
		msg_set(errbuf, errlen, "empty socket name");
		return -EINVAL;
	}
	if (!strncmp(spec, "fd:", 3)) {
		int64_t n;
		int v;
		socklen_t l = sizeof(v);
		struct stat st;

		if (fdset_parse_dec(spec + 3, strlen(spec + 3), INT_MAX, &n) < 0) {
			msg_set(errbuf, errlen, "'%s': expected fd:N with N a decimal number",
				spec);
			return -EINVAL;
		}
		if (fstat((int)n, &st) < 0) {
			msg_set(errbuf, errlen, "fd %d is not open", (int)n);
			return -EBADF;
		}
		if (!S_ISSOCK(st.st_mode) ||
		    getsockopt((int)n, SOL_SOCKET, SO_DOMAIN, &v, &l) < 0 || v != AF_UNIX) {
			msg_set(errbuf, errlen, "fd %d is not a UNIX socket", (int)n);
			return -ENOTSOCK;
		}
		l = sizeof(v);
		if (getsockopt((int)n, SOL_SOCKET, SO_TYPE, &v, &l) < 0 || v != SOCK_STREAM) {
			msg_set(errbuf, errlen, "fd %d is not a stream socket", (int)n);
			return -EPROTOTYPE;
		}
		s = fcntl((int)n, F_DUPFD_CLOEXEC, 3);
		if (s < 0) {
			r = -errno;
			msg_set(errbuf, errlen, "cannot duplicate fd %d: %s", (int)n, strerror(-r));
			return r;
		}
		*ret_sock = TAKE_FD(s);
		return 0;
	}
	if (strlen(spec) >= sizeof(sa.sun_path)) {
		msg_set(errbuf, errlen, "%s: socket path longer than %zu bytes", spec,
			sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, spec);
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		r = -errno;
		msg_set(errbuf, errlen, "socket: %s", strerror(-r));
		return r;
	}
	while (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno == EINTR)
			continue;
		r = -errno;
		msg_set(errbuf, errlen, "%s: %s", spec, strerror(-r));
		return r;
	}
	*ret_sock = TAKE_FD(s);
	return 0;
}

int64_t snap_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int snap_wait_fd(int fd, short events, int64_t deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		int t = -1, r;

		if (deadline >= 0) {
			int64_t left = deadline - snap_now_ms();

			if (left <= 0)
				return -ETIMEDOUT;
			t = left > INT_MAX ? INT_MAX : (int)left;
		}
		r = poll(&p, 1, t);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
	}
}

/* Writes all of buf; the one place for EINTR, EAGAIN and short sends. */
static int send_all(int sock, const char *buf, size_t len, int64_t deadline)
{
	while (len) {
		ssize_t n = send(sock, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			int r;

			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return -errno;
			r = snap_wait_fd(sock, POLLOUT, deadline);
			if (r < 0)
				return r;
			continue;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

int snap_fdset_send_result(int sock, const char *json_line)
{
	size_t len = strlen(json_line);
	const char *nl = strchr(json_line, '\n');
	int r;

	if (nl && nl != json_line + len - 1)
		return -EINVAL;
	r = send_all(sock, json_line, len, -1);
	if (r < 0 || nl)
		return r;
	return send_all(sock, "\n", 1, -1);
}

struct session {
	int sock;
	int64_t deadline;
	bool replies_off; /* a reply failed: the manager stopped reading */
	struct fdset_entry pending[SNAP_FDSET_RECV_MAX_FDS];
	size_t n_pending;
	char line[SNAP_FDSET_LINE_MAX + 1];
	size_t len;
	int fds[CMSG_FDS]; /* descriptors that came with the current line */
	size_t n_fds;
	unsigned fds_seen;	     /* including those closed because fds[] was full */
	struct snap_fdproto_req req; /* the parsed line */
	char msg[512];
};

static void close_line_fds(struct session *s)
{
	for (size_t i = 0; i < s->n_fds; i++)
		close(s->fds[i]);
	s->n_fds = 0;
	s->fds_seen = 0;
}

/* The session's error message, for the error reply and the caller. */
#define serr(s, ...) msg_set((s)->msg, sizeof((s)->msg), __VA_ARGS__)

/*
 * Reads one byte. Reading byte by byte means one recvmsg never spans two of the
 * manager's sendmsg calls, so every descriptor is tied to the line it came with.
 * Returns 1, 0 at end of file, or -errno with s->msg set.
 */
static int recv_byte(struct session *s, char *ret_c)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * CMSG_FDS)];
	} ctl;
	struct iovec iov = { .iov_base = ret_c, .iov_len = 1 };
	struct msghdr mh;
	bool foreign = false;
	ssize_t n;
	int r;

	for (;;) {
		mh = (struct msghdr){
			.msg_iov = &iov,
			.msg_iovlen = 1,
			.msg_control = ctl.buf,
			.msg_controllen = sizeof(ctl.buf),
		};
		n = recvmsg(s->sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (n >= 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			r = -errno;
			serr(s, "receiving from the manager: %s", strerror(-r));
			return r;
		}
		r = snap_wait_fd(s->sock, POLLIN, s->deadline);
		if (r == -ETIMEDOUT) {
			serr(s, "timed out waiting for the manager");
			return r;
		}
		if (r < 0) {
			serr(s, "waiting for the manager: %s", strerror(-r));
			return r;
		}
	}
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		size_t k;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
			foreign = true;
			continue;
		}
		k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(fd));
			s->fds_seen++;
			if (s->n_fds < CMSG_FDS)
				s->fds[s->n_fds++] = fd;
			else
				close(fd);
		}
	}
	if (mh.msg_flags & MSG_CTRUNC) {
		/* The kernel closed what did not fit; ours go with the line. */
		serr(s, "control data truncated (more than %d descriptors in one message?)",
		     CMSG_FDS);
		return -EPROTO;
	}
	if (foreign) {
		serr(s, "unexpected control message (only SCM_RIGHTS is accepted)");
		return -EPROTO;
	}
	return (int)n;
}

/* Reads a line into s->line without its newline. 0 or -errno with s->msg set. */
static int read_line(struct session *s)
{
	s->len = 0;
	for (;;) {
		char c;
		int r = recv_byte(s, &c);

		if (r < 0)
			return r;
		if (r == 0) {
			serr(s, "the manager closed the connection %s",
			     s->len ? "in the middle of a line" : "before start");
			return -ECONNRESET;
		}
		if (c == '\n')
			break;
		if ((unsigned char)c < 0x20 && c != '\t') {
			serr(s, "control character 0x%02x in a line", (unsigned char)c);
			return -EINVAL;
		}
		if (s->len + 1 >= SNAP_FDSET_LINE_MAX) {
			serr(s, "line longer than %d bytes", SNAP_FDSET_LINE_MAX);
			return -EMSGSIZE;
		}
		s->line[s->len++] = c;
	}
	s->line[s->len] = '\0';
	return 0;
}

/* add-fd [set=N] [opaque=S] | start */
static int parse_text(struct session *s)
{
	char *save = NULL, *tok;
	bool seen_set = false;

	tok = strtok_r(s->line, " \t", &save);
	if (!tok) {
		serr(s, "empty line");
		return -EINVAL;
	}
	if (!strcmp(tok, "start")) {
		s->req.cmd = SNAP_FDPROTO_START;
		if (strtok_r(NULL, " \t", &save)) {
			serr(s, "start takes no arguments");
			return -EINVAL;
		}
		return 0;
	}
	if (strcmp(tok, "add-fd")) {
		serr(s, "unknown command '%.64s' (add-fd, start)", tok);
		return -EINVAL;
	}
	s->req.cmd = SNAP_FDPROTO_ADD_FD;
	while ((tok = strtok_r(NULL, " \t", &save))) {
		char *eq = strchr(tok, '=');

		if (!eq || eq == tok || !eq[1]) {
			serr(s, "add-fd: expected key=value, not '%.64s'", tok);
			return -EINVAL;
		}
		*eq = '\0';
		if (!strcmp(tok, "set")) {
			if (seen_set)
				goto twice;
			seen_set = true;
			if (fdset_parse_dec(eq + 1, strlen(eq + 1), INT64_MAX, &s->req.set_id) <
			    0) {
				serr(s,
				     "add-fd: set must be a non-negative decimal number, not "
				     "'%.64s'",
				     eq + 1);
				return -EINVAL;
			}
		} else if (!strcmp(tok, "opaque")) {
			if (s->req.has_opaque)
				goto twice;
			s->req.has_opaque = true;
			strcpy(s->req.opaque, eq + 1);
		} else {
			serr(s, "add-fd: unknown key '%.64s' (set, opaque)", tok);
			return -EINVAL;
		}
	}
	return 0;
twice:
	serr(s, "add-fd: %s given twice", tok);
	return -EINVAL;
}

static void reply(struct session *s, const char *text)
{
	if (s->replies_off)
		return;
	if (send_all(s->sock, text, strlen(text), s->deadline) < 0)
		s->replies_off = true;
}

static void reply_json(struct session *s, const char *body_fmt_done, bool error)
{
	char buf[1024 + SNAP_FDSET_LINE_MAX];
	struct msg m = msg_init(buf, sizeof(buf));

	if (error) {
		msg_add(&m, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"");
		msg_json_str(&m, s->msg);
		msg_add(&m, "\"}");
	} else {
		msg_add(&m, "{\"return\": %s", body_fmt_done);
	}
	if (s->req.id)
		msg_add(&m, ", \"id\": %.*s", (int)s->req.id_len, s->req.id);
	msg_add(&m, "}\n");
	if (m.len < m.size)
		reply(s, buf);
}

static void reply_error(struct session *s, bool json)
{
	char buf[sizeof(s->msg) + 8];

	if (json) {
		reply_json(s, NULL, true);
		return;
	}
	snprintf(buf, sizeof(buf), "error %s\n", s->msg);
	reply(s, buf);
}

static int handle_add_fd(struct session *s, bool json)
{
	struct fdset_entry *e;
	char buf[128];
	int r;

	if (s->fds_seen != 1) {
		serr(s, "add-fd came with %u descriptor(s); send exactly one with each add-fd line",
		     s->fds_seen);
		return -EPROTO;
	}
	if (s->n_pending == SNAP_FDSET_RECV_MAX_FDS) {
		serr(s, "more than %d descriptors", SNAP_FDSET_RECV_MAX_FDS);
		return -E2BIG;
	}
	if (s->req.has_opaque && fdset_has_ctl(s->req.opaque)) {
		serr(s, "opaque must not contain control characters");
		return -EINVAL;
	}
	r = fdset_check_fd(s->fds[0], s->msg, sizeof(s->msg));
	if (r < 0)
		return r;
	e = &s->pending[s->n_pending];
	*e = (struct fdset_entry){ .set_id = s->req.set_id, .fd = -1 };
	if (s->req.has_opaque && *s->req.opaque) {
		e->opaque = strdup(s->req.opaque);
		if (!e->opaque) {
			serr(s, "out of memory");
			return -ENOMEM;
		}
	}
	if (e->set_id < 0)
		e->set_id = fdset_lowest_free_id(s->pending, s->n_pending);
	e->fd = s->fds[0];
	s->n_fds = 0;
	s->fds_seen = 0;
	s->n_pending++;
	if (json) {
		snprintf(buf, sizeof(buf), "{\"fdset-id\": %lld, \"fd\": %d}", (long long)e->set_id,
			 e->fd);
		reply_json(s, buf, false);
	} else {
		snprintf(buf, sizeof(buf), "ok set=%lld fd=%d\n", (long long)e->set_id, e->fd);
		reply(s, buf);
	}
	return 0;
}

static int commit(struct session *s)
{
	int r = fdset_commit(s->pending, s->n_pending);

	if (r < 0)
		serr(s, "out of memory");
	return r;
}

static int session_run(struct session *s, bool *ret_json)
{
	for (;;) {
		bool json;
		int r;

		s->req.set_id = -1;
		s->req.has_opaque = false;
		s->req.id = NULL;
		*ret_json = false;
		r = read_line(s);
		*ret_json = json = s->len && s->line[0] == '{';
		if (r < 0)
			return r;
		r = json ? snap_fdproto_parse_json(s->line, &s->req, s->msg, sizeof(s->msg))
			 : parse_text(s);
		if (r < 0)
			return r;
		if (s->req.cmd == SNAP_FDPROTO_ADD_FD) {
			r = handle_add_fd(s, json);
			if (r < 0)
				return r;
			continue;
		}
		if (s->fds_seen) {
			serr(s, "start came with %u descriptor(s); it takes none", s->fds_seen);
			return -EPROTO;
		}
		r = commit(s);
		if (r < 0)
			return r;
		if (json)
			reply_json(s, "{}", false);
		else
			reply(s, "ok\n");
		return 0;
	}
}

int snap_fdset_recv(int sock, int timeout_ms, unsigned *ret_n_fds, char *errbuf, size_t errlen)
{
	_cleanup_free_ struct session *s = calloc(1, sizeof(*s));
	bool json;
	int r;

	if (!s) {
		msg_set(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
	s->sock = sock;
	s->deadline = timeout_ms < 0 ? -1 : snap_now_ms() + timeout_ms;
	r = session_run(s, &json);
	close_line_fds(s);
	if (r < 0) {
		for (size_t i = 0; i < s->n_pending; i++) {
			close(s->pending[i].fd);
			free(s->pending[i].opaque);
		}
		reply_error(s, json);
		msg_set(errbuf, errlen, "%s", s->msg);
		return r;
	}
	if (ret_n_fds)
		*ret_n_fds = (unsigned)s->n_pending;
	return 0;
}
