/* SPDX-License-Identifier: MIT */
/* The synthetic VM's disks: raw images (pm_disk) written by disk-writer
 * threads at a set rate, as a guest's block I/O would be.  Private to
 * src/synvm: synvm.c owns the pause (the writers park in its checkpoint)
 * and the device state, where the writers' positions travel. */
#ifndef PM_SYNVM_VDISK_H
#define PM_SYNVM_VDISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pmigrate/backend.h>
#include <pmigrate/disk.h>
#include "synvm/synvm.h"

struct vdisks;

/* Opens (creating where asked) every disk of o; none: *out = NULL, 0. */
int vdisks_open(struct vdisks **out, struct synvm *vm, const struct synvm_opts *o, struct pm_err *err);
/* Starts the writer threads (none when idle); the count is added to what
 * a pause waits for. */
int vdisks_start(struct vdisks *vd, unsigned *started, struct pm_err *err);
/* After the VM asked its threads to quit. */
void vdisks_join(struct vdisks *vd);
void vdisks_close(struct vdisks *vd);

unsigned vdisks_count(const struct vdisks *vd);
struct pm_blockdev *vdisks_blockdevs(struct vdisks *vd);
struct pm_disk *vdisks_disk(struct vdisks *vd, unsigned i);
const struct synvm_diskload *vdisks_load(const struct vdisks *vd);
uint64_t vdisks_bytes_written(const struct vdisks *vd);

/* Device state of the writers (their workload and positions). */
size_t vdisks_state_len(const struct vdisks *vd);
void vdisks_save(const struct vdisks *vd, uint8_t *out);
int vdisks_restore(struct vdisks *vd, const uint8_t *in, size_t len, struct pm_err *err);

/* synvm.c: parks the calling thread while the VM is paused; false: quit. */
bool synvm_checkpoint(struct synvm *vm);
bool synvm_pause_requested(struct synvm *vm);
unsigned synvm_throttle_pct(struct synvm *vm);

#endif
