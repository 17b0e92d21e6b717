// SPDX-License-Identifier: MIT
/*
 * fd sets after QEMU: the process-wide registry, QEMU's -add-fd parsing, and the
 * selection of a set's descriptor that /dev/fdset/N opening (fdopen.c) uses.
 */
#include "fdset.h"
#include "cleanup.h"
#include "fdset-internal.h"
#include "msg.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the registry ---- */

/* Entries in the order they were added; selection walks them backwards. */
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fdset_entry *reg;
static size_t reg_n, reg_cap;

static int reg_reserve(size_t more)
{
	struct fdset_entry *v;
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

static bool id_used(int64_t id, const struct fdset_entry *extra, size_t n_extra)
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
static int64_t lowest_free_id(const struct fdset_entry *extra, size_t n_extra)
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

const char *fdset_accmode_name(int fl)
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
	msg_add(m, "%s%s", fdset_accmode_name(fl),
		fl & O_DIRECT ? "|O_DIRECT" : " without O_DIRECT");
}

static void msg_entry(struct msg *m, const struct fdset_entry *e)
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
static void msg_fdset(struct msg *m, int64_t id)
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

bool fdset_has_ctl(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return true;
	return false;
}

int fdset_check_fd(int fd, char *errbuf, size_t errlen)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0) {
		msg_set(errbuf, errlen, "fd %d is not open", fd);
		return -EBADF;
	}
	if (fl & O_PATH) {
		msg_set(errbuf, errlen, "fd %d is an O_PATH descriptor, which can do no I/O", fd);
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
		msg_set(errbuf, errlen, "fd %d is already in fd set %lld", fd, (long long)other);
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
		msg_set(errbuf, errlen, "fd %d: cannot set close-on-exec: %s", fd, strerror(-r));
		free(op);
		return r;
	}
	if (set_id < 0)
		set_id = lowest_free_id(NULL, 0);
	reg[reg_n++] = (struct fdset_entry){ .set_id = set_id, .fd = fd, .opaque = op };
	if (ret_set_id)
		*ret_set_id = set_id;
	return 0;
nomem:
	msg_set(errbuf, errlen, "out of memory");
	return -ENOMEM;
}

int snap_fdset_add_fd(int64_t set_id, int fd, const char *opaque, int64_t *ret_set_id, char *errbuf,
		      size_t errlen)
{
	int r;

	if (opaque && fdset_has_ctl(opaque)) {
		msg_set(errbuf, errlen, "opaque must not contain control characters");
		return -EINVAL;
	}
	r = fdset_check_fd(fd, errbuf, errlen);
	if (r < 0)
		return r;
	pthread_mutex_lock(&reg_lock);
	r = add_locked(set_id, fd, opaque, ret_set_id, errbuf, errlen);
	pthread_mutex_unlock(&reg_lock);
	return r;
}

int64_t fdset_lowest_free_id(const struct fdset_entry *extra, size_t n_extra)
{
	int64_t id;

	pthread_mutex_lock(&reg_lock);
	id = lowest_free_id(extra, n_extra);
	pthread_mutex_unlock(&reg_lock);
	return id;
}

int fdset_commit(const struct fdset_entry *v, size_t n)
{
	int r;

	pthread_mutex_lock(&reg_lock);
	r = reg_reserve(n);
	if (r >= 0 && n) { /* an empty session may have no registry yet */
		memcpy(reg + reg_n, v, n * sizeof(*reg));
		reg_n += n;
	}
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
		msg_fdset(&m, ids[s]);
	}
	n = (int)reg_n;
	pthread_mutex_unlock(&reg_lock);
	msg_end(&m);
	return n;
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

/* QEMU 10.0.2 crashes where this says no (direct-io without an O_DIRECT fd). */
int fdset_select(int64_t id, int flags, fdset_use_fn use, int *ret_fd, char *errbuf, size_t errlen)
{
	bool exists = false, mode_only = false;
	int want = flags & (O_ACCMODE | O_DIRECT);
	struct msg m;
	int r;

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
			r = use(reg[i].fd, flags, ret_fd, errbuf, errlen);
			pthread_mutex_unlock(&reg_lock);
			return r;
		}
		if ((fl & O_ACCMODE) == (flags & O_ACCMODE))
			mode_only = true;
	}
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
		msg_fdset(&m, id);
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

/* ---- -add-fd ---- */

int fdset_parse_dec(const char *s, size_t len, int64_t max, int64_t *ret)
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

/* -add-fd's parameters; opaque points into the caller's buffer of unescaped values. */
struct add_fd_arg {
	int64_t fd, set;
	bool seen_fd, seen_set;
	const char *opaque;
};

