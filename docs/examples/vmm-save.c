// SPDX-License-Identifier: MIT
/*
 * How a VMM saves with libsnapmr: guest RAM in a memfd, saved to a file with
 * snapmr_save(), then opened and verified. Build:
 *   cc vmm-save.c $(pkg-config --cflags --libs snapmr) -o vmm-save
 * Usage: vmm-save FILE (the file is left for vmm-restore).
 */
#define _GNU_SOURCE /* memfd_create */
#include <snapmr/snapmr.h>

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#define RAM_SIZE (16u << 20)

int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "vmm-example.snap";
	struct snapmr_opts opts = SNAPMR_INIT(struct snapmr_opts);
	struct snapmr_stats st = SNAPMR_INIT(struct snapmr_stats);
	struct snapmr_error err = SNAPMR_INIT(struct snapmr_error);
	struct snapmr_file_info info = SNAPMR_INIT(struct snapmr_file_info);
	struct snapmr_verify_args va = SNAPMR_INIT(struct snapmr_verify_args);
	snapmr_file *file = NULL;
	long long bad;
	int ram_fd, out_fd, in_fd;
	uint8_t *ram;

	/* Guest RAM as a VMM holds it: a shared memfd mapping. */
	ram_fd = memfd_create("guest-ram", MFD_CLOEXEC);
	if (ram_fd < 0 || ftruncate(ram_fd, RAM_SIZE) < 0)
		return 1;
	ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, ram_fd, 0);
	if (ram == MAP_FAILED)
		return 1;
	for (unsigned i = 0; i < RAM_SIZE; i += 3 * 4096) /* every third page holds data */
		memset(ram + i, (int)(i / 4096) | 1, 4096);

	opts.jobs = 2;
	struct snapmr_block blk = SNAPMR_INIT(struct snapmr_block);
	blk.name = "pc.ram";
	blk.addr = ram;
	blk.length = RAM_SIZE;
	blk.fd = ram_fd;
	struct snapmr_save_args sa = SNAPMR_INIT(struct snapmr_save_args);
	sa.direct_fd = -1;
	sa.blocks = &blk;
	sa.n_blocks = 1;
	sa.devstate = SNAPMR_DEVSTATE_NONE;
	sa.devstate_fd = -1;
	/* A real VMM writes to a temporary name and renames it after success. */
	sa.fd = out_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (out_fd < 0 || snapmr_save(&sa, &opts, &st, &err)) {
		fprintf(stderr, "save %s: %s\n", path, out_fd < 0 ? "cannot open" : err.message);
		return 1;
	}
	close(out_fd);
	printf("saved %llu data pages, skipped %llu zero pages\n",
	       (unsigned long long)st.normal_pages, (unsigned long long)st.zero_pages);

	in_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (in_fd < 0 || snapmr_file_open(in_fd, SNAPMR_OFFSET_DETECT, &file, &err)) {
		fprintf(stderr, "open %s: %s\n", path, in_fd < 0 ? "cannot open" : err.message);
		return 1;
	}
	snapmr_file_info(file, &info);
	va.fd = in_fd;
	va.direct_fd = -1;
	va.file = file;
	bad = snapmr_verify(&va, &opts, NULL, &err);
	if (info.integrity != SNAPMR_INTEGRITY_COMPLETE || bad) {
		fprintf(stderr, "verify %s: %s\n", path, bad < 0 ? err.message : "not intact");
		return 1;
	}
	printf("%s: machine %s, %zu block(s), verified with libsnapmr %s\n", path, info.machine,
	       info.n_blocks, snapmr_version());
	snapmr_file_free(file);
	close(in_fd);
	return 0;
}
