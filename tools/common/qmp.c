// SPDX-License-Identifier: MIT
/*
 * QMP client: line-framed JSON over a UNIX socket, replies matched by id, events
 * queued, descriptors sent with SCM_RIGHTS; and the few queries the tools need.
 */
#include "qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <json-c/json.h>

#include "fdpass.h"

#define RECV_CHUNK 65536
/* Room for a line of QMP_LINE_MAX bytes and its "\r\n". */
#define BUF_MAX (QMP_LINE_MAX + 2)

struct qmp {
	int sock;
	pid_t peer_pid;
	struct qmp_version version;
	struct json_object *greeting_caps; /* the greeting's capability array */
	char *buf;			   /* received bytes not yet consumed */
	size_t len, cap;
	int64_t next_id;
	bool broken; /* a protocol error: the stream position is unknown */
	struct json_tokener *tok;
	struct json_object *events[QMP_EVENT_QUEUE];
	size_t n_events;
};

/* Puts the message into errbuf (if any) and returns r. */
__attribute__((format(printf, 4, 5))) static int qerr(char *errbuf, size_t errlen, int r,
						      const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!errbuf || !errlen)
		return r;
	va_start(ap, fmt);
	n = vsnprintf(errbuf, errlen, fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n >= errlen && errlen >= 4)
		memcpy(errbuf + errlen - 4, "...", 4);
	return r;
}

static int64_t deadline_of(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : snap_now_ms() + timeout_ms;
}

/* ---- connection ---- */

static int connect_path(const char *path, int *ret_sock, char *errbuf, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	int s, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return qerr(errbuf, errlen, -ENAMETOOLONG, "%s: socket path longer than %zu bytes",
			    path, sizeof(sa.sun_path) - 1);
	strcpy(sa.sun_path, path);
	/* Non-blocking: a full listen queue must not hang connect() forever. */
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0) {
		r = -errno;
		return qerr(errbuf, errlen, r, "socket: %s", strerror(-r));
	}
	for (;;) {
		if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			*ret_sock = s;
			return 0;
		}
		if (errno != EINTR)
			break;
	}
	r = -errno;
	close(s);
	if (r == -EAGAIN)
		return qerr(
			errbuf, errlen, -EBUSY,
			"%s: busy: the monitor's listen queue is full (another client holds it)",
			path);
	/* connect(2) says ECONNREFUSED for a file that is no socket at all. */
	if (r == -ECONNREFUSED && stat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
		return qerr(errbuf, errlen, -ENOTSOCK, "%s: not a socket", path);
	return qerr(errbuf, errlen, r, "%s: %s", path, strerror(-r));
}

void qmp_close(struct qmp *q)
{
	if (!q)
		return;
	if (q->sock >= 0)
		close(q->sock);
	for (size_t i = 0; i < q->n_events; i++)
		json_object_put(q->events[i]);
	json_object_put(q->greeting_caps);
	if (q->tok)
		json_tokener_free(q->tok);
	free(q->buf);
	free(q);
}

/* ---- reading messages ---- */

static int fail(struct qmp *q, int r)
{
	if (r != -ETIMEDOUT)
		q->broken = true;
	return r;
}

/* Reads more bytes into q->buf. 0, or -errno with a message naming what. */
static int fill(struct qmp *q, int64_t deadline, const char *what, char *errbuf, size_t errlen)
{
	if (q->cap - q->len < RECV_CHUNK && q->cap < BUF_MAX) {
		size_t cap = q->cap ? q->cap * 2 : RECV_CHUNK * 2;
		char *b;

		if (cap > BUF_MAX)
			cap = BUF_MAX;
		b = realloc(q->buf, cap);
		if (!b)
			return qerr(errbuf, errlen, -ENOMEM, "out of memory");
		q->buf = b;
		q->cap = cap;
	}
	for (;;) {
		ssize_t n = recv(q->sock, q->buf + q->len, q->cap - q->len, MSG_DONTWAIT);
		int r;

		if (n > 0) {
			q->len += (size_t)n;
			return 0;
		}
		if (n == 0)
			return fail(q, qerr(errbuf, errlen, -ECONNRESET,
					    "QEMU closed the connection %s(%s)",
					    q->len ? "in the middle of a message " : "", what));
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			r = -errno;
			return fail(q, qerr(errbuf, errlen, r, "receiving from QEMU %s: %s", what,
					    strerror(-r)));
		}
		r = snap_wait_fd(q->sock, POLLIN, deadline);
		if (r == -ETIMEDOUT)
			return qerr(errbuf, errlen, r, "timed out %s", what);
		if (r < 0)
			return fail(q, qerr(errbuf, errlen, r, "waiting for QEMU %s: %s", what,
					    strerror(-r)));
	}
}

