/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the device-state decoders, the real code -- what a
 * destination runs on the STATE frame's bytes before anything is loaded.
 *
 * Input: byte 0 picks the decoder (fuzz_targets.h), the rest is the blob:
 *  - pmvm_state_decode() (src/pmvm/state.c): sections, vCPUs, MSRs, XSAVE,
 *    checksum;
 *  - the synthetic VM's load_state (src/synvm/synvm.c) on a 1 MiB VM
 *    waiting as a destination, without and with a disk, whose writers'
 *    state follows the fixed part.
 * A decoder either refuses the blob with a message or accepts it whole. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pmigrate/migrate.h>
#include "pmvm/state.h"
#include "synvm/synvm.h"
#include "fuzz_targets.h"

struct fuzz_state_result fuzz_state_last;

/* A synthetic VM waiting for its state (built once; its threads never start). */
static struct synvm *synthetic(bool disk)
{
	static struct synvm *vm[2];
	static char path[64];
	struct pm_err err = { 0 };

	if (vm[disk])
		return vm[disk];
	struct synvm_opts o = { .mem_bytes = FUZZ_STATE_SYNVM_MEM, .incoming = true };
	if (synvm_parse_workload("idle", &o.workload, &err))
		abort();
	if (disk) {
		snprintf(path, sizeof(path), "/tmp/pm-fuzz-disk-%d.img", getpid());
		if (synvm_parse_disk(path, &o.disks[0], &err))
			abort();
		o.disks[0].size = 1 << 20;
		o.ndisks = 1;
		if (synvm_parse_diskload("idle", &o.diskload, &err))
			abort();
	}
	if (synvm_create(&vm[disk], &o, &err)) {
		fprintf(stderr, "fuzz_state: %s\n", err.msg);
		abort();
	}
	if (disk)
		unlink(path);
	return vm[disk];
}

int fuzz_state_synvm_blob(int disk, void **buf, size_t *len)
{
	struct pm_backend *be = synvm_backend(synthetic(disk));
	struct pm_err err = { 0 };

	return be->ops->save_state(be->vm, buf, len, &err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pm_err err = { 0 };
	int r;

	if (!size)
		return 0;
	switch (data[0] % FUZZ_STATE_NDECODERS) {
	case FUZZ_STATE_PMVM: {
		struct pmvm_vm_state st;
		r = pmvm_state_decode(data + 1, size - 1, &st, &err);
		if (!r)
			pmvm_state_free(&st);
		break;
	}
	default: {
		struct pm_backend *be = synvm_backend(synthetic(data[0] % FUZZ_STATE_NDECODERS == FUZZ_STATE_SYNVM_DISK));
		r = be->ops->load_state(be->vm, data + 1, size - 1, &err);
		break;
	}
	}
	/* Refusals say why. */
	if (r && !err.msg[0])
		abort();
	fuzz_state_last.rc = r;
	snprintf(fuzz_state_last.msg, sizeof(fuzz_state_last.msg), "%s", err.msg);
	return 0;
}
