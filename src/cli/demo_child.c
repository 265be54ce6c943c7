// SPDX-License-Identifier: MIT
/* The demo's child VM processes: start, ask, stop. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "cli/cli.h"
#include "cli/demo.h"

int spawn(struct child *c, char *const argv[])
{
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int fd = open(c->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(c->exe ? c->exe : self_exe(), argv);
		_exit(127);
	}
	c->pid = pid;
	return 0;
}

void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

void show_log(const struct child *c, const char *who)
{
	FILE *f = fopen(c->log, "r");
	char line[512];

	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		fprintf(stderr, "  [%s] %s", who, line);
	fclose(f);
}

/* Waits for the control socket to answer; fails early if the child died. */
json_object *wait_status(struct child *c, unsigned timeout_ms, struct pm_err *err)
{
	for (unsigned t = 0; t < timeout_ms; t += 50) {
		struct ctl_conn cc;
		struct pm_err e = { 0 };
		int st;
		if (waitpid(c->pid, &st, WNOHANG) == c->pid) {
			c->pid = 0;
			pm_err_set(err, ECHILD, "VM process exited early (status %d)",
				   WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
			return NULL;
		}
		if (!ctl_open(&cc, c->sock, &e)) {
			json_object *s = ctl_execute(&cc, "status", NULL, &e);
			ctl_close(&cc);
			if (s)
				return s;
		}
		sleep_ms(50);
	}
	pm_err_set(err, ETIMEDOUT, "VM process did not answer on %s", c->sock);
	return NULL;
}

/* Waits for the destination to listen and puts its first address in to;
 * on failure says why (with the child's log) and returns false. */
bool wait_listening(struct child *c, unsigned timeout_ms, char *to, size_t len)
{
	struct pm_err err = { 0 };
	json_object *st = wait_status(c, timeout_ms, &err), *inc;
	bool ok = st && json_object_object_get_ex(st, "incoming", &inc) && json_object_array_length(inc);
	if (ok)
		snprintf(to, len, "%s", json_object_get_string(json_object_array_get_idx(inc, 0)));
	else {
		fprintf(stderr, "pmigrate demo: destination: %s\n", err.code ? err.msg : "not listening");
		show_log(c, "destination");
	}
	json_object_put(st);
	return ok;
}

/* Reaps a child that has exited (then pid is 0). */
bool child_exited(struct child *c)
{
	if (c->pid > 0 && waitpid(c->pid, NULL, WNOHANG) == c->pid)
		c->pid = 0;
	return c->pid <= 0;
}

void stop_child(struct child *c)
{
	struct ctl_conn cc;
	struct pm_err e = { 0 };

	if (c->pid <= 0)
		return;
	if (!ctl_open(&cc, c->sock, &e)) {
		json_object_put(ctl_execute(&cc, "quit", NULL, &e));
		ctl_close(&cc);
	}
	for (int i = 0; i < 100; i++) {
		if (waitpid(c->pid, NULL, WNOHANG) == c->pid) {
			c->pid = 0;
			return;
		}
		sleep_ms(50);
	}
	kill(c->pid, SIGKILL);
	waitpid(c->pid, NULL, 0);
	c->pid = 0;
}

double hb_field(json_object *st, const char *key)
{
	json_object *hb, *v;

	if (json_object_object_get_ex(st, "heartbeat", &hb) && json_object_object_get_ex(hb, key, &v))
		return json_object_get_double(v);
	return -1;
}

/* pmvm and its verifier guest: next to pmigrate in a build tree or install. */
const char *find_sibling(const char *env, const char *const rel[], char *buf, size_t len)
{
	const char *e = getenv(env);
	char dir[2048];

	if (e && *e)
		return e;
	snprintf(dir, sizeof(dir), "%s", self_exe());
	char *slash = strrchr(dir, '/');
	if (slash)
		*slash = '\0';
	for (unsigned i = 0; rel[i]; i++) {
		snprintf(buf, len, "%s/%s", dir, rel[i]);
		if (access(buf, R_OK) == 0)
			return buf;
	}
	return NULL;
}

