/* SPDX-License-Identifier: MIT */
/* libFuzzer target: a whole incoming migration, the real code.
 *
 * pm_incoming_run() receives into a small guest (two regions, the second
 * high, each its own heap block of exact size, so a validation gap is an
 * out-of-bounds access under ASan) over 1 to 4 channels that are socket
 * pairs handed to it with pm_incoming_adopt().  The input is the sources'
 * bytes, split into chunks that go to the channels in input order (the
 * interleaving the receivers see); the device state that arrives goes to
 * load_state, which runs pmvm's real state decoder on it.
 *
 * With FUZZ_IN_DISK in byte 0 the guest has a disk too (fuzz_targets.h):
 * its blocks are written with pwrite into a memfd whose size is checked
 * afterwards -- a write past the image's end aborts.
 *
 * Input: byte 0 = channel count - 1 (low 2 bits), flags; then chunks, each
 * [channel: 1 byte, low 2 bits][length: 2 bytes LE][bytes], the last one
 * possibly short.  Every channel is closed after the input: a run that is
 * not complete ends at once, never at a timeout.
 *
 * Built with clang by fuzz/meson.build (-Dfuzz=true); replayed over
 * fuzz/corpus/incoming by the test suite (tests/fuzz, without clang). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <pthread.h>
#include <pmigrate/migrate.h>
#include "pmvm/state.h"
#include "fuzz_targets.h"

#define FZ_REGIONS 2
static const uint64_t fz_pages[FZ_REGIONS] = { FUZZ_IN_REGION0_PAGES, FUZZ_IN_REGION1_PAGES };
static const uint64_t fz_gpa[FZ_REGIONS] = { 0, FUZZ_IN_REGION1_GPA };

struct fz_vm {
	struct pm_region regions[FZ_REGIONS];
	struct pm_backend be;
	unsigned loads, resumes;
};

static int fz_fail(void *o, struct pm_err *err)
{
	return pm_err_set(err, ENOTSUP, "not a source");
}
static int fz_ok(void *o, struct pm_err *err) { return 0; }
static int fz_count(void *o, uint64_t *n, struct pm_err *err) { return fz_fail(o, err); }
static int fz_harvest(void *o, uint32_t r, uint64_t f, uint64_t n, uint64_t *bm, struct pm_err *err)
{
	return fz_fail(o, err);
}
static void fz_stop(void *o) { }
static int fz_save(void *o, void **b, size_t *l, struct pm_err *err) { return fz_fail(o, err); }

/* The device state goes through pmvm's decoder, as a KVM destination's
 * would (without the KVM calls that follow it). */
static int fz_load(void *o, const void *buf, size_t len, struct pm_err *err)
{
	struct fz_vm *vm = o;
	struct pmvm_vm_state st;
	int r = pmvm_state_decode(buf, len, &st, err);

	if (!r)
		pmvm_state_free(&st);
	vm->loads++;
	return r;
}

static int fz_resume(void *o, struct pm_err *err)
{
	((struct fz_vm *)o)->resumes++;
	return 0;
}

static const struct pm_backend_ops fz_ops = {
	.dirty_start = fz_fail, .dirty_sync = fz_fail, .dirty_count = fz_count,
	.dirty_harvest = fz_harvest, .dirty_stop = fz_stop, .pause = fz_ok, .resume = fz_resume,
	.save_state = fz_save, .load_state = fz_load,
};

struct fuzz_incoming_result fuzz_incoming_last;

/* A destination keeps waiting after bad connections: once every channel
 * of the input was refused, nothing more can come, so cancel it. */
struct watch {
	struct pm_incoming *in;
	unsigned nch, rejected;
};

static void on_log(void *opaque, const char *msg)
{
	struct watch *w = opaque;

	if (strstr(msg, "rejected a connection") && ++w->rejected == w->nch)
		pm_incoming_cancel(w->in);
}

/* Feeds each channel its bytes in input order, draining what the
 * destination answers, until everything is written. */
