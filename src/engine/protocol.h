/* SPDX-License-Identifier: MIT */
/* Wire protocol v1: little-endian, length-prefixed frames.  The contract is
 * docs/protocol.md; this file is its codec.  Decoders validate every field
 * against limits (and, for page runs, against the receiver's layout) before
 * the caller writes a byte anywhere. */
#ifndef PM_ENGINE_PROTOCOL_H
#define PM_ENGINE_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pmigrate/backend.h>
#include <pmigrate/error.h>

#define PM_PROTO_MAGIC   0x47494d50u /* "PMIG" */
#define PM_PROTO_VERSION 1u

#define PM_FRAME_HDR_LEN      8u
#define PM_MAX_CHUNK_PAGES    512u
#define PM_MAX_REGIONS        64u
#define PM_MAX_STATE_LEN      (64u << 20)
#define PM_MAX_ERROR_LEN      400u

enum pm_frame_type {
	PM_FR_HELLO = 1,
	PM_FR_HELLO_ACK = 2,
	PM_FR_LAYOUT = 3,
	PM_FR_LAYOUT_ACK = 4,
	PM_FR_PAGES = 5,
	PM_FR_ROUND_END = 6,
	PM_FR_ROUND_ACK = 7,
	PM_FR_STATE = 8,
	PM_FR_END = 9,
	PM_FR_DONE = 10,
	PM_FR_ERROR = 11,
	PM_FR_VERIFY = 12,      /* S->D, channel 0: a digest per chunk of memory at the pause */
	/* FAILOVER only: */
	PM_FR_ACK = 13,         /* D->S: PAGES frames applied on this channel so far */
	PM_FR_LOST = 14,        /* D->S: this side lost channel N */
	PM_FR_PING = 15,        /* S->D: an idle channel is alive */
	/* Far from the others: a run of disk blocks (feature DISKS). */
	PM_FR_BLOCKS = 20,
};

enum pm_encoding {
	PM_ENC_RAW = 0,
	PM_ENC_ZERO = 1,
	PM_ENC_LZ4 = 2,
	PM_ENC_ZSTD = 3,
	PM_ENC_UNPOPULATED = 4, /* never written at the source: no payload, no memory */
	PM_ENC_UNALLOCATED = 4, /* BLOCKS: a hole in the source's image: no payload, a hole here */
};

/* Feature flags carried in HELLO. */
#define PM_FEAT_BARRIER  (1u << 0)
#define PM_FEAT_LZ4      (1u << 1)
#define PM_FEAT_ZSTD     (1u << 2)
#define PM_FEAT_DRAIN    (1u << 3)   /* one ROUND_END before the pause, barrier-free */
#define PM_FEAT_FAILOVER (1u << 4)   /* a lost channel's work moves to the others */
/* High bits, clear of the memory features others add at the bottom. */
#define PM_FEAT_DISKS    (1u << 8)   /* LAYOUT lists disks; their blocks go in BLOCKS frames */
#define PM_FEAT_SHARED_STORAGE (1u << 9) /* with DISKS: the disks are shared, no block is sent */
#define PM_FEAT_KNOWN    (PM_FEAT_BARRIER | PM_FEAT_LZ4 | PM_FEAT_ZSTD | PM_FEAT_DRAIN | \
			  PM_FEAT_FAILOVER | PM_FEAT_DISKS | PM_FEAT_SHARED_STORAGE)

struct pm_frame_hdr {
	uint32_t type;
	uint32_t len;           /* body length, after this header */
};

#define PM_HELLO_LEN 40u
struct pm_hello {
	uint32_t magic;
	uint16_t version;
	uint16_t channel;
	uint16_t nchannels;
	uint16_t generation;    /* FAILOVER: 0, then +1 per reconnect of this channel; else reserved */
	uint32_t features;
	uint8_t session[16];
	uint32_t chunk_pages;
	uint32_t page_size;
};

