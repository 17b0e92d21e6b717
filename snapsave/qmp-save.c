// SPDX-License-Identifier: MIT
/*
 * snapsave --qmp: everything is checked before the guest is paused; QEMU
 * migrates its device state and the RAM blocks that are not in shared
 * backends into a pipe with x-ignore-shared (format/classic.h decodes it),
 * the shared backends are read from their files, and one mapped-ram file
 * holds it all, with the resume record in its trailer. Any failure after the
 * pause lets a guest that ran run again.
 */
#include "qmp-save.h"
#include "classic.h"
#include "fdopen.h"
#include "fdset.h"
#include "outfile.h"
#include "qmpflow.h"
#include "ramsrc.h"
#include "resume.h"
#include "snapmr.h"
#include "workers.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <json-c/json.h>

#define FDNAME "snapmr-save"

/* One backend of the source QEMU, mapped when it is shared. */
struct backend {
	const struct qmp_memdev *md;
	struct snap_ram_map map;
	bool shared;
};

struct save_run {
	const struct qmp_save_args *a;
	struct qmp *q;
	struct qmp_memdev *md;
	size_t n_md;
	struct backend *be;
	char *machine;
	char qemu[32];
	struct qmp_version ver;
	bool running, stopped, caps_set;
	struct qf_caps caps;
	struct qf_phases ph;
	/* Non-shared blocks' memory, one anonymous mapping each (by stream block). */
	struct anon {
		void *p;
		uint64_t len;
	} * anon;
	size_t n_anon;
	int pipe_fd;
	struct snap_outfile out;
	bool out_open;
};

static struct backend *backend_of(struct save_run *s, const char *block)
{
	for (size_t i = 0; i < s->n_md; i++)
		if (s->md[i].id && !strcmp(s->md[i].id, block))
			return &s->be[i];
	return NULL;
}

/*
 * Every backend that holds guest RAM must be shared, its pages read from the
 * backend's file: memory-backend-file,share=on, or a shared memfd on a QEMU
 * that leaves it out of its x-ignore-shared stream (7.2; QEMU >= 10 migrates
 * it inside that stream: slower, noted), reached through QEMU's descriptor.
 */
