// SPDX-License-Identifier: MIT
/*
 * How a VMM uses libsnapmr directly: guest RAM in a memfd, saved to a file
 * with snap_save(), checked with snap_inspect() and snap_verify(), restored
 * into a second memfd with snap_restore(). Build:
 *   cc vmm-save.c $(pkg-config --cflags --libs snapmr) -o vmm-save
 */
#include <snapmr.h>

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#define RAM_SIZE (16u << 20)

static void *guest_ram(const char *name, int *ret_fd)
{
	int fd = memfd_create(name, MFD_CLOEXEC);
	void *p;

	if (fd < 0 || ftruncate(fd, RAM_SIZE) < 0)
		return NULL;
	p = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return NULL;
	*ret_fd = fd;
	return p;
}

int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "vmm-example.snap";
	struct snap_opts opts = { .jobs = 2, .direct = SNAP_DIRECT_AUTO };
	struct snap_file *file = NULL;
	struct snap_stats st;
	struct snap_err err;
	uint64_t bad = 0;
	int ram_fd, out_fd, in_fd, dst_fd;
	uint8_t *ram, *dst;

	ram = guest_ram("guest-ram", &ram_fd);
	dst = guest_ram("restored-ram", &dst_fd);
	if (!ram || !dst)
		return 1;
	for (unsigned i = 0; i < RAM_SIZE; i += 3 * 4096) /* every third page holds data */
		memset(ram + i, (int)(i / 4096) | 1, 4096);

	out_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	struct snap_block blk = { .name = "pc.ram", .addr = ram, .length = RAM_SIZE, .fd = ram_fd };
	struct snap_save_args sa = { .fd = out_fd,
				     .direct_fd = -1,
				     .blocks = &blk,
				     .n_blocks = 1,
				     .devstate = SNAP_DEVSTATE_NONE };
	if (out_fd < 0 || snap_save(&sa, &opts, &st, &err)) {
		fprintf(stderr, "save: %s\n", out_fd < 0 ? "cannot open" : err.msg);
		return 1;
	}
	close(out_fd);
	printf("saved %llu data pages, skipped %llu zero pages\n",
	       (unsigned long long)st.normal_pages, (unsigned long long)st.zero_pages);

	in_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (in_fd < 0 || snap_inspect(in_fd, 0, &file, &err) ||
	    snap_verify(in_fd, -1, file, &opts, NULL, NULL, &bad, NULL, &err) || bad) {
		fprintf(stderr, "verify: %s\n", bad ? "checksum mismatch" : err.msg);
		return 1;
	}
	struct snap_block dblk = {
		.name = "pc.ram", .addr = dst, .length = RAM_SIZE, .fd = dst_fd, .zeroed = true
	};
	struct snap_restore_args ra = { .fd = in_fd,
					.direct_fd = -1,
					.file = file,
					.blocks = &dblk,
					.n_blocks = 1,
					.devstate_fd = -1 };
	if (snap_restore(&ra, &opts, &st, &err)) {
		fprintf(stderr, "restore: %s\n", err.msg);
		return 1;
	}
	snap_file_free(file);
	close(in_fd);
	if (memcmp(ram, dst, RAM_SIZE)) {
		fprintf(stderr, "restored memory differs\n");
		return 1;
	}
	printf("restored and verified with libsnapmr %s\n", snap_version());
	unlink(path);
	return 0;
}
