/* SPDX-License-Identifier: MIT */
/* The pmigrate command line: one file per subcommand, shared helpers here. */
#ifndef PM_CLI_H
#define PM_CLI_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <pmigrate/error.h>
#include <pmigrate/migrate.h>

int cmd_vm(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_cancel(int argc, char **argv);
int cmd_cont(int argc, char **argv);
int cmd_quit(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_timeline(int argc, char **argv);

/* Control-socket client: one JSON object per line each way. */
struct ctl_conn {
	int fd;
	FILE *in;
};
int ctl_open(struct ctl_conn *c, const char *path, struct pm_err *err);
void ctl_close(struct ctl_conn *c);
int ctl_send(struct ctl_conn *c, json_object *req, struct pm_err *err);
/* Next JSON object from the server; NULL at EOF or on garbage (err set). */
json_object *ctl_recv(struct ctl_conn *c, struct pm_err *err);
/* Sends {"execute": cmd, "arguments": args} and returns the "return" value
 * (caller puts it), or NULL with err set from an "error" reply. */
json_object *ctl_execute(struct ctl_conn *c, const char *cmd, json_object *args, struct pm_err *err);

/* Runs a migration through the control socket: args as for "migrate";
 * shows live progress on stderr when it is a terminal (or when forced);
 * returns the final report as JSON text (malloc'ed) or NULL. */
struct migrate_run {
	bool progress;
	bool quiet;
	char *report_json;   /* out */
};
int run_migration(const char *control, json_object *args, struct migrate_run *mr, struct pm_err *err);

/* Draws the timeline of a JSON report as an SVG file (cli/timeline.c). */
int timeline_svg(const char *report_json, const char *path, struct pm_err *err);

/* Splits "a,b,c" into a JSON array of strings. */
json_object *split_list(const char *s);
int write_text_file(const char *path, const char *text, struct pm_err *err);
/* Path of this executable, for spawning helpers. */
const char *self_exe(void);

#endif
