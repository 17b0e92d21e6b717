// SPDX-License-Identifier: MIT
/*
 * snaprestore: restore RAM blocks and device state from a QEMU mapped-ram
 * file, or inspect one. Parses arguments, maps destinations, calls the library.
 */
#include "cleanup.h"
#include "cli.h"
#include "config.h"
#include "engine.h"
#include "fdopen.h"
#include "fdset.h"
#include "qmp-restore.h"
#include "ramsrc.h"
#include "snapmr.h"
#include "stream.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <signal.h>
#include <sys/stat.h>
#include <xxhash.h>

#define MAX_BLOCKS CLI_MAX_BLOCKS

/* Statistics of the finished restore or verify, for the --fd-socket result line. */
static struct snap_stats last_stats;
static bool have_stats;

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: snaprestore FILE [--ram NAME=DEST[,offset=N]]... [--all DIR] [options]\n"
		"       snaprestore --info [--json] FILE\n"
		"       snaprestore --verify FILE\n"
		"Restore guest RAM and device state from a QEMU mapped-ram migration file.\n"
		"\n"
		"  -r, --ram NAME=DEST       restore block NAME into DEST: a file (created, or "
		"grown\n"
		"                            to the block length; /dev/shm, hugetlbfs), fd:N or\n"
		"                            /dev/fdset/N; offset=N places the block inside it\n"
		"  -a, --all DIR             restore every block not given with --ram into DIR\n"
		"                            (created if missing),\n"
		"                            one file per block (name percent-encoded: '/' -> "
		"%%2F;\n"
		"                            past 255 bytes, a prefix and '~' + a hash of the "
		"name)\n"
		"      --skip NAME           leave block NAME out (repeatable)\n"
		"  -d, --device-state OUT    write the device state to a file, fd:N or - (stdout)\n"
		"      --device-state-raw OUT  write the raw stream tail after RAM (QEMU files)\n"
		"      --add-fd fd=F,set=N[,opaque=S]  put inherited descriptor F into fd set N;\n"
		"                            /dev/fdset/N then works wherever a path does\n"
		"      --fd-socket PATH|fd:N receive descriptors over a UNIX socket before "
		"starting\n"
		"                            (see docs/fd-passing.md); a JSON result line is sent "
		"back\n"
		"      --offset N            the stream starts at byte N of FILE (default: 0, or\n"
		"                            after a libvirt save image header, found by itself)\n"
		"      --qmp SOCKET|fd:N     restore a snapsave --qmp file into the QEMU of this\n"
		"                            monitor (-incoming defer); --paused keeps it paused\n"
		"  -i, --info                describe the file instead of restoring\n"
		"      --verify              check every checksum without restoring; lists each\n"
		"                            mismatch and exits 1 if there is any\n"
		"      --no-verify           restore without checking checksums while reading\n"
		"      --force               restore a file that lacks its completion record or\n"
		"                            whose checksum table is damaged (unverified)\n"
		"  -j, --jobs N              worker threads (default: 2 per CPU, max 16)\n"
		"      --direct auto|on|off  O_DIRECT for page data (default auto)\n"
		"      --io ENGINE           I/O engine: threads, uring, aio (default: best "
		"available)\n"
		"      --queue-depth N       requests in flight per worker (async engines)\n"
		"      --max-io-size SIZE    bytes per request (default 1M)\n"
		"      --progress[=json]     progress on stderr (json: one object per line)\n"
		"      --json                print statistics (or --info) as JSON on stdout\n"
		"  -h, --help                show this help\n"
		"  -V, --version             show the version\n"
		"\n"
		"Every block in the file needs a destination, --all or --skip.\n"
		"Exit status: 0 on success, 1 on any failure, 2 on bad usage.\n");
}

enum {
	OPT_SKIP = CLI_OPT_LOCAL,
	OPT_VERIFY,
	OPT_NO_VERIFY,
	OPT_FORCE,
	OPT_QMP,
	OPT_PAUSED,
};

static const struct option long_opts[] = {
	{ "ram", required_argument, NULL, 'r' },
	{ "all", required_argument, NULL, 'a' },
	{ "skip", required_argument, NULL, OPT_SKIP },
	{ "info", no_argument, NULL, 'i' },
	{ "verify", no_argument, NULL, OPT_VERIFY },
	{ "no-verify", no_argument, NULL, OPT_NO_VERIFY },
	{ "force", no_argument, NULL, OPT_FORCE },
	{ "qmp", required_argument, NULL, OPT_QMP },
	{ "paused", no_argument, NULL, OPT_PAUSED },
	CLI_COMMON_LONG_OPTS,
	{ NULL, 0, NULL, 0 },
};

