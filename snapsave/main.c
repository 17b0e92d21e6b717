// SPDX-License-Identifier: MIT
/*
 * snapsave: save guest RAM blocks and device state into one QEMU mapped-ram
 * file. Parses arguments, maps the blocks, calls snap_save(), reports.
 */
#include "cli.h"
#include "config.h"
#include "engine.h"
#include "fdopen.h"
#include "fdset.h"
#include "outfile.h"
#include "qmp-save.h"
#include "ramsrc.h"
#include "snapmr.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#define MAX_BLOCKS CLI_MAX_BLOCKS

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: snapsave -o FILE --ram NAME=SOURCE[,size=N][,offset=N]... [options]\n"
		"Save guest RAM and device state into a QEMU mapped-ram migration file.\n"
		"\n"
		"  -o, --output FILE         output file (written to a temporary name, then "
		"renamed);\n"
		"                            fd:N or /dev/fdset/N write to a descriptor in place\n"
		"  -r, --ram NAME=SOURCE     a RAM block: NAME is its RAMBlock id (e.g. pc.ram, "
		"ram0),\n"
		"                            SOURCE a file (/dev/shm, hugetlbfs, any mmap-able "
		"file)\n"
		"                            or fd:N; size=N and offset=N select part of it\n"
		"  -d, --device-state SRC    opaque device state from a file, fd:N or - (stdin)\n"
		"      --device-state-raw SRC  a raw QEMU stream tail (from snaprestore\n"
		"                            --device-state-raw) appended verbatim, so QEMU loads "
		"it\n"
		"  -m, --machine TYPE        machine type in the stream (default pc-q35-10.0)\n"
		"      --qmp SOCKET|fd:N     save the VM of this QMP monitor (no --ram): "
		"--resume\n"
		"                            lets it run on after the save, --quit ends QEMU\n"
		"      --add-fd fd=F,set=N[,opaque=S]  put inherited descriptor F into fd set N;\n"
		"                            /dev/fdset/N then works wherever a path does\n"
		"      --fd-socket PATH|fd:N receive descriptors over a UNIX socket before "
		"starting\n"
		"                            (see docs/fd-passing.md); a JSON result line is sent "
		"back\n"
		"      --offset N            start the stream at byte N, keeping the file's first "
		"N bytes\n"
		"  -j, --jobs N              worker threads (default: 2 per CPU, max 16)\n"
		"      --direct auto|on|off  O_DIRECT for page data (default auto)\n"
		"      --io ENGINE           I/O engine: threads, uring, aio (default: best "
		"available)\n"
		"      --queue-depth N       requests in flight per worker (async engines)\n"
		"      --max-io-size SIZE    bytes per request (default 1M)\n"
		"      --progress[=json]     progress on stderr (json: one object per line)\n"
		"      --json                print statistics as JSON on stdout\n"
		"      --no-sync             do not fdatasync (unsafe; for tests on tmpfs)\n"
		"  -h, --help                show this help\n"
		"  -V, --version             show the version\n"
		"\n"
		"Sizes accept K, M, G, T suffixes (powers of 1024) and 0x hex.\n"
		"Exit status: 0 on success, 1 on any failure, 2 on bad usage.\n");
}

enum {
	OPT_NOSYNC = CLI_OPT_LOCAL,
	OPT_QMP,
	OPT_RESUME,
	OPT_QUIT,
};

static const struct option long_opts[] = {
	{ "output", required_argument, NULL, 'o' },
	{ "ram", required_argument, NULL, 'r' },
	{ "machine", required_argument, NULL, 'm' },
	{ "no-sync", no_argument, NULL, OPT_NOSYNC },
	{ "qmp", required_argument, NULL, OPT_QMP },
	{ "resume", no_argument, NULL, OPT_RESUME },
	{ "quit", no_argument, NULL, OPT_QUIT },
	CLI_COMMON_LONG_OPTS,
	{ NULL, 0, NULL, 0 },
};

struct args {
	struct cli_common cc;
	const char *output;
	struct snap_ram_spec ram[MAX_BLOCKS];
	size_t n_ram;
	const char *machine;
	struct qmp_save_args qmp; /* --qmp and its options */
};

