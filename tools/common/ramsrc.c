// SPDX-License-Identifier: MIT
/* Parsing and mapping of RAM block sources and destinations. */
#include "ramsrc.h"
#include "fdopen.h"
#include "layout.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <linux/magic.h>

int snap_parse_size(const char *s, uint64_t *ret)
{
	unsigned long long v;
	char *end;
	unsigned shift = 0;

	if (!s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	/* Decimal, or hex after "0x": a leading zero does not mean octal. */
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		if (!isxdigit((unsigned char)s[2]))
			return -EINVAL;
		v = strtoull(s + 2, &end, 16);
	} else {
		v = strtoull(s, &end, 10);
	}
	if (errno == ERANGE)
		return -ERANGE;
	if (end == s)
		return -EINVAL;
	switch (*end) {
	case 'k':
	case 'K':
		shift = 10;
		end++;
		break;
	case 'm':
	case 'M':
		shift = 20;
		end++;
		break;
	case 'g':
	case 'G':
		shift = 30;
		end++;
		break;
	case 't':
	case 'T':
		shift = 40;
		end++;
		break;
	default: break;
	}
	if (shift && (!strcasecmp(end, "iB")))
		end += 2;
	else if (!strcasecmp(end, "B"))
		end++;
	if (*end)
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -ERANGE;
	*ret = (uint64_t)v << shift;
	return 0;
}

void snap_ram_spec_clear(struct snap_ram_spec *s)
{
	free(s->where);
	memset(s, 0, sizeof(*s));
}

int snap_ram_spec_parse(const char *arg, struct snap_ram_spec *ret, char *errbuf, size_t errlen)
{
	struct snap_ram_spec s = { 0 };
	const char *eq = strchr(arg, '=');
	char *rest, *opt, *save = NULL;

	if (!eq || eq == arg) {
		snprintf(errbuf, errlen, "'%s': expected NAME=SOURCE", arg);
		return -EINVAL;
	}
	if ((size_t)(eq - arg) > 255) {
		snprintf(errbuf, errlen, "block name longer than 255 bytes");
		return -EINVAL;
	}
	memcpy(s.name, arg, (size_t)(eq - arg));
	rest = strdup(eq + 1);
	if (!rest)
		return -ENOMEM;
	/* Options follow the last path component; a comma in a path is not supported. */
	opt = strtok_r(rest, ",", &save);
	/* strtok_r skips leading commas: in "NAME=,size=N" the source is empty. */
	if (!opt || opt != rest) {
		snprintf(errbuf, errlen, "block '%s': empty source", s.name);
		free(rest);
		return -EINVAL;
	}
	s.where = strdup(opt);
	if (!s.where) {
		free(rest);
		return -ENOMEM;
	}
	while ((opt = strtok_r(NULL, ",", &save))) {
		uint64_t *dst = NULL;

		if (!strncmp(opt, "size=", 5)) {
			dst = &s.size;
			s.has_size = true;
		} else if (!strncmp(opt, "offset=", 7)) {
			dst = &s.offset;
		}
		if (!dst || snap_parse_size(strchr(opt, '=') + 1, dst)) {
			snprintf(errbuf, errlen,
				 "block '%s': bad option '%s' (size=BYTES, offset=BYTES)", s.name,
				 opt);
			free(rest);
			free(s.where);
			return -EINVAL;
		}
	}
	free(rest);
	if (s.has_size && (s.size == 0 || s.size % MR_PAGE_SIZE)) {
		snprintf(errbuf, errlen, "block '%s': size %llu is not a non-zero multiple of 4096",
			 s.name, (unsigned long long)s.size);
		free(s.where);
		return -EINVAL;
	}
	if (s.offset % MR_PAGE_SIZE) {
		snprintf(errbuf, errlen, "block '%s': offset %llu is not a multiple of 4096",
			 s.name, (unsigned long long)s.offset);
		free(s.where);
		return -EINVAL;
	}
	*ret = s;
	return 0;
}

