// SPDX-License-Identifier: MIT
/*
 * Tests for tools/common/qmp against a scripted fake monitor on a socketpair (a
 * thread): greeting, ids and events, errors, framing limits, fd passing, no fd leaks.
 */
#include "qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>

#include <json-c/json.h>

#include <setjmp.h>
#include <cmocka.h>

#define GREETING                                                                           \
	"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, " \
	"\"package\": \"test\"}, \"capabilities\": [\"oob\"]}}\r\n"
#define OK "{\"return\": {}, \"id\": %ID%}\r\n"
#define T  2000 /* ms: generous, the fake answers at once */

/*
 * One step of the fake monitor. With cmd, it first reads a command and checks its
 * name (and that its arguments contain args_has); then it sleeps delay_ms, sends
 * send with %ID% replaced by the command's id, and closes the socket if hangup.
 */
struct step {
	const char *cmd;
	const char *args_has;
	const char *send;
	int delay_ms;
	bool hangup;
};

struct fake {
	int sock;
	bool listening; /* sock listens: accept one client first */
	const struct step *steps;
	pthread_t thread;
	char failure[512];
	int n_fds;	    /* descriptors received with commands */
	struct stat fd_st;  /* fstat of the last one */
	char line[1 << 16]; /* the last command */
};

/* What QEMU says first; open_conn() puts it before each script. */
#define N_GREET 2
static const struct step greet[N_GREET + 1] = {
	{ .send = GREETING },
	{ .cmd = "qmp_capabilities", .send = OK },
	{ 0 },
};

static int fds_before;

/* Descriptors without close-on-exec that the test runner gave us: not ours to judge. */
static bool inherited[1024];

static void note_inherited(void)
{
	for (int fd = 0; fd < 1024; fd++) {
		int fl = fcntl(fd, F_GETFD);

		inherited[fd] = fl >= 0 && !(fl & FD_CLOEXEC);
	}
}

/* Every descriptor opened since note_inherited() is close-on-exec. */
static void assert_all_cloexec(void)
{
	for (int fd = 0; fd < 1024; fd++) {
		int fl = fcntl(fd, F_GETFD);

		if (fl >= 0 && !(fl & FD_CLOEXEC) && !inherited[fd])
			fail_msg("fd %d is not close-on-exec", fd);
	}
}

static int count_fds(void)
{
	glob_t g;
	int n;

	if (glob("/proc/self/fd/*", 0, NULL, &g))
		return -1;
	n = (int)g.gl_pathc;
	globfree(&g);
	return n;
}

static int setup(void **state)
{
	(void)state;
	fds_before = count_fds();
	note_inherited();
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	assert_int_equal(count_fds(), fds_before);
	return 0;
}

static void ffail(struct fake *f, const char *what)
{
	if (!f->failure[0])
		snprintf(f->failure, sizeof(f->failure), "%s (line: %.200s)", what, f->line);
}

static bool send_text(struct fake *f, const char *text, const char *id)
{
	size_t n = strlen(text) + 64, o = 0;
	char *buf = malloc(n * 2); /* room for ids longer than "%ID%" */

	if (!buf)
		return false;
	for (const char *p = text; *p;) {
		if (!strncmp(p, "%ID%", 4)) {
			o += (size_t)sprintf(buf + o, "%s", id);
			p += 4;
		} else {
			buf[o++] = *p++;
		}
	}
	for (size_t w = 0; w < o;) {
		ssize_t k = send(f->sock, buf + w, o - w, MSG_NOSIGNAL);

		if (k <= 0) {
			free(buf);
			return false;
		}
		w += (size_t)k;
	}
	free(buf);
	return true;
}

/* Reads one command line, keeping descriptors that come with it. */
static bool read_cmd(struct fake *f)
{
	size_t n = 0;

	for (;;) {
		union {
			struct cmsghdr align;
			char buf[CMSG_SPACE(sizeof(int) * 4)];
		} ctl;
		char c;
		struct iovec iov = { .iov_base = &c, .iov_len = 1 };
		struct msghdr mh = {
			.msg_iov = &iov,
			.msg_iovlen = 1,
			.msg_control = ctl.buf,
			.msg_controllen = sizeof(ctl.buf),
		};
		ssize_t k = recvmsg(f->sock, &mh, MSG_CMSG_CLOEXEC);

		if (k <= 0)
			return false;
		for (struct cmsghdr *h = CMSG_FIRSTHDR(&mh); h; h = CMSG_NXTHDR(&mh, h)) {
			size_t m = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);

			for (size_t i = 0; i < m; i++) {
				int fd;

				memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof(fd));
				f->n_fds++;
				if (fstat(fd, &f->fd_st) < 0)
					ffail(f, "fstat of a received fd failed");
				if (fcntl(fd, F_GETFD) != FD_CLOEXEC)
					ffail(f, "received fd is not close-on-exec");
				close(fd);
			}
		}
		if (c == '\n')
			break;
		if (n + 1 >= sizeof(f->line))
			return false;
		f->line[n++] = c;
		f->line[n] = '\0';
	}
	return true;
}

