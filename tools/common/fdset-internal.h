/* SPDX-License-Identifier: MIT */
/*
 * What fdopen.c and fdpass.c need of the fd-set registry; not for the tools.
 * Same conventions as fdset.h. The registry's lock is taken inside each call.
 */
#ifndef SNAP_TOOLS_FDSET_INTERNAL_H
#define SNAP_TOOLS_FDSET_INTERNAL_H

#include "msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct fdset_entry {
	int64_t set_id;
	int fd;
	char *opaque; /* NULL if none; owned by the entry */
};

/* A non-empty run of decimal digits, no sign, at most max: 0, -EINVAL or -ERANGE. */
int fdset_parse_dec(const char *s, size_t len, int64_t max, int64_t *ret);
/* Does s hold a control character (below 0x20, or DEL)? */
bool fdset_has_ctl(const char *s);
/* 0 if fd can join a set (open, not O_PATH), else -EBADF and a message. */
int fdset_check_fd(int fd, char *errbuf, size_t errlen);
/* "O_RDONLY", "O_WRONLY" or "O_RDWR" for the access mode of fl. */
const char *fdset_accmode_name(int fl);

/*
 * QMP add-fd without fdset-id: the lowest id that neither the registry nor
 * extra[0..n_extra) uses.
 */
int64_t fdset_lowest_free_id(const struct fdset_entry *extra, size_t n_extra);
/* Appends v[0..n) to the registry, which then owns them; 0 or -ENOMEM (v untouched). */
int fdset_commit(const struct fdset_entry *v, size_t n);

typedef int (*fdset_use_fn)(int fd, int flags, int *ret_fd, char *errbuf, size_t errlen);
/*
 * Set id's descriptors newest first: the first whose F_GETFL matches flags on
 * access mode and on O_DIRECT is passed to use() (under the registry's lock), whose
 * result is returned. Else -ENOENT (no set id; the message lists the sets) or
 * -EACCES (the message lists the set's descriptors and what was needed).
 */
int fdset_select(int64_t id, int flags, fdset_use_fn use, int *ret_fd, char *errbuf, size_t errlen);

#endif
