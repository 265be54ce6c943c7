/* SPDX-License-Identifier: MIT */
/* The virtio-mmio transport and the virtio-blk device, driven as a guest
 * driver would, over a plain buffer standing in for guest RAM (no KVM):
 * discovery, feature negotiation (and its refusals), queue setup, every
 * request type, out-of-range requests, malformed rings (the device asks
 * for a reset and touches nothing), interrupts, dirty reporting of every
 * byte the device writes into guest memory, and the migration state. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "virtio_blk.h"

#define RAM (1u << 20)
#define QN 16u
#define DESC 0x10000u
#define AVAIL 0x11000u
#define USED 0x12000u
#define HDR 0x20000u
#define DATA 0x30000u
#define STATUS 0x40000u

static uint8_t *ram;
static uint8_t dirty[RAM / 4096];
static int irq_level, irq_edges;
static char img[64];
static struct pm_disk *disk;
static struct pmvm_virtio_blk blk;
static uint16_t avail_idx;

static void *env_gpa(void *o, uint64_t gpa, uint64_t len)
{
	return gpa < RAM && len <= RAM - gpa ? ram + gpa : NULL;
}

static void env_dirty(void *o, uint64_t gpa, uint64_t len)
{
	for (uint64_t p = gpa / 4096; p <= (gpa + len - 1) / 4096; p++)
		dirty[p] = 1;
}

static void env_irq(void *o, bool level)
{
	if (level && !irq_level)
		irq_edges++;
	irq_level = level;
}

static uint32_t rd(uint64_t off)
{
	uint32_t v;

	virtio_mmio_read(&blk.t, off, &v, 4);
	return v;
}

static void wr(uint64_t off, uint32_t v)
{
	virtio_mmio_write(&blk.t, off, &v, 4);
}

static int setup(void **state)
{
	struct pm_disk_params p = { .path = img, .size = 4 << 20, .create = true };
	struct pm_err err = { 0 };
	struct virtio_env env = { env_gpa, env_dirty, env_irq, NULL };

	snprintf(img, sizeof(img), "/tmp/pm-test-vblk-%d.img", getpid());
	unlink(img);
	ram = calloc(1, RAM);
	memset(dirty, 0, sizeof(dirty));
	irq_level = irq_edges = 0;
	avail_idx = 0;
	if (!ram || pm_disk_open(&disk, &p, &err))
		return -1;
	pmvm_virtio_blk_init(&blk, disk, &env);
	return 0;
}

static int teardown(void **state)
{
	pmvm_virtio_blk_destroy(&blk);
	pm_disk_close(disk);
	unlink(img);
	free(ram);
	return 0;
}

/* The driver's side of initialization: features, one queue, DRIVER_OK. */
static void driver_init(void)
{
	wr(VIRTIO_MMIO_STATUS, 0);
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)VIRTIO_BLK_F_FLUSH);
	wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(VIRTIO_MMIO_DRIVER_FEATURES, 1);     /* VERSION_1 */
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	assert_true(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK);
	wr(VIRTIO_MMIO_QUEUE_SEL, 0);
	assert_int_equal(rd(VIRTIO_MMIO_QUEUE_NUM_MAX), VIRTIO_QUEUE_MAX);
	wr(VIRTIO_MMIO_QUEUE_NUM, QN);
	wr(VIRTIO_MMIO_QUEUE_DESC_LOW, DESC);
	wr(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
	wr(VIRTIO_MMIO_QUEUE_DRIVER_LOW, AVAIL);
	wr(VIRTIO_MMIO_QUEUE_DRIVER_HIGH, 0);
	wr(VIRTIO_MMIO_QUEUE_DEVICE_LOW, USED);
	wr(VIRTIO_MMIO_QUEUE_DEVICE_HIGH, 0);
	wr(VIRTIO_MMIO_QUEUE_READY, 1);
	assert_int_equal(rd(VIRTIO_MMIO_QUEUE_READY), 1);
	wr(VIRTIO_MMIO_STATUS, rd(VIRTIO_MMIO_STATUS) | VIRTIO_STATUS_DRIVER_OK);
	memset(ram + DESC, 0, 0x3000);
	avail_idx = 0;
}

