/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <pmigrate/disk.h>
#include "engine/protocol.h"

const char *pm_frame_name(uint32_t type)
{
	static const char *const names[] = {
		[PM_FR_HELLO] = "HELLO", [PM_FR_HELLO_ACK] = "HELLO_ACK",
		[PM_FR_LAYOUT] = "LAYOUT", [PM_FR_LAYOUT_ACK] = "LAYOUT_ACK",
		[PM_FR_PAGES] = "PAGES", [PM_FR_ROUND_END] = "ROUND_END",
		[PM_FR_ROUND_ACK] = "ROUND_ACK", [PM_FR_STATE] = "STATE",
		[PM_FR_END] = "END", [PM_FR_DONE] = "DONE", [PM_FR_ERROR] = "ERROR",
		[PM_FR_VERIFY] = "VERIFY",
		[PM_FR_ACK] = "ACK", [PM_FR_LOST] = "LOST", [PM_FR_PING] = "PING",
		[PM_FR_BLOCKS] = "BLOCKS",
	};
	if (type < sizeof(names) / sizeof(names[0]) && names[type])
		return names[type];
	return "unknown";
}

void pm_encode_hdr(uint8_t out[PM_FRAME_HDR_LEN], uint32_t type, uint32_t len)
{
	pm_put32(out, type);
	pm_put32(out + 4, len);
}

void pm_decode_hdr(const uint8_t in[PM_FRAME_HDR_LEN], struct pm_frame_hdr *h)
{
	h->type = pm_get32(in);
	h->len = pm_get32(in + 4);
}

int pm_check_hdr(const struct pm_frame_hdr *h, unsigned chunk_pages, struct pm_err *err)
{
	uint64_t max;

	switch (h->type) {
	case PM_FR_HELLO:
	case PM_FR_HELLO_ACK:
		max = PM_HELLO_LEN;
		if (h->len != max)
			goto bad_exact;
		return 0;
	case PM_FR_LAYOUT:
		if (h->len < PM_LAYOUT_FIXED_LEN ||
		    h->len > PM_LAYOUT_FIXED_LEN + PM_MAX_REGIONS * PM_LAYOUT_REGION_LEN +
			     PM_MAX_DISKS * PM_LAYOUT_DISK_LEN)
			goto bad_range;
		return 0;
	case PM_FR_BLOCKS: {
		uint64_t run = (uint64_t)chunk_pages * PM_PAGE_SIZE;
		max = PM_BLOCKS_FIXED_LEN + (run > PM_MAX_BLOCK_SIZE ? run : PM_MAX_BLOCK_SIZE);
		if (h->len < PM_BLOCKS_FIXED_LEN || h->len > max)
			goto bad_range;
		return 0;
	}
	case PM_FR_DONE:
		max = PM_DONE_LEN;
		if (h->len != max)
			goto bad_exact;
		return 0;
	case PM_FR_LAYOUT_ACK:
		max = 0;
		if (h->len != max)
			goto bad_exact;
		return 0;
	case PM_FR_PAGES:
		max = PM_PAGES_FIXED_LEN + (uint64_t)chunk_pages * PM_PAGE_SIZE;
		if (h->len < PM_PAGES_FIXED_LEN || h->len > max)
			goto bad_range;
		return 0;
	case PM_FR_ROUND_END:
	case PM_FR_ROUND_ACK:
		max = PM_ROUND_LEN;
		if (h->len != max)
			goto bad_exact;
		return 0;
	case PM_FR_VERIFY:
		max = PM_VERIFY_FIXED_LEN + (uint64_t)PM_MAX_VERIFY_CHUNKS * 16;
		if (h->len < PM_VERIFY_FIXED_LEN || h->len > max || (h->len - PM_VERIFY_FIXED_LEN) % 16)
			goto bad_range;
		return 0;
	case PM_FR_STATE:
		if (h->len > PM_MAX_STATE_LEN)
			goto bad_range;
		return 0;
	case PM_FR_END:
		max = PM_END_LEN;
		if (h->len != PM_END_LEN && h->len != PM_END_FAILOVER_LEN)
			goto bad_exact;
		return 0;
	case PM_FR_ACK:
		max = PM_ACK_LEN;
		if (h->len != max)
			goto bad_exact;
		return 0;
	case PM_FR_PING:
		max = 0;
		if (h->len != max)
			goto bad_exact;
		return 0;
	case PM_FR_LOST:
		if (h->len < PM_LOST_FIXED_LEN || h->len > PM_LOST_FIXED_LEN + PM_MAX_ERROR_LEN)
			goto bad_range;
		return 0;
	case PM_FR_ERROR:
		if (h->len < PM_ERROR_FIXED_LEN || h->len > PM_ERROR_FIXED_LEN + PM_MAX_ERROR_LEN)
			goto bad_range;
		return 0;
	default:
		return pm_err_set(err, EPROTO, "unknown frame type %u (length %u)",
				  h->type, h->len);
	}
bad_exact:
	return pm_err_set(err, EPROTO, "%s frame has length %u, expected %llu",
			  pm_frame_name(h->type), h->len, (unsigned long long)max);
bad_range:
	return pm_err_set(err, EPROTO, "%s frame length %u is out of range",
			  pm_frame_name(h->type), h->len);
}

