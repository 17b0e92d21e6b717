// SPDX-License-Identifier: MIT
/*
 * fd sets: the process-wide registry, -add-fd parsing, the add-fd line protocol
 * over a UNIX socket and descriptor selection for /dev/fdset/N, after QEMU.
 */
#include "fdset.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#define FDSET_PREFIX "/dev/fdset/"
/* Room for this many descriptors per recvmsg, so that "two fds on one line" is told
 * apart from truncation; more than this is reported as truncated control data. */
#define CMSG_FDS 16
/* Flags F_SETFL can change on Linux; the rest are ignored by it anyway. */
#define SETFL_MASK (O_APPEND | O_ASYNC | O_DIRECT | O_NOATIME | O_NONBLOCK)

static void closep(int *fd)
{
	if (*fd >= 0) {
		int e = errno;

		close(*fd);
		errno = e;
	}
}
#define _cleanup_close_ __attribute__((cleanup(closep)))

static void freep(void *p)
{
	free(*(void **)p);
}
#define _cleanup_free_ __attribute__((cleanup(freep)))

static int take_fd(int *fd)
{
	int r = *fd;

	*fd = -1;
	return r;
}

/* Message builder: appends, remembers overflow, marks it with "..." at the end. */
struct msg {
	char *buf;
	size_t size;
	size_t len; /* what would have been written */
};

static struct msg msg_init(char *buf, size_t size)
{
	struct msg m = { .buf = size ? buf : NULL, .size = buf ? size : 0 };

	if (m.buf)
		m.buf[0] = '\0';
	return m;
}

__attribute__((format(printf, 2, 3))) static void msg_add(struct msg *m, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	if (m->len < m->size)
		n = vsnprintf(m->buf + m->len, m->size - m->len, fmt, ap);
	else
		n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n > 0)
		m->len += (size_t)n;
}

static void msg_end(struct msg *m)
{
	if (m->buf && m->len >= m->size && m->size >= 4)
		memcpy(m->buf + m->size - 4, "...", 4);
}

__attribute__((format(printf, 3, 4))) static void seterr(char *errbuf, size_t errlen,
							 const char *fmt, ...)
{
	struct msg m = msg_init(errbuf, errlen);
	va_list ap;
	int n;

	if (!m.buf)
		return;
	va_start(ap, fmt);
	n = vsnprintf(m.buf, m.size, fmt, ap);
	va_end(ap);
	m.len = n > 0 ? (size_t)n : 0;
	msg_end(&m);
}

/* ---- the registry ---- */

struct entry {
	int64_t set_id;
	int fd;
	char *opaque;
};

/* Entries in the order they were added; selection walks them backwards. */
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry *reg;
static size_t reg_n, reg_cap;

static int reg_reserve(size_t more)
{
	struct entry *v;
	size_t cap;

	if (reg_n + more <= reg_cap)
		return 0;
	cap = reg_cap ? reg_cap : 8;
	while (cap < reg_n + more)
		cap *= 2;
	v = realloc(reg, cap * sizeof(*v));
	if (!v)
		return -ENOMEM;
	reg = v;
	reg_cap = cap;
	return 0;
}

static bool id_used(int64_t id, const struct entry *extra, size_t n_extra)
{
	for (size_t i = 0; i < reg_n; i++)
		if (reg[i].set_id == id)
			return true;
	for (size_t i = 0; i < n_extra; i++)
		if (extra[i].set_id == id)
			return true;
	return false;
}

/* QMP add-fd without fdset-id: the lowest id not in use. */
static int64_t lowest_free_id(const struct entry *extra, size_t n_extra)
{
	int64_t id = 0;

	while (id_used(id, extra, n_extra))
		id++;
	return id;
}

static bool fd_registered(int fd, int64_t *ret_set)
{
	for (size_t i = 0; i < reg_n; i++)
		if (reg[i].fd == fd) {
			*ret_set = reg[i].set_id;
			return true;
		}
	return false;
}

static const char *accmode_name(int fl)
{
	switch (fl & O_ACCMODE) {
	case O_RDONLY: return "O_RDONLY";
	case O_WRONLY: return "O_WRONLY";
	case O_RDWR: return "O_RDWR";
	default: return "O_ACCMODE";
	}
}

/* "O_WRONLY|O_DIRECT" or "O_WRONLY without O_DIRECT": both halves of the match rule. */
static void msg_flags(struct msg *m, int fl)
{
	msg_add(m, "%s%s", accmode_name(fl), fl & O_DIRECT ? "|O_DIRECT" : " without O_DIRECT");
}

static void msg_entry(struct msg *m, const struct entry *e)
{
	int fl = fcntl(e->fd, F_GETFL);

	msg_add(m, "fd %d ", e->fd);
	if (fl < 0)
		msg_add(m, "(F_GETFL failed: %s)", strerror(errno));
	else
		msg_flags(m, fl);
	if (e->opaque)
		msg_add(m, " opaque \"%s\"", e->opaque);
	else
		msg_add(m, " (no opaque)");
}