struct args {
	struct cli_common cc;
	const char *file;
	struct snap_ram_spec ram[MAX_BLOCKS];
	size_t n_ram;
	const char *skip[MAX_BLOCKS];
	size_t n_skip;
	const char *all_dir;
	bool info;
	bool verify;
	bool force;
	struct qmp_restore_args qmp; /* --qmp and --paused */
};

static int parse_args(int argc, char **argv, struct args *a)
{
	int c;

	opterr = 0; /* getopt would name argv[0] and take two lines */
	while ((c = getopt_long(argc, argv, ":r:a:d:ij:hV", long_opts, NULL)) != -1) {
		int k = cli_common_option(c, argv, &a->cc, usage);

		if (k < 0)
			return k;
		if (a->cc.done)
			return 0;
		if (k)
			continue;
		switch (c) {
		case 'r':
			k = cli_add_ram(a->ram, &a->n_ram, optarg);
			if (k < 0)
				return k;
			break;
		case 'a': a->all_dir = optarg; break;
		case OPT_SKIP:
			if (a->n_skip == MAX_BLOCKS) {
				cli_err("--skip: at most %d blocks", MAX_BLOCKS);
				return -EINVAL;
			}
			a->skip[a->n_skip++] = optarg;
			break;
		case 'i': a->info = true; break;
		case OPT_VERIFY: a->verify = true; break;
		case OPT_NO_VERIFY: a->cc.opts.no_verify = true; break;
		case OPT_FORCE: a->force = true; break;
		case OPT_QMP: a->qmp.qmp = optarg; break;
		case OPT_PAUSED: a->qmp.paused = true; break;
		default: cli_err("option '%s' is not handled", argv[optind - 1]); return -EINVAL;
		}
	}
	if (optind >= argc) {
		cli_err("no input file");
		return -EINVAL;
	}
	a->file = argv[optind++];
	if (optind < argc) {
		cli_err("unexpected argument '%s'", argv[optind]);
		return -EINVAL;
	}
	if ((a->info || a->verify) && (a->n_ram || a->all_dir || a->cc.devstate || a->n_skip)) {
		cli_err("--%s does not restore: drop --ram, --all, --skip and --device-state",
			a->info ? "info" : "verify");
		return -EINVAL;
	}
	if ((a->qmp.qmp || a->qmp.paused) && (!a->qmp.qmp || a->info || a->verify || a->n_ram ||
					      a->all_dir || a->cc.devstate || a->n_skip)) {
		cli_err(a->qmp.qmp ? "--qmp fills the waiting QEMU's backends itself: drop --ram, "
				     "--all, --skip, --device-state, --info and --verify"
				   : "--paused needs --qmp SOCKET");
		return -EINVAL;
	}
	if (a->info && a->verify) {
		cli_err("--info and --verify: choose one");
		return -EINVAL;
	}
	if (a->verify && a->cc.opts.no_verify) {
		cli_err("--verify and --no-verify contradict each other");
		return -EINVAL;
	}
	return cli_common_finish(&a->cc);
}

/*
 * A file name for a block under --all: percent-encoding keeps it inside DIR
 * ('/' and a leading '.' are encoded) and distinct for distinct names.
 */
