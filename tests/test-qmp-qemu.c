// SPDX-License-Identifier: MIT
/*
 * tools/common/qmp against a real QEMU: queries, run state and events, the busy and
 * not-a-monitor refusals, getfd with a pipe. Exits 77 (SKIP) without QEMU.
 */
#include "qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <json-c/json.h>

#include <setjmp.h>
#include <cmocka.h>

#define SKIP 77
#define T    10000 /* ms */

struct vm {
	char dir[64];
	char sock[96];
	char shm[96];
	char log[96];
	pid_t pid;
	struct qmp *q;
};

static const char *qemu_bin(void)
{
	const char *q = getenv("QEMU");

	return q && *q ? q : "qemu-system-x86_64";
}

/* Whether qemu_bin() names an executable, directly or in PATH. */
static bool have_qemu(void)
{
	const char *bin = qemu_bin();
	char *path, *tok, *save = NULL, buf[4096];
	bool found = false;

	if (strchr(bin, '/'))
		return access(bin, X_OK) == 0;
	path = strdup(getenv("PATH") ? getenv("PATH") : "/usr/bin:/bin");
	if (!path)
		return false;
	for (tok = strtok_r(path, ":", &save); tok && !found; tok = strtok_r(NULL, ":", &save)) {
		snprintf(buf, sizeof(buf), "%s/%s", tok, bin);
		found = access(buf, X_OK) == 0;
	}
	free(path);
	return found;
}

