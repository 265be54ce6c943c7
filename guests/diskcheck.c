// SPDX-License-Identifier: MIT
/* Proves that a disk survives a migration together with memory.
 *
 * vCPU 0 drives pmvm's virtio-blk device (virtio-mmio version 2, one queue,
 * polled: interrupts stay off).  It keeps, in guest memory, a version per
 * block of the disk's first `blocks` blocks of `bs` bytes.  Step n
 * rewrites block (mix(n) mod blocks) with content that depends on the
 * block and its next version, then records the version; then it reads one
 * block back, walking all of them in order (a sweep), and compares every
 * word with what its recorded version says.  So a block the migration lost,
 * or an older copy of it sent over a newer one, or memory and disk taken at
 * different moments, all show as a mismatch at the destination.
 *
 * Output: "DISK OK <n> writes <w>" every `report` steps, "DISK SWEEP <k>
 * checked <c>" after each full pass over the blocks, and on a mismatch
 * "DISK FAIL ..." and exit code 1.  `steps`: vCPU 0 exits 0 after that many
 * steps (0 = never).  Other vCPUs only beat the heartbeat.
 *
 * Parameters: blocks (default 256), bs (4096; a multiple of 512 up to
 * 65536), steps, report (16), delay (busy-loop iterations per step).
 * Only instructions that KVM's instruction emulator runs (guests/README.md):
 * the device is reached with plain 32-bit loads and stores. */
#include "guest.h"

#define QN 8u
#define MAXBLOCKS 16384u
#define DMAGIC 0x4449534b43484b31ull    /* "DISKCHK1" */

enum { MAGIC = 0x000, VERSION = 0x004, DEVICE_ID = 0x008, DEV_FEATURES = 0x010,
       DEV_FEATURES_SEL = 0x014, DRV_FEATURES = 0x020, DRV_FEATURES_SEL = 0x024,
       QUEUE_SEL = 0x030, QUEUE_NUM_MAX = 0x034, QUEUE_NUM = 0x038, QUEUE_READY = 0x044,
       QUEUE_NOTIFY = 0x050, STATUS = 0x070, QUEUE_DESC_LO = 0x080, QUEUE_DESC_HI = 0x084,
       QUEUE_AVAIL_LO = 0x090, QUEUE_AVAIL_HI = 0x094, QUEUE_USED_LO = 0x0a0,
       QUEUE_USED_HI = 0x0a4, CONFIG = 0x100 };

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };

/* Where everything lives in guest memory (all of it migrates). */
struct state {
	uint64_t magic;
	uint64_t step;              /* last step completed */
	uint64_t writes, reads;
	uint16_t avail_idx, used_seen;
	uint32_t pad;
	uint64_t version[MAXBLOCKS];
};

static volatile uint32_t *mmio;
static volatile struct desc *ring_desc;
static volatile uint16_t *avail;        /* flags, idx, ring[QN] */
static volatile uint16_t *used;         /* flags, idx, then {u32 id, u32 len}[QN] */
static volatile uint8_t *hdr, *status;
static volatile uint64_t *wbuf, *rbuf;
static struct state *st;
static struct heartbeat hb[PMVM_MAX_VCPUS];

static uint32_t rd(unsigned off) { return mmio[off / 4]; }
static void wr(unsigned off, uint32_t v) { mmio[off / 4] = v; }

static void fail(const char *what, uint64_t a, uint64_t b, uint64_t c)
{
	console_lock();
	puts_raw("DISK FAIL ");
	puts_raw(what);
	putc_raw(' ');
	putu_raw(a);
	putc_raw(' ');
	putx_raw(b);
	putc_raw(' ');
	putx_raw(c);
	puts_raw(" step ");
	putu_raw(st ? st->step + 1 : 0);
	putc_raw('\n');
	console_unlock();
	guest_exit(1);
}

static uint64_t word(uint64_t block, uint64_t ver, uint64_t j)
{
	return mix64((block << 32) ^ (ver << 8) ^ 0x5a) + j * 0x9e3779b97f4a7c15ull;
}

