/* SPDX-License-Identifier: MIT */
/* The virtio-mmio transport, version 2 (virtio 1.x, "modern"), and split
 * virtqueues: the registers a driver programs, feature negotiation, the
 * queues' guest addresses, interrupt status, and taking descriptor chains
 * from the available ring and returning them on the used ring.  A device
 * (virtio_blk.c) plugs in through struct virtio_device_ops.
 *
 * Pure code: guest memory is reached through struct virtio_env, so the
 * unit tests drive a device over a plain buffer.  Every guest address,
 * descriptor index, length and chain is checked before it is used; a
 * malformed ring sets DEVICE_NEEDS_RESET and the device stops using the
 * queue until the driver resets it.  Thread-safe (one lock per device). */
#ifndef PMVM_VIRTIO_MMIO_H
#define PMVM_VIRTIO_MMIO_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define VIRTIO_MMIO_SIZE        0x200u
#define VIRTIO_MMIO_MAGIC       0x74726976u     /* "virt" */
#define VIRTIO_MMIO_VENDOR      0x4d564d50u     /* "PMVM" */
#define VIRTIO_MAX_QUEUES       2u
#define VIRTIO_QUEUE_MAX        256u            /* QueueNumMax */
#define VIRTIO_MAX_CHAIN        (VIRTIO_QUEUE_MAX + 2)

/* Registers (offsets). */
enum {
	VIRTIO_MMIO_MAGIC_VALUE = 0x000, VIRTIO_MMIO_VERSION = 0x004, VIRTIO_MMIO_DEVICE_ID = 0x008,
	VIRTIO_MMIO_VENDOR_ID = 0x00c, VIRTIO_MMIO_DEVICE_FEATURES = 0x010,
	VIRTIO_MMIO_DEVICE_FEATURES_SEL = 0x014, VIRTIO_MMIO_DRIVER_FEATURES = 0x020,
	VIRTIO_MMIO_DRIVER_FEATURES_SEL = 0x024, VIRTIO_MMIO_QUEUE_SEL = 0x030,
	VIRTIO_MMIO_QUEUE_NUM_MAX = 0x034, VIRTIO_MMIO_QUEUE_NUM = 0x038,
	VIRTIO_MMIO_QUEUE_READY = 0x044, VIRTIO_MMIO_QUEUE_NOTIFY = 0x050,
	VIRTIO_MMIO_INTERRUPT_STATUS = 0x060, VIRTIO_MMIO_INTERRUPT_ACK = 0x064,
	VIRTIO_MMIO_STATUS = 0x070, VIRTIO_MMIO_QUEUE_DESC_LOW = 0x080,
	VIRTIO_MMIO_QUEUE_DESC_HIGH = 0x084, VIRTIO_MMIO_QUEUE_DRIVER_LOW = 0x090,
	VIRTIO_MMIO_QUEUE_DRIVER_HIGH = 0x094, VIRTIO_MMIO_QUEUE_DEVICE_LOW = 0x0a0,
	VIRTIO_MMIO_QUEUE_DEVICE_HIGH = 0x0a4, VIRTIO_MMIO_CONFIG_GENERATION = 0x0fc,
	VIRTIO_MMIO_CONFIG = 0x100,
};

/* Device status bits. */
#define VIRTIO_STATUS_ACKNOWLEDGE       1u
#define VIRTIO_STATUS_DRIVER            2u
#define VIRTIO_STATUS_DRIVER_OK         4u
#define VIRTIO_STATUS_FEATURES_OK       8u
#define VIRTIO_STATUS_NEEDS_RESET       64u
#define VIRTIO_STATUS_FAILED            128u

#define VIRTIO_F_VERSION_1              (1ull << 32)
#define VIRTIO_INT_USED_RING            1u
#define VIRTQ_DESC_F_NEXT               1u
#define VIRTQ_DESC_F_WRITE              2u
#define VIRTQ_DESC_F_INDIRECT           4u
#define VIRTQ_AVAIL_F_NO_INTERRUPT      1u

/* What migrates: everything a driver programmed, and where the device is
 * in each available ring (the rings themselves are in guest memory). */
