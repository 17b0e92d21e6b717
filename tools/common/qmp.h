/* SPDX-License-Identifier: MIT */
/*
 * A QMP client for the tools: one connection to a QEMU monitor, commands with ids,
 * asynchronous events kept for later, descriptors passed with SCM_RIGHTS.
 */
#ifndef SNAP_TOOLS_QMP_H
#define SNAP_TOOLS_QMP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct json_object;

/* Longest message accepted from QEMU; query-* replies can be large. */
#define QMP_LINE_MAX (1u << 20)
/* Events kept between waits; when full, the oldest is dropped. */
#define QMP_EVENT_QUEUE 64

struct qmp;

struct qmp_version {
	int major, minor, micro;
};

/*
 * Connects to a QMP monitor: spec is a UNIX socket path or "fd:N" (a connected UNIX
 * stream socket, duplicated: the caller keeps N). Reads the greeting and negotiates
 * qmp_capabilities, each within timeout_ms (< 0: no limit). Returns 0 and a handle in
 * *ret_q, or -errno with a message in errbuf: -ENOENT, -ECONNREFUSED, -ENOTSOCK as
 * connect(2) or the fd check report them; -EBUSY when no greeting came within the
 * timeout or the listen queue is full (QEMU serves one client at a time, and a
 * socket that is not a monitor stays silent); -EPROTO when the peer spoke but not QMP.
 */
int qmp_connect(const char *spec, int timeout_ms, struct qmp **ret_q, char *errbuf, size_t errlen);

/* Closes the connection and frees queued events. Accepts NULL. */
void qmp_close(struct qmp *q);

/* The QEMU version from the greeting. */
void qmp_version(const struct qmp *q, struct qmp_version *ret);

/* True if the greeting offered capability name (e.g. "oob"); none is enabled. */
bool qmp_greeting_has(const struct qmp *q, const char *name);

/* The peer's pid from SO_PEERCRED, read at connect time; -1 if unknown. */
pid_t qmp_peer_pid(const struct qmp *q);

/*
 * Runs cmd with args (an object or NULL; borrowed) and waits up to timeout_ms for its
 * reply, queueing the events that come first. On success *ret_json (if not NULL)
 * owns the "return" value: release it with json_object_put(). A QMP error reply
 * returns -ENOSYS for CommandNotFound, -ENODEV for DeviceNotFound, -EIO otherwise,
 * with "cmd: QEMU's desc" in errbuf. -ETIMEDOUT leaves the connection usable (a late
 * reply is recognised by its id and dropped); a protocol error (-EMSGSIZE, -EPROTO,
 * -ECONNRESET) makes every later call fail with -EPIPE.
 */
int qmp_execute(struct qmp *q, const char *cmd, struct json_object *args, int timeout_ms,
		struct json_object **ret_json, char *errbuf, size_t errlen);

/*
 * qmp_execute() with descriptor fd attached to the command's bytes (SCM_RIGHTS on
 * the same sendmsg), as getfd and add-fd want. The caller keeps fd; QEMU gets a copy.
 */
int qmp_execute_fd(struct qmp *q, const char *cmd, struct json_object *args, int fd, int timeout_ms,
		   struct json_object **ret_json, char *errbuf, size_t errlen);

/* Event filter: data is the event's "data" object, or NULL when it has none. */
typedef bool (*qmp_event_pred)(struct json_object *data, void *arg);

/*
 * Waits up to timeout_ms for event name whose data satisfies pred (NULL: any),
 * looking first at the queue. The match and every earlier queued event of that name
 * are consumed; *ret_event (if not NULL) owns the whole event object. Returns 0,
 * -ETIMEDOUT, or -errno with a message.
 */
int qmp_wait_event(struct qmp *q, const char *name, qmp_event_pred pred, void *arg, int timeout_ms,
		   struct json_object **ret_event, char *errbuf, size_t errlen);

/* ---- one call each, returning plain structs ---- */

enum qmp_run_state { QMP_VM_RUNNING, QMP_VM_PAUSED, QMP_VM_OTHER };

struct qmp_status {
	enum qmp_run_state state; /* "paused" is PAUSED; prelaunch, postmigrate... OTHER */
	bool running;		  /* QEMU's own "running" flag */
	char status[32];	  /* QEMU's RunState name */
};

/* query-status. */
int qmp_query_status(struct qmp *q, int timeout_ms, struct qmp_status *ret, char *errbuf,
		     size_t errlen);

struct qmp_migration {
	char status[32];      /* "none" when no migration ever ran */
	bool active;	      /* neither none, completed, failed nor cancelled */
	char error_desc[256]; /* QEMU's error-desc after a failure, else empty */
};

/* query-migrate. */
int qmp_query_migrate(struct qmp *q, int timeout_ms, struct qmp_migration *ret, char *errbuf,
		      size_t errlen);

/* query-migrate-capabilities: whether name exists in this QEMU, and whether it is on. */
int qmp_query_capability(struct qmp *q, const char *name, int timeout_ms, bool *ret_present,
			 bool *ret_on, char *errbuf, size_t errlen);

struct qmp_memdev {
	char *id;	/* NULL for a backend without an id */
	char *type;	/* QOM type, e.g. "memory-backend-file"; NULL without an id */
	char *mem_path; /* mem-path of a memory-backend-file, else NULL */
	uint64_t size;
	bool share;
};

/*
 * query-memdev, plus qom-get of /objects/ID "type" and, for memory-backend-file,
 * "mem-path". The memory QEMU makes for a bare -m is listed too (id "pc.ram", type
 * memory-backend-ram). *ret_v and its strings are malloc'ed: free them with
 * qmp_memdevs_free(). A QEMU before 6.1 (no "share") is refused with -EPROTO.
 */
int qmp_query_memdevs(struct qmp *q, int timeout_ms, struct qmp_memdev **ret_v, size_t *ret_n,
		      char *errbuf, size_t errlen);
void qmp_memdevs_free(struct qmp_memdev *v, size_t n);

/*
 * The machine type as -M names it resolved, e.g. "pc-q35-10.0": qom-get /machine
 * "type" without its "-machine" suffix (query-machines marks no current machine in
 * 7.2 or 10.0). *ret is malloc'ed and the caller frees it.
 */
int qmp_query_machine_type(struct qmp *q, int timeout_ms, char **ret, char *errbuf, size_t errlen);

#endif