static int fd_size(int fd, uint64_t *ret)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISREG(st.st_mode)) {
		*ret = (uint64_t)st.st_size;
		return 0;
	}
	if (S_ISBLK(st.st_mode) || S_ISCHR(st.st_mode)) {
		off_t end = lseek(fd, 0, SEEK_END);

		if (end < 0)
			return -errno;
		*ret = (uint64_t)end;
		return 0;
	}
	return -EINVAL;
}

static bool on_hugetlbfs(int fd)
{
	struct statfs sf;

	return fstatfs(fd, &sf) == 0 && sf.f_type == HUGETLBFS_MAGIC;
}

/*
 * Is [start, end) of fd a hole (reads as zero)? SEEK_DATA says; a device
 * never is. hugetlbfs reports every offset as data, so there only a file
 * without a single huge page counts.
 */
static bool range_is_hole(int fd, uint64_t start, uint64_t end)
{
	struct stat st;
	off_t d;

	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		return false;
	if (on_hugetlbfs(fd))
		return st.st_blocks == 0;
	d = lseek(fd, (off_t)start, SEEK_DATA);
	if (d < 0)
		return errno == ENXIO;
	return (uint64_t)d >= end;
}

static int map(struct snap_ram_map *m, int prot, char *errbuf, size_t errlen)
{
	/*
	 * A shared hugetlbfs mapping reserves huge pages for its whole length,
	 * and fails when the pool cannot cover the holes. Reading needs none:
	 * the save never faults a hugetlbfs hole (see source_scan() in save.c).
	 */
	int flags = MAP_SHARED | (prot & PROT_WRITE ? 0 : MAP_NORESERVE);
	void *p = mmap(NULL, m->length, prot, flags, m->fd, (off_t)m->offset);

	if (p == MAP_FAILED) {
		int e = errno;
		const char *why = strerror(e);

		if (on_hugetlbfs(m->fd) && e == ENOMEM)
			why = "not enough free huge pages for the whole block";
		else if (on_hugetlbfs(m->fd) && e == EINVAL)
			why = "hugetlbfs needs an offset that is a multiple of its huge page size";
		snprintf(errbuf, errlen, "cannot map %llu bytes at offset %llu: %s",
			 (unsigned long long)m->length, (unsigned long long)m->offset, why);
		return -e;
	}
	m->addr = m->map_base = p;
	m->map_len = m->length;
	return 0;
}

