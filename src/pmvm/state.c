// SPDX-License-Identifier: MIT
/* State blob layout (all integers little-endian, the host's order: pmvm is
 * x86-64 only and the KVM structs are a fixed ABI):
 *
 *   header   magic "PMVMSTAT", u32 version, u32 header length (32),
 *            u64 total length, u32 section count, u32 CRC-32C of every byte
 *            after the header
 *   section  u16 type, u16 zero, u32 vCPU index (0xffffffff for VM state),
 *            u32 payload length, u32 zero, then the payload padded with
 *            zeros to a multiple of 8
 *
 * The first section is CONFIG (memory size, vCPU count).  Every other
 * required section appears exactly once per VM or per vCPU.
 */
#include "state.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cfg_payload {
	uint64_t mem_bytes;
	uint32_t nvcpus;
	uint32_t zero;
};

struct sec_hdr {
	uint16_t type;
	uint16_t zero;
	uint32_t vcpu;
	uint32_t len;
	uint32_t zero2;
};

_Static_assert(sizeof(struct sec_hdr) == PMVM_STATE_SEC_LEN, "section header size");
_Static_assert(sizeof(struct pmvm_serial_state) == 16, "serial state size");

static const char *const sec_names[] = {
	[PMVM_SEC_CONFIG] = "config",
	[PMVM_SEC_PIC_MASTER] = "pic-master",
	[PMVM_SEC_PIC_SLAVE] = "pic-slave",
	[PMVM_SEC_IOAPIC] = "ioapic",
	[PMVM_SEC_PIT2] = "pit2",
	[PMVM_SEC_CLOCK] = "clock",
	[PMVM_SEC_SERIAL] = "serial",
	[PMVM_SEC_HEARTBEAT] = "heartbeat",
	[PMVM_SEC_RTC] = "rtc",
	[PMVM_SEC_VIRTIO_BLK] = "virtio-blk",
	[PMVM_SEC_REGS] = "regs",
	[PMVM_SEC_SREGS] = "sregs",
	[PMVM_SEC_FPU] = "fpu",
	[PMVM_SEC_XSAVE] = "xsave",
	[PMVM_SEC_XCRS] = "xcrs",
	[PMVM_SEC_MSRS] = "msrs",
	[PMVM_SEC_LAPIC] = "lapic",
	[PMVM_SEC_EVENTS] = "vcpu-events",
	[PMVM_SEC_MP_STATE] = "mp-state",
	[PMVM_SEC_DEBUGREGS] = "debugregs",
};

const char *pmvm_state_section_name(unsigned type)
{
	if (type < sizeof(sec_names) / sizeof(sec_names[0]) && sec_names[type])
		return sec_names[type];
	return "unknown";
}

uint32_t pmvm_crc32c(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	crc = ~crc;
	while (len--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1)));
	}
	return ~crc;
}

/* Fixed payload size of a section type, 0 for variable-length ones. */
static size_t fixed_len(unsigned type)
{
	switch (type) {
	case PMVM_SEC_CONFIG: return sizeof(struct cfg_payload);
	case PMVM_SEC_PIC_MASTER:
	case PMVM_SEC_PIC_SLAVE:
	case PMVM_SEC_IOAPIC: return sizeof(struct kvm_irqchip);
	case PMVM_SEC_PIT2: return sizeof(struct kvm_pit_state2);
	case PMVM_SEC_CLOCK: return sizeof(struct kvm_clock_data);
	case PMVM_SEC_SERIAL: return sizeof(struct pmvm_serial_state);
	case PMVM_SEC_HEARTBEAT: return sizeof(struct pmvm_heartbeat_state);
	case PMVM_SEC_RTC: return sizeof(struct pmvm_rtc_state);
	case PMVM_SEC_VIRTIO_BLK: return sizeof(struct virtio_mmio_state);
	case PMVM_SEC_REGS: return sizeof(struct kvm_regs);
	case PMVM_SEC_SREGS: return sizeof(struct kvm_sregs);
	case PMVM_SEC_FPU: return sizeof(struct kvm_fpu);
	case PMVM_SEC_XCRS: return sizeof(struct kvm_xcrs);
	case PMVM_SEC_LAPIC: return sizeof(struct kvm_lapic_state);
	case PMVM_SEC_EVENTS: return sizeof(struct kvm_vcpu_events);
	case PMVM_SEC_MP_STATE: return sizeof(struct kvm_mp_state);
	case PMVM_SEC_DEBUGREGS: return sizeof(struct kvm_debugregs);
	default: return 0;
	}
}

