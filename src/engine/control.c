/* SPDX-License-Identifier: MIT */
/* Control socket server: JSON objects, one per line, on a UNIX socket.
 * Commands: status, migrate, stop, cont, quit (see docs/control.md).  A
 * migration runs in a thread of its own and streams progress events to the
 * client that asked for it. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>
#include <pmigrate/control.h>

#define MAX_CLIENTS 16
#define MAX_LINE (64 * 1024)

struct client {
	struct pm_control *ctl;
	int fd;
	pthread_t thread;
	bool used, done;
};

struct pm_control {
	struct pm_backend *be;
	const struct pm_control_ops *ops;
	void *opaque;
	char path[108];
	int lfd;
	pthread_t thread;
	pthread_mutex_t lock;
	char state[32];
	char *dump_at_pause;
	bool have_report;
	struct pm_report report;
	bool stopping;
	struct client clients[MAX_CLIENTS];
	/* the running migration */
	bool migrating;
	pthread_t mig_thread;
	bool mig_joinable;
	int mig_fd;
	pthread_mutex_t write_lock;
	struct pm_migrate_params params;
	char *to_buf, *bind_buf;
	const char *to[PM_MAX_CHANNELS], *bind[PM_MAX_CHANNELS];
};

static void send_json(struct pm_control *c, int fd, json_object *o)
{
	const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	size_t len = strlen(s);

	pthread_mutex_lock(&c->write_lock);
	/* A client that stops reading gets cut off (after the send timeout set
	 * at accept) rather than stalling the migration's progress events. */
	if (fd >= 0 && (send(fd, s, len, MSG_NOSIGNAL) != (ssize_t)len ||
			send(fd, "\n", 1, MSG_NOSIGNAL) != 1))
		shutdown(fd, SHUT_RDWR);
	pthread_mutex_unlock(&c->write_lock);
	json_object_put(o);
}

static void send_error(struct pm_control *c, int fd, const char *cls, const char *msg)
{
	json_object *o = json_object_new_object(), *e = json_object_new_object();

	json_object_object_add(e, "class", json_object_new_string(cls));
	json_object_object_add(e, "desc", json_object_new_string(msg));
	json_object_object_add(o, "error", e);
	send_json(c, fd, o);
}

static void send_return(struct pm_control *c, int fd, json_object *ret)
{
	json_object *o = json_object_new_object();

	json_object_object_add(o, "return", ret ? ret : json_object_new_object());
	send_json(c, fd, o);
}

void pm_control_set_state(struct pm_control *c, const char *state)
{
	pthread_mutex_lock(&c->lock);
	snprintf(c->state, sizeof(c->state), "%s", state);
	pthread_mutex_unlock(&c->lock);
}

const char *pm_control_state(struct pm_control *c, char *buf, size_t len)
{
	pthread_mutex_lock(&c->lock);
	snprintf(buf, len, "%s", c->state);
	pthread_mutex_unlock(&c->lock);
	return buf;
}

void pm_control_set_report(struct pm_control *c, const struct pm_report *r)
{
	pthread_mutex_lock(&c->lock);
	c->report = *r;
	c->have_report = true;
	pthread_mutex_unlock(&c->lock);
}

void pm_control_set_dump_at_pause(struct pm_control *c, const char *path)
{
	pthread_mutex_lock(&c->lock);
	free(c->dump_at_pause);
	c->dump_at_pause = path ? strdup(path) : NULL;
	pthread_mutex_unlock(&c->lock);
}

static json_object *status_json(struct pm_control *c)
{
	json_object *o = json_object_new_object();

	pthread_mutex_lock(&c->lock);
	json_object_object_add(o, "state", json_object_new_string(c->state));
	json_object_object_add(o, "kind", json_object_new_string(c->be->kind ? c->be->kind : "vm"));
	uint64_t pages = 0;
	for (unsigned i = 0; i < c->be->nregions; i++)
		pages += c->be->regions[i].npages;
	json_object_object_add(o, "memory_bytes", json_object_new_int64(pages * PM_PAGE_SIZE));
	if (c->have_report) {
		char *s = pm_report_to_json(&c->report);
		json_object_object_add(o, "last_migration", json_tokener_parse(s));
		free(s);
	}
	pthread_mutex_unlock(&c->lock);
	if (c->ops && c->ops->status)
		c->ops->status(c->opaque, o);
	return o;
}