static void desc(unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	uint8_t *d = ram + DESC + 16 * i;

	memcpy(d, &addr, 8);
	memcpy(d + 8, &len, 4);
	memcpy(d + 12, &flags, 2);
	memcpy(d + 14, &next, 2);
}

static void offer(uint16_t head)
{
	memcpy(ram + AVAIL + 4 + 2 * (avail_idx % QN), &head, 2);
	avail_idx++;
	memcpy(ram + AVAIL + 2, &avail_idx, 2);
}

static uint16_t used_idx(void)
{
	uint16_t v;

	memcpy(&v, ram + USED + 2, 2);
	return v;
}

static uint32_t used_len(uint16_t k)
{
	uint32_t v;

	memcpy(&v, ram + USED + 4 + 8 * (k % QN) + 4, 4);
	return v;
}

/* One request: header at HDR, len bytes at DATA (device-writable for IN),
 * status at STATUS; returns the status byte. */
static uint8_t request(uint32_t type, uint64_t sector, uint32_t len, bool writable)
{
	uint8_t hdr[16] = { 0 };
	unsigned n = 0;

	memcpy(hdr, &type, 4);
	memcpy(hdr + 8, &sector, 8);
	memcpy(ram + HDR, hdr, 16);
	ram[STATUS] = 0xee;
	desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
	if (len) {
		desc(1, DATA, len, VIRTQ_DESC_F_NEXT | (writable ? VIRTQ_DESC_F_WRITE : 0), 2);
		n = 1;
	}
	desc(1 + n, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
	offer(0);
	wr(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	return ram[STATUS];
}

static void test_discovery_and_features(void **state)
{
	uint8_t cfg[8];
	uint64_t cap;

	assert_int_equal(rd(VIRTIO_MMIO_MAGIC_VALUE), VIRTIO_MMIO_MAGIC);
	assert_int_equal(rd(VIRTIO_MMIO_VERSION), 2);
	assert_int_equal(rd(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_BLOCK);
	assert_int_equal(rd(VIRTIO_MMIO_VENDOR_ID), VIRTIO_MMIO_VENDOR);
	wr(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	assert_true(rd(VIRTIO_MMIO_DEVICE_FEATURES) & VIRTIO_BLK_F_FLUSH);
	wr(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	assert_int_equal(rd(VIRTIO_MMIO_DEVICE_FEATURES), 1);
	virtio_mmio_read(&blk.t, VIRTIO_MMIO_CONFIG, cfg, 8);
	memcpy(&cap, cfg, 8);
	assert_int_equal(cap, (4 << 20) / 512);
	/* A byte of the config, and past its end: zeros, no crash. */
	virtio_mmio_read(&blk.t, VIRTIO_MMIO_CONFIG + 1, cfg, 1);
	assert_int_equal(cfg[0], ((4 << 20) / 512) >> 8 & 0xff);
	virtio_mmio_read(&blk.t, VIRTIO_MMIO_CONFIG + 62, cfg, 4);
	assert_int_equal(cfg[0] | cfg[1] | cfg[2] | cfg[3], 0);

	/* A legacy driver (no VERSION_1) and an unknown feature are refused. */
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)VIRTIO_BLK_F_FLUSH);
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	assert_false(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK);
	wr(VIRTIO_MMIO_STATUS, 0);
	wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(VIRTIO_MMIO_DRIVER_FEATURES, 1u << 28);      /* indirect descriptors: not offered */
	wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(VIRTIO_MMIO_DRIVER_FEATURES, 1);
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	assert_false(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK);
	driver_init();
	/* A queue that does not exist has no size. */
	wr(VIRTIO_MMIO_QUEUE_SEL, 1);
	assert_int_equal(rd(VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
}

static void test_write_read_flush_id(void **state)
{
	struct pm_err err = { 0 };
	uint8_t back[8192];

	driver_init();
	for (unsigned i = 0; i < 8192; i++)
		ram[DATA + i] = (uint8_t)(i * 7 + 3);
	memset(dirty, 0, sizeof(dirty));
	assert_int_equal(request(VIRTIO_BLK_T_OUT, 16, 8192, false), VIRTIO_BLK_S_OK);
	assert_int_equal(used_idx(), 1);
	assert_int_equal(used_len(0), 1);
	assert_int_equal(pm_disk_read(disk, back, 8192, 16 * 512, &err), 0);
	assert_memory_equal(back, ram + DATA, 8192);
	/* What the device wrote: the status and the used ring, not the data. */
	assert_true(dirty[STATUS / 4096] && dirty[USED / 4096]);
	assert_false(dirty[DATA / 4096]);
	assert_int_equal(rd(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_INT_USED_RING);
	assert_int_equal(irq_level, 1);
	wr(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_INT_USED_RING);
	assert_int_equal(irq_level, 0);

	memset(ram + DATA, 0, 8192);
	memset(dirty, 0, sizeof(dirty));
	assert_int_equal(request(VIRTIO_BLK_T_IN, 16, 8192, true), VIRTIO_BLK_S_OK);
	assert_int_equal(used_len(1), 8193);
	assert_memory_equal(back, ram + DATA, 8192);
	assert_true(dirty[DATA / 4096] && dirty[DATA / 4096 + 1] && dirty[STATUS / 4096]);

	assert_int_equal(request(VIRTIO_BLK_T_FLUSH, 0, 0, false), VIRTIO_BLK_S_OK);
	assert_int_equal(request(VIRTIO_BLK_T_GET_ID, 0, 20, true), VIRTIO_BLK_S_OK);
	assert_string_equal((char *)ram + DATA, "pmvm-disk0");
	assert_int_equal(request(99, 0, 0, false), VIRTIO_BLK_S_UNSUPP);
	assert_int_equal(blk.writes, 1);
	assert_int_equal(blk.reads, 1);
	assert_int_equal(blk.flushes, 1);
	assert_false(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET);
}

static void test_bad_requests(void **state)
{
	driver_init();
	/* Past the end, a partial sector, data the wrong way: IOERR, nothing written. */
	uint64_t end = (4 << 20) / 512;
	assert_int_equal(request(VIRTIO_BLK_T_OUT, end - 1, 1024, false), VIRTIO_BLK_S_IOERR);
	assert_int_equal(request(VIRTIO_BLK_T_OUT, ~0ull, 512, false), VIRTIO_BLK_S_IOERR);
	assert_int_equal(request(VIRTIO_BLK_T_OUT, 0, 100, false), VIRTIO_BLK_S_IOERR);
	assert_int_equal(request(VIRTIO_BLK_T_IN, 0, 512, false), VIRTIO_BLK_S_IOERR);
	assert_int_equal(request(VIRTIO_BLK_T_OUT, 0, 512, true), VIRTIO_BLK_S_IOERR);
	assert_int_equal(blk.errors, 5);
	assert_true(pm_disk_allocated(disk) == 0);
	assert_false(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET);
}

/* Malformed rings: the device stops and asks for a reset; nothing else. */
static void expect_needs_reset(void)
{
	uint16_t before = used_idx();

	offer(0);
	wr(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	assert_true(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET);
	assert_int_equal(used_idx(), before);
	assert_true(rd(VIRTIO_MMIO_INTERRUPT_STATUS) & 2);       /* configuration change */
	/* Ignored until the reset. */
	desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
	desc(1, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
	offer(0);
	wr(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	assert_int_equal(used_idx(), before);
	wr(VIRTIO_MMIO_STATUS, 0);
	assert_int_equal(rd(VIRTIO_MMIO_STATUS), 0);
	assert_int_equal(rd(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
	assert_int_equal(irq_level, 0);
}

static void test_malformed_rings(void **state)
{
	driver_init();
	desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, QN);                /* next out of range */
	expect_needs_reset();

	driver_init();
	desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);                 /* a loop */
	desc(1, STATUS, 1, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 0);
	expect_needs_reset();

	driver_init();
	desc(0, RAM - 8, 16, VIRTQ_DESC_F_NEXT, 1);             /* outside RAM */
	desc(1, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
	expect_needs_reset();

	driver_init();
	desc(0, HDR, 16, VIRTQ_DESC_F_INDIRECT, 0);             /* indirect */
	expect_needs_reset();

	driver_init();
	desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);                 /* no status byte */
	desc(1, DATA, 512, 0, 0);
	expect_needs_reset();

	driver_init();
	avail_idx = QN + 1;                                      /* index far ahead */
	desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
	desc(1, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
	expect_needs_reset();

	/* A queue with rings outside RAM, or a size not a power of two, never
	 * becomes ready. */
	driver_init();
	wr(VIRTIO_MMIO_STATUS, 0);
	wr(VIRTIO_MMIO_QUEUE_SEL, 0);
	wr(VIRTIO_MMIO_QUEUE_NUM, 12);
	wr(VIRTIO_MMIO_QUEUE_DESC_LOW, DESC);
	wr(VIRTIO_MMIO_QUEUE_DRIVER_LOW, AVAIL);
	wr(VIRTIO_MMIO_QUEUE_DEVICE_LOW, USED);
	wr(VIRTIO_MMIO_QUEUE_READY, 1);
	assert_int_equal(rd(VIRTIO_MMIO_QUEUE_READY), 0);
	assert_true(rd(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET);
	wr(VIRTIO_MMIO_STATUS, 0);
	wr(VIRTIO_MMIO_QUEUE_NUM, QN);
	wr(VIRTIO_MMIO_QUEUE_DESC_LOW, DESC);
	wr(VIRTIO_MMIO_QUEUE_DRIVER_LOW, AVAIL);
	wr(VIRTIO_MMIO_QUEUE_DEVICE_LOW, RAM - 16);
	wr(VIRTIO_MMIO_QUEUE_READY, 1);
	assert_int_equal(rd(VIRTIO_MMIO_QUEUE_READY), 0);
	assert_true(pm_disk_allocated(disk) == 0);
}

static void test_state(void **state)
{
	struct virtio_mmio_state st, bad;

	driver_init();
	assert_int_equal(request(VIRTIO_BLK_T_OUT, 0, 512, false), VIRTIO_BLK_S_OK);
	virtio_mmio_save(&blk.t, &st);
	assert_int_equal(st.q[0].last_avail, 1);
	assert_int_equal(st.q[0].ready, 1);
	assert_int_equal(st.int_status, 1);

	/* Into a fresh device: it carries on where the other stopped, and its
	 * interrupt line is up again. */
	wr(VIRTIO_MMIO_STATUS, 0);
	irq_level = 0;
	assert_int_equal(virtio_mmio_load(&blk.t, &st), 0);
	assert_int_equal(irq_level, 1);
	assert_int_equal(request(VIRTIO_BLK_T_IN, 0, 512, true), VIRTIO_BLK_S_OK);
	assert_int_equal(used_idx(), 2);

	bad = st;
	bad.status |= 16;
	assert_int_equal(virtio_mmio_load(&blk.t, &bad), -EINVAL);
	bad = st;
	bad.q[0].num = 12;
	assert_int_equal(virtio_mmio_load(&blk.t, &bad), -EINVAL);
	bad = st;
	bad.q[0].used = RAM - 8;
	assert_int_equal(virtio_mmio_load(&blk.t, &bad), -EINVAL);
	bad = st;
	bad.q[1].num = 8;                       /* a queue this device lacks */
	assert_int_equal(virtio_mmio_load(&blk.t, &bad), -EINVAL);
	bad = st;
	bad.driver_features |= 1u << 28;
	assert_int_equal(virtio_mmio_load(&blk.t, &bad), -EINVAL);
	bad = st;
	bad.int_status = 4;
	assert_int_equal(virtio_mmio_load(&blk.t, &bad), -EINVAL);
	bad = st;
	bad.q[0].reserved[1] = 1;
	assert_int_equal(virtio_mmio_state_check(&bad, 1), -EINVAL);
	assert_int_equal(virtio_mmio_state_check(&st, 1), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_discovery_and_features, setup, teardown),
		cmocka_unit_test_setup_teardown(test_write_read_flush_id, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
		cmocka_unit_test_setup_teardown(test_malformed_rings, setup, teardown),
		cmocka_unit_test_setup_teardown(test_state, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