/* Lists set `id`, newest first. Caller holds reg_lock. */
static void msg_set(struct msg *m, int64_t id)
{
	bool first = true;

	for (size_t i = reg_n; i-- > 0;) {
		if (reg[i].set_id != id)
			continue;
		if (!first)
			msg_add(m, "; ");
		msg_entry(m, &reg[i]);
		first = false;
	}
}

static int cmp_id(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return x < y ? -1 : x > y;
}

/* Distinct set ids in ascending order; caller holds reg_lock and frees. */
static int64_t *sorted_ids(size_t *ret_n)
{
	int64_t *ids;
	size_t n = 0;

	*ret_n = 0;
	if (!reg_n)
		return NULL;
	ids = malloc(reg_n * sizeof(*ids));
	if (!ids)
		return NULL;
	for (size_t i = 0; i < reg_n; i++) {
		bool seen = false;

		for (size_t j = 0; j < n && !seen; j++)
			seen = ids[j] == reg[i].set_id;
		if (!seen)
			ids[n++] = reg[i].set_id;
	}
	qsort(ids, n, sizeof(*ids), cmp_id);
	*ret_n = n;
	return ids;
}

static bool has_ctl(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return true;
	return false;
}

/* Checks that fd can go into a set: open and able to do I/O. */
static int check_fd(int fd, char *errbuf, size_t errlen)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0) {
		seterr(errbuf, errlen, "fd %d is not open", fd);
		return -EBADF;
	}
	if (fl & O_PATH) {
		seterr(errbuf, errlen, "fd %d is an O_PATH descriptor, which can do no I/O", fd);
		return -EBADF;
	}
	return 0;
}

static int add_locked(int64_t set_id, int fd, const char *opaque, int64_t *ret_set_id, char *errbuf,
		      size_t errlen)
{
	char *op = NULL;
	int64_t other;
	int r;

	if (fd_registered(fd, &other)) {
		seterr(errbuf, errlen, "fd %d is already in fd set %lld", fd, (long long)other);
		return -EEXIST;
	}
	r = reg_reserve(1);
	if (r < 0)
		goto nomem;
	if (opaque && *opaque) {
		op = strdup(opaque);
		if (!op)
			goto nomem;
	}
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
		r = -errno;
		seterr(errbuf, errlen, "fd %d: cannot set close-on-exec: %s", fd, strerror(-r));
		free(op);
		return r;
	}
	if (set_id < 0)
		set_id = lowest_free_id(NULL, 0);
	reg[reg_n++] = (struct entry){ .set_id = set_id, .fd = fd, .opaque = op };
	if (ret_set_id)
		*ret_set_id = set_id;
	return 0;
nomem:
	seterr(errbuf, errlen, "out of memory");
	return -ENOMEM;
}

int snap_fdset_add_fd(int64_t set_id, int fd, const char *opaque, int64_t *ret_set_id, char *errbuf,
		      size_t errlen)
{
	int r;

	if (opaque && has_ctl(opaque)) {
		seterr(errbuf, errlen, "opaque must not contain control characters");
		return -EINVAL;
	}
	r = check_fd(fd, errbuf, errlen);
	if (r < 0)
		return r;
	pthread_mutex_lock(&reg_lock);
	r = add_locked(set_id, fd, opaque, ret_set_id, errbuf, errlen);
	pthread_mutex_unlock(&reg_lock);
	return r;
}

void snap_fdset_clear(void)
{
	pthread_mutex_lock(&reg_lock);
	for (size_t i = 0; i < reg_n; i++) {
		close(reg[i].fd);
		free(reg[i].opaque);
	}
	free(reg);
	reg = NULL;
	reg_n = reg_cap = 0;
	pthread_mutex_unlock(&reg_lock);
}

int snap_fdset_query(struct snap_fdset_entry **ret_entries, size_t *ret_n)
{
	struct snap_fdset_entry *v = NULL;
	_cleanup_free_ int64_t *ids = NULL;
	size_t n_ids, size, k = 0;
	char *strings;

	pthread_mutex_lock(&reg_lock);
	ids = sorted_ids(&n_ids);
	if (reg_n && !ids)
		goto nomem;
	size = reg_n * sizeof(*v);
	for (size_t i = 0; i < reg_n; i++)
		if (reg[i].opaque)
			size += strlen(reg[i].opaque) + 1;
	if (reg_n) {
		v = malloc(size);
		if (!v)
			goto nomem;
	}
	strings = v ? (char *)(v + reg_n) : NULL;
	for (size_t s = 0; s < n_ids; s++)
		for (size_t i = reg_n; i-- > 0;) {
			if (reg[i].set_id != ids[s])
				continue;
			v[k] = (struct snap_fdset_entry){
				.set_id = reg[i].set_id,
				.fd = reg[i].fd,
				.flags = fcntl(reg[i].fd, F_GETFL),
			};
			if (reg[i].opaque) {
				size_t l = strlen(reg[i].opaque) + 1;

				memcpy(strings, reg[i].opaque, l);
				v[k].opaque = strings;
				strings += l;
			}
			k++;
		}
	pthread_mutex_unlock(&reg_lock);
	*ret_entries = v;
	*ret_n = k;
	return 0;
nomem:
	pthread_mutex_unlock(&reg_lock);
	return -ENOMEM;
}

