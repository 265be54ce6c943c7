/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/sendfile.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "engine/net.h"

#ifndef SOL_MPTCP
#define SOL_MPTCP 284
#endif
#ifndef MPTCP_INFO
#define MPTCP_INFO 1
#endif
#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262     /* Linux 5.6+; Debian 12's headers have it, older ones not */
#endif
#include "engine/protocol.h"
#include "engine/tls.h"

int pm_parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len,
		  int allow_no_port, struct pm_err *err)
{
	char host[256], *end;
	const char *port = NULL;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res;
	long pn = 0;
	int r;

	if (!s || !*s || strlen(s) >= sizeof(host))
		return pm_err_set(err, EINVAL, "empty or too long address '%s'", s ? s : "");
	if (s[0] == '[') {
		const char *rb = strchr(s, ']');
		if (!rb)
			return pm_err_set(err, EINVAL, "bad address '%s': missing ']'", s);
		memcpy(host, s + 1, rb - s - 1);
		host[rb - s - 1] = '\0';
		if (rb[1] == ':')
			port = rb + 2;
		else if (rb[1])
			return pm_err_set(err, EINVAL, "bad address '%s': expected ':' after ']'", s);
	} else {
		const char *colon = strrchr(s, ':');
		if (colon && strchr(s, ':') != colon)
			return pm_err_set(err, EINVAL, "bad address '%s': write IPv6 as [addr]:port", s);
		size_t hl = colon ? (size_t)(colon - s) : strlen(s);
		memcpy(host, s, hl);
		host[hl] = '\0';
		if (colon)
			port = colon + 1;
	}
	if (port) {
		errno = 0;
		pn = strtol(port, &end, 10);
		if (!*port || *end || errno || pn < 0 || pn > 65535)
			return pm_err_set(err, EINVAL, "bad port in address '%s'", s);
	} else if (!allow_no_port) {
		return pm_err_set(err, EINVAL, "address '%s' has no port (expected host:port)", s);
	}
	if (!host[0])
		return pm_err_set(err, EINVAL, "address '%s' has no host", s);
	r = getaddrinfo(host, NULL, &hints, &res);
	if (r)
		return pm_err_set(err, EINVAL, "cannot resolve '%s': %s", host, gai_strerror(r));
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons(pn);
	else
		((struct sockaddr_in6 *)ss)->sin6_port = htons(pn);
	return 0;
}

void pm_format_addr(const struct sockaddr *sa, char *buf, size_t len)
{
	char h[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;
		inet_ntop(AF_INET, &in->sin_addr, h, sizeof(h));
		snprintf(buf, len, "%s:%u", h, ntohs(in->sin_port));
	} else {
		const struct sockaddr_in6 *in6 = (const void *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, h, sizeof(h));
		snprintf(buf, len, "[%s]:%u", h, ntohs(in6->sin6_port));
	}
}

void pm_addr_host(const char *addr, char *host, size_t len)
{
	const char *end;

	if (addr[0] == '[') {
		addr++;
		end = strchr(addr, ']');
	} else {
		end = strrchr(addr, ':');
	}
	size_t n = end ? (size_t)(end - addr) : strlen(addr);
	snprintf(host, len, "%.*s", (int)n, addr);
}

bool pm_addr_is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return false;
}

int pm_tcp_tune(int fd, unsigned timeout_ms)
{
	int one = 1, r = 0;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)))
		r = -errno;
	if (timeout_ms) {
		/* A peer that vanished (link down, host gone) is found within
		 * about the budget even when nothing is being sent: unacked data
		 * or unanswered keepalives for timeout_ms end the connection. */
		unsigned ut = timeout_ms;
		int idle = timeout_ms / 3000 ? (int)(timeout_ms / 3000) : 1;
		int intvl = idle, cnt = 2;
		if (setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof(ut)) ||
		    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) ||
		    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl)) ||
		    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)))
			r = -errno;
	}
	return r;
}

/* A socket for addresses of family fam: Multipath TCP if asked and the
 * kernel offers it (*mptcp says whether it did), else TCP. */