/* snap_io_open() of s->where; a path is named in the message, fd forms name themselves. */
static int open_where(const struct snap_ram_spec *s, int flags, mode_t mode, int *fd, char *errbuf,
		      size_t errlen)
{
	char why[256];
	struct stat st;
	int r;

	/* Guest memory is mapped: never block in open() on a FIFO nobody writes to. */
	if (!snap_io_is_fd_spec(s->where) && stat(s->where, &st) == 0 &&
	    (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) {
		snprintf(errbuf, errlen, "'%s' is not a regular file, memfd or device", s->where);
		return -EINVAL;
	}
	r = snap_io_open(s->where, flags, mode, fd, why, sizeof(why));
	if (r < 0 && snap_io_is_fd_spec(s->where))
		snprintf(errbuf, errlen, "%s", why);
	else if (r < 0)
		snprintf(errbuf, errlen, "%s: %s", s->where, why);
	return r;
}

int snap_ram_map_source(const struct snap_ram_spec *s, struct snap_ram_map *ret, char *errbuf,
			size_t errlen)
{
	struct snap_ram_map m = { .fd = -1, .dirfd = -1 };
	uint64_t size, end;
	int r;

	r = open_where(s, O_RDONLY, 0, &m.fd, errbuf, errlen);
	if (r < 0)
		return r;
	r = fd_size(m.fd, &size);
	if (r < 0) {
		snprintf(errbuf, errlen, "'%s' is not a regular file, memfd or device", s->where);
		goto close_fd;
	}
	m.offset = s->offset;
	if (s->has_size) {
		m.length = s->size;
	} else {
		if (s->offset > size) {
			r = -EINVAL;
			snprintf(errbuf, errlen, "offset %llu is past the end of '%s' (%llu bytes)",
				 (unsigned long long)s->offset, s->where, (unsigned long long)size);
			goto close_fd;
		}
		m.length = size - s->offset;
	}
	if (m.length == 0 || m.length % MR_PAGE_SIZE) {
		r = -EINVAL;
		snprintf(errbuf, errlen, "size %llu of '%s' is not a non-zero multiple of 4096",
			 (unsigned long long)m.length, s->where);
		goto close_fd;
	}
	if (__builtin_add_overflow(m.offset, m.length, &end) || end > size) {
		r = -EINVAL;
		snprintf(errbuf, errlen, "%llu bytes at offset %llu exceed '%s' (%llu bytes)",
			 (unsigned long long)m.length, (unsigned long long)m.offset, s->where,
			 (unsigned long long)size);
		goto close_fd;
	}
	r = map(&m, PROT_READ, errbuf, errlen);
	if (r < 0)
		goto close_fd;
	/*
	 * A save reads each page once: no recency, so neither faults nor the
	 * final munmap mark 1M pages accessed on the LRU (exit took 184 ms
	 * instead of about 50 ms for 4 GiB).
	 */
	madvise(m.map_base, m.map_len, MADV_SEQUENTIAL);
	*ret = m;
	return 0;

close_fd:
	close(m.fd);
	return r;
}

int snap_open_parent(const char *path, int *ret_dirfd, const char **ret_name)
{
	const char *slash = strrchr(path, '/');
	char *dir;
	int fd;

	if (slash && !slash[1])
		return -EISDIR;
	if (!slash) {
		dir = strdup(".");
	} else if (slash == path) {
		dir = strdup("/");
	} else {
		dir = strndup(path, (size_t)(slash - path));
	}
	if (!dir)
		return -ENOMEM;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dir);
	if (fd < 0)
		return -errno;
	*ret_dirfd = fd;
	*ret_name = slash ? slash + 1 : path;
	return 0;
}

int snap_create_temp_at(int dirfd, const char *name, char *tmp, size_t tmplen)
{
	static const char digits[] = "abcdefghijklmnopqrstuvwxyz0123456789";

	/* ".", "-", ".snapmr-" and six characters: 16 bytes besides NAME. */
	if (tmplen < NAME_MAX + 1)
		return -EINVAL;
	for (int tries = 0; tries < 100; tries++) {
		unsigned char rnd[6];
		char suffix[7];
		int fd;

		if (getentropy(rnd, sizeof(rnd)) < 0)
			return -errno;
		for (size_t i = 0; i < sizeof(rnd); i++)
			suffix[i] = digits[rnd[i] % (sizeof(digits) - 1)];
		suffix[6] = 0;
		snprintf(tmp, tmplen, ".%.*s.snapmr-%s", NAME_MAX - 15, name, suffix);
		fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd >= 0)
			return fd;
		if (errno != EEXIST)
			return -errno;
	}
	return -EEXIST;
}

static const char symlink_refused[] =
	"is a symbolic link (not followed: remove it or pick another directory)";

/*
 * Why an existing entry of the --all directory may not be written, or NULL:
 * only a plain file of this user's, not linked from anywhere else, is reused.
 */
static const char *unsafe_entry(const struct stat *st, char *buf, size_t len)
{
	if (S_ISLNK(st->st_mode))
		return symlink_refused;
	if (!S_ISREG(st->st_mode))
		return "exists and is not a regular file";
	if (st->st_nlink != 1) {
		snprintf(buf, len,
			 "has %llu hard links (another name could see the guest's memory)",
			 (unsigned long long)st->st_nlink);
		return buf;
	}
	if (st->st_uid != geteuid()) {
		snprintf(buf, len,
			 "is owned by uid %u, not by this user (its owner could read the guest's "
			 "memory)",
			 (unsigned)st->st_uid);
		return buf;
	}
	return NULL;
}