void pm_encode_hello(uint8_t out[PM_HELLO_LEN], const struct pm_hello *h)
{
	memset(out, 0, PM_HELLO_LEN);
	pm_put32(out, h->magic);
	pm_put16(out + 4, h->version);
	pm_put16(out + 6, h->channel);
	pm_put16(out + 8, h->nchannels);
	pm_put16(out + 10, h->features & PM_FEAT_FAILOVER ? h->generation : 0);
	pm_put32(out + 12, h->features);
	memcpy(out + 16, h->session, 16);
	pm_put32(out + 32, h->chunk_pages);
	pm_put32(out + 36, h->page_size);
}

int pm_decode_hello(const uint8_t *in, size_t len, struct pm_hello *h, struct pm_err *err)
{
	if (len != PM_HELLO_LEN)
		return pm_err_set(err, EPROTO, "HELLO has length %zu, expected %u", len, PM_HELLO_LEN);
	h->magic = pm_get32(in);
	h->version = pm_get16(in + 4);
	h->channel = pm_get16(in + 6);
	h->nchannels = pm_get16(in + 8);
	h->generation = pm_get16(in + 10);
	h->features = pm_get32(in + 12);
	memcpy(h->session, in + 16, 16);
	h->chunk_pages = pm_get32(in + 32);
	h->page_size = pm_get32(in + 36);
	if (h->magic != PM_PROTO_MAGIC)
		return pm_err_set(err, EPROTO, "bad magic 0x%08x in HELLO (not a pmigrate stream)", h->magic);
	if (h->version != PM_PROTO_VERSION)
		return pm_err_set(err, EPROTONOSUPPORT, "protocol version %u is not supported (this side speaks %u)",
				  h->version, PM_PROTO_VERSION);
	if (h->nchannels == 0 || h->nchannels > 64)
		return pm_err_set(err, EPROTO, "HELLO announces %u channels (1..64 allowed)", h->nchannels);
	if (h->channel >= h->nchannels)
		return pm_err_set(err, EPROTO, "HELLO channel index %u is not below the channel count %u",
				  h->channel, h->nchannels);
	if (h->features & ~PM_FEAT_KNOWN)
		return pm_err_set(err, EPROTO, "HELLO has unknown feature flags 0x%x", h->features & ~PM_FEAT_KNOWN);
	if (h->generation && !(h->features & PM_FEAT_FAILOVER))
		return pm_err_set(err, EPROTO, "HELLO reserved field is not zero");
	if (h->page_size != PM_PAGE_SIZE)
		return pm_err_set(err, EPROTO, "page size %u is not supported (only %u)", h->page_size, PM_PAGE_SIZE);
	if (h->chunk_pages == 0 || h->chunk_pages > PM_MAX_CHUNK_PAGES)
		return pm_err_set(err, EPROTO, "chunk of %u pages is out of range (1..%u)",
				  h->chunk_pages, PM_MAX_CHUNK_PAGES);
	return 0;
}