static bool known(unsigned type)
{
	return (type >= PMVM_SEC_CONFIG && type <= PMVM_SEC_VM_LAST) ||
	       (type >= PMVM_SEC_REGS && type <= PMVM_SEC_VCPU_LAST);
}

static bool per_vcpu(unsigned type)
{
	return type >= PMVM_SEC_REGS;
}

static bool optional(unsigned type)
{
	return type == PMVM_SEC_XSAVE || type == PMVM_SEC_XCRS || type == PMVM_SEC_HEARTBEAT ||
	       type == PMVM_SEC_RTC || type == PMVM_SEC_VIRTIO_BLK;
}

int pmvm_state_init(struct pmvm_vm_state *st, uint32_t nvcpus, struct pm_err *err)
{
	memset(st, 0, sizeof(*st));
	if (nvcpus == 0 || nvcpus > PMVM_STATE_MAX_VCPUS)
		return pm_err_set(err, EINVAL, "state: %u vCPUs is out of range 1..%u",
				  nvcpus, PMVM_STATE_MAX_VCPUS);
	st->vcpus = calloc(nvcpus, sizeof(*st->vcpus));
	if (!st->vcpus)
		return pm_err_set(err, ENOMEM, "state: out of memory");
	st->nvcpus = nvcpus;
	return 0;
}

void pmvm_state_free(struct pmvm_vm_state *st)
{
	if (st->vcpus) {
		for (uint32_t i = 0; i < st->nvcpus; i++) {
			free(st->vcpus[i].xsave);
			free(st->vcpus[i].msrs);
		}
		free(st->vcpus);
	}
	memset(st, 0, sizeof(*st));
}

/* ---- encoding ---- */

struct wbuf {
	uint8_t *p;
	size_t len, cap;
	uint32_t nsec;
	int error;
};

static void put_bytes(struct wbuf *w, const void *src, size_t n)
{
	if (w->error)
		return;
	if (w->len + n > w->cap) {
		size_t cap = w->cap ? w->cap : 16384;
		uint8_t *p;

		while (cap < w->len + n)
			cap *= 2;
		p = realloc(w->p, cap);
		if (!p) {
			w->error = ENOMEM;
			return;
		}
		w->p = p;
		w->cap = cap;
	}
	if (src)
		memcpy(w->p + w->len, src, n);
	else
		memset(w->p + w->len, 0, n);
	w->len += n;
}

static void put_section(struct wbuf *w, unsigned type, uint32_t vcpu,
			const void *a, size_t alen, const void *b, size_t blen)
{
	struct sec_hdr h = { .type = (uint16_t)type, .vcpu = vcpu, .len = (uint32_t)(alen + blen) };
	size_t pad = (8 - (alen + blen) % 8) % 8;

	put_bytes(w, &h, sizeof(h));
	put_bytes(w, a, alen);
	if (blen)
		put_bytes(w, b, blen);
	put_bytes(w, NULL, pad);
	w->nsec++;
}

int pmvm_state_encode(const struct pmvm_vm_state *st, void **buf, size_t *len,
		      struct pm_err *err)
{
	struct wbuf w = {0};
	struct cfg_payload cfg = { .mem_bytes = st->mem_bytes, .nvcpus = st->nvcpus };
	const uint32_t vm = PMVM_STATE_VM_INDEX;
	uint64_t total;
	uint32_t crc, version = PMVM_STATE_VERSION, hlen = PMVM_STATE_HDR_LEN;

	if (st->nvcpus == 0 || st->nvcpus > PMVM_STATE_MAX_VCPUS || !st->vcpus)
		return pm_err_set(err, EINVAL, "state: cannot encode %u vCPUs", st->nvcpus);

