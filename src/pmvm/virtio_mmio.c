// SPDX-License-Identifier: MIT
/* The virtio-mmio transport (version 2) and split virtqueues; see
 * virtio_mmio.h.  Register semantics follow the virtio 1.1 specification,
 * sections 2 (basic facilities), 4.2 (MMIO transport). */
#include "virtio_mmio.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define KNOWN_STATUS (VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_DRIVER_OK | \
		      VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)

static uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static uint64_t desc_bytes(uint32_t num) { return 16ull * num; }
static uint64_t avail_bytes(uint32_t num) { return 6 + 2ull * num; }
static uint64_t used_bytes(uint32_t num) { return 6 + 8ull * num; }

void virtio_mmio_init(struct virtio_mmio *t, uint32_t device_id, uint32_t nqueues,
		      uint64_t device_features, uint32_t config_len,
		      const struct virtio_device_ops *ops, void *dev, const struct virtio_env *env)
{
	memset(t, 0, sizeof(*t));
	pthread_mutex_init(&t->lock, NULL);
	t->device_id = device_id;
	t->nqueues = nqueues < VIRTIO_MAX_QUEUES ? nqueues : VIRTIO_MAX_QUEUES;
	t->device_features = device_features | VIRTIO_F_VERSION_1;
	t->config_len = config_len;
	t->ops = ops;
	t->dev = dev;
	t->env = *env;
}

void virtio_mmio_destroy(struct virtio_mmio *t)
{
	pthread_mutex_destroy(&t->lock);
}

static void set_irq(struct virtio_mmio *t)
{
	bool level = t->s.int_status != 0;

	if (level != t->irq_level) {
		t->irq_level = level;
		if (t->env.irq)
			t->env.irq(t->env.opaque, level);
	}
}

void virtio_mmio_fail(struct virtio_mmio *t, const char *why)
{
	if (!(t->s.status & VIRTIO_STATUS_NEEDS_RESET))
		snprintf(t->why, sizeof(t->why), "%s", why);
	t->s.status |= VIRTIO_STATUS_NEEDS_RESET;
	/* The driver learns it from a configuration-change interrupt. */
	if (t->s.status & VIRTIO_STATUS_DRIVER_OK) {
		t->s.int_status |= 2;
		set_irq(t);
	}
}

static void reset(struct virtio_mmio *t)
{
	memset(&t->s, 0, sizeof(t->s));
	t->why[0] = '\0';
	set_irq(t);
}

/* Queue q's rings lie in guest RAM, properly aligned. */
static bool rings_ok(struct virtio_mmio *t, const struct virtio_queue_state *q)
{
	if (!q->num || q->num > VIRTIO_QUEUE_MAX || (q->num & (q->num - 1)))
		return false;
	if (q->desc % 16 || q->avail % 2 || q->used % 4)
		return false;
	return t->env.gpa(t->env.opaque, q->desc, desc_bytes(q->num)) &&
	       t->env.gpa(t->env.opaque, q->avail, avail_bytes(q->num)) &&
	       t->env.gpa(t->env.opaque, q->used, used_bytes(q->num));
}

static struct virtio_queue_state *cur_queue(struct virtio_mmio *t)
{
	return t->s.queue_sel < t->nqueues ? &t->s.q[t->s.queue_sel] : NULL;
}

static uint32_t read_reg(struct virtio_mmio *t, uint64_t off)
{
	struct virtio_queue_state *q = cur_queue(t);

	switch (off) {
	case VIRTIO_MMIO_MAGIC_VALUE: return VIRTIO_MMIO_MAGIC;
	case VIRTIO_MMIO_VERSION: return 2;
	case VIRTIO_MMIO_DEVICE_ID: return t->device_id;
	case VIRTIO_MMIO_VENDOR_ID: return VIRTIO_MMIO_VENDOR;
	case VIRTIO_MMIO_DEVICE_FEATURES:
		return t->s.device_features_sel == 0 ? (uint32_t)t->device_features :
		       t->s.device_features_sel == 1 ? (uint32_t)(t->device_features >> 32) : 0;
	case VIRTIO_MMIO_QUEUE_NUM_MAX: return q ? VIRTIO_QUEUE_MAX : 0;
	case VIRTIO_MMIO_QUEUE_READY: return q ? q->ready : 0;
	case VIRTIO_MMIO_INTERRUPT_STATUS: return t->s.int_status;
	case VIRTIO_MMIO_STATUS: return t->s.status;
	case VIRTIO_MMIO_CONFIG_GENERATION: return t->s.config_generation;
	default: return 0;
	}
}

void virtio_mmio_read(struct virtio_mmio *t, uint64_t off, void *data, unsigned len)
{
	uint8_t buf[8] = { 0 };

	if (len > 8)
		len = 8;
	pthread_mutex_lock(&t->lock);
	if (off >= VIRTIO_MMIO_CONFIG) {
		uint64_t c = off - VIRTIO_MMIO_CONFIG;
		if (c < t->config_len && len <= t->config_len - c && t->ops->config_read)
			t->ops->config_read(t->dev, (uint32_t)c, buf, len);
	} else if (off % 4 == 0) {
		uint32_t v = read_reg(t, off);
		memcpy(buf, &v, 4);
	}
	pthread_mutex_unlock(&t->lock);
	memcpy(data, buf, len);
}

