/* SPDX-License-Identifier: MIT */
/* Control socket server: JSON objects, one per line, on a UNIX socket.
 * Commands: status, migrate, migrate_cancel, stop, cont, quit (see docs/control.md).  A
 * migration runs in a thread of its own and streams progress events to the
 * client that asked for it.
 *
 * Whoever can talk to this socket can hand the VM's memory to any address,
 * so: the socket is 0600 and only its owner (or root) is served; a request
 * is strict JSON without duplicate keys and every argument's type is
 * checked; at most MAX_CLIENTS are served and idle ones are closed, so
 * management is never locked out for long. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>
#include <pmigrate/control.h>

#define MAX_CLIENTS 16
#define MAX_LINE (64 * 1024)
#define DEFAULT_IDLE_MS 60000u

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
	dev_t sock_dev;         /* the socket file we made: stop removes only it */
	ino_t sock_ino;
	int lfd;
	atomic_uint idle_ms;
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
	struct pm_migration *mig;       /* under lock: for migrate_cancel */
	pthread_t mig_thread;
	bool mig_joinable;
	int mig_fd;
	pthread_mutex_t write_lock;
	struct pm_migrate_params params;
	char *to_buf, *bind_buf;
	char *tls_str[3];       /* creds dir, PSK file, hostname of the running migration */
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

