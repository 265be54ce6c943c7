// SPDX-License-Identifier: MIT
#include "bzimage.h"

#include <errno.h>
#include <string.h>

#define HDRS_MAGIC 0x53726448u   /* "HdrS" */
#define PAGE 4096ull

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t le32(const uint8_t *p) { return (uint32_t)le16(p) | (uint32_t)le16(p + 2) << 16; }
static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)v); put16(p + 2, (uint16_t)(v >> 16)); }

#define BP_PREF_ADDRESS 0x258

int pmvm_bzimage_parse(const uint8_t *f, size_t len, struct pmvm_kernel_info *ki,
		       struct pm_err *err)
{
	unsigned sects;

	memset(ki, 0, sizeof(*ki));
	if (len < 0x1000)
		return pm_err_set(err, EINVAL, "not a bzImage: %zu bytes, too short for a setup header", len);
	if (le16(f + BP_BOOT_FLAG) != 0xaa55 || le32(f + BP_HEADER) != HDRS_MAGIC)
		return pm_err_set(err, EINVAL, "not a bzImage: no boot signature or \"HdrS\" header");
	ki->version = le16(f + BP_VERSION);
	if (ki->version < 0x020c)
		return pm_err_set(err, ENOTSUP, "boot protocol %u.%02u is older than 2.12: no 64-bit entry",
				  ki->version >> 8, ki->version & 0xff);
	if (!(le16(f + BP_XLOADFLAGS) & XLF_KERNEL_64))
		return pm_err_set(err, ENOTSUP, "this kernel has no 64-bit entry point (XLF_KERNEL_64 clear): "
				  "pmvm starts kernels in long mode only");
	if (!(f[BP_LOADFLAGS] & LOADED_HIGH))
		return pm_err_set(err, ENOTSUP, "not a bzImage: a zImage loaded low");
	sects = f[BP_SETUP_SECTS] ? f[BP_SETUP_SECTS] : 4;
	ki->setup_len = (size_t)(sects + 1) * 512;
	if (ki->setup_len >= len)
		return pm_err_set(err, EINVAL, "bzImage truncated: %zu bytes, the setup part alone is %zu",
				  len, ki->setup_len);
	if (0x202u + f[BP_JUMP + 1] > ki->setup_len)
		return pm_err_set(err, EINVAL, "bzImage setup header runs past the setup code");
	ki->kernel_len = len - ki->setup_len;
	ki->init_size = le32(f + BP_INIT_SIZE);
	if (ki->init_size < ki->kernel_len)
		ki->init_size = (uint32_t)ki->kernel_len;
	ki->initrd_max = le32(f + BP_INITRD_MAX);
	ki->cmdline_max = le32(f + BP_CMDLINE_SIZE);
	ki->entry = PMVM_KERNEL_GPA + 0x200;
	return 0;
}

int pmvm_linux_load(const struct pmvm_linux_boot *b, uint8_t *mem, uint64_t low_len,
		    struct pmvm_linux_layout *out, struct pm_err *err)
{
	struct pmvm_kernel_info ki;
	size_t clen = b->cmdline ? strlen(b->cmdline) : 0;
	uint64_t run_at, kernel_end, initrd_gpa = 0, top;
	uint8_t *bp;
	int r;

	r = pmvm_bzimage_parse(b->kernel, b->kernel_len, &ki, err);
	if (r)
		return r;
	if (clen > ki.cmdline_max || clen >= PMVM_CMDLINE_MAX)
		return pm_err_set(err, E2BIG, "kernel command line of %zu bytes; this kernel takes at most %u",
				  clen, ki.cmdline_max < PMVM_CMDLINE_MAX - 1 ? ki.cmdline_max
									    : PMVM_CMDLINE_MAX - 1);
	/* A relocatable kernel loaded below its preferred address decompresses
	 * itself there; it needs init_size bytes from wherever it runs. */
	run_at = le64(b->kernel + BP_PREF_ADDRESS);
	if (run_at < PMVM_KERNEL_GPA)
		run_at = PMVM_KERNEL_GPA;
	kernel_end = run_at + ki.init_size;
	if (!pmvm_e820_is_ram(b->map, PMVM_KERNEL_GPA, kernel_end - PMVM_KERNEL_GPA) ||
	    kernel_end > low_len)
		return pm_err_set(err, ENOSPC, "guest RAM too small for this kernel: it needs RAM up to "
				  "%llu MiB (kernel at %llu MiB, %u MiB to decompress and run)",
				  (unsigned long long)((kernel_end + (1 << 20) - 1) >> 20),
				  (unsigned long long)(run_at >> 20), ki.init_size >> 20);
	if (b->initrd) {
		top = low_len;
		if (top > (uint64_t)ki.initrd_max + 1)
			top = (uint64_t)ki.initrd_max + 1;
		if (b->initrd_len > top)
			return pm_err_set(err, ENOSPC, "initrd of %zu bytes is larger than the RAM it may use",
					  b->initrd_len);
		initrd_gpa = (top - b->initrd_len) & ~(PAGE - 1);
		if (initrd_gpa < kernel_end || !pmvm_e820_is_ram(b->map, initrd_gpa, b->initrd_len))
			return pm_err_set(err, ENOSPC, "guest RAM too small: the initrd (%zu MiB) does not fit "
					  "between the kernel's %llu MiB and the top of low RAM (%llu MiB)",
					  b->initrd_len >> 20, (unsigned long long)(kernel_end >> 20),
					  (unsigned long long)(top >> 20));
	}
	if (b->map->n > BP_E820_MAX)
		return pm_err_set(err, E2BIG, "memory map of %u entries", b->map->n);

	if (!mem)
		goto done;         /* validation only */
	/* All checked: write. */
	memcpy(mem + PMVM_KERNEL_GPA, b->kernel + ki.setup_len, ki.kernel_len);
	if (b->initrd)
		memcpy(mem + initrd_gpa, b->initrd, b->initrd_len);
	memset(mem + PMVM_CMDLINE_GPA, 0, PMVM_CMDLINE_MAX);
	if (clen)
		memcpy(mem + PMVM_CMDLINE_GPA, b->cmdline, clen);

	bp = mem + PMVM_BOOT_PARAMS_GPA;
	memset(bp, 0, PAGE);
	/* The setup header as the kernel's file has it, then what a boot
	 * loader fills in. */
	memcpy(bp + BP_SETUP_SECTS, b->kernel + BP_SETUP_SECTS, 0x202u + b->kernel[BP_JUMP + 1] - BP_SETUP_SECTS);
	bp[BP_TYPE_OF_LOADER] = 0xff;                          /* undefined loader */
	bp[BP_LOADFLAGS] = LOADED_HIGH;                        /* no heap, no KEEP_SEGMENTS */
	put32(bp + BP_CODE32_START, (uint32_t)PMVM_KERNEL_GPA);
	put32(bp + BP_CMD_LINE_PTR, (uint32_t)PMVM_CMDLINE_GPA);
	put32(bp + BP_RAMDISK_IMAGE, (uint32_t)initrd_gpa);
	put32(bp + BP_RAMDISK_SIZE, b->initrd ? (uint32_t)b->initrd_len : 0);
	bp[BP_E820_ENTRIES] = (uint8_t)b->map->n;
	memcpy(bp + BP_E820_TABLE, b->map->e, b->map->n * sizeof(b->map->e[0]));

done:
	if (out) {
		out->entry = ki.entry;
		out->initrd_gpa = initrd_gpa;
		out->initrd_len = b->initrd ? b->initrd_len : 0;
		out->kernel_end = kernel_end;
	}
	return 0;
}
