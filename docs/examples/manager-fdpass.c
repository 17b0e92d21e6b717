// SPDX-License-Identifier: MIT
/*
 * A manager that opens the output itself and hands snapsave descriptors only,
 * as libvirt does for QEMU: a buffered and an O_DIRECT descriptor of the same
 * file go over a socketpair with SCM_RIGHTS (docs/fd-passing.md, section 3);
 * snapsave opens no path for its output. Build:
 *   cc manager-fdpass.c $(pkg-config --cflags snapmr) -o manager-fdpass
 * Usage: manager-fdpass OUTPUT NAME=RAMFILE (snapsave on PATH)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* One line, one sendmsg, the descriptor attached (fd < 0: none). */
static int send_fd_line(int sock, const char *line, int fd)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct iovec iov = { .iov_base = (void *)line, .iov_len = strlen(line) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	memset(&ctl, 0, sizeof(ctl));
	if (fd >= 0) {
		mh.msg_control = ctl.buf;
		mh.msg_controllen = sizeof(ctl.buf);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	return sendmsg(sock, &mh, MSG_NOSIGNAL) == (ssize_t)iov.iov_len ? 0 : -1;
}

/* Reads one reply line; 0 if it starts with "ok". */
static int expect_ok(FILE *in)
{
	char line[4096];

	if (!fgets(line, sizeof(line), in))
		return -1;
	if (strncmp(line, "ok", 2)) {
		fprintf(stderr, "snapsave: %s", line);
		return -1;
	}
	return 0;
}

static int save_vm(const char *path, const char *ram_arg)
{
	int sv[2], buf, direct, status = 1;
	char line[65536];
	pid_t pid;
	FILE *in;

	buf = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	/* A separate open(): a dup would share, and toggle, the buffered one's flags. */
	direct = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC);
	if (buf < 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		/* The child's end becomes fd 3, inherited (dup2 clears close-on-exec). */
		dup2(sv[1], 3);
		execlp("snapsave", "snapsave", "--fd-socket", "fd:3", "-o", "/dev/fdset/1", "--ram",
		       ram_arg, "--json", (char *)NULL);
		_exit(127);
	}
	close(sv[1]);
	in = fdopen(sv[0], "r");
	if (!in)
		return -1;
	if (send_fd_line(sv[0], "add-fd set=1 opaque=out-buffered\n", buf) || expect_ok(in))
		goto out;
	/* No O_DIRECT here (tmpfs, NFSv3, FUSE): the tool saves buffered with --direct auto. */
	if (direct >= 0 &&
	    (send_fd_line(sv[0], "add-fd set=1 opaque=out-direct\n", direct) || expect_ok(in)))
		goto out;
	if (send_fd_line(sv[0], "start\n", -1) || expect_ok(in))
		goto out;
	close(buf); /* the tool holds its own references now */
	if (direct >= 0)
		close(direct);
	buf = direct = -1;
	if (fgets(line, sizeof(line), in))
		printf("result: %s", line); /* the --json statistics, or the error */
out:
	if (buf >= 0)
		close(buf);
	if (direct >= 0)
		close(direct);
	fclose(in);
	if (waitpid(pid, &status, 0) < 0)
		return -1;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: manager-fdpass OUTPUT NAME=RAMFILE\n");
		return 2;
	}
	if (save_vm(argv[1], argv[2])) {
		fprintf(stderr, "manager-fdpass: the save into %s failed\n", argv[1]);
		return 1;
	}
	return 0;
}