	put_bytes(&w, NULL, PMVM_STATE_HDR_LEN);
	put_section(&w, PMVM_SEC_CONFIG, vm, &cfg, sizeof(cfg), NULL, 0);
	put_section(&w, PMVM_SEC_PIC_MASTER, vm, &st->pic_master, sizeof(st->pic_master), NULL, 0);
	put_section(&w, PMVM_SEC_PIC_SLAVE, vm, &st->pic_slave, sizeof(st->pic_slave), NULL, 0);
	put_section(&w, PMVM_SEC_IOAPIC, vm, &st->ioapic, sizeof(st->ioapic), NULL, 0);
	put_section(&w, PMVM_SEC_PIT2, vm, &st->pit, sizeof(st->pit), NULL, 0);
	put_section(&w, PMVM_SEC_CLOCK, vm, &st->clock, sizeof(st->clock), NULL, 0);
	put_section(&w, PMVM_SEC_SERIAL, vm, &st->serial, sizeof(st->serial), NULL, 0);
	if (st->has_heartbeat)
		put_section(&w, PMVM_SEC_HEARTBEAT, vm, &st->heartbeat, sizeof(st->heartbeat), NULL, 0);
	if (st->has_rtc)
		put_section(&w, PMVM_SEC_RTC, vm, &st->rtc, sizeof(st->rtc), NULL, 0);
	if (st->has_virtio_blk)
		put_section(&w, PMVM_SEC_VIRTIO_BLK, vm, &st->virtio_blk, sizeof(st->virtio_blk), NULL, 0);

	for (uint32_t i = 0; i < st->nvcpus; i++) {
		const struct pmvm_vcpu_state *v = &st->vcpus[i];
		uint32_t mh[2] = { v->nmsrs, 0 };

		if (v->nmsrs > PMVM_STATE_MAX_MSRS ||
		    (v->xsave_len && (v->xsave_len < PMVM_STATE_MIN_XSAVE ||
				      v->xsave_len > PMVM_STATE_MAX_XSAVE || !v->xsave))) {
			free(w.p);
			return pm_err_set(err, EINVAL, "state: vCPU %u has %u MSRs and %u XSAVE bytes, out of range",
					  i, v->nmsrs, v->xsave_len);
		}
		put_section(&w, PMVM_SEC_REGS, i, &v->regs, sizeof(v->regs), NULL, 0);
		put_section(&w, PMVM_SEC_SREGS, i, &v->sregs, sizeof(v->sregs), NULL, 0);
		put_section(&w, PMVM_SEC_FPU, i, &v->fpu, sizeof(v->fpu), NULL, 0);
		if (v->xsave_len)
			put_section(&w, PMVM_SEC_XSAVE, i, v->xsave, v->xsave_len, NULL, 0);
		if (v->has_xcrs)
			put_section(&w, PMVM_SEC_XCRS, i, &v->xcrs, sizeof(v->xcrs), NULL, 0);
		put_section(&w, PMVM_SEC_MSRS, i, mh, sizeof(mh), v->msrs,
			    (size_t)v->nmsrs * sizeof(struct kvm_msr_entry));
		put_section(&w, PMVM_SEC_LAPIC, i, &v->lapic, sizeof(v->lapic), NULL, 0);
		put_section(&w, PMVM_SEC_EVENTS, i, &v->events, sizeof(v->events), NULL, 0);
		put_section(&w, PMVM_SEC_MP_STATE, i, &v->mp, sizeof(v->mp), NULL, 0);
		put_section(&w, PMVM_SEC_DEBUGREGS, i, &v->debugregs, sizeof(v->debugregs), NULL, 0);
	}
	if (w.error) {
		free(w.p);
		return pm_err_set(err, w.error, "state: out of memory encoding the device state");
	}
	total = w.len;
	crc = pmvm_crc32c(0, w.p + PMVM_STATE_HDR_LEN, w.len - PMVM_STATE_HDR_LEN);
	memcpy(w.p, PMVM_STATE_MAGIC, 8);
	memcpy(w.p + 8, &version, 4);
	memcpy(w.p + 12, &hlen, 4);
	memcpy(w.p + 16, &total, 8);
	memcpy(w.p + 24, &w.nsec, 4);
	memcpy(w.p + 28, &crc, 4);
	*buf = w.p;
	*len = w.len;
	return 0;
}

/* ---- decoding ---- */

static int bad(struct pmvm_vm_state *st, struct pm_err *err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int bad(struct pmvm_vm_state *st, struct pm_err *err, const char *fmt, ...)
{
	char msg[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	pmvm_state_free(st);
	return pm_err_set(err, EPROTO, "invalid pmvm state: %s", msg);
}

static bool all_zero(const void *p, size_t n)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < n; i++)
		if (b[i])
			return false;
	return true;
}