static void feed(int *fds, unsigned nch, const uint8_t *data, size_t size)
{
	size_t off = 1;

	while (off + 3 <= size) {
		unsigned ch = data[off] & 3;
		size_t len = data[off + 1] | (size_t)data[off + 2] << 8;
		off += 3;
		if (len > size - off)
			len = size - off;
		if (ch >= nch)
			ch %= nch;
		const uint8_t *p = data + off;
		size_t left = len;
		off += len;
		while (left) {
			struct pollfd pf = { .fd = fds[ch], .events = POLLOUT };
			if (poll(&pf, 1, 1000) <= 0)
				return;         /* the destination stopped reading */
			ssize_t n = send(fds[ch], p, left, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (n < 0 && errno != EAGAIN && errno != EINTR)
				return;
			if (n > 0) {
				p += n;
				left -= n;
			}
		}
	}
}

struct feeder {
	int fds[4];
	unsigned nch;
	const uint8_t *data;
	size_t size;
};

static void *feeder_main(void *arg)
{
	struct feeder *f = arg;

	feed(f->fds, f->nch, f->data, f->size);
	for (unsigned i = 0; i < f->nch; i++)
		shutdown(f->fds[i], SHUT_WR);
	return NULL;
}

static int fuzz_incoming_one(const uint8_t *data, size_t size)
{
	static uint8_t *mem[FZ_REGIONS];
	struct fz_vm vm = { 0 };
	struct pm_blockdev disk = { .id = 0, .name = "fuzz-disk", .size = FUZZ_IN_DISK_BYTES,
				    .block_size = FUZZ_IN_DISK_BLOCK, .fd = -1 };
	struct pm_incoming *in = NULL;
	struct watch w = { 0 };
	struct pm_incoming_params ip = { .nlisten = 0, .timeout_ms = 300, .log = on_log, .log_opaque = &w };
	struct pm_report *rep = calloc(1, sizeof(*rep));
	struct pm_err err = { 0 };
	struct feeder f = { .data = data, .size = size };
	pthread_t th;

	if (!size || !rep) {
		free(rep);
		return 0;
	}
	for (unsigned i = 0; i < FZ_REGIONS; i++) {
		if (!mem[i] && !(mem[i] = malloc(fz_pages[i] * PM_PAGE_SIZE)))
			abort();
		vm.regions[i] = (struct pm_region){ .id = i, .gpa = fz_gpa[i], .npages = fz_pages[i],
						    .host = mem[i] };
	}
	vm.be = (struct pm_backend){ .kind = "fuzz", .ops = &fz_ops, .vm = &vm, .nregions = FZ_REGIONS,
				     .regions = vm.regions };
	if (data[0] & FUZZ_IN_DISK) {
		disk.fd = memfd_create("fuzz-disk", MFD_CLOEXEC);
		if (disk.fd < 0 || ftruncate(disk.fd, FUZZ_IN_DISK_BYTES))
			abort();
		vm.be.ndisks = 1;
		vm.be.disks = &disk;
	}
	f.nch = (data[0] & 3) + 1;
	if (pm_incoming_listen(&in, &ip, &err))
		abort();
	w.in = in;
	w.nch = f.nch;
	for (unsigned i = 0; i < f.nch; i++) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
			abort();
		f.fds[i] = sv[0];
		if (pm_incoming_adopt(in, sv[1], &err))
			abort();
	}
	if (pthread_create(&th, NULL, feeder_main, &f))
		abort();
	int r = pm_incoming_run(in, &vm.be, rep, &err);
	/* The destination is done: whatever the feeder still writes fails. */
	for (unsigned i = 0; i < f.nch; i++)
		shutdown(f.fds[i], SHUT_RDWR);
	pthread_join(th, NULL);
	for (unsigned i = 0; i < f.nch; i++)
		close(f.fds[i]);
	pm_incoming_close(in);
	fuzz_incoming_last = (struct fuzz_incoming_result){ .rc = r, .loads = vm.loads, .resumes = vm.resumes,
		.pages = rep->pages_sent + rep->zero_pages, .rejected = rep->rejected_connections };
	snprintf(fuzz_incoming_last.msg, sizeof(fuzz_incoming_last.msg), "%s", err.msg);
	if (disk.fd >= 0) {
		struct stat st;
		/* A block written past the image's end would grow it. */
		if (fstat(disk.fd, &st) || st.st_size != FUZZ_IN_DISK_BYTES)
			abort();
		if (pread(disk.fd, fuzz_incoming_last.disk, FUZZ_IN_DISK_BYTES, 0) != FUZZ_IN_DISK_BYTES)
			abort();
		fuzz_incoming_last.disk_allocated = (uint64_t)st.st_blocks * 512;
		close(disk.fd);
	}
	free(rep);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_incoming_one(data, size);
}