int snap_fdset_describe(char *buf, size_t len)
{
	struct msg m = msg_init(buf, len);
	_cleanup_free_ int64_t *ids = NULL;
	size_t n_ids;
	int n;

	pthread_mutex_lock(&reg_lock);
	ids = sorted_ids(&n_ids);
	if (!reg_n)
		msg_add(&m, "no fd sets");
	else if (!ids)
		msg_add(&m, "%zu descriptors (out of memory listing them)", reg_n);
	for (size_t s = 0; s < n_ids; s++) {
		msg_add(&m, "%sset %lld: ", s ? "; " : "", (long long)ids[s]);
		msg_set(&m, ids[s]);
	}
	n = (int)reg_n;
	pthread_mutex_unlock(&reg_lock);
	msg_end(&m);
	return n;
}

/* ---- -add-fd ---- */

/* Non-empty run of decimal digits, no sign, at most max. */
static int parse_dec(const char *s, size_t len, int64_t max, int64_t *ret)
{
	int64_t v = 0;

	if (!len)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		if (v > (max - (s[i] - '0')) / 10)
			return -ERANGE;
		v = v * 10 + (s[i] - '0');
	}
	*ret = v;
	return 0;
}

int snap_fdset_add_arg(const char *arg, char *errbuf, size_t errlen)
{
	_cleanup_free_ char *vals = NULL;
	_cleanup_close_ int dup_fd = -1;
	char *opaque = NULL, *w;
	int64_t fd = -1, set = -1;
	bool seen_fd = false, seen_set = false;
	const char *p = arg;
	int fdflags, r;

	/* Room for every unescaped value; each lies in arg, so strlen(arg) + 1 is enough. */
	vals = malloc(strlen(arg) + 1);
	if (!vals) {
		seterr(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
	w = vals;
	for (;;) {
		const char *key = p;
		char *val;
		size_t klen, vlen;

		while (*p && *p != '=' && *p != ',')
			p++;
		klen = (size_t)(p - key);
		if (!klen) {
			seterr(errbuf, errlen, "'%s': empty parameter", arg);
			return -EINVAL;
		}
		if (*p != '=') {
			seterr(errbuf, errlen, "'%s': parameter '%.*s' needs a value", arg,
			       (int)klen, key);
			return -EINVAL;
		}
		p++;
		/* QemuOpts: ",," in a value is a literal comma. */
		val = w;
		while (*p && !(*p == ',' && p[1] != ',')) {
			*w++ = *p;
			p += *p == ',' ? 2 : 1;
		}
		vlen = (size_t)(w - val);
		*w++ = '\0';

		if (klen == 2 && !memcmp(key, "fd", 2)) {
			if (seen_fd)
				goto twice;
			seen_fd = true;
			if (parse_dec(val, vlen, INT_MAX, &fd) < 0) {
				seterr(errbuf, errlen,
				       "'%s': fd must be a decimal number, not '%s'", arg, val);
				return -EINVAL;
			}
		} else if (klen == 3 && !memcmp(key, "set", 3)) {
			if (seen_set)
				goto twice;
			seen_set = true;
			if (parse_dec(val, vlen, INT64_MAX, &set) < 0) {
				seterr(errbuf, errlen,
				       "'%s': set must be a non-negative decimal number, not '%s'",
				       arg, val);
				return -EINVAL;
			}
		} else if (klen == 6 && !memcmp(key, "opaque", 6)) {
			if (opaque)
				goto twice;
			opaque = val;
		} else {
			seterr(errbuf, errlen, "'%s': unknown parameter '%.*s' (fd, set, opaque)",
			       arg, (int)klen, key);
			return -EINVAL;
		}
		if (!*p)
			break;
		p++;
		continue;
	twice:
		seterr(errbuf, errlen, "'%s': parameter '%.*s' given twice", arg, (int)klen, key);
		return -EINVAL;
	}
	if (!seen_fd || !seen_set) {
		seterr(errbuf, errlen, "'%s': %s is required", arg, seen_fd ? "set=N" : "fd=N");
		return -EINVAL;
	}
	if (fd <= STDERR_FILENO) {
		seterr(errbuf, errlen, "'%s': fd %d is a standard stream; pass 3 or higher", arg,
		       (int)fd);
		return -EINVAL;
	}
	if (opaque && has_ctl(opaque)) {
		seterr(errbuf, errlen, "'%s': opaque must not contain control characters", arg);
		return -EINVAL;
	}
	r = check_fd((int)fd, errbuf, errlen);
	if (r < 0)
		return r;
	/*
	 * An inherited descriptor cannot be close-on-exec. One that is was opened here,
	 * and is likely one of the registry's own dups reached by giving a number twice.
	 */
	fdflags = fcntl((int)fd, F_GETFD);
	if (fdflags < 0 || (fdflags & FD_CLOEXEC)) {
		seterr(errbuf, errlen, "fd %d is already in use in this process (not inherited)",
		       (int)fd);
		return -EBUSY;
	}
	/* At least 3, so a closed standard stream is never reused for a set. */
	dup_fd = fcntl((int)fd, F_DUPFD_CLOEXEC, 3);
	if (dup_fd < 0) {
		r = -errno;
		seterr(errbuf, errlen, "cannot duplicate fd %d: %s", (int)fd, strerror(-r));
		return r;
	}
	pthread_mutex_lock(&reg_lock);
	r = add_locked(set, dup_fd, opaque, NULL, errbuf, errlen);
	pthread_mutex_unlock(&reg_lock);
	if (r < 0)
		return r;
	take_fd(&dup_fd);
	close((int)fd);
	return 0;
}

/* ---- snap_io_open ---- */

bool snap_io_is_fd_spec(const char *spec)
{
	return spec &&
	       (!strncmp(spec, "fd:", 3) || !strncmp(spec, FDSET_PREFIX, strlen(FDSET_PREFIX)));
}

/*
 * QEMU's qemu_dup_flags(): a close-on-exec dup that then behaves as if opened with
 * flags, as far as the open file description allows.
 */
static int dup_flags(int fd, int flags, int *ret_fd, char *errbuf, size_t errlen)
{
	_cleanup_close_ int nfd = -1;
	int fl, r;

	nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (nfd < 0) {
		r = -errno;
		seterr(errbuf, errlen, "cannot duplicate fd %d: %s", fd, strerror(-r));
		return r;
	}
	fl = fcntl(nfd, F_GETFL);
	if (fl < 0)
		goto fail;
	if ((fl & O_SYNC) != (flags & O_SYNC)) {
		seterr(errbuf, errlen, "fd %d differs from the request in O_SYNC", fd);
		return -EINVAL;
	}
	if (fcntl(nfd, F_SETFL, flags & SETFL_MASK) < 0)
		goto fail;
	if ((flags & O_TRUNC) || (flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL))
		if (ftruncate(nfd, 0) < 0)
			goto fail;
	*ret_fd = take_fd(&nfd);
	return 0;
fail:
	r = -errno;
	seterr(errbuf, errlen, "fd %d: %s", fd, strerror(-r));
	return r;
}

static int open_fd_n(const char *spec, int flags, int *ret_fd, char *errbuf, size_t errlen)
{
	int64_t n;
	int fl, want = flags & O_ACCMODE, have;

	if (parse_dec(spec + 3, strlen(spec + 3), INT_MAX, &n) < 0) {
		seterr(errbuf, errlen, "'%s': expected fd:N with N a decimal number", spec);
		return -EINVAL;
	}
	fl = fcntl((int)n, F_GETFL);
	if (fl < 0) {
		seterr(errbuf, errlen, "fd %d is not open", (int)n);
		return -EBADF;
	}
	have = fl & O_ACCMODE;
	if ((fl & O_PATH) || (have != O_RDWR && have != want)) {
		seterr(errbuf, errlen, "fd %d is open %s, which cannot serve %s", (int)n,
		       fl & O_PATH ? "O_PATH" : accmode_name(fl), accmode_name(flags));
		return -EACCES;
	}
	/* F_SETFL would toggle O_DIRECT for every holder of the description, so refuse. */
	if ((fl & O_DIRECT) != (flags & O_DIRECT)) {
		seterr(errbuf, errlen, "fd %d is open %s O_DIRECT but %s was asked for%s", (int)n,
		       fl & O_DIRECT ? "with" : "without",
		       flags & O_DIRECT ? "O_DIRECT" : "buffered I/O",
		       flags & O_DIRECT ? " (open the file again with O_DIRECT)" : "");
		return -EACCES;
	}
	return dup_flags((int)n, flags, ret_fd, errbuf, errlen);
}

static void msg_set_ids(struct msg *m)
{
	_cleanup_free_ int64_t *ids = NULL;
	size_t n;

	ids = sorted_ids(&n);
	if (!n) {
		msg_add(m, "no fd sets were added");
		return;
	}
	msg_add(m, "sets:");
	for (size_t i = 0; i < n; i++)
		msg_add(m, " %lld", (long long)ids[i]);
}

static int open_fdset(const char *spec, int flags, int *ret_fd, char *errbuf, size_t errlen)
{
	const char *num = spec + strlen(FDSET_PREFIX);
	struct msg m;
	bool exists = false, mode_only = false;
	int want = flags & (O_ACCMODE | O_DIRECT);
	int64_t id;
	int r;

	if (parse_dec(num, strlen(num), INT64_MAX, &id) < 0) {
		seterr(errbuf, errlen, "'%s': expected " FDSET_PREFIX "N with N a decimal number",
		       spec);
		return -EINVAL;
	}
	pthread_mutex_lock(&reg_lock);
	for (size_t i = reg_n; i-- > 0;) {
		int fl;

		if (reg[i].set_id != id)
			continue;
		exists = true;
		fl = fcntl(reg[i].fd, F_GETFL);
		if (fl < 0)
			continue;
		if ((fl & (O_ACCMODE | O_DIRECT)) == want) {
			r = dup_flags(reg[i].fd, flags, ret_fd, errbuf, errlen);
			pthread_mutex_unlock(&reg_lock);
			return r;
		}
		if ((fl & O_ACCMODE) == (flags & O_ACCMODE))
			mode_only = true;
	}
	/* QEMU 10.0.2 crashes on this path (direct-io without an O_DIRECT fd). */
	m = msg_init(errbuf, errlen);
	if (!exists) {
		msg_add(&m, "fd set %lld does not exist (", (long long)id);
		msg_set_ids(&m);
		msg_add(&m, ")");
		r = -ENOENT;
	} else {
		msg_add(&m, "fd set %lld has no descriptor open ", (long long)id);
		msg_flags(&m, flags);
		msg_add(&m,
			" (access mode and O_DIRECT must both match); it holds, newest first: ");
		msg_set(&m, id);
		if (mode_only && (flags & O_DIRECT))
			msg_add(&m, "; an O_DIRECT descriptor needs its own open() of the file");
		else if (mode_only)
			msg_add(&m, "; add a descriptor opened without O_DIRECT");
		r = -EACCES;
	}
	pthread_mutex_unlock(&reg_lock);
	msg_end(&m);
	return r;
}

int snap_io_open(const char *spec, int flags, mode_t mode, int *ret_fd, char *errbuf, size_t errlen)
{
	int fd;

	if (!spec || !*spec) {
		seterr(errbuf, errlen, "empty file name");
		return -EINVAL;
	}
	if (!strncmp(spec, "fd:", 3))
		return open_fd_n(spec, flags, ret_fd, errbuf, errlen);
	if (!strncmp(spec, FDSET_PREFIX, strlen(FDSET_PREFIX)))
		return open_fdset(spec, flags, ret_fd, errbuf, errlen);
	fd = open(spec, flags | O_CLOEXEC, mode);
	if (fd < 0) {
		int e = errno;

		seterr(errbuf, errlen, "%s%s", strerror(e),
		       (flags & O_DIRECT) && e == EINVAL
			       ? " (the file system may not support O_DIRECT)"
			       : "");
		return -e;
	}
	*ret_fd = fd;
	return 0;
}

/*
 * A twin is reached by another route than fd (a second descriptor in a set, a
 * reopen), so nothing but this check says it is the same file: a set built
 * from two different files, or a name swapped between two opens, would send
 * the O_DIRECT half of the data elsewhere.
 */
static int check_twin(int fd, int twin, char *errbuf, size_t errlen)
{
	struct stat a, b;

	if (fstat(fd, &a) < 0 || fstat(twin, &b) < 0) {
		int e = errno;

		seterr(errbuf, errlen, "fstat: %s", strerror(e));
		return -e;
	}
	if (a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
		seterr(errbuf, errlen,
		       "the second descriptor (for O_DIRECT) is another file than the first "
		       "(device %llu inode %llu, not device %llu inode %llu)",
		       (unsigned long long)b.st_dev, (unsigned long long)b.st_ino,
		       (unsigned long long)a.st_dev, (unsigned long long)a.st_ino);
		return -EXDEV;
	}
	return 0;
}

int snap_io_open_twin(int fd, const char *spec, int dir_fd, const char *name, bool nofollow,
		      int flags, int *ret_fd, char *errbuf, size_t errlen)
{
	_cleanup_close_ int twin = -1;
	char proc[64];
	int r;

	if (spec && !strncmp(spec, "fd:", 3)) {
		seterr(errbuf, errlen,
		       "%s is one descriptor; O_DIRECT needs a second one in an fd set", spec);
		return -EINVAL;
	}
	if (spec && !strncmp(spec, FDSET_PREFIX, strlen(FDSET_PREFIX))) {
		r = open_fdset(spec, flags, &twin, errbuf, errlen);
		if (r < 0)
			return r;
	} else {
		/* The open file itself, not whatever the name holds by now. */
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
		twin = open(proc, (flags & ~(O_CREAT | O_EXCL | O_TRUNC)) | O_CLOEXEC);
		if (twin < 0 && errno == ENOENT && access("/proc/self/fd", F_OK) < 0)
			twin = openat(dir_fd, name,
				      (flags & ~(O_CREAT | O_EXCL | O_TRUNC)) | O_CLOEXEC |
					      (nofollow ? O_NOFOLLOW : 0));
		if (twin < 0) {
			int e = errno;

			seterr(errbuf, errlen, "%s%s", strerror(e),
			       (flags & O_DIRECT) && e == EINVAL
				       ? " (the file system may not support O_DIRECT)"
				       : "");
			return -e;
		}
	}
	r = check_twin(fd, twin, errbuf, errlen);
	if (r < 0)
		return r;
	*ret_fd = take_fd(&twin);
	return 0;
}

/* ---- the socket protocol ---- */

int snap_fdset_connect(const char *spec, int *ret_sock, char *errbuf, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	_cleanup_close_ int s = -1;
	int r;

	if (!spec || !*spec) {
		seterr(errbuf, errlen, "empty socket name");
		return -EINVAL;
	}
	if (!strncmp(spec, "fd:", 3)) {
		int64_t n;
		int v;
		socklen_t l = sizeof(v);
		struct stat st;

		if (parse_dec(spec + 3, strlen(spec + 3), INT_MAX, &n) < 0) {
			seterr(errbuf, errlen, "'%s': expected fd:N with N a decimal number", spec);
			return -EINVAL;
		}
		if (fstat((int)n, &st) < 0) {
			seterr(errbuf, errlen, "fd %d is not open", (int)n);
			return -EBADF;
		}
		if (!S_ISSOCK(st.st_mode) ||
		    getsockopt((int)n, SOL_SOCKET, SO_DOMAIN, &v, &l) < 0 || v != AF_UNIX) {
			seterr(errbuf, errlen, "fd %d is not a UNIX socket", (int)n);
			return -ENOTSOCK;
		}
		l = sizeof(v);
		if (getsockopt((int)n, SOL_SOCKET, SO_TYPE, &v, &l) < 0 || v != SOCK_STREAM) {
			seterr(errbuf, errlen, "fd %d is not a stream socket", (int)n);
			return -EPROTOTYPE;
		}
		s = fcntl((int)n, F_DUPFD_CLOEXEC, 3);
		if (s < 0) {
			r = -errno;
			seterr(errbuf, errlen, "cannot duplicate fd %d: %s", (int)n, strerror(-r));
			return r;
		}
		*ret_sock = take_fd(&s);
		return 0;
	}
	if (strlen(spec) >= sizeof(sa.sun_path)) {
		seterr(errbuf, errlen, "%s: socket path longer than %zu bytes", spec,
		       sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, spec);
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		r = -errno;
		seterr(errbuf, errlen, "socket: %s", strerror(-r));
		return r;
	}
	while (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno == EINTR)
			continue;
		r = -errno;
		seterr(errbuf, errlen, "%s: %s", spec, strerror(-r));
		return r;
	}
	*ret_sock = take_fd(&s);
	return 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on fd until deadline (< 0: forever). 0, -ETIMEDOUT or -errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		int t = -1, r;

		if (deadline >= 0) {
			int64_t left = deadline - now_ms();

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
			r = wait_fd(sock, POLLOUT, deadline);
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

enum cmd { CMD_ADD_FD, CMD_START };

struct session {
	int sock;
	int64_t deadline;
	bool replies_off; /* a reply failed: the manager stopped reading */
	struct entry pending[SNAP_FDSET_RECV_MAX_FDS];
	size_t n_pending;
	char line[SNAP_FDSET_LINE_MAX + 1];
	size_t len;
	int fds[CMSG_FDS]; /* descriptors that came with the current line */
	size_t n_fds;
	unsigned fds_seen; /* including those closed because fds[] was full */
	/* the parsed line */
	enum cmd cmd;
	int64_t set_id; /* -1: lowest free */
	char opaque[SNAP_FDSET_LINE_MAX];
	bool has_opaque;
	const char *id; /* JSON "id" to echo, raw, in line[] */
	size_t id_len;
	char msg[512];
};

static void close_line_fds(struct session *s)
{
	for (size_t i = 0; i < s->n_fds; i++)
		close(s->fds[i]);
	s->n_fds = 0;
	s->fds_seen = 0;
}

__attribute__((format(printf, 2, 3))) static void serr(struct session *s, const char *fmt, ...)
{
	struct msg m = msg_init(s->msg, sizeof(s->msg));
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(m.buf, m.size, fmt, ap);
	va_end(ap);
	m.len = n > 0 ? (size_t)n : 0;
	msg_end(&m);
}

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
		r = wait_fd(s->sock, POLLIN, s->deadline);
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
		s->cmd = CMD_START;
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
	s->cmd = CMD_ADD_FD;
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
			if (parse_dec(eq + 1, strlen(eq + 1), INT64_MAX, &s->set_id) < 0) {
				serr(s,
				     "add-fd: set must be a non-negative decimal number, not "
				     "'%.64s'",
				     eq + 1);
				return -EINVAL;
			}
		} else if (!strcmp(tok, "opaque")) {
			if (s->has_opaque)
				goto twice;
			s->has_opaque = true;
			strcpy(s->opaque, eq + 1);
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

/* Just enough JSON for one QMP command object, without a library. */
struct jp {
	const char *p;
	struct session *s;
};

static void jws(struct jp *j)
{
	while (*j->p == ' ' || *j->p == '\t')
		j->p++;
}

static int jfail(struct jp *j, const char *what)
{
	serr(j->s, "bad JSON at column %zu: %s", (size_t)(j->p - j->s->line) + 1, what);
	return -EINVAL;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes a string into out (size > the line length, so it always fits) or skips it. */
static int jstring(struct jp *j, char *out)
{
	static const char esc_from[] = "\"\\/bfnrt", esc_to[] = "\"\\/\b\f\n\r\t";
	size_t n = 0;

	if (*j->p != '"')
		return jfail(j, "expected a string");
	j->p++;
	for (;;) {
		unsigned char c = (unsigned char)*j->p;
		unsigned cp = 0;
		const char *esc;

		if (!c)
			return jfail(j, "unterminated string");
		j->p++;
		if (c == '"')
			break;
		if (c < 0x20)
			return jfail(j, "control character in a string");
		if (c != '\\') {
			if (out)
				out[n++] = (char)c;
			continue;
		}
		c = (unsigned char)*j->p++;
		if (c == 'u') {
			for (int i = 0; i < 4; i++) {
				int h = hexval(*j->p);

				if (h < 0)
					return jfail(j, "bad \\u escape");
				cp = cp << 4 | (unsigned)h;
				j->p++;
			}
			if (!cp || (cp >= 0xd800 && cp <= 0xdfff))
				return jfail(j, "\\u0000 and surrogate escapes are not supported");
		} else if (c && (esc = strchr(esc_from, c))) {
			cp = (unsigned char)esc_to[esc - esc_from];
		} else {
			j->p--;
			return jfail(j, "bad escape");
		}
		if (!out)
			continue;
		if (cp < 0x80) {
			out[n++] = (char)cp;
		} else if (cp < 0x800) {
			out[n++] = (char)(0xc0 | cp >> 6);
			out[n++] = (char)(0x80 | (cp & 0x3f));
		} else {
			out[n++] = (char)(0xe0 | cp >> 12);
			out[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
			out[n++] = (char)(0x80 | (cp & 0x3f));
		}
	}
	if (out)
		out[n] = '\0';
	return 0;
}

/* An integer, no fraction or exponent (QMP's "int"). */
static int jint(struct jp *j, int64_t *ret)
{
	bool neg = *j->p == '-';
	const char *start = j->p + neg;

	j->p = start;
	while (*j->p >= '0' && *j->p <= '9')
		j->p++;
	if (*j->p == '.' || *j->p == 'e' || *j->p == 'E')
		return jfail(j, "expected an integer");
	if (neg || parse_dec(start, (size_t)(j->p - start), INT64_MAX, ret) < 0)
		return jfail(j, "expected a non-negative integer");
	return 0;
}

/* Iterates the members of an object: calls member() for each key. */
static int jobject(struct jp *j, int (*member)(struct jp *j, const char *key, unsigned *seen),
		   unsigned *seen)
{
	char key[32];

	jws(j);
	if (*j->p != '{')
		return jfail(j, "expected an object");
	j->p++;
	jws(j);
	if (*j->p == '}') {
		j->p++;
		return 0;
	}
	for (;;) {
		const char *k = j->p;
		int r;

		r = jstring(j, NULL);
		if (r < 0)
			return r;
		/* Keys are short and plain: compare the raw text between the quotes. */
		if ((size_t)(j->p - k) - 2 >= sizeof(key) ||
		    memchr(k + 1, '\\', (size_t)(j->p - k) - 2))
			snprintf(key, sizeof(key), "?");
		else
			snprintf(key, sizeof(key), "%.*s", (int)(j->p - k) - 2, k + 1);
		jws(j);
		if (*j->p != ':')
			return jfail(j, "expected ':'");
		j->p++;
		jws(j);
		r = member(j, key, seen);
		if (r < 0)
			return r;
		jws(j);
		if (*j->p == '}') {
			j->p++;
			return 0;
		}
		if (*j->p != ',')
			return jfail(j, "expected ',' or '}'");
		j->p++;
		jws(j);
	}
}

enum {
	SEEN_EXECUTE = 1,
	SEEN_ARGS = 2,
	SEEN_ID = 4,
	SEEN_FDSET = 8,
	SEEN_OPAQUE = 16,
	SEEN_ANY_ARG = 32
};

static int jonce(struct jp *j, unsigned *seen, unsigned bit, const char *key)
{
	if (*seen & bit) {
		serr(j->s, "key '%s' given twice", key);
		return -EINVAL;
	}
	*seen |= bit;
	return 0;
}

static int jargument(struct jp *j, const char *key, unsigned *seen)
{
	struct session *s = j->s;
	int r;

	if (!strcmp(key, "fdset-id")) {
		r = jonce(j, seen, SEEN_FDSET, key);
		return r < 0 ? r : jint(j, &s->set_id);
	}
	if (!strcmp(key, "opaque")) {
		r = jonce(j, seen, SEEN_OPAQUE, key);
		if (r < 0)
			return r;
		s->has_opaque = true;
		return jstring(j, s->opaque);
	}
	serr(s, "parameter '%s' is unexpected", key);
	return -EINVAL;
}

static int jtop(struct jp *j, const char *key, unsigned *seen)
{
	struct session *s = j->s;
	int r;

	if (!strcmp(key, "execute")) {
		char name[SNAP_FDSET_LINE_MAX];

		r = jonce(j, seen, SEEN_EXECUTE, key);
		if (r >= 0)
			r = jstring(j, name);
		if (r < 0)
			return r;
		if (!strcmp(name, "add-fd")) {
			s->cmd = CMD_ADD_FD;
		} else if (!strcmp(name, "start")) {
			s->cmd = CMD_START;
		} else {
			serr(s, "the command '%.64s' has not been found (add-fd, start)", name);
			return -EINVAL;
		}
		return 0;
	}
	if (!strcmp(key, "arguments")) {
		unsigned args_seen = 0;

		r = jonce(j, seen, SEEN_ARGS, key);
		if (r < 0)
			return r;
		/* The command may come after its arguments: check them once both are known. */
		r = jobject(j, jargument, &args_seen);
		if (r < 0)
			return r;
		if (args_seen)
			*seen |= SEEN_ANY_ARG;
		return 0;
	}
	if (!strcmp(key, "id")) {
		const char *start = j->p;

		r = jonce(j, seen, SEEN_ID, key);
		if (r < 0)
			return r;
		if (*j->p == '"') {
			r = jstring(j, NULL);
		} else {
			int64_t v;

			r = jint(j, &v);
		}
		if (r < 0)
			return r;
		s->id = start;
		s->id_len = (size_t)(j->p - start);
		return 0;
	}
	serr(s, "key '%s' is unexpected (execute, arguments, id)", key);
	return -EINVAL;
}

static int parse_json(struct session *s)
{
	struct jp j = { .p = s->line, .s = s };
	unsigned seen = 0;
	int r;

	r = jobject(&j, jtop, &seen);
	if (r < 0)
		return r;
	jws(&j);
	if (*j.p)
		return jfail(&j, "text after the object");
	if (!(seen & SEEN_EXECUTE)) {
		serr(s, "key 'execute' is missing");
		return -EINVAL;
	}
	if (s->cmd == CMD_START && (seen & SEEN_ANY_ARG)) {
		serr(s, "start takes no arguments");
		return -EINVAL;
	}
	return 0;
}

static void reply(struct session *s, const char *text)
{
	if (s->replies_off)
		return;
	if (send_all(s->sock, text, strlen(text), s->deadline) < 0)
		s->replies_off = true;
}

/* Length of the well-formed UTF-8 sequence at p (RFC 3629), or 0. */
static size_t utf8_seq_len(const unsigned char *p)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		n = 2;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		n = 3;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		n = 4;
	else
		return 0;
	/* No overlong forms, no UTF-16 surrogates, nothing past U+10FFFF. */
	if (p[0] == 0xe0)
		lo = 0xa0;
	else if (p[0] == 0xed)
		hi = 0x9f;
	else if (p[0] == 0xf0)
		lo = 0x90;
	else if (p[0] == 0xf4)
		hi = 0x8f;
	if (p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	return n;
}

size_t snap_json_escape(const char *s, char out[SNAP_JSON_ESCAPE_MAX])
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)s;
	size_t n = utf8_seq_len(p);

	if (p[0] == '"' || p[0] == '\\') {
		out[0] = '\\';
		out[1] = (char)p[0];
		out[2] = 0;
		return 1;
	}
	if (n && p[0] >= 0x20 && p[0] != 0x7f) {
		memcpy(out, p, n);
		out[n] = 0;
		return n;
	}
	/* A control byte, or a byte of no valid sequence: read as Latin-1. */
	memcpy(out, "\\u00", 4);
	out[4] = hex[p[0] >> 4];
	out[5] = hex[p[0] & 15];
	out[6] = 0;
	return 1;
}

/* Appends str to buf as JSON string content. */
static void msg_json_str(struct msg *m, const char *str)
{
	char esc[SNAP_JSON_ESCAPE_MAX];

	while (*str) {
		str += snap_json_escape(str, esc);
		msg_add(m, "%s", esc);
	}
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
	if (s->id)
		msg_add(&m, ", \"id\": %.*s", (int)s->id_len, s->id);
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
	struct entry *e;
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
	if (s->has_opaque && has_ctl(s->opaque)) {
		serr(s, "opaque must not contain control characters");
		return -EINVAL;
	}
	r = check_fd(s->fds[0], s->msg, sizeof(s->msg));
	if (r < 0)
		return r;
	e = &s->pending[s->n_pending];
	*e = (struct entry){ .set_id = s->set_id, .fd = -1 };
	if (s->has_opaque && *s->opaque) {
		e->opaque = strdup(s->opaque);
		if (!e->opaque) {
			serr(s, "out of memory");
			return -ENOMEM;
		}
	}
	if (e->set_id < 0) {
		pthread_mutex_lock(&reg_lock);
		e->set_id = lowest_free_id(s->pending, s->n_pending);
		pthread_mutex_unlock(&reg_lock);
	}
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
	int r;

	pthread_mutex_lock(&reg_lock);
	r = reg_reserve(s->n_pending);
	if (r >= 0) {
		memcpy(reg + reg_n, s->pending, s->n_pending * sizeof(*reg));
		reg_n += s->n_pending;
	}
	pthread_mutex_unlock(&reg_lock);
	if (r < 0)
		serr(s, "out of memory");
	return r;
}

static int session_run(struct session *s, bool *ret_json)
{
	for (;;) {
		bool json;
		int r;

		s->set_id = -1;
		s->has_opaque = false;
		s->id = NULL;
		*ret_json = false;
		r = read_line(s);
		*ret_json = json = s->len && s->line[0] == '{';
		if (r < 0)
			return r;
		r = json ? parse_json(s) : parse_text(s);
		if (r < 0)
			return r;
		if (s->cmd == CMD_ADD_FD) {
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
		seterr(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
	s->sock = sock;
	s->deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	r = session_run(s, &json);
	close_line_fds(s);
	if (r < 0) {
		for (size_t i = 0; i < s->n_pending; i++) {
			close(s->pending[i].fd);
			free(s->pending[i].opaque);
		}
		reply_error(s, json);
		seterr(errbuf, errlen, "%s", s->msg);
		return r;
	}
	if (ret_n_fds)
		*ret_n_fds = (unsigned)s->n_pending;
	return 0;
}