void pm_control_set_idle_timeout(struct pm_control *c, unsigned ms)
{
	c->idle_ms = ms ? ms : DEFAULT_IDLE_MS;
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
	json_object_object_add(d, "channels_lost", json_object_new_int(p->channels_lost));
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
	struct pm_migration *m = NULL;
	r = pm_migration_start(&m, c->be, &c->params, &err);
	if (!r) {
		pthread_mutex_lock(&c->lock);
		c->mig = m;
		pthread_mutex_unlock(&c->lock);
		r = pm_migration_wait(m, rep, &err);
		pthread_mutex_lock(&c->lock);
		c->mig = NULL;
		pthread_mutex_unlock(&c->lock);
		pm_migration_free(m);
	}
	if (r && !rep->status) {
		rep->status = r;
		snprintf(rep->error, sizeof(rep->error), "%s", err.msg);
	}
	pm_control_set_report(c, rep);
	/* On failure the engine resumed the VM if it had paused it; a VM the
	 * user had stopped goes back to being stopped.  An unknown outcome
	 * leaves it paused for management to decide. */
	if (r && r != PM_UNKNOWN && !strcmp(prev, "paused")) {
		struct pm_err e2 = { 0 };
		c->be->ops->pause(c->be->vm, &e2);
	}
	pm_control_set_state(c, !r ? "migrated" : r == PM_UNKNOWN ? "unknown" : prev);

	char *s = pm_report_to_json(rep);
	json_object *o = json_object_new_object();
	json_object_object_add(o, "event", json_object_new_string(!r ? "migration-completed" :
				r == PM_UNKNOWN ? "migration-unknown" : "migration-failed"));
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

/* Splits a JSON array of strings or a comma-separated string into out[];
 * anything else (null, numbers, empty strings) is refused. */
static int addr_list(json_object *v, char **buf, const char **out, unsigned *n)
{
	size_t cap = 0;
	unsigned count = 0;

	*n = 0;
	if (json_object_is_type(v, json_type_string)) {
		*buf = strdup(json_object_get_string(v));
		if (!*buf)
			return -ENOMEM;
		for (char *save = NULL, *t = strtok_r(*buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
			if (count == PM_MAX_CHANNELS)
				return -E2BIG;
			out[count++] = t;
		}
	} else if (json_object_is_type(v, json_type_array)) {
		size_t len = json_object_array_length(v);
		if (len > PM_MAX_CHANNELS)
			return -E2BIG;
		for (size_t i = 0; i < len; i++) {
			json_object *e = json_object_array_get_idx(v, i);
			if (!json_object_is_type(e, json_type_string) || !json_object_get_string_len(e))
				return -EINVAL;
			cap += json_object_get_string_len(e) + 1;
		}
		*buf = malloc(cap + 1);
		if (!*buf)
			return -ENOMEM;
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

static int get_bool(json_object *args, const char *key, bool *out, char *why, size_t wl)
{
	json_object *v;

	if (!json_object_object_get_ex(args, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_boolean)) {
		snprintf(why, wl, "'%s' must be true or false", key);
		return -EINVAL;
	}
	*out = json_object_get_boolean(v);
	return 0;
}

/* A string argument, or NULL when absent; -EINVAL for any other type. */
static int get_string(json_object *args, const char *key, const char **out, char *why, size_t wl)
{
	json_object *v;

	*out = NULL;
	if (!json_object_object_get_ex(args, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_string)) {
		snprintf(why, wl, "'%s' must be a string", key);
		return -EINVAL;
	}
	*out = json_object_get_string(v);
	return 0;
}

static const char *const migrate_args[] = {
	"to", "bind", "channels", "downtime_ms", "max_rounds", "max_bytes_factor", "timeout_ms",
	"chunk_pages", "barrier", "serial", "verify", "compress", "compress_level", "policy",
	"tls_creds", "tls_psk", "tls_hostname", "insecure", "no_ktls",
	"failover", "reconnect", "mptcp", "shared_storage", NULL,
};

/* A misspelt argument would silently fall back to a default: refuse it. */
static int check_known(json_object *args, const char *const *known, char *why, size_t wl)
{
	json_object_object_foreach(args, key, val) {
		unsigned i = 0;
		(void)val;
		while (known[i] && strcmp(known[i], key))
			i++;
		if (!known[i]) {
			snprintf(why, wl, "unknown argument '%.64s'", key);
			return -EINVAL;
		}
	}
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
	for (unsigned i = 0; i < 3; i++) {
		free(c->tls_str[i]);
		c->tls_str[i] = NULL;
	}
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
	r = check_known(args, migrate_args, why, sizeof(why));
	if (!r)
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
	if (!r && json_object_object_get_ex(args, "max_bytes_factor", &v)) {
		double f = json_object_get_double(v);
		if ((!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int)) ||
		    !isfinite(f) || f < 0 || f > 1e6) {
			snprintf(why, sizeof(why), "'max_bytes_factor' must be a number from 0 to 1000000");
			r = -EINVAL;
		}
		p->max_bytes_factor = f;
	}
	if (!r)
		r = get_bool(args, "barrier", &p->barrier, why, sizeof(why));
	if (!r)
		r = get_bool(args, "serial", &p->serial, why, sizeof(why));
	if (!r)
		r = get_bool(args, "verify", &p->verify, why, sizeof(why));
	bool failover = true, reconnect = true;
	if (!r)
		r = get_bool(args, "failover", &failover, why, sizeof(why));
	if (!r)
		r = get_bool(args, "reconnect", &reconnect, why, sizeof(why));
	if (!r)
		r = get_bool(args, "mptcp", &p->mptcp, why, sizeof(why));
	p->no_failover = !failover;
	p->no_reconnect = !reconnect;
	if (!r)
		r = get_bool(args, "shared_storage", &p->shared_storage, why, sizeof(why));
	const char *str;
	if (!r && (get_string(args, "compress", &str, why, sizeof(why)) ||
		   (str && pm_compress_parse(str, &p->compress)))) {
		snprintf(why, sizeof(why), "'compress' must be none, lz4 or zstd");
		r = -EINVAL;
	}
	if (!r && (get_string(args, "policy", &str, why, sizeof(why)) ||
		   (str && pm_nonconverge_parse(str, &p->policy)))) {
		snprintf(why, sizeof(why), "'policy' must be throttle, force or abort");
		r = -EINVAL;
	}
	static const char *const tls_keys[] = { "tls_creds", "tls_psk", "tls_hostname" };
	const char **tls_out[] = { &p->tls.creds_dir, &p->tls.psk_file, &p->tls.hostname };
	for (unsigned i = 0; i < 3 && !r; i++) {
		r = get_string(args, tls_keys[i], &str, why, sizeof(why));
		if (!r && str && !(*tls_out[i] = c->tls_str[i] = strdup(str)))
			r = -ENOMEM;
	}
	if (!r)
		r = get_bool(args, "insecure", &p->insecure, why, sizeof(why));
	if (!r)
		r = get_bool(args, "no_ktls", &p->tls.no_ktls, why, sizeof(why));
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

static void cmd_cancel(struct pm_control *c, int fd)
{
	int r = -EALREADY;

	pthread_mutex_lock(&c->lock);
	if (c->mig)
		r = pm_migration_cancel(c->mig);
	pthread_mutex_unlock(&c->lock);
	if (!r)
		send_return(c, fd, NULL);
	else if (r == -EBUSY)
		send_error(c, fd, "InvalidState", "too late to cancel: the final state went to the destination; "
			   "the outcome is the destination's answer");
	else
		send_error(c, fd, "InvalidState", "no migration is running");
}

static void cmd_pause(struct pm_control *c, int fd, bool pause)
{
	struct pm_err err = { 0 };
	char st[32];

	pm_control_state(c, st, sizeof(st));
	/* "cont" also decides an unknown outcome: management found that the
	 * destination does not run the VM. */
	if (strcmp(st, pause ? "running" : "paused") && (pause || strcmp(st, "unknown"))) {
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

/* Keys as written in a valid JSON text: each string followed by ':'. */
static size_t written_keys(const char *s)
{
	size_t n = 0;
	bool in_str = false, after_str = false;

	for (; *s; s++) {
		if (in_str) {
			if (*s == '\\' && s[1])
				s++;
			else if (*s == '"')
				in_str = false, after_str = true;
			continue;
		}
		if (*s == '"')
			in_str = true;
		else if (*s == ':' && after_str)
			n++;
		if (!isspace((unsigned char)*s) && *s != '"')
			after_str = false;
	}
	return n;
}

/* Keys the parser kept: a duplicate key collapses into one. */
static size_t parsed_keys(json_object *o)
{
	size_t n = 0;

	if (json_object_is_type(o, json_type_object)) {
		json_object_object_foreach(o, k, v) {
			(void)k;
			n += 1 + parsed_keys(v);
		}
	} else if (json_object_is_type(o, json_type_array)) {
		for (size_t i = 0; i < json_object_array_length(o); i++)
			n += parsed_keys(json_object_array_get_idx(o, i));
	}
	return n;
}

/* Strict JSON (which also refuses anything after the value), and no
 * duplicate keys, which the parser would silently resolve one way while a
 * proxy or a log reads them another. */
static json_object *parse_request(const char *line, const char **why)
{
	struct json_tokener *tok = json_tokener_new();
	json_object *o;
	size_t len = strlen(line);

	if (!tok) {
		*why = "out of memory";
		return NULL;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	o = json_tokener_parse_ex(tok, line, len);
	if (!o || json_tokener_get_error(tok) != json_tokener_success) {
		*why = "expected a JSON object with \"execute\"";
		json_object_put(o);
		o = NULL;
	}
	json_tokener_free(tok);
	if (o && written_keys(line) != parsed_keys(o)) {
		*why = "duplicate key in request";
		json_object_put(o);
		o = NULL;
	}
	return o;
}

static bool no_args(struct pm_control *c, int fd, const char *name, json_object *args)
{
	char why[96];

	if (!args || !json_object_object_length(args))
		return true;
	snprintf(why, sizeof(why), "'%s' takes no arguments", name);
	send_error(c, fd, "InvalidParameter", why);
	return false;
}

static void handle_line(struct pm_control *c, int fd, const char *line)
{
	const char *why = NULL, *name;
	json_object *req = parse_request(line, &why), *cmd, *args = NULL;

	if (req && (!json_object_is_type(req, json_type_object) ||
		    !json_object_object_get_ex(req, "execute", &cmd) ||
		    !json_object_is_type(cmd, json_type_string)))
		why = "expected a JSON object with \"execute\"";
	if (!why && json_object_object_get_ex(req, "arguments", &args) &&
	    !json_object_is_type(args, json_type_object))
		why = "'arguments' must be an object";
	if (!why && json_object_object_length(req) > 1 + (args != NULL))
		why = "a request has only \"execute\" and \"arguments\"";
	if (why) {
		send_error(c, fd, "GenericError", why);
		json_object_put(req);
		return;
	}
	name = json_object_get_string(cmd);
	if (!strcmp(name, "status") || !strcmp(name, "query-status")) {
		if (no_args(c, fd, name, args))
			send_return(c, fd, status_json(c));
	} else if (!strcmp(name, "migrate")) {
		cmd_migrate(c, fd, args);
	} else if (!strcmp(name, "migrate_cancel")) {
		if (no_args(c, fd, name, args))
			cmd_cancel(c, fd);
	} else if (!strcmp(name, "stop") || !strcmp(name, "cont")) {
		if (no_args(c, fd, name, args))
			cmd_pause(c, fd, !strcmp(name, "stop"));
	} else if (!strcmp(name, "quit")) {
		if (no_args(c, fd, name, args)) {
			send_return(c, fd, NULL);
			if (c->ops && c->ops->quit)
				c->ops->quit(c->opaque);
		}
	} else {
		json_object *ret = NULL;
		struct pm_err err = { 0 };
		int r = c->ops && c->ops->command ? c->ops->command(c->opaque, name, args, &ret, &err) : -ENOENT;
		if (r == 0) {
			send_return(c, fd, ret);
		} else if (r == -ENOENT) {
			char msg[200];
			snprintf(msg, sizeof(msg), "unknown command '%.100s' (status, migrate, migrate_cancel, stop, cont, quit)", name);
			send_error(c, fd, "CommandNotFound", msg);
		} else {
			send_error(c, fd, "GenericError", err.msg);
		}
	}
	json_object_put(req);
}

static bool is_migration_client(struct pm_control *c, int fd)
{
	bool r;

	pthread_mutex_lock(&c->write_lock);
	r = c->mig_fd == fd;
	pthread_mutex_unlock(&c->write_lock);
	pthread_mutex_lock(&c->lock);
	r = r && c->migrating;
	pthread_mutex_unlock(&c->lock);
	return r;
}

static void *client_main(void *arg)
{
	struct client *cl = arg;
	struct pm_control *c = cl->ctl;
	char *buf = malloc(MAX_LINE + 1);
	size_t used = 0;

	while (buf) {
		struct pollfd pfd = { .fd = cl->fd, .events = POLLIN };
		int pr = poll(&pfd, 1, c->idle_ms);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr == 0) {
			/* The client of a running migration waits for its events. */
			if (is_migration_client(c, cl->fd))
				continue;
			char why[96];
			snprintf(why, sizeof(why), "no request for %u s: closing the connection",
				 (c->idle_ms + 999) / 1000);
			send_error(c, cl->fd, "IdleTimeout", why);
			break;
		}
		ssize_t n = pr < 0 ? -1 : recv(cl->fd, buf + used, MAX_LINE - used, 0);
		if (n <= 0)
			break;
		used += n;
		char *nl;
		while ((nl = memchr(buf, '\n', used))) {
			*nl = '\0';
			if (nl > buf)
				handle_line(c, cl->fd, buf);
			used -= nl + 1 - buf;
			memmove(buf, nl + 1, used);
		}
		if (used == MAX_LINE) {
			send_error(c, cl->fd, "GenericError", "line too long");
			break;
		}
	}
	free(buf);
	/* The migration's events stop here; the peer sees the close now (the
	 * fd itself is closed when the slot is reaped). */
	pthread_mutex_lock(&c->write_lock);
	if (c->mig_fd == cl->fd)
		c->mig_fd = -1;
	shutdown(cl->fd, SHUT_RDWR);
	pthread_mutex_unlock(&c->write_lock);
	pthread_mutex_lock(&c->lock);
	cl->done = true;
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

/* Only the VM's own user and root may drive it. */
static bool peer_allowed(int fd, uid_t *uid)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len))
		return false;
	*uid = cr.uid;
	return cr.uid == 0 || cr.uid == geteuid();
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
		char why[160];
		uid_t uid = (uid_t)-1;

		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (!peer_allowed(fd, &uid)) {
			snprintf(why, sizeof(why), "user %d may not use this control socket (only uid %u and root)",
				 (int)uid, (unsigned)geteuid());
			send_error(c, fd, "PermissionDenied", why);
			close(fd);
			continue;
		}
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
		bool stopping = c->stopping;
		pthread_mutex_unlock(&c->lock);
		if (!cl) {
			if (!stopping) {
				snprintf(why, sizeof(why), "%u clients are connected to this control socket; try again "
					 "later (idle ones are closed after %u s)", MAX_CLIENTS, (c->idle_ms + 999) / 1000);
				send_error(c, fd, "TooManyClients", why);
			}
			close(fd);
		}
	}
	return NULL;
}

/* Makes room for the socket, removing only a stale socket: never a file of
 * another kind, never a socket a live process serves. */
static int claim_path(const char *path, const struct sockaddr_un *sa, struct pm_err *err)
{
	struct stat st;
	int fd, e;

	if (lstat(path, &st))
		return errno == ENOENT ? 0 : pm_err_set(err, errno, "control socket %s: %s", path, strerror(errno));
	if (!S_ISSOCK(st.st_mode))
		return pm_err_set(err, EEXIST, "control socket %s: something that is not a socket is in the way; "
				  "refusing to replace it", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return pm_err_set(err, errno, "socket: %s", strerror(errno));
	e = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) ? errno : 0;
	close(fd);
	if (!e)
		return pm_err_set(err, EADDRINUSE, "control socket %s is in use by another process", path);
	if (e != ECONNREFUSED)
		return pm_err_set(err, e, "control socket %s: %s", path, strerror(e));
	if (unlink(path) && errno != ENOENT)
		return pm_err_set(err, errno, "cannot remove stale control socket %s: %s", path, strerror(errno));
	return 0;
}

/* Removes the socket file if it is still the one we made. */
static void release_path(struct pm_control *c)
{
	struct stat st;

	if (!lstat(c->path, &st) && S_ISSOCK(st.st_mode) && st.st_dev == c->sock_dev &&
	    st.st_ino == c->sock_ino)
		unlink(c->path);
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
	c->idle_ms = DEFAULT_IDLE_MS;
	strcpy(sa.sun_path, path);
	int r = claim_path(path, &sa, err);
	if (r) {
		free(c);
		return r;
	}
	c->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool bound = c->lfd >= 0 && !bind(c->lfd, (struct sockaddr *)&sa, sizeof(sa));
	struct stat st;
	/* 0600 before listen(): until then nobody can connect. */
	if (!bound || chmod(path, 0600) || lstat(path, &st) || listen(c->lfd, 8)) {
		int e = errno;
		if (bound)
			unlink(path);
		if (c->lfd >= 0)
			close(c->lfd);
		free(c);
		return pm_err_set(err, e, "cannot listen on control socket %s: %s", path, strerror(e));
	}
	c->sock_dev = st.st_dev;
	c->sock_ino = st.st_ino;
	if (pthread_create(&c->thread, NULL, server_main, c)) {
		close(c->lfd);
		release_path(c);
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
	release_path(c);
	for (unsigned i = 0; i < 3; i++)
		free(c->tls_str[i]);
	free(c->to_buf);
	free(c->bind_buf);
	free(c->dump_at_pause);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->write_lock);
	free(c);
}