static void start_qemu(struct vm *vm)
{
	char backend[256];
	const char *argv[] = {
		qemu_bin(),
		"-S",
		"-nodefaults",
		"-display",
		"none",
		"-machine",
		"q35,memory-backend=ram0",
		"-accel",
		"kvm",
		"-accel",
		"tcg",
		"-m",
		"64M,slots=2,maxmem=128M",
		"-object",
		backend,
		"-object",
		"memory-backend-memfd,id=ram1,size=16M,share=on",
		"-device",
		"pc-dimm,id=dimm0,memdev=ram1",
		"-qmp",
		NULL,
		NULL,
	};
	char qmparg[160];
	int logfd;

	snprintf(backend, sizeof(backend),
		 "memory-backend-file,id=ram0,size=64M,mem-path=%s,share=on", vm->shm);
	snprintf(qmparg, sizeof(qmparg), "unix:%s,server=on,wait=off", vm->sock);
	argv[sizeof(argv) / sizeof(argv[0]) - 2] = qmparg;
	logfd = open(vm->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(logfd >= 0);
	vm->pid = fork();
	assert_true(vm->pid >= 0);
	if (vm->pid == 0) {
		/* QEMU must not outlive a killed test. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(logfd, STDOUT_FILENO);
		dup2(logfd, STDERR_FILENO);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(logfd);
}

static void print_log(const struct vm *vm)
{
	char buf[4096];
	int fd = open(vm->log, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return;
	fprintf(stderr, "--- QEMU log ---\n");
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, (size_t)n, stderr);
	close(fd);
}

/* Connects, retrying while QEMU creates its socket. */
static int connect_vm(struct vm *vm, char *err, size_t errlen)
{
	for (int i = 0; i < 600; i++) {
		int r = qmp_connect(vm->sock, T, &vm->q, err, errlen);

		if (r != -ENOENT && r != -ECONNREFUSED)
			return r;
		if (waitpid(vm->pid, NULL, WNOHANG) == vm->pid) {
			vm->pid = -1;
			snprintf(err, errlen, "QEMU exited before its socket appeared");
			return -ECHILD;
		}
		usleep(50000);
	}
	return -ETIMEDOUT;
}

static int setup(void **state)
{
	struct vm *vm = calloc(1, sizeof(*vm));
	char err[512];
	int r;

	if (!vm)
		return -1;
	strcpy(vm->dir, "/tmp/snapmr-qmp-qemu-XXXXXX");
	if (!mkdtemp(vm->dir))
		return -1;
	snprintf(vm->sock, sizeof(vm->sock), "%s/qmp.sock", vm->dir);
	snprintf(vm->log, sizeof(vm->log), "%s/qemu.log", vm->dir);
	snprintf(vm->shm, sizeof(vm->shm), "/dev/shm/snapmr-qmp-%d-ram0", (int)getpid());
	start_qemu(vm);
	*state = vm;
	r = connect_vm(vm, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "cannot connect to QEMU: %s\n", err);
		print_log(vm);
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	struct vm *vm = *state;
	char path[128];

	if (!vm)
		return 0;
	qmp_close(vm->q);
	if (vm->pid > 0) {
		kill(vm->pid, SIGKILL);
		waitpid(vm->pid, NULL, 0);
	}
	unlink(vm->shm);
	unlink(vm->sock);
	unlink(vm->log);
	snprintf(path, sizeof(path), "%s/mute.sock", vm->dir);
	unlink(path);
	rmdir(vm->dir);
	free(vm);
	return 0;
}

static void test_queries(void **state)
{
	struct vm *vm = *state;
	struct qmp_version v;
	struct qmp_status st;
	struct qmp_migration m;
	struct qmp_memdev *d = NULL;
	size_t n = 0;
	bool present = false, on = true, seen0 = false, seen1 = false;
	char err[512], *mt = NULL;

	qmp_version(vm->q, &v);
	assert_true(v.major >= 7);
	assert_int_equal(qmp_peer_pid(vm->q), vm->pid);
	assert_int_equal(qmp_query_status(vm->q, T, &st, err, sizeof(err)), 0);
	assert_int_equal(st.state, QMP_VM_OTHER);
	assert_string_equal(st.status, "prelaunch");
	assert_int_equal(qmp_query_machine_type(vm->q, T, &mt, err, sizeof(err)), 0);
	assert_true(!strncmp(mt, "pc-q35-", 7));
	free(mt);
	assert_int_equal(
		qmp_query_capability(vm->q, "x-ignore-shared", T, &present, &on, err, sizeof(err)),
		0);
	assert_true(present);
	assert_false(on);
	assert_int_equal(qmp_query_capability(vm->q, "no-such-capability", T, &present, &on, err,
					      sizeof(err)),
			 0);
	assert_false(present);
	assert_int_equal(qmp_query_migrate(vm->q, T, &m, err, sizeof(err)), 0);
	assert_string_equal(m.status, "none");
	assert_false(m.active);
	if (qmp_query_memdevs(vm->q, T, &d, &n, err, sizeof(err)) < 0)
		fail_msg("%s", err);
	for (size_t i = 0; i < n; i++) {
		if (d[i].id && !strcmp(d[i].id, "ram0")) {
			seen0 = true;
			assert_string_equal(d[i].type, "memory-backend-file");
			assert_string_equal(d[i].mem_path, vm->shm);
			assert_int_equal(d[i].size, 64 << 20);
			assert_true(d[i].share);
		} else if (d[i].id && !strcmp(d[i].id, "ram1")) {
			seen1 = true;
			assert_string_equal(d[i].type, "memory-backend-memfd");
			assert_null(d[i].mem_path);
			assert_int_equal(d[i].size, 16 << 20);
			assert_true(d[i].share);
		}
	}
	qmp_memdevs_free(d, n);
	assert_true(seen0 && seen1);
}

static void test_run_state_and_events(void **state)
{
	struct vm *vm = *state;
	struct qmp_status st;
	char err[512];

	assert_int_equal(qmp_execute(vm->q, "cont", NULL, T, NULL, err, sizeof(err)), 0);
	assert_int_equal(qmp_wait_event(vm->q, "RESUME", NULL, NULL, T, NULL, err, sizeof(err)), 0);
	assert_int_equal(qmp_query_status(vm->q, T, &st, err, sizeof(err)), 0);
	assert_int_equal(st.state, QMP_VM_RUNNING);
	assert_int_equal(qmp_execute(vm->q, "stop", NULL, T, NULL, err, sizeof(err)), 0);
	assert_int_equal(qmp_wait_event(vm->q, "STOP", NULL, NULL, T, NULL, err, sizeof(err)), 0);
	assert_int_equal(qmp_query_status(vm->q, T, &st, err, sizeof(err)), 0);
	assert_int_equal(st.state, QMP_VM_PAUSED);
	assert_string_equal(st.status, "paused");
	/* A QEMU error comes back with its desc. */
	assert_int_equal(qmp_execute(vm->q, "x-no-such-command", NULL, T, NULL, err, sizeof(err)),
			 -ENOSYS);
	assert_non_null(strstr(err, "x-no-such-command"));
}

static void test_busy(void **state)
{
	struct vm *vm = *state;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct qmp *q2 = NULL;
	struct qmp_status st;
	char err[512];
	int s;

	/* QEMU serves one client: later ones connect but hear nothing. Repeated tries
	 * fill its listen queue; connect must still return at once. */
	for (int i = 0; i < 4; i++) {
		assert_int_equal(qmp_connect(vm->sock, 300, &q2, err, sizeof(err)), -EBUSY);
		assert_non_null(strstr(err, "busy"));
	}
	assert_null(q2);
	assert_int_equal(qmp_query_status(vm->q, T, &st, err, sizeof(err)), 0);

	/* A UNIX socket that is no monitor at all. */
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/mute.sock", vm->dir);
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(s >= 0);
	assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(s, 4), 0);
	assert_int_equal(qmp_connect(sa.sun_path, 300, &q2, err, sizeof(err)), -EBUSY);
	assert_non_null(strstr(err, "not a QMP monitor"));
	close(s);
}

static bool hung_up(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, 0) == 1 && (p.revents & POLLHUP);
}

static void test_getfd(void **state)
{
	struct vm *vm = *state;
	struct json_object *args = json_object_new_object(), *ret = NULL;
	char err[512];
	int p[2];

	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	json_object_object_add(args, "fdname", json_object_new_string("snapmr"));
	assert_int_equal(qmp_execute_fd(vm->q, "getfd", args, p[1], T, &ret, err, sizeof(err)), 0);
	assert_true(json_object_is_type(ret, json_type_object));
	assert_int_equal(json_object_object_length(ret), 0);
	json_object_put(ret);
	/* QEMU holds the write end now: closing ours is no hang-up. */
	close(p[1]);
	assert_false(hung_up(p[0]));
	assert_int_equal(qmp_execute(vm->q, "closefd", args, T, NULL, err, sizeof(err)), 0);
	assert_true(hung_up(p[0]));
	assert_int_equal(qmp_execute(vm->q, "closefd", args, T, NULL, err, sizeof(err)), -EIO);
	assert_non_null(strstr(err, "closefd: "));
	/* getfd without a descriptor is refused by QEMU, not by us. */
	assert_int_equal(qmp_execute(vm->q, "getfd", args, T, NULL, err, sizeof(err)), -EIO);
	json_object_put(args);
	close(p[0]);
}

static void test_quit(void **state)
{
	struct vm *vm = *state;
	char err[512];
	int status;

	assert_int_equal(qmp_execute(vm->q, "quit", NULL, T, NULL, err, sizeof(err)), 0);
	assert_int_equal(qmp_wait_event(vm->q, "SHUTDOWN", NULL, NULL, T, NULL, err, sizeof(err)),
			 0);
	assert_int_equal(waitpid(vm->pid, &status, 0), vm->pid);
	vm->pid = -1;
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_int_equal(qmp_execute(vm->q, "query-status", NULL, T, NULL, err, sizeof(err)),
			 -ECONNRESET);
	assert_non_null(strstr(err, "QEMU closed the connection"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_queries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_run_state_and_events, setup, teardown),
		cmocka_unit_test_setup_teardown(test_busy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_getfd, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quit, setup, teardown),
	};

	if (!have_qemu()) {
		printf("SKIP: %s not found (set QEMU to its path)\n", qemu_bin());
		return SKIP;
	}
	return cmocka_run_group_tests_name("qmp-qemu", tests, NULL, NULL);
}