static void *fake_main(void *arg)
{
	struct fake *f = arg;
	char c;

	if (f->listening) {
		int s = accept4(f->sock, NULL, NULL, SOCK_CLOEXEC);

		close(f->sock);
		f->sock = s;
		if (s < 0) {
			ffail(f, "accept failed");
			return NULL;
		}
	}

	for (const struct step *s = f->steps; s->cmd || s->send || s->hangup; s++) {
		char id[32] = "null";

		if (s->cmd) {
			struct json_object *o, *v;

			if (!read_cmd(f)) {
				ffail(f, "the client closed before a command came");
				break;
			}
			o = json_tokener_parse(f->line);
			if (!o || !json_object_object_get_ex(o, "execute", &v) ||
			    strcmp(json_object_get_string(v), s->cmd))
				ffail(f, s->cmd);
			if (json_object_object_get_ex(o, "id", &v))
				snprintf(id, sizeof(id), "%s", json_object_to_json_string(v));
			else
				ffail(f, "command without id");
			if (s->args_has && !strstr(f->line, s->args_has))
				ffail(f, s->args_has);
			json_object_put(o);
		}
		if (s->delay_ms)
			usleep((useconds_t)s->delay_ms * 1000);
		if (s->send && !send_text(f, s->send, id))
			ffail(f, "send failed");
		if (s->hangup) {
			shutdown(f->sock, SHUT_RDWR);
			break;
		}
	}
	/* Wait for the client to go away, so it never sees an unscripted close. */
	while (recv(f->sock, &c, 1, 0) > 0)
		;
	close(f->sock);
	return NULL;
}

/* Starts the fake monitor; *ret_spec is "fd:N" for the client end. */
static struct fake *fake_start(const struct step *steps, char *spec, size_t len, int *ret_cfd)
{
	struct fake *f = calloc(1, sizeof(*f));
	int sv[2];

	assert_non_null(f);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	f->sock = sv[0];
	f->steps = steps;
	*ret_cfd = sv[1];
	snprintf(spec, len, "fd:%d", sv[1]);
	assert_int_equal(pthread_create(&f->thread, NULL, fake_main, f), 0);
	return f;
}

/* Joins the fake (the client must be closed first), checks its findings, frees it. */
static void fake_end(struct fake *f, int *ret_n_fds, struct stat *ret_st)
{
	pthread_join(f->thread, NULL);
	if (ret_n_fds)
		*ret_n_fds = f->n_fds;
	if (ret_st)
		*ret_st = f->fd_st;
	if (f->failure[0])
		fail_msg("fake monitor: %s", f->failure);
	free(f);
}

/* Connects through a fake that greets and runs steps after the negotiation. */
struct conn {
	struct fake *f;
	struct qmp *q;
	struct step *all;
	int n_fds; /* after close_conn(): what the fake received */
	struct stat fd_st;
};

static struct conn open_conn(const struct step *steps)
{
	struct conn c = { 0 };
	size_t n = 0;
	char spec[32], err[256];
	int cfd;

	while (steps[n].cmd || steps[n].send || steps[n].hangup)
		n++;
	c.all = calloc(N_GREET + n + 1, sizeof(*c.all));
	assert_non_null(c.all);
	memcpy(c.all, greet, N_GREET * sizeof(*greet));
	memcpy(c.all + N_GREET, steps, n * sizeof(*steps));
	c.f = fake_start(c.all, spec, sizeof(spec), &cfd);
	assert_int_equal(qmp_connect(spec, T, &c.q, err, sizeof(err)), 0);
	close(cfd);
	return c;
}

static void close_conn(struct conn *c)
{
	qmp_close(c->q);
	fake_end(c->f, &c->n_fds, &c->fd_st);
	free(c->all);
}

/* Connects with the given script from the very first byte; returns the result. */
static int try_connect(const struct step *steps, int timeout_ms, char *err, size_t errlen)
{
	struct qmp *q = NULL;
	char spec[32];
	int cfd, r;
	struct fake *f = fake_start(steps, spec, sizeof(spec), &cfd);

	r = qmp_connect(spec, timeout_ms, &q, err, errlen);
	close(cfd);
	qmp_close(q);
	fake_end(f, NULL, NULL);
	return r;
}