size_t pm_layout_len(const struct pm_layout *l)
{
	return PM_LAYOUT_FIXED_LEN + (size_t)l->nregions * PM_LAYOUT_REGION_LEN +
	       (size_t)l->ndisks * PM_LAYOUT_DISK_LEN;
}

void pm_encode_layout(uint8_t *out, const struct pm_layout *l)
{
	pm_put32(out, l->nregions);
	pm_put32(out + 4, l->ndisks);
	for (uint32_t i = 0; i < l->ndisks; i++) {
		uint8_t *d = out + PM_LAYOUT_FIXED_LEN + l->nregions * PM_LAYOUT_REGION_LEN + i * PM_LAYOUT_DISK_LEN;
		pm_put32(d, l->disk[i].id);
		pm_put32(d + 4, l->disk[i].block_size);
		pm_put64(d + 8, l->disk[i].size);
		memcpy(d + 16, l->disk[i].identity, 16);
		pm_put64(d + 32, 0);
	}
	for (uint32_t i = 0; i < l->nregions; i++) {
		uint8_t *r = out + PM_LAYOUT_FIXED_LEN + i * PM_LAYOUT_REGION_LEN;
		pm_put32(r, l->region[i].id);
		pm_put32(r + 4, 0);
		pm_put64(r + 8, l->region[i].gpa);
		pm_put64(r + 16, l->region[i].npages);
	}
}

int pm_decode_layout(const uint8_t *in, size_t len, struct pm_layout *l, struct pm_err *err)
{
	if (len < PM_LAYOUT_FIXED_LEN)
		return pm_err_set(err, EPROTO, "LAYOUT is truncated (%zu bytes)", len);
	l->nregions = pm_get32(in);
	l->ndisks = pm_get32(in + 4);
	if (l->nregions == 0 || l->nregions > PM_MAX_REGIONS)
		return pm_err_set(err, EPROTO, "LAYOUT has %u regions (1..%u allowed)", l->nregions, PM_MAX_REGIONS);
	if (l->ndisks > PM_MAX_DISKS)
		return pm_err_set(err, EPROTO, "LAYOUT has %u disks (at most %u)", l->ndisks, PM_MAX_DISKS);
	if (len != pm_layout_len(l))
		return pm_err_set(err, EPROTO, "LAYOUT of %u regions and %u disks has length %zu, expected %zu",
				  l->nregions, l->ndisks, len, pm_layout_len(l));
	for (uint32_t i = 0; i < l->ndisks; i++) {
		const uint8_t *d = in + PM_LAYOUT_FIXED_LEN + l->nregions * PM_LAYOUT_REGION_LEN +
				   i * PM_LAYOUT_DISK_LEN;
		uint32_t bs = pm_get32(d + 4);
		l->disk[i].id = pm_get32(d);
		l->disk[i].block_size = bs;
		l->disk[i].size = pm_get64(d + 8);
		memcpy(l->disk[i].identity, d + 16, 16);
		if (pm_get64(d + 32))
			return pm_err_set(err, EPROTO, "LAYOUT disk %u reserved field is not zero", i);
		if (l->disk[i].id != i)
			return pm_err_set(err, EPROTO, "LAYOUT disk %u has id %u (ids must be 0..n-1 in order)",
					  i, l->disk[i].id);
		if (bs < PM_MIN_BLOCK_SIZE || bs > PM_MAX_BLOCK_SIZE || (bs & (bs - 1)))
			return pm_err_set(err, EPROTO, "LAYOUT disk %u has block size %u (a power of two, 4 KiB..1 MiB)",
					  i, bs);
		if (l->disk[i].size == 0 || l->disk[i].size % 512 || l->disk[i].size > (1ull << 50))
			return pm_err_set(err, EPROTO, "LAYOUT disk %u has size %llu (a multiple of 512 up to 1 PiB)",
					  i, (unsigned long long)l->disk[i].size);
	}
	for (uint32_t i = 0; i < l->nregions; i++) {
		const uint8_t *r = in + PM_LAYOUT_FIXED_LEN + i * PM_LAYOUT_REGION_LEN;
		l->region[i].id = pm_get32(r);
		l->region[i].gpa = pm_get64(r + 8);
		l->region[i].npages = pm_get64(r + 16);
		if (pm_get32(r + 4))
			return pm_err_set(err, EPROTO, "LAYOUT region %u reserved field is not zero", i);
		if (l->region[i].id != i)
			return pm_err_set(err, EPROTO, "LAYOUT region %u has id %u (ids must be 0..n-1 in order)",
					  i, l->region[i].id);
		if (l->region[i].npages == 0 || l->region[i].npages > (1ull << 36))
			return pm_err_set(err, EPROTO, "LAYOUT region %u has %llu pages (out of range)",
					  i, (unsigned long long)l->region[i].npages);
		if (l->region[i].gpa & (PM_PAGE_SIZE - 1))
			return pm_err_set(err, EPROTO, "LAYOUT region %u guest address 0x%llx is not page aligned",
					  i, (unsigned long long)l->region[i].gpa);
	}
	return 0;
}

