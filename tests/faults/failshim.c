// SPDX-License-Identifier: MIT
/*
 * failshim: an LD_PRELOAD library that makes the Nth matching write, sync,
 * truncate or rename fail with a chosen errno (or come back short), so the
 * fault tests can hit every I/O step of a save. Writes submitted through
 * io_uring or libaio never pass through libc, so those are caught at
 * submission and redirected to /dev/full: the kernel itself completes them
 * with ENOSPC (or, in short mode, writes half). Configured from the
 * environment; see tests/faults/README.md.
 */
/* Define pwrite and pwrite64 as two symbols, not one redirected name. */
#undef _FILE_OFFSET_BITS

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "config.h"
#if HAVE_LIBURING
#include <liburing.h>
#endif
#if HAVE_LIBAIO
#include <libaio.h>
#endif

enum op {
	OP_PWRITE = 1u << 0,	  /* pwrite, pwrite64 */
	OP_PWRITEV = 1u << 1,	  /* pwritev, pwritev64, pwritev2, pwritev64v2 */
	OP_WRITE = 1u << 2,	  /* write, writev */
	OP_FDATASYNC = 1u << 3,	  /* fdatasync */
	OP_FSYNC = 1u << 4,	  /* fsync, syncfs */
	OP_FTRUNCATE = 1u << 5,	  /* ftruncate, ftruncate64, fallocate, posix_fallocate */
	OP_RENAME = 1u << 6,	  /* rename, renameat, renameat2 */
	OP_PREAD = 1u << 7,	  /* pread, pread64 */
	OP_URING_WRITE = 1u << 8, /* io_uring write SQEs, at io_uring_submit*() */
	OP_AIO_WRITE = 1u << 9,	  /* libaio write iocbs, at io_submit() */
};

static const struct {
	const char *name;
	unsigned mask;
} op_names[] = {
	{ "pwrite", OP_PWRITE },
	{ "pwritev", OP_PWRITEV },
	{ "write", OP_WRITE },
	{ "fdatasync", OP_FDATASYNC },
	{ "fsync", OP_FSYNC },
	{ "ftruncate", OP_FTRUNCATE },
	{ "rename", OP_RENAME },
	{ "pread", OP_PREAD },
	{ "uring-write", OP_URING_WRITE },
	{ "aio-write", OP_AIO_WRITE },
	{ "writes", OP_PWRITE | OP_PWRITEV | OP_WRITE },
	{ "syncs", OP_FDATASYNC | OP_FSYNC },
};

static struct {
	bool ready;
	unsigned ops;	    /* FAILSHIM_OP: which calls count */
	uint64_t nth;	    /* FAILSHIM_NTH: first call to fail, 1-based; 0 never */
	uint64_t count;	    /* FAILSHIM_COUNT: calls to fail from nth on; 0 all */
	int err;	    /* FAILSHIM_ERRNO */
	bool short_io;	    /* FAILSHIM_MODE=short: transfer half instead of failing */
	const char *substr; /* FAILSHIM_PATH_SUBSTR */
	const char *report; /* FAILSHIM_REPORT: file to append the call count to at exit */
	atomic_uint_fast64_t calls;
	atomic_uint_fast64_t failed;
	int dev_full; /* where failing asynchronous writes are sent */
} cfg;

