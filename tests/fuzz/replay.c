/* SPDX-License-Identifier: MIT */
/* Replays a libFuzzer target (fuzz/fuzz_<target>.c, linked in) without
 * libFuzzer, so the normal suite runs it under ASan/UBSan:
 *   - its seeds (tests/fuzz/seeds_<target>.c), made from the real encoders,
 *     with their expected outcome (a valid migration completes, a valid
 *     state loads, ...) -- the target really reaches the code;
 *   - every file of the committed corpus (fuzz/corpus/<target>/: seeds and
 *     what fuzzing found), and single-byte mutations of the seeds.
 * Usage: replay CORPUS_DIR [--write-seeds DIR] */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>
#include "../../fuzz/fuzz_targets.h"
#include "seeds.h"

#define MAX_SEEDS 32
static struct seed seeds[MAX_SEEDS];
static size_t nseeds;
static const char *corpus;

static void test_seeds(void **state)
{
	for (size_t i = 0; i < nseeds; i++) {
		LLVMFuzzerTestOneInput(seeds[i].data, seeds[i].len);
		fuzz_check_seed(&seeds[i]);
	}
}

/* Each seed with one byte changed, at offsets spread over it. */
static void test_mutations(void **state)
{
	uint64_t rng = 0x2545f4914f6cdd1dull;
	unsigned runs = 0;

	for (size_t i = 0; i < nseeds; i++) {
		uint8_t *m = malloc(seeds[i].len);
		for (unsigned k = 0; k < 24; k++) {
			memcpy(m, seeds[i].data, seeds[i].len);
			rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
			size_t at = 1 + rng % (seeds[i].len - 1);
			m[at] ^= 1u << (rng >> 40) % 8;
			LLVMFuzzerTestOneInput(m, seeds[i].len);
			runs++;
		}
		free(m);
	}
	print_message("# %u mutated inputs\n", runs);
}

static void test_corpus(void **state)
{
	DIR *d = opendir(corpus);
	struct dirent *e;
	unsigned n = 0;

	if (!d)
		fail_msg("corpus %s: %s", corpus, strerror(errno));
	while ((e = readdir(d))) {
		char path[4096];
		struct stat st;
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", corpus, e->d_name);
		FILE *f = fopen(path, "rb");
		if (!f || fstat(fileno(f), &st))
			fail_msg("%s: %s", path, strerror(errno));
		uint8_t *buf = malloc(st.st_size ? st.st_size : 1);
		if (fread(buf, 1, st.st_size, f) != (size_t)st.st_size)
			fail_msg("%s: short read", path);
		fclose(f);
		LLVMFuzzerTestOneInput(buf, st.st_size);
		free(buf);
		n++;
	}
	closedir(d);
	print_message("# %u corpus inputs from %s\n", n, corpus);
	assert_true(n > 0);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s CORPUS_DIR [--write-seeds DIR]\n", argv[0]);
		return 2;
	}
	corpus = argv[1];
	nseeds = fuzz_make_seeds(seeds, MAX_SEEDS);
	if (argc == 4 && !strcmp(argv[2], "--write-seeds")) {
		for (size_t i = 0; i < nseeds; i++) {
			char path[4096];
			snprintf(path, sizeof(path), "%s/seed-%s", argv[3], seeds[i].name);
			FILE *f = fopen(path, "wb");
			if (!f || fwrite(seeds[i].data, 1, seeds[i].len, f) != seeds[i].len || fclose(f)) {
				perror(path);
				return 1;
			}
		}
		return 0;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_seeds),
		cmocka_unit_test(test_mutations),
		cmocka_unit_test(test_corpus),
	};
	int r = cmocka_run_group_tests(tests, NULL, NULL);
	for (size_t i = 0; i < nseeds; i++)
		free(seeds[i].data);
	return r;
}
