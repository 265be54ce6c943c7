/* SPDX-License-Identifier: MIT */
/* The Linux x86 boot protocol (Documentation/arch/x86/boot.rst), 64-bit
 * entry: a bzImage's setup header validated, the protected-mode kernel
 * placed at 1 MiB, the initrd at the top of low RAM, the command line, and
 * the boot_params ("zero page") with the e820 map.  Pure: works on a
 * buffer that stands for guest memory, so it is unit-tested without KVM.
 *
 * Guest-physical layout of a Linux boot (besides pmvm's GDT and identity
 * page tables at 0x1000.., see bootinfo.h):
 *   0x0005_0000  boot_params (struct pmvm_boot_params' 4 KiB)
 *   0x0005_1000  command line (at most the kernel's cmdline_size)
 *   0x0009_fc00  MP table (mptable.h), in the reserved EBDA
 *   0x0010_0000  protected-mode kernel, entered at +0x200 with RSI = boot_params
 *   top of low RAM  initrd, page aligned, below initrd_addr_max */
#ifndef PMVM_BZIMAGE_H
#define PMVM_BZIMAGE_H

#include <stddef.h>
#include <stdint.h>
#include <pmigrate/error.h>

#include "e820.h"

#define PMVM_BOOT_PARAMS_GPA 0x50000ull
#define PMVM_CMDLINE_GPA     0x51000ull
#define PMVM_CMDLINE_MAX     4096u
#define PMVM_KERNEL_GPA      0x100000ull

/* Offsets in the boot_params page (and in the bzImage, whose first page
 * holds the setup header at the same place). */
#define BP_E820_ENTRIES   0x1e8
#define BP_SETUP_SECTS    0x1f1
#define BP_BOOT_FLAG      0x1fe
#define BP_JUMP           0x200
#define BP_HEADER         0x202
#define BP_VERSION        0x206
#define BP_TYPE_OF_LOADER 0x210
#define BP_LOADFLAGS      0x211
#define BP_CODE32_START   0x214
#define BP_RAMDISK_IMAGE  0x218
#define BP_RAMDISK_SIZE   0x21c
#define BP_HEAP_END_PTR   0x224
#define BP_CMD_LINE_PTR   0x228
#define BP_INITRD_MAX     0x22c
#define BP_KERNEL_ALIGN   0x230
#define BP_RELOCATABLE    0x234
#define BP_XLOADFLAGS     0x236
#define BP_CMDLINE_SIZE   0x238
#define BP_INIT_SIZE      0x260
#define BP_E820_TABLE     0x2d0
#define BP_E820_MAX       128u

#define XLF_KERNEL_64     0x0001
#define LOADED_HIGH       0x01

/* What the setup header says, after validation. */
struct pmvm_kernel_info {
	uint16_t version;              /* boot protocol, e.g. 0x020f */
	size_t setup_len;              /* real-mode part, (setup_sects + 1) * 512 */
	size_t kernel_len;             /* protected-mode part, copied to PMVM_KERNEL_GPA */
	uint32_t init_size;            /* memory the kernel needs from where it runs */
	uint32_t initrd_max;           /* highest byte an initrd may occupy */
	uint32_t cmdline_max;          /* longest command line, without the NUL */
	uint64_t entry;                /* 64-bit entry: PMVM_KERNEL_GPA + 0x200 */
};

/* Checks that file[0, len) is a bzImage this loader can start: boot
 * signature, "HdrS", protocol >= 2.12 with a 64-bit entry (XLF_KERNEL_64),
 * loaded high, and a protected-mode part inside the file. */
int pmvm_bzimage_parse(const uint8_t *file, size_t len, struct pmvm_kernel_info *ki,
		       struct pm_err *err);

struct pmvm_linux_boot {
	const uint8_t *kernel;         /* the bzImage file */
	size_t kernel_len;
	const uint8_t *initrd;         /* NULL: none */
	size_t initrd_len;
	const char *cmdline;
	const struct pmvm_e820 *map;   /* RAM layout (e820.h) */
};

/* Where things went: for messages and tests. */
struct pmvm_linux_layout {
	uint64_t entry;
	uint64_t initrd_gpa, initrd_len;
	uint64_t kernel_end;           /* PMVM_KERNEL_GPA + init_size */
};

/* Validates everything first (image, command line length, that the kernel
 * and initrd fit the RAM described by map in mem[0, low_len)), then copies
 * the kernel, the initrd and the command line into mem and writes the
 * boot_params page.  Nothing is written unless all of it fits; with mem
 * NULL only the checks run. */
int pmvm_linux_load(const struct pmvm_linux_boot *b, uint8_t *mem, uint64_t low_len,
		    struct pmvm_linux_layout *out, struct pm_err *err);

#endif