static void device_init(uint64_t base)
{
	mmio = (volatile uint32_t *)(uintptr_t)base;
	if (rd(MAGIC) != 0x74726976 || rd(VERSION) != 2 || rd(DEVICE_ID) != 2)
		fail("no virtio-blk device at", base, rd(MAGIC), rd(DEVICE_ID));
	wr(STATUS, 0);
	wr(STATUS, 1 | 2);                              /* ACKNOWLEDGE, DRIVER */
	wr(DEV_FEATURES_SEL, 1);
	if (!(rd(DEV_FEATURES) & 1))
		fail("device without VERSION_1", 0, rd(DEV_FEATURES), 0);
	wr(DRV_FEATURES_SEL, 0);
	wr(DRV_FEATURES, 0);
	wr(DRV_FEATURES_SEL, 1);
	wr(DRV_FEATURES, 1);                            /* VERSION_1 */
	wr(STATUS, 1 | 2 | 8);                          /* FEATURES_OK */
	if (!(rd(STATUS) & 8))
		fail("features refused", 0, rd(STATUS), 0);
	wr(QUEUE_SEL, 0);
	if (rd(QUEUE_NUM_MAX) < QN)
		fail("queue too small", rd(QUEUE_NUM_MAX), 0, 0);
	wr(QUEUE_NUM, QN);
	wr(QUEUE_DESC_LO, (uint32_t)(uintptr_t)ring_desc);
	wr(QUEUE_DESC_HI, (uint32_t)((uint64_t)(uintptr_t)ring_desc >> 32));
	wr(QUEUE_AVAIL_LO, (uint32_t)(uintptr_t)avail);
	wr(QUEUE_AVAIL_HI, (uint32_t)((uint64_t)(uintptr_t)avail >> 32));
	wr(QUEUE_USED_LO, (uint32_t)(uintptr_t)used);
	wr(QUEUE_USED_HI, (uint32_t)((uint64_t)(uintptr_t)used >> 32));
	wr(QUEUE_READY, 1);
	wr(STATUS, 1 | 2 | 8 | 4);                      /* DRIVER_OK */
	if (rd(STATUS) & 64)
		fail("device needs a reset", 0, rd(STATUS), 0);
}

static void set_desc(unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	ring_desc[i].addr = addr;
	ring_desc[i].len = len;
	ring_desc[i].flags = flags;
	ring_desc[i].next = next;
}

/* One request, waited for by polling the used ring. */
static void request(uint32_t type, uint64_t sector, volatile uint64_t *buf, uint32_t len, uint64_t cpu)
{
	uint16_t flags = type == 0 ? 2 : 0;             /* IN: the device writes the buffer */

	for (unsigned i = 0; i < 16; i++)
		hdr[i] = 0;
	*(volatile uint32_t *)hdr = type;
	*(volatile uint64_t *)(hdr + 8) = sector;
	*status = 0xff;
	set_desc(0, (uintptr_t)hdr, 16, 1, 1);
	set_desc(1, (uintptr_t)buf, len, (uint16_t)(flags | 1), 2);
	set_desc(2, (uintptr_t)status, 1, 2, 0);
	avail[2 + st->avail_idx % QN] = 0;
	__asm__ volatile("" ::: "memory");
	st->avail_idx++;
	avail[1] = st->avail_idx;
	__asm__ volatile("" ::: "memory");
	wr(QUEUE_NOTIFY, 0);
	while (used[1] == st->used_seen) {
		if (rd(STATUS) & 64)
			fail("device needs a reset", 0, rd(STATUS), 0);
		heartbeat(&hb[cpu]);
		cpu_relax();
	}
	st->used_seen++;
	if (*status != 0)
		fail("I/O error, status", *status, sector, type);
}

