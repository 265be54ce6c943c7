/* SPDX-License-Identifier: MIT */
/* The guest-physical layout pmvm sets up and the boot-information block it
 * writes for the guest.  Shared by pmvm and the freestanding guests, so it
 * uses nothing but <stdint.h>.
 *
 *   0x0000_1000  GDT (and a 64-bit TSS at PMVM_TSS_GPA)
 *   0x0000_2000  struct pmvm_bootinfo (also passed in RDI)
 *   0x0000_3000  PML4
 *   0x0000_4000  PDPT
 *   0x0000_5000  page directories, one per GiB identity mapped (2 MiB pages)
 *   below 0x9f000 stacks, vCPU i's stack top = PMVM_STACK_TOP - i * PMVM_STACK_SIZE
 *   0x0010_0000  guest image (flat binary, or ELF segments at their addresses)
 *   bootinfo.free_start .. bootinfo.low_mem_end: free RAM for the guest
 *
 * A guest starts in 64-bit long mode, CPL 0, interrupts disabled, with
 * RIP = entry, RDI = PMVM_BOOTINFO_GPA, RSI = vCPU index, RSP = its stack top.
 */
#ifndef PMVM_BOOTINFO_H
#define PMVM_BOOTINFO_H

#include <stdint.h>

#define PMVM_GDT_GPA        0x1000ull
#define PMVM_TSS_GPA        0x1800ull
#define PMVM_BOOTINFO_GPA   0x2000ull
#define PMVM_PML4_GPA       0x3000ull
#define PMVM_PDPT_GPA       0x4000ull
#define PMVM_PD_GPA         0x5000ull
#define PMVM_MAX_PD         64u          /* identity map of at most 64 GiB */
#define PMVM_STACK_TOP      0x9f000ull
#define PMVM_STACK_SIZE     0x4000ull
#define PMVM_MAX_VCPUS      16u
#define PMVM_IMAGE_GPA      0x100000ull

/* RAM above 3 GiB is placed at 4 GiB and up, leaving room for the LAPIC,
 * IOAPIC and KVM's TSS/identity-map pages below 4 GiB. */
#define PMVM_LOW_MEM_MAX    0xc0000000ull
#define PMVM_HIGH_MEM_GPA   0x100000000ull

/* The virtio-blk device's virtio-mmio window (in the hole below 4 GiB)
 * and its interrupt line, when pmvm has a --disk. */
#define PMVM_VIRTIO_BLK_GPA 0xd0000000ull
#define PMVM_VIRTIO_BLK_IRQ 5u

/* I/O ports. */
#define PMVM_SERIAL_PORT    0x3f8u
#define PMVM_EXIT_PORT      0xf4u        /* write: pmvm exits with value & 0xff */
#define PMVM_HEARTBEAT_PORT 0xf5u        /* write: the guest is alive (any value) */
#define PMVM_KBD_CMD_PORT   0x64u        /* write 0xfe: reset (pmvm reports it as a failure) */
#define PMVM_KBD_CMD_RESET  0xfeu

#define PMVM_BOOT_MAGIC     0x544f4f424d564d50ull /* "PMVMBOOT" */
#define PMVM_BOOT_VERSION   2u         /* 2: virtio-blk */
#define PMVM_MAX_PARAMS     16u
#define PMVM_PARAM_KEY_LEN  16u

struct pmvm_param {
	char key[PMVM_PARAM_KEY_LEN];  /* NUL-terminated */
	uint64_t value;
};

struct pmvm_bootinfo {
	uint64_t magic;
	uint32_t version;
	uint32_t nvcpus;
	uint64_t mem_bytes;            /* all guest RAM */
	uint64_t low_mem_end;          /* RAM is contiguous in [0, low_mem_end) */
	uint64_t free_start;           /* first free byte after the image, page aligned */
	uint64_t tsc_khz;              /* 0 when unknown */
	uint32_t serial_port;
	uint32_t exit_port;
	uint32_t nparams;
	uint32_t reserved;
	struct pmvm_param params[PMVM_MAX_PARAMS];
	uint64_t virtio_blk_base;      /* version 2: the disk's virtio-mmio window, 0: no disk */
	uint32_t virtio_blk_irq;
	uint32_t reserved2;
};

#endif
