// SPDX-License-Identifier: MIT
/*
 * Pieces of the --qmp flows both tools use; see qmpflow.h.
 */
#include "qmpflow.h"
#include "cli.h"
#include "fdopen.h"
#include "workers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

int qf_connect(const char *spec, struct qmp **ret_q)
{
	char ebuf[512];
	int r = qmp_connect(spec, QF_CONNECT_MS, ret_q, ebuf, sizeof(ebuf));

	if (!r)
		return 0;
	/* The peer's own bytes may be quoted: the error stays one line. */
	for (char *p = ebuf; *p; p++)
		if ((unsigned char)*p < 0x20)
			*p = ' ';
	switch (r) {
	case -EBUSY:
		cli_err("%s: close the other client or give QEMU a second -qmp socket", ebuf);
		break;
	case -EPROTO:
		cli_err("%s: not a QMP monitor (%s): give the socket of QEMU's -qmp option", spec,
			ebuf);
		break;
	default:
		cli_err("%s: cannot connect (%s): is QEMU running with -qmp unix:%s,server=on?",
			spec, ebuf, spec);
	}
	return r;
}

/* Capabilities that change the stream's format, with the state the flows need. */
static const struct {
	const char *name;
	bool on;
} wanted[] = {
	{ "x-ignore-shared", true }, { "mapped-ram", false }, { "multifd", false },
	{ "postcopy-ram", false },   { "xbzrle", false },     { "validate-uuid", false },
	{ "compress", false },
};

static int set_cap(struct qmp *q, const char *name, bool on)
{
	struct json_object *args = json_object_new_object(), *caps = json_object_new_array(),
			   *c = json_object_new_object();
	char ebuf[512];
	int r = -ENOMEM;

	if (args && caps && c &&
	    !json_object_object_add(c, "capability", json_object_new_string(name)) &&
	    !json_object_object_add(c, "state", json_object_new_boolean(on)) &&
	    !json_object_array_add(caps, c)) {
		c = NULL;
		if (!json_object_object_add(args, "capabilities", caps)) {
			caps = NULL;
			r = qmp_execute(q, "migrate-set-capabilities", args, QF_CMD_MS, NULL, ebuf,
					sizeof(ebuf));
		}
	}
	if (r == -ENOMEM)
		snprintf(ebuf, sizeof(ebuf), "out of memory");
	if (r)
		cli_err("setting migration capability %s: %s", name, ebuf);
	json_object_put(c);
	json_object_put(caps);
	json_object_put(args);
	return r;
}

static int set_bandwidth(struct qmp *q, int64_t bw)
{
	struct json_object *args = json_object_new_object();
	char ebuf[512];
	int r = -ENOMEM;

	if (args && !json_object_object_add(args, "max-bandwidth", json_object_new_int64(bw)))
		r = qmp_execute(q, "migrate-set-parameters", args, QF_CMD_MS, NULL, ebuf,
				sizeof(ebuf));
	else
		snprintf(ebuf, sizeof(ebuf), "out of memory");
	if (r)
		cli_err("setting max-bandwidth: %s", ebuf);
	json_object_put(args);
	return r;
}

int qf_caps_set(struct qmp *q, struct qf_caps *c, bool bandwidth)
{
	char ebuf[512];
	int r;

	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < sizeof(wanted) / sizeof(wanted[0]); i++) {
		bool present, on;

		r = qmp_query_capability(q, wanted[i].name, QF_CMD_MS, &present, &on, ebuf,
					 sizeof(ebuf));
		if (r) {
			cli_err("query-migrate-capabilities: %s", ebuf);
			goto undo;
		}
		if (!present && wanted[i].on) {
			r = -ENOTSUP;
			goto undo;
		}
		if (!present || on == wanted[i].on)
			continue;
		r = set_cap(q, wanted[i].name, wanted[i].on);
		if (r)
			goto undo;
		c->name[c->n] = wanted[i].name;
		c->old[c->n++] = on;
	}
	if (bandwidth) {
		struct json_object *p = NULL, *v;

		r = qmp_execute(q, "query-migrate-parameters", NULL, QF_CMD_MS, &p, ebuf,
				sizeof(ebuf));
		if (r || !json_object_object_get_ex(p, "max-bandwidth", &v) ||
		    !json_object_is_type(v, json_type_int)) {
			cli_err("query-migrate-parameters: %s", r ? ebuf : "no max-bandwidth");
			json_object_put(p);
			r = r ? r : -EPROTO;
			goto undo;
		}
		c->old_bandwidth = json_object_get_int64(v);
		json_object_put(p);
		/* QEMU's limit is INT64_MAX bytes/s; 7.2's default 128 MiB/s would throttle. */
		r = set_bandwidth(q, INT64_MAX);
		if (r)
			goto undo;
		c->bandwidth_set = true;
	}
	return 0;
