/* SPDX-License-Identifier: MIT */
/* Guest images: a flat binary loaded at PMVM_IMAGE_GPA and entered at its
 * first byte, or a static x86-64 ELF executable loaded by its PT_LOAD
 * segments and entered at e_entry. */
#ifndef PMVM_LOADER_H
#define PMVM_LOADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pmigrate/error.h>

#define PMVM_MAX_IMAGE (256u << 20)
#define PMVM_MAX_INITRD (1u << 30)

struct pmvm_image {
	bool elf;
	uint64_t entry;
	uint64_t load_start;    /* lowest guest-physical byte written */
	uint64_t load_end;      /* one past the highest (including .bss) */
};

/* Reads a whole file (at most max bytes). */
int pmvm_read_file(const char *path, uint8_t **buf, size_t *len, size_t max,
		   struct pm_err *err);

/* Validates the image in file[0, len) against a guest memory of mem_len
 * bytes (contiguous from guest-physical 0) and, when mem is not NULL,
 * copies it in (zeroing .bss).  Nothing is written unless the whole image
 * is valid. */
int pmvm_image_load(const uint8_t *file, size_t len, uint8_t *mem, uint64_t mem_len,
		    struct pmvm_image *out, struct pm_err *err);

#endif