static const struct step end = { 0 };

/* ---- connect ---- */

static void test_greeting(void **state)
{
	struct qmp_version v;
	struct conn c = open_conn(&end);

	(void)state;
	qmp_version(c.q, &v);
	assert_int_equal(v.major, 10);
	assert_int_equal(v.minor, 0);
	assert_int_equal(v.micro, 2);
	assert_true(qmp_greeting_has(c.q, "oob"));
	assert_false(qmp_greeting_has(c.q, "oo"));
	/* The fake is a thread of this process. */
	assert_int_equal(qmp_peer_pid(c.q), getpid());
	assert_all_cloexec();
	close_conn(&c);
}

static void test_negotiation_refused(void **state)
{
	static const struct step s[] = {
		{ .send = GREETING },
		{ .cmd = "qmp_capabilities",
		  .send = "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Capabilities negotiation is already complete\"}, \"id\": %ID%}\n" },
		{ 0 },
	};
	char err[256];

	(void)state;
	assert_int_equal(try_connect(s, T, err, sizeof(err)), -EIO);
	assert_non_null(strstr(err, "qmp_capabilities: Capabilities negotiation"));
}

static void test_no_greeting_is_busy(void **state)
{
	static const struct step s[] = { { 0 } };
	char err[256];

	(void)state;
	assert_int_equal(try_connect(s, 100, err, sizeof(err)), -EBUSY);
	assert_non_null(strstr(err, "busy"));
	assert_non_null(strstr(err, "not a QMP monitor"));
}

static void test_not_qmp(void **state)
{
	static const struct step json[] = { { .send = "{\"hello\": 1}\n" }, { 0 } };
	static const struct step ssh[] = { { .send = "SSH-2.0-OpenSSH_9.2\r\n" }, { 0 } };
	static const struct step bye[] = { { .send = "{\"QMP\": ", .hangup = true }, { 0 } };
	char err[256];

	(void)state;
	assert_int_equal(try_connect(json, T, err, sizeof(err)), -EPROTO);
	assert_non_null(strstr(err, "not a QMP monitor"));
	assert_int_equal(try_connect(ssh, T, err, sizeof(err)), -EPROTO);
	assert_non_null(strstr(err, "not JSON"));
	assert_int_equal(try_connect(bye, T, err, sizeof(err)), -ECONNRESET);
	assert_non_null(strstr(err, "middle of a message"));
}

static void test_connect_errors(void **state)
{
	char dir[] = "/tmp/snapmr-test-qmp-XXXXXX", path[128], err[256];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct qmp *q = NULL;
	int s, fd, p[2];

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/none", dir);
	assert_int_equal(qmp_connect(path, T, &q, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, path));

	/* A socket file nobody listens on. */
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/dead", dir);
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(s);
	assert_int_equal(qmp_connect(sa.sun_path, T, &q, err, sizeof(err)), -ECONNREFUSED);

	/* A regular file, and fd:N of a pipe. */
	snprintf(path, sizeof(path), "%s/file", dir);
	fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(qmp_connect(path, T, &q, err, sizeof(err)), -ENOTSOCK);
	assert_non_null(strstr(err, "not a socket"));
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	snprintf(path, sizeof(path), "fd:%d", p[0]);
	assert_int_equal(qmp_connect(path, T, &q, err, sizeof(err)), -ENOTSOCK);
	close(p[0]);
	close(p[1]);

	/* A listener that accepts nothing and says nothing: the busy case by path. */
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/mute", dir);
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(s, 0), 0);
	assert_int_equal(qmp_connect(sa.sun_path, 100, &q, err, sizeof(err)), -EBUSY);
	assert_non_null(strstr(err, "busy"));
	/* Queue full now (backlog 0 holds one): connect itself must not hang. */
	for (int i = 0; i < 3; i++) {
		int r = qmp_connect(sa.sun_path, 100, &q, err, sizeof(err));

		assert_int_equal(r, -EBUSY);
		if (i == 2)
			assert_non_null(strstr(err, "listen queue is full"));
	}
	assert_null(q);
	close(s);
	unlink(sa.sun_path);
	snprintf(path, sizeof(path), "%s/dead", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/file", dir);
	unlink(path);
	assert_int_equal(rmdir(dir), 0);
}

