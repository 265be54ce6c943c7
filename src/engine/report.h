/* SPDX-License-Identifier: MIT */
/* Private to the engine: measurements that go into reports. */
#ifndef PM_ENGINE_REPORT_H
#define PM_ENGINE_REPORT_H

#include <pmigrate/backend.h>
#include <pmigrate/migrate.h>

/* What the VM's guest memory costs the host now (regions without a
 * pm_guestmem are not counted).  Reads /proc: milliseconds for a big
 * VM, so never inside the pause. */
void pm_guest_mem_usage(const struct pm_backend *be, struct pm_mem_usage *u);

#endif