/* The message for open_dest()'s error r (-errno), which it returns. */
static int dest_failed(const struct snap_ram_spec *s, bool in_dir, int r, char *errbuf,
		       size_t errlen)
{
	if (r == -ELOOP && in_dir)
		snprintf(errbuf, errlen, "%s: %s", s->where, symlink_refused);
	else if (r == -ENOENT && !in_dir)
		snprintf(errbuf, errlen, "%s: %s (a dangling symbolic link is not followed)",
			 s->where, strerror(-r));
	else
		snprintf(errbuf, errlen, "%s: %s", s->where, strerror(-r));
	return r;
}

/*
 * Opens name, an existing entry of pdir, read-write unless it must not be
 * mapped (in_dir: an --all directory, where only plain files of ours go).
 * 0 with m->fd set; 1 if the entry vanished meanwhile; -errno and a message.
 */
static int open_existing(const struct snap_ram_spec *s, int pdir, const char *name, bool in_dir,
			 struct snap_ram_map *m, char *errbuf, size_t errlen)
{
	int nofollow = in_dir ? O_NOFOLLOW : 0;
	struct stat st, fst;
	const char *bad;
	char why[160];

	if (fstatat(pdir, name, &st, in_dir ? AT_SYMLINK_NOFOLLOW : 0) < 0)
		return errno == ENOENT ? 1 : dest_failed(s, in_dir, -errno, errbuf, errlen);
	bad = in_dir ? unsafe_entry(&st, why, sizeof(why)) : NULL;
	/* Guest memory is mapped: never block in open() on a FIFO nobody writes to. */
	if (!bad && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
		bad = "is not a regular file, memfd or device";
	if (bad) {
		snprintf(errbuf, errlen, "%s: %s", s->where, bad);
		return -EPERM;
	}
	m->fd = openat(pdir, name, O_RDWR | nofollow | O_CLOEXEC | (in_dir ? O_NONBLOCK : 0));
	if (m->fd < 0)
		return errno == ENOENT ? 1 : dest_failed(s, in_dir, -errno, errbuf, errlen);
	/* What was opened is what was checked (nothing swapped in between). */
	if (in_dir && (fstat(m->fd, &fst) < 0 || !snap_same_file(&fst, &st) ||
		       unsafe_entry(&fst, why, sizeof(why)))) {
		snprintf(errbuf, errlen, "%s: changed while being opened", s->where);
		close(m->fd);
		m->fd = -1;
		return -EPERM;
	}
	return 0;
}

/*
 * Opens s->where (see snap_ram_map_dest()) read-write: created with O_EXCL
 * when missing, else the existing file. Fills m->fd and, when created,
 * m->created, m->dirfd, m->own_dirfd and m->name.
 */
static int open_dest(const struct snap_ram_spec *s, int dirfd, struct snap_ram_map *m, char *errbuf,
		     size_t errlen)
{
	int nofollow = dirfd >= 0 ? O_NOFOLLOW : 0;
	const char *name;
	int pdir, r = -ENOENT;

	if (dirfd < 0 && snap_io_is_fd_spec(s->where))
		return open_where(s, O_RDWR, 0, &m->fd, errbuf, errlen);
	if (dirfd >= 0) {
		pdir = dirfd;
		name = strrchr(s->where, '/') ? strrchr(s->where, '/') + 1 : s->where;
	} else {
		r = snap_open_parent(s->where, &pdir, &name);
		if (r < 0) {
			snprintf(errbuf, errlen, "%s: %s", s->where, strerror(-r));
			return r;
		}
	}
	/* An entry can vanish between the two opens: look again, a few times. */
	for (int tries = 0; tries < 3; tries++) {
		m->fd = openat(pdir, name, O_RDWR | O_CREAT | O_EXCL | nofollow | O_CLOEXEC, 0600);
		if (m->fd >= 0) {
			m->created = true;
			m->dirfd = pdir;
			m->own_dirfd = dirfd < 0;
			m->name = name;
			return 0;
		}
		if (errno != EEXIST) {
			r = dest_failed(s, dirfd >= 0, -errno, errbuf, errlen);
			break;
		}
		r = open_existing(s, pdir, name, dirfd >= 0, m, errbuf, errlen);
		if (r == 0) {
			if (dirfd < 0)
				close(pdir);
			return 0;
		}
		if (r < 0)
			break;
		r = dest_failed(s, dirfd >= 0, -ENOENT, errbuf, errlen);
	}
	if (dirfd < 0)
		close(pdir);
	m->fd = -1;
	return r;
}

/* Undoes open_dest(): closes, and removes the file only if the name still holds it. */
static void close_dest(struct snap_ram_map *m)
{
	struct stat st, now;

	if (m->created && fstat(m->fd, &st) == 0 &&
	    fstatat(m->dirfd, m->name, &now, AT_SYMLINK_NOFOLLOW) == 0 && st.st_dev == now.st_dev &&
	    st.st_ino == now.st_ino)
		unlinkat(m->dirfd, m->name, 0);
	close(m->fd);
	if (m->own_dirfd)
		close(m->dirfd);
}

int snap_ram_map_dest(const struct snap_ram_spec *s, int dirfd, uint64_t length,
		      struct snap_ram_map *ret, char *errbuf, size_t errlen)
{
	struct snap_ram_map m = { .fd = -1, .dirfd = -1 };
	uint64_t size, end;
	int r;

