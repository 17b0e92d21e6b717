// SPDX-License-Identifier: MIT
/*
 * The public API (<snapmr/snapmr.h>): extensible structs in, the internal
 * pipelines underneath, a structured error out. Only this file's SNAPMR_API
 * functions are exported (libsnapmr.map); everything else is hidden.
 */
#include "../include/snapmr/snapmr.h"
#include "config.h"
#include "pages.h"
#include "snapmr.h"
#include "workers.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct snapmr_file {
	struct snap_file *f;
	enum snapmr_container container;
};

/* The internal enums are not the ABI: pin the correspondence at build time. */
_Static_assert((int)SNAPMR_DIRECT_AUTO == (int)SNAP_DIRECT_AUTO &&
		       (int)SNAPMR_DIRECT_ON == (int)SNAP_DIRECT_ON &&
		       (int)SNAPMR_DIRECT_OFF == (int)SNAP_DIRECT_OFF,
	       "direct modes");
_Static_assert((int)SNAPMR_DEVSTATE_NONE == (int)SNAP_DEVSTATE_NONE &&
		       (int)SNAPMR_DEVSTATE_SECTION == (int)SNAP_DEVSTATE_SECTION &&
		       (int)SNAPMR_DEVSTATE_RAW == (int)SNAP_DEVSTATE_RAW,
	       "device-state kinds");
_Static_assert((int)SNAPMR_CONTAINER_NONE == (int)MR_CONTAINER_NONE &&
		       (int)SNAPMR_CONTAINER_LIBVIRT == (int)MR_CONTAINER_LIBVIRT &&
		       (int)SNAPMR_CONTAINER_LIBVIRT_PARTIAL == (int)MR_CONTAINER_LIBVIRT_PARTIAL,
	       "containers");

/*
 * Copies the caller's struct (whose first member says its size) into a
 * zeroed struct of the size this library knows: a shorter one leaves the
 * newer members at their defaults, a longer one is accepted only if the
 * bytes this library does not know are zero.
 */
static int struct_in(void *dst, size_t known, const void *src)
{
	uint32_t size;

	memset(dst, 0, known);
	if (!src)
		return 0;
	memcpy(&size, src, sizeof(size));
	if (size < sizeof(uint32_t))
		return -EINVAL;
	for (size_t i = known; i < size; i++)
		if (((const unsigned char *)src)[i])
			return -E2BIG;
	memcpy(dst, src, size < known ? size : known);
	return 0;
}

/* Copies the members of src that fit the caller's struct; the caller's size stays. */
static int struct_out(void *dst, const void *src, size_t known)
{
	uint32_t size;

	memcpy(&size, dst, sizeof(size));
	if (size < sizeof(uint32_t))
		return -EINVAL;
	if (size > known)
		memset((char *)dst + known, 0, size - known);
	memcpy((char *)dst + sizeof(size), (const char *)src + sizeof(size),
	       (size < known ? size : known) - sizeof(size));
	return 0;
}

static int fail(struct snapmr_error *err, int code, const char *msg)
{
	struct snapmr_error e = { .size = sizeof(e), .code = code, .offset = SNAPMR_NO_OFFSET };

	snprintf(e.message, sizeof(e.message), "%s", msg);
	if (err)
		struct_out(err, &e, sizeof(e));
	return code;
}

static int fail_args(struct snapmr_error *err, int code, const char *what)
{
	char msg[128];

	snprintf(msg, sizeof(msg), "%s: %s", what,
		 code == -E2BIG ? "a newer struct with members this library does not know"
				: "bad struct size");
	return fail(err, code, msg);
}

/* A required argument struct, copied in by struct_in(). */
static int args_in(void *dst, size_t known, const void *src, const char *what,
		   struct snapmr_error *err)
{
	int r;

	if (!src)
		return fail(err, -EINVAL, "no arguments");
	r = struct_in(dst, known, src);
	return r ? fail_args(err, r, what) : 0;
}

