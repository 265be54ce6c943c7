/* SPDX-License-Identifier: MIT */
/* A fault injector for migration channels: a TCP proxy that understands
 * the frame stream (docs/protocol.md) in both directions and, on a chosen
 * connection, at a chosen moment -- a frame type and its count, a byte
 * count, a time, or a signal from the test -- drops, delays, corrupts a
 * frame, or cuts, closes or stalls the channel.  Used in-process by the
 * engine tests and as the `pmfault` command by the integration tests and the
 * soak.  Plain-text channels only (it must see the frames). */
#ifndef TESTS_FAULT_FAULT_H
#define TESTS_FAULT_FAULT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum fp_dir {
	FP_TO_DEST,             /* bytes from the source (the proxy's client) */
	FP_TO_SRC,              /* bytes from the destination */
};

enum fp_action {
	FP_DROP,                /* the frame is not forwarded */
	FP_DELAY,               /* the frame (and all behind it) waits delay_ms */
	FP_CORRUPT,             /* the frame's type becomes 0xeeeeeeee: an invalid frame */
	FP_CUT,                 /* both sides are reset, at once */
	FP_CLOSE,               /* both sides see an orderly close */
	FP_STALL,               /* forwarding in this direction stops for good: the
				 * sender's window fills, nothing is closed */
	FP_BLACKHOLE,           /* both directions stall: a link gone dark */
};

struct fp_rule {
	unsigned conn;          /* 1-based accepted connection; 0: every one */
	enum fp_dir dir;
	/* Trigger: every condition given must hold. */
	uint32_t frame;         /* at a frame of this type (0: at any frame) */
	unsigned nth;           /* the nth such frame (1-based; 0: each one) */
	uint64_t bytes;         /* once this many bytes went this way on the connection */
	unsigned after_ms;      /* this long after the connection opened */
	bool on_signal;         /* only after fp_fire() */
	enum fp_action action;
	unsigned delay_ms;
};

struct fp_proxy;

/* Listens on listen ("127.0.0.1:0" picks a port) and forwards every
 * connection to target.  Events ("conn 1 to-src: dropped DONE") go to log
 * (may be NULL), one per line. */
int fp_start(struct fp_proxy **out, const char *listen, const char *target,
	     const struct fp_rule *rules, unsigned nrules, FILE *log);
/* "127.0.0.1:40123" */
const char *fp_address(const struct fp_proxy *p);
/* Arms the rules that wait for a signal. */
void fp_fire(struct fp_proxy *p);
/* How many times rules acted so far. */
unsigned fp_hits(struct fp_proxy *p);
/* Closes every connection and the listener; joins the threads. */
void fp_stop(struct fp_proxy *p);

/* "dir=to-src,frame=DONE,nth=1,action=drop" (keys: conn, dir, frame, nth,
 * bytes, ms, signal, action, delay); frame names as in protocol.md. */
int fp_parse_rule(const char *s, struct fp_rule *r, char *why, size_t wl);

#endif