/* Parses one line (without its newline) into an object. */
static int parse_line(struct qmp *q, const char *line, size_t n, struct json_object **ret,
		      char *errbuf, size_t errlen)
{
	struct json_object *o;
	enum json_tokener_error e;

	if (n > INT_MAX)
		return fail(q, qerr(errbuf, errlen, -EMSGSIZE, "message too long"));
	json_tokener_reset(q->tok);
	o = json_tokener_parse_ex(q->tok, line, (int)n);
	e = json_tokener_get_error(q->tok);
	if (e != json_tokener_success || json_tokener_get_parse_end(q->tok) != n) {
		json_object_put(o);
		return fail(q, qerr(errbuf, errlen, -EPROTO,
				    "QEMU sent a line that is not JSON (%s): %.*s%s",
				    e == json_tokener_success ? "text after the value"
							      : json_tokener_error_desc(e),
				    (int)(n > 60 ? 60 : n), line, n > 60 ? "..." : ""));
	}
	if (!json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		return fail(q, qerr(errbuf, errlen, -EPROTO,
				    "QEMU sent JSON that is not an object: %.*s%s",
				    (int)(n > 60 ? 60 : n), line, n > 60 ? "..." : ""));
	}
	*ret = o;
	return 0;
}

/* The next message, skipping blank lines. what says what we wait for, for messages. */
static int read_msg(struct qmp *q, int64_t deadline, const char *what, struct json_object **ret,
		    char *errbuf, size_t errlen)
{
	size_t scanned = 0;

	if (q->broken)
		return qerr(errbuf, errlen, -EPIPE,
			    "the QMP connection is unusable after an earlier error");
	for (;;) {
		/* Nothing buffered yet: q->buf may still be NULL (memchr wants an object). */
		char *nl =
			q->len > scanned ? memchr(q->buf + scanned, '\n', q->len - scanned) : NULL;
		int r;

		if (nl) {
			size_t used = (size_t)(nl - q->buf) + 1, n = used - 1;

			while (n && (q->buf[n - 1] == '\r' || q->buf[n - 1] == ' ' ||
				     q->buf[n - 1] == '\t'))
				n--;
			r = n ? parse_line(q, q->buf, n, ret, errbuf, errlen) : 0;
			memmove(q->buf, q->buf + used, q->len - used);
			q->len -= used;
			scanned = 0;
			if (r < 0 || n)
				return r;
			continue;
		}
		scanned = q->len;
		if (q->len >= BUF_MAX)
			return fail(q, qerr(errbuf, errlen, -EMSGSIZE,
					    "a message from QEMU is longer than %u bytes (%s)",
					    QMP_LINE_MAX, what));
		r = fill(q, deadline, what, errbuf, errlen);
		if (r < 0)
			return r;
	}
}