static int stream_socket(int fam, bool want_mptcp, bool *mptcp)
{
	int fd = -1;

	*mptcp = false;
	if (want_mptcp) {
		fd = socket(fam, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_MPTCP);
		*mptcp = fd >= 0;
	}
	if (fd < 0)
		fd = socket(fam, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	return fd;
}

int pm_tcp_connect_ex(const char *to, struct pm_connect *o, struct pm_err *err)
{
	struct sockaddr_storage ss, bs;
	socklen_t sl, bl;
	int fd, r, soerr = 0;
	socklen_t el = sizeof(soerr);
	double deadline = pm_now_ms() + o->timeout_ms;

	r = pm_parse_addr(to, &ss, &sl, 0, err);
	if (r)
		return r;
	fd = stream_socket(ss.ss_family, o->mptcp, &o->mptcp_used);
	if (fd < 0)
		return pm_err_set(err, errno, "socket: %s", strerror(errno));
	if (o->bind) {
		r = pm_parse_addr(o->bind, &bs, &bl, 1, err);
		if (r)
			goto fail;
		if (bs.ss_family != ss.ss_family) {
			r = pm_err_set(err, EINVAL, "bind address %s and destination %s are of different families",
				       o->bind, to);
			goto fail;
		}
		if (bind(fd, (struct sockaddr *)&bs, bl)) {
			r = pm_err_set(err, errno, "cannot bind to %s: %s", o->bind, strerror(errno));
			goto fail;
		}
	}
	if (connect(fd, (struct sockaddr *)&ss, sl) && errno != EINPROGRESS) {
		r = pm_err_set(err, errno, "cannot connect to %s: %s", to, strerror(errno));
		goto fail;
	}
	for (;;) {
		struct pollfd p[2] = { { .fd = fd, .events = POLLOUT }, { .fd = o->wake_fd, .events = POLLIN } };
		double left = deadline - pm_now_ms();
		if (left <= 0) {
			r = pm_err_set(err, ETIMEDOUT, "cannot connect to %s: timed out after %u ms", to, o->timeout_ms);
			goto fail;
		}
		r = poll(p, o->wake_fd >= 0 ? 2 : 1, (int)left + 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r > 0 && o->wake_fd >= 0 && (p[1].revents & POLLIN)) {
			r = pm_err_set(err, ECANCELED, "connecting to %s: cancelled", to);
			goto fail;
		}
		if (r != 0)
			break;
	}
	if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &el) || soerr) {
		int e = soerr ? soerr : errno;
		r = pm_err_set(err, e, "cannot connect to %s: %s", to, strerror(e));
		goto fail;
	}
	pm_tcp_tune(fd, o->timeout_ms);
	return fd;
fail:
	close(fd);
	return r;
}

bool pm_fd_is_mptcp(int fd)
{
	/* MPTCP_INFO fails on a plain TCP socket and on one that fell back to
	 * TCP (a peer without Multipath TCP). */
	uint8_t info[256];
	socklen_t l = sizeof(info);

	return !getsockopt(fd, SOL_MPTCP, MPTCP_INFO, info, &l);
}

int pm_tcp_connect(const char *to, const char *bind_addr, unsigned timeout_ms, struct pm_err *err)
{
	struct pm_connect o = { .bind = bind_addr, .timeout_ms = timeout_ms, .wake_fd = -1 };

	return pm_tcp_connect_ex(to, &o, err);
}

int pm_tcp_listen_ex(const char *addr, bool mptcp, bool *mptcp_used, struct pm_err *err)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	int fd, one = 1, r;
	bool used;

	r = pm_parse_addr(addr, &ss, &sl, 0, err);
	if (r)
		return r;
	/* Non-blocking: accepting never blocks the thread that polls. */
	fd = stream_socket(ss.ss_family, mptcp, &used);
	if (fd < 0)
		return pm_err_set(err, errno, "socket: %s", strerror(errno));
	if (mptcp_used)
		*mptcp_used = used;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) || listen(fd, 64)) {
		r = pm_err_set(err, errno, "cannot listen on %s: %s", addr, strerror(errno));
		close(fd);
		return r;
	}
	return fd;
}

int pm_tcp_listen(const char *addr, struct pm_err *err)
{
	return pm_tcp_listen_ex(addr, false, NULL, err);
}