undo:
	qf_caps_restore(q, c);
	return r;
}

int qf_caps_restore(struct qmp *q, struct qf_caps *c)
{
	int ret = 0;

	if (c->bandwidth_set && set_bandwidth(q, c->old_bandwidth))
		ret = -EIO;
	c->bandwidth_set = false;
	while (c->n) {
		c->n--;
		if (set_cap(q, c->name[c->n], c->old[c->n]))
			ret = -EIO;
	}
	return ret;
}

int qf_pipe_getfd(struct qmp *q, const char *fdname, bool qemu_writes, int *ret_fd)
{
	struct json_object *args = json_object_new_object();
	char ebuf[512];
	int p[2], r;

	if (!args || json_object_object_add(args, "fdname", json_object_new_string(fdname))) {
		json_object_put(args);
		cli_err("out of memory");
		return -ENOMEM;
	}
	if (pipe2(p, O_CLOEXEC) < 0) {
		r = -errno;
		cli_err("pipe: %s", strerror(errno));
		json_object_put(args);
		return r;
	}
	r = qmp_execute_fd(q, "getfd", args, p[qemu_writes ? 1 : 0], QF_CMD_MS, NULL, ebuf,
			   sizeof(ebuf));
	json_object_put(args);
	/* QEMU holds its own copy now: ours must go, or EOF never comes. */
	close(p[qemu_writes ? 1 : 0]);
	if (r) {
		cli_err("getfd: %s", ebuf);
		close(p[qemu_writes ? 0 : 1]);
		return r;
	}
	*ret_fd = p[qemu_writes ? 0 : 1];
	return 0;
}

int qf_wait_migration(struct qmp *q, const char *what)
{
	double deadline = snap_now() + QF_MIGRATE_MS / 1000.0;
	struct qmp_migration m;
	char ebuf[512];

	for (;;) {
		int r = qmp_query_migrate(q, QF_CMD_MS, &m, ebuf, sizeof(ebuf));

		if (r) {
			cli_err("%s: query-migrate: %s", what, ebuf);
			return r;
		}
		if (!strcmp(m.status, "completed"))
			return 0;
		if (!m.active && strcmp(m.status, "none"))
			break;
		if (snap_now() > deadline) {
			cli_err("%s: still '%s' after %d s", what, m.status, QF_MIGRATE_MS / 1000);
			return -ETIMEDOUT;
		}
		nanosleep(&(struct timespec){ 0, 5000000 }, NULL);
	}
	cli_err("%s: QEMU says %s%s%s", what, m.status, m.error_desc[0] ? ": " : "", m.error_desc);
	return -EIO;
}

void qf_phases_init(struct qf_phases *p, bool progress, bool json)
{
	memset(p, 0, sizeof(*p));
	p->progress = progress;
	p->json = json;
	p->t0 = snap_now();
}

void qf_phase(struct qf_phases *p, const char *name)
{
	double now = snap_now();

	if (p->n < QF_MAX_PHASES) {
		p->name[p->n] = name;
		p->ms[p->n++] = (now - p->t0) * 1000.0;
	}
	p->t0 = now;
	if (!p->progress)
		return;
	if (cli_progress_is_json())
		fprintf(stderr, "{\"phase\": \"%s\", \"ms\": %.1f}\n", name, p->ms[p->n - 1]);
	else
		fprintf(stderr, "%s: %s: %.1f ms\n", cli_prog, name, p->ms[p->n - 1]);
	fflush(stderr);
}

