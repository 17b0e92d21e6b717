// SPDX-License-Identifier: MIT
/* Temporary-file-and-rename output handling for saves. */
#include "outfile.h"
#include "engine.h"
#include "fdset.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

/* The one output a signal handler may have to remove. */
static volatile sig_atomic_t tmp_armed;
static char tmp_for_signal[4096];

void snap_outfile_signal_cleanup(void)
{
	if (tmp_armed)
		unlink(tmp_for_signal);
}

static int copy_prefix(const char *path, int out, uint64_t offset, char *errbuf, size_t errlen)
{
	uint8_t buf[65536];
	uint64_t done = 0;
	int in = open(path, O_RDONLY | O_CLOEXEC);

	if (in < 0) {
		int e = errno;

		snprintf(errbuf, errlen,
			 "--offset %llu needs an existing file holding the prefix: %s",
			 (unsigned long long)offset, strerror(e));
		return -e;
	}
	while (done < offset) {
		size_t n = offset - done < sizeof(buf) ? (size_t)(offset - done) : sizeof(buf);
		long got = snap_pread_full(in, buf, n, done);
		int r;

		if (got < 0 || (size_t)got != n) {
			snprintf(errbuf, errlen, "the existing file is shorter than --offset %llu",
				 (unsigned long long)offset);
			close(in);
			return got < 0 ? (int)got : -EINVAL;
		}
		r = snap_pwrite_all(out, buf, n, done);
		if (r) {
			snprintf(errbuf, errlen, "copying the prefix: %s", strerror(-r));
			close(in);
			return r;
		}
		done += n;
	}
	close(in);
	return 0;
}

static int open_direct(struct snap_outfile *o, const char *path, enum snap_direct direct,
		       char *errbuf, size_t errlen)
{
	if (direct == SNAP_DIRECT_OFF)
		return 0;
	o->direct_fd = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC);
	if (o->direct_fd >= 0)
		return 0;
	int e = errno;

	snprintf(o->direct_err, sizeof(o->direct_err), "%s", strerror(e));
	if (direct == SNAP_DIRECT_ON) {
		snprintf(errbuf, errlen, "the file system refuses O_DIRECT (%s)", strerror(e));
		return -e;
	}
	o->direct_refused = true;
	return 0;
}