static void disk_main(const struct pmvm_bootinfo *bi)
{
	uint64_t blocks = param(bi, "blocks", 256), bs = param(bi, "bs", 4096);
	uint64_t steps = param(bi, "steps", 0), report = param(bi, "report", 16);
	uint64_t delay = param(bi, "delay", 0);
	uint64_t a = free_start(bi), sweep = 0, checked = 0;

	if (!bi->virtio_blk_base)
		fail("no disk (pmvm --disk)", 0, 0, 0);
	if (!blocks || blocks > MAXBLOCKS || !bs || bs % 512 || bs > 65536)
		fail("bad blocks or bs", blocks, bs, 0);
	if (!report)
		report = 16;
	/* Rings, request header and status, two buffers, the state. */
	ring_desc = (volatile struct desc *)(uintptr_t)a;
	avail = (volatile uint16_t *)(uintptr_t)(a + 1024);
	used = (volatile uint16_t *)(uintptr_t)(a + 4096);
	hdr = (volatile uint8_t *)(uintptr_t)(a + 2 * 4096);
	status = hdr + 64;
	wbuf = (volatile uint64_t *)(uintptr_t)(a + 3 * 4096);
	rbuf = (volatile uint64_t *)(uintptr_t)(a + 3 * 4096 + 65536);
	st = (struct state *)(uintptr_t)(a + 3 * 4096 + 2 * 65536);
	if ((uint64_t)(uintptr_t)(st + 1) > bi->low_mem_end)
		fail("memory too small", bi->low_mem_end, 0, 0);
	memset((void *)(uintptr_t)a, 0, 3 * 4096);
	memset(st, 0, sizeof(*st) - sizeof(st->version) + blocks * 8);
	device_init(bi->virtio_blk_base);
	uint64_t cap = (uint64_t)rd(CONFIG) | (uint64_t)rd(CONFIG + 4) << 32;
	if (cap < blocks * bs / 512)
		fail("disk too small, sectors", cap, blocks * bs / 512, 0);
	st->magic = DMAGIC;

	for (;;) {
		uint64_t n = st->step + 1;
		uint64_t b = mix64(n ^ 0xd15c) % blocks, ver = st->version[b] + 1;

		if (st->magic != DMAGIC)
			fail("state magic", 0, st->magic, DMAGIC);
		for (uint64_t j = 0; j < bs / 8; j++)
			wbuf[j] = word(b, ver, j);
		request(1, b * bs / 512, wbuf, (uint32_t)bs, 0);
		st->version[b] = ver;
		st->writes++;

		/* Read one block back, in order: a sweep every `blocks` steps. */
		uint64_t c = n % blocks;
		if (st->version[c]) {
			request(0, c * bs / 512, rbuf, (uint32_t)bs, 0);
			st->reads++;
			for (uint64_t j = 0; j < bs / 8; j++)
				if (rbuf[j] != word(c, st->version[c], j))
					fail("block", c, rbuf[j], word(c, st->version[c], j));
			checked++;
		}
		heartbeat(&hb[0]);
		st->step = n;
		if (n % report == 0) {
			console_lock();
			puts_raw("DISK OK ");
			putu_raw(n);
			puts_raw(" writes ");
			putu_raw(st->writes);
			putc_raw('\n');
			console_unlock();
		}
		if (c == blocks - 1) {
			console_lock();
			puts_raw("DISK SWEEP ");
			putu_raw(++sweep);
			puts_raw(" checked ");
			putu_raw(checked);
			putc_raw('\n');
			console_unlock();
			checked = 0;
		}
		if (steps && n >= steps)
			guest_exit(0);
		for (volatile uint64_t d = 0; d < delay; d++)
			;
	}
}

void guest_main(const struct pmvm_bootinfo *bi, uint64_t cpu)
{
	if (cpu >= PMVM_MAX_VCPUS)
		guest_exit(2);
	heartbeat_init(&hb[cpu], bi, 1);
	if (bi->magic != PMVM_BOOT_MAGIC)
		guest_exit(2);
	if (cpu == 0)
		disk_main(bi);
	for (;;) {
		heartbeat(&hb[cpu]);
		cpu_relax();
	}
}