static const char *str_member(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static void queue_event(struct qmp *q, struct json_object *ev)
{
	if (q->n_events == QMP_EVENT_QUEUE) {
		json_object_put(q->events[0]);
		memmove(q->events, q->events + 1, (QMP_EVENT_QUEUE - 1) * sizeof(*q->events));
		q->n_events--;
	}
	q->events[q->n_events++] = ev;
}

/*
 * A reply whose id is older than ours answers a command that timed out: drop it.
 * *ret_mine tells whether it answers the command with id mine (-1: none pending).
 */
static int check_reply(struct qmp *q, struct json_object *m, int64_t mine, bool *ret_mine,
		       char *errbuf, size_t errlen)
{
	struct json_object *idv;
	int64_t id;

	if (!json_object_object_get_ex(m, "return", NULL) &&
	    !json_object_object_get_ex(m, "error", NULL))
		return fail(q,
			    qerr(errbuf, errlen, -EPROTO,
				 "QEMU sent a message with neither return, error nor event: %.80s",
				 json_object_to_json_string_ext(m, JSON_C_TO_STRING_PLAIN)));
	/* QEMU leaves the id out when it could not parse the command at all. */
	if (!json_object_object_get_ex(m, "id", &idv)) {
		*ret_mine = mine >= 0;
		if (*ret_mine)
			return 0;
		return fail(q, qerr(errbuf, errlen, -EPROTO,
				    "QEMU sent a reply without id while no command ran"));
	}
	if (json_object_is_type(idv, json_type_int)) {
		id = json_object_get_int64(idv);
		*ret_mine = id == mine;
		if (*ret_mine || (id >= 0 && id < q->next_id - (mine >= 0)))
			return 0;
	}
	return fail(q, qerr(errbuf, errlen, -EPROTO, "QEMU sent a reply with an unexpected id %s",
			    json_object_to_json_string_ext(idv, JSON_C_TO_STRING_PLAIN)));
}

/* ---- commands ---- */

static int send_msg(struct qmp *q, const char *data, size_t len, int fd, int64_t deadline)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;

	while (len) {
		struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t n;
		int r;

		if (fd >= 0) {
			struct cmsghdr *c;

			memset(&ctl, 0, sizeof(ctl));
			mh.msg_control = ctl.buf;
			mh.msg_controllen = sizeof(ctl.buf);
			c = CMSG_FIRSTHDR(&mh);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(c), &fd, sizeof(int));
		}
		n = sendmsg(q->sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return -errno;
			r = snap_wait_fd(q->sock, POLLOUT, deadline);
			if (r < 0)
				return r;
			continue;
		}
		/* The descriptor went with the first bytes. */
		fd = -1;
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

static int reply_errno(const char *cls)
{
	if (cls && !strcmp(cls, "CommandNotFound"))
		return -ENOSYS;
	if (cls && !strcmp(cls, "DeviceNotFound"))
		return -ENODEV;
	return -EIO;
}

/* Sends {"execute", "arguments", "id"}; *ret_id is the id used. */
static int send_cmd(struct qmp *q, const char *cmd, struct json_object *args, int fd,
		    int64_t deadline, int64_t *ret_id, char *errbuf, size_t errlen)
{
	struct json_object *m = json_object_new_object();
	const char *s;
	size_t n;
	char *line;
	int r = -ENOMEM;

	if (!m)
		goto nomem;
	if (json_object_object_add(m, "execute", json_object_new_string(cmd)) < 0)
		goto nomem;
	if (args && json_object_object_add(m, "arguments", json_object_get(args)) < 0)
		goto nomem;
	if (json_object_object_add(m, "id", json_object_new_int64(q->next_id)) < 0)
		goto nomem;
	s = json_object_to_json_string_ext(m,
					   JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	if (!s)
		goto nomem;
	n = strlen(s);
	line = malloc(n + 1);
	if (!line)
		goto nomem;
	memcpy(line, s, n);
	line[n] = '\n';
	*ret_id = q->next_id++;
	r = send_msg(q, line, n + 1, fd, deadline);
	free(line);
	json_object_put(m);
	if (r == -ETIMEDOUT)
		return qerr(errbuf, errlen, r, "%s: timed out sending the command", cmd);
	if (r == -EPIPE || r == -ECONNRESET)
		return fail(q, qerr(errbuf, errlen, -ECONNRESET,
				    "QEMU closed the connection (sending %s)", cmd));
	if (r < 0)
		return fail(q, qerr(errbuf, errlen, r, "%s: sending the command: %s", cmd,
				    strerror(-r)));
	return 0;
nomem:
	json_object_put(m);
	return qerr(errbuf, errlen, r, "out of memory");
}

int qmp_execute_fd(struct qmp *q, const char *cmd, struct json_object *args, int fd, int timeout_ms,
		   struct json_object **ret_json, char *errbuf, size_t errlen)
{
	int64_t deadline = deadline_of(timeout_ms), id = -1;
	char what[96];
	int r;

	if (q->broken)
		return qerr(errbuf, errlen, -EPIPE,
			    "the QMP connection is unusable after an earlier error");
	r = send_cmd(q, cmd, args, fd, deadline, &id, errbuf, errlen);
	if (r < 0)
		return r;
	snprintf(what, sizeof(what), "waiting for the reply to %s", cmd);
	for (;;) {
		struct json_object *m, *v;
		bool mine;

		r = read_msg(q, deadline, what, &m, errbuf, errlen);
		if (r < 0)
			return r;
		if (str_member(m, "event")) {
			queue_event(q, m);
			continue;
		}
		r = check_reply(q, m, id, &mine, errbuf, errlen);
		if (r < 0 || !mine) {
			json_object_put(m);
			if (r < 0)
				return r;
			continue;
		}
		if (json_object_object_get_ex(m, "return", &v)) {
			if (ret_json)
				*ret_json = json_object_get(v);
			json_object_put(m);
			return 0;
		}
		json_object_object_get_ex(m, "error", &v);
		r = qerr(errbuf, errlen, reply_errno(str_member(v, "class")), "%s: %s", cmd,
			 str_member(v, "desc") ? str_member(v, "desc") : "error without desc");
		json_object_put(m);
		return r;
	}
}

int qmp_execute(struct qmp *q, const char *cmd, struct json_object *args, int timeout_ms,
		struct json_object **ret_json, char *errbuf, size_t errlen)
{
	return qmp_execute_fd(q, cmd, args, -1, timeout_ms, ret_json, errbuf, errlen);
}

/* ---- events ---- */

static bool event_matches(struct json_object *ev, const char *name, qmp_event_pred pred, void *arg)
{
	const char *n = str_member(ev, "event");
	struct json_object *data = NULL;

	if (!n || strcmp(n, name))
		return false;
	json_object_object_get_ex(ev, "data", &data);
	return !pred || pred(data, arg);
}

/* Removes the event at index i and every earlier one named name; returns event i. */
static struct json_object *take_event(struct qmp *q, size_t i, const char *name)
{
	struct json_object *ev = q->events[i];
	size_t k = 0;

	for (size_t j = 0; j < q->n_events; j++) {
		if (j < i && !strcmp(str_member(q->events[j], "event"), name))
			json_object_put(q->events[j]);
		else if (j != i)
			q->events[k++] = q->events[j];
	}
	q->n_events = k;
	return ev;
}

int qmp_wait_event(struct qmp *q, const char *name, qmp_event_pred pred, void *arg, int timeout_ms,
		   struct json_object **ret_event, char *errbuf, size_t errlen)
{
	int64_t deadline = deadline_of(timeout_ms);
	char what[96];
	size_t i = 0;

	snprintf(what, sizeof(what), "waiting for event %s", name);
	for (;;) {
		struct json_object *m;
		bool mine;
		int r;

		for (; i < q->n_events; i++) {
			if (!event_matches(q->events[i], name, pred, arg))
				continue;
			m = take_event(q, i, name);
			if (ret_event)
				*ret_event = m;
			else
				json_object_put(m);
			return 0;
		}
		r = read_msg(q, deadline, what, &m, errbuf, errlen);
		if (r < 0)
			return r;
		if (str_member(m, "event")) {
			/* The queue may drop its oldest: scan the new one where it lands. */
			queue_event(q, m);
			i = q->n_events - 1;
			continue;
		}
		r = check_reply(q, m, -1, &mine, errbuf, errlen);
		json_object_put(m);
		if (r < 0)
			return r;
	}
}

/* ---- connect ---- */

static int read_greeting(struct qmp *q, const char *spec, int timeout_ms, char *errbuf,
			 size_t errlen)
{
	struct json_object *g = NULL, *qmp, *ver, *qemu, *caps, *v;
	const char *keys[] = { "major", "minor", "micro" };
	int *dst[] = { &q->version.major, &q->version.minor, &q->version.micro };
	int r;

	r = read_msg(q, deadline_of(timeout_ms), "waiting for the QMP greeting", &g, errbuf,
		     errlen);
	if (r == -ETIMEDOUT)
		return qerr(
			errbuf, errlen, -EBUSY,
			"%s: no QMP greeting within %d ms: busy (QEMU serves one QMP client at a time) or not a QMP monitor",
			spec, timeout_ms);
	if (r < 0)
		return r;
	if (!json_object_object_get_ex(g, "QMP", &qmp) ||
	    !json_object_object_get_ex(qmp, "version", &ver) ||
	    !json_object_object_get_ex(ver, "qemu", &qemu))
		goto bad;
	for (size_t i = 0; i < 3; i++) {
		if (!json_object_object_get_ex(qemu, keys[i], &v) ||
		    !json_object_is_type(v, json_type_int))
			goto bad;
		*dst[i] = json_object_get_int(v);
	}
	if (!json_object_object_get_ex(qmp, "capabilities", &caps) ||
	    !json_object_is_type(caps, json_type_array))
		goto bad;
	q->greeting_caps = json_object_get(caps);
	json_object_put(g);
	return 0;
bad:
	r = qerr(errbuf, errlen, -EPROTO, "%s: not a QMP monitor (the greeting is %.80s)", spec,
		 json_object_to_json_string_ext(g, JSON_C_TO_STRING_PLAIN));
	json_object_put(g);
	return r;
}

int qmp_connect(const char *spec, int timeout_ms, struct qmp **ret_q, char *errbuf, size_t errlen)
{
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	struct qmp *q;
	int r;

	if (!spec || !*spec)
		return qerr(errbuf, errlen, -EINVAL, "empty QMP socket name");
	q = calloc(1, sizeof(*q));
	if (!q)
		return qerr(errbuf, errlen, -ENOMEM, "out of memory");
	q->sock = -1;
	q->peer_pid = -1;
	q->tok = json_tokener_new();
	if (!q->tok) {
		r = qerr(errbuf, errlen, -ENOMEM, "out of memory");
		goto fail;
	}
	if (!strncmp(spec, "fd:", 3))
		r = snap_fdset_connect(spec, &q->sock, errbuf, errlen);
	else
		r = connect_path(spec, &q->sock, errbuf, errlen);
	if (r < 0)
		goto fail;
	if (getsockopt(q->sock, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0 && cred.pid > 0)
		q->peer_pid = cred.pid;
	r = read_greeting(q, spec, timeout_ms, errbuf, errlen);
	if (r < 0)
		goto fail;
	r = qmp_execute(q, "qmp_capabilities", NULL, timeout_ms, NULL, errbuf, errlen);
	if (r < 0)
		goto fail;
	*ret_q = q;
	return 0;
fail:
	qmp_close(q);
	return r;
}

void qmp_version(const struct qmp *q, struct qmp_version *ret)
{
	*ret = q->version;
}

bool qmp_greeting_has(const struct qmp *q, const char *name)
{
	size_t n = json_object_array_length(q->greeting_caps);

	for (size_t i = 0; i < n; i++) {
		struct json_object *c = json_object_array_get_idx(q->greeting_caps, i);

		if (json_object_is_type(c, json_type_string) &&
		    !strcmp(json_object_get_string(c), name))
			return true;
	}
	return false;
}

pid_t qmp_peer_pid(const struct qmp *q)
{
	return q->peer_pid;
}

/* ---- queries ---- */

static int bad_reply(const char *cmd, const char *why, struct json_object *r, char *errbuf,
		     size_t errlen)
{
	int e = qerr(errbuf, errlen, -EPROTO, "%s: unexpected reply (%s): %.80s", cmd, why,
		     json_object_to_json_string_ext(r, JSON_C_TO_STRING_PLAIN));

	json_object_put(r);
	return e;
}

static bool bool_member(struct json_object *o, const char *key, bool *ret)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_boolean))
		return false;
	*ret = json_object_get_boolean(v);
	return true;
}