static void encode_name(const char *name, char *out, size_t len)
{
	size_t o = 0;

	for (const unsigned char *p = (const unsigned char *)name; *p && o + 4 < len; p++) {
		bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			     (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '@' ||
			     *p == ':' || *p == '+' ||
			     (*p == '.' && p != (const unsigned char *)name);

		if (plain) {
			out[o++] = (char)*p;
		} else {
			snprintf(out + o, len - o, "%%%02X", *p);
			o += 3;
		}
	}
	out[o] = 0;
	/*
	 * Past NAME_MAX, keep a readable prefix and make it unique with a hash of
	 * the whole name ('~' never appears in an encoded name).
	 */
	if (o > 255)
		snprintf(out + 200, len - 200, "~%016llx",
			 (unsigned long long)XXH3_64bits(name, strlen(name)));
}

static const char *integrity(const struct snap_file *f)
{
	if (f->trailer)
		return "checksums present, complete";
	if (f->trailer_status == -ENOENT)
		return f->marker ? "INCOMPLETE: snapsave file without its completion record"
				 : "no checksums (not written by snapsave, e.g. by QEMU)";
	return "checksum table damaged";
}

static void print_info_text(const char *file, const struct snap_file *f)
{
	const struct mr_image *img = f->img;
	char h1[32], h2[32];

	printf("file:          %s\n", file);
	printf("stream:        offset %llu, ends at %llu\n", (unsigned long long)img->base,
	       (unsigned long long)img->stream_end);
	printf("machine:       %s\n", img->machine);
	printf("capabilities:");
	for (unsigned i = 0; i < img->n_caps; i++)
		printf(" %s", img->caps[i]);
	printf("\nRAM section:   id %u, %zu blocks, %s total\n", img->ram_id, img->n_blocks,
	       cli_human(img->ram_total, h1, sizeof(h1)));
	printf("  %-32s %14s %19s %12s %12s\n", "block", "length", "pages present", "bitmap@",
	       "pages@");
	for (size_t i = 0; i < img->n_blocks; i++) {
		const struct mr_block_info *b = &img->blocks[i];
		char pp[48];

		snprintf(pp, sizeof(pp), "%llu/%llu", (unsigned long long)b->present,
			 (unsigned long long)b->num_pages);
		printf("  %-32s %14llu %19s %#12llx %#12llx\n", b->name,
		       (unsigned long long)b->length, pp, (unsigned long long)b->hdr.bitmap_offset,
		       (unsigned long long)b->hdr.pages_offset);
	}
	if (img->has_devstate)
		printf("device state:  %llu bytes (snapmr section at %#llx)\n",
		       (unsigned long long)img->devstate_len,
		       (unsigned long long)img->devstate_off);
	printf("stream tail:   %llu bytes after RAM (from %#llx)\n",
	       (unsigned long long)(img->stream_end - img->ram_end),
	       (unsigned long long)img->ram_end);
	printf("sections:      %zu", img->n_sections);
	printf(", EOF at %#llx", (unsigned long long)img->eof_off);
	if (img->has_vmdesc)
		printf(", VM description %llu bytes at %#llx", (unsigned long long)img->vmdesc_len,
		       (unsigned long long)img->vmdesc_off);
	printf("\nfile size:     %s logical, %s allocated\n",
	       cli_human(f->file_size, h1, sizeof(h1)), cli_human(f->allocated, h2, sizeof(h2)));
	printf("integrity:     %s", integrity(f));
	if (f->trailer)
		printf(" (%u-byte chunks, table at %#llx)", f->trailer->chunk_size,
		       (unsigned long long)f->trailer->table_offset);
	if (f->appended)
		printf("; %llu bytes after the completion record at offset %#llx",
		       (unsigned long long)f->appended, (unsigned long long)f->record_off);
	else if (!f->trailer && f->trailer_status != -ENOENT)
		printf(" (%s)", f->trailer_msg);
	printf("\n");
}

static void print_info_json(const char *file, const struct snap_file *f)
{
	const struct mr_image *img = f->img;

	printf("{\"file\": ");
	cli_json_str(stdout, file);
	printf(", \"offset\": %llu, \"stream-end\": %llu, \"machine\": ",
	       (unsigned long long)img->base, (unsigned long long)img->stream_end);
	cli_json_str(stdout, img->machine);
	printf(", \"capabilities\": [");
	for (unsigned i = 0; i < img->n_caps; i++) {
		printf(i ? ", " : "");
		cli_json_str(stdout, img->caps[i]);
	}
	printf("], \"ram-section-id\": %u, \"ram-total\": %llu, \"blocks\": [", img->ram_id,
	       (unsigned long long)img->ram_total);
	for (size_t i = 0; i < img->n_blocks; i++) {
		const struct mr_block_info *b = &img->blocks[i];

		printf(i ? ", {\"name\": " : "{\"name\": ");
		cli_json_str(stdout, b->name);
		printf(", \"length\": %llu, \"pages\": %llu, \"pages-present\": %llu, "
		       "\"header-offset\": %llu, \"bitmap-offset\": %llu, \"bitmap-size\": %llu, "
		       "\"pages-offset\": %llu}",
		       (unsigned long long)b->length, (unsigned long long)b->num_pages,
		       (unsigned long long)b->present, (unsigned long long)b->hdr_off,
		       (unsigned long long)b->hdr.bitmap_offset, (unsigned long long)b->bitmap_size,
		       (unsigned long long)b->hdr.pages_offset);
	}
	printf("], \"device-state\": ");
	if (img->has_devstate)
		printf("{\"offset\": %llu, \"size\": %llu}", (unsigned long long)img->devstate_off,
		       (unsigned long long)img->devstate_len);
	else
		printf("null");
	printf(", \"tail-offset\": %llu, \"tail-size\": %llu, \"sections\": [",
	       (unsigned long long)img->ram_end,
	       (unsigned long long)(img->stream_end - img->ram_end));
	for (size_t i = 0; i < img->n_sections; i++) {
		const struct mr_section_info *s = &img->sections[i];

		printf(i ? ", {\"type\": \"%s\"" : "{\"type\": \"%s\"", mr_sec_type_name(s->type));
		if (mr_sec_is_command(s->type))
			printf(", \"command\": %u", s->command);
		else
			printf(", \"id\": %u", s->id);
		if (mr_sec_is_named(s->type)) {
			printf(", \"name\": ");
			cli_json_str(stdout, s->idstr);
			printf(", \"instance\": %u, \"version\": %u", s->instance, s->version);
		}
		printf(", \"offset\": %llu, \"size\": %llu}", (unsigned long long)s->off,
		       (unsigned long long)s->size);
	}
	printf("], \"eof-offset\": %llu, \"vmdesc\": ", (unsigned long long)img->eof_off);
	if (img->has_vmdesc)
		printf("{\"offset\": %llu, \"size\": %llu}", (unsigned long long)img->vmdesc_off,
		       (unsigned long long)img->vmdesc_len);
	else
		printf("null");
	printf(", \"file-size\": %llu, \"allocated\": %llu, \"integrity\": {\"status\": \"%s\", "
	       "\"detail\": ",
	       (unsigned long long)f->file_size, (unsigned long long)f->allocated,
	       f->trailer		      ? "complete"
	       : f->trailer_status == -ENOENT ? (f->marker ? "incomplete" : "none")
					      : "damaged");
	cli_json_str(stdout, integrity(f));
	if (f->trailer)
		printf(", \"chunk-size\": %u, \"table-offset\": %llu, \"appended\": %llu",
		       f->trailer->chunk_size, (unsigned long long)f->trailer->table_offset,
		       (unsigned long long)f->appended);
	printf("}}\n");
}

static bool skipped(const struct args *a, const char *name)
{
	for (size_t i = 0; i < a->n_skip; i++)
		if (!strcmp(a->skip[i], name))
			return true;
	return false;
}

static int open_input(const struct args *a, int *ret_fd, int *ret_dfd)
{
	char ebuf[512];
	int fd = -1, dfd = -1, r;

	r = snap_io_open(a->file, O_RDONLY, 0, &fd, ebuf, sizeof(ebuf));
	if (r < 0) {
		cli_err("%s: %s", a->file, ebuf);
		return r;
	}
	/* Before the O_DIRECT probe, whose note would be noise for a directory or pipe. */
	struct stat st;

	if (fstat(fd, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		cli_err("%s: not a regular file or block device", a->file);
		close(fd);
		return -EINVAL;
	}
	if ((a->info || a->cc.opts.direct == SNAP_DIRECT_OFF)) {
		*ret_fd = fd;
		*ret_dfd = -1;
		return 0;
	}
	/*
	 * O_DIRECT is a property of the open file description: a second descriptor,
	 * reopened from the first (not the path, which may name another file by
	 * now) and checked to be the same file, whatever the route.
	 */
	r = snap_io_open_twin(fd, a->file, AT_FDCWD, a->file, false, O_RDONLY | O_DIRECT, &dfd,
			      ebuf, sizeof(ebuf));
	if (r < 0) {
		if (a->cc.opts.direct == SNAP_DIRECT_ON || r == -EXDEV) {
			cli_err("%s: O_DIRECT: %s", a->file, ebuf);
			close(fd);
			return r;
		}
		if (snap_io_is_fdset_spec(a->file))
			cli_note("%s: the fd set holds no O_RDONLY|O_DIRECT descriptor; reading "
				 "buffered",
				 a->file);
		else if (strncmp(a->file, "fd:", 3))
			cli_note("%s: O_DIRECT unavailable (%s); reading buffered", a->file, ebuf);
		dfd = -1;
	}
	*ret_fd = fd;
	*ret_dfd = dfd;
	return 0;
}

/*
 * The device-state output. A path is written to a new temporary file in its
 * directory and renamed over it only once the restore succeeded and the data
 * is synced: a failed run leaves an existing file as it was and creates
 * nothing. '-', fd:N, /dev/fdset/N and an existing device or FIFO are written
 * in place.
 */
struct devstate_out {
	const char *spec;
	int fd;
	int dirfd;		/* a path's directory, else -1 */
	const char *name;	/* the final name in dirfd */
	char tmp[NAME_MAX + 1]; /* the temporary name in dirfd, "" in place */
	char *real;		/* a symlink's target path (owned) */
	struct stat target;	/* the file the output is or replaces */
	bool has_target;
	bool in_place_truncate; /* fd:N and fdset files are emptied, as ever */
};

/* The signals whose handler removes created files: held while a file is created and registered. */
static void hold_signals(bool hold, sigset_t *old)
{
	sigset_t set;

	if (!hold) {
		sigprocmask(SIG_SETMASK, old, NULL);
		return;
	}
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, old);
}

static int open_devstate_out(const char *spec, struct devstate_out *o)
{
	const char *path = spec;
	char ebuf[256];
	struct stat st;
	sigset_t old;
	int r;

	*o = (struct devstate_out){ .spec = spec, .fd = -1, .dirfd = -1 };
	if (!strcmp(spec, "-")) {
		o->fd = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
		if (o->fd < 0) {
			cli_err("device state '-': stdout: %s", strerror(errno));
			return -1;
		}
		o->has_target = fstat(o->fd, &o->target) == 0;
		return 0;
	}
	if (snap_io_is_fd_spec(spec)) {
		/* Emptied only after the role checks (see check_targets()). */
		if (snap_io_open(spec, O_WRONLY, 0, &o->fd, ebuf, sizeof(ebuf)) < 0) {
			cli_err("device state '%s': %s", spec, ebuf);
			return -1;
		}
		o->has_target = fstat(o->fd, &o->target) == 0;
		o->in_place_truncate = o->has_target && S_ISREG(o->target.st_mode);
		return 0;
	}
	/* A device or FIFO (also /dev/stdout on a pipe) cannot be renamed over. */
	o->has_target = stat(spec, &o->target) == 0;
	if (o->has_target && !S_ISREG(o->target.st_mode)) {
		if (snap_io_open(spec, O_WRONLY, 0, &o->fd, ebuf, sizeof(ebuf)) < 0) {
			cli_err("device state '%s': %s", spec, ebuf);
			return -1;
		}
		return 0;
	}
	/* A symlink the user named is followed: the file goes next to its target. */
	if (lstat(spec, &st) == 0 && S_ISLNK(st.st_mode)) {
		o->real = realpath(spec, NULL);
		if (!o->real) {
			cli_err("device state '%s': %s", spec,
				errno == ENOENT ? "dangling symbolic link" : strerror(errno));
			return -1;
		}
		path = o->real;
	}
	r = snap_open_parent(path, &o->dirfd, &o->name);
	if (r < 0) {
		cli_err("device state '%s': %s", spec, strerror(-r));
		return -1;
	}
	hold_signals(true, &old);
	o->fd = snap_create_temp_at(o->dirfd, o->name, o->tmp, sizeof(o->tmp));
	r = o->fd < 0 ? o->fd : 0;
	if (o->fd >= 0 && (fstat(o->fd, &st) < 0 || cli_remove_on_abort(o->dirfd, o->tmp, &st))) {
		unlinkat(o->dirfd, o->tmp, 0);
		close(o->fd);
		o->fd = -1;
		r = -ENOSPC;
	}
	hold_signals(false, &old);
	if (r < 0) {
		o->tmp[0] = 0;
		cli_err("device state '%s': cannot create a file next to it: %s", spec,
			strerror(-r));
		return -1;
	}
	return 0;
}

static int sync_devstate_out(const struct devstate_out *o)
{
	/* Pipes and terminals cannot be synced (EINVAL); files must be. */
	if (fsync(o->fd) < 0 && errno != EINVAL && errno != EROFS) {
		cli_err("device state '%s': %s", o->spec, strerror(errno));
		return -1;
	}
	return 0;
}

/* For a path: renames the synced output into place and syncs the directory. */
static int commit_devstate_out(struct devstate_out *o)
{
	if (!o->tmp[0])
		return 0;
	if (renameat(o->dirfd, o->tmp, o->dirfd, o->name) < 0) {
		cli_err("device state '%s': cannot rename the finished file into place: %s",
			o->spec, strerror(errno));
		return -1;
	}
	o->tmp[0] = 0;
	if (fsync(o->dirfd) < 0 && errno != EINVAL) {
		cli_err("device state '%s': syncing its directory after the rename: %s", o->spec,
			strerror(errno));
		return -1;
	}
	return 0;
}

/* Closes the output; a temporary file left over is removed by cli_remove_aborted(). */
static void close_devstate_out(struct devstate_out *o)
{
	if (o->fd >= 0)
		close(o->fd);
	if (o->dirfd >= 0)
		close(o->dirfd);
	free(o->real);
	o->fd = o->dirfd = -1;
	o->real = NULL;
}

/*
 * Refuses, before a byte is written, every pair of roles that may not share
 * a file: a destination that is the input file itself, two blocks
 * overlapping in one file, a device-state output that is the input or any
 * block's destination (--ram or --all).
 */
static int check_targets(const struct args *a, int fd, const struct snap_block *blocks,
			 const struct snap_ram_map *maps, size_t n, const struct devstate_out *dso)
{
	struct stat in, si, sj;
	bool ds = dso && dso->has_target;

	if (fstat(fd, &in) < 0)
		return 0;
	if (ds && snap_same_file(&dso->target, &in)) {
		cli_err("device state '%s' is the input file %s", dso->spec, a->file);
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		if (fstat(maps[i].fd, &si) < 0)
			continue;
		if (snap_same_file(&si, &in)) {
			cli_err("block '%s': its destination is the input file %s", blocks[i].name,
				a->file);
			return -EINVAL;
		}
		if (ds && snap_same_file(&si, &dso->target)) {
			cli_err("device state '%s' is the destination of block '%s'", dso->spec,
				blocks[i].name);
			return -EINVAL;
		}
		for (size_t j = 0; j < i; j++)
			if (fstat(maps[j].fd, &sj) == 0 && snap_same_file(&si, &sj) &&
			    maps[i].offset < maps[j].offset + maps[j].length &&
			    maps[j].offset < maps[i].offset + maps[i].length) {
				cli_err("blocks '%s' and '%s' overlap in the same destination "
					"(give each its own file or offset=)",
					blocks[j].name, blocks[i].name);
				return -EINVAL;
			}
	}
	return 0;
}

/* Opens (creating it 0700 if missing) the --all directory; -1 after the error line. */
static int open_all_dir(const char *dir)
{
	int dfd;

	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		cli_err("--all %s: %s", dir, strerror(errno));
		return -1;
	}
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		cli_err("--all %s: %s", dir, strerror(errno));
	return dfd;
}

