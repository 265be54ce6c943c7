/* SPDX-License-Identifier: MIT */
/* Tests of the disk image module (include/pmigrate/disk.h): creation and
 * its refusals, the write path marking blocks, populated extents with
 * allocated zero blocks, data/hole scanning, discard, and writers racing
 * the harvest of a copy that must end equal to the image. */
#include <pmigrate/disk.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

static char dir[64];

static int setup_dir(void **state)
{
	snprintf(dir, sizeof(dir), "/tmp/pm-test-disk-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd);
}

static const char *path_of(const char *name)
{
	static char p[128];

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return p;
}

static struct pm_disk *open_new(const char *name, uint64_t size, uint32_t bs, uint64_t populate)
{
	struct pm_disk_params p = { .path = path_of(name), .size = size, .block_size = bs,
				    .create = true, .populate = populate, .seed = 7 };
	struct pm_disk *d = NULL;
	struct pm_err err = { 0 };

	unlink(p.path);
	assert_int_equal(pm_disk_open(&d, &p, &err), 0);
	return d;
}

static void test_create_sparse(void **state)
{
	struct pm_disk *d = open_new("a.img", 64 << 20, 0, 0);
	struct stat st;

	assert_int_equal(pm_disk_size(d), 64 << 20);
	assert_int_equal(pm_disk_block_size(d), PM_DISK_DEFAULT_BLOCK);
	assert_int_equal(stat(path_of("a.img"), &st), 0);
	assert_int_equal(st.st_size, 64 << 20);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_true(pm_disk_allocated(d) < (64u << 10));
	pm_disk_close(d);

	/* Reopened without a size: the file's own. */
	struct pm_disk_params p = { .path = path_of("a.img") };
	struct pm_err err = { 0 };
	assert_int_equal(pm_disk_open(&d, &p, &err), 0);
	assert_int_equal(pm_disk_size(d), 64 << 20);
	pm_disk_close(d);
}

static void expect_refusal(const struct pm_disk_params *p, int code, const char *words)
{
	struct pm_disk *d = (void *)1;
	struct pm_err err = { 0 };

	assert_int_equal(pm_disk_open(&d, p, &err), -code);
	assert_null(d);
	if (!strstr(err.msg, words))
		fail_msg("message '%s' lacks '%s'", err.msg, words);
}

static void test_refusals(void **state)
{
	struct pm_disk *d = open_new("b.img", 1 << 20, 0, 0);
	pm_disk_close(d);

	expect_refusal(&(struct pm_disk_params){ .path = path_of("none.img") }, ENOENT, "cannot open");
	expect_refusal(&(struct pm_disk_params){ .path = path_of("none.img"), .create = true },
		       EINVAL, "give its size");
	assert_int_equal(access(path_of("none.img"), F_OK), -1);
	expect_refusal(&(struct pm_disk_params){ .path = path_of("b.img"), .size = 2 << 20 },
		       EINVAL, "size= says");
	expect_refusal(&(struct pm_disk_params){ .path = path_of("b.img"), .block_size = 3000 },
		       EINVAL, "power of two");
	expect_refusal(&(struct pm_disk_params){ .path = path_of("b.img"), .block_size = 2u << 20 },
		       EINVAL, "power of two");
	expect_refusal(&(struct pm_disk_params){ .path = path_of("c.img"), .size = 1000, .create = true },
		       EINVAL, "multiple of 512");
	expect_refusal(&(struct pm_disk_params){ .path = dir }, EINVAL, "not a regular file");
	expect_refusal(&(struct pm_disk_params){ .path = "" }, EINVAL, "no image");
	/* populate more than the disk: the new file is removed again */
	expect_refusal(&(struct pm_disk_params){ .path = path_of("d.img"), .size = 1 << 20,
						 .create = true, .populate = 2 << 20 }, EINVAL, "populated=");
	assert_int_equal(access(path_of("d.img"), F_OK), -1);
	/* a symbolic link is not followed */
	char target[128];
	snprintf(target, sizeof(target), "%s", path_of("b.img"));
	assert_int_equal(symlink(target, path_of("link.img")), 0);
	expect_refusal(&(struct pm_disk_params){ .path = path_of("link.img") }, ELOOP, "cannot open");
}

static void harvest_all(struct pm_blockdev *bd, uint64_t *bm)
{
	struct pm_err err = { 0 };
	uint64_t n = (bd->size + bd->block_size - 1) / bd->block_size;

	memset(bm, 0, (n + 63) / 64 * 8);
	assert_int_equal(bd->ops->dirty_harvest(bd->dev, 0, n, bm, &err), 0);
}

static void test_write_marks_blocks(void **state)
{
	struct pm_disk *d = open_new("w.img", 4 << 20, 0, 0);   /* 64 blocks of 64 KiB */
	struct pm_blockdev bd;
	struct pm_err err = { 0 };
	uint64_t bm[1], count;
	char buf[8192];

	pm_disk_blockdev(d, 3, &bd);
	assert_int_equal(bd.id, 3);
	assert_int_equal(bd.fd, pm_disk_fd(d));
	assert_int_equal(bd.block_size, 64 << 10);
	/* Not tracking: harvest is an error, not a crash. */
	assert_int_equal(bd.ops->dirty_harvest(bd.dev, 0, 64, bm, &err), -EINVAL);
	pm_err_clear(&err);
	assert_int_equal(bd.ops->dirty_start(bd.dev, &err), 0);
	assert_int_equal(bd.ops->dirty_start(bd.dev, &err), -EBUSY);
	pm_err_clear(&err);
	assert_int_equal(bd.ops->dirty_count(bd.dev, &count, &err), 0);
	assert_int_equal(count, 64);            /* all dirty at the start */
	harvest_all(&bd, bm);
	assert_true(bm[0] == ~0ull);
	harvest_all(&bd, bm);
	assert_true(bm[0] == 0);

	memset(buf, 0xab, sizeof(buf));
	/* 8 KiB across the boundary of blocks 2 and 3 */
	assert_int_equal(pm_disk_write(d, buf, sizeof(buf), 3 * (64 << 10) - 4096, &err), 0);
	assert_int_equal(pm_disk_write(d, buf, 1, (4 << 20) - 1, &err), 0);
	assert_int_equal(bd.ops->dirty_count(bd.dev, &count, &err), 0);
	assert_int_equal(count, 3);
	harvest_all(&bd, bm);
	assert_true(bm[0] == (1ull << 2 | 1ull << 3 | 1ull << 63));
	assert_int_equal(pm_disk_bytes_written(d), sizeof(buf) + 1);

	/* Outside the disk: refused, nothing marked. */
	assert_int_equal(pm_disk_write(d, buf, 2, (4 << 20) - 1, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "outside the disk"));
	pm_err_clear(&err);
	harvest_all(&bd, bm);
	assert_true(bm[0] == 0);

	char back[8192];
	assert_int_equal(pm_disk_read(d, back, sizeof(back), 3 * (64 << 10) - 4096, &err), 0);
	assert_memory_equal(back, buf, sizeof(buf));

	/* Discard: a hole that reads as zeros, and the block is dirty. */
	assert_int_equal(pm_disk_discard(d, 2 * (64 << 10), 64 << 10, &err), 0);
	harvest_all(&bd, bm);
	assert_true(bm[0] == 1ull << 2);
	assert_int_equal(pm_disk_read(d, back, 4096, 3 * (64 << 10) - 4096, &err), 0);
	for (unsigned i = 0; i < 4096; i++)
		assert_int_equal(back[i], 0);
	assert_int_equal(pm_disk_discard(d, 100, 512, &err), -EINVAL);
	pm_err_clear(&err);
	assert_int_equal(pm_disk_flush(d, &err), 0);
	assert_int_equal(bd.ops->flush(bd.dev, &err), 0);
	bd.ops->dirty_stop(bd.dev);
	assert_int_equal(bd.ops->dirty_start(bd.dev, &err), 0);
	bd.ops->dirty_stop(bd.dev);
	pm_disk_close(d);
}

/* A partial last block (size not a multiple of the block size). */
static void test_partial_last_block(void **state)
{
	struct pm_disk *d = open_new("p.img", (1 << 20) + 4096, 0, 0);
	struct pm_blockdev bd;
	struct pm_err err = { 0 };
	uint64_t bm[1], count;

	pm_disk_blockdev(d, 0, &bd);
	assert_int_equal(bd.ops->dirty_start(bd.dev, &err), 0);
	assert_int_equal(bd.ops->dirty_count(bd.dev, &count, &err), 0);
	assert_int_equal(count, 17);
	harvest_all(&bd, bm);
	assert_true(bm[0] == (1ull << 17) - 1);
	assert_int_equal(pm_disk_write(d, "x", 1, (1 << 20) + 4095, &err), 0);
	harvest_all(&bd, bm);
	assert_true(bm[0] == 1ull << 16);
	bd.ops->dirty_stop(bd.dev);
	pm_disk_close(d);
}

static void test_populate_and_scan(void **state)
{
	/* 1/4 of a 64 MiB disk: 16 extents of 1 MiB, one in every 4 MiB. */
	struct pm_disk *d = open_new("pop.img", 64 << 20, 0, 16 << 20);
	struct pm_err err = { 0 };
	uint64_t off = 0, data, hole, total = 0, ranges = 0;
	int fd = pm_disk_fd(d);

	uint64_t alloc = pm_disk_allocated(d);
	assert_true(alloc >= 16u << 20 && alloc < (17u << 20));
	for (;;) {
		assert_int_equal(pm_disk_next_data(fd, off, pm_disk_size(d), &data, &hole, &err), 0);
		if (data >= pm_disk_size(d))
			break;
		assert_true(data % (4 << 20) == 0);
		assert_true(hole > data);
		total += hole - data;
		ranges++;
		off = hole;
	}
	assert_int_equal(total, 16 << 20);
	assert_int_equal(ranges, 16);
	/* Allocated zero blocks: block 15 of each 16 is zero, the others not. */
	uint8_t *b = malloc(64 << 10);
	assert_int_equal(pm_disk_read(d, b, 64 << 10, 15 * (64 << 10), &err), 0);
	for (unsigned i = 0; i < (64u << 10); i++)
		if (b[i])
			fail_msg("byte %u of block 15 is not zero", i);
	assert_int_equal(pm_disk_read(d, b, 64 << 10, 14 * (64 << 10), &err), 0);
	unsigned nz = 0;
	for (unsigned i = 0; i < (64u << 10); i++)
		nz += b[i] != 0;
	assert_true(nz > 60000);
	free(b);
	/* Beyond the end: nothing. */
	assert_int_equal(pm_disk_next_data(fd, 64 << 20, 64 << 20, &data, &hole, &err), 0);
	assert_int_equal(data, 64 << 20);
	assert_int_equal(hole, 64 << 20);
	pm_disk_close(d);

	/* Same seed, same content. */
	struct pm_disk *d2 = open_new("pop2.img", 64 << 20, 0, 16 << 20);
	pm_disk_close(d2);
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "cmp -s %s/pop.img %s/pop2.img", dir, dir);
	assert_int_equal(system(cmd), 0);
}