/* The internal error, as the public one. */
static int export_err(struct snapmr_error *err, const struct snap_err *in)
{
	struct snapmr_error e = { .size = sizeof(e), .code = in->code };

	e.offset = in->has_off ? in->off : SNAPMR_NO_OFFSET;
	snprintf(e.block, sizeof(e.block), "%s", in->block);
	snprintf(e.message, sizeof(e.message), "%s", in->msg);
	if (err)
		struct_out(err, &e, sizeof(e));
	return in->code;
}

/* The caller's progress callback takes the public struct: relay to it. */
struct progress_relay {
	snapmr_progress_fn fn;
	void *arg;
};

static void relay_progress(void *arg, const struct snap_progress *p)
{
	const struct progress_relay *rl = arg;
	struct snapmr_progress pp = {
		.size = sizeof(pp), .done = p->done, .total = p->total, .seconds = p->seconds
	};

	rl->fn(rl->arg, &pp);
}

/* rl must live as long as *out is used. */
static int opts_in(struct snap_opts *out, struct progress_relay *rl, const struct snapmr_opts *in,
		   struct snapmr_error *err)
{
	struct snapmr_opts o;
	int r = struct_in(&o, sizeof(o), in);

	if (r)
		return fail_args(err, r, "options");
	*out = (struct snap_opts){
		.jobs = o.jobs,
		.engine = o.engine,
		.queue_depth = o.queue_depth,
		.max_io = o.max_io,
		.direct = (enum snap_direct)o.direct,
		.progress = o.progress ? relay_progress : NULL,
		.progress_arg = rl,
		.progress_ms = o.progress_ms,
		.no_sync = o.no_sync,
		.no_verify = o.no_verify,
	};
	*rl = (struct progress_relay){ .fn = o.progress, .arg = o.progress_arg };
	if (o.direct > SNAPMR_DIRECT_OFF)
		return fail(err, -EINVAL, "options: unknown direct mode");
	return 0;
}

static void stats_out(struct snapmr_stats *ret, const struct snap_stats *st)
{
	struct snapmr_stats s = {
		.size = sizeof(s),
		.total_bytes = st->total_bytes,
		.normal_pages = st->normal_pages,
		.zero_pages = st->zero_pages,
		.page_bytes = st->page_bytes,
		.stream_bytes = st->stream_bytes,
		.devstate_bytes = st->devstate_bytes,
		.requests = st->requests,
		.seconds = st->seconds,
		.engine = st->engine,
		.engine_fallback = st->engine_fallback,
		.direct = st->direct,
		.direct_fell_back = st->direct_fell_back,
		.jobs = st->jobs,
	};

	if (ret)
		struct_out(ret, &s, sizeof(s));
}

/* The caller's blocks (stride: the first one's size) as internal blocks; free() them. */
static int blocks_in(const struct snapmr_block *in, size_t n, struct snap_block **ret,
		     struct snapmr_error *err)
{
	struct snap_block *out;
	uint32_t stride;

	*ret = NULL;
	if (!n)
		return 0;
	if (!in)
		return fail(err, -EINVAL, "no blocks");
	memcpy(&stride, in, sizeof(stride));
	if (stride < sizeof(uint32_t))
		return fail_args(err, -EINVAL, "blocks");
	out = calloc(n, sizeof(*out));
	if (!out)
		return fail(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		struct snapmr_block b;
		int r = struct_in(&b, sizeof(b), (const char *)in + i * stride);

		if (!r && b.size != stride)
			r = -EINVAL;
		if (r) {
			free(out);
			return fail_args(err, r, "blocks");
		}
		out[i] = (struct snap_block){ .name = b.name,
					      .addr = b.addr,
					      .length = b.length,
					      .fd = b.fd,
					      .fd_off = b.fd_off,
					      .zeroed = b.zeroed };
	}
	*ret = out;
	return 0;
}

/*
 * The file is found again from its end (the completion record), so only a
 * regular file reads back; an O_DIRECT twin of another file would scatter
 * the pages elsewhere.
 */