static int parse_args(int argc, char **argv, struct args *a)
{
	int c;

	opterr = 0; /* getopt would name argv[0] and take two lines */
	while ((c = getopt_long(argc, argv, ":o:r:d:m:j:hV", long_opts, NULL)) != -1) {
		int k = cli_common_option(c, argv, &a->cc, usage);

		if (k < 0)
			return k;
		if (a->cc.done)
			return 0;
		if (k)
			continue;
		switch (c) {
		case 'o': a->output = optarg; break;
		case 'r':
			k = cli_add_ram(a->ram, &a->n_ram, optarg);
			if (k < 0)
				return k;
			break;
		case 'm':
			if (!*optarg || strlen(optarg) > 255) {
				cli_err("--machine: name must have 1 to 255 bytes");
				return -EINVAL;
			}
			a->machine = optarg;
			break;
		case OPT_NOSYNC: a->cc.opts.no_sync = true; break;
		case OPT_QMP: a->qmp.qmp = optarg; break;
		case OPT_RESUME: a->qmp.resume = true; break;
		case OPT_QUIT: a->qmp.quit = true; break;
		default: cli_err("option '%s' is not handled", argv[optind - 1]); return -EINVAL;
		}
	}
	if (optind < argc) {
		cli_err("unexpected argument '%s'", argv[optind]);
		return -EINVAL;
	}
	if (!a->output) {
		cli_err("no output file (-o FILE)");
		return -EINVAL;
	}
	if ((a->qmp.qmp || a->qmp.resume || a->qmp.quit) &&
	    qmp_save_check_args(&a->qmp, a->output, a->n_ram, a->machine, &a->cc))
		return -EINVAL;
	if (a->qmp.qmp)
		return cli_common_finish(&a->cc);
	if (!a->n_ram) {
		cli_err("no RAM blocks (--ram NAME=SOURCE)");
		return -EINVAL;
	}
	return cli_common_finish(&a->cc);
}

static int open_devstate(const char *spec)
{
	char ebuf[256];
	int fd = -1;

	if (!strcmp(spec, "-"))
		return fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3);
	snap_io_open(spec, O_RDONLY, 0, &fd, ebuf, sizeof(ebuf));
	if (fd < 0)
		cli_err("device state '%s': %s", spec, ebuf);
	return fd;
}

/*
 * The output must not be one of the RAM sources: a path would be renamed
 * over the guest's memory file, a descriptor overwritten while it is read.
 */
static bool output_is_source(const struct args *a, const struct snap_outfile *out,
			     const struct snap_ram_map *maps)
{
	struct stat so, ss;

	/* A path is replaced, so what counts is the file it names now. */
	if (snap_io_is_fd_spec(a->output) ? fstat(out->fd, &so) < 0 : stat(a->output, &so) < 0)
		return false;
	for (size_t i = 0; i < a->n_ram; i++)
		if (fstat(maps[i].fd, &ss) == 0 && snap_same_file(&ss, &so)) {
			cli_err("%s: the output is the source of block '%s'", a->output,
				a->ram[i].name);
			return true;
		}
	return false;
}

/* Maps every --ram source into maps and blocks. 0 or -errno after the error line. */
static int map_sources(const struct args *a, struct snap_ram_map *maps, struct snap_block *blocks)
{
	char ebuf[512];
	int r;

	for (size_t i = 0; i < a->n_ram; i++) {
		r = snap_ram_map_source(&a->ram[i], &maps[i], ebuf, sizeof(ebuf));
		if (r) {
			cli_err("block '%s': %s", a->ram[i].name, ebuf);
			return r < 0 ? r : -EIO;
		}
		cli_watch_memory(a->ram[i].name, maps[i].addr, maps[i].length);
		blocks[i] = (struct snap_block){ .name = a->ram[i].name,
						 .addr = maps[i].addr,
						 .length = maps[i].length,
						 .fd = maps[i].fd,
						 .fd_off = maps[i].offset };
	}
	return 0;
}

/* Saves into out and commits it, then reports. 0 or -errno after the error line. */
static int run_save(const struct args *a, struct snap_outfile *out, struct snap_save_args *sa,
		    struct snap_stats *st)
{
	struct snap_err err;
	char ebuf[512];
	int r;