static int check_vcpu_payload(unsigned type, const uint8_t *pl, uint32_t plen, uint32_t idx,
			      struct pmvm_vm_state *st, struct pm_err *err)
{
	struct pmvm_vcpu_state *v = &st->vcpus[idx];

	switch (type) {
	case PMVM_SEC_XSAVE:
		if (plen < PMVM_STATE_MIN_XSAVE || plen > PMVM_STATE_MAX_XSAVE)
			return bad(st, err, "vCPU %u: XSAVE area of %u bytes (allowed %u..%u)",
				   idx, plen, PMVM_STATE_MIN_XSAVE, PMVM_STATE_MAX_XSAVE);
		v->xsave = malloc(plen);
		if (!v->xsave) {
			pmvm_state_free(st);
			return pm_err_set(err, ENOMEM, "state: out of memory");
		}
		memcpy(v->xsave, pl, plen);
		v->xsave_len = plen;
		return 0;
	case PMVM_SEC_MSRS: {
		uint32_t n, z;

		if (plen < 8)
			return bad(st, err, "vCPU %u: MSR section of %u bytes is shorter than its count", idx, plen);
		memcpy(&n, pl, 4);
		memcpy(&z, pl + 4, 4);
		if (n > PMVM_STATE_MAX_MSRS || z)
			return bad(st, err, "vCPU %u: MSR count %u (max %u)", idx, n, PMVM_STATE_MAX_MSRS);
		if (plen != 8 + (uint64_t)n * sizeof(struct kvm_msr_entry))
			return bad(st, err, "vCPU %u: MSR section of %u bytes does not hold %u MSRs",
				   idx, plen, n);
		v->msrs = calloc(n ? n : 1, sizeof(*v->msrs));
		if (!v->msrs) {
			pmvm_state_free(st);
			return pm_err_set(err, ENOMEM, "state: out of memory");
		}
		memcpy(v->msrs, pl + 8, (size_t)n * sizeof(*v->msrs));
		for (uint32_t k = 0; k < n; k++) {
			if (v->msrs[k].reserved)
				return bad(st, err, "vCPU %u: MSR entry %u has reserved bits set", idx, k);
			if (k && v->msrs[k].index <= v->msrs[k - 1].index)
				return bad(st, err, "vCPU %u: MSR 0x%x out of order or repeated",
					   idx, v->msrs[k].index);
		}
		v->nmsrs = n;
		return 0;
	}
	case PMVM_SEC_REGS: memcpy(&v->regs, pl, plen); return 0;
	case PMVM_SEC_SREGS: memcpy(&v->sregs, pl, plen); return 0;
	case PMVM_SEC_FPU: memcpy(&v->fpu, pl, plen); return 0;
	case PMVM_SEC_XCRS:
		memcpy(&v->xcrs, pl, plen);
		if (v->xcrs.nr_xcrs > KVM_MAX_XCRS || v->xcrs.flags)
			return bad(st, err, "vCPU %u: %u XCRs (max %u), flags 0x%x", idx, v->xcrs.nr_xcrs,
				   KVM_MAX_XCRS, v->xcrs.flags);
		v->has_xcrs = true;
		return 0;
	case PMVM_SEC_LAPIC: memcpy(&v->lapic, pl, plen); return 0;
	case PMVM_SEC_EVENTS: memcpy(&v->events, pl, plen); return 0;
	case PMVM_SEC_MP_STATE:
		memcpy(&v->mp, pl, plen);
		if (v->mp.mp_state > KVM_MP_STATE_SUSPENDED)
			return bad(st, err, "vCPU %u: unknown MP state %u", idx, v->mp.mp_state);
		return 0;
	case PMVM_SEC_DEBUGREGS: memcpy(&v->debugregs, pl, plen); return 0;
	}
	return bad(st, err, "section type %u is not per-vCPU", type);
}

