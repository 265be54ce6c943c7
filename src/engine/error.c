/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <pmigrate/error.h>

static int err_vset(struct pm_err *e, int code, const char *fmt, va_list ap)
{
	if (code < 0)
		code = -code;
	if (!e)
		return -code;
	e->code = code;
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	return -code;
}

int pm_err_set(struct pm_err *e, int code, const char *fmt, ...)
{
	va_list ap;
	int r;

	if (e && e->code)
		return -e->code;
	va_start(ap, fmt);
	r = err_vset(e, code, fmt, ap);
	va_end(ap);
	return r;
}

int pm_err_reset(struct pm_err *e, int code, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = err_vset(e, code, fmt, ap);
	va_end(ap);
	return r;
}

void pm_err_clear(struct pm_err *e)
{
	if (e) {
		e->code = 0;
		e->msg[0] = '\0';
	}
}