/* The real functions, looked up on first use (memcpy: ISO C has no object-to-function cast). */
#define REAL(ret, name, ...)                                 \
	static ret (*real_##name)(__VA_ARGS__);              \
	static ret (*get_##name(void))(__VA_ARGS__)          \
	{                                                    \
		if (!real_##name) {                          \
			void *p = dlsym(RTLD_NEXT, #name);   \
			memcpy(&real_##name, &p, sizeof(p)); \
		}                                            \
		return real_##name;                          \
	}

REAL(ssize_t, pwrite, int, const void *, size_t, off_t)
REAL(ssize_t, pread, int, void *, size_t, off_t)
REAL(ssize_t, pread64, int, void *, size_t, off_t)
REAL(ssize_t, pwrite64, int, const void *, size_t, off_t)
REAL(ssize_t, pwritev, int, const struct iovec *, int, off_t)
REAL(ssize_t, pwritev64, int, const struct iovec *, int, off_t)
REAL(ssize_t, pwritev2, int, const struct iovec *, int, off_t, int)
REAL(ssize_t, pwritev64v2, int, const struct iovec *, int, off_t, int)
REAL(ssize_t, write, int, const void *, size_t)
REAL(ssize_t, writev, int, const struct iovec *, int)
REAL(int, fdatasync, int)
REAL(int, fsync, int)
REAL(int, syncfs, int)
REAL(int, ftruncate, int, off_t)
REAL(int, ftruncate64, int, off_t)
REAL(int, fallocate, int, int, off_t, off_t)
REAL(int, fallocate64, int, int, off_t, off_t)
REAL(int, posix_fallocate, int, off_t, off_t)
REAL(int, posix_fallocate64, int, off_t, off_t)
REAL(int, rename, const char *, const char *)
REAL(int, renameat, int, const char *, int, const char *)
REAL(int, renameat2, int, const char *, int, const char *, unsigned)

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *v = getenv(name);

	return v && *v ? strtoull(v, NULL, 0) : dflt;
}

static int parse_errno(const char *v)
{
	static const struct {
		const char *name;
		int err;
	} names[] = { { "ENOSPC", ENOSPC }, { "EIO", EIO },	{ "EDQUOT", EDQUOT },
		      { "EFBIG", EFBIG },   { "EROFS", EROFS }, { "EPERM", EPERM },
		      { "EACCES", EACCES }, { "EINTR", EINTR }, { "EAGAIN", EAGAIN },
		      { "EINVAL", EINVAL }, { "EXDEV", EXDEV }, { "ENOMEM", ENOMEM } };

	if (!v || !*v)
		return EIO;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(v, names[i].name))
			return names[i].err;
	return atoi(v) > 0 ? atoi(v) : EIO;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void say(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int n;

	if (!getenv("FAILSHIM_VERBOSE"))
		return;
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > 0)
		get_write()(STDERR_FILENO, line,
			    (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

__attribute__((constructor)) static void failshim_init(void)
{
	const char *ops = getenv("FAILSHIM_OP");

	if (ops) {
		char buf[256], *save = NULL;

		snprintf(buf, sizeof(buf), "%s", ops);
		for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
			for (size_t i = 0; i < sizeof(op_names) / sizeof(op_names[0]); i++)
				if (!strcmp(t, op_names[i].name))
					cfg.ops |= op_names[i].mask;
		}
	}
	cfg.nth = env_u64("FAILSHIM_NTH", 0);
	cfg.count = env_u64("FAILSHIM_COUNT", 1);
	cfg.err = parse_errno(getenv("FAILSHIM_ERRNO"));
	cfg.short_io = getenv("FAILSHIM_MODE") && !strcmp(getenv("FAILSHIM_MODE"), "short");
	cfg.substr = getenv("FAILSHIM_PATH_SUBSTR");
	if (cfg.substr && !*cfg.substr)
		cfg.substr = NULL;
	cfg.report = getenv("FAILSHIM_REPORT");
	cfg.dev_full = open("/dev/full", O_WRONLY | O_CLOEXEC);
	cfg.ready = true;
}

__attribute__((destructor)) static void failshim_fini(void)
{
	char line[128];
	int fd, n;

	if (!cfg.report || !*cfg.report)
		return;
	fd = open(cfg.report, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	n = snprintf(line, sizeof(line), "calls=%llu failed=%llu\n",
		     (unsigned long long)atomic_load(&cfg.calls),
		     (unsigned long long)atomic_load(&cfg.failed));
	get_write()(fd, line, (size_t)n);
	close(fd);
}

static bool path_matches(const char *path)
{
	return !cfg.substr || (path && strstr(path, cfg.substr));
}

static bool fd_matches(int fd)
{
	char link[64], target[4096];
	ssize_t n;

	if (!cfg.substr)
		return true;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	if (n < 0)
		return false;
	target[n] = 0;
	return strstr(target, cfg.substr) != NULL;
}

/*
 * Counts a call of kind `op`; returns true if this one must fail (or, in
 * short mode, come back short).
 */
static bool hit(unsigned op, int fd, const char *path, const char *what)
{
	uint64_t n;

	if (!cfg.ready || !(cfg.ops & op))
		return false;
	if (path ? !path_matches(path) : !fd_matches(fd))
		return false;
	n = atomic_fetch_add(&cfg.calls, 1) + 1;
	if (!cfg.nth || n < cfg.nth || (cfg.count && n >= cfg.nth + cfg.count))
		return false;
	atomic_fetch_add(&cfg.failed, 1);
	say("failshim: %s #%llu on %s: %s\n", what, (unsigned long long)n, path ? path : "fd",
	    cfg.short_io ? "short" : strerror(cfg.err));
	return true;
}

/* Half of len (at least 1): a short transfer the caller must complete. */
static size_t half(size_t len)
{
	return len > 1 ? len / 2 : len;
}

static int fail_errno(void)
{
	errno = cfg.err;
	return -1;
}

/*
 * For a vectored write that must come back short: the first half of the
 * first vector only, still a valid prefix of the request.
 */
static const struct iovec *shorten(const struct iovec *iov, int *cnt, struct iovec *one)
{
	if (*cnt < 1)
		return iov;
	one->iov_base = iov[0].iov_base;
	one->iov_len = half(iov[0].iov_len);
	*cnt = 1;
	return one;
}

ssize_t pread(int fd, void *buf, size_t len, off_t off)
{
	if (hit(OP_PREAD, fd, NULL, "pread")) {
		if (!cfg.short_io)
			return fail_errno();
		len = half(len);
	}
	return get_pread()(fd, buf, len, off);
}

ssize_t pread64(int fd, void *buf, size_t len, off_t off)
{
	if (hit(OP_PREAD, fd, NULL, "pread64")) {
		if (!cfg.short_io)
			return fail_errno();
		len = half(len);
	}
	return get_pread64()(fd, buf, len, off);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
	if (hit(OP_PWRITE, fd, NULL, "pwrite")) {
		if (!cfg.short_io)
			return fail_errno();
		len = half(len);
	}
	return get_pwrite()(fd, buf, len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off)
{
	if (hit(OP_PWRITE, fd, NULL, "pwrite64")) {
		if (!cfg.short_io)
			return fail_errno();
		len = half(len);
	}
	return get_pwrite64()(fd, buf, len, off);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
	struct iovec one;

	if (hit(OP_PWRITEV, fd, NULL, "pwritev")) {
		if (!cfg.short_io)
			return fail_errno();
		iov = shorten(iov, &cnt, &one);
	}
	return get_pwritev()(fd, iov, cnt, off);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
	struct iovec one;

	if (hit(OP_PWRITEV, fd, NULL, "pwritev64")) {
		if (!cfg.short_io)
			return fail_errno();
		iov = shorten(iov, &cnt, &one);
	}
	return get_pwritev64()(fd, iov, cnt, off);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
	struct iovec one;

	if (hit(OP_PWRITEV, fd, NULL, "pwritev2")) {
		if (!cfg.short_io)
			return fail_errno();
		iov = shorten(iov, &cnt, &one);
	}
	return get_pwritev2()(fd, iov, cnt, off, flags);
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
	struct iovec one;

	if (hit(OP_PWRITEV, fd, NULL, "pwritev64v2")) {
		if (!cfg.short_io)
			return fail_errno();
		iov = shorten(iov, &cnt, &one);
	}
	return get_pwritev64v2()(fd, iov, cnt, off, flags);
}

ssize_t write(int fd, const void *buf, size_t len)
{
	if (hit(OP_WRITE, fd, NULL, "write")) {
		if (!cfg.short_io)
			return fail_errno();
		len = half(len);
	}
	return get_write()(fd, buf, len);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
	struct iovec one;

	if (hit(OP_WRITE, fd, NULL, "writev")) {
		if (!cfg.short_io)
			return fail_errno();
		iov = shorten(iov, &cnt, &one);
	}
	return get_writev()(fd, iov, cnt);
}

/* Calls that cannot be short: in short mode they are only counted. */
#define FAIL_CALL(op, fd, path, what)                         \
	do {                                                  \
		if (hit(op, fd, path, what) && !cfg.short_io) \
			return fail_errno();                  \
	} while (0)

int fdatasync(int fd)
{
	FAIL_CALL(OP_FDATASYNC, fd, NULL, "fdatasync");
	return get_fdatasync()(fd);
}

int fsync(int fd)
{
	FAIL_CALL(OP_FSYNC, fd, NULL, "fsync");
	return get_fsync()(fd);
}

int syncfs(int fd)
{
	FAIL_CALL(OP_FSYNC, fd, NULL, "syncfs");
	return get_syncfs()(fd);
}

int ftruncate(int fd, off_t len)
{
	FAIL_CALL(OP_FTRUNCATE, fd, NULL, "ftruncate");
	return get_ftruncate()(fd, len);
}

int ftruncate64(int fd, off_t len)
{
	FAIL_CALL(OP_FTRUNCATE, fd, NULL, "ftruncate64");
	return get_ftruncate64()(fd, len);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
	FAIL_CALL(OP_FTRUNCATE, fd, NULL, "fallocate");
	return get_fallocate()(fd, mode, off, len);
}

int fallocate64(int fd, int mode, off_t off, off_t len)
{
	FAIL_CALL(OP_FTRUNCATE, fd, NULL, "fallocate64");
	return get_fallocate64()(fd, mode, off, len);
}

/* posix_fallocate returns the error instead of setting errno. */
int posix_fallocate(int fd, off_t off, off_t len)
{
	if (hit(OP_FTRUNCATE, fd, NULL, "posix_fallocate") && !cfg.short_io)
		return cfg.err;
	return get_posix_fallocate()(fd, off, len);
}

int posix_fallocate64(int fd, off_t off, off_t len)
{
	if (hit(OP_FTRUNCATE, fd, NULL, "posix_fallocate64") && !cfg.short_io)
		return cfg.err;
	return get_posix_fallocate64()(fd, off, len);
}

/* A rename matches FAILSHIM_PATH_SUBSTR through either of its paths. */
static const char *rename_path(const char *from, const char *to)
{
	if (!cfg.substr || (from && strstr(from, cfg.substr)))
		return from ? from : "";
	return to ? to : "";
}

int rename(const char *from, const char *to)
{
	FAIL_CALL(OP_RENAME, -1, rename_path(from, to), "rename");
	return get_rename()(from, to);
}

int renameat(int dfrom, const char *from, int dto, const char *to)
{
	FAIL_CALL(OP_RENAME, -1, rename_path(from, to), "renameat");
	return get_renameat()(dfrom, from, dto, to);
}

int renameat2(int dfrom, const char *from, int dto, const char *to, unsigned flags)
{
	FAIL_CALL(OP_RENAME, -1, rename_path(from, to), "renameat2");
	return get_renameat2()(dfrom, from, dto, to, flags);
}

/*
 * FAILSHIM_ENGINE_INIT=uring,aio: those engines cannot start, as on a kernel
 * without the feature (io_uring disabled by sysctl, no AIO), so tests see the
 * tools fall back to another engine. Names are matched whole.
 */
static bool engine_refused(const char *name)
{
	const char *list = getenv("FAILSHIM_ENGINE_INIT");
	size_t len = strlen(name);

	while (list && *list) {
		const char *end = strchrnul(list, ',');

		if ((size_t)(end - list) == len && !strncmp(list, name, len))
			return true;
		list = *end ? end + 1 : end;
	}
	return false;
}

#if HAVE_LIBURING
/*
 * io_uring: registered files are slots, so remember which descriptor each
 * slot of each ring holds (the engines register a handful).
 */
#define SLOTS 64
static struct {
	const struct io_uring *ring;
	int fd[SLOTS];
} slots[16];

static int *slot_table(const struct io_uring *ring)
{
	for (size_t i = 0; i < sizeof(slots) / sizeof(slots[0]); i++) {
		if (slots[i].ring == ring)
			return slots[i].fd;
		if (!slots[i].ring) {
			slots[i].ring = ring;
			for (int k = 0; k < SLOTS; k++)
				slots[i].fd[k] = -1;
			return slots[i].fd;
		}
	}
	return NULL;
}

REAL(int, io_uring_register_files, struct io_uring *, const int *, unsigned)
REAL(int, io_uring_register_files_update, struct io_uring *, unsigned, const int *, unsigned)
REAL(int, io_uring_submit, struct io_uring *)
REAL(int, io_uring_queue_init, unsigned, struct io_uring *, unsigned)
REAL(int, io_uring_queue_init_params, unsigned, struct io_uring *, struct io_uring_params *)

int io_uring_queue_init(unsigned entries, struct io_uring *ring, unsigned flags)
{
	if (engine_refused("uring"))
		return -ENOSYS;
	return get_io_uring_queue_init()(entries, ring, flags);
}

int io_uring_queue_init_params(unsigned entries, struct io_uring *ring, struct io_uring_params *p)
{
	if (engine_refused("uring"))
		return -ENOSYS;
	return get_io_uring_queue_init_params()(entries, ring, p);
}
REAL(int, io_uring_submit_and_wait, struct io_uring *, unsigned)

int io_uring_register_files(struct io_uring *ring, const int *files, unsigned nr)
{
	int *t = slot_table(ring);

	for (unsigned i = 0; t && i < nr && i < SLOTS; i++)
		t[i] = files[i];
	return get_io_uring_register_files()(ring, files, nr);
}

int io_uring_register_files_update(struct io_uring *ring, unsigned off, const int *files,
				   unsigned nr)
{
	int *t = slot_table(ring);

	for (unsigned i = 0; t && i < nr && off + i < SLOTS; i++)
		t[off + i] = files[i];
	return get_io_uring_register_files_update()(ring, off, files, nr);
}

/* The writes about to be submitted: a hit goes to /dev/full, or is halved. */
static void uring_inject(struct io_uring *ring)
{
	struct io_uring_sq *sq = &ring->sq;

	for (unsigned i = sq->sqe_head; i != sq->sqe_tail; i++) {
		struct io_uring_sqe *sqe = &sq->sqes[i & sq->ring_mask];
		int *t = slot_table(ring);
		int fd;

		if (sqe->opcode != IORING_OP_WRITE && sqe->opcode != IORING_OP_WRITEV)
			continue;
		fd = sqe->flags & IOSQE_FIXED_FILE
			     ? (t && sqe->fd >= 0 && sqe->fd < SLOTS ? t[sqe->fd] : -1)
			     : sqe->fd;
		if (!hit(OP_URING_WRITE, fd, NULL, "io_uring write"))
			continue;
		if (cfg.short_io && sqe->opcode == IORING_OP_WRITE) {
			sqe->len = (unsigned)half(sqe->len);
		} else if (cfg.dev_full >= 0) {
			sqe->flags &= (unsigned char)~IOSQE_FIXED_FILE;
			sqe->fd = cfg.dev_full;
		}
	}
}

int io_uring_submit(struct io_uring *ring)
{
	uring_inject(ring);
	return get_io_uring_submit()(ring);
}

int io_uring_submit_and_wait(struct io_uring *ring, unsigned wait_nr)
{
	uring_inject(ring);
	return get_io_uring_submit_and_wait()(ring, wait_nr);
}
#endif

#if HAVE_LIBAIO
/*
 * libaio cannot write to /dev/full (no write_iter: io_submit refuses the
 * iocb with EINVAL), so a hit is remembered at submission and its
 * completion rewritten to the chosen errno when io_getevents() returns it.
 */
static struct iocb *aio_hits[256];
static pthread_mutex_t aio_lock = PTHREAD_MUTEX_INITIALIZER;

REAL(int, io_submit, io_context_t, long, struct iocb **)
REAL(int, io_setup, int, io_context_t *)

int io_setup(int maxevents, io_context_t *ctx)
{
	if (engine_refused("aio"))
		return -ENOSYS;
	return get_io_setup()(maxevents, ctx);
}
REAL(int, io_getevents, io_context_t, long, long, struct io_event *, struct timespec *)

static void aio_remember(struct iocb *io)
{
	pthread_mutex_lock(&aio_lock);
	for (size_t i = 0; i < sizeof(aio_hits) / sizeof(aio_hits[0]); i++)
		if (!aio_hits[i]) {
			aio_hits[i] = io;
			break;
		}
	pthread_mutex_unlock(&aio_lock);
}

static bool aio_take(const struct iocb *io)
{
	bool found = false;

	pthread_mutex_lock(&aio_lock);
	for (size_t i = 0; i < sizeof(aio_hits) / sizeof(aio_hits[0]) && !found; i++)
		if (aio_hits[i] == io) {
			aio_hits[i] = NULL;
			found = true;
		}
	pthread_mutex_unlock(&aio_lock);
	return found;
}

int io_submit(io_context_t ctx, long nr, struct iocb **ios)
{
	for (long i = 0; i < nr; i++) {
		struct iocb *io = ios[i];

		if (io->aio_lio_opcode != IO_CMD_PWRITE && io->aio_lio_opcode != IO_CMD_PWRITEV)
			continue;
		if (!hit(OP_AIO_WRITE, io->aio_fildes, NULL, "libaio write"))
			continue;
		if (cfg.short_io && io->aio_lio_opcode == IO_CMD_PWRITE)
			io->u.c.nbytes = half(io->u.c.nbytes);
		else
			aio_remember(io);
	}
	return get_io_submit()(ctx, nr, ios);
}

int io_getevents(io_context_t ctx, long min_nr, long nr, struct io_event *events,
		 struct timespec *timeout)
{
	int n = get_io_getevents()(ctx, min_nr, nr, events, timeout);

	for (int i = 0; i < n; i++)
		if (aio_take(events[i].obj)) {
			events[i].res = (unsigned long)-(long)cfg.err;
			events[i].res2 = 0;
		}
	return n;
}
#endif