static void test_connect_by_path(void **state)
{
	char dir[] = "/tmp/snapmr-test-qmp-XXXXXX", err[256];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct fake *f = calloc(1, sizeof(*f));
	struct qmp *q = NULL;

	(void)state;
	assert_non_null(f);
	assert_non_null(mkdtemp(dir));
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/qmp.sock", dir);
	f->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(bind(f->sock, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(f->sock, 1), 0);
	f->listening = true;
	f->steps = greet;
	assert_int_equal(pthread_create(&f->thread, NULL, fake_main, f), 0);
	assert_int_equal(qmp_connect(sa.sun_path, T, &q, err, sizeof(err)), 0);
	assert_int_equal(qmp_peer_pid(q), getpid());
	assert_all_cloexec();
	qmp_close(q);
	fake_end(f, NULL, NULL);
	unlink(sa.sun_path);
	assert_int_equal(rmdir(dir), 0);
}

/* ---- commands and events ---- */

static bool status_is(struct json_object *data, void *arg)
{
	struct json_object *v;

	return data && json_object_object_get_ex(data, "status", &v) &&
	       !strcmp(json_object_get_string(v), arg);
}

static void test_ids_and_events(void **state)
{
	static const struct step s[] = {
		{ .cmd = "query-status",
		  .send = "{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n"
			  "{\"return\": {}, \"id\": 0}\n" /* a stale reply: dropped */
			  "{\"event\": \"MIGRATION\", \"data\": {\"status\": \"active\"}}\n"
			  "{\"return\": {\"running\": false, \"status\": \"paused\"}, \"id\": %ID%}\n"
			  "{\"event\": \"MIGRATION\", \"data\": {\"status\": \"completed\"}}\n" },
		{ 0 },
	};
	struct conn c = open_conn(s);
	struct json_object *ret = NULL, *ev = NULL, *v;
	char err[256];

	(void)state;
	assert_int_equal(qmp_execute(c.q, "query-status", NULL, T, &ret, err, sizeof(err)), 0);
	assert_true(json_object_object_get_ex(ret, "status", &v));
	assert_string_equal(json_object_get_string(v), "paused");
	json_object_put(ret);
	/* The completed event arrives after the reply; the active one is consumed with it. */
	assert_int_equal(
		qmp_wait_event(c.q, "MIGRATION", status_is, "completed", T, &ev, err, sizeof(err)),
		0);
	assert_true(status_is(json_object_object_get_ex(ev, "data", &v) ? v : NULL, "completed"));
	json_object_put(ev);
	assert_int_equal(qmp_wait_event(c.q, "MIGRATION", NULL, NULL, 50, NULL, err, sizeof(err)),
			 -ETIMEDOUT);
	/* STOP came before the reply and waits in the queue. */
	assert_int_equal(qmp_wait_event(c.q, "STOP", NULL, NULL, 0, NULL, err, sizeof(err)), 0);
	assert_int_equal(qmp_wait_event(c.q, "STOP", NULL, NULL, 50, NULL, err, sizeof(err)),
			 -ETIMEDOUT);
	assert_non_null(strstr(err, "STOP"));
	close_conn(&c);
}

static void test_event_queue_bounded(void **state)
{
	char *burst = malloc(80 * 64 + 64);
	size_t o = 0;
	struct step s[] = { { .cmd = "stop", .send = NULL }, { 0 } };
	struct conn c;
	char err[256];
	int n;

	(void)state;
	assert_non_null(burst);
	for (int i = 0; i < QMP_EVENT_QUEUE + 6; i++)
		o += (size_t)sprintf(burst + o,
				     "{\"event\": \"E\", \"data\": {\"status\": \"%d\"}}\n", i);
	strcpy(burst + o, OK);
	s[0].send = burst;
	c = open_conn(s);
	assert_int_equal(qmp_execute(c.q, "stop", NULL, T, NULL, err, sizeof(err)), 0);
	/* The six oldest made room for the newest. */
	assert_int_equal(qmp_wait_event(c.q, "E", status_is, "5", 0, NULL, err, sizeof(err)),
			 -ETIMEDOUT);
	assert_int_equal(qmp_wait_event(c.q, "E", status_is, "6", 0, NULL, err, sizeof(err)), 0);
	n = 0;
	while (qmp_wait_event(c.q, "E", NULL, NULL, 0, NULL, err, sizeof(err)) == 0)
		n++;
	assert_int_equal(n, QMP_EVENT_QUEUE - 1);
	close_conn(&c);
	free(burst);
}

static void test_error_replies(void **state)
{
	static const struct step s[] = {
		{ .cmd = "qom-get",
		  .args_has = "\"property\":\"mem-path\"",
		  .send = "{\"id\": %ID%, \"error\": {\"class\": \"GenericError\", \"desc\": \"Property 'memory-backend-memfd.mem-path' not found\"}}\n" },
		{ .cmd = "x-nope",
		  .send = "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command x-nope has not been found\"}, \"id\": %ID%}\n" },
		{ .cmd = "device_del",
		  .send = "{\"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device 'x' not found\"}, \"id\": %ID%}\n" },
		/* Unparseable input: QEMU answers without id. */
		{ .cmd = "stop",
		  .send = "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}\n" },
		{ .cmd = "cont", .send = OK },
		{ 0 },
	};
	struct conn c = open_conn(s);
	struct json_object *args = json_object_new_object();
	char err[256];

	(void)state;
	json_object_object_add(args, "path", json_object_new_string("/objects/ram0"));
	json_object_object_add(args, "property", json_object_new_string("mem-path"));
	assert_int_equal(qmp_execute(c.q, "qom-get", args, T, NULL, err, sizeof(err)), -EIO);
	assert_string_equal(err, "qom-get: Property 'memory-backend-memfd.mem-path' not found");
	/* args is borrowed: still ours. */
	assert_true(json_object_object_get_ex(args, "path", NULL));
	json_object_put(args);
	assert_int_equal(qmp_execute(c.q, "x-nope", NULL, T, NULL, err, sizeof(err)), -ENOSYS);
	assert_non_null(strstr(err, "has not been found"));
	assert_int_equal(qmp_execute(c.q, "device_del", NULL, T, NULL, err, sizeof(err)), -ENODEV);
	assert_int_equal(qmp_execute(c.q, "stop", NULL, T, NULL, err, sizeof(err)), -EIO);
	assert_string_equal(err, "stop: JSON parse error");
	/* An error reply leaves the connection usable. */
	assert_int_equal(qmp_execute(c.q, "cont", NULL, T, NULL, err, sizeof(err)), 0);
	close_conn(&c);
}

static void test_timeout_then_late_reply(void **state)
{
	static const struct step s[] = {
		{ .cmd = "query-status", .delay_ms = 300, .send = OK },
		{ .cmd = "cont", .send = "{\"return\": {\"second\": true}, \"id\": %ID%}\n" },
		{ 0 },
	};
	struct conn c = open_conn(s);
	struct json_object *ret = NULL;
	char err[256];

	(void)state;
	assert_int_equal(qmp_execute(c.q, "query-status", NULL, 50, NULL, err, sizeof(err)),
			 -ETIMEDOUT);
	assert_non_null(strstr(err, "timed out waiting for the reply to query-status"));
	/* The late reply to query-status is dropped by its id. */
	assert_int_equal(qmp_execute(c.q, "cont", NULL, T, &ret, err, sizeof(err)), 0);
	assert_true(json_object_object_get_ex(ret, "second", NULL));
	json_object_put(ret);
	close_conn(&c);
}

static void on_alarm(int sig)
{
	(void)sig;
}

static void test_eintr(void **state)
{
	static const struct step s[] = {
		{ .cmd = "stop", .delay_ms = 200, .send = OK },
		{ 0 },
	};
	struct sigaction sa = { .sa_handler = on_alarm }, old;
	struct itimerval it = { .it_interval = { 0, 20000 }, .it_value = { 0, 20000 } };
	struct itimerval off = { 0 };
	struct conn c = open_conn(s);
	char err[256];

	(void)state;
	/* No SA_RESTART: poll() and recv() see EINTR every 20 ms. */
	assert_int_equal(sigaction(SIGALRM, &sa, &old), 0);
	assert_int_equal(setitimer(ITIMER_REAL, &it, NULL), 0);
	assert_int_equal(qmp_execute(c.q, "stop", NULL, T, NULL, err, sizeof(err)), 0);
	setitimer(ITIMER_REAL, &off, NULL);
	sigaction(SIGALRM, &old, NULL);
	close_conn(&c);
}

/* ---- framing ---- */

static void test_long_lines(void **state)
{
	/* A reply just under the limit is fine; one byte more without a newline is not. */
	size_t big = QMP_LINE_MAX - 64;
	char *ok = malloc(big + 64), *huge = malloc(QMP_LINE_MAX + 64);
	struct step s[] = { { .cmd = "query-memdev" }, { .cmd = "query-memdev" }, { 0 } };
	struct json_object *ret = NULL;
	struct conn c;
	char err[256];
	int n;

	(void)state;
	assert_non_null(ok);
	assert_non_null(huge);
	n = sprintf(ok, "{\"id\": %%ID%%, \"return\": \"");
	memset(ok + n, 'a', big - (size_t)n - 3);
	strcpy(ok + big - 3, "\"}\n");
	memset(huge, 'x', QMP_LINE_MAX + 3);
	huge[QMP_LINE_MAX + 3] = '\0';
	s[0].send = ok;
	s[1].send = huge;
	c = open_conn(s);
	assert_int_equal(qmp_execute(c.q, "query-memdev", NULL, T, &ret, err, sizeof(err)), 0);
	assert_true((unsigned)json_object_get_string_len(ret) > QMP_LINE_MAX / 2);
	json_object_put(ret);
	assert_int_equal(qmp_execute(c.q, "query-memdev", NULL, T, NULL, err, sizeof(err)),
			 -EMSGSIZE);
	assert_non_null(strstr(err, "longer than 1048576 bytes"));
	/* The stream position is lost: later calls fail at once. */
	assert_int_equal(qmp_execute(c.q, "query-memdev", NULL, T, NULL, err, sizeof(err)), -EPIPE);
	close_conn(&c);
	free(ok);
	free(huge);
}

static void bad_reply(const char *reply, bool hangup, int want, const char *msg)
{
	struct step s[] = { { .cmd = "query-status", .send = reply, .hangup = hangup }, { 0 } };
	struct conn c = open_conn(s);
	char err[256];

	assert_int_equal(qmp_execute(c.q, "query-status", NULL, T, NULL, err, sizeof(err)), want);
	if (!strstr(err, msg))
		fail_msg("'%s' lacks '%s'", err, msg);
	close_conn(&c);
}

static void test_bad_replies(void **state)
{
	(void)state;
	bad_reply("{\"return\": {\n", false, -EPROTO, "not JSON");
	bad_reply("{\"return\": {}, \"id\": %ID%} x\n", false, -EPROTO, "not JSON");
	bad_reply("[1, 2]\n", false, -EPROTO, "not an object");
	bad_reply("{\"id\": %ID%}\n", false, -EPROTO, "neither return, error nor event");
	bad_reply("{\"return\": {}, \"id\": 99}\n", false, -EPROTO, "unexpected id 99");
	bad_reply("{\"return\": {}, \"id\": \"x\"}\n", false, -EPROTO, "unexpected id");
	bad_reply("{\"return\": {\"running\":", true, -ECONNRESET, "middle of a message");
	bad_reply(NULL, true, -ECONNRESET,
		  "closed the connection (waiting for the reply to query-status)");
}

static void test_peer_gone(void **state)
{
	static const struct step s[] = { { .hangup = true }, { 0 } };
	struct conn c = open_conn(s);
	char err[256];

	(void)state;
	/* Whether send() or recv() notices first, it is the same error. */
	assert_int_equal(qmp_execute(c.q, "cont", NULL, T, NULL, err, sizeof(err)), -ECONNRESET);
	assert_non_null(strstr(err, "QEMU closed the connection"));
	assert_int_equal(qmp_execute(c.q, "cont", NULL, T, NULL, err, sizeof(err)), -EPIPE);
	close_conn(&c);
}

/* ---- fd passing ---- */

static void test_execute_fd(void **state)
{
	static const struct step s[] = {
		{ .cmd = "getfd", .args_has = "\"fdname\":\"mig\"", .send = OK },
		{ .cmd = "query-status", .send = OK },
		{ 0 },
	};
	struct conn c = open_conn(s);
	struct json_object *args = json_object_new_object();
	char path[] = "/tmp/snapmr-test-qmp-XXXXXX", err[256];
	struct stat st;
	int fd;

	(void)state;
	fd = mkostemp(path, O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	json_object_object_add(args, "fdname", json_object_new_string("mig"));
	assert_int_equal(qmp_execute_fd(c.q, "getfd", args, fd, T, NULL, err, sizeof(err)), 0);
	json_object_put(args);
	assert_int_equal(qmp_execute(c.q, "query-status", NULL, T, NULL, err, sizeof(err)), 0);
	close_conn(&c);
	/* Exactly one descriptor, for the same file; ours stays open. */
	assert_int_equal(c.n_fds, 1);
	assert_int_equal(c.fd_st.st_dev, st.st_dev);
	assert_int_equal(c.fd_st.st_ino, st.st_ino);
	assert_true(fcntl(fd, F_GETFD) >= 0);
	close(fd);
	unlink(path);
}

/* ---- queries ---- */

static void test_query_status_migrate(void **state)
{
	static const struct step s[] = {
		{ .cmd = "query-status",
		  .send = "{\"return\": {\"running\": false, \"singlestep\": false, \"status\": \"paused\"}, \"id\": %ID%}\n" },
		{ .cmd = "query-status",
		  .send = "{\"return\": {\"running\": true, \"status\": \"running\"}, \"id\": %ID%}\n" },
		{ .cmd = "query-status",
		  .send = "{\"return\": {\"running\": false, \"status\": \"prelaunch\"}, \"id\": %ID%}\n" },
		{ .cmd = "query-status",
		  .send = "{\"return\": {\"status\": \"paused\"}, \"id\": %ID%}\n" },
		{ .cmd = "query-migrate", .send = OK },
		{ .cmd = "query-migrate",
		  .send = "{\"return\": {\"status\": \"active\", \"total-time\": 5}, \"id\": %ID%}\n" },
		{ .cmd = "query-migrate",
		  .send = "{\"return\": {\"status\": \"failed\", \"error-desc\": \"Channel error\"}, \"id\": %ID%}\n" },
		{ .cmd = "query-migrate", .send = "{\"return\": [], \"id\": %ID%}\n" },
		{ 0 },
	};
	struct conn c = open_conn(s);
	struct qmp_status st;
	struct qmp_migration m;
	char err[256];

	(void)state;
	assert_int_equal(qmp_query_status(c.q, T, &st, err, sizeof(err)), 0);
	assert_int_equal(st.state, QMP_VM_PAUSED);
	assert_false(st.running);
	assert_string_equal(st.status, "paused");
	assert_int_equal(qmp_query_status(c.q, T, &st, err, sizeof(err)), 0);
	assert_int_equal(st.state, QMP_VM_RUNNING);
	assert_int_equal(qmp_query_status(c.q, T, &st, err, sizeof(err)), 0);
	assert_int_equal(st.state, QMP_VM_OTHER);
	assert_string_equal(st.status, "prelaunch");
	assert_int_equal(qmp_query_status(c.q, T, &st, err, sizeof(err)), -EPROTO);
	assert_non_null(strstr(err, "query-status: unexpected reply"));

	assert_int_equal(qmp_query_migrate(c.q, T, &m, err, sizeof(err)), 0);
	assert_string_equal(m.status, "none");
	assert_false(m.active);
	assert_int_equal(qmp_query_migrate(c.q, T, &m, err, sizeof(err)), 0);
	assert_string_equal(m.status, "active");
	assert_true(m.active);
	assert_int_equal(qmp_query_migrate(c.q, T, &m, err, sizeof(err)), 0);
	assert_false(m.active);
	assert_string_equal(m.error_desc, "Channel error");
	assert_int_equal(qmp_query_migrate(c.q, T, &m, err, sizeof(err)), -EPROTO);
	close_conn(&c);
}

static void test_query_capability(void **state)
{
#define CAPS                                                                                      \
	"{\"return\": [{\"state\": false, \"capability\": \"xbzrle\"}, {\"state\": true, "        \
	"\"capability\": \"x-ignore-shared\"}, {\"state\": false, \"capability\": \"events\"}], " \
	"\"id\": %ID%}\n"
	static const struct step s[] = {
		{ .cmd = "query-migrate-capabilities", .send = CAPS },
		{ .cmd = "query-migrate-capabilities", .send = CAPS },
		{ .cmd = "query-migrate-capabilities", .send = CAPS },
		{ .cmd = "query-migrate-capabilities",
		  .send = "{\"return\": [{\"capability\": \"events\"}], \"id\": %ID%}\n" },
		{ 0 },
	};
	struct conn c = open_conn(s);
	bool present, on;
	char err[256];

	(void)state;
	assert_int_equal(
		qmp_query_capability(c.q, "x-ignore-shared", T, &present, &on, err, sizeof(err)),
		0);
	assert_true(present);
	assert_true(on);
	assert_int_equal(qmp_query_capability(c.q, "events", T, &present, &on, err, sizeof(err)),
			 0);
	assert_true(present);
	assert_false(on);
	assert_int_equal(
		qmp_query_capability(c.q, "mapped-ram", T, &present, &on, err, sizeof(err)), 0);
	assert_false(present);
	assert_int_equal(qmp_query_capability(c.q, "events", T, &present, &on, err, sizeof(err)),
			 -EPROTO);
	close_conn(&c);
#undef CAPS
}

static void test_query_memdevs(void **state)
{
	static const struct step s[] = {
		{ .cmd = "query-memdev",
		  .send = "{\"return\": [{\"id\": \"ram0\", \"size\": 67108864, \"merge\": true, \"dump\": true, \"prealloc\": false, \"share\": true, \"reserve\": true, \"host-nodes\": [], \"policy\": \"default\"},"
			  " {\"id\": \"ram1\", \"size\": 18446744073709547520, \"share\": false, \"host-nodes\": [], \"policy\": \"default\"},"
			  " {\"size\": 4096, \"share\": true}], \"id\": %ID%}\n" },
		{ .cmd = "qom-get",
		  .args_has = "\"path\":\"/objects/ram0\",\"property\":\"type\"",
		  .send = "{\"return\": \"memory-backend-file\", \"id\": %ID%}\n" },
		{ .cmd = "qom-get",
		  .args_has = "\"path\":\"/objects/ram0\",\"property\":\"mem-path\"",
		  .send = "{\"return\": \"/dev/shm/vm-ram0\", \"id\": %ID%}\n" },
		{ .cmd = "qom-get",
		  .args_has = "\"path\":\"/objects/ram1\",\"property\":\"type\"",
		  .send = "{\"return\": \"memory-backend-memfd\", \"id\": %ID%}\n" },
		/* QEMU 6.0: no share. */
		{ .cmd = "query-memdev",
		  .send = "{\"return\": [{\"id\": \"ram0\", \"size\": 4096}], \"id\": %ID%}\n" },
		/* The backend vanished between the two calls. */
		{ .cmd = "query-memdev",
		  .send = "{\"return\": [{\"id\": \"ram0\", \"size\": 4096, \"share\": true}], \"id\": %ID%}\n" },
		{ .cmd = "qom-get",
		  .send = "{\"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device '/objects/ram0' not found\"}, \"id\": %ID%}\n" },
		{ .cmd = "qom-get",
		  .args_has = "\"path\":\"/machine\"",
		  .send = "{\"return\": \"pc-q35-10.0-machine\", \"id\": %ID%}\n" },
		{ .cmd = "qom-get", .send = "{\"return\": \"none\", \"id\": %ID%}\n" },
		{ 0 },
	};
	struct conn c = open_conn(s);
	struct qmp_memdev *v = NULL;
	size_t n = 0;
	char err[256], *mt;

	(void)state;
	assert_int_equal(qmp_query_memdevs(c.q, T, &v, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 3);
	assert_string_equal(v[0].id, "ram0");
	assert_string_equal(v[0].type, "memory-backend-file");
	assert_string_equal(v[0].mem_path, "/dev/shm/vm-ram0");
	assert_int_equal(v[0].size, 64 << 20);
	assert_true(v[0].share);
	assert_string_equal(v[1].type, "memory-backend-memfd");
	assert_null(v[1].mem_path);
	assert_true(v[1].size == UINT64_MAX - 4095);
	assert_false(v[1].share);
	assert_null(v[2].id);
	assert_null(v[2].type);
	assert_int_equal(v[2].size, 4096);
	qmp_memdevs_free(v, n);
	assert_int_equal(qmp_query_memdevs(c.q, T, &v, &n, err, sizeof(err)), -EPROTO);
	assert_non_null(strstr(err, "before 6.1"));
	assert_int_equal(qmp_query_memdevs(c.q, T, &v, &n, err, sizeof(err)), -ENODEV);
	assert_non_null(strstr(err, "/objects/ram0"));
	assert_int_equal(qmp_query_machine_type(c.q, T, &mt, err, sizeof(err)), 0);
	assert_string_equal(mt, "pc-q35-10.0");
	free(mt);
	assert_int_equal(qmp_query_machine_type(c.q, T, &mt, err, sizeof(err)), 0);
	assert_string_equal(mt, "none");
	free(mt);
	close_conn(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_greeting, setup, teardown),
		cmocka_unit_test_setup_teardown(test_negotiation_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_greeting_is_busy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_qmp, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect_by_path, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ids_and_events, setup, teardown),
		cmocka_unit_test_setup_teardown(test_event_queue_bounded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_error_replies, setup, teardown),
		cmocka_unit_test_setup_teardown(test_timeout_then_late_reply, setup, teardown),
		cmocka_unit_test_setup_teardown(test_eintr, setup, teardown),
		cmocka_unit_test_setup_teardown(test_long_lines, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_replies, setup, teardown),
		cmocka_unit_test_setup_teardown(test_peer_gone, setup, teardown),
		cmocka_unit_test_setup_teardown(test_execute_fd, setup, teardown),
		cmocka_unit_test_setup_teardown(test_query_status_migrate, setup, teardown),
		cmocka_unit_test_setup_teardown(test_query_capability, setup, teardown),
		cmocka_unit_test_setup_teardown(test_query_memdevs, setup, teardown),
	};

	return cmocka_run_group_tests_name("qmp", tests, NULL, NULL);
}
