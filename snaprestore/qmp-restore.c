// SPDX-License-Identifier: MIT
/*
 * snaprestore --qmp: the file's resume record says which blocks lived in
 * shared backends and how QEMU's classic stream listed them. Everything is
 * compared with the waiting QEMU before a byte of guest memory is written;
 * then the shared blocks go into the destination's backend files and the
 * rest, with the device state, into QEMU through a pipe as an x-ignore-shared
 * stream (format/classic.h).
 */
#include "qmp-restore.h"
#include "classic.h"
#include "qmpflow.h"
#include "ramsrc.h"
#include "resume.h"
#include "workers.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <json-c/json.h>

#define FDNAME "snapmr-restore"

struct restore_run {
	const struct qmp_restore_args *a;
	const struct snap_file *f;
	struct mr_resume *rec;
	struct qmp *q;
	struct qmp_memdev *md;
	size_t n_md;
	struct snap_ram_map *maps; /* per record block: shared ones map a backend */
	void **anon;		   /* per record block: the others' pages, in memory */
	/* Per record block: a shared memfd of the waiting QEMU, reached by its descriptor. */
	struct memfd_dest {
		char path[96];
		struct stat st;
		bool on;
	} * memfd;
	struct qf_caps caps;
	bool caps_set;
	struct qf_phases ph;
};

static const struct qmp_memdev *memdev(const struct restore_run *s, const char *id)
{
	for (size_t i = 0; i < s->n_md; i++)
		if (s->md[i].id && !strcmp(s->md[i].id, id))
			return &s->md[i];
	return NULL;
}

static int read_record(struct restore_run *s)
{
	const struct mr_trailer *t = s->f->trailer;
	struct mr_err me = { 0 };
	int r;

	if (!t || !t->blob) {
		cli_err("%s: not saved with --qmp (no resume record); use --ram/--all and "
			"migrate-incoming yourself",
			s->a->file);
		return -ENOENT;
	}
	r = mr_resume_decode(t->blob, t->blob_len, &s->rec, &me);
	if (r) {
		cli_err("%s: resume record: %s", s->a->file, me.msg);
		return r;
	}
	for (size_t i = 0; i < s->rec->n_blocks; i++) {
		const struct mr_resume_block *b = &s->rec->blocks[i];
		const struct mr_block_info *bi = mr_image_block(s->f->img, b->name);

		if (!bi || bi->length != b->length) {
			cli_err("%s: block '%s' of the resume record is %s the file", s->a->file,
				b->name, bi ? "not the size it has in" : "not in");
			return -EBADMSG;
		}
	}
	return 0;
}

/* The waiting QEMU: waiting for an incoming migration, with the file's machine type. */
static int check_vm(struct restore_run *s)
{
	const struct mr_resume *rec = s->rec;
	struct qmp_status st;
	char ebuf[512], *machine = NULL;
	int r;

	r = qmp_query_status(s->q, QF_CMD_MS, &st, ebuf, sizeof(ebuf));
	if (r) {
		cli_err("%s: %s", s->a->qmp, ebuf);
		return r;
	}
	if (strcmp(st.status, "inmigrate")) {
		cli_err("%s: QEMU is not waiting for an incoming migration (status '%s'): start "
			"it with -incoming defer",
			s->a->qmp, st.status);
		return -EINVAL;
	}
	r = qmp_query_machine_type(s->q, QF_CMD_MS, &machine, ebuf, sizeof(ebuf));
	if (r) {
		cli_err("%s: %s", s->a->qmp, ebuf);
		return r;
	}
	if (strcmp(machine, rec->machine)) {
		cli_err("%s: the file's machine type is %s, QEMU runs %s: start QEMU with -M %s",
			s->a->qmp, rec->machine, machine, rec->machine);
		free(machine);
		return -EINVAL;
	}
	free(machine);
	return 0;
}

