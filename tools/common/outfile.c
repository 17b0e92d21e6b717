// SPDX-License-Identifier: MIT
/*
 * Temporary-file-and-rename output handling for saves. The tool often runs as
 * root and may write into a directory someone else can change, so after the
 * one lookup of the output's directory no path is resolved again: every name
 * is relative to the directory descriptor, nothing created follows a link, and
 * each descriptor or name that must be our file is checked to be our inode.
 */
#include "outfile.h"
#include "engine.h"
#include "fdopen.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/stat.h>

#define TMP_TAG	   ".snapmr-"
#define TMP_RANDOM 6

/* The one output a signal handler may have to remove. */
static volatile sig_atomic_t tmp_armed;
static int sig_dir_fd = -1, sig_fd = -1;
static char sig_name[256];
static dev_t sig_dev;
static ino_t sig_ino;

/*
 * Async-signal-safe. Unlinks name only if it still holds our file: in a
 * directory others can write, the name may by now be theirs. If it is not,
 * our file went somewhere we do not know, so empty it there.
 */
static void remove_tmp(int dir_fd, const char *name, int fd, dev_t dev, ino_t ino)
{
	struct stat st;

	if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_dev == dev &&
	    st.st_ino == ino)
		unlinkat(dir_fd, name, 0);
	else if (fd >= 0)
		(void)!ftruncate(fd, 0);
}

void snap_outfile_signal_cleanup(void)
{
	if (tmp_armed)
		remove_tmp(sig_dir_fd, sig_name, sig_fd, sig_dev, sig_ino);
}

static const char *kind_of(mode_t m)
{
	return S_ISDIR(m)    ? "a directory"
	       : S_ISBLK(m)  ? "a block device"
	       : S_ISCHR(m)  ? "a character device"
	       : S_ISFIFO(m) ? "a FIFO"
	       : S_ISSOCK(m) ? "a socket"
	       : S_ISLNK(m)  ? "a symbolic link"
			     : "not a regular file";
}

/*
 * One rule for every form of output: a regular file. The trailer's completion
 * record is found from the file's end, so on a device larger than the stream
 * a finished save would read back as incomplete.
 */
static int not_regular(mode_t m, char *errbuf, size_t errlen)
{
	snprintf(errbuf, errlen, "is %s; the output must be a regular file", kind_of(m));
	return S_ISDIR(m) ? -EISDIR : -EINVAL;
}

static int copy_prefix(int in, int out, uint64_t offset, char *errbuf, size_t errlen)
{
	uint8_t buf[65536];
	uint64_t done = 0;

	while (done < offset) {
		size_t n = offset - done < sizeof(buf) ? (size_t)(offset - done) : sizeof(buf);
		long got = snap_pread_full(in, buf, n, done);
		int r;

		if (got < 0 || (size_t)got != n) {
			snprintf(errbuf, errlen, "the existing file is shorter than --offset %llu",
				 (unsigned long long)offset);
			return got < 0 ? (int)got : -EINVAL;
		}
		r = snap_pwrite_all(out, buf, n, done);
		if (r) {
			snprintf(errbuf, errlen, "copying the prefix: %s", strerror(-r));
			return r;
		}
		done += n;
	}
	return 0;
}