#define PM_LAYOUT_FIXED_LEN 8u
#define PM_LAYOUT_REGION_LEN 24u
#define PM_LAYOUT_DISK_LEN 40u
#define PM_MAX_DISKS 16u
#define PM_MIN_BLOCK_SIZE 4096u
#define PM_MAX_BLOCK_SIZE (1u << 20)
struct pm_layout {
	uint32_t nregions;
	struct {
		uint32_t id;
		uint64_t gpa;
		uint64_t npages;
	} region[PM_MAX_REGIONS];
	uint32_t ndisks;
	struct {
		uint32_t id;
		uint32_t block_size;
		uint64_t size;          /* bytes */
		uint8_t identity[16];   /* which file on which host (pm_disk_identity) */
	} disk[PM_MAX_DISKS];
};

#define PM_PAGES_FIXED_LEN 32u
#define PM_BLOCKS_FIXED_LEN 32u
/* PAGES: a run of pages of a region.  BLOCKS: the same fields for a run of
 * blocks of a disk (region: the disk, npages: blocks, first: a block). */
struct pm_pages {
	uint32_t region;
	uint32_t npages;
	uint64_t first;
	uint32_t round;
	uint16_t encoding;
	uint32_t payload_len;
};

#define PM_ROUND_LEN 8u      /* ROUND_END / ROUND_ACK: round, reserved */
#define PM_VERIFY_FIXED_LEN 8u  /* u32 chunks, u32 reserved; then 16 bytes per chunk */
#define PM_MAX_VERIFY_CHUNKS (1u << 22)
#define PM_END_LEN 32u
#define PM_END_FAILOVER_LEN 40u
struct pm_end {
	uint32_t final_round;
	uint64_t frames;        /* PAGES frames sent on this channel */
	uint64_t pages;         /* pages covered by them (data and zero) */
	uint64_t payload_bytes; /* sum of their payload_len */
	uint64_t lost;          /* FAILOVER: channels given up (bit i: channel i); no END comes on them */
};

#define PM_ACK_LEN 8u         /* u64: PAGES frames applied on this channel (this connection) */
#define PM_LOST_FIXED_LEN 12u
struct pm_lost {
	uint16_t channel, generation;
	uint32_t code;          /* positive errno: why */
	char msg[4 * PM_MAX_ERROR_LEN + 1]; /* escaped */
};

#define PM_ERROR_FIXED_LEN 8u
/* DONE: what the destination did in the pause, and what its VM costs. */
#define PM_DONE_LEN 64u
struct pm_done {
	uint64_t dump_us;       /* writing a verification dump (excluded from downtime) */
	uint64_t drain_us;      /* first END arrived -> every channel ended */
	uint64_t load_us;       /* load_state */
	uint64_t resume_us;     /* resume */
	uint64_t data_pages;    /* pages holding data at the destination (UINT64_MAX: unknown) */
	uint64_t verify_us;     /* comparing memory digests (excluded from downtime) */
	uint64_t sync_us;       /* fsync of every disk image (0 without disks) */
};

