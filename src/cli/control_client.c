/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "cli/cli.h"

int ctl_open(struct ctl_conn *c, const char *path, struct pm_err *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	c->fd = -1;
	c->in = NULL;
	if (strlen(path) >= sizeof(sa.sun_path))
		return pm_err_set(err, ENAMETOOLONG, "control socket path '%s' is too long", path);
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return pm_err_set(err, errno, "socket: %s", strerror(errno));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		int e = errno;
		close(fd);
		return pm_err_set(err, e, "cannot connect to control socket %s: %s%s", path, strerror(e),
				  e == ENOENT || e == ECONNREFUSED ? " (is the VM running?)" : "");
	}
	c->fd = fd;
	c->in = fdopen(dup(fd), "r");
	if (!c->in) {
		close(fd);
		return pm_err_set(err, ENOMEM, "out of memory");
	}
	return 0;
}

void ctl_close(struct ctl_conn *c)
{
	if (c->in)
		fclose(c->in);
	if (c->fd >= 0)
		close(c->fd);
	c->in = NULL;
	c->fd = -1;
}

int ctl_send(struct ctl_conn *c, json_object *req, struct pm_err *err)
{
	const char *s = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
	size_t len = strlen(s);

	if (send(c->fd, s, len, MSG_NOSIGNAL) != (ssize_t)len || send(c->fd, "\n", 1, MSG_NOSIGNAL) != 1)
		return pm_err_set(err, errno ? errno : EIO, "control socket: send failed: %s", strerror(errno));
	return 0;
}

json_object *ctl_recv(struct ctl_conn *c, struct pm_err *err)
{
	char *line = NULL;
	size_t cap = 0;
	json_object *o = NULL;

	if (getline(&line, &cap, c->in) < 0) {
		pm_err_set(err, ECONNRESET, "control socket closed by the VM process");
	} else {
		o = json_tokener_parse(line);
		if (!o || !json_object_is_type(o, json_type_object)) {
			json_object_put(o);
			o = NULL;
			pm_err_set(err, EPROTO, "control socket sent something that is not a JSON object");
		}
	}
	free(line);
	return o;
}

json_object *ctl_execute(struct ctl_conn *c, const char *cmd, json_object *args, struct pm_err *err)
{
	json_object *req = json_object_new_object(), *rep, *v, *ret = NULL;

	json_object_object_add(req, "execute", json_object_new_string(cmd));
	if (args)
		json_object_object_add(req, "arguments", args);
	if (ctl_send(c, req, err)) {
		json_object_put(req);
		return NULL;
	}
	json_object_put(req);
	while ((rep = ctl_recv(c, err))) {
		if (json_object_object_get_ex(rep, "return", &ret)) {
			json_object_get(ret);
			break;
		}
		if (json_object_object_get_ex(rep, "error", &v)) {
			json_object *d;
			pm_err_set(err, EINVAL, "%s", json_object_object_get_ex(v, "desc", &d) ?
				   json_object_get_string(d) : "command failed");
			break;
		}
		json_object_put(rep);   /* an event meant for someone else */
	}
	json_object_put(rep);
	return ret;
}

json_object *split_list(const char *s)
{
	json_object *a = json_object_new_array();
	char *dup = strdup(s), *save = NULL;

	for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save))
		json_object_array_add(a, json_object_new_string(t));
	free(dup);
	return a;
}

int write_text_file(const char *path, const char *text, struct pm_err *err)
{
	FILE *f = fopen(path, "w");

	if (!f)
		return pm_err_set(err, errno, "cannot write %s: %s", path, strerror(errno));
	fputs(text, f);
	fputc('\n', f);
	if (fclose(f))
		return pm_err_set(err, errno, "cannot write %s: %s", path, strerror(errno));
	return 0;
}

const char *self_exe(void)
{
	static char buf[4096];
	ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);

	if (n <= 0)
		return "pmigrate";
	buf[n] = '\0';
	return buf;
}