/* Every shared block of the file has a shared backend of its size. */
static int check_backends(struct restore_run *s)
{
	const struct mr_resume *rec = s->rec;
	char ebuf[512];
	int r;

	r = qmp_query_memdevs(s->q, QF_CMD_MS, &s->md, &s->n_md, ebuf, sizeof(ebuf));
	if (r) {
		cli_err("%s: %s", s->a->qmp, ebuf);
		return r;
	}
	s->memfd = calloc(rec->n_blocks ? rec->n_blocks : 1, sizeof(*s->memfd));
	if (!s->memfd) {
		cli_err("out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < rec->n_blocks; i++) {
		const struct mr_resume_block *b = &rec->blocks[i];
		const struct qmp_memdev *d;

		if (!b->shared)
			continue;
		d = memdev(s, b->backend[0] ? b->backend : b->name);
		if (!d) {
			cli_err("%s: block '%s': the waiting QEMU has no backend '%s' (-object "
				"memory-backend-file,id=%s,size=%llu,mem-path=...,share=on)",
				s->a->qmp, b->name, b->backend, b->backend,
				(unsigned long long)b->length);
			return -ENODEV;
		}
		if (((!d->type || strcmp(d->type, "memory-backend-file") || !d->share ||
		      !d->mem_path) &&
		     !qf_is_shared_memfd(d)) ||
		    d->size != b->length) {
			cli_err("%s: backend '%s' is %s, size %llu%s; the file needs "
				"memory-backend-file,share=on of %llu bytes",
				s->a->qmp, d->id, d->type ? d->type : "?",
				(unsigned long long)d->size, d->share ? "" : ", share=off",
				(unsigned long long)b->length);
			return -EINVAL;
		}
		/* A shared memfd has no path: the pages go in through QEMU's descriptor. */
		if (qf_is_shared_memfd(d)) {
			struct memfd_dest *m = &s->memfd[i];

			r = qf_memfd_path(s->q, s->md, s->n_md, d, m->path, sizeof(m->path),
					  &m->st);
			if (r)
				return r;
			m->on = true;
		}
	}
	return 0;
}

/* A shared backend the file does not know would keep what its file holds. */
static int check_unknown_backends(const struct restore_run *s)
{
	const struct mr_resume *rec = s->rec;

	for (size_t i = 0; i < s->n_md; i++) {
		bool known = false;

		for (size_t j = 0; j < rec->n_blocks && !known; j++)
			known = s->md[i].id && rec->blocks[j].shared &&
				!strcmp(s->md[i].id, rec->blocks[j].backend[0]
							     ? rec->blocks[j].backend
							     : rec->blocks[j].name);
		if (!known && s->md[i].share && s->md[i].type &&
		    !strcmp(s->md[i].type, "memory-backend-file")) {
			cli_err("%s: backend '%s' of the waiting QEMU is not in the file",
				s->a->qmp, s->md[i].id);
			return -EINVAL;
		}
	}
	return 0;
}

/* The waiting QEMU must match the record: state, machine type, every backend. */
static int check_dest(struct restore_run *s)
{
	int r = check_vm(s);

	if (!r)
		r = check_backends(s);
	if (!r)
		r = check_unknown_backends(s);
	return r;
}

/* Block i's destination: its backend (file or QEMU's memfd), or anonymous memory. */
static int map_block(struct restore_run *s, size_t i, struct snap_block *ret)
{
	const struct mr_resume_block *b = &s->rec->blocks[i];
	char ebuf[512];
	int r;

	if (b->shared) {
		const struct qmp_memdev *d = memdev(s, b->backend[0] ? b->backend : b->name);
		struct snap_ram_spec spec = { 0 };

		snprintf(spec.name, sizeof(spec.name), "%s", b->name);
		spec.where = s->memfd[i].on ? s->memfd[i].path : d->mem_path;
		r = snap_ram_map_dest(&spec, -1, b->length, &s->maps[i], ebuf, sizeof(ebuf));
		if (r) {
			cli_err("block '%s': %s", b->name, ebuf);
			return r;
		}
		if (s->memfd[i].on) {
			r = qf_memfd_check(&s->memfd[i].st, s->maps[i].fd, d->id);
			if (r)
				return r;
		}
		*ret = (struct snap_block){ .name = b->name,
					    .addr = s->maps[i].addr,
					    .length = b->length,
					    .fd = s->maps[i].fd,
					    .fd_off = s->maps[i].offset,
					    .zeroed = s->maps[i].zeroed };
		return 0;
	}
	s->anon[i] =
		mmap(NULL, b->length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->anon[i] == MAP_FAILED) {
		s->anon[i] = NULL;
		cli_err("block '%s': out of memory", b->name);
		return -ENOMEM;
	}
	*ret = (struct snap_block){
		.name = b->name, .addr = s->anon[i], .length = b->length, .fd = -1, .zeroed = true
	};
	return 0;
}

/* The tail is small (device state): read it back whole. */
static int read_tail(int tfd, struct mr_buf *tail)
{
	uint8_t buf[65536];
	ssize_t n;
	off_t off = 0;
	int r;

	while ((n = pread(tfd, buf, sizeof(buf), off)) > 0) {
		mr_buf_put(tail, buf, (size_t)n);
		off += n;
	}
	r = n < 0 ? -errno : tail->err;
	if (r)
		cli_err("reading the device state back: %s", strerror(-r));
	return r;
}

/* Shared blocks into the backend files, the others into memory; the raw tail into tail. */
static int restore_blocks(struct restore_run *s, int fd, int dfd, struct mr_buf *tail)
{
	const struct mr_resume *rec = s->rec;
	struct snap_block *blocks = calloc(rec->n_blocks, sizeof(*blocks));
	struct snap_restore_args ra;
	struct snap_stats st;
	struct snap_err err;
	int tfd = -1, r = -ENOMEM;

	s->maps = calloc(rec->n_blocks, sizeof(*s->maps));
	s->anon = calloc(rec->n_blocks, sizeof(*s->anon));
	if (!blocks || !s->maps || !s->anon) {
		cli_err("out of memory");
		goto out;
	}
	for (size_t i = 0; i < rec->n_blocks; i++) {
		r = map_block(s, i, &blocks[i]);
		if (r)
			goto out;
	}
	tfd = memfd_create("snapmr-tail", MFD_CLOEXEC);
	if (tfd < 0) {
		r = -errno;
		cli_err("memfd_create: %s", strerror(errno));
		goto out;
	}
	ra = (struct snap_restore_args){ .fd = fd,
					 .direct_fd = dfd,
					 .file = s->f,
					 .blocks = blocks,
					 .n_blocks = rec->n_blocks,
					 .devstate_fd = tfd,
					 .devstate_raw = true };
	r = snap_restore(&ra, &s->a->cc->opts, &st, &err);
	cli_progress_end();
	if (r) {
		cli_err("%s: %s%s", s->a->file, err.msg, cli_remedy(&err));
		goto out;
	}
	r = read_tail(tfd, tail);
out:
	if (tfd >= 0)
		close(tfd);
	free(blocks);
	return r;
}

static int pipe_write(void *ctx, const void *buf, size_t len)
{
	int fd = *(int *)ctx;
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int feed_qemu(struct restore_run *s, const struct mr_buf *tail)
{
	const struct mr_resume *rec = s->rec;
	struct mr_classic_enc_block *eb = calloc(rec->n_blocks, sizeof(*eb));
	struct json_object *args = NULL;
	struct mr_err me = { 0 };
	size_t dev_off;
	uint32_t ram_id;
	bool sw;
	char ebuf[512];
	int pfd = -1, r;

	if (!eb) {
		cli_err("out of memory");
		return -ENOMEM;
	}
	r = mr_classic_split_raw_tail(tail->data, tail->len, &dev_off, &ram_id, &sw, &me);
	if (r) {
		cli_err("%s: the stream tail at %llu: %s", s->a->file, (unsigned long long)me.off,
			me.msg);
		goto out;
	}
	for (size_t i = 0; i < rec->n_blocks; i++)
		eb[i] = (struct mr_classic_enc_block){ .name = rec->blocks[i].name,
						       .length = rec->blocks[i].length,
						       .gpa = rec->blocks[i].gpa,
						       .data = s->anon[i] };
	r = qf_pipe_getfd(s->q, FDNAME, false, &pfd);
	if (r)
		goto out;
	args = json_object_new_object();
	if (!args || json_object_object_add(args, "uri", json_object_new_string("fd:" FDNAME))) {
		cli_err("out of memory");
		r = -ENOMEM;
		goto out;
	}
	r = qmp_execute(s->q, "migrate-incoming", args, QF_CMD_MS, NULL, ebuf, sizeof(ebuf));
	if (r) {
		cli_err("migrate-incoming: %s", ebuf);
		goto out;
	}
	struct mr_classic_enc e = { .machine = rec->machine,
				    .ram_id = rec->ram_id,
				    .blocks = eb,
				    .n_blocks = rec->n_blocks,
				    .switchover_start = rec->switchover_start,
				    .tail = tail->data + dev_off,
				    .tail_len = tail->len - dev_off,
				    .write = pipe_write,
				    .ctx = &pfd };

	r = mr_classic_encode(&e, &me);
	close(pfd);
	pfd = -1;
	/* QEMU's verdict first: a write that failed because QEMU gave up says less. */
	if (qf_wait_migration(s->q, "migrate-incoming"))
		r = r ? r : -EIO;
	else if (r)
		cli_err("writing the stream to QEMU: %s", strerror(-r));
out:
	if (pfd >= 0)
		close(pfd);
	json_object_put(args);
	free(eb);
	return r;
}

int qmp_restore(const struct qmp_restore_args *a, int fd, int dfd, const struct snap_file *f)
{
	struct restore_run s = { .a = a, .f = f };
	struct mr_buf tail = MR_BUF_INIT;
	struct qmp_status st;
	char ebuf[512];
	int ret = 1;

	qf_phases_init(&s.ph, a->cc->opts.progress != NULL, a->cc->json);
	if (read_record(&s) || qf_connect(a->qmp, &s.q))
		goto out;
	if (check_dest(&s))
		goto out;
	if (qf_caps_set(s.q, &s.caps, false)) {
		cli_err("%s: cannot turn on x-ignore-shared on the waiting QEMU", a->qmp);
		goto out;
	}
	s.caps_set = true;
	qf_phase(&s.ph, "checks");
	if (restore_blocks(&s, fd, dfd, &tail))
		goto out;
	qf_phase(&s.ph, "ram");
	if (feed_qemu(&s, &tail))
		goto out;
	/*
	 * x-ignore-shared left on would make the next ordinary migration of
	 * this guest leave its RAM behind: the old capabilities come back now.
	 */
	s.caps_set = false;
	if (qf_caps_restore(s.q, &s.caps))
		goto out;
	qf_phase(&s.ph, "device-state");
	/* A QEMU started without -S runs the guest as soon as the load completes. */
	if (qmp_query_status(s.q, QF_CMD_MS, &st, ebuf, sizeof(ebuf))) {
		cli_err("%s: %s", a->qmp, ebuf);
		goto out;
	}
	if (st.running && (!s.rec->running || a->paused)) {
		cli_note(
			"QEMU was started without -S and ran the guest after the load; pausing it");
		if (qmp_execute(s.q, "stop", NULL, QF_CMD_MS, NULL, ebuf, sizeof(ebuf))) {
			cli_err("stop: %s", ebuf);
			goto out;
		}
	} else if (s.rec->running && !a->paused && !st.running) {
		if (qmp_execute(s.q, "cont", NULL, QF_CMD_MS, NULL, ebuf, sizeof(ebuf))) {
			cli_err("cont: %s", ebuf);
			goto out;
		}
		qf_phase(&s.ph, "resume");
	}
	if (a->cc->json) {
		printf("{\"status\": \"completed\", \"machine\": ");
		cli_json_str(stdout, s.rec->machine);
		printf(", \"saved-by-qemu\": ");
		cli_json_str(stdout, s.rec->qemu);
		printf(", \"running\": %s, ", s.rec->running && !a->paused ? "true" : "false");
		qf_phases_json(stdout, &s.ph);
		printf("}\n");
	}
	ret = 0;
out:
	if (s.caps_set)
		qf_caps_restore(s.q, &s.caps);
	for (size_t i = 0; s.rec && s.maps && i < s.rec->n_blocks; i++)
		snap_ram_unmap(&s.maps[i]);
	for (size_t i = 0; s.rec && s.anon && i < s.rec->n_blocks; i++)
		if (s.anon[i])
			munmap(s.anon[i], s.rec->blocks[i].length);
	free(s.maps);
	free(s.anon);
	free(s.memfd);
	mr_buf_free(&tail);
	qmp_memdevs_free(s.md, s.n_md);
	mr_resume_free(s.rec);
	qmp_close(s.q);
	return ret;
}
