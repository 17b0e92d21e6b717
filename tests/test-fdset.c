// SPDX-License-Identifier: MIT
/*
 * Tests for tools/common/fdset: -add-fd parsing, /dev/fdset/N selection, fd:N, and the add-fd
 * socket protocol with every error case. Each test checks that no descriptor leaks.
 */
#include "fdopen.h"
#include "fdpass.h"
#include "fdproto-json.h"
#include "fdset.h"
#include "msg.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <setjmp.h>
#include <cmocka.h>

#define TMP_TEMPLATE "/var/tmp/snapmr-test-fdset-XXXXXX"

static int fds_before;

static int n_open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory's own descriptor */
}

static int setup(void **state)
{
	(void)state;
	snap_fdset_clear();
	fds_before = n_open_fds();
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	snap_fdset_clear();
	assert_int_equal(n_open_fds(), fds_before);
	return 0;
}

/* A temporary file under /var/tmp (a real file system, unlike a tmpfs /tmp). */
struct tmp {
	char path[sizeof(TMP_TEMPLATE)];
};

static void tmp_make(struct tmp *t)
{
	int fd;

	strcpy(t->path, TMP_TEMPLATE);
	fd = mkostemp(t->path, O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "data", 4), 4);
	close(fd);
}

/* Opens without O_CLOEXEC on purpose: -add-fd wants inherited-looking descriptors. */
static int tmp_open(const struct tmp *t, int flags)
{
	int fd = open(t->path, flags);

	assert_true(fd >= 0);
	return fd;
}

static ino_t ino_of(int fd)
{
	struct stat st;

	assert_int_equal(fstat(fd, &st), 0);
	return st.st_ino;
}

static bool is_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);

	return fl >= 0 && (fl & FD_CLOEXEC);
}

static bool is_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

static int n_registered(void)
{
	char buf[16];

	return snap_fdset_describe(buf, sizeof(buf));
}

/* ---- -add-fd ---- */