/* Runs cmd and checks that its return value has type t. */
static int query(struct qmp *q, const char *cmd, struct json_object *args, enum json_type t,
		 int timeout_ms, struct json_object **ret, char *errbuf, size_t errlen)
{
	struct json_object *r = NULL;
	int e;

	e = qmp_execute(q, cmd, args, timeout_ms, &r, errbuf, errlen);
	if (e < 0)
		return e;
	if (!json_object_is_type(r, t))
		return bad_reply(cmd, json_type_to_name(t), r, errbuf, errlen);
	*ret = r;
	return 0;
}

int qmp_query_status(struct qmp *q, int timeout_ms, struct qmp_status *ret, char *errbuf,
		     size_t errlen)
{
	struct json_object *r;
	struct qmp_status st = { 0 };
	const char *s;
	int e;

	e = query(q, "query-status", NULL, json_type_object, timeout_ms, &r, errbuf, errlen);
	if (e < 0)
		return e;
	s = str_member(r, "status");
	if (!s || !bool_member(r, "running", &st.running))
		return bad_reply("query-status", "no status or running", r, errbuf, errlen);
	snprintf(st.status, sizeof(st.status), "%s", s);
	st.state = st.running		  ? QMP_VM_RUNNING
		   : !strcmp(s, "paused") ? QMP_VM_PAUSED
					  : QMP_VM_OTHER;
	json_object_put(r);
	*ret = st;
	return 0;
}