	if (s->has_size && s->size != length) {
		snprintf(errbuf, errlen, "size=%llu given but the block holds %llu bytes",
			 (unsigned long long)s->size, (unsigned long long)length);
		return -EINVAL;
	}
	r = open_dest(s, dirfd, &m, errbuf, errlen);
	if (r < 0)
		return r;
	m.offset = s->offset;
	m.length = length;
	r = fd_size(m.fd, &size);
	if (r < 0) {
		snprintf(errbuf, errlen, "'%s' is not a regular file, memfd or device", s->where);
		goto close_fd;
	}
	if (__builtin_add_overflow(m.offset, length, &end) || end > INT64_MAX) {
		r = -EOVERFLOW;
		snprintf(errbuf, errlen, "offset %llu + length overflows",
			 (unsigned long long)m.offset);
		goto close_fd;
	}
	/*
	 * Nothing beyond the old end of file can hold data, nor can a hole: a
	 * memfd a manager just sized with ftruncate needs no clearing either.
	 */
	m.zeroed = size <= m.offset || range_is_hole(m.fd, m.offset, size < end ? size : end);
	if (size < end) {
		struct stat st;

		if (fstat(m.fd, &st) < 0 || !S_ISREG(st.st_mode)) {
			r = -EINVAL;
			snprintf(errbuf, errlen, "'%s' holds %llu bytes, the block needs %llu",
				 s->where, (unsigned long long)size, (unsigned long long)end);
			goto close_fd;
		}
		/* Grown to hold the block, never cut: the file may hold other blocks past it. */
		if (ftruncate(m.fd, (off_t)end) < 0) {
			r = -errno;
			snprintf(errbuf, errlen, "cannot resize '%s' to %llu bytes: %s", s->where,
				 (unsigned long long)end,
				 r == -EINVAL && on_hugetlbfs(m.fd)
					 ? "hugetlbfs needs a multiple of its huge page size"
					 : strerror(-r));
			goto close_fd;
		}
	}
	r = map(&m, PROT_READ | PROT_WRITE, errbuf, errlen);
	if (r < 0)
		goto close_fd;
	*ret = m;
	return 0;

close_fd:
	close_dest(&m);
	return r;
}

void snap_ram_unmap(struct snap_ram_map *m)
{
	/* Only a successful map fills map_base, so a zeroed struct owns nothing. */
	if (!m->map_base)
		return;
	munmap(m->map_base, m->map_len);
	close(m->fd);
	if (m->own_dirfd)
		close(m->dirfd);
	memset(m, 0, sizeof(*m));
	m->fd = m->dirfd = -1;
}
