// SPDX-License-Identifier: MIT
/* Opening path | fd:N | /dev/fdset/N after QEMU, and the O_DIRECT twin of an open file. */
#include "fdopen.h"
#include "cleanup.h"
#include "fdset-internal.h"
#include "msg.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

/* Flags F_SETFL can change on Linux; the rest are ignored by it anyway. */
#define SETFL_MASK (O_APPEND | O_ASYNC | O_DIRECT | O_NOATIME | O_NONBLOCK)

bool snap_io_is_fdset_spec(const char *spec)
{
	return spec && !strncmp(spec, SNAP_FDSET_PREFIX, strlen(SNAP_FDSET_PREFIX));
}

bool snap_io_is_fd_spec(const char *spec)
{
	return spec && (!strncmp(spec, "fd:", 3) || snap_io_is_fdset_spec(spec));
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
		msg_set(errbuf, errlen, "cannot duplicate fd %d: %s", fd, strerror(-r));
		return r;
	}
	fl = fcntl(nfd, F_GETFL);
	if (fl < 0)
		goto fail;
	if ((fl & O_SYNC) != (flags & O_SYNC)) {
		msg_set(errbuf, errlen, "fd %d differs from the request in O_SYNC", fd);
		return -EINVAL;
	}
	if (fcntl(nfd, F_SETFL, flags & SETFL_MASK) < 0)
		goto fail;
	if ((flags & O_TRUNC) || (flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL))
		if (ftruncate(nfd, 0) < 0)
			goto fail;
	*ret_fd = TAKE_FD(nfd);
	return 0;
fail:
	r = -errno;
	msg_set(errbuf, errlen, "fd %d: %s", fd, strerror(-r));
	return r;
}

static int open_fd_n(const char *spec, int flags, int *ret_fd, char *errbuf, size_t errlen)
{
	int64_t n;
	int fl, want = flags & O_ACCMODE, have;

	if (fdset_parse_dec(spec + 3, strlen(spec + 3), INT_MAX, &n) < 0) {
		msg_set(errbuf, errlen, "'%s': expected fd:N with N a decimal number", spec);
		return -EINVAL;
	}
	fl = fcntl((int)n, F_GETFL);
	if (fl < 0) {
		msg_set(errbuf, errlen, "fd %d is not open", (int)n);
		return -EBADF;
	}
	have = fl & O_ACCMODE;
	if ((fl & O_PATH) || (have != O_RDWR && have != want)) {
		msg_set(errbuf, errlen, "fd %d is open %s, which cannot serve %s", (int)n,
			fl & O_PATH ? "O_PATH" : fdset_accmode_name(fl), fdset_accmode_name(flags));
		return -EACCES;
	}
	/* F_SETFL would toggle O_DIRECT for every holder of the description, so refuse. */
	if ((fl & O_DIRECT) != (flags & O_DIRECT)) {
		msg_set(errbuf, errlen, "fd %d is open %s O_DIRECT but %s was asked for%s", (int)n,
			fl & O_DIRECT ? "with" : "without",
			flags & O_DIRECT ? "O_DIRECT" : "buffered I/O",
			flags & O_DIRECT ? " (open the file again with O_DIRECT)" : "");
		return -EACCES;
	}
	return dup_flags((int)n, flags, ret_fd, errbuf, errlen);
}

/* -errno of the open(2) that just failed, and its message. */
static int open_failed(int flags, char *errbuf, size_t errlen)
{
	int e = errno;

	msg_set(errbuf, errlen, "%s%s", strerror(e),
		(flags & O_DIRECT) && e == EINVAL ? " (the file system may not support O_DIRECT)"
						  : "");
	return -e;
}

static int open_fdset(const char *spec, int flags, int *ret_fd, char *errbuf, size_t errlen)
{
	const char *num = spec + strlen(SNAP_FDSET_PREFIX);
	int64_t id;

	if (fdset_parse_dec(num, strlen(num), INT64_MAX, &id) < 0) {
		msg_set(errbuf, errlen,
			"'%s': expected " SNAP_FDSET_PREFIX "N with N a decimal number", spec);
		return -EINVAL;
	}
	return fdset_select(id, flags, dup_flags, ret_fd, errbuf, errlen);
}

int snap_io_open(const char *spec, int flags, mode_t mode, int *ret_fd, char *errbuf, size_t errlen)
{
	int fd;

	if (!spec || !*spec) {
		msg_set(errbuf, errlen, "empty file name");
		return -EINVAL;
	}
	if (!strncmp(spec, "fd:", 3))
		return open_fd_n(spec, flags, ret_fd, errbuf, errlen);
	if (snap_io_is_fdset_spec(spec))
		return open_fdset(spec, flags, ret_fd, errbuf, errlen);
	fd = open(spec, flags | O_CLOEXEC, mode);
	if (fd < 0)
		return open_failed(flags, errbuf, errlen);
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

		msg_set(errbuf, errlen, "fstat: %s", strerror(e));
		return -e;
	}
	if (!snap_same_file(&a, &b)) {
		msg_set(errbuf, errlen,
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
		msg_set(errbuf, errlen,
			"%s is one descriptor; O_DIRECT needs a second one in an fd set", spec);
		return -EINVAL;
	}
	if (snap_io_is_fdset_spec(spec)) {
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
		if (twin < 0)
			return open_failed(flags, errbuf, errlen);
	}
	r = check_twin(fd, twin, errbuf, errlen);
	if (r < 0)
		return r;
	*ret_fd = TAKE_FD(twin);
	return 0;
}