	r = snap_save(sa, &a->cc.opts, st, &err);
	if (!r)
		r = snap_outfile_commit(out, ebuf, sizeof(ebuf));
	else
		snprintf(ebuf, sizeof(ebuf), "%s%s", err.msg, cli_remedy(&err));
	cli_progress_end();
	if (r)
		cli_err("%s: %s", a->output, ebuf);
	/* After a commit this only closes the descriptors. */
	snap_outfile_abort(out);
	if (r)
		return r < 0 ? r : -EIO;
	if (st->engine_fallback)
		cli_note("the preferred I/O engine cannot start here; using '%s'", st->engine);
	if (st->direct_fell_back)
		cli_note("O_DIRECT was refused for some writes; they went through the page cache");
	if (a->cc.json)
		cli_print_stats_json(stdout, "completed", st);
	return 0;
}

/* The output, checked against the sources; notes for what it found. 0 or -errno, reported. */
static int open_output(const struct args *a, struct snap_outfile *out,
		       const struct snap_ram_map *maps)
{
	char ebuf[512];
	int r;

	r = snap_outfile_open(out, a->output, a->cc.opts.direct, a->cc.offset, ebuf, sizeof(ebuf));
	if (r) {
		cli_err("%s: %s", a->output, ebuf);
		return r;
	}
	for (size_t i = 0; i < out->n_reaped; i++)
		cli_note("%s: removed '%s', a temporary file left in the output directory by a "
			 "save whose process is gone",
			 a->output, out->reaped[i]);
	if (output_is_source(a, out, maps)) {
		snap_outfile_abort(out);
		return -EINVAL;
	}
	if (out->direct_refused && strncmp(a->output, "fd:", 3))
		cli_note("%s: O_DIRECT unavailable (%s); writing buffered", a->output,
			 out->direct_err);
	return 0;
}

int main(int argc, char **argv)
{
	struct args a = { 0 };
	struct snap_ram_map maps[MAX_BLOCKS] = { 0 };
	struct snap_block blocks[MAX_BLOCKS];
	struct snap_outfile out;
	struct snap_save_args sa = { 0 };
	struct snap_stats st;
	int devstate_fd = -1, ret = 1, r;

	cli_prog = "snapsave";
	cli_reserve_std_fds();
	r = parse_args(argc, argv, &a);
	if (r < 0 || a.cc.done) {
		ret = r < 0 ? 2 : 0;
		goto free_specs;
	}
	if (a.cc.fd_socket && cli_fd_socket_start(a.cc.fd_socket))
		goto free_specs;
	if (a.qmp.qmp) {
		ret = qmp_save(&a.qmp);
		goto free_specs;
	}

	cli_install_fault_handler("the save was abandoned");
	if (map_sources(&a, maps, blocks))
		goto unmap;
	if (a.cc.devstate) {
		devstate_fd = open_devstate(a.cc.devstate);
		if (devstate_fd < 0)
			goto unmap;
	}

	cli_install_signal_cleanup();
	if (open_output(&a, &out, maps))
		goto close_devstate;

	sa = (struct snap_save_args){
		.fd = out.fd,
		.direct_fd = out.direct_fd,
		.offset = a.cc.offset,
		.machine = a.machine,
		.blocks = blocks,
		.n_blocks = a.n_ram,
		.devstate = !a.cc.devstate	? SNAP_DEVSTATE_NONE
			    : a.cc.devstate_raw ? SNAP_DEVSTATE_RAW
						: SNAP_DEVSTATE_SECTION,
		.devstate_fd = devstate_fd,
	};
	if (run_save(&a, &out, &sa, &st) == 0)
		ret = 0;

close_devstate:
	if (devstate_fd >= 0)
		close(devstate_fd);
unmap:
	cli_forget_memory();
	for (size_t i = 0; i < a.n_ram; i++)
		snap_ram_unmap(&maps[i]);
free_specs:
	for (size_t i = 0; i < a.n_ram; i++)
		snap_ram_spec_clear(&a.ram[i]);
	/* --json and --help: what was printed must have arrived (the file is in place by then). */
	if (cli_stdout_close() && !ret)
		ret = 1;
	cli_fd_socket_finish(ret == 0, ret == 0 ? &st : NULL);
	snap_fdset_clear();
	return ret;
}