/* Writers rewrite blocks with growing versions while a copier harvests and
 * copies what was dirty; after the writers stop and one more harvest, the
 * copy must equal the image.  With the mark before the write it does not. */
#define RB 64u
#define RBS 4096u
struct race {
	struct pm_disk *d;
	struct pm_blockdev bd;
	atomic_bool stop;
	unsigned seed;
};

static void *writer_main(void *arg)
{
	struct race *rc = arg;
	unsigned s = __atomic_fetch_add(&rc->seed, 1, __ATOMIC_RELAXED) * 7919 + 1;
	uint64_t buf[RBS / 8], v = 0;
	struct pm_err err = { 0 };

	while (!atomic_load(&rc->stop)) {
		s = s * 1103515245 + 12345;
		uint64_t blk = (s >> 8) % RB;
		v++;
		for (unsigned i = 0; i < RBS / 8; i++)
			buf[i] = blk << 48 | v << 8 | (s & 0xff);
		if (pm_disk_write(rc->d, buf, RBS, blk * RBS, &err))
			return (void *)1;
	}
	return NULL;
}

static void copy_dirty(struct race *rc, uint8_t *copy)
{
	uint64_t bm[1] = { 0 };
	struct pm_err err = { 0 };

	assert_int_equal(rc->bd.ops->dirty_harvest(rc->bd.dev, 0, RB, bm, &err), 0);
	for (unsigned b = 0; b < RB; b++)
		if (bm[0] >> b & 1)
			assert_int_equal(pm_disk_read(rc->d, copy + b * RBS, RBS, b * RBS, &err), 0);
}

