/* SPDX-License-Identifier: MIT */
/* The pmvm command line, parsed and validated before anything starts. */
#ifndef PMVM_CONFIG_H
#define PMVM_CONFIG_H

#include <stdint.h>
#include <pmigrate/error.h>
#include <pmigrate/migrate.h>
#include <pmigrate/guestmem.h>

#include "bootinfo.h"

#define PMVM_MIN_MEM (4ull << 20)
#define PMVM_MAX_MEM ((uint64_t)(PMVM_MAX_PD - 1) << 30)   /* the 3-4 GiB hole is mapped too */
#define PMVM_MAX_LISTEN 64u
/* What pmvm's machine needs on every Linux command line: the console on
 * COM1, a reset through the keyboard controller (pmvm reports it), a
 * panic that resets at once instead of hanging, and no PCI (pmvm has none;
 * probing it costs a VM exit per config-space access). */
#define PMVM_LINUX_CMDLINE "console=ttyS0 reboot=k panic=-1 pci=off"
#define PMVM_MIN_LINUX_MEM (128ull << 20)

struct pmvm_config {
	uint64_t mem_bytes;            /* default 64 MiB */
	enum pm_mem_kind mem_kind;     /* default anon */
	bool prealloc;                 /* --prealloc: all RAM allocated at start */
	unsigned vcpus;                /* default 1 */
	const char *guest;             /* a freestanding guest, or: */
	const char *kernel;            /* a Linux bzImage (exactly one of the two) */
	const char *initrd;            /* with --kernel: optional */
	const char *append;            /* with --kernel: added to PMVM_LINUX_CMDLINE */
	const char *control;           /* optional: no control socket without it */
	const char *serial;            /* NULL: stdout */
	const char *dump_at_pause;
	const char *dump_on_resume;
	const char *kvm_path;          /* default /dev/kvm */
	unsigned migration_nice;       /* 0..19: nice of every thread but the vCPUs' */
	/* --disk FILE[,size=SIZE][,block=SIZE]: a virtio-blk disk (a raw
	 * image, created sparse when missing and size= is given). */
	char disk_path[4096];
	uint64_t disk_size, disk_block;
	char *incoming_buf;            /* owned copy of --incoming, split in place */
	const char *listen[PMVM_MAX_LISTEN];
	unsigned nlisten;              /* > 0: wait for an incoming migration */
	struct pm_tls_params tls;      /* --tls-creds, --tls-psk, --tls-authz, --no-ktls */
	bool insecure;                 /* --insecure: plain TCP on a non-loopback address */
	struct pmvm_param params[PMVM_MAX_PARAMS];
	unsigned nparams;
};

/* "64M", "1G", "1GiB", "4096", "2 MiB" is not accepted (no spaces). */
int pmvm_parse_size(const char *s, uint64_t *out, struct pm_err *err);
/* argv[1] must be "run".  On error err says what was wrong. */
int pmvm_parse_args(int argc, char *const argv[], struct pmvm_config *c, struct pm_err *err);
void pmvm_config_free(struct pmvm_config *c);
/* Help text. */
const char *pmvm_usage(void);

#endif