static int check_vm_payload(unsigned type, const uint8_t *pl, uint32_t plen,
			    struct pmvm_vm_state *st, struct pm_err *err)
{
	switch (type) {
	case PMVM_SEC_PIC_MASTER:
		memcpy(&st->pic_master, pl, plen);
		if (st->pic_master.chip_id != KVM_IRQCHIP_PIC_MASTER)
			return bad(st, err, "pic-master section holds chip %u", st->pic_master.chip_id);
		return 0;
	case PMVM_SEC_PIC_SLAVE:
		memcpy(&st->pic_slave, pl, plen);
		if (st->pic_slave.chip_id != KVM_IRQCHIP_PIC_SLAVE)
			return bad(st, err, "pic-slave section holds chip %u", st->pic_slave.chip_id);
		return 0;
	case PMVM_SEC_IOAPIC:
		memcpy(&st->ioapic, pl, plen);
		if (st->ioapic.chip_id != KVM_IRQCHIP_IOAPIC)
			return bad(st, err, "ioapic section holds chip %u", st->ioapic.chip_id);
		return 0;
	case PMVM_SEC_PIT2: memcpy(&st->pit, pl, plen); return 0;
	case PMVM_SEC_CLOCK: memcpy(&st->clock, pl, plen); return 0;
	case PMVM_SEC_SERIAL:
		memcpy(&st->serial, pl, plen);
		if (!all_zero(st->serial.reserved, sizeof(st->serial.reserved)))
			return bad(st, err, "serial state has reserved bytes set");
		return 0;
	case PMVM_SEC_HEARTBEAT:
		memcpy(&st->heartbeat, pl, plen);
		st->has_heartbeat = true;
		return 0;
	case PMVM_SEC_RTC:
		memcpy(&st->rtc, pl, plen);
		if (!all_zero(st->rtc.reserved, sizeof(st->rtc.reserved)) || st->rtc.index > 0x7f)
			return bad(st, err, "rtc state is not one an MC146818 can be in");
		st->has_rtc = true;
		return 0;
	case PMVM_SEC_VIRTIO_BLK:
		memcpy(&st->virtio_blk, pl, plen);
		if (virtio_mmio_state_check(&st->virtio_blk, 1))
			return bad(st, err, "virtio-blk state is not one the device can be in");
		st->has_virtio_blk = true;
		return 0;
	}
	return bad(st, err, "section type %u is not VM-wide", type);
}

int pmvm_state_decode(const void *buf, size_t len, struct pmvm_vm_state *st,
		      struct pm_err *err)
{
	const uint8_t *p = buf;
	uint32_t version, hlen, nsec, crc;
	uint64_t total;
	size_t off;
	uint8_t *seen = NULL;         /* [1 + nvcpus][PMVM_SEC_VCPU_LAST + 1] */
	const unsigned ntypes = PMVM_SEC_VCPU_LAST + 1;
	int r;

	memset(st, 0, sizeof(*st));
	if (len < PMVM_STATE_HDR_LEN)
		return bad(st, err, "blob of %zu bytes is shorter than its %u-byte header",
			   len, PMVM_STATE_HDR_LEN);
	if (memcmp(p, PMVM_STATE_MAGIC, 8))
		return bad(st, err, "bad magic (not a pmvm state blob)");
	memcpy(&version, p + 8, 4);
	memcpy(&hlen, p + 12, 4);
	memcpy(&total, p + 16, 8);
	memcpy(&nsec, p + 24, 4);
	memcpy(&crc, p + 28, 4);
	if (version < PMVM_STATE_MIN_VERSION || version > PMVM_STATE_VERSION)
		return bad(st, err, "version %u, this pmvm reads versions %u..%u", version,
			   PMVM_STATE_MIN_VERSION, PMVM_STATE_VERSION);
	if (hlen != PMVM_STATE_HDR_LEN)
		return bad(st, err, "header length %u, expected %u", hlen, PMVM_STATE_HDR_LEN);
	if (total != len)
		return bad(st, err, "blob is %zu bytes but its header says %llu (truncated or padded)",
			   len, (unsigned long long)total);
	if (pmvm_crc32c(0, p + hlen, len - hlen) != crc)
		return bad(st, err, "checksum mismatch (corrupted)");

