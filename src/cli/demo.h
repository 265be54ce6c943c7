/* SPDX-License-Identifier: MIT */
/* pmigrate demo: the VM processes it runs (demo_child.c) and the Linux
 * guest demo (demo_linux.c). */
#ifndef PMIGRATE_CLI_DEMO_H
#define PMIGRATE_CLI_DEMO_H

#include <stdbool.h>
#include <sys/types.h>
#include <json-c/json.h>
#include <pmigrate/error.h>

struct child {
	const char *exe;               /* NULL: this pmigrate */
	pid_t pid;
	char sock[256];
	char log[256];                 /* its stdout and stderr */
};

int spawn(struct child *c, char *const argv[]);
void sleep_ms(unsigned ms);
void show_log(const struct child *c, const char *who);
/* Waits for the control socket to answer; fails early if the child died. */
json_object *wait_status(struct child *c, unsigned timeout_ms, struct pm_err *err);
/* Waits for the destination to listen; its first address goes in to.
 * On failure it says why on stderr and returns false. */
bool wait_listening(struct child *c, unsigned timeout_ms, char *to, size_t len);
/* Reaps a child that has exited (then pid is 0). */
bool child_exited(struct child *c);
void stop_child(struct child *c);
/* A field of the status' heartbeat object, -1 if absent. */
double hb_field(json_object *st, const char *key);
/* A program next to pmigrate (build tree or install), or $env. */
const char *find_sibling(const char *env, const char *const rel[], char *buf, size_t len);

struct demo_linux_opts {
	const char *mem;               /* guest RAM, default 256M */
	unsigned channels;
	unsigned downtime_ms;
	bool barrier;
	const char *kernel;            /* NULL: the newest /boot/vmlinuz-* */
	const char *workload;          /* NULL: the default pmw_* settings */
	const char *json_path;
	bool keep;
};

/* pmigrate demo --vm linux; argv is the demo's own, for running it again
 * inside the nested L1.  Returns the exit status. */
int demo_linux(const struct demo_linux_opts *o, int argc, char **argv);

#endif
