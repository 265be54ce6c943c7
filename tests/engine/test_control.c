/* SPDX-License-Identifier: MIT */
/* The control socket server (src/engine/control.c) under attack: requests
 * of every wrong shape, a socket path that is not ours, too many and idle
 * clients, another user; plus the memory dump's file safety. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <json-c/json.h>
#include <pmigrate/control.h>
#include "engine/net.h"
#include "fakevm.h"

struct fixture {
	char dir[64], path[96];
	struct fakevm *vm;
	struct pm_control *ctl;
	int quits;
};

static void on_quit(void *opaque)
{
	struct fixture *f = opaque;
	__atomic_add_fetch(&f->quits, 1, __ATOMIC_SEQ_CST);
}

static const struct pm_control_ops ops = { .quit = on_quit };

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	uint64_t np = 64, gpa = 0;
	struct pm_err e = { 0 };

	snprintf(f->dir, sizeof(f->dir), "/tmp/pm-ctl-test.XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->path, sizeof(f->path), "%s/vm.sock", f->dir);
	f->vm = fakevm_new("ctl", 1, &np, &gpa);
	if (pm_control_start(&f->ctl, f->path, &f->vm->be, &ops, f, "running", &e)) {
		fprintf(stderr, "%s\n", e.msg);
		return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[160];

	pm_control_stop(f->ctl);
	fakevm_free(f->vm);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	if (system(cmd))
		return -1;
	free(f);
	return 0;
}

static int client(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct timeval tv = { .tv_sec = 10 };

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

/* One reply line (without the newline), or "" at EOF. */
static char *read_line(int fd)
{
	static char buf[8192];
	size_t n = 0;

	while (n < sizeof(buf) - 1) {
		ssize_t r = recv(fd, buf + n, 1, 0);
		if (r <= 0 || buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = '\0';
	return buf;
}

/* Sends a line; NULL if the server already closed the connection. */
static char *try_ask(int fd, const char *line)
{
	if (send(fd, line, strlen(line), MSG_NOSIGNAL) != (ssize_t)strlen(line) ||
	    send(fd, "\n", 1, MSG_NOSIGNAL) != 1)
		return NULL;
	return read_line(fd);
}

static char *ask(int fd, const char *line)
{
	assert_int_equal(send(fd, line, strlen(line), MSG_NOSIGNAL), (ssize_t)strlen(line));
	assert_int_equal(send(fd, "\n", 1, MSG_NOSIGNAL), 1);
	return read_line(fd);
}

/* The reply is an error of this class whose text contains want. */
static void expect_error(const char *reply, const char *cls, const char *want)
{
	json_object *o = json_tokener_parse(reply), *e, *v;

	if (!o || !json_object_object_get_ex(o, "error", &e))
		fail_msg("expected an error, got '%s'", reply);
	assert_true(json_object_object_get_ex(e, "class", &v));
	if (strcmp(json_object_get_string(v), cls))
		fail_msg("expected class %s, got '%s'", cls, reply);
	assert_true(json_object_object_get_ex(e, "desc", &v));
	if (!strstr(json_object_get_string(v), want))
		fail_msg("expected '%s' in '%s'", want, reply);
	json_object_put(o);
}

static void expect_alive(int fd)
{
	const char *r = ask(fd, "{\"execute\":\"status\"}");
	if (!strstr(r, "\"state\":\"running\""))
		fail_msg("server did not answer status after a bad request: '%s'", r);
}

static void test_migrate_argument_types(void **state)
{
	struct fixture *f = *state;
	int fd = client(f->path);
	static const struct {
		const char *args, *want;
	} cases[] = {
		{ "{\"to\":[null]}", "'to' must list" },
		{ "{\"to\":null}", "'to' must list" },
		{ "{\"to\":[1]}", "'to' must list" },
		{ "{\"to\":[\"\"]}", "'to' must list" },
		{ "{\"to\":{}}", "'to' must list" },
		{ "{\"to\":\",,,\"}", "'to' must list" },
		{ "{}", "'to' must list" },
		{ "{\"to\":\"127.0.0.1:1\",\"bind\":[null]}", "'bind' must list" },
		{ "{\"to\":\"127.0.0.1:1\",\"bind\":7}", "'bind' must list" },
		{ "{\"to\":\"127.0.0.1:1\",\"compress\":null}", "'compress' must be none, lz4 or zstd" },
		{ "{\"to\":\"127.0.0.1:1\",\"compress\":3}", "'compress' must be" },
		{ "{\"to\":\"127.0.0.1:1\",\"compress\":\"gzip\"}", "'compress' must be" },
		{ "{\"to\":\"127.0.0.1:1\",\"policy\":null}", "'policy' must be throttle, force or abort" },
		{ "{\"to\":\"127.0.0.1:1\",\"policy\":[]}", "'policy' must be" },
		{ "{\"to\":\"127.0.0.1:1\",\"barrier\":\"yes\"}", "'barrier' must be true or false" },
		{ "{\"to\":\"127.0.0.1:1\",\"serial\":1}", "'serial' must be true or false" },
		{ "{\"to\":\"127.0.0.1:1\",\"channels\":\"4\"}", "'channels' must be an integer" },
		{ "{\"to\":\"127.0.0.1:1\",\"channels\":65}", "'channels' must be an integer from 0 to 64" },
		{ "{\"to\":\"127.0.0.1:1\",\"channels\":-1}", "'channels' must be" },
		{ "{\"to\":\"127.0.0.1:1\",\"max_bytes_factor\":\"8\"}", "'max_bytes_factor' must be a number" },
		{ "{\"to\":\"127.0.0.1:1\",\"max_bytes_factor\":-1}", "'max_bytes_factor' must be" },
		{ "{\"to\":\"127.0.0.1:1\",\"max_bytes_factor\":null}", "'max_bytes_factor' must be" },
		{ "{\"to\":\"127.0.0.1:1\",\"chanels\":4}", "unknown argument 'chanels'" },
	};
	char line[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(line, sizeof(line), "{\"execute\":\"migrate\",\"arguments\":%s}", cases[i].args);
		expect_error(ask(fd, line), "InvalidParameter", cases[i].want);
		expect_alive(fd);
	}
	/* Nothing was started by any of them. */
	assert_int_equal(f->vm->starts, 0);
	close(fd);
}

static void test_request_shapes(void **state)
{
	struct fixture *f = *state;
	int fd = client(f->path);
	static const struct {
		const char *line, *cls, *want;
	} cases[] = {
		{ "[]", "GenericError", "expected a JSON object" },
		{ "null", "GenericError", "expected a JSON object" },
		{ "\"status\"", "GenericError", "expected a JSON object" },
		{ "{\"execute\":null}", "GenericError", "expected a JSON object" },
		{ "{\"execute\":[\"status\"]}", "GenericError", "expected a JSON object" },
		{ "{'execute':'status'}", "GenericError", "expected a JSON object" },
		{ "{\"execute\":\"status\",}", "GenericError", "expected a JSON object" },
		{ "{\"execute\":\"status\"} {\"execute\":\"quit\"}", "GenericError", "expected a JSON object" },
		{ "{\"execute\":\"status\"} x", "GenericError", "expected a JSON object" },
		{ "{\"execute\":\"status\",\"execute\":\"quit\"}", "GenericError", "duplicate key" },
		{ "{\"execute\":\"status\",\"\\u0065xecute\":\"quit\"}", "GenericError", "duplicate key" },
		{ "{\"execute\":\"migrate\",\"arguments\":{\"to\":\"127.0.0.1:1\",\"to\":\"127.0.0.1:2\"}}",
		  "GenericError", "duplicate key" },
		{ "{\"execute\":\"x\",\"arguments\":{\"a\":{\"b\":1,\"b\":2}}}", "GenericError", "duplicate key" },
		{ "{\"execute\":\"migrate\",\"arguments\":[\"127.0.0.1:1\"]}", "GenericError",
		  "'arguments' must be an object" },
		{ "{\"execute\":\"status\",\"arguments\":null}", "GenericError", "'arguments' must be an object" },
		{ "{\"execute\":\"status\",\"id\":1}", "GenericError", "only \"execute\" and \"arguments\"" },
		{ "{\"execute\":\"quit\",\"arguments\":{\"now\":true}}", "InvalidParameter", "takes no arguments" },
		{ "{\"execute\":\"stop\",\"arguments\":{\"x\":1}}", "InvalidParameter", "takes no arguments" },
		{ "{\"execute\":\"frobnicate\"}", "CommandNotFound", "unknown command 'frobnicate'" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		expect_error(ask(fd, cases[i].line), cases[i].cls, cases[i].want);
		expect_alive(fd);
	}
	/* Keys that look alike but differ, and strings holding ':' and '"'. */
	const char *r = ask(fd, "{\"execute\":\"status\",\"arguments\":{}}");
	assert_non_null(strstr(r, "\"return\""));
	r = ask(fd, "{\"execute\":\"x:\\\"y\\\":\",\"arguments\":{\"a\":\"b\\\":c\",\"A\":1}}");
	expect_error(r, "CommandNotFound", "unknown command");
	assert_int_equal(__atomic_load_n(&f->quits, __ATOMIC_SEQ_CST), 0);
	/* A line too long is refused and closed. */
	size_t big = 70 * 1024;
	char *line = malloc(big);
	memset(line, ' ', big);
	ssize_t sent = send(fd, line, big, MSG_NOSIGNAL);
	assert_true(sent > 0);
	expect_error(read_line(fd), "GenericError", "line too long");
	assert_string_equal(read_line(fd), "");
	free(line);
	close(fd);
}

static void test_socket_mode(void **state)
{
	struct fixture *f = *state;
	struct stat st;

	assert_int_equal(lstat(f->path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0600);
}

static int start_at(const char *path, struct pm_control **ctl, struct fakevm *vm, struct pm_err *e)
{
	return pm_control_start(ctl, path, &vm->be, &ops, NULL, "running", e);
}

static void test_path_not_ours(void **state)
{
	struct fixture *f = *state;
	struct pm_control *c2 = NULL;
	struct pm_err e = { 0 };
	char p[100], buf[16] = "";
	FILE *fp;

	/* A regular file is never deleted. */
	snprintf(p, sizeof(p), "%s/precious.txt", f->dir);
	fp = fopen(p, "w");
	fputs("precious", fp);
	fclose(fp);
	assert_int_equal(start_at(p, &c2, f->vm, &e), -EEXIST);
	assert_non_null(strstr(e.msg, "not a socket"));
	fp = fopen(p, "r");
	assert_non_null(fp);
	assert_non_null(fgets(buf, sizeof(buf), fp));
	fclose(fp);
	assert_string_equal(buf, "precious");

	/* Nor a symlink (even to a stale socket), nor a directory. */
	char l[160];
	snprintf(l, sizeof(l), "%s/link.sock", f->dir);
	assert_int_equal(symlink(p, l), 0);
	pm_err_clear(&e);
	assert_int_equal(start_at(l, &c2, f->vm, &e), -EEXIST);
	struct stat st;
	assert_int_equal(lstat(l, &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	snprintf(l, sizeof(l), "%s/dir", f->dir);
	assert_int_equal(mkdir(l, 0700), 0);
	pm_err_clear(&e);
	assert_int_equal(start_at(l, &c2, f->vm, &e), -EEXIST);

	/* A socket somebody serves is in use: refused, and it keeps working. */
	pm_err_clear(&e);
	assert_int_equal(start_at(f->path, &c2, f->vm, &e), -EADDRINUSE);
	assert_non_null(strstr(e.msg, "in use"));
	int fd = client(f->path);
	expect_alive(fd);
	close(fd);

	/* A stale socket (its server died without removing it) is replaced. */
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(p, sizeof(p), "%s/stale.sock", f->dir);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", p);
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(s);
	pm_err_clear(&e);
	assert_int_equal(start_at(p, &c2, f->vm, &e), 0);
	fd = client(p);
	expect_alive(fd);
	close(fd);
	/* Stop removes only the socket it made: here someone replaced it. */
	assert_int_equal(unlink(p), 0);
	fp = fopen(p, "w");
	fclose(fp);
	pm_control_stop(c2);
	assert_int_equal(lstat(p, &st), 0);
	assert_true(S_ISREG(st.st_mode));
}

static void test_too_many_clients(void **state)
{
	struct fixture *f = *state;
	int fds[16];

	for (int i = 0; i < 16; i++) {
		fds[i] = client(f->path);
		expect_alive(fds[i]);
	}
	int extra = client(f->path);
	expect_error(read_line(extra), "TooManyClients", "16 clients are connected");
	assert_string_equal(read_line(extra), "");
	close(extra);
	/* One leaves: the next one is served. */
	close(fds[0]);
	fds[0] = -1;
	for (int tries = 0; tries < 100; tries++) {
		extra = client(f->path);
		const char *r = try_ask(extra, "{\"execute\":\"status\"}");
		if (r && strstr(r, "\"return\""))
			break;
		close(extra);
		extra = -1;
		usleep(20000);
	}
	assert_true(extra >= 0);
	close(extra);
	for (int i = 1; i < 16; i++)
		close(fds[i]);
}

static void test_idle_clients(void **state)
{
	struct fixture *f = *state;
	int fds[16];

	pm_control_set_idle_timeout(f->ctl, 300);
	/* Sixteen clients that connect and say nothing cannot lock it up. */
	for (int i = 0; i < 16; i++)
		fds[i] = client(f->path);
	double t0 = pm_now_ms();
	for (int i = 0; i < 16; i++) {
		expect_error(read_line(fds[i]), "IdleTimeout", "no request for 1 s");
		assert_string_equal(read_line(fds[i]), "");
		close(fds[i]);
	}
	assert_true(pm_now_ms() - t0 < 5000);
	int fd = -1;
	for (int tries = 0; tries < 100 && fd < 0; tries++) {
		fd = client(f->path);
		const char *r = try_ask(fd, "{\"execute\":\"status\"}");
		if (!r || !strstr(r, "\"return\"")) {
			close(fd);
			fd = -1;
			usleep(20000);
		}
	}
	assert_true(fd >= 0);
	close(fd);
}

/* A migration's client waits silently for its events: not idle. */
static void test_migration_client_not_idle(void **state)
{
	struct fixture *f = *state;
	struct pm_err e = { 0 };
	int l = pm_tcp_listen("127.0.0.1:0", &e);
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);
	char line[256];

	assert_true(l >= 0);
	getsockname(l, (struct sockaddr *)&sa, &sl);
	pm_control_set_idle_timeout(f->ctl, 200);
	int fd = client(f->path);
	/* The "destination" accepts and never answers: the source times out. */
	snprintf(line, sizeof(line),
		 "{\"execute\":\"migrate\",\"arguments\":{\"to\":\"127.0.0.1:%u\",\"timeout_ms\":1500}}",
		 ntohs(sa.sin_port));
	assert_non_null(strstr(ask(fd, line), "\"return\""));
	for (;;) {
		const char *r = read_line(fd);
		assert_null(strstr(r, "IdleTimeout"));
		assert_string_not_equal(r, "");
		if (strstr(r, "migration-failed"))
			break;
	}
	close(fd);
	close(l);
	char st[32];
	for (int i = 0; i < 100 && strcmp(pm_control_state(f->ctl, st, sizeof(st)), "running"); i++)
		usleep(20000);
	assert_string_equal(st, "running");
}

/* Only the VM's user and root: another user is refused even when the
 * socket's mode would let it connect. */
static void test_other_user(void **state)
{
	struct fixture *f = *state;

	if (geteuid() != 0) {
		skip();
		return;
	}
	assert_int_equal(chmod(f->path, 0666), 0);
	assert_int_equal(chmod(f->dir, 0755), 0);
	pid_t pid = fork();
	if (pid == 0) {
		if (setgid(65534) || setuid(65534))
			_exit(3);
		if (geteuid() == 0)
			_exit(3);
		int fd = client(f->path);
		const char *r = read_line(fd);
		_exit(strstr(r, "PermissionDenied") && strstr(r, "user 65534") ? 0 : 1);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	/* Root (this process) is still served. */
	int fd = client(f->path);
	expect_alive(fd);
	close(fd);
}

/* ------------------------------------------------------------ dumps */

static void test_dump_private(void **state)
{
	struct fixture *f = *state;
	struct pm_err e = { 0 };
	char p[160], t[160];
	struct stat st;
	mode_t old = umask(0);

	snprintf(p, sizeof(p), "%s/dump", f->dir);
	assert_int_equal(pm_dump_memory(&f->vm->be, p, &e), 0);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(st.st_size, 64 * PM_PAGE_SIZE);

	/* An existing readable file is made private and replaced. */
	FILE *fp = fopen(p, "w");
	fputs("old content, much longer than nothing", fp);
	fclose(fp);
	chmod(p, 0644);
	assert_int_equal(pm_dump_memory(&f->vm->be, p, &e), 0);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(st.st_size, 64 * PM_PAGE_SIZE);

	/* A planted symlink is not followed; its target is untouched. */
	snprintf(t, sizeof(t), "%s/target", f->dir);
	fp = fopen(t, "w");
	fputs("target", fp);
	fclose(fp);
	snprintf(p, sizeof(p), "%s/link", f->dir);
	assert_int_equal(symlink(t, p), 0);
	assert_int_equal(pm_dump_memory(&f->vm->be, p, &e), -ELOOP);
	assert_non_null(strstr(e.msg, "symbolic link"));
	assert_int_equal(stat(t, &st), 0);
	assert_int_equal(st.st_size, 6);

	/* A FIFO nobody reads: refused at once, not a hang. */
	snprintf(p, sizeof(p), "%s/fifo", f->dir);
	assert_int_equal(mkfifo(p, 0600), 0);
	pm_err_clear(&e);
	assert_true(pm_dump_memory(&f->vm->be, p, &e) < 0);
	umask(old);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_migrate_argument_types, setup, teardown),
		cmocka_unit_test_setup_teardown(test_request_shapes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_socket_mode, setup, teardown),
		cmocka_unit_test_setup_teardown(test_path_not_ours, setup, teardown),
		cmocka_unit_test_setup_teardown(test_too_many_clients, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idle_clients, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migration_client_not_idle, setup, teardown),
		cmocka_unit_test_setup_teardown(test_other_user, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dump_private, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
