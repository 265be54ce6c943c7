/* SPDX-License-Identifier: MIT */
/* Error reporting: functions return 0 or a negative errno and leave a
 * human-readable message in a caller-owned struct pm_err. */
#ifndef PMIGRATE_ERROR_H
#define PMIGRATE_ERROR_H

#include <stddef.h>

struct pm_err {
	int code;         /* positive errno, 0 when no error */
	char msg[512];    /* human-readable, no trailing newline */
};

/* Records the error (first one wins if already set) and returns -code. */
int pm_err_set(struct pm_err *e, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Overwrites any earlier error. */
int pm_err_reset(struct pm_err *e, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void pm_err_clear(struct pm_err *e);

#endif