static int check_output(int fd, int direct_fd, struct snapmr_error *err)
{
	struct stat st, dst;

	if (fstat(fd, &st) < 0)
		return fail(err, -errno, "the output descriptor cannot be examined");
	if (!S_ISREG(st.st_mode))
		return fail(err, -EINVAL, "the output is not a regular file");
	if (direct_fd < 0)
		return 0;
	if (fstat(direct_fd, &dst) < 0)
		return fail(err, -errno, "the O_DIRECT descriptor cannot be examined");
	if (dst.st_dev != st.st_dev || dst.st_ino != st.st_ino)
		return fail(err, -EINVAL,
			    "the O_DIRECT descriptor is not the same file as the output");
	return 0;
}

int snapmr_save(const struct snapmr_save_args *args, const struct snapmr_opts *opts,
		struct snapmr_stats *ret_stats, struct snapmr_error *err)
{
	struct snapmr_save_args a;
	struct snap_save_args sa;
	struct snap_block *blocks;
	struct snap_opts o;
	struct progress_relay prl;
	struct snap_stats st;
	struct snap_err e = { 0 };
	int r;

	r = args_in(&a, sizeof(a), args, "save arguments", err);
	if (r)
		return r;
	if (a.devstate > SNAPMR_DEVSTATE_RAW)
		return fail(err, -EINVAL, "unknown device-state kind");
	r = check_output(a.fd, a.direct_fd, err);
	if (r)
		return r;
	r = opts_in(&o, &prl, opts, err);
	if (r)
		return r;
	r = blocks_in(a.blocks, a.n_blocks, &blocks, err);
	if (r)
		return r;
	sa = (struct snap_save_args){
		.fd = a.fd,
		.direct_fd = a.direct_fd,
		.offset = a.offset,
		.machine = a.machine,
		.blocks = blocks,
		.n_blocks = a.n_blocks,
		.devstate = (enum snap_devstate_kind)a.devstate,
		.devstate_fd = a.devstate_fd,
	};
	r = snap_save(&sa, &o, &st, &e);
	free(blocks);
	if (r)
		return export_err(err, &e);
	stats_out(ret_stats, &st);
	return 0;
}

int snapmr_file_open(int fd, uint64_t offset, snapmr_file **ret, struct snapmr_error *err)
{
	enum mr_container kind = MR_CONTAINER_NONE;
	struct snap_err e = { 0 };
	snapmr_file *h;
	int r;

	if (!ret)
		return fail(err, -EINVAL, "no handle to return");
	if (offset == SNAPMR_OFFSET_DETECT) {
		r = snap_detect_offset(fd, &offset, &kind, &e);
		if (r)
			return export_err(err, &e);
	}
	h = calloc(1, sizeof(*h));
	if (!h)
		return fail(err, -ENOMEM, "out of memory");
	h->container = (enum snapmr_container)kind;
	r = snap_inspect(fd, offset, &h->f, &e);
	if (r) {
		free(h);
		return export_err(err, &e);
	}
	*ret = h;
	return 0;
}

void snapmr_file_free(snapmr_file *f)
{
	if (!f)
		return;
	snap_file_free(f->f);
	free(f);
}

static enum snapmr_integrity integrity_of(const struct snap_file *f)
{
	if (f->trailer)
		return SNAPMR_INTEGRITY_COMPLETE;
	if (f->trailer_status == -ENOENT)
		return f->marker ? SNAPMR_INTEGRITY_INCOMPLETE : SNAPMR_INTEGRITY_NONE;
	return SNAPMR_INTEGRITY_DAMAGED;
}