struct virtio_queue_state {
	uint32_t num;                   /* 0: not set up */
	uint32_t ready;
	uint64_t desc, avail, used;     /* guest-physical */
	uint16_t last_avail;            /* next available entry to take */
	uint16_t reserved[3];
};

struct virtio_mmio_state {
	uint32_t status;
	uint32_t device_features_sel;
	uint32_t driver_features_sel;
	uint32_t queue_sel;
	uint32_t int_status;
	uint32_t config_generation;
	uint64_t driver_features;
	struct virtio_queue_state q[VIRTIO_MAX_QUEUES];
};

/* Guest memory and the interrupt line, as the VMM provides them. */
struct virtio_env {
	/* Host address of [gpa, gpa + len) if it lies wholly in guest RAM, else NULL. */
	void *(*gpa)(void *opaque, uint64_t gpa, uint64_t len);
	/* The device wrote guest memory there (for migration's dirty tracking). */
	void (*dirty)(void *opaque, uint64_t gpa, uint64_t len);
	void (*irq)(void *opaque, bool level);
	void *opaque;
};

struct virtio_mmio;

struct virtio_device_ops {
	/* The driver notified queue q (lock held). */
	void (*notify)(void *dev, struct virtio_mmio *t, unsigned q);
	/* Reads len bytes of device config at off (lock held); off + len is
	 * within config_len. */
	void (*config_read)(void *dev, uint32_t off, void *out, uint32_t len);
};

struct virtio_mmio {
	pthread_mutex_t lock;
	struct virtio_mmio_state s;
	uint32_t device_id;
	uint32_t nqueues;
	uint64_t device_features;
	uint32_t config_len;
	bool irq_level;
	struct virtio_env env;
	const struct virtio_device_ops *ops;
	void *dev;
	char why[160];                  /* why the device needs a reset, if it does */
};

/* One descriptor chain taken from an available ring. */
struct virtio_chain {
	uint16_t head;
	unsigned n;
	struct virtio_buf {
		uint64_t gpa;
		uint32_t len;
		bool write;             /* device-writable */
		uint8_t *host;          /* checked: gpa..gpa+len is RAM */
	} d[VIRTIO_MAX_CHAIN];
};

void virtio_mmio_init(struct virtio_mmio *t, uint32_t device_id, uint32_t nqueues,
		      uint64_t device_features, uint32_t config_len,
		      const struct virtio_device_ops *ops, void *dev, const struct virtio_env *env);
void virtio_mmio_destroy(struct virtio_mmio *t);
/* A guest access of len (1, 2, 4 or 8) bytes at offset off of the window. */
void virtio_mmio_read(struct virtio_mmio *t, uint64_t off, void *data, unsigned len);
void virtio_mmio_write(struct virtio_mmio *t, uint64_t off, const void *data, unsigned len);

/* For devices, lock held: takes the next chain of queue q.  1: taken, 0: the
 * ring is empty (or the queue not ready), -1: malformed (the device now
 * needs a reset; t->why says why). */
int virtio_queue_pop(struct virtio_mmio *t, unsigned q, struct virtio_chain *c);
/* Returns chain head with written bytes on the used ring. */
void virtio_queue_push(struct virtio_mmio *t, unsigned q, uint16_t head, uint32_t written);
/* After pushes: raises the interrupt unless the driver asked for none. */
void virtio_queue_signal(struct virtio_mmio *t, unsigned q);
/* The device broke the protocol's rules (lock held): NEEDS_RESET. */
void virtio_mmio_fail(struct virtio_mmio *t, const char *why);

/* Migration.  load checks that st is a state this transport can be in
 * (-EINVAL otherwise) and raises the interrupt line again if it was up. */
void virtio_mmio_save(struct virtio_mmio *t, struct virtio_mmio_state *st);
int virtio_mmio_load(struct virtio_mmio *t, const struct virtio_mmio_state *st);
/* The same check without a device (the state blob decoder's). */
int virtio_mmio_state_check(const struct virtio_mmio_state *st, uint32_t nqueues);

#endif