	off = hlen;
	for (uint32_t s = 0; s < nsec; s++) {
		struct sec_hdr h;
		const uint8_t *pl;
		size_t padded;

		if (len - off < sizeof(h)) {
			free(seen);
			return bad(st, err, "section %u header runs past the end", s);
		}
		memcpy(&h, p + off, sizeof(h));
		off += sizeof(h);
		padded = ((size_t)h.len + 7) & ~(size_t)7;
		if (h.zero || h.zero2) {
			free(seen);
			return bad(st, err, "section %u has reserved fields set", s);
		}
		if (padded > len - off) {
			free(seen);
			return bad(st, err, "section %u (%s) of %u bytes runs past the end",
				   s, pmvm_state_section_name(h.type), h.len);
		}
		pl = p + off;
		off += padded;
		if (!all_zero(pl + h.len, padded - h.len)) {
			free(seen);
			return bad(st, err, "section %u has non-zero padding", s);
		}
		if (!known(h.type) || (h.type == PMVM_SEC_RTC && version < 2) ||
		    (h.type == PMVM_SEC_VIRTIO_BLK && version < 3)) {
			free(seen);
			return bad(st, err, "section %u has unknown type %u (for version %u)", s, h.type, version);
		}
		if (fixed_len(h.type) && h.len != fixed_len(h.type)) {
			free(seen);
			return bad(st, err, "section %s is %u bytes, expected %zu",
				   pmvm_state_section_name(h.type), h.len, fixed_len(h.type));
		}
		if (s == 0) {
			struct cfg_payload cfg;

			if (h.type != PMVM_SEC_CONFIG || h.vcpu != PMVM_STATE_VM_INDEX)
				return bad(st, err, "first section is %s, expected config",
					   pmvm_state_section_name(h.type));
			memcpy(&cfg, pl, sizeof(cfg));
			if (cfg.zero || cfg.mem_bytes == 0 || cfg.mem_bytes % 4096)
				return bad(st, err, "config: memory size %llu is not a positive multiple of 4096",
					   (unsigned long long)cfg.mem_bytes);
			r = pmvm_state_init(st, cfg.nvcpus, err);
			if (r)
				return r;
			st->mem_bytes = cfg.mem_bytes;
			seen = calloc((size_t)(1 + st->nvcpus) * ntypes, 1);
			if (!seen) {
				pmvm_state_free(st);
				return pm_err_set(err, ENOMEM, "state: out of memory");
			}
			seen[PMVM_SEC_CONFIG] = 1;
			continue;
		}
		if (h.type == PMVM_SEC_CONFIG) {
			free(seen);
			return bad(st, err, "config section repeated");
		}
		unsigned slot;

		if (per_vcpu(h.type)) {
			if (h.vcpu >= st->nvcpus) {
				free(seen);
				return bad(st, err, "section %s for vCPU %u, but the VM has %u",
					   pmvm_state_section_name(h.type), h.vcpu, st->nvcpus);
			}
			slot = (1 + h.vcpu) * ntypes + h.type;
		} else {
			if (h.vcpu != PMVM_STATE_VM_INDEX) {
				free(seen);
				return bad(st, err, "VM section %s carries vCPU index %u",
					   pmvm_state_section_name(h.type), h.vcpu);
			}
			slot = h.type;
		}
		if (seen[slot]) {
			free(seen);
			return bad(st, err, "section %s repeated", pmvm_state_section_name(h.type));
		}
		seen[slot] = 1;
		r = per_vcpu(h.type) ? check_vcpu_payload(h.type, pl, h.len, h.vcpu, st, err)
				     : check_vm_payload(h.type, pl, h.len, st, err);
		if (r) {
			free(seen);
			return r;
		}
	}
	if (off != len) {
		free(seen);
		return bad(st, err, "%zu bytes after the last section", len - off);
	}
	if (!seen)
		return bad(st, err, "no sections");
	for (unsigned t = PMVM_SEC_CONFIG; t <= PMVM_SEC_VM_LAST; t++)
		if (!optional(t) && !seen[t]) {
			free(seen);
			return bad(st, err, "missing section %s", pmvm_state_section_name(t));
		}
	for (uint32_t i = 0; i < st->nvcpus; i++)
		for (unsigned t = PMVM_SEC_REGS; t <= PMVM_SEC_VCPU_LAST; t++)
			if (!optional(t) && !seen[(1 + i) * ntypes + t]) {
				free(seen);
				return bad(st, err, "missing section %s of vCPU %u",
					   pmvm_state_section_name(t), i);
			}
	free(seen);
	return 0;
}