int snapmr_file_info(const snapmr_file *h, struct snapmr_file_info *ret)
{
	const struct snap_file *f = h->f;
	const struct mr_image *img = f->img;
	struct snapmr_file_info i = {
		.size = sizeof(i),
		.container = h->container,
		.stream_offset = img->base,
		.stream_end = img->stream_end,
		.machine = img->machine,
		.n_capabilities = img->n_caps,
		.n_blocks = img->n_blocks,
		.n_sections = img->n_sections,
		.ram_section_id = img->ram_id,
		.ram_total = img->ram_total,
		.tail_offset = img->ram_end,
		.has_device_state = img->has_devstate,
		.device_state_offset = img->devstate_off,
		.device_state_length = img->devstate_len,
		.eof_offset = img->eof_off,
		.has_vmdesc = img->has_vmdesc,
		.vmdesc_offset = img->vmdesc_off,
		.vmdesc_length = img->vmdesc_len,
		.file_size = f->file_size,
		.allocated = f->allocated,
		.integrity = integrity_of(f),
		.integrity_detail =
			integrity_of(f) == SNAPMR_INTEGRITY_DAMAGED ? f->trailer_msg : "",
		.chunk_size = f->trailer ? f->trailer->chunk_size : 0,
		.table_offset = f->trailer ? f->trailer->table_offset : 0,
		.snapmr_marker = f->marker,
		.trailing_bytes = f->appended,
	};

	if (!ret)
		return -EINVAL;
	return struct_out(ret, &i, sizeof(i));
}

const char *snapmr_file_capability(const snapmr_file *h, size_t i)
{
	return i < h->f->img->n_caps ? h->f->img->caps[i] : NULL;
}

int snapmr_file_block(const snapmr_file *h, size_t i, struct snapmr_block_info *ret)
{
	const struct mr_image *img = h->f->img;
	const struct mr_block_info *b;

	if (!ret)
		return -EINVAL;
	if (i >= img->n_blocks)
		return -ENOENT;
	b = &img->blocks[i];
	struct snapmr_block_info bi = {
		.size = sizeof(bi),
		.name = b->name,
		.length = b->length,
		.pages = b->num_pages,
		.pages_present = b->present,
		.header_offset = b->hdr_off,
		.bitmap_offset = b->hdr.bitmap_offset,
		.bitmap_size = b->bitmap_size,
		.pages_offset = b->hdr.pages_offset,
	};

	return struct_out(ret, &bi, sizeof(bi));
}

long snapmr_file_find_block(const snapmr_file *h, const char *name)
{
	const struct mr_block_info *b = name ? mr_image_block(h->f->img, name) : NULL;

	return b ? (long)(b - h->f->img->blocks) : -ENOENT;
}

int snapmr_file_section(const snapmr_file *h, size_t i, struct snapmr_section_info *ret)
{
	const struct mr_image *img = h->f->img;
	const struct mr_section_info *s;

	if (!ret)
		return -EINVAL;
	if (i >= img->n_sections)
		return -ENOENT;
	s = &img->sections[i];
	bool named = s->type == MR_SEC_START || s->type == MR_SEC_FULL;
	struct snapmr_section_info si = {
		.size = sizeof(si),
		.type = (enum snapmr_section_type)s->type,
		.id = s->type == MR_SEC_COMMAND ? 0 : s->id,
		.name = named ? s->idstr : "",
		.instance = named ? s->instance : 0,
		.version = named ? s->version : 0,
		.command = s->type == MR_SEC_COMMAND ? s->command : 0,
		.offset = s->off,
		.length = s->size,
	};

	return struct_out(ret, &si, sizeof(si));
}

int snapmr_restore(const struct snapmr_restore_args *args, const struct snapmr_opts *opts,
		   struct snapmr_stats *ret_stats, struct snapmr_error *err)
{
	struct snapmr_restore_args a;
	struct snap_restore_args ra;
	struct snap_block *blocks;
	struct snap_opts o;
	struct progress_relay prl;
	struct snap_stats st;
	struct snap_err e = { 0 };
	int r;

