/* SPDX-License-Identifier: MIT */
/* Seed inputs for a fuzz target (seeds_<target>.c), made from the real
 * encoders, and what the replay test expects of them. */
#ifndef TESTS_FUZZ_SEEDS_H
#define TESTS_FUZZ_SEEDS_H

#include <stddef.h>
#include <stdint.h>

struct seed {
	const char *name;
	uint8_t *data;
	size_t len;
};

/* Fills seeds[] (at most max), returns how many; data is malloc'ed. */
size_t fuzz_make_seeds(struct seed *seeds, size_t max);
/* Called after seed i ran through the target: checks what it did. */
void fuzz_check_seed(const struct seed *s);

#endif