void pm_layout_of(const struct pm_backend *be, struct pm_layout *l)
{
	memset(l, 0, sizeof(*l));
	l->nregions = be->nregions;
	for (unsigned i = 0; i < be->nregions && i < PM_MAX_REGIONS; i++) {
		l->region[i].id = i;
		l->region[i].gpa = be->regions[i].gpa;
		l->region[i].npages = be->regions[i].npages;
	}
	l->ndisks = be->ndisks;
	for (unsigned i = 0; i < be->ndisks && i < PM_MAX_DISKS; i++) {
		l->disk[i].id = i;
		l->disk[i].block_size = be->disks[i].block_size;
		l->disk[i].size = be->disks[i].size;
		pm_disk_identity(be->disks[i].fd, l->disk[i].identity);
	}
}

int pm_layout_check(const struct pm_layout *src, const struct pm_layout *dst, struct pm_err *err)
{
	if (src->nregions != dst->nregions)
		return pm_err_set(err, EINVAL, "source has %u memory regions, destination has %u",
				  src->nregions, dst->nregions);
	for (uint32_t i = 0; i < src->nregions; i++) {
		uint64_t s = src->region[i].npages, d = dst->region[i].npages;
		if (s != d)
			return pm_err_set(err, EINVAL,
					  "memory region %u: source has %llu MiB, destination has %llu MiB%s",
					  i, (unsigned long long)(s >> 8), (unsigned long long)(d >> 8),
					  d < s ? " (destination memory is smaller)" : "");
		if (src->region[i].gpa != dst->region[i].gpa)
			return pm_err_set(err, EINVAL, "memory region %u: source at 0x%llx, destination at 0x%llx",
					  i, (unsigned long long)src->region[i].gpa,
					  (unsigned long long)dst->region[i].gpa);
	}
	if (src->ndisks != dst->ndisks)
		return pm_err_set(err, EINVAL, "source has %u disk%s, destination has %u (give it --disk FILE "
				  "for each)", src->ndisks, src->ndisks == 1 ? "" : "s", dst->ndisks);
	for (uint32_t i = 0; i < src->ndisks; i++) {
		if (src->disk[i].size != dst->disk[i].size)
			return pm_err_set(err, EINVAL, "disk %u: source has %llu bytes, destination has %llu%s", i,
					  (unsigned long long)src->disk[i].size, (unsigned long long)dst->disk[i].size,
					  dst->disk[i].size < src->disk[i].size ? " (destination disk is smaller)" : "");
		if (src->disk[i].block_size != dst->disk[i].block_size)
			return pm_err_set(err, EINVAL, "disk %u: source tracks %u-byte blocks, destination %u "
					  "(give the destination's --disk block=%u)", i, src->disk[i].block_size,
					  dst->disk[i].block_size, src->disk[i].block_size);
	}
	return 0;
}

uint32_t pm_disk_chunk_blocks(uint32_t block_size, unsigned chunk_pages)
{
	uint64_t n = (uint64_t)chunk_pages * PM_PAGE_SIZE / block_size;

	return n ? (uint32_t)n : 1;
}

