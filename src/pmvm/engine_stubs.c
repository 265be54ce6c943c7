// SPDX-License-Identifier: MIT
/* Stand-ins for the engine's control socket and incoming migration, built
 * only while libpmigrate lacks them (see meson.build). */
#include <errno.h>
#include <pmigrate/control.h>
#include <pmigrate/migrate.h>

#define MISSING "this libpmigrate has no control socket or incoming migration yet"

int pm_control_start(struct pm_control **out, const char *path, struct pm_backend *be,
		     const struct pm_control_ops *ops, void *opaque,
		     const char *state, struct pm_err *err)
{
	*out = NULL;
	return pm_err_set(err, ENOSYS, "--control %s: " MISSING, path);
}

void pm_control_stop(struct pm_control *c) {}
void pm_control_set_state(struct pm_control *c, const char *state) {}
void pm_control_set_report(struct pm_control *c, const struct pm_report *r) {}
void pm_control_set_dump_at_pause(struct pm_control *c, const char *path) {}

const char *pm_control_state(struct pm_control *c, char *buf, size_t len)
{
	return "running";
}

int pm_incoming_listen(struct pm_incoming **out, const struct pm_incoming_params *p,
		       struct pm_err *err)
{
	*out = NULL;
	return pm_err_set(err, ENOSYS, "--incoming: " MISSING);
}

const char *pm_incoming_address(const struct pm_incoming *in, unsigned i)
{
	return "";
}

int pm_incoming_run(struct pm_incoming *in, struct pm_backend *be,
		    struct pm_report *rep, struct pm_err *err)
{
	return pm_err_set(err, ENOSYS, "--incoming: " MISSING);
}

void pm_incoming_close(struct pm_incoming *in) {}