static void test_add_arg_good(void **state)
{
	struct snap_fdset_entry *v;
	char arg[128], err[256], desc[512];
	struct tmp t;
	int a, b, c;
	size_t n;

	(void)state;
	tmp_make(&t);
	a = tmp_open(&t, O_WRONLY);
	b = tmp_open(&t, O_RDONLY);
	c = tmp_open(&t, O_RDWR);

	snprintf(arg, sizeof(arg), "fd=%d,set=1,opaque=out-buffered", a);
	assert_int_equal(snap_fdset_add_arg(arg, err, sizeof(err)), 0);
	assert_false(is_open(a)); /* the registry took a dup and closed the original */
	snprintf(arg, sizeof(arg), "opaque=x,,y,set=2,fd=%d", b);
	assert_int_equal(snap_fdset_add_arg(arg, err, sizeof(err)), 0);
	snprintf(arg, sizeof(arg), "set=2,fd=%d", c);
	assert_int_equal(snap_fdset_add_arg(arg, NULL, 0), 0);

	assert_int_equal(snap_fdset_query(&v, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(v[0].set_id, 1);
	assert_int_equal(v[0].flags & O_ACCMODE, O_WRONLY);
	assert_string_equal(v[0].opaque, "out-buffered");
	assert_true(is_cloexec(v[0].fd));
	/* Set 2, newest first: c, then b. */
	assert_int_equal(v[1].set_id, 2);
	assert_int_equal(v[1].flags & O_ACCMODE, O_RDWR);
	assert_null(v[1].opaque);
	assert_int_equal(v[2].set_id, 2);
	assert_string_equal(v[2].opaque, "x,y");
	free(v);

	assert_int_equal(snap_fdset_describe(desc, sizeof(desc)), 3);
	assert_non_null(strstr(desc, "set 1: fd "));
	assert_non_null(strstr(desc, "O_WRONLY without O_DIRECT opaque \"out-buffered\""));
	assert_non_null(strstr(desc, "; set 2: "));

	snap_fdset_clear();
	assert_int_equal(n_registered(), 0);
	assert_int_equal(snap_fdset_query(&v, &n), 0);
	assert_int_equal(n, 0);
	assert_null(v);
	unlink(t.path);
}

struct bad_arg {
	const char *fmt; /* %d is replaced by a valid descriptor */
	int err;
	const char *substr;
};

static const struct bad_arg bad_args[] = {
	{ "", -EINVAL, "empty parameter" },
	{ "fd=%d", -EINVAL, "set=N is required" },
	{ "set=1", -EINVAL, "fd=N is required" },
	{ "fd=%d,set=1,", -EINVAL, "empty parameter" },
	{ "fd=%d,,set=1", -EINVAL, "fd must be a decimal number" }, /* ",," kept "set=1" in fd */
	{ "fd,set=1", -EINVAL, "parameter 'fd' needs a value" },
	{ "fd=%d,set=1,foo=bar", -EINVAL, "unknown parameter 'foo'" },
	{ "fd=%d,fd=%d,set=1", -EINVAL, "parameter 'fd' given twice" },
	{ "fd=%d,set=1,set=2", -EINVAL, "parameter 'set' given twice" },
	{ "fd=%d,set=1,opaque=a,opaque=b", -EINVAL, "parameter 'opaque' given twice" },
	{ "fd=x,set=1", -EINVAL, "fd must be a decimal number, not 'x'" },
	{ "fd=0x3,set=1", -EINVAL, "fd must be a decimal number" },
	{ "fd= %d,set=1", -EINVAL, "fd must be a decimal number" },
	{ "fd=99999999999,set=1", -EINVAL, "fd must be a decimal number" },
	{ "fd=%d,set=-1", -EINVAL, "set must be a non-negative decimal number, not '-1'" },
	{ "fd=%d,set=1x", -EINVAL, "set must be" },
	{ "fd=%d,set=99999999999999999999", -EINVAL, "set must be" },
	{ "fd=%d,set=", -EINVAL, "set must be" },
	{ "fd=2,set=1", -EINVAL, "fd 2 is a standard stream" },
	{ "fd=%d,set=1,opaque=a\nb", -EINVAL, "control characters" },
};

/* b->fmt with every "%d" replaced by fd (no printf: the template is data). */
static void expand(const char *tmpl, int fd, char *out, size_t len)
{
	size_t o = 0;

	for (const char *p = tmpl; *p && o + 12 < len; p++) {
		if (p[0] == '%' && p[1] == 'd') {
			o += (size_t)snprintf(out + o, len - o, "%d", fd);
			p++;
		} else {
			out[o++] = *p;
		}
	}
	out[o] = '\0';
}

static void test_add_arg_bad(void **state)
{
	char arg[128], err[256];
	struct tmp t;
	int fd, closed, cloexec;

	(void)state;
	tmp_make(&t);
	fd = tmp_open(&t, O_WRONLY);
	for (size_t i = 0; i < sizeof(bad_args) / sizeof(bad_args[0]); i++) {
		const struct bad_arg *b = &bad_args[i];

		expand(b->fmt, fd, arg, sizeof(arg));
		err[0] = '\0';
		assert_int_equal(snap_fdset_add_arg(arg, err, sizeof(err)), b->err);
		if (!strstr(err, b->substr))
			fail_msg("'%s': message '%s' lacks '%s'", arg, err, b->substr);
		assert_true(is_open(fd));
		assert_int_equal(n_registered(), 0);
	}

	/* Not open: the message names the descriptor. */
	closed = tmp_open(&t, O_RDONLY);
	close(closed);
	snprintf(arg, sizeof(arg), "fd=%d,set=1", closed);
	assert_int_equal(snap_fdset_add_arg(arg, err, sizeof(err)), -EBADF);
	snprintf(arg, sizeof(arg), "fd %d is not open", closed);
	assert_string_equal(err, arg);

	/* Close-on-exec: not inherited, so already in use here. */
	cloexec = open(t.path, O_RDONLY | O_CLOEXEC);
	assert_true(cloexec >= 0);
	snprintf(arg, sizeof(arg), "fd=%d,set=1", cloexec);
	assert_int_equal(snap_fdset_add_arg(arg, err, sizeof(err)), -EBUSY);
	assert_non_null(strstr(err, "already in use"));
	assert_true(is_open(cloexec));
	close(cloexec);

	/* The same number twice: the second finds it closed or taken by the registry. */
	snprintf(arg, sizeof(arg), "fd=%d,set=1", fd);
	assert_int_equal(snap_fdset_add_arg(arg, err, sizeof(err)), 0);
	{
		int r = snap_fdset_add_arg(arg, err, sizeof(err));

		assert_true(r == -EBADF || r == -EBUSY);
	}
	assert_int_equal(n_registered(), 1);

	/* A short error buffer is truncated with a marker; NULL is accepted. */
	assert_int_equal(snap_fdset_add_arg("fd=x,set=1", err, 8), -EINVAL);
	assert_string_equal(err, "'fd=...");
	assert_int_equal(snap_fdset_add_arg("fd=x,set=1", NULL, 0), -EINVAL);
	unlink(t.path);
}

/* ---- /dev/fdset/N ---- */

static void test_select_newest_first(void **state)
{
	struct tmp ta, tb, tc;
	int a, b, c, r, fd = -7;
	int64_t set;
	char err[512];

	(void)state;
	tmp_make(&ta);
	tmp_make(&tb);
	tmp_make(&tc);
	a = tmp_open(&ta, O_WRONLY);
	b = tmp_open(&tb, O_WRONLY);
	c = tmp_open(&tc, O_WRONLY);
	r = tmp_open(&ta, O_RDONLY);
	assert_int_equal(snap_fdset_add_fd(1, a, "a", &set, err, sizeof(err)), 0);
	assert_int_equal(set, 1);
	assert_int_equal(snap_fdset_add_fd(1, b, "b", NULL, err, sizeof(err)), 0);
	assert_int_equal(snap_fdset_add_fd(1, c, "c", NULL, err, sizeof(err)), 0);
	assert_int_equal(snap_fdset_add_fd(1, r, "r", NULL, err, sizeof(err)), 0);
	assert_true(is_cloexec(a));

	/* The newest O_WRONLY one is c; r (newer still) has the wrong access mode. */
	strcpy(err, "untouched");
	assert_int_equal(snap_io_open("/dev/fdset/1", O_WRONLY, 0, &fd, err, sizeof(err)), 0);
	assert_string_equal(err, "untouched"); /* errbuf is written only on failure */
	assert_int_equal(ino_of(fd), ino_of(c));
	assert_true(fd != a && fd != b && fd != c && fd != r);
	assert_true(is_cloexec(fd));
	close(fd);
	/* O_CREAT plays no part in matching. */
	assert_int_equal(
		snap_io_open("/dev/fdset/1", O_WRONLY | O_CREAT, 0600, &fd, err, sizeof(err)), 0);
	assert_int_equal(ino_of(fd), ino_of(c));
	close(fd);
	assert_int_equal(snap_io_open("/dev/fdset/1", O_RDONLY, 0, &fd, err, sizeof(err)), 0);
	assert_int_equal(ino_of(fd), ino_of(r));
	close(fd);

	/* O_RDWR is never served by O_RDONLY or O_WRONLY descriptors; fd is untouched. */
	fd = -7;
	assert_int_equal(snap_io_open("/dev/fdset/1", O_RDWR, 0, &fd, err, sizeof(err)), -EACCES);
	assert_int_equal(fd, -7);

	/* Lowest free id for a set-less add, as QMP add-fd does. */
	a = tmp_open(&ta, O_RDONLY);
	assert_int_equal(snap_fdset_add_fd(-1, a, NULL, &set, err, sizeof(err)), 0);
	assert_int_equal(set, 0);
	b = tmp_open(&ta, O_RDONLY);
	assert_int_equal(snap_fdset_add_fd(-1, b, NULL, &set, err, sizeof(err)), 0);
	assert_int_equal(set, 2);
	/* A descriptor already held cannot be added again, and stays held. */
	assert_int_equal(snap_fdset_add_fd(3, b, NULL, &set, err, sizeof(err)), -EEXIST);
	assert_non_null(strstr(err, "already in fd set 2"));
	assert_true(is_open(b));
	assert_int_equal(snap_fdset_add_fd(3, 999, NULL, NULL, err, sizeof(err)), -EBADF);

	assert_int_equal(snap_io_open("/dev/fdset/7", O_RDONLY, 0, &fd, err, sizeof(err)), -ENOENT);
	assert_string_equal(err, "fd set 7 does not exist (sets: 0 1 2)");
	unlink(ta.path);
	unlink(tb.path);
	unlink(tc.path);
}

static void test_direct_match(void **state)
{
	char err[1024], spec[32];
	struct tmp t;
	int buf, dir, buf2, dir2, fd;

	(void)state;
	tmp_make(&t);
	dir = open(t.path, O_WRONLY | O_DIRECT | O_CLOEXEC);
	if (dir < 0 && errno == EINVAL) {
		unlink(t.path);
		print_message("skipped: the file system of /var/tmp refuses O_DIRECT\n");
		skip();
	}
	assert_true(dir >= 0);
	buf = tmp_open(&t, O_WRONLY);
	/* Set 1: buffered added first, O_DIRECT newest. */
	assert_int_equal(snap_fdset_add_fd(1, buf, "out-buffered", NULL, err, sizeof(err)), 0);
	assert_int_equal(snap_fdset_add_fd(1, dir, "out-direct", NULL, err, sizeof(err)), 0);
	/* Set 2: the other order. */
	dir2 = open(t.path, O_WRONLY | O_DIRECT | O_CLOEXEC);
	assert_true(dir2 >= 0);
	buf2 = tmp_open(&t, O_WRONLY);
	assert_int_equal(snap_fdset_add_fd(2, dir2, NULL, NULL, err, sizeof(err)), 0);
	assert_int_equal(snap_fdset_add_fd(2, buf2, NULL, NULL, err, sizeof(err)), 0);

	for (int set = 1; set <= 2; set++) {
		snprintf(spec, sizeof(spec), "/dev/fdset/%d", set);
		assert_int_equal(snap_io_open(spec, O_WRONLY, 0, &fd, err, sizeof(err)), 0);
		assert_false(fcntl(fd, F_GETFL) & O_DIRECT);
		close(fd);
		assert_int_equal(snap_io_open(spec, O_WRONLY | O_DIRECT, 0, &fd, err, sizeof(err)),
				 0);
		assert_true(fcntl(fd, F_GETFL) & O_DIRECT);
		close(fd);
		assert_int_equal(snap_io_open(spec, O_RDONLY | O_DIRECT, 0, &fd, err, sizeof(err)),
				 -EACCES);
	}

	/* Set 3 has only a buffered descriptor: the QEMU 10.0.2 crash case. */
	buf = tmp_open(&t, O_WRONLY);
	assert_int_equal(snap_fdset_add_fd(3, buf, "only-buffered", NULL, err, sizeof(err)), 0);
	assert_int_equal(
		snap_io_open("/dev/fdset/3", O_WRONLY | O_DIRECT, 0, &fd, err, sizeof(err)),
		-EACCES);
	assert_non_null(strstr(err, "has no descriptor open O_WRONLY|O_DIRECT"));
	assert_non_null(strstr(err, "an O_DIRECT descriptor needs its own open() of the file"));
	/* Set 4 has only an O_DIRECT one. */
	dir = open(t.path, O_WRONLY | O_DIRECT | O_CLOEXEC);
	assert_true(dir >= 0);
	assert_int_equal(snap_fdset_add_fd(4, dir, NULL, NULL, err, sizeof(err)), 0);
	assert_int_equal(snap_io_open("/dev/fdset/4", O_WRONLY, 0, &fd, err, sizeof(err)), -EACCES);
	assert_non_null(strstr(err, "add a descriptor opened without O_DIRECT"));

	/* fd:N must agree on O_DIRECT too: toggling it would affect every holder. */
	dir = open(t.path, O_WRONLY | O_DIRECT | O_CLOEXEC);
	assert_true(dir >= 0);
	snprintf(spec, sizeof(spec), "fd:%d", dir);
	assert_int_equal(snap_io_open(spec, O_WRONLY | O_DIRECT, 0, &fd, NULL, 0), 0);
	assert_true(fcntl(fd, F_GETFL) & O_DIRECT);
	close(fd);
	assert_int_equal(snap_io_open(spec, O_WRONLY, 0, &fd, err, sizeof(err)), -EACCES);
	assert_non_null(strstr(err, "with O_DIRECT but buffered I/O was asked for"));
	close(dir);
	unlink(t.path);
}

static void test_flags_applied(void **state)
{
	char err[512];
	struct tmp t;
	struct stat st;
	int w, fd;

	(void)state;
	tmp_make(&t);
	w = tmp_open(&t, O_WRONLY | O_APPEND); /* like a shell's 3>>file */
	assert_int_equal(snap_fdset_add_fd(1, w, NULL, NULL, err, sizeof(err)), 0);

	/* F_SETFL applies the flags asked for, clearing O_APPEND (which breaks pwrite). */
	assert_int_equal(snap_io_open("/dev/fdset/1", O_WRONLY, 0, &fd, err, sizeof(err)), 0);
	assert_false(fcntl(fd, F_GETFL) & O_APPEND);
	assert_false(fcntl(w, F_GETFL) & O_APPEND); /* shared open file description */
	close(fd);
	assert_int_equal(
		snap_io_open("/dev/fdset/1", O_WRONLY | O_NONBLOCK, 0, &fd, err, sizeof(err)), 0);
	assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
	close(fd);

	/* O_SYNC must agree; it cannot be changed later. */
	assert_int_equal(snap_io_open("/dev/fdset/1", O_WRONLY | O_SYNC, 0, &fd, err, sizeof(err)),
			 -EINVAL);
	assert_non_null(strstr(err, "O_SYNC"));

	/* O_TRUNC truncates, as open() would. */
	assert_int_equal(stat(t.path, &st), 0);
	assert_int_equal(st.st_size, 4);
	assert_int_equal(snap_io_open("/dev/fdset/1", O_WRONLY | O_TRUNC, 0, &fd, err, sizeof(err)),
			 0);
	close(fd);
	assert_int_equal(stat(t.path, &st), 0);
	assert_int_equal(st.st_size, 0);
	unlink(t.path);
}

static void test_no_match_message(void **state)
{
	char err[1024], want[256];
	struct tmp t;
	int a, b, c, fd = -7;
	char *pa, *pb, *pc;

	(void)state;
	tmp_make(&t);
	a = tmp_open(&t, O_WRONLY);
	b = tmp_open(&t, O_RDONLY);
	c = tmp_open(&t, O_RDWR);
	assert_int_equal(snap_fdset_add_fd(1, a, "out-buffered", NULL, err, sizeof(err)), 0);
	assert_int_equal(snap_fdset_add_fd(1, b, NULL, NULL, err, sizeof(err)), 0);
	assert_int_equal(snap_fdset_add_fd(1, c, "rw", NULL, err, sizeof(err)), 0);

	assert_int_equal(
		snap_io_open("/dev/fdset/1", O_WRONLY | O_DIRECT, 0, &fd, err, sizeof(err)),
		-EACCES);
	assert_int_equal(fd, -7);
	assert_non_null(strstr(err,
			       "fd set 1 has no descriptor open O_WRONLY|O_DIRECT (access mode "
			       "and O_DIRECT must both match); it holds, newest first: "));
	snprintf(want, sizeof(want), "fd %d O_WRONLY without O_DIRECT opaque \"out-buffered\"", a);
	assert_non_null(pa = strstr(err, want));
	snprintf(want, sizeof(want), "fd %d O_RDONLY without O_DIRECT (no opaque)", b);
	assert_non_null(pb = strstr(err, want));
	snprintf(want, sizeof(want), "fd %d O_RDWR without O_DIRECT opaque \"rw\"", c);
	assert_non_null(pc = strstr(err, want));
	assert_true(pc < pb && pb < pa);
	assert_non_null(strstr(err, "needs its own open()"));

	/* The same set serves the plain requests. */
	assert_int_equal(snap_io_open("/dev/fdset/1", O_WRONLY, 0, &fd, err, sizeof(err)), 0);
	close(fd);
	assert_int_equal(snap_io_open("/dev/fdset/1", O_RDWR, 0, &fd, err, sizeof(err)), 0);
	close(fd);

	/* Malformed set paths are never opened as paths. */
	static const char *const bad[] = { "/dev/fdset/", "/dev/fdset/x", "/dev/fdset/1/2",
					   "/dev/fdset/-1", "/dev/fdset/1 " };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(snap_io_open(bad[i], O_RDONLY, 0, &fd, err, sizeof(err)), -EINVAL);
		assert_non_null(strstr(err, "expected /dev/fdset/N"));
	}
	snap_fdset_clear();
	assert_int_equal(snap_io_open("/dev/fdset/0", O_RDONLY, 0, &fd, err, sizeof(err)), -ENOENT);
	assert_string_equal(err, "fd set 0 does not exist (no fd sets were added)");
	unlink(t.path);
}

/* ---- fd:N and paths ---- */

static void test_fd_spec(void **state)
{
	char spec[32], err[256], want[128];
	struct tmp t;
	int ro, rw, fd = -7, closed;

	(void)state;
	tmp_make(&t);
	ro = tmp_open(&t, O_RDONLY);
	rw = tmp_open(&t, O_RDWR);

	snprintf(spec, sizeof(spec), "fd:%d", ro);
	assert_true(snap_io_is_fd_spec(spec));
	assert_int_equal(snap_io_open(spec, O_RDONLY, 0, &fd, err, sizeof(err)), 0);
	assert_true(fd != ro);
	assert_true(is_cloexec(fd));
	assert_int_equal(ino_of(fd), ino_of(ro));
	close(fd);
	assert_true(is_open(ro)); /* N stays open */
	fd = -7;
	assert_int_equal(snap_io_open(spec, O_WRONLY, 0, &fd, err, sizeof(err)), -EACCES);
	assert_int_equal(fd, -7);
	snprintf(want, sizeof(want), "fd %d is open O_RDONLY, which cannot serve O_WRONLY", ro);
	assert_string_equal(err, want);

	/* O_RDWR serves every access mode. */
	snprintf(spec, sizeof(spec), "fd:%d", rw);
	assert_int_equal(snap_io_open(spec, O_WRONLY, 0, &fd, err, sizeof(err)), 0);
	close(fd);
	assert_int_equal(snap_io_open(spec, O_RDONLY, 0, &fd, err, sizeof(err)), 0);
	close(fd);

	closed = tmp_open(&t, O_RDONLY);
	close(closed);
	snprintf(spec, sizeof(spec), "fd:%d", closed);
	assert_int_equal(snap_io_open(spec, O_RDONLY, 0, &fd, err, sizeof(err)), -EBADF);
	snprintf(want, sizeof(want), "fd %d is not open", closed);
	assert_string_equal(err, want);

	static const char *const bad[] = { "fd:",   "fd:x",  "fd:-1",
					   "fd:3x", "fd: 3", "fd:99999999999" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(snap_io_open(bad[i], O_RDONLY, 0, &fd, err, sizeof(err)), -EINVAL);
		assert_non_null(strstr(err, "expected fd:N"));
	}

	/* Plain paths. */
	assert_false(snap_io_is_fd_spec(t.path));
	assert_false(snap_io_is_fd_spec("/dev/fd/3"));
	assert_false(snap_io_is_fd_spec(NULL));
	assert_true(snap_io_is_fd_spec("/dev/fdset/x"));
	assert_int_equal(snap_io_open(t.path, O_RDONLY, 0, &fd, err, sizeof(err)), 0);
	assert_true(is_cloexec(fd));
	close(fd);
	unlink(t.path);
	assert_int_equal(snap_io_open(t.path, O_RDONLY, 0, &fd, err, sizeof(err)), -ENOENT);
	/* The caller names the path; the message does not repeat it. */
	assert_null(strstr(err, t.path));
	assert_non_null(strstr(err, strerror(ENOENT)));
	assert_int_equal(snap_io_open("", O_RDONLY, 0, &fd, err, sizeof(err)), -EINVAL);
	close(ro);
	close(rw);
}

/* ---- the socket protocol ---- */

/* Sends len bytes in one sendmsg with n_fds copies of fd attached. */
static int send_with_fds(int sock, const char *data, size_t len, int fd, int n_fds)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * 32)];
	} ctl;
	struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (n_fds > 32)
		return -EINVAL;
	if (n_fds) {
		struct cmsghdr *c;

		memset(&ctl, 0, sizeof(ctl));
		mh.msg_control = ctl.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n_fds);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n_fds);
		for (int i = 0; i < n_fds; i++)
			memcpy(CMSG_DATA(c) + (size_t)i * sizeof(int), &fd, sizeof(int));
	}
	return sendmsg(sock, &mh, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -errno;
}