uint64_t pm_disk_nblocks(uint64_t size, uint32_t block_size)
{
	return (size + block_size - 1) / block_size;
}

uint64_t pm_disk_run_bytes(uint64_t size, uint32_t block_size, uint64_t first, uint64_t n)
{
	uint64_t start = first * block_size, end = (first + n) * block_size;

	if (end > size)
		end = size;
	return end > start ? end - start : 0;
}

/* The fixed part PAGES and BLOCKS share (region or disk, count, first,
 * round, encoding, payload length, reserved zeros). */
static int units_fixed(const uint8_t *in, struct pm_pages *p, const char *frame, struct pm_err *err)
{
	p->region = pm_get32(in);
	p->npages = pm_get32(in + 4);
	p->first = pm_get64(in + 8);
	p->round = pm_get32(in + 16);
	p->encoding = pm_get16(in + 20);
	p->payload_len = pm_get32(in + 24);
	if (pm_get16(in + 22) || pm_get32(in + 28))
		return pm_err_set(err, EPROTO, "%s frame has non-zero reserved fields", frame);
	return 0;
}

static int units_round_len(const struct pm_pages *p, uint32_t body_len, uint32_t fixed_len,
			   const char *frame, struct pm_err *err)
{
	if (p->round == 0)
		return pm_err_set(err, EPROTO, "%s frame has round 0 (rounds start at 1)", frame);
	if ((uint64_t)body_len != fixed_len + (uint64_t)p->payload_len)
		return pm_err_set(err, EPROTO, "%s frame payload length %u does not match frame length %u",
				  frame, p->payload_len, body_len);
	return 0;
}

int pm_decode_blocks(const uint8_t *in, uint32_t body_len, const struct pm_layout *l,
		     unsigned chunk_pages, struct pm_pages *p, struct pm_err *err)
{
	uint64_t raw, nblocks;
	uint32_t per;
	int r;

	r = units_fixed(in, p, "BLOCKS", err);
	if (r)
		return r;
	if (p->region >= l->ndisks)
		return pm_err_set(err, EPROTO, "BLOCKS frame names disk %u, the layout has %u", p->region, l->ndisks);
	per = pm_disk_chunk_blocks(l->disk[p->region].block_size, chunk_pages);
	nblocks = pm_disk_nblocks(l->disk[p->region].size, l->disk[p->region].block_size);
	if (p->npages == 0 || p->npages > per)
		return pm_err_set(err, EPROTO, "BLOCKS frame covers %u blocks (1..%u allowed)", p->npages, per);
	if (p->first >= nblocks || p->npages > nblocks - p->first)
		return pm_err_set(err, EPROTO, "BLOCKS frame [%llu, +%u) is outside disk %u of %llu blocks",
				  (unsigned long long)p->first, p->npages, p->region, (unsigned long long)nblocks);
	r = units_round_len(p, body_len, PM_BLOCKS_FIXED_LEN, "BLOCKS", err);
	if (r)
		return r;
	raw = pm_disk_run_bytes(l->disk[p->region].size, l->disk[p->region].block_size, p->first, p->npages);
	switch (p->encoding) {
	case PM_ENC_RAW:
		if (p->payload_len != raw)
			return pm_err_set(err, EPROTO, "raw BLOCKS frame of %u blocks carries %u bytes, not %llu",
					  p->npages, p->payload_len, (unsigned long long)raw);
		break;
	case PM_ENC_ZERO:
	case PM_ENC_UNALLOCATED:
		if (p->payload_len != 0)
			return pm_err_set(err, EPROTO, "%s BLOCKS frame carries %u bytes of payload",
					  p->encoding == PM_ENC_ZERO ? "zero" : "unallocated", p->payload_len);
		break;
	case PM_ENC_LZ4:
	case PM_ENC_ZSTD:
		if (p->payload_len == 0 || p->payload_len > raw)
			return pm_err_set(err, EPROTO, "compressed BLOCKS frame of %u blocks has payload %u "
					  "(1..%llu: larger goes raw)", p->npages, p->payload_len,
					  (unsigned long long)raw);
		break;
	default:
		return pm_err_set(err, EPROTO, "BLOCKS frame has unknown encoding %u", p->encoding);
	}
	return 0;
}