void qf_phases_json(FILE *f, const struct qf_phases *p)
{
	fprintf(f, "\"phases\": {");
	for (size_t i = 0; i < p->n; i++)
		fprintf(f, "%s\"%s-ms\": %.1f", i ? ", " : "", p->name[i], p->ms[i]);
	fprintf(f, "}");
}

void qf_version_str(struct qmp *q, char *buf, size_t len)
{
	struct qmp_version v;

	qmp_version(q, &v);
	snprintf(buf, len, "%d.%d.%d", v.major, v.minor, v.micro);
}

bool qf_is_shared_memfd(const struct qmp_memdev *d)
{
	return d->share && d->type && !strcmp(d->type, "memory-backend-memfd");
}

/* The link target of QEMU's backend memfds (memfd_create() name plus the kernel's prefix). */
#define MEMFD_LINK "/memfd:memory-backend-memfd"

int qf_memfd_path(struct qmp *q, const struct qmp_memdev *md, size_t n_md,
		  const struct qmp_memdev *d, char *path, size_t len, struct stat *ret_st)
{
	const char *id = d->id ? d->id : "(no id)";
	char dir[64], link[256], first[NAME_MAX + 1] = "";
	pid_t pid = qmp_peer_pid(q);
	struct dirent *e;
	struct stat st;
	size_t n = 0;
	DIR *dp;

	for (size_t i = 0; i < n_md; i++)
		if (&md[i] != d && qf_is_shared_memfd(&md[i]) && md[i].size == d->size) {
			cli_err("backends '%s' and '%s' are memfds of the same size (%llu bytes): "
				"snapmr cannot tell their descriptors apart in QEMU; give them "
				"different sizes or use memory-backend-file,share=on",
				id, md[i].id ? md[i].id : "(no id)", (unsigned long long)d->size);
			return -ENOTUNIQ;
		}
	if (pid <= 0) {
		cli_err("backend '%s' (memory-backend-memfd): QEMU's process is unknown (no "
			"SO_PEERCRED on the QMP socket): use memory-backend-file,share=on",
			id);
		return -ESRCH;
	}
	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	dp = opendir(dir);
	if (!dp) {
		int r = -errno;

		cli_err("backend '%s' (memory-backend-memfd): %s: %s (run as QEMU's user or root)",
			id, dir, strerror(errno));
		return r;
	}
	while ((e = readdir(dp))) {
		ssize_t l = readlinkat(dirfd(dp), e->d_name, link, sizeof(link) - 1);

		if (l < 0)
			continue;
		link[l] = 0;
		/* "/memfd:NAME (deleted)": the name must be exactly QEMU's. */
		if (strncmp(link, MEMFD_LINK, strlen(MEMFD_LINK)) ||
		    (link[strlen(MEMFD_LINK)] && link[strlen(MEMFD_LINK)] != ' '))
			continue;
		if (fstatat(dirfd(dp), e->d_name, &st, 0) < 0 || (uint64_t)st.st_size != d->size)
			continue;
		/* The same memfd under two descriptors is still one candidate. */
		if (n && snap_same_file(&st, ret_st))
			continue;
		if (!n++) {
			*ret_st = st;
			snprintf(first, sizeof(first), "%s", e->d_name);
		}
	}
	closedir(dp);
	if (n != 1) {
		cli_err("backend '%s' (memory-backend-memfd): %s memfd of %llu bytes among QEMU "
			"%d's descriptors (%s): use memory-backend-file,share=on",
			id, n ? "more than one" : "no", (unsigned long long)d->size, (int)pid, dir);
		return n ? -ENOTUNIQ : -ENOENT;
	}
	snprintf(path, len, "%s/%s", dir, first);
	return 0;
}

int qf_memfd_check(const struct stat *want, int fd, const char *id)
{
	struct stat st;

	if (fstat(fd, &st) == 0 && snap_same_file(&st, want))
		return 0;
	cli_err("backend '%s' (memory-backend-memfd): QEMU's descriptor changed while it was "
		"opened",
		id);
	return -ESTALE;
}