int qmp_query_migrate(struct qmp *q, int timeout_ms, struct qmp_migration *ret, char *errbuf,
		      size_t errlen)
{
	static const char *const idle[] = { "none", "completed", "failed", "cancelled" };
	struct qmp_migration m = { .active = true };
	struct json_object *r;
	const char *s;
	int e;

	e = query(q, "query-migrate", NULL, json_type_object, timeout_ms, &r, errbuf, errlen);
	if (e < 0)
		return e;
	/* QEMU leaves status out until a migration has run. */
	s = str_member(r, "status");
	snprintf(m.status, sizeof(m.status), "%s", s ? s : "none");
	for (size_t i = 0; i < sizeof(idle) / sizeof(idle[0]); i++)
		if (!strcmp(m.status, idle[i]))
			m.active = false;
	s = str_member(r, "error-desc");
	snprintf(m.error_desc, sizeof(m.error_desc), "%s", s ? s : "");
	json_object_put(r);
	*ret = m;
	return 0;
}

int qmp_query_capability(struct qmp *q, const char *name, int timeout_ms, bool *ret_present,
			 bool *ret_on, char *errbuf, size_t errlen)
{
	struct json_object *r;
	bool present = false, on = false;
	size_t n;
	int e;

	e = query(q, "query-migrate-capabilities", NULL, json_type_array, timeout_ms, &r, errbuf,
		  errlen);
	if (e < 0)
		return e;
	n = json_object_array_length(r);
	for (size_t i = 0; i < n && !present; i++) {
		struct json_object *c = json_object_array_get_idx(r, i);
		const char *cap = str_member(c, "capability");
		bool state;

		if (!cap || !bool_member(c, "state", &state))
			return bad_reply("query-migrate-capabilities", "capability without state",
					 r, errbuf, errlen);
		if (!strcmp(cap, name)) {
			present = true;
			on = state;
		}
	}
	json_object_put(r);
	*ret_present = present;
	*ret_on = on;
	return 0;
}