/* Maps block b's destination; a file this created is registered for removal on failure. */
static int map_block(const struct mr_block_info *b, const struct snap_ram_spec *spec, int dirfd,
		     struct snap_ram_map *m)
{
	char ebuf[512];
	struct stat st;
	sigset_t old;
	int r;

	hold_signals(true, &old);
	r = snap_ram_map_dest(spec, dirfd, b->length, m, ebuf, sizeof(ebuf));
	if (r == 0 && m->created &&
	    (fstat(m->fd, &st) < 0 || cli_remove_on_abort(m->dirfd, m->name, &st))) {
		snprintf(ebuf, sizeof(ebuf), "%s: cannot register it for removal on failure",
			 spec->where);
		unlinkat(m->dirfd, m->name, 0);
		snap_ram_unmap(m);
		r = -ENOSPC;
	}
	hold_signals(false, &old);
	if (r)
		cli_err("block '%s': %s", b->name, ebuf);
	return r;
}

/* Every block --ram or --skip names is in the file, and the file fits: 0 or -errno. */
static int check_request(const struct args *a, const struct mr_image *img)
{
	for (size_t i = 0; i < a->n_ram; i++)
		if (!mr_image_block(img, a->ram[i].name)) {
			cli_err("%s: block '%s' is not in the file", a->file, a->ram[i].name);
			return -ENOENT;
		}
	for (size_t i = 0; i < a->n_skip; i++)
		if (!mr_image_block(img, a->skip[i])) {
			cli_err("%s: --skip: block '%s' is not in the file", a->file, a->skip[i]);
			return -ENOENT;
		}
	if (a->cc.devstate && !a->cc.devstate_raw && !img->has_devstate) {
		cli_err("%s: no snapmr device-state section (a QEMU file keeps its device state in "
			"the raw stream tail: use --device-state-raw)",
			a->file);
		return -ENOENT;
	}
	if (img->n_blocks > MAX_BLOCKS) {
		cli_err("%s: more than %d blocks", a->file, MAX_BLOCKS);
		return -E2BIG;
	}
	return 0;
}