void pm_encode_pages(uint8_t out[PM_PAGES_FIXED_LEN], const struct pm_pages *p)
{
	memset(out, 0, PM_PAGES_FIXED_LEN);
	pm_put32(out, p->region);
	pm_put32(out + 4, p->npages);
	pm_put64(out + 8, p->first);
	pm_put32(out + 16, p->round);
	pm_put16(out + 20, p->encoding);
	pm_put32(out + 24, p->payload_len);
}

int pm_decode_pages(const uint8_t *in, uint32_t body_len, const struct pm_layout *l,
		    unsigned chunk_pages, struct pm_pages *p, struct pm_err *err)
{
	uint64_t raw;
	int r;

	r = units_fixed(in, p, "PAGES", err);
	if (r)
		return r;
	if (p->region >= l->nregions)
		return pm_err_set(err, EPROTO, "PAGES frame names region %u, the layout has %u",
				  p->region, l->nregions);
	if (p->npages == 0 || p->npages > chunk_pages)
		return pm_err_set(err, EPROTO, "PAGES frame covers %u pages (1..%u allowed)",
				  p->npages, chunk_pages);
	if (p->first >= l->region[p->region].npages ||
	    p->npages > l->region[p->region].npages - p->first)
		return pm_err_set(err, EPROTO, "PAGES frame [%llu, +%u) is outside region %u of %llu pages",
				  (unsigned long long)p->first, p->npages, p->region,
				  (unsigned long long)l->region[p->region].npages);
	r = units_round_len(p, body_len, PM_PAGES_FIXED_LEN, "PAGES", err);
	if (r)
		return r;
	raw = (uint64_t)p->npages * PM_PAGE_SIZE;
	switch (p->encoding) {
	case PM_ENC_RAW:
		if (p->payload_len != raw)
			return pm_err_set(err, EPROTO, "raw PAGES frame of %u pages carries %u bytes",
					  p->npages, p->payload_len);
		break;
	case PM_ENC_ZERO:
	case PM_ENC_UNPOPULATED:
		if (p->payload_len != 0)
			return pm_err_set(err, EPROTO, "%s PAGES frame carries %u bytes of payload",
					  p->encoding == PM_ENC_ZERO ? "zero" : "unpopulated", p->payload_len);
		break;
	case PM_ENC_LZ4:
	case PM_ENC_ZSTD:
		if (p->payload_len == 0 || p->payload_len > raw + raw / 64 + 1024)
			return pm_err_set(err, EPROTO, "compressed PAGES frame of %u pages has payload %u (out of range)",
					  p->npages, p->payload_len);
		break;
	default:
		return pm_err_set(err, EPROTO, "PAGES frame has unknown encoding %u", p->encoding);
	}
	return 0;
}

uint32_t pm_encode_end(uint8_t out[PM_END_FAILOVER_LEN], const struct pm_end *e, bool with_lost)
{
	pm_put32(out, e->final_round);
	pm_put32(out + 4, 0);
	pm_put64(out + 8, e->frames);
	pm_put64(out + 16, e->pages);
	pm_put64(out + 24, e->payload_bytes);
	if (!with_lost)
		return PM_END_LEN;
	pm_put64(out + 32, e->lost);
	return PM_END_FAILOVER_LEN;
}

int pm_decode_end(const uint8_t *in, size_t len, struct pm_end *e, struct pm_err *err)
{
	if (len != PM_END_LEN && len != PM_END_FAILOVER_LEN)
		return pm_err_set(err, EPROTO, "END has length %zu, expected %u or %u", len, PM_END_LEN,
				  PM_END_FAILOVER_LEN);
	e->final_round = pm_get32(in);
	e->frames = pm_get64(in + 8);
	e->pages = pm_get64(in + 16);
	e->payload_bytes = pm_get64(in + 24);
	e->lost = len == PM_END_FAILOVER_LEN ? pm_get64(in + 32) : 0;
	if (pm_get32(in + 4))
		return pm_err_set(err, EPROTO, "END reserved field is not zero");
	if (e->final_round == 0)
		return pm_err_set(err, EPROTO, "END names final round 0");
	return 0;
}

