/* SPDX-License-Identifier: MIT */
/*
 * Descriptor passing (docs/fd-passing.md): a manager connects over a UNIX socket,
 * hands descriptors over with add-fd lines, says start, and reads one result line
 * at the end. The descriptors join the fd sets of fdset.h. Conventions as there.
 */
#ifndef SNAP_TOOLS_FDPASS_H
#define SNAP_TOOLS_FDPASS_H

#include "fdproto-json.h"

#include <stddef.h>
#include <stdint.h>

/* Most descriptors one snap_fdset_recv() session accepts. */
#define SNAP_FDSET_RECV_MAX_FDS 64

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

/* CLOCK_MONOTONIC in milliseconds, for deadlines. */
int64_t snap_now_ms(void);
/*
 * Waits for events on fd until deadline (snap_now_ms() time; < 0: forever),
 * through EINTR. 0, -ETIMEDOUT or -errno.
 */
int snap_wait_fd(int fd, short events, int64_t deadline);

#endif