/* Where the restore puts the file's blocks, and what it has mapped so far. */
struct plan {
	struct snap_ram_map maps[MAX_BLOCKS];
	struct snap_block blocks[MAX_BLOCKS];
	struct snap_ram_spec all_specs[MAX_BLOCKS]; /* --all destinations, by file block */
	size_t n;				    /* blocks mapped */
	int all_dirfd;
};

/*
 * Block i's destination: its --ram spec, else a file under --all DIR (a spec
 * built in p->all_specs, *ret_dirfd the directory). *ret_spec is NULL for a
 * skipped block. -errno after the error line.
 */
static int block_dest(const struct args *a, const struct mr_block_info *b, size_t i, struct plan *p,
		      const struct snap_ram_spec **ret_spec, int *ret_dirfd)
{
	char enc[1024], *path;

	*ret_dirfd = -1;
	*ret_spec = NULL;
	for (size_t j = 0; j < a->n_ram; j++)
		if (!strcmp(a->ram[j].name, b->name))
			*ret_spec = &a->ram[j];
	if (*ret_spec || skipped(a, b->name))
		return 0;
	if (!a->all_dir) {
		cli_err("%s: block '%s' has no destination (use --ram '%s=DEST', --all DIR "
			"or --skip '%s')",
			a->file, b->name, b->name, b->name);
		return -EINVAL;
	}
	encode_name(b->name, enc, sizeof(enc));
	if (asprintf(&path, "%s/%s", a->all_dir, enc) < 0) {
		cli_err("out of memory");
		return -ENOMEM;
	}
	snprintf(p->all_specs[i].name, sizeof(p->all_specs[i].name), "%s", b->name);
	p->all_specs[i].where = path;
	*ret_spec = &p->all_specs[i];
	*ret_dirfd = p->all_dirfd;
	return 0;
}

