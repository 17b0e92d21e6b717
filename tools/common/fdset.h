/* SPDX-License-Identifier: MIT */
/*
 * fd sets with QEMU's semantics (-add-fd, add-fd over a UNIX socket, /dev/fdset/N) and
 * snap_io_open(), which turns a path, fd:N or /dev/fdset/N into a descriptor.
 */
#ifndef SNAP_IO_FDSET_H
#define SNAP_IO_FDSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Conventions for the whole module: functions return 0 (or a count) on success and
 * -errno on failure. errbuf (may be NULL) receives a one-line message, lower case,
 * without a trailing period, and is written only on failure; a message that does
 * not fit ends in "...". Every descriptor the module creates is close-on-exec. The
 * registry is process-wide and protected by a mutex.
 */

/* Most descriptors one snap_fdset_recv() session accepts. */
#define SNAP_FDSET_RECV_MAX_FDS 64
/* Longest protocol line, newline included. */
#define SNAP_FDSET_LINE_MAX 4096

/*
 * Parses QEMU's -add-fd syntax "fd=F,set=N[,opaque=STR]" (decimal numbers, keys in
 * any order, each once; ",," in opaque stands for a comma). F must be >= 3, open,
 * and not close-on-exec: an inherited descriptor, as QEMU demands. The registry
 * takes a close-on-exec dup of F and then closes F, as QEMU does.
 * -EINVAL for bad syntax, -EBADF if F is not open (or is an O_PATH descriptor),
 * -EBUSY if F is close-on-exec (already in use here, e.g. given twice).
 */
int snap_fdset_add_arg(const char *arg, char *errbuf, size_t errlen);

/*
 * Adds fd to set set_id (< 0: the lowest id no set uses, as QMP add-fd without
 * fdset-id). On success the registry owns fd (FD_CLOEXEC is set on it) and
 * *ret_set_id (may be NULL) is the set used; on failure the caller still owns fd.
 * opaque may be NULL; it is copied. -EBADF if fd is not open or is O_PATH, -EEXIST
 * if fd is already in the registry, -EINVAL if opaque has control characters.
 */
int snap_fdset_add_fd(int64_t set_id, int fd, const char *opaque, int64_t *ret_set_id, char *errbuf,
		      size_t errlen);

/*
 * Runs the manager side of docs/fd-passing.md on a connected UNIX stream socket:
 * reads "add-fd [set=N] [opaque=S]" lines (or their QMP JSON form), each carrying
 * exactly one descriptor as SCM_RIGHTS, answering each with "ok set=N fd=M", until a
 * "start" line, answered "ok". Then every received descriptor joins the registry
 * and *ret_n_fds (may be NULL) is their count. On any error the session ends: an
 * "error MESSAGE" line is sent (best effort), every descriptor received in the
 * session is closed and the registry is unchanged.
 * timeout_ms bounds the whole session (< 0: no limit). Errors: -EINVAL (syntax),
 * -EPROTO (wrong number of descriptors with a line, foreign control data or
 * truncated control data), -E2BIG (more than SNAP_FDSET_RECV_MAX_FDS),
 * -EMSGSIZE (line longer than SNAP_FDSET_LINE_MAX), -ECONNRESET (end of file before
 * start), -ETIMEDOUT, -EBADF (an O_PATH descriptor), -ENOMEM, or a socket error. Replies that
 * cannot be sent are ignored, so a manager may write everything and close without reading.
 */
int snap_fdset_recv(int sock, int timeout_ms, unsigned *ret_n_fds, char *errbuf, size_t errlen);

/*
 * Sends one line (a newline is appended if missing) on sock, without SIGPIPE and
 * with EINTR and short writes handled. -EINVAL if the line holds a newline other
 * than a final one; -EPIPE if the manager has gone.
 */
int snap_fdset_send_result(int sock, const char *json_line);

/*
 * Opens the socket a manager talks on: "fd:N" (an inherited connected UNIX stream
 * socket; a close-on-exec dup is returned and N is left open) or a path (connected
 * to). The caller owns *ret_sock. -ENOTSOCK/-EPROTOTYPE if fd:N is not a UNIX
 * stream socket, -ENAMETOOLONG for a path too long for sockaddr_un.
 */
int snap_fdset_connect(const char *spec, int *ret_sock, char *errbuf, size_t errlen);

