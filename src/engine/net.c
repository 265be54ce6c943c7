/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "engine/net.h"
#include "engine/protocol.h"

double pm_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

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

int pm_tcp_tune(int fd, unsigned timeout_ms)
{
	int one = 1;
	struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) ||
	    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)))
		return -errno;
	return 0;
}

int pm_tcp_connect(const char *to, const char *bind_addr, unsigned timeout_ms, struct pm_err *err)
{
	struct sockaddr_storage ss, bs;
	socklen_t sl, bl;
	int fd, r, soerr = 0;
	socklen_t el = sizeof(soerr);
	struct pollfd pfd;

	r = pm_parse_addr(to, &ss, &sl, 0, err);
	if (r)
		return r;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return pm_err_set(err, errno, "socket: %s", strerror(errno));
	if (bind_addr) {
		r = pm_parse_addr(bind_addr, &bs, &bl, 1, err);
		if (r)
			goto fail;
		if (bs.ss_family != ss.ss_family) {
			r = pm_err_set(err, EINVAL, "bind address %s and destination %s are of different families",
				       bind_addr, to);
			goto fail;
		}
		if (bind(fd, (struct sockaddr *)&bs, bl)) {
			r = pm_err_set(err, errno, "cannot bind to %s: %s", bind_addr, strerror(errno));
			goto fail;
		}
	}
	if (connect(fd, (struct sockaddr *)&ss, sl) && errno != EINPROGRESS) {
		r = pm_err_set(err, errno, "cannot connect to %s: %s", to, strerror(errno));
		goto fail;
	}
	pfd = (struct pollfd){ .fd = fd, .events = POLLOUT };
	r = poll(&pfd, 1, timeout_ms);
	if (r == 0) {
		r = pm_err_set(err, ETIMEDOUT, "cannot connect to %s: timed out after %u ms", to, timeout_ms);
		goto fail;
	}
	if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &el) || soerr) {
		int e = soerr ? soerr : errno;
		r = pm_err_set(err, e, "cannot connect to %s: %s", to, strerror(e));
		goto fail;
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	pm_tcp_tune(fd, timeout_ms);
	return fd;
fail:
	close(fd);
	return r;
}

int pm_tcp_listen(const char *addr, struct pm_err *err)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	int fd, one = 1, r;

	r = pm_parse_addr(addr, &ss, &sl, 0, err);
	if (r)
		return r;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return pm_err_set(err, errno, "socket: %s", strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) || listen(fd, 64)) {
		r = pm_err_set(err, errno, "cannot listen on %s: %s", addr, strerror(errno));
		close(fd);
		return r;
	}
	return fd;
}

void pm_conn_init(struct pm_conn *c, int fd)
{
	c->fd = fd;
}

void pm_conn_shutdown(struct pm_conn *c)
{
	if (c->fd >= 0)
		shutdown(c->fd, SHUT_RDWR);
}

void pm_conn_close(struct pm_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

void pm_conn_set_recv_timeout(struct pm_conn *c, unsigned timeout_ms)
{
	struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };

	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static int io_error(int e, struct pm_err *err, const char *what)
{
	if (e == EAGAIN || e == EWOULDBLOCK)
		return pm_err_set(err, ETIMEDOUT, "%s: timed out (peer silent)", what);
	return pm_err_set(err, e, "%s: %s", what, strerror(e));
}

static int io_all(struct pm_conn *c, struct iovec *iov, int iovcnt, int send, struct pm_err *err,
		  const char *what)
{
	while (iovcnt > 0) {
		ssize_t n;
		int cnt = iovcnt > IOV_MAX ? IOV_MAX : iovcnt;

		if (send) {
			struct msghdr m = { .msg_iov = iov, .msg_iovlen = cnt };
			n = sendmsg(c->fd, &m, MSG_NOSIGNAL);
		} else {
			n = readv(c->fd, iov, cnt);
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return io_error(errno, err, what);
		}
		if (n == 0 && !send)
			return pm_err_set(err, ECONNRESET, "%s: connection closed by peer", what);
		while (n > 0 && iovcnt > 0) {
			if ((size_t)n >= iov->iov_len) {
				n -= iov->iov_len;
				iov++;
				iovcnt--;
			} else {
				iov->iov_base = (char *)iov->iov_base + n;
				iov->iov_len -= n;
				n = 0;
			}
		}
		while (iovcnt > 0 && iov->iov_len == 0) {
			iov++;
			iovcnt--;
		}
	}
	return 0;
}

int pm_send_all(struct pm_conn *c, struct iovec *iov, int iovcnt, struct pm_err *err, const char *what)
{
	return io_all(c, iov, iovcnt, 1, err, what);
}

int pm_recv_all(struct pm_conn *c, struct iovec *iov, int iovcnt, struct pm_err *err, const char *what)
{
	return io_all(c, iov, iovcnt, 0, err, what);
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
	for (;;) {
		ssize_t r = recv(c->fd, buf, len, 0);
		if (r > 0)
			return r;
		if (r == 0)
			return pm_err_set(err, ECONNRESET, "%s: connection closed by peer", what);
		if (errno != EINTR)
			return io_error(errno, err, what);
	}
}

int pm_send_frame(struct pm_conn *c, uint32_t type, const void *body, uint32_t len, struct pm_err *err)
{
	uint8_t hdr[PM_FRAME_HDR_LEN];
	struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)body, len } };
	char what[64];

	pm_encode_hdr(hdr, type, len);
	snprintf(what, sizeof(what), "sending %s", pm_frame_name(type));
	return pm_send_all(c, iov, len ? 2 : 1, err, what);
}

void pm_send_error_frame(struct pm_conn *c, int code, const char *msg)
{
	uint8_t body[PM_ERROR_FIXED_LEN + PM_MAX_ERROR_LEN];
	size_t ml = strlen(msg);
	int fl;

	if (c->fd < 0)
		return;
	fl = fcntl(c->fd, F_GETFL);
	if (ml > PM_MAX_ERROR_LEN)
		ml = PM_MAX_ERROR_LEN;
	pm_put32(body, code < 0 ? -code : code);
	pm_put32(body + 4, ml);
	memcpy(body + PM_ERROR_FIXED_LEN, msg, ml);
	/* Never block on a peer that stopped reading. */
	fcntl(c->fd, F_SETFL, fl | O_NONBLOCK);
	pm_send_frame(c, PM_FR_ERROR, body, PM_ERROR_FIXED_LEN + ml, NULL);
	fcntl(c->fd, F_SETFL, fl);
}