/* Maps every block that has a destination into p. 0 or -errno after the error line. */
static int map_blocks(const struct args *a, const struct mr_image *img, struct plan *p)
{
	for (size_t i = 0; i < img->n_blocks; i++) {
		const struct mr_block_info *b = &img->blocks[i];
		const struct snap_ram_spec *spec;
		struct snap_ram_map *m = &p->maps[p->n];
		int in_dir, r;

		r = block_dest(a, b, i, p, &spec, &in_dir);
		if (r < 0)
			return r;
		if (!spec)
			continue;
		r = map_block(b, spec, in_dir, m);
		if (r)
			return r < 0 ? r : -EIO;
		cli_watch_memory(b->name, m->addr, b->length);
		p->blocks[p->n++] = (struct snap_block){ .name = b->name,
							 .addr = m->addr,
							 .length = b->length,
							 .fd = m->fd,
							 .fd_off = m->offset,
							 .zeroed = m->zeroed };
	}
	return 0;
}

/* Runs the restore into p's blocks and dso, then reports. 0 or -errno after the error line. */
static int run_restore(struct args *a, int fd, int dfd, const struct snap_file *f,
		       const struct plan *p, struct devstate_out *dso)
{
	struct snap_restore_args ra = {
		.fd = fd,
		.direct_fd = dfd,
		.file = f,
		.blocks = p->blocks,
		.n_blocks = p->n,
		.devstate_fd = dso->fd,
		.devstate_raw = a->cc.devstate_raw,
	};
	struct snap_stats st;
	struct snap_err err;
	int r;

	r = snap_restore(&ra, &a->cc.opts, &st, &err);
	cli_progress_end();
	if (r) {
		cli_err("%s: %s%s", a->file, err.msg, cli_remedy(&err));
		return r < 0 ? r : -EIO;
	}
	if (dso->fd >= 0 && sync_devstate_out(dso))
		return -EIO;
	if (st.engine_fallback)
		cli_note("the preferred I/O engine cannot start here; using '%s'", st.engine);
	if (st.direct_fell_back)
		cli_note("O_DIRECT was refused for some reads; they went through the page cache");
	if (a->cc.json) {
		cli_print_stats_json(stdout, "completed", &st);
		/* Unreported statistics fail the run before the device state is renamed in. */
		r = cli_stdout_flush();
		if (r < 0)
			return r;
	}
	if (dso->fd >= 0 && commit_devstate_out(dso))
		return -EIO;
	last_stats = st;
	have_stats = true;
	return 0;
}