uint32_t pm_encode_lost(uint8_t out[PM_LOST_FIXED_LEN + PM_MAX_ERROR_LEN], unsigned channel,
			unsigned generation, int code, const char *msg)
{
	size_t ml = strlen(msg);

	if (ml > PM_MAX_ERROR_LEN)
		ml = PM_MAX_ERROR_LEN;
	pm_put16(out, channel);
	pm_put16(out + 2, generation);
	pm_put32(out + 4, code < 0 ? -code : code);
	pm_put32(out + 8, ml);
	memcpy(out + PM_LOST_FIXED_LEN, msg, ml);
	return PM_LOST_FIXED_LEN + ml;
}

int pm_decode_lost(const uint8_t *in, uint32_t len, struct pm_lost *l, struct pm_err *err)
{
	uint32_t ml;

	if (len < PM_LOST_FIXED_LEN || len > PM_LOST_FIXED_LEN + PM_MAX_ERROR_LEN)
		return pm_err_set(err, EPROTO, "LOST has length %u", len);
	l->channel = pm_get16(in);
	l->generation = pm_get16(in + 2);
	l->code = pm_get32(in + 4);
	ml = pm_get32(in + 8);
	if (ml != len - PM_LOST_FIXED_LEN)
		return pm_err_set(err, EPROTO, "LOST message length %u does not match the frame", ml);
	pm_escape_text(in + PM_LOST_FIXED_LEN, ml, l->msg, sizeof(l->msg));
	return 0;
}

void pm_escape_text(const void *in, size_t len, char *out, size_t cap)
{
	static const char hex[] = "0123456789abcdef";
	const uint8_t *p = in;
	size_t o = 0;

	for (size_t i = 0; i < len; i++) {
		uint8_t b = p[i];
		char e[4] = { (char)b };
		size_t n = 1;

		if (b == '\\') {
			e[1] = '\\';
			n = 2;
		} else if (b < 0x20 || b >= 0x7f) {
			e[0] = '\\';
			e[1] = 'x';
			e[2] = hex[b >> 4];
			e[3] = hex[b & 15];
			n = 4;
		}
		if (o + n >= cap)
			break;
		memcpy(out + o, e, n);
		o += n;
	}
	out[o] = '\0';
}

uint32_t pm_decode_error(const uint8_t *in, uint32_t len, char *msg, size_t cap)
{
	uint32_t ml = pm_get32(in + 4);

	if (ml > len - PM_ERROR_FIXED_LEN)
		ml = len - PM_ERROR_FIXED_LEN;
	pm_escape_text(in + PM_ERROR_FIXED_LEN, ml, msg, cap);
	return pm_get32(in);
}

void pm_encode_done(uint8_t out[PM_DONE_LEN], const struct pm_done *d)
{
	memset(out, 0, PM_DONE_LEN);
	pm_put64(out, d->dump_us);
	pm_put64(out + 8, d->drain_us);
	pm_put64(out + 16, d->load_us);
	pm_put64(out + 24, d->resume_us);
	pm_put64(out + 32, d->data_pages);
	pm_put64(out + 40, d->verify_us);
	pm_put64(out + 48, d->sync_us);
}

int pm_decode_done(const uint8_t *in, size_t len, struct pm_done *d, struct pm_err *err)
{
	if (len != PM_DONE_LEN)
		return pm_err_set(err, EPROTO, "DONE of %zu bytes (expected %u)", len, PM_DONE_LEN);
	if (pm_get64(in + 56))
		return pm_err_set(err, EPROTO, "DONE has non-zero reserved bytes");
	d->dump_us = pm_get64(in);
	d->drain_us = pm_get64(in + 8);
	d->load_us = pm_get64(in + 16);
	d->resume_us = pm_get64(in + 24);
	d->data_pages = pm_get64(in + 32);
	d->verify_us = pm_get64(in + 40);
	d->sync_us = pm_get64(in + 48);
	return 0;
}