static void send_line(int sock, const char *line, int fd, int n_fds)
{
	assert_int_equal(send_with_fds(sock, line, strlen(line), fd, n_fds), 0);
}

/* Reads one reply line (newline stripped) in blocking mode; -1 at EOF. */
static int read_reply(int sock, char *buf, size_t len)
{
	size_t n = 0;

	while (n + 1 < len) {
		char c;
		ssize_t r = recv(sock, &c, 1, 0);

		if (r <= 0)
			return -1;
		if (c == '\n')
			break;
		buf[n++] = c;
	}
	buf[n] = '\0';
	return 0;
}

/* Everything the tool wrote so far, without waiting. */
static void read_pending(int sock, char *buf, size_t len)
{
	size_t n = 0;
	ssize_t r;

	while (n + 1 < len && (r = recv(sock, buf + n, len - 1 - n, MSG_DONTWAIT)) > 0)
		n += (size_t)r;
	buf[n] = '\0';
}

struct manager {
	int sock;
	int fd_a, fd_b;
	char replies[6][256];
	int n_replies;
	int err;
};

/* Talks in lockstep: one line, then waits for its answer, like a real manager. */
static void *manager_main(void *arg)
{
	struct manager *m = arg;
	static const char json_add[] = "{\"execute\": \"add-fd\", \"arguments\": {\"fdset-id\": 5, "
				       "\"opaque\": \"q\\\"\\u00e9\"}, \"id\": \"x1\"}\n";
	const struct {
		const char *line;
		int fd;
	} steps[] = {
		{ "add-fd set=1 opaque=out-buffered\n", m->fd_a },
		{ "add-fd opaque=in set=1\n", m->fd_b },
		{ "add-fd\n", m->fd_b },
		{ json_add, m->fd_a },
		{ "start\n", -1 },
	};

	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		const char *l = steps[i].line;

		m->err = send_with_fds(m->sock, l, strlen(l), steps[i].fd, steps[i].fd >= 0);
		if (m->err)
			return NULL;
		if (read_reply(m->sock, m->replies[m->n_replies], sizeof(m->replies[0])) < 0) {
			m->err = -EPIPE;
			return NULL;
		}
		m->n_replies++;
	}
	/* The final result line. */
	if (read_reply(m->sock, m->replies[m->n_replies], sizeof(m->replies[0])) < 0)
		m->err = -EPIPE;
	else
		m->n_replies++;
	return NULL;
}