/* The restore: plan, map, run, report. 0 or -errno after the error line. */
static int do_restore(struct args *a, int fd, int dfd, const struct snap_file *f)
{
	const struct mr_image *img = f->img;
	_cleanup_free_ struct plan *p = calloc(1, sizeof(*p));
	struct devstate_out dso = { .fd = -1, .dirfd = -1 };
	int r;

	if (!p) {
		cli_err("out of memory");
		return -ENOMEM;
	}
	p->all_dirfd = -1;
	cli_install_fault_handler("the restore was abandoned");
	cli_install_signal_cleanup();
	r = check_request(a, img);
	if (r < 0)
		return r;
	if (a->all_dir) {
		p->all_dirfd = open_all_dir(a->all_dir);
		if (p->all_dirfd < 0)
			return -EIO;
	}
	r = map_blocks(a, img, p);
	if (!r && a->cc.devstate && open_devstate_out(a->cc.devstate, &dso))
		r = -EIO;
	if (!r)
		r = check_targets(a, fd, p->blocks, p->maps, p->n, a->cc.devstate ? &dso : NULL);
	if (!r && dso.in_place_truncate && ftruncate(dso.fd, 0) < 0) {
		r = -errno;
		cli_err("device state '%s': %s", dso.spec, strerror(-r));
	}
	if (!r)
		r = run_restore(a, fd, dfd, f, p, &dso);
	if (r)
		cli_remove_aborted();
	cli_forget_memory();
	close_devstate_out(&dso);
	for (size_t i = 0; i < p->n; i++)
		snap_ram_unmap(&p->maps[i]);
	if (p->all_dirfd >= 0)
		close(p->all_dirfd);
	for (size_t i = 0; i < img->n_blocks && i < MAX_BLOCKS; i++)
		free(p->all_specs[i].where);
	return r;
}

static void print_mismatch(void *arg, const struct snap_mismatch *m)
{
	const char *file = arg;

	printf("%s: block '%s': pages %llu-%llu (file offset 0x%llx): checksum mismatch\n", file,
	       m->block, (unsigned long long)m->first_page,
	       (unsigned long long)(m->first_page + m->npages - 1),
	       (unsigned long long)m->file_off);
}

/* Bytes after a complete file are not read: restore and verify say so and go on. */
static void note_appended(const struct args *a, const struct snap_file *f)
{
	if (f->appended)
		cli_note("%s: %llu bytes after the completion record at offset %#llx are ignored",
			 a->file, (unsigned long long)f->appended,
			 (unsigned long long)f->record_off);
}