struct snap_fdset_entry {
	int64_t set_id;
	int fd;		    /* the registry's descriptor: do not close */
	int flags;	    /* F_GETFL at query time, -1 if that failed */
	const char *opaque; /* NULL if none */
};

/*
 * Snapshot of the registry (QEMU's query-fdsets): sets by ascending id, each set's
 * descriptors newest first, which is selection order. The caller frees
 * *ret_entries (one allocation, opaque strings included) with free(); it is NULL
 * when *ret_n is 0. -ENOMEM.
 */
int snap_fdset_query(struct snap_fdset_entry **ret_entries, size_t *ret_n);

/*
 * Writes a one-line summary of every set ("set 1: fd 7 O_WRONLY without O_DIRECT
 * opaque \"x\"; ...", or "no fd sets") to buf. Returns the number of descriptors
 * held; never fails.
 */
int snap_fdset_describe(char *buf, size_t len);

/* Room for one snap_json_escape() piece and its NUL. */
#define SNAP_JSON_ESCAPE_MAX 7

/*
 * JSON string content for the character at s (not its NUL): a well-formed
 * UTF-8 sequence passes through whole; '"', '\\', control bytes and every
 * byte that starts no well-formed sequence become \u00XX (that is, such a
 * byte is read as Latin-1), so the text is always valid UTF-8. Writes the
 * NUL-terminated piece to out and returns the bytes of s consumed (1 to 4).
 * Async-signal-safe.
 */
size_t snap_json_escape(const char *s, char out[SNAP_JSON_ESCAPE_MAX]);

/* Closes every descriptor and forgets every set (for tests and exit). */
void snap_fdset_clear(void);

/*
 * True if spec names a descriptor (fd:N or /dev/fdset/N, well formed or not) rather
 * than a path, so the caller cannot create a temporary file and rename it.
 */
bool snap_io_is_fd_spec(const char *spec);

/*
 * Opens spec with open(2) flags; the result is always close-on-exec and the caller
 * owns *ret_fd.
 *  - a path: open(spec, flags | O_CLOEXEC, mode).
 *  - "fd:N": a dup of N, which must be open for the access mode asked (O_RDWR
 *    serves either) and agree on O_DIRECT. N stays open.
 *  - "/dev/fdset/N": never opened as a path. Set N's descriptors are walked newest
 *    first; the first whose F_GETFL matches flags exactly on access mode and on
 *    O_DIRECT is dup'ed (so an O_RDWR one never serves O_WRONLY).
 * For both descriptor forms, as QEMU does: O_SYNC must agree (-EINVAL), then F_SETFL
 * applies the settable flags asked for (O_APPEND, O_NONBLOCK, O_NOATIME, O_ASYNC,
 * O_DIRECT) to the dup, which shares them with the original (so O_APPEND is
 * cleared unless asked for), and O_TRUNC or O_CREAT|O_EXCL truncates the file.
 * mode is ignored for them. Errors: -EINVAL (malformed spec), -EBADF (fd:N not
 * open), -ENOENT (no set N; the message lists the sets), -EACCES (no descriptor
 * matches; the message lists the set's descriptors and what was needed), or
 * open(2)'s error. errbuf never repeats spec: the caller names it.
 */
int snap_io_open(const char *spec, int flags, mode_t mode, int *ret_fd, char *errbuf,
		 size_t errlen);

/*
 * Opens a second descriptor ("twin") on the file fd is open on, with other flags (an
 * O_DIRECT twin: O_DIRECT belongs to an open file description):
 *  - spec "/dev/fdset/N": the set's descriptor matching flags, as snap_io_open();
 *  - spec "fd:N": -EINVAL, one descriptor cannot have a twin;
 *  - otherwise (a path, spec may be NULL): /proc/self/fd/FD is reopened, so no name
 *    is looked up again; only without /proc, openat(dir_fd, name, flags), with
 *    O_NOFOLLOW if nofollow.
 * Whatever the route, the twin must be the same file as fd (st_dev and st_ino), else
 * -EXDEV and a message. Other errors are open(2)'s or snap_io_open()'s.
 */
int snap_io_open_twin(int fd, const char *spec, int dir_fd, const char *name, bool nofollow,
		      int flags, int *ret_fd, char *errbuf, size_t errlen);

#endif