static void test_race_harvest(void **state)
{
	struct race rc = { .d = open_new("race.img", RB * RBS, RBS, 0) };
	uint8_t *copy = calloc(RB, RBS), *img = malloc(RB * RBS);
	pthread_t th[3];
	struct pm_err err = { 0 };

	pm_disk_blockdev(rc.d, 0, &rc.bd);
	assert_int_equal(rc.bd.ops->dirty_start(rc.bd.dev, &err), 0);
	for (unsigned i = 0; i < 3; i++)
		assert_int_equal(pthread_create(&th[i], NULL, writer_main, &rc), 0);
	for (unsigned k = 0; k < 3000; k++)
		copy_dirty(&rc, copy);
	atomic_store(&rc.stop, true);
	for (unsigned i = 0; i < 3; i++) {
		void *ret;
		pthread_join(th[i], &ret);
		assert_null(ret);
	}
	copy_dirty(&rc, copy);
	assert_int_equal(pm_disk_read(rc.d, img, RB * RBS, 0, &err), 0);
	for (unsigned b = 0; b < RB; b++)
		if (memcmp(copy + b * RBS, img + b * RBS, RBS))
			fail_msg("block %u: the copy missed a write", b);
	rc.bd.ops->dirty_stop(rc.bd.dev);
	free(copy);
	free(img);
	pm_disk_close(rc.d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_create_sparse),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_write_marks_blocks),
		cmocka_unit_test(test_partial_last_block),
		cmocka_unit_test(test_populate_and_scan),
		cmocka_unit_test(test_race_harvest),
	};

	return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