static void set_half(uint64_t *reg, bool high, uint32_t v)
{
	*reg = high ? (*reg & 0xffffffffull) | (uint64_t)v << 32 : (*reg & ~0xffffffffull) | v;
}

static void write_status(struct virtio_mmio *t, uint32_t v)
{
	if (v == 0) {
		reset(t);
		return;
	}
	v &= KNOWN_STATUS & ~VIRTIO_STATUS_NEEDS_RESET;
	if ((v & VIRTIO_STATUS_FEATURES_OK) && !(t->s.status & VIRTIO_STATUS_FEATURES_OK)) {
		/* Features the device lacks, or a legacy driver: refused, so the
		 * driver reads FEATURES_OK back unset. */
		if ((t->s.driver_features & ~t->device_features) ||
		    !(t->s.driver_features & VIRTIO_F_VERSION_1))
			v &= ~VIRTIO_STATUS_FEATURES_OK;
	}
	t->s.status = v | (t->s.status & VIRTIO_STATUS_NEEDS_RESET);
}

void virtio_mmio_write(struct virtio_mmio *t, uint64_t off, const void *data, unsigned len)
{
	struct virtio_queue_state *q;
	uint32_t v = 0;

	if (off >= VIRTIO_MMIO_CONFIG || off % 4 || len != 4)
		return;                 /* config is read-only here; registers are 32-bit */
	memcpy(&v, data, 4);
	pthread_mutex_lock(&t->lock);
	q = cur_queue(t);
	switch (off) {
	case VIRTIO_MMIO_DEVICE_FEATURES_SEL: t->s.device_features_sel = v; break;
	case VIRTIO_MMIO_DRIVER_FEATURES_SEL: t->s.driver_features_sel = v; break;
	case VIRTIO_MMIO_DRIVER_FEATURES:
		if (t->s.driver_features_sel < 2 && !(t->s.status & VIRTIO_STATUS_FEATURES_OK))
			set_half(&t->s.driver_features, t->s.driver_features_sel == 1, v);
		break;
	case VIRTIO_MMIO_QUEUE_SEL: t->s.queue_sel = v; break;
	case VIRTIO_MMIO_QUEUE_NUM:
		if (q && !q->ready)
			q->num = v;
		break;
	case VIRTIO_MMIO_QUEUE_DESC_LOW: case VIRTIO_MMIO_QUEUE_DESC_HIGH:
		if (q && !q->ready)
			set_half(&q->desc, off == VIRTIO_MMIO_QUEUE_DESC_HIGH, v);
		break;
	case VIRTIO_MMIO_QUEUE_DRIVER_LOW: case VIRTIO_MMIO_QUEUE_DRIVER_HIGH:
		if (q && !q->ready)
			set_half(&q->avail, off == VIRTIO_MMIO_QUEUE_DRIVER_HIGH, v);
		break;
	case VIRTIO_MMIO_QUEUE_DEVICE_LOW: case VIRTIO_MMIO_QUEUE_DEVICE_HIGH:
		if (q && !q->ready)
			set_half(&q->used, off == VIRTIO_MMIO_QUEUE_DEVICE_HIGH, v);
		break;
	case VIRTIO_MMIO_QUEUE_READY:
		if (!q)
			break;
		if (v == 1 && !q->ready) {
			if (!rings_ok(t, q)) {
				virtio_mmio_fail(t, "queue set up with a bad size or rings outside RAM");
				break;
			}
			q->ready = 1;
			q->last_avail = 0;
		} else if (v == 0) {
			q->ready = 0;
		}
		break;
	case VIRTIO_MMIO_QUEUE_NOTIFY:
		if (v < t->nqueues && t->s.q[v].ready && (t->s.status & VIRTIO_STATUS_DRIVER_OK) &&
		    !(t->s.status & VIRTIO_STATUS_NEEDS_RESET))
			t->ops->notify(t->dev, t, v);
		break;
	case VIRTIO_MMIO_INTERRUPT_ACK:
		t->s.int_status &= ~v;
		if (t->s.int_status && t->irq_level && t->env.irq) {
			/* Still pending: a new edge, so it is not lost. */
			t->env.irq(t->env.opaque, false);
			t->env.irq(t->env.opaque, true);
		}
		set_irq(t);
		break;
	case VIRTIO_MMIO_STATUS:
		write_status(t, v);
		break;
	default:
		break;
	}
	pthread_mutex_unlock(&t->lock);
}