/* The existing file holding the prefix: opened once, by name in the directory, no link. */
static int open_prefix(struct snap_outfile *o, uint64_t offset, int *ret_fd, char *errbuf,
		       size_t errlen)
{
	struct stat st;
	int fd = openat(o->dir_fd, o->final_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0) {
		int e = errno;

		snprintf(errbuf, errlen,
			 "--offset %llu needs an existing regular file holding the prefix: %s",
			 (unsigned long long)offset,
			 e == ELOOP ? "it is a symbolic link" : strerror(e));
		return -e;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		int r = fstat(fd, &st) < 0 ? -errno : -EINVAL;

		snprintf(errbuf, errlen,
			 "--offset %llu needs a regular file holding the prefix; %s",
			 (unsigned long long)offset,
			 r == -EINVAL ? kind_of(st.st_mode) : strerror(-r));
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

static int open_direct(struct snap_outfile *o, const char *spec, enum snap_direct direct,
		       char *errbuf, size_t errlen)
{
	int r;

	if (direct == SNAP_DIRECT_OFF)
		return 0;
	r = snap_io_open_twin(o->fd, spec, o->dir_fd, o->tmp_name, true, O_WRONLY | O_DIRECT,
			      &o->direct_fd, errbuf, errlen);
	if (!r)
		return 0;
	o->direct_fd = -1;
	/* Another file behind the twin is never a reason to carry on buffered. */
	if (r == -EXDEV || (direct == SNAP_DIRECT_ON && spec))
		return r;
	if (direct == SNAP_DIRECT_ON) {
		snprintf(errbuf, errlen, "the file system refuses O_DIRECT (%s)", strerror(-r));
		return r;
	}
	if (spec && r == -EACCES)
		snprintf(o->direct_err, sizeof(o->direct_err),
			 "the fd set holds no O_WRONLY|O_DIRECT descriptor");
	else
		snprintf(o->direct_err, sizeof(o->direct_err), "%s", spec ? errbuf : strerror(-r));
	o->direct_refused = true;
	return 0;
}

static int open_descriptor(struct snap_outfile *o, const char *spec, enum snap_direct direct,
			   char *errbuf, size_t errlen)
{
	struct stat st;
	int r;

	/* Descriptors only: no path is ever opened, no temporary file. */
	r = snap_io_open(spec, O_WRONLY, 0, &o->fd, errbuf, errlen);
	if (r < 0)
		return r;
	if (fstat(o->fd, &st) < 0) {
		r = -errno;
		snprintf(errbuf, errlen, "fstat: %s", strerror(-r));
		return r;
	}
	if (!S_ISREG(st.st_mode))
		return not_regular(st.st_mode, errbuf, errlen);
	return open_direct(o, spec, direct, errbuf, errlen);
}

/*
 * Is name one of our temporaries, DIR/.BASE.snapmr-PID-XXXXXX? Returns its
 * PID, or 0.
 */
static pid_t tmp_pid(const char *name, const char *base)
{
	size_t bl = strlen(base), i;
	const char *p;
	long pid = 0;

	if (name[0] != '.' || strncmp(name + 1, base, bl) ||
	    strncmp(name + 1 + bl, TMP_TAG, strlen(TMP_TAG)))
		return 0;
	p = name + 1 + bl + strlen(TMP_TAG);
	for (i = 0; p[i] >= '0' && p[i] <= '9' && i < 10; i++)
		pid = pid * 10 + (p[i] - '0');
	if (!i || p[0] == '0' || p[i] != '-' || strlen(p + i + 1) != TMP_RANDOM ||
	    pid > 0x7fffffffL)
		return 0;
	return (pid_t)pid;
}

/*
 * A save killed by SIGKILL (or a crash) leaves its temporary behind, full of
 * guest memory. Remove those of this output name whose process is gone and
 * which the caller's user owns; nothing else is touched.
 */
static int reap_stale(struct snap_outfile *o, char *errbuf, size_t errlen)
{
	int dfd = openat(o->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	struct dirent *de;
	int r = 0;

	if (!d) {
		if (dfd >= 0)
			close(dfd);
		return 0; /* a directory we cannot list (-wx) has nothing we may reap */
	}
	while ((de = readdir(d))) {
		pid_t pid = tmp_pid(de->d_name, o->final_name);
		struct stat st;
		char **more;

		if (pid <= 0 || pid == getpid() || kill(pid, 0) == 0 || errno != ESRCH)
			continue;
		if (fstatat(o->dir_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISREG(st.st_mode) || st.st_uid != geteuid())
			continue;
		if (unlinkat(o->dir_fd, de->d_name, 0) < 0)
			continue;
		more = realloc(o->reaped, (o->n_reaped + 1) * sizeof(*more));
		if (!more || !(more[o->n_reaped] = strdup(de->d_name))) {
			if (more)
				o->reaped = more;
			snprintf(errbuf, errlen, "out of memory");
			r = -ENOMEM;
			break;
		}
		o->reaped = more;
		o->n_reaped++;
	}
	closedir(d);
	return r;
}

/* Creates .BASE.snapmr-PID-XXXXXX in the directory: new, ours, no link followed. */
static int create_tmp(struct snap_outfile *o, char *errbuf, size_t errlen)
{
	static const char chars[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
	unsigned char rnd[TMP_RANDOM];
	int e = EEXIST;

	for (int tries = 0; tries < 100 && e == EEXIST; tries++) {
		char suffix[TMP_RANDOM + 1];

		if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
			for (size_t i = 0; i < sizeof(rnd); i++)
				rnd[i] = (unsigned char)(rand() ^ tries);
		for (size_t i = 0; i < TMP_RANDOM; i++)
			suffix[i] = chars[rnd[i] % (sizeof(chars) - 1)];
		suffix[TMP_RANDOM] = 0;
		free(o->tmp_name);
		if (asprintf(&o->tmp_name,
			     "."
			     "%s" TMP_TAG "%ld-%s",
			     o->final_name, (long)getpid(), suffix) < 0) {
			o->tmp_name = NULL;
			snprintf(errbuf, errlen, "out of memory");
			return -ENOMEM;
		}
		o->fd = openat(o->dir_fd, o->tmp_name,
			       O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (o->fd >= 0)
			return 0;
		e = errno;
	}
	snprintf(errbuf, errlen, "cannot create a file in the output directory: %s", strerror(e));
	free(o->tmp_name);
	o->tmp_name = NULL;
	return -e;
}

static void arm_signal_cleanup(const struct snap_outfile *o)
{
	struct stat st;

	if (strlen(o->tmp_name) >= sizeof(sig_name) || fstat(o->fd, &st) < 0)
		return;
	tmp_armed = 0;
	memcpy(sig_name, o->tmp_name, strlen(o->tmp_name) + 1);
	sig_dir_fd = o->dir_fd;
	sig_fd = o->fd;
	sig_dev = st.st_dev;
	sig_ino = st.st_ino;
	tmp_armed = 1;
}

/*
 * Splits spec into the directory to open and the name in it. A symbolic link
 * at spec to a regular file is followed (as QEMU's open would write through
 * it): the target's directory and name are used. This and the directory's
 * open are the only path lookups.
 */
static int split_path(const char *spec, char **ret_dir, char **ret_base, char *errbuf,
		      size_t errlen)
{
	char *real = NULL, *dir_copy, *base_copy;
	struct stat st;

	if (lstat(spec, &st) == 0) {
		if (S_ISLNK(st.st_mode)) {
			real = realpath(spec, NULL);
			if (real && (stat(real, &st) < 0 || !S_ISREG(st.st_mode))) {
				free(real);
				real = NULL; /* a dangling link is itself replaced */
			}
		} else if (!S_ISREG(st.st_mode)) {
			return not_regular(st.st_mode, errbuf, errlen);
		}
	}
	dir_copy = strdup(real ? real : spec);
	base_copy = strdup(real ? real : spec);
	free(real);
	*ret_dir = dir_copy ? strdup(dirname(dir_copy)) : NULL;
	*ret_base = base_copy ? strdup(basename(base_copy)) : NULL;
	free(dir_copy);
	free(base_copy);
	if (!*ret_dir || !*ret_base) {
		snprintf(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

int snap_outfile_open(struct snap_outfile *o, const char *spec, enum snap_direct direct,
		      uint64_t offset, char *errbuf, size_t errlen)
{
	char *dir = NULL;
	int prefix_fd = -1, r;

	memset(o, 0, sizeof(*o));
	o->fd = o->direct_fd = o->dir_fd = -1;
	if (snap_io_is_fd_spec(spec)) {
		r = open_descriptor(o, spec, direct, errbuf, errlen);
		if (r)
			snap_outfile_abort(o);
		return r;
	}
	r = split_path(spec, &dir, &o->final_name, errbuf, errlen);
	if (r)
		goto fail;
	o->final_path = strdup(spec);
	if (!o->final_path) {
		r = -ENOMEM;
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	o->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (o->dir_fd < 0) {
		r = -errno;
		snprintf(errbuf, errlen, "output directory '%s': %s", dir, strerror(-r));
		goto fail;
	}
	if (offset) {
		r = open_prefix(o, offset, &prefix_fd, errbuf, errlen);
		if (r)
			goto fail;
	}
	r = create_tmp(o, errbuf, errlen);
	if (r)
		goto fail;
	arm_signal_cleanup(o);
	if (offset) {
		r = copy_prefix(prefix_fd, o->fd, offset, errbuf, errlen);
		if (r)
			goto fail;
	}
	r = open_direct(o, NULL, direct, errbuf, errlen);
	if (r)
		goto fail;
	/* Last, so that o->reaped is reported: a failed open frees it. */
	r = reap_stale(o, errbuf, errlen);
	if (r)
		goto fail;
	if (prefix_fd >= 0)
		close(prefix_fd);
	free(dir);
	return 0;

fail:
	if (prefix_fd >= 0)
		close(prefix_fd);
	free(dir);
	snap_outfile_abort(o);
	return r;
}

/* Does name in the output directory hold the file o->fd is open on? */
static int holds_ours(const struct snap_outfile *o, const char *name)
{
	struct stat mine, there;

	if (fstat(o->fd, &mine) < 0)
		return -errno;
	if (fstatat(o->dir_fd, name, &there, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return snap_same_file(&mine, &there) ? 0 : -ESTALE;
}

int snap_outfile_commit(struct snap_outfile *o, char *errbuf, size_t errlen)
{
	sig_atomic_t armed;
	int r;

	if (!o->final_path)
		return 0;
	r = holds_ours(o, o->tmp_name);
	if (r) {
		snprintf(errbuf, errlen,
			 "the temporary file %s no longer holds the data written (%s): someone "
			 "changed the directory; nothing was renamed",
			 o->tmp_name, r == -ESTALE ? "another file is there" : strerror(-r));
		return r;
	}
	/*
	 * Disarmed first: once renamed, the temporary name is gone and the
	 * handler would take the finished file for one moved away and empty it.
	 * A signal in between leaves the temporary file for the next save to reap.
	 */
	armed = tmp_armed;
	tmp_armed = 0;
	if (renameat(o->dir_fd, o->tmp_name, o->dir_fd, o->final_name) < 0) {
		r = -errno;
		tmp_armed = armed;
		snprintf(errbuf, errlen, "cannot rename the finished file into place: %s",
			 strerror(-r));
		return r;
	}
	free(o->tmp_name);
	o->tmp_name = NULL;
	/* A swap between the check and the rename put someone else's file in place. */
	r = holds_ours(o, o->final_name);
	if (r) {
		(void)!ftruncate(o->fd, 0);
		snprintf(errbuf, errlen,
			 "after the rename the name holds another file than the one written "
			 "(%s): someone changed the directory; the save is void",
			 r == -ESTALE ? "swapped" : strerror(-r));
		return r;
	}
	/* The rename is durable only once the directory is. */
	if (fsync(o->dir_fd) < 0 && errno != EINVAL) {
		r = -errno;
		snprintf(errbuf, errlen, "syncing the directory after the rename: %s",
			 strerror(-r));
		return r;
	}
	return 0;
}

void snap_outfile_abort(struct snap_outfile *o)
{
	if (!o)
		return;
	if (o->tmp_name) {
		struct stat st;

		tmp_armed = 0;
		if (fstat(o->fd, &st) == 0)
			remove_tmp(o->dir_fd, o->tmp_name, o->fd, st.st_dev, st.st_ino);
		free(o->tmp_name);
	}
	if (o->direct_fd >= 0)
		close(o->direct_fd);
	if (o->fd >= 0)
		close(o->fd);
	if (o->dir_fd >= 0)
		close(o->dir_fd);
	for (size_t i = 0; i < o->n_reaped; i++)
		free(o->reaped[i]);
	free(o->reaped);
	free(o->final_name);
	free(o->final_path);
	memset(o, 0, sizeof(*o));
	o->fd = o->direct_fd = o->dir_fd = -1;
}