void pm_conn_init(struct pm_conn *c, int fd)
{
	*c = (struct pm_conn){ .fd = fd, .wake_fd = -1 };
	/* Every wait is a poll() with a deadline, never a blocking call. */
	if (fd >= 0)
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

void pm_conn_set_timeout(struct pm_conn *c, unsigned timeout_ms)
{
	c->timeout_ms = timeout_ms;
}

void pm_conn_set_recv_timeout(struct pm_conn *c, unsigned timeout_ms)
{
	pm_conn_set_timeout(c, timeout_ms);
}

void pm_conn_set_deadline(struct pm_conn *c, double deadline_ms)
{
	c->deadline = deadline_ms;
}

void pm_conn_set_wake(struct pm_conn *c, int wake_fd)
{
	c->wake_fd = wake_fd;
}

void pm_conn_shutdown(struct pm_conn *c)
{
	if (c->fd >= 0)
		shutdown(c->fd, SHUT_RDWR);
}

void pm_conn_close(struct pm_conn *c)
{
	pm_tls_conn_free(c);
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/* The deadline of an operation that starts now. */
static double op_deadline(const struct pm_conn *c)
{
	if (c->deadline)
		return c->deadline;
	return c->timeout_ms ? pm_now_ms() + c->timeout_ms : 0;
}

/* Waits until the socket is ready for events, the deadline passes, or the
 * wake fd fires (cancel). */
int pm_conn_wait(struct pm_conn *c, short events, double deadline, struct pm_err *err,
		 const char *what)
{
	for (;;) {
		struct pollfd p[2] = { { .fd = c->fd, .events = events },
				       { .fd = c->wake_fd, .events = POLLIN } };
		int ms = -1, n;

		if (deadline) {
			double left = deadline - pm_now_ms();
			if (left <= 0) {
				unsigned budget = c->deadline ? 0 : c->timeout_ms;
				if (budget)
					return pm_err_set(err, ETIMEDOUT, "%s: timed out after %u ms (peer silent)",
							  what, budget);
				return pm_err_set(err, ETIMEDOUT, "%s: timed out (peer silent)", what);
			}
			ms = (int)left + 1;
		}
		n = poll(p, c->wake_fd >= 0 ? 2 : 1, ms);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return pm_err_set(err, errno, "%s: poll: %s", what, strerror(errno));
		if (n > 0 && c->wake_fd >= 0 && (p[1].revents & POLLIN))
			return pm_err_set(err, ECANCELED, "%s: cancelled", what);
		if (n > 0 && p[0].revents)
			return 0;       /* ready, or an error the next call reports */
	}
}

int pm_conn_wait_readable(struct pm_conn *c, struct pm_err *err, const char *what)
{
	if (c->tls && pm_tls_pending(c))
		return 0;
	return pm_conn_wait(c, POLLIN, op_deadline(c), err, what);
}

static int io_error(int e, struct pm_err *err, const char *what)
{
	return pm_err_set(err, e, "%s: %s", what, strerror(e));
}

/* Drops n bytes from the front of iov. */
static void advance(struct iovec **iovp, int *iovcnt, size_t n)
{
	struct iovec *iov = *iovp;

	while (n > 0 && *iovcnt > 0) {
		if (n >= iov->iov_len) {
			n -= iov->iov_len;
			iov++;
			(*iovcnt)--;
		} else {
			iov->iov_base = (char *)iov->iov_base + n;
			iov->iov_len -= n;
			n = 0;
		}
	}
	while (*iovcnt > 0 && iov->iov_len == 0) {
		iov++;
		(*iovcnt)--;
	}
	*iovp = iov;
}

/* io_all over TLS: the records, then (sending) a flush of what the
 * userspace record layer still holds. */
/* A send woken (cancel, a failing migration) in the middle of a frame gets
 * a short grace to finish it, so the channel can still carry the ERROR that
 * says why; a peer that does not take it in time leaves the frame torn. */
#define GRACE_MS 300

static int wait_send(struct pm_conn *c, short events, double *deadline, bool *grace, bool moved,
		     struct pm_err *err, const char *what)
{
	int wake = c->wake_fd, r = 0;

	if (!*grace)
		r = pm_conn_wait(c, events, *deadline, err, what);
	if (!*grace && r == -ECANCELED && moved) {
		double g = pm_now_ms() + GRACE_MS;
		*grace = true;
		if (!*deadline || g < *deadline)
			*deadline = g;
		pm_err_clear(err);
	}
	if (*grace) {
		/* From the first wake-up on, only the frame's end or the
		 * grace's end count. */
		c->wake_fd = -1;
		r = pm_conn_wait(c, events, *deadline, err, what);
		c->wake_fd = wake;
	}
	return r;
}

static int tls_io_all(struct pm_conn *c, struct iovec *iov, int iovcnt, int send, double deadline,
		      struct pm_err *err, const char *what)
{
	bool moved = false, grace = false;

	advance(&iov, &iovcnt, 0);
	for (;;) {
		int cnt = iovcnt > IOV_MAX ? IOV_MAX : iovcnt;
		short ev = 0;
		ssize_t n;

		if (iovcnt)
			n = send ? pm_tls_send(c, iov, cnt, &ev, err, what) : pm_tls_recv(c, iov, cnt, &ev, err, what);
		else if (send)
			n = pm_tls_flush(c, &ev, err, what);
		else
			return 0;
		if (!iovcnt && !n)
			return 0;
		if (n == -EAGAIN)
			n = send ? wait_send(c, ev, &deadline, &grace, moved || !iovcnt, err, what) :
				   pm_conn_wait(c, ev, deadline, err, what);
		if (n < 0) {
			/* OpenSSL may hold half a record: nothing can follow. */
			if (send)
				c->torn = true;
			return n;
		}
		moved = moved || n > 0;
		advance(&iov, &iovcnt, n);
	}
}

static int io_all(struct pm_conn *c, struct iovec *iov, int iovcnt, int send, double deadline,
		  struct pm_err *err, const char *what)
{
	if (c->tls)
		return tls_io_all(c, iov, iovcnt, send, deadline, err, what);
	bool moved = false, grace = false;

	while (iovcnt > 0) {
		ssize_t n;
		int cnt = iovcnt > IOV_MAX ? IOV_MAX : iovcnt;

		if (send) {
			struct msghdr m = { .msg_iov = iov, .msg_iovlen = cnt };
			n = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
		} else {
			n = readv(c->fd, iov, cnt);
		}
		if (n < 0) {
			int e = errno, r;
			if (e == EINTR)
				continue;
			if (e == EAGAIN || e == EWOULDBLOCK) {
				r = send ? wait_send(c, POLLOUT, &deadline, &grace, moved, err, what) :
					   pm_conn_wait(c, POLLIN, deadline, err, what);
				if (!r)
					continue;
			} else {
				r = io_error(e, err, what);
			}
			/* A frame cut in the middle: nothing can follow it. */
			if (send && moved)
				c->torn = true;
			return r;
		}
		if (n == 0 && !send)
			return pm_err_set(err, ECONNRESET, "%s: connection closed by peer", what);
		moved = true;
		advance(&iov, &iovcnt, n);
	}
	return 0;
}

int pm_send_all(struct pm_conn *c, struct iovec *iov, int iovcnt, struct pm_err *err, const char *what)
{
	return io_all(c, iov, iovcnt, 1, op_deadline(c), err, what);
}

int pm_recv_all(struct pm_conn *c, struct iovec *iov, int iovcnt, struct pm_err *err, const char *what)
{
	return io_all(c, iov, iovcnt, 0, op_deadline(c), err, what);
}

bool pm_conn_can_sendfile(const struct pm_conn *c)
{
	/* Userspace TLS records need the bytes in userspace; kTLS does not. */
	return c->fd >= 0 && (!c->tls || pm_tls_kernel(c, true));
}

int pm_send_file(struct pm_conn *c, const void *head, size_t head_len, int fd, uint64_t off,
		 size_t len, struct pm_err *err, const char *what)
{
	double deadline = op_deadline(c);
	const uint8_t *h = head;
	bool moved = false, grace = false;
	off_t o = (off_t)off;

	if (c->tls) {
		/* kTLS: the header through the session, the payload by sendfile
		 * on the socket (the kernel makes the records of both). */
		struct iovec iov = { (void *)head, head_len };
		int r = head_len ? pm_send_all(c, &iov, 1, err, what) : 0;
		if (r)
			return r;
		head_len = 0;
		moved = true;
	}

	while (head_len || len) {
		ssize_t n;

		if (head_len)   /* MSG_MORE: the header rides with the payload */
			n = send(c->fd, h, head_len, MSG_NOSIGNAL | MSG_DONTWAIT | (len ? MSG_MORE : 0));
		else
			n = sendfile(c->fd, fd, &o, len > 0x7ffff000 ? 0x7ffff000 : len);
		if (n < 0) {
			int e = errno, r;
			if (e == EINTR)
				continue;
			if (e == EAGAIN || e == EWOULDBLOCK) {
				/* A frame begun gets the same grace as in io_all. */
				r = wait_send(c, POLLOUT, &deadline, &grace, moved, err, what);
				if (!r)
					continue;
			} else {
				r = io_error(e, err, what);
			}
			if (moved)
				c->torn = true;
			return r;
		}
		if (n == 0 && !head_len) {
			if (moved)
				c->torn = true;
			return pm_err_set(err, EIO, "%s: the file ended %zu bytes early", what, len);
		}
		moved = true;
		if (head_len) {
			h += n;
			head_len -= n;
		} else {
			len -= n;
		}
	}
	return 0;
}

int pm_send_buf(struct pm_conn *c, const void *buf, size_t len, struct pm_err *err, const char *what)
{
	struct iovec iov = { (void *)buf, len };
	return pm_send_all(c, &iov, 1, err, what);
}

int pm_recv_buf(struct pm_conn *c, void *buf, size_t len, struct pm_err *err, const char *what)
{
	struct iovec iov = { buf, len };
	return pm_recv_all(c, &iov, 1, err, what);
}

ssize_t pm_recv_some(struct pm_conn *c, void *buf, size_t len, struct pm_err *err, const char *what)
{
	double deadline = op_deadline(c);

	while (c->tls) {
		struct iovec iov = { buf, len };
		short ev = 0;
		ssize_t n = pm_tls_recv(c, &iov, 1, &ev, err, what);
		if (n != -EAGAIN)
			return n;
		n = pm_conn_wait(c, ev, deadline, err, what);
		if (n)
			return n;
	}
	for (;;) {
		ssize_t r = recv(c->fd, buf, len, MSG_DONTWAIT);
		if (r > 0)
			return r;
		if (r == 0)
			return pm_err_set(err, ECONNRESET, "%s: connection closed by peer", what);
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return io_error(errno, err, what);
		int w = pm_conn_wait(c, POLLIN, deadline, err, what);
		if (w)
			return w;
	}
}

ssize_t pm_recv_nowait(struct pm_conn *c, struct iovec *iov, int iovcnt, struct pm_err *err,
		       const char *what)
{
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = iovcnt > IOV_MAX ? IOV_MAX : iovcnt };

	if (c->tls) {
		short ev;
		ssize_t n = pm_tls_recv(c, iov, m.msg_iovlen, &ev, err, what);
		return n == -EAGAIN ? 0 : n;
	}
	for (;;) {
		ssize_t r = recvmsg(c->fd, &m, MSG_DONTWAIT);
		if (r > 0)
			return r;
		if (r == 0)
			return pm_err_set(err, ECONNRESET, "%s: connection closed by peer", what);
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return 0;
		return io_error(errno, err, what);
	}
}

int pm_send_frame_until(struct pm_conn *c, uint32_t type, const void *body, uint32_t len,
			double deadline, struct pm_err *err)
{
	uint8_t hdr[PM_FRAME_HDR_LEN];
	struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)body, len } };
	char what[64];

	pm_encode_hdr(hdr, type, len);
	snprintf(what, sizeof(what), "sending %s", pm_frame_name(type));
	return io_all(c, iov, len ? 2 : 1, 1, deadline, err, what);
}

