// SPDX-License-Identifier: MIT
/*
 * Sequential write (or read) throughput of one engine from memory: each job
 * has its own engine and a contiguous share of the file, as a save would.
 */
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct job {
	const struct snap_io_ops *ops;
	unsigned depth;
	int fd, alt_fd;
	bool write;
	uint8_t *mem;
	uint64_t off, len;
	size_t bs;
	pthread_barrier_t *start;
	bool fell_back;
	int err;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *run_job(void *arg)
{
	struct job *j = arg;
	struct snap_io_engine *e;
	int r;

	r = snap_io_engine_new(j->ops, j->depth, NULL, NULL, &e);
	pthread_barrier_wait(j->start);
	if (r < 0) {
		j->err = r;
		return NULL;
	}
	for (uint64_t o = j->off; o < j->off + j->len && r == 0; o += j->bs) {
		size_t n = j->off + j->len - o < j->bs ? (size_t)(j->off + j->len - o) : j->bs;

		r = snap_io_rw(e, j->fd, j->alt_fd, j->write, j->mem + o, o, n, NULL);
	}
	r = snap_io_drain(e);
	j->err = r;
	j->fell_back = e->fell_back;
	snap_io_engine_free(e);
	return NULL;
}

static int usage(void)
{
	fprintf(stderr, "usage: engine-bench [-r] [-D] [-F|-T] [-S] -e ENGINE -d DEPTH -j JOBS "
			"-b BYTES -s BYTES FILE\n"
			"  -r read instead of write    -D O_DIRECT (buffered alt fd kept)\n"
			"  -F fallocate first          -T ftruncate to size first\n"
			"  -S fdatasync at the end (timed)\n");
	return 2;
}

int main(int argc, char **argv)
{
	const char *engine = "threads";
	unsigned depth = 16, jobs = 1;
	uint64_t size = 1ull << 30;
	size_t bs = 1 << 20;
	bool write = true, direct = false, falloc = false, trunc = false, sync = false;
	struct job *job;
	pthread_t *tid;
	pthread_barrier_t start;
	uint8_t *mem;
	int fd, dfd = -1, opt, err = 0;
	bool fell_back = false;
	double t0, t1;

	while ((opt = getopt(argc, argv, "rDFTSe:d:j:b:s:")) != -1) {
		switch (opt) {
		case 'r': write = false; break;
		case 'D': direct = true; break;
		case 'F': falloc = true; break;
		case 'T': trunc = true; break;
		case 'S': sync = true; break;
		case 'e': engine = optarg; break;
		case 'd': depth = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'j': jobs = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'b': bs = strtoull(optarg, NULL, 0); break;
		case 's': size = strtoull(optarg, NULL, 0); break;
		default: return usage();
		}
	}
	if (optind + 1 != argc || !depth || !jobs || !bs || bs % 4096)
		return usage();
	if (!snap_io_engine_find(engine)) {
		fprintf(stderr, "engine-bench: no engine \"%s\"\n", engine);
		return 1;
	}
	fd = open(argv[optind], O_RDWR | O_CREAT | O_CLOEXEC | (write ? O_TRUNC : 0), 0644);
	if (fd < 0 || (direct && (dfd = open(argv[optind], O_RDWR | O_DIRECT | O_CLOEXEC)) < 0)) {
		fprintf(stderr, "engine-bench: %s: %s\n", argv[optind], strerror(errno));
		return 1;
	}
	if (falloc && (errno = posix_fallocate(fd, 0, (off_t)size))) {
		fprintf(stderr, "engine-bench: fallocate: %s\n", strerror(errno));
		return 1;
	}
	if (trunc && ftruncate(fd, (off_t)size) < 0) {
		fprintf(stderr, "engine-bench: ftruncate: %s\n", strerror(errno));
		return 1;
	}
	if (posix_memalign((void **)&mem, 4096, size)) {
		fprintf(stderr, "engine-bench: out of memory\n");
		return 1;
	}
	/* Touch every page now so page faults are not timed. */
	for (uint64_t i = 0; i < size; i += 4096)
		memset(mem + i, (int)(i >> 12), 4096);

	job = calloc(jobs, sizeof(*job));
	tid = calloc(jobs, sizeof(*tid));
	if (!job || !tid)
		return 1;
	pthread_barrier_init(&start, NULL, jobs + 1);
	for (unsigned i = 0; i < jobs; i++) {
		/* Shares on bs boundaries, so requests stay aligned. */
		uint64_t per = (size / jobs + bs - 1) / bs * bs;

		job[i] = (struct job){
			.ops = snap_io_engine_find(engine),
			.depth = depth,
			.fd = direct ? dfd : fd,
			.alt_fd = direct ? fd : -1,
			.write = write,
			.mem = mem,
			.off = per * i < size ? per * i : size,
			.bs = bs,
			.start = &start,
		};
		job[i].len = per * (i + 1) < size ? per : size - job[i].off;
		pthread_create(&tid[i], NULL, run_job, &job[i]);
	}
	pthread_barrier_wait(&start);
	t0 = now();
	for (unsigned i = 0; i < jobs; i++) {
		pthread_join(tid[i], NULL);
		if (job[i].err && !err)
			err = job[i].err;
		fell_back |= job[i].fell_back;
	}
	if (sync && write && fdatasync(fd) < 0 && !err)
		err = -errno;
	t1 = now();
	if (err) {
		fprintf(stderr, "engine-bench: %s\n", strerror(-err));
		return 1;
	}
	printf("%-8s %-5s %-8s depth %3u jobs %u bs %7zu: %8.1f MiB/s  %.3f s%s\n", engine,
	       write ? "write" : "read", direct ? "direct" : "buffered", depth, jobs, bs,
	       (double)size / (1 << 20) / (t1 - t0), t1 - t0,
	       fell_back ? " (fell back to buffered)" : "");
	return 0;
}