static int do_verify(struct args *a, int fd, int dfd, const struct snap_file *f)
{
	struct snap_stats st;
	struct snap_err err;
	uint64_t bad = 0;

	if (!f->trailer) {
		if (f->trailer_status == -ENOENT && !f->marker)
			cli_err("%s: cannot verify page data: no checksums (not written by "
				"snapsave); "
				"the stream structure is valid",
				a->file);
		else if (f->trailer_status == -ENOENT)
			cli_err("%s: incomplete: the save never wrote its completion record",
				a->file);
		else
			cli_err("%s: checksum table: %s", a->file, f->trailer_msg);
		return 1;
	}
	note_appended(a, f);
	if (snap_verify(fd, dfd, f, &a->cc.opts, print_mismatch, (void *)a->file, &bad, &st,
			&err)) {
		cli_progress_end();
		cli_err("%s: %s%s", a->file, err.msg, cli_remedy(&err));
		return 1;
	}
	cli_progress_end();
	if (a->cc.json)
		cli_print_stats_json(stdout, bad ? "failed" : "completed", &st);
	last_stats = st;
	have_stats = true;
	if (bad) {
		cli_err("%s: %llu chunk%s of page data fail their checksums", a->file,
			(unsigned long long)bad, bad == 1 ? "" : "s");
		return 1;
	}
	return 0;
}

/* Decides whether a file without a usable trailer may be restored. */
static int check_integrity(const struct args *a, const struct snap_file *f)
{
	note_appended(a, f);
	if (f->trailer)
		return 0;
	if (f->trailer_status == -ENOENT && !f->marker) {
		cli_note("%s: no checksums (not written by snapsave): restoring unverified",
			 a->file);
		return 0;
	}
	if (a->force) {
		cli_note("%s: %s; restoring unverified because of --force", a->file,
			 f->trailer_status == -ENOENT ? "no completion record" : f->trailer_msg);
		return 0;
	}
	if (f->trailer_status == -ENOENT)
		cli_err("%s: incomplete: the save never wrote its completion record (crashed or "
			"unfinished); --force restores it anyway",
			a->file);
	else
		cli_err("%s: checksum table: %s; --force restores without it", a->file,
			f->trailer_msg);
	return 1;
}

int main(int argc, char **argv)
{
	struct args a = { 0 };
	struct snap_file *f = NULL;
	struct snap_err err;
	int fd = -1, dfd = -1, ret = 1, r;

	cli_prog = "snaprestore";
	cli_reserve_std_fds();
	signal(SIGPIPE, SIG_IGN);
	r = parse_args(argc, argv, &a);
	if (r < 0 || a.cc.done) {
		ret = r < 0 ? 2 : 0;
		goto free_specs;
	}
	if (a.cc.fd_socket && cli_fd_socket_start(a.cc.fd_socket))
		goto free_specs;
	if (open_input(&a, &fd, &dfd))
		goto free_specs;
	if (!a.cc.has_offset) {
		enum mr_container kind;

		if (snap_detect_offset(fd, &a.cc.offset, &kind, &err)) {
			cli_err("%s: %s%s", a.file, err.msg, cli_remedy(&err));
			goto close_fds;
		}
		if (kind == MR_CONTAINER_LIBVIRT_PARTIAL && !a.force && !a.info) {
			cli_err("%s: libvirt marks this save image as unfinished; --force restores "
				"it "
				"anyway",
				a.file);
			goto close_fds;
		}
		if (kind != MR_CONTAINER_NONE && !a.cc.json)
			cli_note("%s: libvirt save image; the stream starts at offset %llu", a.file,
				 (unsigned long long)a.cc.offset);
	}
	if (snap_inspect(fd, a.cc.offset, &f, &err)) {
		cli_err("%s: %s%s", a.file, err.msg, cli_remedy(&err));
		goto close_fds;
	}
	if (a.info) {
		if (a.cc.json)
			print_info_json(a.file, f);
		else
			print_info_text(a.file, f);
		ret = 0;
	} else if (a.verify) {
		ret = do_verify(&a, fd, dfd, f);
	} else if (!check_integrity(&a, f)) {
		a.qmp.file = a.file;
		a.qmp.cc = &a.cc;
		ret = a.qmp.qmp ? qmp_restore(&a.qmp, fd, dfd, f)
				: (do_restore(&a, fd, dfd, f) < 0 ? 1 : 0);
	}
	snap_file_free(f);
close_fds:
	if (dfd >= 0)
		close(dfd);
	if (fd >= 0)
		close(fd);
free_specs:
	for (size_t i = 0; i < a.n_ram; i++)
		snap_ram_spec_clear(&a.ram[i]);
	/* --info, --json, --verify's list, --help: what was printed must have arrived. */
	if (cli_stdout_close() && !ret)
		ret = 1;
	cli_fd_socket_finish(ret == 0, ret == 0 && have_stats ? &last_stats : NULL);
	snap_fdset_clear();
	return ret;
}