/* Applies one key=value of arg to a. */
static int add_arg_param(const char *arg, const char *key, size_t klen, const char *val,
			 size_t vlen, struct add_fd_arg *a, char *errbuf, size_t errlen)
{
	if (klen == 2 && !memcmp(key, "fd", 2)) {
		if (a->seen_fd)
			goto twice;
		a->seen_fd = true;
		if (fdset_parse_dec(val, vlen, INT_MAX, &a->fd) < 0) {
			msg_set(errbuf, errlen, "'%s': fd must be a decimal number, not '%s'", arg,
				val);
			return -EINVAL;
		}
	} else if (klen == 3 && !memcmp(key, "set", 3)) {
		if (a->seen_set)
			goto twice;
		a->seen_set = true;
		if (fdset_parse_dec(val, vlen, INT64_MAX, &a->set) < 0) {
			msg_set(errbuf, errlen,
				"'%s': set must be a non-negative decimal number, not '%s'", arg,
				val);
			return -EINVAL;
		}
	} else if (klen == 6 && !memcmp(key, "opaque", 6)) {
		if (a->opaque)
			goto twice;
		a->opaque = val;
	} else {
		msg_set(errbuf, errlen, "'%s': unknown parameter '%.*s' (fd, set, opaque)", arg,
			(int)klen, key);
		return -EINVAL;
	}
	return 0;
twice:
	msg_set(errbuf, errlen, "'%s': parameter '%.*s' given twice", arg, (int)klen, key);
	return -EINVAL;
}

/*
 * Splits arg into its parameters, unescaping the values into vals (room for
 * strlen(arg) + 1: each value lies in arg), and checks that fd= and set= came.
 */
static int add_arg_parse(const char *arg, char *vals, struct add_fd_arg *a, char *errbuf,
			 size_t errlen)
{
	const char *p = arg;
	char *w = vals;
	int r;

	for (;;) {
		const char *key = p;
		char *val;
		size_t klen;

		while (*p && *p != '=' && *p != ',')
			p++;
		klen = (size_t)(p - key);
		if (!klen) {
			msg_set(errbuf, errlen, "'%s': empty parameter", arg);
			return -EINVAL;
		}
		if (*p != '=') {
			msg_set(errbuf, errlen, "'%s': parameter '%.*s' needs a value", arg,
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
		*w++ = '\0';
		r = add_arg_param(arg, key, klen, val, (size_t)(w - 1 - val), a, errbuf, errlen);
		if (r < 0)
			return r;
		if (!*p)
			break;
		p++;
	}
	if (!a->seen_fd || !a->seen_set) {
		msg_set(errbuf, errlen, "'%s': %s is required", arg, a->seen_fd ? "set=N" : "fd=N");
		return -EINVAL;
	}
	return 0;
}

int snap_fdset_add_arg(const char *arg, char *errbuf, size_t errlen)
{
	_cleanup_free_ char *vals = NULL;
	_cleanup_close_ int dup_fd = -1;
	struct add_fd_arg a = { .fd = -1, .set = -1 };
	int fd, fdflags, r;

	vals = malloc(strlen(arg) + 1);
	if (!vals) {
		msg_set(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
	r = add_arg_parse(arg, vals, &a, errbuf, errlen);
	if (r < 0)
		return r;
	fd = (int)a.fd;
	if (fd <= STDERR_FILENO) {
		msg_set(errbuf, errlen, "'%s': fd %d is a standard stream; pass 3 or higher", arg,
			fd);
		return -EINVAL;
	}
	if (a.opaque && fdset_has_ctl(a.opaque)) {
		msg_set(errbuf, errlen, "'%s': opaque must not contain control characters", arg);
		return -EINVAL;
	}
	r = fdset_check_fd(fd, errbuf, errlen);
	if (r < 0)
		return r;
	/*
	 * An inherited descriptor cannot be close-on-exec. One that is was opened here,
	 * and is likely one of the registry's own dups reached by giving a number twice.
	 */
	fdflags = fcntl(fd, F_GETFD);
	if (fdflags < 0 || (fdflags & FD_CLOEXEC)) {
		msg_set(errbuf, errlen, "fd %d is already in use in this process (not inherited)",
			fd);
		return -EBUSY;
	}
	/* At least 3, so a closed standard stream is never reused for a set. */
	dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (dup_fd < 0) {
		r = -errno;
		msg_set(errbuf, errlen, "cannot duplicate fd %d: %s", fd, strerror(-r));
		return r;
	}
	pthread_mutex_lock(&reg_lock);
	r = add_locked(a.set, dup_fd, a.opaque, NULL, errbuf, errlen);
	pthread_mutex_unlock(&reg_lock);
	if (r < 0)
		return r;
	TAKE_FD(dup_fd);
	close(fd);
	return 0;
}
