/* SPDX-License-Identifier: MIT */
/* TCP plumbing for the channels: address parsing, connect/listen, and
 * all-or-error vectored I/O with timeouts, over plain TCP or TLS. */
#ifndef PM_ENGINE_NET_H
#define PM_ENGINE_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <pmigrate/error.h>
#include "engine/clock.h"

/* "host:port", "[v6]:port"; with allow_no_port, "host" alone (port 0). */
int pm_parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len,
		  int allow_no_port, struct pm_err *err);
void pm_format_addr(const struct sockaddr *sa, char *buf, size_t len);
/* The host part of "host:port" / "[v6]:port". */
void pm_addr_host(const char *addr, char *host, size_t len);
/* 127.0.0.0/8, ::1 or an IPv4-mapped 127/8 address. */
bool pm_addr_is_loopback(const struct sockaddr *sa);

/* Connects to `to` (from `bind` if non-NULL) within timeout_ms. */
int pm_tcp_connect(const char *to, const char *bind, unsigned timeout_ms, struct pm_err *err);
struct pm_connect {
	const char *bind;       /* local address, or NULL */
	unsigned timeout_ms;
	int wake_fd;            /* readable: give up with -ECANCELED; -1: none */
	bool mptcp;             /* Multipath TCP where the kernel offers it */
	bool mptcp_used;        /* out: it did */
};
int pm_tcp_connect_ex(const char *to, struct pm_connect *o, struct pm_err *err);
/* A connected socket speaks Multipath TCP (it did not fall back to TCP). */
bool pm_fd_is_mptcp(int fd);
int pm_tcp_listen(const char *addr, struct pm_err *err);
/* With mptcp, a Multipath TCP listener where the kernel offers it (it also
 * takes plain TCP clients); *mptcp_used says whether it is one. */
int pm_tcp_listen_ex(const char *addr, bool mptcp, bool *mptcp_used, struct pm_err *err);
/* The socket options channels use: no Nagle, and TCP_USER_TIMEOUT and
 * keepalive that end a connection whose peer vanished within about
 * timeout_ms (0: kernel defaults). */
int pm_tcp_tune(int fd, unsigned timeout_ms);

/* A channel's transport: every byte of a channel goes through one of
 * these, so the engine does not care whether it is plain TCP or TLS. */
struct pm_conn {
	int fd;                 /* -1: not connected; non-blocking */
	unsigned timeout_ms;    /* budget of one operation (0: none) ... */
	double deadline;        /* ... unless this absolute time (pm_now_ms) is set */
	int wake_fd;            /* readable: every wait ends with -ECANCELED; -1: none */
	bool torn;              /* a send stopped inside a frame: no frame can follow */
	struct pm_tls_conn *tls; /* TLS session (engine/tls.h); NULL: plain TCP */
};

/* Takes ownership of fd (which may be -1) and makes it non-blocking: every
 * operation below waits with poll() until its deadline. */
void pm_conn_init(struct pm_conn *c, int fd);
/* Each operation (a whole send or receive) must finish within timeout_ms
 * of its start, else it fails with -ETIMEDOUT. */
void pm_conn_set_timeout(struct pm_conn *c, unsigned timeout_ms);
/* Every operation must finish by this absolute time (0: back to the
 * per-operation budget). */
void pm_conn_set_deadline(struct pm_conn *c, double deadline_ms);
/* A file descriptor whose readability cancels every wait (-1: none). */
void pm_conn_set_wake(struct pm_conn *c, int wake_fd);
/* Wakes any thread blocked on the connection; it stays open. */
void pm_conn_shutdown(struct pm_conn *c);
void pm_conn_close(struct pm_conn *c);
/* Same as pm_conn_set_timeout (an older name). */
void pm_conn_set_recv_timeout(struct pm_conn *c, unsigned timeout_ms);
/* Waits until something can be read, within the operation's deadline. */
int pm_conn_wait_readable(struct pm_conn *c, struct pm_err *err, const char *what);
/* Waits for poll events on the socket until deadline (absolute, pm_now_ms;
 * 0: none) or the wake fd fires. */
int pm_conn_wait(struct pm_conn *c, short events, double deadline, struct pm_err *err,
		 const char *what);

/* Send/receive everything or fail; they may modify iov. */
int pm_send_all(struct pm_conn *c, struct iovec *iov, int iovcnt, struct pm_err *err, const char *what);
int pm_recv_all(struct pm_conn *c, struct iovec *iov, int iovcnt, struct pm_err *err, const char *what);
int pm_send_buf(struct pm_conn *c, const void *buf, size_t len, struct pm_err *err, const char *what);
int pm_recv_buf(struct pm_conn *c, void *buf, size_t len, struct pm_err *err, const char *what);
/* Receives at least one byte, at most len: the count, or -errno. */
ssize_t pm_recv_some(struct pm_conn *c, void *buf, size_t len, struct pm_err *err, const char *what);
/* One receive that never waits: the count (0: nothing there yet), or
 * -errno (a closed connection is -ECONNRESET). */
ssize_t pm_recv_nowait(struct pm_conn *c, struct iovec *iov, int iovcnt, struct pm_err *err,
		       const char *what);

/* A frame whose payload comes from a file: head (the frame header and
 * fixed part) then len bytes of fd at off, sent by sendfile() -- the
 * kernel moves page-cache pages into the socket, no copy through user
 * space.  Everything or an error ("file ended early" if fd is shorter). */
int pm_send_file(struct pm_conn *c, const void *head, size_t head_len, int fd, uint64_t off,
		 size_t len, struct pm_err *err, const char *what);
/* True when payloads can go by pm_send_file (plain TCP; a TLS session
 * without kernel TLS cannot). */
bool pm_conn_can_sendfile(const struct pm_conn *c);

/* Sends a frame: header + body. */
int pm_send_frame(struct pm_conn *c, uint32_t type, const void *body, uint32_t len, struct pm_err *err);
/* The same by an absolute deadline, without reading the connection's
 * budget: for a thread that sends while another one receives on it. */
int pm_send_frame_until(struct pm_conn *c, uint32_t type, const void *body, uint32_t len,
			double deadline, struct pm_err *err);
/* Sends an ERROR frame: one attempt that never blocks; nothing on a torn
 * connection. */
void pm_send_error_frame(struct pm_conn *c, int code, const char *msg);


#endif