	r = args_in(&a, sizeof(a), args, "restore arguments", err);
	if (r)
		return r;
	if (!a.file)
		return fail(err, -EINVAL, "no file");
	switch (integrity_of(a.file->f)) {
	case SNAPMR_INTEGRITY_COMPLETE:
	case SNAPMR_INTEGRITY_NONE: break;
	case SNAPMR_INTEGRITY_INCOMPLETE:
		if (!a.force)
			return fail(err, -EPERM,
				    "incomplete: the save never wrote its completion record");
		break;
	case SNAPMR_INTEGRITY_DAMAGED:
		if (!a.force)
			return fail(err, -EPERM, "the checksum table is damaged");
		break;
	}
	for (size_t i = 0; i < a.n_blocks; i++) {
		const struct snapmr_block *b =
			(const void *)((const char *)a.blocks + i * a.blocks[0].size);

		if (!b->name || !mr_image_block(a.file->f->img, b->name)) {
			struct snap_err ne = { .code = -ENOENT };

			snprintf(ne.msg, sizeof(ne.msg), "block '%s' is not in the file",
				 b->name ? b->name : "(null)");
			snprintf(ne.block, sizeof(ne.block), "%s", b->name ? b->name : "");
			return export_err(err, &ne);
		}
	}
	r = opts_in(&o, &prl, opts, err);
	if (r)
		return r;
	r = blocks_in(a.blocks, a.n_blocks, &blocks, err);
	if (r)
		return r;
	ra = (struct snap_restore_args){
		.fd = a.fd,
		.direct_fd = a.direct_fd,
		.file = a.file->f,
		.blocks = blocks,
		.n_blocks = a.n_blocks,
		.devstate_fd = a.devstate_fd,
		.devstate_raw = a.devstate_raw,
	};
	r = snap_restore(&ra, &o, &st, &e);
	free(blocks);
	if (r)
		return export_err(err, &e);
	stats_out(ret_stats, &st);
	return 0;
}

struct mismatch_relay {
	snapmr_mismatch_fn fn;
	void *arg;
};

static void relay_mismatch(void *arg, const struct snap_mismatch *m)
{
	const struct mismatch_relay *rl = arg;
	struct snapmr_mismatch pm = {
		.size = sizeof(pm),
		.block = m->block,
		.first_page = m->first_page,
		.n_pages = m->npages,
		.file_offset = m->file_off,
	};

	rl->fn(rl->arg, &pm);
}

long long snapmr_verify(const struct snapmr_verify_args *args, const struct snapmr_opts *opts,
			struct snapmr_stats *ret_stats, struct snapmr_error *err)
{
	struct snapmr_verify_args a;
	struct mismatch_relay rl;
	struct snap_opts o;
	struct progress_relay prl;
	struct snap_stats st;
	struct snap_err e = { 0 };
	uint64_t bad = 0;
	int r;

	r = args_in(&a, sizeof(a), args, "verify arguments", err);
	if (r)
		return r;
	if (!a.file)
		return fail(err, -EINVAL, "no file");
	if (integrity_of(a.file->f) == SNAPMR_INTEGRITY_DAMAGED)
		return fail(err, -EBADMSG, a.file->f->trailer_msg);
	r = opts_in(&o, &prl, opts, err);
	if (r)
		return r;
	rl = (struct mismatch_relay){ .fn = a.mismatch, .arg = a.arg };
	r = snap_verify(a.fd, a.direct_fd, a.file->f, &o, a.mismatch ? relay_mismatch : NULL, &rl,
			&bad, &st, &e);
	if (r)
		return export_err(err, &e);
	stats_out(ret_stats, &st);
	return bad > (uint64_t)INT64_MAX ? INT64_MAX : (long long)bad;
}

int snapmr_read_pages(int fd, const snapmr_file *f, size_t block, uint64_t first_page,
		      uint64_t n_pages, void *buf, unsigned flags, struct snapmr_error *err)
{
	struct snap_err e = { 0 };

	if (!f || (!buf && n_pages))
		return fail(err, -EINVAL, "no file or buffer");
	if (flags & ~SNAPMR_READ_NO_VERIFY)
		return fail(err, -EINVAL, "unknown flags");
	if (snap_read_pages(fd, f->f, block, first_page, n_pages, buf,
			    !(flags & SNAPMR_READ_NO_VERIFY), &e))
		return export_err(err, &e);
	return 0;
}

int snapmr_map_block(int fd, const snapmr_file *f, size_t block, void **ret_addr,
		     struct snapmr_error *err)
{
	struct snap_err e = { 0 };

	if (!f || !ret_addr)
		return fail(err, -EINVAL, "no file or address to return");
	if (snap_map_block(fd, f->f, block, ret_addr, &e))
		return export_err(err, &e);
	return 0;
}

const char *snapmr_version(void)
{
	return SNAPMR_VERSION;
}
