/* SPDX-License-Identifier: MIT */
/* How much memory a VM process can still get, so a guest the host cannot
 * provide is refused with a clear error before anything is allocated --
 * not left to the OOM killer, which may pick another VM. */
#ifndef PMIGRATE_HOSTMEM_H
#define PMIGRATE_HOSTMEM_H

#include <stddef.h>
#include <stdint.h>
#include <pmigrate/error.h>

/* MemAvailable of /proc/meminfo, capped by what this process's memory
 * cgroup still allows (v2 memory.max - memory.current, v1
 * memory.limit_in_bytes - memory.usage_in_bytes).  what (may be NULL) names
 * the binding limit, for messages. */
int pm_host_mem_available(uint64_t *bytes, char *what, size_t wl, struct pm_err *err);
/* 0 if `bytes` of guest memory fit what is available, else -ENOMEM with a
 * message that says how much there is and where the limit comes from. */
int pm_check_guest_memory(uint64_t bytes, struct pm_err *err);
/* The same, reading /proc and /sys/fs/cgroup under root (tests). */
int pm_host_mem_available_at(const char *root, uint64_t *bytes, char *what, size_t wl,
			     struct pm_err *err);

#endif