static void test_recv_lockstep(void **state)
{
	struct snap_fdset_entry *v;
	struct manager m = { 0 };
	struct tmp ta, tb;
	pthread_t th;
	char err[512];
	unsigned n_fds = 0;
	int sv[2], fd;
	size_t n;

	(void)state;
	tmp_make(&ta);
	tmp_make(&tb);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	m.sock = sv[0];
	m.fd_a = tmp_open(&ta, O_WRONLY);
	m.fd_b = tmp_open(&tb, O_RDONLY);
	assert_int_equal(pthread_create(&th, NULL, manager_main, &m), 0);

	if (snap_fdset_recv(sv[1], 10000, &n_fds, err, sizeof(err)) < 0)
		fail_msg("%s", err);
	assert_int_equal(n_fds, 4);
	assert_int_equal(snap_fdset_send_result(sv[1], "{\"status\": \"ok\"}"), 0);
	pthread_join(th, NULL);
	assert_int_equal(m.err, 0);
	assert_int_equal(m.n_replies, 6);
	assert_true(!strncmp(m.replies[0], "ok set=1 fd=", 12));
	assert_true(!strncmp(m.replies[1], "ok set=1 fd=", 12));
	assert_true(!strncmp(m.replies[2], "ok set=0 fd=", 12)); /* lowest free id */
	assert_true(!strncmp(m.replies[3], "{\"return\": {\"fdset-id\": 5, \"fd\": ", 33));
	assert_non_null(strstr(m.replies[3], "}, \"id\": \"x1\"}"));
	assert_string_equal(m.replies[4], "ok");
	assert_string_equal(m.replies[5], "{\"status\": \"ok\"}");

	assert_int_equal(snap_fdset_query(&v, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(v[0].set_id, 0);
	assert_int_equal(v[1].set_id, 1);
	assert_string_equal(v[1].opaque, "in"); /* newest first */
	assert_string_equal(v[2].opaque, "out-buffered");
	assert_int_equal(v[3].set_id, 5);
	assert_string_equal(v[3].opaque, "q\"\xc3\xa9");
	for (size_t i = 0; i < n; i++)
		assert_true(is_cloexec(v[i].fd));
	free(v);

	assert_int_equal(snap_io_open("/dev/fdset/1", O_WRONLY, 0, &fd, err, sizeof(err)), 0);
	assert_int_equal(ino_of(fd), ino_of(m.fd_a));
	close(fd);
	assert_int_equal(snap_io_open("/dev/fdset/1", O_RDONLY, 0, &fd, err, sizeof(err)), 0);
	assert_int_equal(ino_of(fd), ino_of(m.fd_b));
	close(fd);

	/* Only a final newline is allowed in a result line. */
	assert_int_equal(snap_fdset_send_result(sv[1], "{}\n{}"), -EINVAL);
	close(m.fd_a);
	close(m.fd_b);
	close(sv[0]);
	close(sv[1]);
	unlink(ta.path);
	unlink(tb.path);
}

struct step {
	const char *data; /* sent as is, in one sendmsg */
	int n_fds;
};

struct recv_case {
	const char *name;
	struct step steps[4];
	bool eof;	/* the manager shuts down its side after the steps */
	int timeout_ms; /* 0: 2000 */
	int err;
	const char *substr; /* in the error message and in the reply */
};

static const struct recv_case recv_cases[] = {
	{
		.name = "no fd",
		.steps = { { "add-fd set=1\n", 0 } },
		.err = -EPROTO,
		.substr = "add-fd came with 0 descriptor(s); send exactly one",
	},
	{
		.name = "two fds",
		.steps = { { "add-fd set=1\n", 2 } },
		.err = -EPROTO,
		.substr = "add-fd came with 2 descriptor(s)",
	},
	{
		.name = "fd on start",
		.steps = { { "add-fd set=1\n", 1 }, { "start\n", 1 } },
		.err = -EPROTO,
		.substr = "start came with 1 descriptor(s); it takes none",
	},
	{
		.name = "fd on a later byte",
		.steps = { { "add-fd se", 1 }, { "t=1\n", 1 } },
		.err = -EPROTO,
		.substr = "add-fd came with 2 descriptor(s)",
	},
	{
		.name = "truncated control data",
		.steps = { { "add-fd set=1\n", 20 } },
		.err = -EPROTO,
		.substr = "control data truncated",
	},
	{
		.name = "eof before start",
		.steps = { { "add-fd set=1\n", 1 } },
		.eof = true,
		.err = -ECONNRESET,
		.substr = "the manager closed the connection before start",
	},
	{
		.name = "eof mid-line",
		.steps = { { "add-fd set=1\n", 1 }, { "add-", 1 } },
		.eof = true,
		.err = -ECONNRESET,
		.substr = "in the middle of a line",
	},
	{
		.name = "timeout",
		.steps = { { "add-fd set=1\n", 1 } },
		.timeout_ms = 100,
		.err = -ETIMEDOUT,
		.substr = "timed out waiting for the manager",
	},
	{
		.name = "empty line",
		.steps = { { "\n", 0 } },
		.err = -EINVAL,
		.substr = "empty line",
	},
	{
		.name = "unknown command",
		.steps = { { "frob\n", 0 } },
		.err = -EINVAL,
		.substr = "unknown command 'frob' (add-fd, start)",
	},
	{
		.name = "bad set",
		.steps = { { "add-fd set=x\n", 1 } },
		.err = -EINVAL,
		.substr = "set must be a non-negative decimal number, not 'x'",
	},
	{
		.name = "unknown key",
		.steps = { { "add-fd color=red\n", 1 } },
		.err = -EINVAL,
		.substr = "unknown key 'color'",
	},
	{
		.name = "key twice",
		.steps = { { "add-fd set=1 set=2\n", 1 } },
		.err = -EINVAL,
		.substr = "set given twice",
	},
	{
		.name = "no value",
		.steps = { { "add-fd opaque=\n", 1 } },
		.err = -EINVAL,
		.substr = "expected key=value",
	},
	{
		.name = "start with args",
		.steps = { { "start now\n", 0 } },
		.err = -EINVAL,
		.substr = "start takes no arguments",
	},
	{
		.name = "control character",
		.steps = { { "add-fd\rset=1\n", 1 } },
		.err = -EINVAL,
		.substr = "control character 0x0d",
	},
	{
		.name = "json unknown parameter",
		.steps = { { "{\"execute\":\"add-fd\",\"arguments\":{\"fdset-id\":1,\"bogus\":2}}"
			     "\n",
			     1 } },
		.err = -EINVAL,
		.substr = "parameter 'bogus' is unexpected",
	},
	{
		.name = "json negative id",
		.steps = { { "{\"execute\":\"add-fd\",\"arguments\":{\"fdset-id\":-1}}\n", 1 } },
		.err = -EINVAL,
		.substr = "expected a non-negative integer",
	},
	{
		.name = "json unknown command",
		.steps = { { "{\"execute\":\"cont\"}\n", 0 } },
		.err = -EINVAL,
		.substr = "the command 'cont' has not been found",
	},
	{
		.name = "json trailing text",
		.steps = { { "{\"execute\":\"start\"} x\n", 0 } },
		.err = -EINVAL,
		.substr = "text after the object",
	},
	{
		.name = "json key twice",
		.steps = { { "{\"execute\":\"start\",\"execute\":\"start\"}\n", 0 } },
		.err = -EINVAL,
		.substr = "key 'execute' given twice",
	},
	{
		.name = "json no fd",
		.steps = { { "{\"execute\":\"add-fd\"}\n", 0 } },
		.err = -EPROTO,
		.substr = "add-fd came with 0 descriptor(s)",
	},
	{
		.name = "json control in opaque",
		.steps = { { "{\"execute\":\"add-fd\",\"arguments\":{\"opaque\":\"a\\nb\"}}\n",
			     1 } },
		.err = -EINVAL,
		.substr = "opaque must not contain control characters",
	},
	{
		.name = "json start with args",
		.steps = { { "{\"execute\":\"start\",\"arguments\":{\"fdset-id\":1}}\n", 0 } },
		.err = -EINVAL,
		.substr = "start takes no arguments",
	},
	{
		.name = "json bad escape",
		.steps = { { "{\"execute\":\"add-fd\",\"arguments\":{\"opaque\":\"\\u0000\"}}\n",
			     1 } },
		.err = -EINVAL,
		.substr = "\\u0000 and surrogate escapes are not supported",
	},
};

/* Sends the steps up front (the socket buffer holds them), then runs the receiver. */
static void run_case(const struct recv_case *c)
{
	char err[512], out[2048];
	struct tmp t;
	int sv[2], f, r;

	tmp_make(&t);
	f = tmp_open(&t, O_RDONLY);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	for (size_t i = 0; i < 4 && c->steps[i].data; i++)
		send_line(sv[0], c->steps[i].data, f, c->steps[i].n_fds);
	close(f);
	if (c->eof)
		shutdown(sv[0], SHUT_WR);
	err[0] = '\0';
	r = snap_fdset_recv(sv[1], c->timeout_ms ? c->timeout_ms : 2000, NULL, err, sizeof(err));
	if (r != c->err)
		fail_msg("%s: got %d (%s), want %d", c->name, r, err, c->err);
	if (!strstr(err, c->substr))
		fail_msg("%s: message '%s' lacks '%s'", c->name, err, c->substr);
	assert_int_equal(n_registered(), 0);
	read_pending(sv[0], out, sizeof(out));
	if (c->steps[0].data[0] == '{') {
		if (!strstr(out, "{\"error\": {\"class\": \"GenericError\", \"desc\": \""))
			fail_msg("%s: reply '%s' is not a QMP error", c->name, out);
	} else if (!strstr(out, "error ") || !strstr(out, c->substr)) {
		fail_msg("%s: reply '%s' lacks 'error %s'", c->name, out, c->substr);
	}
	close(sv[0]);
	close(sv[1]);
	unlink(t.path);
}

static void test_recv_errors(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(recv_cases) / sizeof(recv_cases[0]); i++) {
		int before = n_open_fds();

		run_case(&recv_cases[i]);
		if (n_open_fds() != before)
			fail_msg("%s: descriptors leaked", recv_cases[i].name);
	}
}

static void test_recv_overlong(void **state)
{
	char *line = malloc(SNAP_FDSET_LINE_MAX + 100), err[256];
	struct tmp t;
	int sv[2], f;

	(void)state;
	assert_non_null(line);
	memset(line, 'x', SNAP_FDSET_LINE_MAX + 99);
	line[SNAP_FDSET_LINE_MAX + 99] = '\0';
	tmp_make(&t);
	f = tmp_open(&t, O_RDONLY);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	send_line(sv[0], line, f, 1);
	close(f);
	assert_int_equal(snap_fdset_recv(sv[1], 2000, NULL, err, sizeof(err)), -EMSGSIZE);
	assert_string_equal(err, "line longer than 4096 bytes");
	free(line);
	close(sv[0]);
	close(sv[1]);
	unlink(t.path);
}

/* Past SNAP_FDSET_RECV_MAX_FDS the session fails and drops all it received. */
static void test_recv_too_many(void **state)
{
	char err[256];
	struct tmp t;
	int sv[2], f;

	(void)state;
	tmp_make(&t);
	f = tmp_open(&t, O_RDONLY);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	for (int i = 0; i <= SNAP_FDSET_RECV_MAX_FDS; i++)
		send_line(sv[0], "add-fd set=1\n", f, 1);
	send_line(sv[0], "start\n", f, 0);
	close(f);
	assert_int_equal(snap_fdset_recv(sv[1], 5000, NULL, err, sizeof(err)), -E2BIG);
	assert_string_equal(err, "more than 64 descriptors");
	assert_int_equal(n_registered(), 0);
	close(sv[0]);
	close(sv[1]);

	/* Exactly the limit is fine. */
	f = tmp_open(&t, O_RDONLY);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	for (int i = 0; i < SNAP_FDSET_RECV_MAX_FDS; i++)
		send_line(sv[0], "add-fd set=1\n", f, 1);
	send_line(sv[0], "start\n", f, 0);
	close(f);
	assert_int_equal(snap_fdset_recv(sv[1], 5000, NULL, err, sizeof(err)), 0);
	assert_int_equal(n_registered(), SNAP_FDSET_RECV_MAX_FDS);
	close(sv[0]);
	close(sv[1]);
	unlink(t.path);
}

/* A manager may write everything and close at once; unsent replies are not errors. */
static void test_recv_manager_closed(void **state)
{
	struct snap_fdset_entry *v;
	unsigned n_fds;
	struct tmp t;
	int sv[2], f;
	size_t n;

	(void)state;
	tmp_make(&t);
	f = tmp_open(&t, O_WRONLY);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	send_line(sv[0], "add-fd set=3 opaque=libvirt-outgoing-migrate-fd\n", f, 1);
	send_line(sv[0], "{\"execute\":\"start\",\"id\":7}\n", f, 0);
	close(f);
	close(sv[0]);
	assert_int_equal(snap_fdset_recv(sv[1], 2000, &n_fds, NULL, 0), 0);
	assert_int_equal(n_fds, 1);
	assert_int_equal(snap_fdset_send_result(sv[1], "{}"), -EPIPE);
	assert_int_equal(snap_fdset_query(&v, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(v[0].set_id, 3);
	assert_string_equal(v[0].opaque, "libvirt-outgoing-migrate-fd");
	free(v);
	close(sv[1]);
	unlink(t.path);
}

static void test_connect(void **state)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char spec[32], err[256];
	struct tmp t;
	int sv[2], s, f, l, c;

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	snprintf(spec, sizeof(spec), "fd:%d", sv[1]);
	assert_int_equal(snap_fdset_connect(spec, &s, err, sizeof(err)), 0);
	assert_true(s != sv[1] && is_cloexec(s));
	close(s);
	close(sv[0]);
	close(sv[1]);

	assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
	snprintf(spec, sizeof(spec), "fd:%d", sv[1]);
	assert_int_equal(snap_fdset_connect(spec, &s, err, sizeof(err)), -EPROTOTYPE);
	close(sv[0]);
	close(sv[1]);

	tmp_make(&t);
	f = tmp_open(&t, O_RDONLY);
	snprintf(spec, sizeof(spec), "fd:%d", f);
	assert_int_equal(snap_fdset_connect(spec, &s, err, sizeof(err)), -ENOTSOCK);
	close(f);
	unlink(t.path);

	/* A path: the manager listens, the tool connects. */
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s.sock", t.path);
	l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(l >= 0);
	assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(l, 1), 0);
	assert_int_equal(snap_fdset_connect(sa.sun_path, &s, err, sizeof(err)), 0);
	c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	assert_true(c >= 0);
	assert_true(is_cloexec(s));
	close(c);
	close(s);
	close(l);
	unlink(sa.sun_path);
	assert_int_equal(snap_fdset_connect(sa.sun_path, &s, err, sizeof(err)), -ENOENT);
}

/* ---- fdproto-json: the parser on its own, as the fuzzer drives it ---- */

static void test_proto_json(void **state)
{
	static struct snap_fdproto_req req;
	static char line[SNAP_FDSET_LINE_MAX + 1];
	char err[512];

	(void)state;
	assert_int_equal(snap_fdproto_parse_json("{\"arguments\": {\"opaque\": \"a\\u00e9\", "
						 "\"fdset-id\": 3}, \"execute\": \"add-fd\", "
						 "\"id\": 5}",
						 &req, err, sizeof(err)),
			 0);
	assert_int_equal(req.cmd, SNAP_FDPROTO_ADD_FD);
	assert_int_equal(req.set_id, 3);
	assert_true(req.has_opaque);
	assert_string_equal(req.opaque, "a\xc3\xa9");
	assert_int_equal(req.id_len, 1);
	assert_memory_equal(req.id, "5", 1);
	/* Duplicate keys are what json-c would let through. */
	assert_int_equal(
		snap_fdproto_parse_json("{\"execute\": \"start\", \"execute\": \"add-fd\"}", &req,
					err, sizeof(err)),
		-EINVAL);
	assert_string_equal(err, "key 'execute' given twice");
	/* Longer than any line the session reads: refused before decoding. */
	memset(line, ' ', SNAP_FDSET_LINE_MAX);
	line[SNAP_FDSET_LINE_MAX] = '\0';
	assert_int_equal(snap_fdproto_parse_json(line, &req, err, sizeof(err)), -EMSGSIZE);
	assert_string_equal(err, "line longer than 4096 bytes");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_add_arg_good, setup, teardown),
		cmocka_unit_test_setup_teardown(test_add_arg_bad, setup, teardown),
		cmocka_unit_test_setup_teardown(test_select_newest_first, setup, teardown),
		cmocka_unit_test_setup_teardown(test_direct_match, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flags_applied, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_match_message, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fd_spec, setup, teardown),
		cmocka_unit_test_setup_teardown(test_recv_lockstep, setup, teardown),
		cmocka_unit_test_setup_teardown(test_recv_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_recv_overlong, setup, teardown),
		cmocka_unit_test_setup_teardown(test_recv_too_many, setup, teardown),
		cmocka_unit_test_setup_teardown(test_recv_manager_closed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect, setup, teardown),
		cmocka_unit_test(test_proto_json),
	};

	return cmocka_run_group_tests_name("fdset", tests, NULL, NULL);
}
