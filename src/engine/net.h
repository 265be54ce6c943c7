/* SPDX-License-Identifier: MIT */
/* TCP plumbing for the channels: address parsing, connect/listen, and
 * all-or-error vectored I/O with timeouts. */
#ifndef PM_ENGINE_NET_H
#define PM_ENGINE_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <pmigrate/error.h>

/* "host:port", "[v6]:port"; with allow_no_port, "host" alone (port 0). */
int pm_parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len,
		  int allow_no_port, struct pm_err *err);
void pm_format_addr(const struct sockaddr *sa, char *buf, size_t len);

/* Connects to `to` (from `bind` if non-NULL) within timeout_ms. */
int pm_tcp_connect(const char *to, const char *bind, unsigned timeout_ms, struct pm_err *err);
int pm_tcp_listen(const char *addr, struct pm_err *err);
/* Applies per-call send/receive timeouts and the socket options channels use. */
int pm_tcp_tune(int fd, unsigned timeout_ms);

/* Send/receive everything or fail; they may modify iov. */
int pm_send_all(int fd, struct iovec *iov, int iovcnt, struct pm_err *err, const char *what);
int pm_recv_all(int fd, struct iovec *iov, int iovcnt, struct pm_err *err, const char *what);
int pm_send_buf(int fd, const void *buf, size_t len, struct pm_err *err, const char *what);
int pm_recv_buf(int fd, void *buf, size_t len, struct pm_err *err, const char *what);

/* Sends a frame: header + body. */
int pm_send_frame(int fd, uint32_t type, const void *body, uint32_t len, struct pm_err *err);
/* Sends an ERROR frame, best effort (never blocks long). */
void pm_send_error_frame(int fd, int code, const char *msg);

double pm_now_ms(void);

#endif