static void progress_event(void *opaque, const struct pm_progress *p)
{
	struct pm_control *c = opaque;
	json_object *o = json_object_new_object(), *d = json_object_new_object();
	json_object *ch = json_object_new_array();

	json_object_object_add(d, "phase", json_object_new_string(p->phase ? p->phase : ""));
	json_object_object_add(d, "round", json_object_new_int(p->round));
	json_object_object_add(d, "dirty_pages", json_object_new_int64(p->dirty_pages));
	json_object_object_add(d, "pages_sent", json_object_new_int64(p->pages_sent));
	json_object_object_add(d, "zero_pages", json_object_new_int64(p->zero_pages));
	json_object_object_add(d, "bytes_sent", json_object_new_int64(p->bytes_sent));
	json_object_object_add(d, "elapsed_ms", json_object_new_double(p->elapsed_ms));
	json_object_object_add(d, "throttle_pct", json_object_new_int(p->throttle_pct));
	for (unsigned i = 0; i < p->nchannels; i++)
		json_object_array_add(ch, json_object_new_double(p->channel_mbps[i]));
	json_object_object_add(d, "channel_mbps", ch);
	json_object_object_add(o, "event", json_object_new_string("progress"));
	json_object_object_add(o, "data", d);
	send_json(c, c->mig_fd, o);
}

static void *migration_main(void *arg)
{
	struct pm_control *c = arg;
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_err err = { 0 };
	char prev[32];
	int r;

	pm_control_state(c, prev, sizeof(prev));
	pm_control_set_state(c, "migrating");
	r = pm_migrate_outgoing(c->be, &c->params, rep, &err);
	if (r && !rep->status) {
		rep->status = r;
		snprintf(rep->error, sizeof(rep->error), "%s", err.msg);
	}
	pm_control_set_report(c, rep);
	/* On failure the engine resumed the VM if it had paused it; a VM the
	 * user had stopped goes back to being stopped. */
	if (r && !strcmp(prev, "paused")) {
		struct pm_err e2 = { 0 };
		c->be->ops->pause(c->be->vm, &e2);
	}
	pm_control_set_state(c, r ? prev : "migrated");

	char *s = pm_report_to_json(rep);
	json_object *o = json_object_new_object();
	json_object_object_add(o, "event", json_object_new_string(r ? "migration-failed" : "migration-completed"));
	json_object_object_add(o, "data", json_tokener_parse(s));
	free(s);
	send_json(c, c->mig_fd, o);
	pthread_mutex_lock(&c->write_lock);
	if (c->mig_fd >= 0)
		shutdown(c->mig_fd, SHUT_WR);
	pthread_mutex_unlock(&c->write_lock);
	pthread_mutex_lock(&c->lock);
	c->migrating = false;
	pthread_mutex_unlock(&c->lock);
	free(rep);
	return NULL;
}