/* Little-endian helpers. */
static inline void pm_put16(uint8_t *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static inline void pm_put32(uint8_t *p, uint32_t v) { pm_put16(p, v); pm_put16(p + 2, v >> 16); }
static inline void pm_put64(uint8_t *p, uint64_t v) { pm_put32(p, v); pm_put32(p + 4, v >> 32); }
static inline uint16_t pm_get16(const uint8_t *p) { return p[0] | (uint16_t)p[1] << 8; }
static inline uint32_t pm_get32(const uint8_t *p) { return pm_get16(p) | (uint32_t)pm_get16(p + 2) << 16; }
static inline uint64_t pm_get64(const uint8_t *p) { return pm_get32(p) | (uint64_t)pm_get32(p + 4) << 32; }

/* True if a 4 KiB page is all zeroes.  Most data pages differ from zero in
 * their first words, so the common case exits at once. */
static inline bool pm_page_is_zero(const uint8_t *p)
{
	const uint64_t *w = (const uint64_t *)p;

	if (w[0] | w[1])
		return false;
	for (unsigned i = 0; i < PM_PAGE_SIZE / 8; i += 4)
		if (w[i] | w[i + 1] | w[i + 2] | w[i + 3])
			return false;
	return true;
}

const char *pm_frame_name(uint32_t type);

void pm_encode_hdr(uint8_t out[PM_FRAME_HDR_LEN], uint32_t type, uint32_t len);
void pm_decode_hdr(const uint8_t in[PM_FRAME_HDR_LEN], struct pm_frame_hdr *h);
/* Checks a header's type and length against the per-type limits. */
int pm_check_hdr(const struct pm_frame_hdr *h, unsigned chunk_pages, struct pm_err *err);

void pm_encode_hello(uint8_t out[PM_HELLO_LEN], const struct pm_hello *h);
int pm_decode_hello(const uint8_t *in, size_t len, struct pm_hello *h, struct pm_err *err);

size_t pm_layout_len(const struct pm_layout *l);
void pm_encode_layout(uint8_t *out, const struct pm_layout *l);
int pm_decode_layout(const uint8_t *in, size_t len, struct pm_layout *l, struct pm_err *err);
/* Layout of the backend's regions. */
void pm_layout_of(const struct pm_backend *be, struct pm_layout *l);
/* Source layout must fit the destination's regions exactly. */
int pm_layout_check(const struct pm_layout *src, const struct pm_layout *dst, struct pm_err *err);

/* Disks: blocks in a disk's chunk (at least one, else as many as fit in
 * chunk_pages pages), blocks of a disk, and the bytes of blocks
 * [first, first + n) (the last block may be cut short by the size). */
uint32_t pm_disk_chunk_blocks(uint32_t block_size, unsigned chunk_pages);
uint64_t pm_disk_nblocks(uint64_t size, uint32_t block_size);
uint64_t pm_disk_run_bytes(uint64_t size, uint32_t block_size, uint64_t first, uint64_t n);

void pm_encode_pages(uint8_t out[PM_PAGES_FIXED_LEN], const struct pm_pages *p);
/* Validates region, range, round, encoding and payload length against the
 * layout and the frame's body length. */
int pm_decode_pages(const uint8_t *in, uint32_t body_len, const struct pm_layout *l,
		    unsigned chunk_pages, struct pm_pages *p, struct pm_err *err);

/* BLOCKS (same wire layout as PAGES): validates disk, range, round,
 * encoding and payload length against the layout's disks. */
int pm_decode_blocks(const uint8_t *in, uint32_t body_len, const struct pm_layout *l,
		     unsigned chunk_pages, struct pm_pages *p, struct pm_err *err);

/* Text from the network, made safe to print: bytes outside printable ASCII
 * become \xNN, a backslash \\; always NUL-terminated (cap >= 1). */
void pm_escape_text(const void *in, size_t len, char *out, size_t cap);
/* An ERROR body (length already checked by pm_check_hdr): the code, and the
 * message escaped into msg (PM_ERROR_MSG_CAP bytes is always enough). */
#define PM_ERROR_MSG_CAP (4 * PM_MAX_ERROR_LEN + 1)
uint32_t pm_decode_error(const uint8_t *in, uint32_t len, char *msg, size_t cap);
void pm_encode_done(uint8_t out[PM_DONE_LEN], const struct pm_done *d);
int pm_decode_done(const uint8_t *in, size_t len, struct pm_done *d, struct pm_err *err);

/* The 40-byte form (with the lost mask) if with_lost, else 32; returns the length. */
uint32_t pm_encode_end(uint8_t out[PM_END_FAILOVER_LEN], const struct pm_end *e, bool with_lost);
/* 32 bytes (lost = 0) or 40. */
int pm_decode_end(const uint8_t *in, size_t len, struct pm_end *e, struct pm_err *err);

/* LOST: returns the length. */
uint32_t pm_encode_lost(uint8_t out[PM_LOST_FIXED_LEN + PM_MAX_ERROR_LEN], unsigned channel,
			unsigned generation, int code, const char *msg);
int pm_decode_lost(const uint8_t *in, uint32_t len, struct pm_lost *l, struct pm_err *err);

#endif
