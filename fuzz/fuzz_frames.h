/* SPDX-License-Identifier: MIT */
/* What fuzz_frames.c's entry point saw in its last input (for the replay
 * test in tests/engine/test_fuzz_replay.c). */
#ifndef PM_FUZZ_FRAMES_H
#define PM_FUZZ_FRAMES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FUZZ_NREGIONS 2
#define FUZZ_REGION0_PAGES 64
#define FUZZ_REGION1_PAGES 16
#define FUZZ_REGION1_GPA 0x100000000ull
/* One disk: 4 KiB blocks, the last one 512 bytes (20 * 4096 + 512). */
#define FUZZ_DISK_BLOCK 4096u
#define FUZZ_DISK_BYTES (20u * 4096u + 512u)
#define FUZZ_DISK_BLOCKS 21u

struct fuzz_frames_result {
	unsigned frames;          /* frames accepted */
	uint64_t pages_applied, stale_pages;
	uint64_t blocks_applied, stale_blocks;
	uint32_t features;
	uint32_t state_len;
	bool layout_ok, end_ok;
};

extern struct fuzz_frames_result fuzz_frames_last;
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* The destination memory the last input was applied to. */
uint8_t *fuzz_frames_memory(unsigned region);
/* The destination disk the last input was applied to (FUZZ_DISK_BYTES). */
uint8_t *fuzz_frames_disk(void);

#endif