/* qom-get path property, a string; *ret is malloc'ed. */
static int qom_get_str(struct qmp *q, const char *path, const char *prop, int timeout_ms,
		       char **ret, char *errbuf, size_t errlen)
{
	struct json_object *args = json_object_new_object(), *r = NULL;
	int e = -ENOMEM;

	if (!args || json_object_object_add(args, "path", json_object_new_string(path)) < 0 ||
	    json_object_object_add(args, "property", json_object_new_string(prop)) < 0) {
		json_object_put(args);
		return qerr(errbuf, errlen, e, "out of memory");
	}
	e = query(q, "qom-get", args, json_type_string, timeout_ms, &r, errbuf, errlen);
	json_object_put(args);
	if (e < 0)
		return e;
	*ret = strdup(json_object_get_string(r));
	json_object_put(r);
	if (!*ret)
		return qerr(errbuf, errlen, -ENOMEM, "out of memory");
	return 0;
}

void qmp_memdevs_free(struct qmp_memdev *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++) {
		free(v[i].id);
		free(v[i].type);
		free(v[i].mem_path);
	}
	free(v);
}

/* Fills d from one query-memdev entry and the backend's QOM properties. */
static int memdev_fill(struct qmp *q, struct json_object *m, struct qmp_memdev *d, int timeout_ms,
		       char *errbuf, size_t errlen)
{
	struct json_object *size;
	const char *id = str_member(m, "id");
	char path[256];
	int e;

	if (!json_object_object_get_ex(m, "size", &size) ||
	    !json_object_is_type(size, json_type_int))
		return qerr(errbuf, errlen, -EPROTO, "query-memdev: backend %s has no size",
			    id ? id : "(no id)");
	if (!bool_member(m, "share", &d->share))
		return qerr(errbuf, errlen, -EPROTO,
			    "query-memdev: backend %s has no 'share' (QEMU before 6.1?)",
			    id ? id : "(no id)");
	d->size = json_object_get_uint64(size);
	if (!id)
		return 0;
	d->id = strdup(id);
	if (!d->id)
		return qerr(errbuf, errlen, -ENOMEM, "out of memory");
	if ((size_t)snprintf(path, sizeof(path), "/objects/%s", id) >= sizeof(path))
		return qerr(errbuf, errlen, -ENAMETOOLONG,
			    "query-memdev: backend id '%.64s...' too long", id);
	e = qom_get_str(q, path, "type", timeout_ms, &d->type, errbuf, errlen);
	if (e < 0 || strcmp(d->type, "memory-backend-file"))
		return e;
	return qom_get_str(q, path, "mem-path", timeout_ms, &d->mem_path, errbuf, errlen);
}