static int check_backends(struct save_run *s)
{
	char ebuf[512], fdpath[96];

	s->be = calloc(s->n_md ? s->n_md : 1, sizeof(*s->be));
	if (!s->be) {
		cli_err("out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < s->n_md; i++) {
		const struct qmp_memdev *d = &s->md[i];
		const char *id = d->id ? d->id : "(no id)";
		const char *type = d->type ? d->type : "memory backend";
		struct snap_ram_spec spec = { .size = d->size, .has_size = true };
		struct stat memfd_st;
		bool memfd = qf_is_shared_memfd(d);
		int r;

		s->be[i].md = d;
		if (memfd && s->ver.major >= 10) {
			cli_note("backend '%s' (memory-backend-memfd) travels inside QEMU's "
				 "stream, not in parallel from its file: slower; "
				 "memory-backend-file,share=on is faster",
				 id);
			continue;
		}
		if (memfd) {
			r = qf_memfd_path(s->q, s->md, s->n_md, d, fdpath, sizeof(fdpath),
					  &memfd_st);
			if (r)
				return r;
			spec.where = fdpath;
		} else if (!d->type || strcmp(d->type, "memory-backend-file") || !d->share ||
			   !d->mem_path) {
			cli_err("backend '%s' (%s%s) is not shared: start QEMU with -object "
				"memory-backend-file,id=%s,size=...,mem-path=/dev/shm/%s,share=on "
				"(and -machine memory-backend=%s instead of a plain -m)",
				id, type, d->share ? "" : ", share=off", id, id, id);
			return -EINVAL;
		} else {
			spec.where = d->mem_path;
		}
		snprintf(spec.name, sizeof(spec.name), "%s", d->id);
		if (snap_ram_map_source(&spec, &s->be[i].map, ebuf, sizeof(ebuf))) {
			cli_err("backend '%s': %s", id, ebuf);
			return -EIO;
		}
		if (memfd && qf_memfd_check(&memfd_st, s->be[i].map.fd, id))
			return -ESTALE;
		s->be[i].shared = true;
	}
	return 0;
}

static long pipe_read(void *ctx, void *buf, size_t len)
{
	int fd = *(int *)ctx;

	for (;;) {
		ssize_t n = read(fd, buf, len);

		if (n >= 0)
			return (long)n;
		if (errno != EINTR)
			return -errno;
	}
}

/* The decoder's blocks() callback: shared backends travel in their files, the rest here. */
static int take_blocks(void *ctx, struct mr_classic_block *b, size_t n)
{
	struct save_run *s = ctx;

	s->anon = calloc(n ? n : 1, sizeof(*s->anon));
	if (!s->anon)
		return -ENOMEM;
	s->n_anon = n;
	for (size_t i = 0; i < n; i++) {
		struct backend *be = backend_of(s, b[i].name);
		void *p;

		if (be && be->shared) {
			if (be->map.length != b[i].length)
				return -EMSGSIZE;
			continue;
		}
		p = mmap(NULL, b[i].length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
			 0);
		if (p == MAP_FAILED)
			return -ENOMEM;
		s->anon[i] = (struct anon){ p, b[i].length };
		b[i].mem = p;
	}
	return 0;
}

static int migrate_to_pipe(struct save_run *s, struct mr_classic **ret)
{
	struct mr_classic_ops ops = {
		.read = pipe_read, .ctx = &s->pipe_fd, .blocks = take_blocks, .blocks_ctx = s
	};
	struct json_object *args;
	struct mr_err me = { 0 };
	char ebuf[512];
	int r;

	r = qf_pipe_getfd(s->q, FDNAME, true, &s->pipe_fd);
	if (r)
		return r;
	args = json_object_new_object();
	if (!args || json_object_object_add(args, "uri", json_object_new_string("fd:" FDNAME))) {
		json_object_put(args);
		cli_err("out of memory");
		return -ENOMEM;
	}
	r = qmp_execute(s->q, "migrate", args, QF_CMD_MS, NULL, ebuf, sizeof(ebuf));
	json_object_put(args);
	if (r) {
		cli_err("migrate: %s", ebuf);
		return r;
	}
	r = mr_classic_decode(&ops, ret, &me);
	close(s->pipe_fd);
	s->pipe_fd = -1;
	if (r) {
		/* QEMU's own reason, when it failed first, is the better message. */
		if (qf_wait_migration(s->q, "migrate") == 0)
			cli_err("QEMU's stream at offset %llu%s%s: %s", (unsigned long long)me.off,
				me.block[0] ? ", block " : "", me.block,
				r == -EMSGSIZE ? "a shared block's length differs from its backend"
					       : me.msg);
		return r;
	}
	return qf_wait_migration(s->q, "migrate");
}

/* Every page of a block snapsave does not read from a file must have come. */
static int check_pages(const struct mr_classic *c, const struct save_run *s)
{
	for (size_t i = 0; i < c->n_blocks; i++) {
		const struct mr_classic_block *b = &c->blocks[i];
		uint64_t want = b->length / 4096;

		if (!b->mem || b->pages + b->zero_pages >= want)
			continue;
		cli_err("block '%s': QEMU %s sent %llu of its %llu pages with x-ignore-shared (it "
			"treats the block as shared, but snapsave cannot read it): use "
			"memory-backend-file,share=on",
			b->name, s->qemu, (unsigned long long)(b->pages + b->zero_pages),
			(unsigned long long)want);
		return -EIO;
	}
	return 0;
}

static int make_resume(const struct mr_classic *c, struct save_run *s, struct mr_buf *out)
{
	struct mr_resume r = { .ram_id = c->ram_id,
			       .running = s->running,
			       .switchover_start = c->switchover_start,
			       .n_blocks = c->n_blocks };
	struct mr_err me = { 0 };
	int e;

	r.blocks = calloc(c->n_blocks ? c->n_blocks : 1, sizeof(*r.blocks));
	if (!r.blocks)
		return -ENOMEM;
	snprintf(r.machine, sizeof(r.machine), "%s", c->machine);
	snprintf(r.qemu, sizeof(r.qemu), "%s", s->qemu);
	for (size_t i = 0; i < c->n_blocks; i++) {
		struct backend *be = backend_of(s, c->blocks[i].name);
		struct mr_resume_block *rb = &r.blocks[i];

		snprintf(rb->name, sizeof(rb->name), "%s", c->blocks[i].name);
		rb->length = c->blocks[i].length;
		rb->gpa = c->blocks[i].gpa;
		rb->shared = be && be->shared;
		if (be) {
			snprintf(rb->backend, sizeof(rb->backend), "%s", be->md->id);
			if (be->md->mem_path)
				snprintf(rb->mem_path, sizeof(rb->mem_path), "%s",
					 be->md->mem_path);
		}
	}
	e = mr_resume_encode(&r, out, &me);
	if (e)
		cli_err("the resume record: %s", me.msg);
	free(r.blocks);
	return e;
}

/* A memfd with the raw tail snap_save appends: RAM START's end, RAM END, QEMU's device state. */
static int raw_tail_fd(const struct mr_classic *c)
{
	struct mr_buf b = MR_BUF_INIT;
	int fd = memfd_create("snapmr-tail", MFD_CLOEXEC), r = 0;

	if (fd < 0) {
		cli_err("memfd_create: %s", strerror(errno));
		return -1;
	}
	mr_classic_raw_tail_prefix(&b, c->ram_id, c->switchover_start);
	mr_buf_put(&b, c->tail, c->tail_len);
	if (b.err)
		r = b.err;
	for (size_t off = 0; !r && off < b.len;) {
		ssize_t n = write(fd, b.data + off, b.len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			r = -errno;
		else
			off += (size_t)n;
	}
	mr_buf_free(&b);
	if (!r && lseek(fd, 0, SEEK_SET) < 0)
		r = -errno;
	if (r) {
		cli_err("the device-state tail: %s", strerror(-r));
		close(fd);
		return -1;
	}
	return fd;
}

static int write_file(struct save_run *s, const struct mr_classic *c, struct snap_stats *st)
{
	const struct qmp_save_args *a = s->a;
	struct snap_block *blocks = calloc(c->n_blocks ? c->n_blocks : 1, sizeof(*blocks));
	struct mr_buf rec = MR_BUF_INIT;
	struct snap_save_args sa;
	struct snap_err err;
	char ebuf[512];
	int tail_fd = -1, r = -ENOMEM;

	if (!blocks) {
		cli_err("out of memory");
		return r;
	}
	for (size_t i = 0; i < c->n_blocks; i++) {
		struct backend *be = backend_of(s, c->blocks[i].name);
		bool file = be && be->shared;

		blocks[i] = (struct snap_block){ .name = c->blocks[i].name,
						 .addr = file ? be->map.addr : s->anon[i].p,
						 .length = c->blocks[i].length,
						 .fd = file ? be->map.fd : -1,
						 .fd_off = file ? be->map.offset : 0 };
	}
	r = make_resume(c, s, &rec);
	if (r)
		goto out;
	tail_fd = raw_tail_fd(c);
	if (tail_fd < 0) {
		r = -EIO;
		goto out;
	}
	sa = (struct snap_save_args){ .fd = s->out.fd,
				      .direct_fd = s->out.direct_fd,
				      .machine = c->machine,
				      .blocks = blocks,
				      .n_blocks = c->n_blocks,
				      .devstate = SNAP_DEVSTATE_RAW,
				      .devstate_fd = tail_fd,
				      .blob = rec.data,
				      .blob_len = rec.len };
	r = snap_save(&sa, &a->cc->opts, st, &err);
	if (!r)
		r = snap_outfile_commit(&s->out, ebuf, sizeof(ebuf));
	else
		snprintf(ebuf, sizeof(ebuf), "%s%s", err.msg, cli_remedy(&err));
	cli_progress_end();
	if (r)
		cli_err("%s: %s", a->output, ebuf);
out:
	if (tail_fd >= 0)
		close(tail_fd);
	mr_buf_free(&rec);
	free(blocks);
	return r;
}

/*
 * The output is opened (a temporary file next to it) before the pause, so a
 * path that cannot be written is refused while the guest runs; it must not
 * be one of the backend files, which the rename would replace.
 */
static int open_output(struct save_run *s)
{
	const char *path = s->a->output;
	struct stat so, sb;
	char ebuf[512];
	int r;

	if (stat(path, &so) == 0)
		for (size_t i = 0; i < s->n_md; i++)
			if (s->be[i].shared && fstat(s->be[i].map.fd, &sb) == 0 &&
			    snap_same_file(&so, &sb)) {
				cli_err("%s: the output is the file of backend '%s'", path,
					s->md[i].id);
				return -EINVAL;
			}
	r = snap_outfile_open(&s->out, path, s->a->cc->opts.direct, 0, ebuf, sizeof(ebuf));
	if (r) {
		cli_err("%s: %s", path, ebuf);
		return r;
	}
	s->out_open = true;
	if (s->out.direct_refused)
		cli_note("%s: O_DIRECT unavailable (%s); writing buffered", path,
			 s->out.direct_err);
	return 0;
}

/* What is checked before the guest is paused. */
static int preflight(struct save_run *s)
{
	struct qmp_status st;
	struct qmp_migration m;
	char ebuf[512];
	int r;

	qmp_version(s->q, &s->ver);
	qf_version_str(s->q, s->qemu, sizeof(s->qemu));
	r = qmp_query_status(s->q, QF_CMD_MS, &st, ebuf, sizeof(ebuf));
	if (!r)
		r = qmp_query_migrate(s->q, QF_CMD_MS, &m, ebuf, sizeof(ebuf));
	if (r) {
		cli_err("%s: %s", s->a->qmp, ebuf);
		return r;
	}
	if (!strcmp(st.status, "inmigrate")) {
		cli_err("%s: QEMU waits for an incoming migration: there is nothing to save "
			"(snaprestore --qmp fills such a QEMU)",
			s->a->qmp);
		return -EINVAL;
	}
	if (m.active) {
		cli_err("%s: a migration is already running (status '%s'): wait for it to end "
			"or cancel it with migrate_cancel",
			s->a->qmp, m.status);
		return -EBUSY;
	}
	s->running = st.running;
	r = qmp_query_memdevs(s->q, QF_CMD_MS, &s->md, &s->n_md, ebuf, sizeof(ebuf));
	if (r) {
		cli_err("%s: %s", s->a->qmp, ebuf);
		return r;
	}
	r = check_backends(s);
	if (r)
		return r;
	r = open_output(s);
	if (r)
		return r;
	r = qmp_query_machine_type(s->q, QF_CMD_MS, &s->machine, ebuf, sizeof(ebuf));
	if (r) {
		cli_err("%s: %s", s->a->qmp, ebuf);
		return r;
	}
	r = qf_caps_set(s->q, &s->caps, true);
	if (r == -ENOTSUP)
		cli_err("%s: QEMU %s has no x-ignore-shared migration capability: use QEMU 4.0 or "
			"later",
			s->a->qmp, s->qemu);
	if (r)
		return r;
	s->caps_set = true;
	return 0;
}

int qmp_save_check_args(struct qmp_save_args *a, const char *output, size_t n_ram,
			const char *machine, const struct cli_common *cc)
{
	const char *bad = n_ram		   ? "--ram"
			  : machine	   ? "--machine"
			  : cc->devstate   ? "--device-state"
			  : cc->has_offset ? "--offset"
			  : cc->fd_socket  ? "--fd-socket"
					   : NULL;

	if (!a->qmp) {
		cli_err("--%s needs --qmp SOCKET", a->resume ? "resume" : "quit");
		return 2;
	}
	if (a->resume && a->quit) {
		cli_err("--resume and --quit: choose one");
		return 2;
	}
	if (bad) {
		cli_err("--qmp finds the RAM, device state and machine itself: drop %s", bad);
		return 2;
	}
	if (!output) {
		cli_err("no output file (-o FILE)");
		return 2;
	}
	if (snap_io_is_fd_spec(output)) {
		cli_err("--qmp writes a path (temporary file, then rename): %s is a descriptor",
			output);
		return 2;
	}
	a->output = output;
	a->cc = cc;
	return 0;
}

static void report_json(const struct save_run *s, const struct snap_stats *st, double downtime)
{
	printf("{\"status\": \"completed\", \"qemu\": ");
	cli_json_str(stdout, s->qemu);
	printf(", \"machine\": ");
	cli_json_str(stdout, s->machine);
	printf(", \"was-running\": %s, \"after\": \"%s\", \"downtime-ms\": %.1f, ",
	       s->running ? "true" : "false",
	       s->a->quit     ? "quit"
	       : s->a->resume ? "running"
			      : "paused",
	       downtime);
	qf_phases_json(stdout, &s->ph);
	printf(", \"ram-bytes\": %llu, \"page-bytes\": %llu, \"device-state-bytes\": %llu, "
	       "\"jobs\": %u, \"engine\": ",
	       (unsigned long long)st->total_bytes, (unsigned long long)st->page_bytes,
	       (unsigned long long)st->devstate_bytes, st->jobs);
	cli_json_str(stdout, st->engine ? st->engine : "");
	printf("}\n");
}

int qmp_save(const struct qmp_save_args *a)
{
	struct save_run s = { .a = a, .pipe_fd = -1 };
	struct mr_classic *c = NULL;
	struct snap_stats st = { 0 };
	char ebuf[512];
	double t_stop = 0, downtime = 0;
	int ret = 1;

	qf_phases_init(&s.ph, a->cc->opts.progress != NULL, a->cc->json);
	if (qf_connect(a->qmp, &s.q))
		return 1;
	if (preflight(&s))
		goto out;
	qf_phase(&s.ph, "checks");
	t_stop = snap_now();
	if (s.running) {
		if (qmp_execute(s.q, "stop", NULL, QF_CMD_MS, NULL, ebuf, sizeof(ebuf))) {
			cli_err("stop: %s", ebuf);
			goto out;
		}
		s.stopped = true;
	}
	qf_phase(&s.ph, "pause");
	if (migrate_to_pipe(&s, &c) || check_pages(c, &s))
		goto out;
	qf_phase(&s.ph, "device-state");
	/* The migration is over: the old capabilities come back before anything else runs. */
	s.caps_set = false;
	qf_caps_restore(s.q, &s.caps);
	if (write_file(&s, c, &st))
		goto out;
	qf_phase(&s.ph, "ram-durable");
	if (a->quit) {
		/* QEMU closes the monitor as it exits: an error reply may never come. */
		qmp_execute(s.q, "quit", NULL, QF_CMD_MS, NULL, ebuf, sizeof(ebuf));
		s.stopped = false;
		qf_phase(&s.ph, "quit");
	} else if (a->resume && s.running) {
		if (qmp_execute(s.q, "cont", NULL, QF_CMD_MS, NULL, ebuf, sizeof(ebuf))) {
			cli_err("cont: %s (the file %s is complete)", ebuf, a->output);
			goto out;
		}
		s.stopped = false;
		qf_phase(&s.ph, "resume");
	} else {
		/* Paused by default: the caller decides; nothing more to undo. */
		s.stopped = false;
	}
	downtime = (snap_now() - t_stop) * 1000.0;
	if (a->cc->json)
		report_json(&s, &st, s.running ? downtime : 0);
	ret = 0;
out:
	if (s.caps_set)
		qf_caps_restore(s.q, &s.caps);
	if (s.stopped && s.running &&
	    qmp_execute(s.q, "cont", NULL, QF_CMD_MS, NULL, ebuf, sizeof(ebuf)))
		cli_err("the guest stays paused: cont: %s", ebuf);
	if (s.out_open)
		snap_outfile_abort(&s.out);
	if (s.pipe_fd >= 0)
		close(s.pipe_fd);
	for (size_t i = 0; s.anon && i < s.n_anon; i++)
		if (s.anon[i].p)
			munmap(s.anon[i].p, s.anon[i].len);
	free(s.anon);
	for (size_t i = 0; s.be && i < s.n_md; i++)
		snap_ram_unmap(&s.be[i].map);
	free(s.be);
	mr_classic_free(c);
	qmp_memdevs_free(s.md, s.n_md);
	free(s.machine);
	qmp_close(s.q);
	return ret;
}