int pm_send_frame(struct pm_conn *c, uint32_t type, const void *body, uint32_t len, struct pm_err *err)
{
	return pm_send_frame_until(c, type, body, len, op_deadline(c), err);
}

void pm_send_error_frame(struct pm_conn *c, int code, const char *msg)
{
	uint8_t body[PM_ERROR_FIXED_LEN + PM_MAX_ERROR_LEN];
	uint8_t hdr[PM_FRAME_HDR_LEN];
	size_t ml = strlen(msg);

	if (c->fd < 0 || c->torn)
		return;
	if (ml > PM_MAX_ERROR_LEN)
		ml = PM_MAX_ERROR_LEN;
	pm_put32(body, code < 0 ? -code : code);
	pm_put32(body + 4, ml);
	memcpy(body + PM_ERROR_FIXED_LEN, msg, ml);
	pm_encode_hdr(hdr, PM_FR_ERROR, PM_ERROR_FIXED_LEN + ml);
	/* One attempt, never blocking on a peer that stopped reading. */
	struct iovec iov[2] = { { hdr, sizeof(hdr) }, { body, PM_ERROR_FIXED_LEN + ml } };
	if (c->tls) {
		short ev;
		ssize_t n = pm_tls_send(c, iov, 2, &ev, NULL, "");
		if (n != (ssize_t)(sizeof(hdr) + PM_ERROR_FIXED_LEN + ml) || pm_tls_flush(c, &ev, NULL, ""))
			c->torn = true;
		return;
	}
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = 2 };
	ssize_t n = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
	if (n > 0 && (size_t)n < sizeof(hdr) + PM_ERROR_FIXED_LEN + ml)
		c->torn = true;
}