int snap_outfile_open(struct snap_outfile *o, const char *spec, enum snap_direct direct,
		      uint64_t offset, char *errbuf, size_t errlen)
{
	char *dir_copy = NULL, *base_copy = NULL, *real = NULL;
	struct stat st;
	int r;

	memset(o, 0, sizeof(*o));
	o->fd = o->direct_fd = -1;
	if (snap_io_is_fd_spec(spec)) {
		/* Descriptors only: no path is ever opened, no temporary file. */
		r = snap_io_open(spec, O_WRONLY, 0, &o->fd, errbuf, errlen);
		if (r < 0)
			return r;
		if (direct == SNAP_DIRECT_OFF)
			return 0;
		if (strncmp(spec, "/dev/fdset/", 11)) {
			/* O_DIRECT belongs to an open file description: one fd cannot be both. */
			snprintf(o->direct_err, sizeof(o->direct_err),
				 "%s is one descriptor; O_DIRECT needs a second one in an fd set",
				 spec);
			if (direct == SNAP_DIRECT_ON) {
				snprintf(errbuf, errlen, "%s", o->direct_err);
				r = -EINVAL;
				goto fail;
			}
			o->direct_refused = true;
			return 0;
		}
		r = snap_io_open(spec, O_WRONLY | O_DIRECT, 0, &o->direct_fd, errbuf, errlen);
		if (r == -EACCES && direct == SNAP_DIRECT_AUTO) {
			snprintf(o->direct_err, sizeof(o->direct_err),
				 "the fd set holds no O_WRONLY|O_DIRECT descriptor");
			o->direct_refused = true;
			o->direct_fd = -1;
			return 0;
		}
		if (r < 0)
			goto fail;
		return 0;
	}

	/*
	 * Write next to what the path names: through a symlink to its target
	 * (as QEMU's open would), and never over a device, FIFO or directory.
	 */
	if (lstat(spec, &st) == 0) {
		if (S_ISLNK(st.st_mode)) {
			real = realpath(spec, NULL);
			if (real && (stat(real, &st) < 0 || !S_ISREG(st.st_mode))) {
				free(real);
				real = NULL;
			}
		}
		if (!real && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode)) {
			r = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
			snprintf(errbuf, errlen, "%s",
				 S_ISDIR(st.st_mode) ? "is a directory"
						     : "exists and is not a regular file (pass a "
						       "device as fd:N)");
			return r;
		}
		if (real)
			spec = real;
	}
	dir_copy = strdup(spec);
	base_copy = strdup(spec);
	if (!dir_copy || !base_copy) {
		r = -ENOMEM;
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	const char *dir = dirname(dir_copy), *base = basename(base_copy);

	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		r = stat(dir, &st) < 0 ? -errno : -ENOTDIR;
		snprintf(errbuf, errlen, "output directory '%s': %s", dir, strerror(-r));
		goto fail;
	}
	if (asprintf(&o->tmp_path, "%s/.%s.snapmr-XXXXXX", dir, base) < 0) {
		o->tmp_path = NULL;
		r = -ENOMEM;
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	o->final_path = strdup(spec);
	if (!o->final_path) {
		r = -ENOMEM;
		snprintf(errbuf, errlen, "out of memory");
		goto fail;
	}
	o->fd = mkostemp(o->tmp_path, O_CLOEXEC);
	if (o->fd < 0) {
		r = -errno;
		snprintf(errbuf, errlen, "cannot create a file in '%s': %s", dir, strerror(-r));
		free(o->tmp_path);
		o->tmp_path = NULL;
		goto fail;
	}
	if (strlen(o->tmp_path) < sizeof(tmp_for_signal)) {
		memcpy(tmp_for_signal, o->tmp_path, strlen(o->tmp_path) + 1);
		tmp_armed = 1;
	}
	if (offset) {
		r = copy_prefix(spec, o->fd, offset, errbuf, errlen);
		if (r)
			goto fail;
	}
	r = open_direct(o, o->tmp_path, direct, errbuf, errlen);
	if (r)
		goto fail;
	free(dir_copy);
	free(base_copy);
	free(real);
	return 0;

fail:
	free(dir_copy);
	free(base_copy);
	free(real);
	snap_outfile_abort(o);
	return r;
}

int snap_outfile_commit(struct snap_outfile *o, char *errbuf, size_t errlen)
{
	if (!o->final_path)
		return 0;
	if (rename(o->tmp_path, o->final_path) < 0) {
		int e = errno;

		snprintf(errbuf, errlen, "cannot rename the finished file into place: %s",
			 strerror(e));
		return -e;
	}
	tmp_armed = 0;
	free(o->tmp_path);
	o->tmp_path = NULL;

	/* The rename is durable only once the directory is. */
	char *dir_copy = strdup(o->final_path);
	int dfd = dir_copy ? open(dirname(dir_copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;

	int r = dfd < 0 ? -errno : 0;

	if (dfd >= 0) {
		if (fsync(dfd) < 0 && errno != EINVAL)
			r = -errno;
		close(dfd);
	}
	if (r)
		snprintf(errbuf, errlen, "syncing the directory after the rename: %s",
			 strerror(-r));
	free(dir_copy);
	return r;
}

void snap_outfile_abort(struct snap_outfile *o)
{
	if (!o)
		return;
	if (o->direct_fd >= 0)
		close(o->direct_fd);
	if (o->fd >= 0)
		close(o->fd);
	if (o->tmp_path) {
		tmp_armed = 0;
		unlink(o->tmp_path);
		free(o->tmp_path);
	}
	free(o->final_path);
	memset(o, 0, sizeof(*o));
	o->fd = o->direct_fd = -1;
}
