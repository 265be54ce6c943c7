/* SPDX-License-Identifier: MIT */
/* The libFuzzer targets that drive the real code (fuzz_incoming.c,
 * fuzz_state.c, fuzz_tls.c): their entry points without libFuzzer and what
 * each saw in its last input, for the replay tests (tests/fuzz/). */
#ifndef PM_FUZZ_TARGETS_H
#define PM_FUZZ_TARGETS_H

#include <stddef.h>
#include <stdint.h>

/* fuzz_incoming.c: the guest is 2 regions of 64 and 16 pages (the second
 * at 4 GiB); input: [flags: nch - 1 in the low 2 bits][channel][len16][bytes]...
 * With FUZZ_IN_DISK in the flags byte the guest also has a disk: an image
 * (a memfd) of FUZZ_IN_DISK_BYTES in blocks of FUZZ_IN_DISK_BLOCK, the last
 * one partial, whose size must not change. */
#define FUZZ_IN_REGION0_PAGES 64
#define FUZZ_IN_REGION1_PAGES 16
#define FUZZ_IN_REGION1_GPA 0x100000000ull
#define FUZZ_IN_DISK 4u
#define FUZZ_IN_DISK_BLOCK 16384u
#define FUZZ_IN_DISK_BYTES (2 * FUZZ_IN_DISK_BLOCK + 8704u)
struct fuzz_incoming_result {
	int rc;                 /* pm_incoming_run() */
	char msg[512];
	unsigned loads, resumes, rejected;
	uint64_t pages;
	/* With a disk: its image after the run, and the bytes allocated to it. */
	uint8_t disk[FUZZ_IN_DISK_BYTES];
	uint64_t disk_allocated;
};
extern struct fuzz_incoming_result fuzz_incoming_last;

/* fuzz_state.c: input [decoder][blob]; decoders below. */
enum { FUZZ_STATE_PMVM, FUZZ_STATE_SYNVM, FUZZ_STATE_SYNVM_DISK, FUZZ_STATE_NDECODERS };
#define FUZZ_STATE_SYNVM_MEM (1u << 20)
struct fuzz_state_result {
	int rc;                 /* the decoder's */
	char msg[512];          /* its message */
};
extern struct fuzz_state_result fuzz_state_last;
/* A synthetic VM's state as its save_state makes it (for seeds). */
int fuzz_state_synvm_blob(int disk, void **buf, size_t *len);

/* fuzz_tls.c: input [mode: even PSK, odd X.509][what a client sends]. */
#define FUZZ_TLS_PSK_ID "pmigrate-fuzz"
#define FUZZ_TLS_PSK_HEX "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
struct fuzz_tls_result {
	unsigned rejected;      /* connections the destination refused */
	char reason[256];       /* its log line */
};
extern struct fuzz_tls_result fuzz_tls_last;
/* Where fuzz_tls.c keeps its credentials (made at the first input). */
const char *fuzz_tls_dir(void);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