int virtio_queue_pop(struct virtio_mmio *t, unsigned qi, struct virtio_chain *c)
{
	struct virtio_queue_state *q = &t->s.q[qi];
	const uint8_t *avail, *desc;
	uint16_t idx, i;

	if (qi >= t->nqueues || !q->ready || (t->s.status & VIRTIO_STATUS_NEEDS_RESET))
		return 0;
	avail = t->env.gpa(t->env.opaque, q->avail, avail_bytes(q->num));
	desc = t->env.gpa(t->env.opaque, q->desc, desc_bytes(q->num));
	if (!avail || !desc) {
		virtio_mmio_fail(t, "queue rings are outside RAM");
		return -1;
	}
	idx = __atomic_load_n((const uint16_t *)(avail + 2), __ATOMIC_ACQUIRE);
	if (idx == q->last_avail)
		return 0;
	if ((uint16_t)(idx - q->last_avail) > q->num) {
		virtio_mmio_fail(t, "available index ran ahead by more than the queue size");
		return -1;
	}
	i = ld16(avail + 4 + 2 * (q->last_avail % q->num));
	c->head = i;
	c->n = 0;
	bool seen_write = false;
	for (;;) {
		const uint8_t *d;
		uint16_t flags;

		if (i >= q->num || c->n >= q->num) {
			virtio_mmio_fail(t, i >= q->num ? "descriptor index out of range" : "descriptor chain loops");
			return -1;
		}
		d = desc + 16 * i;
		flags = ld16(d + 12);
		struct virtio_buf *b = &c->d[c->n];
		b->gpa = ld64(d);
		b->len = ld32(d + 8);
		b->write = flags & VIRTQ_DESC_F_WRITE;
		if (flags & VIRTQ_DESC_F_INDIRECT) {
			virtio_mmio_fail(t, "indirect descriptor (not negotiated)");
			return -1;
		}
		if (!b->len || !(b->host = t->env.gpa(t->env.opaque, b->gpa, b->len))) {
			virtio_mmio_fail(t, "descriptor buffer is empty or outside RAM");
			return -1;
		}
		if (seen_write && !b->write) {
			virtio_mmio_fail(t, "device-readable descriptor after a writable one");
			return -1;
		}
		seen_write |= b->write;
		c->n++;
		if (!(flags & VIRTQ_DESC_F_NEXT))
			break;
		i = ld16(d + 14);
	}
	q->last_avail++;
	return 1;
}

void virtio_queue_push(struct virtio_mmio *t, unsigned qi, uint16_t head, uint32_t written)
{
	struct virtio_queue_state *q = &t->s.q[qi];
	uint8_t *used = t->env.gpa(t->env.opaque, q->used, used_bytes(q->num));
	uint16_t idx;
	uint32_t elem[2] = { head, written };

	if (!used)
		return;         /* checked when the queue was set up and at load */
	idx = __atomic_load_n((uint16_t *)(used + 2), __ATOMIC_RELAXED);
	memcpy(used + 4 + 8 * (idx % q->num), elem, sizeof(elem));
	/* The element before the index the driver polls. */
	__atomic_store_n((uint16_t *)(used + 2), (uint16_t)(idx + 1), __ATOMIC_RELEASE);
	if (t->env.dirty)
		t->env.dirty(t->env.opaque, q->used, used_bytes(q->num));
}

void virtio_queue_signal(struct virtio_mmio *t, unsigned qi)
{
	struct virtio_queue_state *q = &t->s.q[qi];
	const uint8_t *avail = t->env.gpa(t->env.opaque, q->avail, avail_bytes(q->num));

	if (avail && (__atomic_load_n((const uint16_t *)avail, __ATOMIC_ACQUIRE) & VIRTQ_AVAIL_F_NO_INTERRUPT))
		return;
	t->s.int_status |= VIRTIO_INT_USED_RING;
	set_irq(t);
}

void virtio_mmio_save(struct virtio_mmio *t, struct virtio_mmio_state *st)
{
	pthread_mutex_lock(&t->lock);
	*st = t->s;
	pthread_mutex_unlock(&t->lock);
}

int virtio_mmio_state_check(const struct virtio_mmio_state *st, uint32_t nqueues)
{
	if (st->status & ~KNOWN_STATUS)
		return -EINVAL;
	if (st->int_status & ~3u)
		return -EINVAL;
	for (unsigned i = 0; i < VIRTIO_MAX_QUEUES; i++) {
		const struct virtio_queue_state *q = &st->q[i];
		if (q->reserved[0] || q->reserved[1] || q->reserved[2] || q->ready > 1)
			return -EINVAL;
		if (i >= nqueues && (q->num || q->ready || q->desc || q->avail || q->used || q->last_avail))
			return -EINVAL;
		if (q->ready && (!q->num || q->num > VIRTIO_QUEUE_MAX || (q->num & (q->num - 1)) ||
				 q->desc % 16 || q->avail % 2 || q->used % 4))
			return -EINVAL;
	}
	return 0;
}

int virtio_mmio_load(struct virtio_mmio *t, const struct virtio_mmio_state *st)
{
	int r = virtio_mmio_state_check(st, t->nqueues);

	if (r)
		return r;
	if (st->driver_features & ~t->device_features)
		return -EINVAL;
	pthread_mutex_lock(&t->lock);
	for (unsigned i = 0; i < t->nqueues; i++)
		if (st->q[i].ready && !rings_ok(t, &st->q[i])) {
			pthread_mutex_unlock(&t->lock);
			return -EINVAL;
		}
	t->s = *st;
	t->irq_level = false;
	set_irq(t);
	pthread_mutex_unlock(&t->lock);
	return 0;
}
