/* SPDX-License-Identifier: MIT */
/* The control socket of a VM process: a UNIX stream socket speaking JSON,
 * one object per line (in the spirit of QMP).  Shared by the synthetic VM
 * and pmvm so that `pmigrate migrate` and `pmigrate status` work with both.
 * The protocol is documented in docs/control.md. */
#ifndef PMIGRATE_CONTROL_H
#define PMIGRATE_CONTROL_H

#include <json-c/json.h>
#include <pmigrate/backend.h>
#include <pmigrate/migrate.h>

struct pm_control;

struct pm_control_ops {
	/* Adds VM-specific fields (heartbeat, vcpus, ...) to a status object. */
	void (*status)(void *opaque, json_object *out);
	/* "quit" command: ask the VM process to exit (called from the server thread). */
	void (*quit)(void *opaque);
	/* Optional: VM-specific commands.  Returns 0 and sets *ret (may stay
	 * NULL for {}), -ENOENT for an unknown command, or another -errno with
	 * err set. */
	int (*command)(void *opaque, const char *name, json_object *args, json_object **ret,
		       struct pm_err *err);
};

/* Serves path in a thread of its own.  state is the initial VM state
 * ("running", "incoming", ...).  The socket is created 0600 and serves only
 * this process's user and root; an existing file at path is replaced only
 * if it is a stale socket (nobody listening). */
int pm_control_start(struct pm_control **out, const char *path, struct pm_backend *be,
		     const struct pm_control_ops *ops, void *opaque,
		     const char *state, struct pm_err *err);
void pm_control_stop(struct pm_control *c);
void pm_control_set_state(struct pm_control *c, const char *state);
/* Copies r; shown as "last_migration" in status. */
void pm_control_set_report(struct pm_control *c, const struct pm_report *r);
void pm_control_set_dump_at_pause(struct pm_control *c, const char *path);
/* A client (other than a running migration's) that sends nothing this long
 * is closed; 0 = the default, 60 s.  Call right after pm_control_start. */
void pm_control_set_idle_timeout(struct pm_control *c, unsigned ms);
/* Copies the current state ("running", "migrated", ...) into buf. */
const char *pm_control_state(struct pm_control *c, char *buf, size_t len);

#endif