/* Splits a JSON array of strings or a comma-separated string into out[]. */
static int addr_list(json_object *v, char **buf, const char **out, unsigned *n)
{
	size_t cap = 0;
	unsigned count = 0;

	*n = 0;
	if (!v)
		return 0;
	if (json_object_is_type(v, json_type_string)) {
		*buf = strdup(json_object_get_string(v));
		for (char *save = NULL, *t = strtok_r(*buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
			if (count == PM_MAX_CHANNELS)
				return -E2BIG;
			out[count++] = t;
		}
	} else if (json_object_is_type(v, json_type_array)) {
		size_t len = json_object_array_length(v);
		if (len > PM_MAX_CHANNELS)
			return -E2BIG;
		for (size_t i = 0; i < len; i++)
			cap += strlen(json_object_get_string(json_object_array_get_idx(v, i))) + 1;
		*buf = malloc(cap + 1);
		char *p = *buf;
		for (size_t i = 0; i < len; i++) {
			const char *s = json_object_get_string(json_object_array_get_idx(v, i));
			strcpy(p, s);
			out[count++] = p;
			p += strlen(s) + 1;
		}
	} else {
		return -EINVAL;
	}
	*n = count;
	return 0;
}

static int get_uint(json_object *args, const char *key, unsigned max, unsigned *out, char *why, size_t wl)
{
	json_object *v;

	if (!json_object_object_get_ex(args, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0 ||
	    json_object_get_int64(v) > max) {
		snprintf(why, wl, "'%s' must be an integer from 0 to %u", key, max);
		return -EINVAL;
	}
	*out = json_object_get_int64(v);
	return 0;
}

static void cmd_migrate(struct pm_control *c, int fd, json_object *args)
{
	struct pm_migrate_params *p = &c->params;
	json_object *v;
	char why[256] = "";
	int r = 0;

	pthread_mutex_lock(&c->lock);
	if (c->migrating || (strcmp(c->state, "running") && strcmp(c->state, "paused"))) {
		snprintf(why, sizeof(why), "cannot migrate a VM in state '%s'", c->state);
		pthread_mutex_unlock(&c->lock);
		send_error(c, fd, "InvalidState", why);
		return;
	}
	c->migrating = true;    /* claimed here, so two clients cannot both start one */
	pthread_mutex_unlock(&c->lock);
	if (c->mig_joinable) {
		pthread_join(c->mig_thread, NULL);
		c->mig_joinable = false;
	}
	free(c->to_buf);
	free(c->bind_buf);
	c->to_buf = c->bind_buf = NULL;
	memset(p, 0, sizeof(*p));
	if (!args || !json_object_object_get_ex(args, "to", &v) ||
	    addr_list(v, &c->to_buf, c->to, &p->nto) || !p->nto) {
		send_error(c, fd, "InvalidParameter", "'to' must list one or more host:port addresses");
		goto unclaim;
	}
	p->to = c->to;
	if (json_object_object_get_ex(args, "bind", &v)) {
		if (addr_list(v, &c->bind_buf, c->bind, &p->nbind)) {
			send_error(c, fd, "InvalidParameter", "'bind' must list local addresses");
			goto unclaim;
		}
		p->bind = c->bind;
	}
	r = get_uint(args, "channels", PM_MAX_CHANNELS, &p->channels, why, sizeof(why));
	if (!r)
		r = get_uint(args, "downtime_ms", 3600000, &p->downtime_ms, why, sizeof(why));
	if (!r)
		r = get_uint(args, "max_rounds", PM_MAX_ROUNDS - 1, &p->max_rounds, why, sizeof(why));
	if (!r)
		r = get_uint(args, "timeout_ms", 3600000, &p->timeout_ms, why, sizeof(why));
	if (!r)
		r = get_uint(args, "chunk_pages", 512, &p->chunk_pages, why, sizeof(why));
	if (!r)
		r = get_uint(args, "compress_level", 22, (unsigned *)&p->compress_level, why, sizeof(why));
	if (!r && json_object_object_get_ex(args, "max_bytes_factor", &v))
		p->max_bytes_factor = json_object_get_double(v);
	if (!r && json_object_object_get_ex(args, "barrier", &v))
		p->barrier = json_object_get_boolean(v);
	if (!r && json_object_object_get_ex(args, "serial", &v))
		p->serial = json_object_get_boolean(v);
	if (!r && json_object_object_get_ex(args, "compress", &v) &&
	    pm_compress_parse(json_object_get_string(v), &p->compress)) {
		snprintf(why, sizeof(why), "'compress' must be none, lz4 or zstd");
		r = -EINVAL;
	}
	if (!r && json_object_object_get_ex(args, "policy", &v) &&
	    pm_nonconverge_parse(json_object_get_string(v), &p->policy)) {
		snprintf(why, sizeof(why), "'policy' must be throttle, force or abort");
		r = -EINVAL;
	}
	if (r) {
		send_error(c, fd, "InvalidParameter", why);
		goto unclaim;
	}
	pthread_mutex_lock(&c->lock);
	p->dump_at_pause = c->dump_at_pause;
	pthread_mutex_unlock(&c->lock);
	p->progress = progress_event;
	p->progress_opaque = c;
	c->mig_fd = fd;
	send_return(c, fd, NULL);
	if (pthread_create(&c->mig_thread, NULL, migration_main, c)) {
		pthread_mutex_lock(&c->lock);
		c->migrating = false;
		pthread_mutex_unlock(&c->lock);
		send_error(c, fd, "Internal", "cannot start the migration thread");
		return;
	}
	c->mig_joinable = true;
	return;
unclaim:
	pthread_mutex_lock(&c->lock);
	c->migrating = false;
	pthread_mutex_unlock(&c->lock);
}

static void cmd_pause(struct pm_control *c, int fd, bool pause)
{
	struct pm_err err = { 0 };
	char st[32];

	pm_control_state(c, st, sizeof(st));
	if (strcmp(st, pause ? "running" : "paused")) {
		char why[96];
		snprintf(why, sizeof(why), "cannot %s a VM in state '%s'", pause ? "stop" : "continue", st);
		send_error(c, fd, "InvalidState", why);
		return;
	}
	if ((pause ? c->be->ops->pause : c->be->ops->resume)(c->be->vm, &err)) {
		send_error(c, fd, "Internal", err.msg);
		return;
	}
	pm_control_set_state(c, pause ? "paused" : "running");
	send_return(c, fd, NULL);
}

static void handle_line(struct pm_control *c, int fd, const char *line)
{
	json_object *req = json_tokener_parse(line), *cmd, *args = NULL;
	const char *name;

	if (!req || !json_object_is_type(req, json_type_object) ||
	    !json_object_object_get_ex(req, "execute", &cmd) || !json_object_is_type(cmd, json_type_string)) {
		send_error(c, fd, "GenericError", "expected a JSON object with \"execute\"");
		json_object_put(req);
		return;
	}
	name = json_object_get_string(cmd);
	json_object_object_get_ex(req, "arguments", &args);
	if (!strcmp(name, "status") || !strcmp(name, "query-status"))
		send_return(c, fd, status_json(c));
	else if (!strcmp(name, "migrate"))
		cmd_migrate(c, fd, args);
	else if (!strcmp(name, "stop"))
		cmd_pause(c, fd, true);
	else if (!strcmp(name, "cont"))
		cmd_pause(c, fd, false);
	else if (!strcmp(name, "quit")) {
		send_return(c, fd, NULL);
		if (c->ops && c->ops->quit)
			c->ops->quit(c->opaque);
	} else {
		json_object *ret = NULL;
		struct pm_err err = { 0 };
		int r = c->ops && c->ops->command ? c->ops->command(c->opaque, name, args, &ret, &err) : -ENOENT;
		if (r == 0) {
			send_return(c, fd, ret);
		} else if (r == -ENOENT) {
			char why[160];
			snprintf(why, sizeof(why), "unknown command '%.100s' (status, migrate, stop, cont, quit)", name);
			send_error(c, fd, "CommandNotFound", why);
		} else {
			send_error(c, fd, "GenericError", err.msg);
		}
	}
	json_object_put(req);
}

static void *client_main(void *arg)
{
	struct client *cl = arg;
	char *buf = malloc(MAX_LINE + 1);
	size_t used = 0;

	while (buf) {
		ssize_t n = recv(cl->fd, buf + used, MAX_LINE - used, 0);
		if (n <= 0)
			break;
		used += n;
		char *nl;
		while ((nl = memchr(buf, '\n', used))) {
			*nl = '\0';
			if (nl > buf)
				handle_line(cl->ctl, cl->fd, buf);
			used -= nl + 1 - buf;
			memmove(buf, nl + 1, used);
		}
		if (used == MAX_LINE) {
			send_error(cl->ctl, cl->fd, "GenericError", "line too long");
			break;
		}
	}
	free(buf);
	/* A migration's client keeps its fd until the migration ends. */
	pthread_mutex_lock(&cl->ctl->write_lock);
	if (cl->ctl->mig_fd == cl->fd)
		cl->ctl->mig_fd = -1;
	pthread_mutex_unlock(&cl->ctl->write_lock);
	pthread_mutex_lock(&cl->ctl->lock);
	cl->done = true;
	pthread_mutex_unlock(&cl->ctl->lock);
	return NULL;
}

static void *server_main(void *arg)
{
	struct pm_control *c = arg;

	for (;;) {
		int fd = accept4(c->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			break;
		}
		struct timeval tv = { .tv_sec = 2 };
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		pthread_mutex_lock(&c->lock);
		struct client *cl = NULL;
		for (unsigned i = 0; i < MAX_CLIENTS && !c->stopping; i++) {
			if (c->clients[i].used && c->clients[i].done) {
				pthread_join(c->clients[i].thread, NULL);
				close(c->clients[i].fd);
				c->clients[i].used = false;
			}
			if (!c->clients[i].used && !cl)
				cl = &c->clients[i];
		}
		if (cl) {
			*cl = (struct client){ .ctl = c, .fd = fd, .used = true };
			if (pthread_create(&cl->thread, NULL, client_main, cl)) {
				cl->used = false;
				cl = NULL;
			}
		}
		pthread_mutex_unlock(&c->lock);
		if (!cl)
			close(fd);
	}
	return NULL;
}

int pm_control_start(struct pm_control **out, const char *path, struct pm_backend *be,
		     const struct pm_control_ops *ops, void *opaque, const char *state,
		     struct pm_err *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct pm_control *c;

	if (strlen(path) >= sizeof(sa.sun_path))
		return pm_err_set(err, ENAMETOOLONG, "control socket path '%s' is too long", path);
	c = calloc(1, sizeof(*c));
	if (!c)
		return pm_err_set(err, ENOMEM, "out of memory");
	c->be = be;
	c->ops = ops;
	c->opaque = opaque;
	c->mig_fd = -1;
	snprintf(c->path, sizeof(c->path), "%s", path);
	snprintf(c->state, sizeof(c->state), "%s", state);
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->write_lock, NULL);
	strcpy(sa.sun_path, path);
	c->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	unlink(path);
	if (c->lfd < 0 || bind(c->lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(c->lfd, 8)) {
		int e = errno;
		if (c->lfd >= 0)
			close(c->lfd);
		free(c);
		return pm_err_set(err, e, "cannot listen on control socket %s: %s", path, strerror(e));
	}
	if (pthread_create(&c->thread, NULL, server_main, c)) {
		close(c->lfd);
		unlink(path);
		free(c);
		return pm_err_set(err, EAGAIN, "cannot start the control thread");
	}
	*out = c;
	return 0;
}

void pm_control_stop(struct pm_control *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->stopping = true;
	pthread_mutex_unlock(&c->lock);
	shutdown(c->lfd, SHUT_RDWR);
	close(c->lfd);
	pthread_join(c->thread, NULL);
	if (c->mig_joinable)
		pthread_join(c->mig_thread, NULL);
	for (unsigned i = 0; i < MAX_CLIENTS; i++)
		if (c->clients[i].used) {
			shutdown(c->clients[i].fd, SHUT_RDWR);
			pthread_join(c->clients[i].thread, NULL);
			close(c->clients[i].fd);
		}
	unlink(c->path);
	free(c->to_buf);
	free(c->bind_buf);
	free(c->dump_at_pause);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->write_lock);
	free(c);
}