int qmp_query_memdevs(struct qmp *q, int timeout_ms, struct qmp_memdev **ret_v, size_t *ret_n,
		      char *errbuf, size_t errlen)
{
	struct json_object *r;
	struct qmp_memdev *v;
	size_t n;
	int e;

	e = query(q, "query-memdev", NULL, json_type_array, timeout_ms, &r, errbuf, errlen);
	if (e < 0)
		return e;
	n = json_object_array_length(r);
	v = calloc(n ? n : 1, sizeof(*v));
	if (!v) {
		json_object_put(r);
		return qerr(errbuf, errlen, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < n; i++) {
		struct json_object *m = json_object_array_get_idx(r, i);

		e = json_object_is_type(m, json_type_object)
			    ? memdev_fill(q, m, &v[i], timeout_ms, errbuf, errlen)
			    : qerr(errbuf, errlen, -EPROTO,
				   "query-memdev: an entry is not an object");
		if (e < 0) {
			json_object_put(r);
			qmp_memdevs_free(v, n);
			return e;
		}
	}
	json_object_put(r);
	*ret_v = v;
	*ret_n = n;
	return 0;
}

int qmp_query_machine_type(struct qmp *q, int timeout_ms, char **ret, char *errbuf, size_t errlen)
{
	static const char suffix[] = "-machine";
	char *t;
	size_t n;
	int e;

	e = qom_get_str(q, "/machine", "type", timeout_ms, &t, errbuf, errlen);
	if (e < 0)
		return e;
	n = strlen(t);
	if (n > strlen(suffix) && !strcmp(t + n - strlen(suffix), suffix))
		t[n - strlen(suffix)] = '\0';
	*ret = t;
	return 0;
}
