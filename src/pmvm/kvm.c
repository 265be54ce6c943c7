// SPDX-License-Identifier: MIT
/* The VM: /dev/kvm, memory slots over one memfd, the in-kernel irqchip and
 * PIT, the serial port, and the boot of a guest in long mode. */
#include <pmigrate/hostmem.h>
#include "pmvm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bootinfo.h"
#include "cpu_setup.h"
#include "cpuid.h"
#include "bzimage.h"
#include "loader.h"
#include "mptable.h"

#define PMVM_TSS_ADDR     0xfffbd000ull   /* three pages KVM needs on Intel, below the BIOS */
#define PMVM_IDMAP_ADDR   0xfffbc000ull
#define SERIAL_IRQ 4

void *pmvm_gpa(struct pmvm *vm, uint64_t gpa, uint64_t len)
{
	for (unsigned i = 0; i < vm->nslots; i++) {
		const struct pmvm_slot *s = &vm->slots[i];
		uint64_t size = s->npages * PM_PAGE_SIZE;

		if (gpa >= s->gpa && gpa - s->gpa < size && len <= size - (gpa - s->gpa))
			return s->host + (gpa - s->gpa);
	}
	return NULL;
}

void pmvm_mark_dirty(struct pmvm *vm, uint64_t gpa, uint64_t len)
{
	if (!len)
		return;
	for (unsigned i = 0; i < vm->nslots; i++) {
		const struct pmvm_slot *s = &vm->slots[i];
		uint64_t end = gpa + len, lo, hi;

		if (end <= s->gpa || gpa >= s->gpa + s->npages * PM_PAGE_SIZE || !s->dev_dirty)
			continue;
		lo = (gpa > s->gpa ? gpa - s->gpa : 0) / PM_PAGE_SIZE;
		hi = (end - s->gpa + PM_PAGE_SIZE - 1) / PM_PAGE_SIZE;
		if (hi > s->npages)
			hi = s->npages;
		/* After the device's stores: release, as pm_dirty_log_mark. */
		for (uint64_t p = lo; p < hi; p++)
			atomic_fetch_or_explicit(&s->dev_dirty[p / 64], 1ull << (p % 64), memory_order_release);
	}
}

static void *vblk_gpa(void *opaque, uint64_t gpa, uint64_t len)
{
	return pmvm_gpa(opaque, gpa, len);
}

static void vblk_dirty(void *opaque, uint64_t gpa, uint64_t len)
{
	pmvm_mark_dirty(opaque, gpa, len);
}

static void vblk_irq(void *opaque, bool level)
{
	struct pmvm *vm = opaque;
	struct kvm_irq_level l = { .irq = PMVM_VIRTIO_BLK_IRQ, .level = level };

	if (ioctl(vm->vm_fd, KVM_IRQ_LINE, &l) < 0)
		pmvm_fail(vm, "KVM_IRQ_LINE %u: %s", PMVM_VIRTIO_BLK_IRQ, strerror(errno));
}

/* --disk: the image (created sparse when missing) and its device. */
static int setup_disk(struct pmvm *vm, const struct pmvm_config *c, struct pm_err *err)
{
	struct pm_disk_params p = { .path = c->disk_path, .size = c->disk_size,
				    .block_size = (uint32_t)c->disk_block, .create = true };
	struct virtio_env env = { vblk_gpa, vblk_dirty, vblk_irq, vm };
	int r;

	for (unsigned i = 0; i < vm->nslots; i++) {
		vm->slots[i].dev_dirty = calloc((vm->slots[i].npages + 63) / 64, sizeof(uint64_t));
		if (!vm->slots[i].dev_dirty)
			return pm_err_set(err, ENOMEM, "out of memory");
	}
	if (!c->disk_path[0])
		return 0;
	r = pm_disk_open(&vm->disk, &p, err);
	if (r)
		return r;
	pmvm_virtio_blk_init(&vm->vblk, vm->disk, &env);
	pm_disk_blockdev(vm->disk, 0, &vm->blockdev);
	return 0;
}

static const struct { int cap; const char *name; } required_caps[] = {
	{ KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP" },
	{ KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY" },
	{ KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR" },
	{ KVM_CAP_SET_IDENTITY_MAP_ADDR, "KVM_CAP_SET_IDENTITY_MAP_ADDR" },
	{ KVM_CAP_PIT2, "KVM_CAP_PIT2" },
	{ KVM_CAP_PIT_STATE2, "KVM_CAP_PIT_STATE2" },
	{ KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID" },
	{ KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE" },
	{ KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS" },
	{ KVM_CAP_DEBUGREGS, "KVM_CAP_DEBUGREGS" },
	{ KVM_CAP_ADJUST_CLOCK, "KVM_CAP_ADJUST_CLOCK" },
	{ KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT" },
};

static int open_kvm(struct pmvm *vm, const char *path, struct pm_err *err)
{
	int api;

	vm->kvm_fd = open(path, O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0) {
		int e = errno;

		if (e == ENOENT || e == ENXIO || e == ENODEV)
			return pm_err_set(err, e, "cannot open %s: %s: KVM is not available on this machine "
					  "(no kvm module loaded, or nested virtualization is not exposed)",
					  path, strerror(e));
		if (e == EACCES || e == EPERM)
			return pm_err_set(err, e, "cannot open %s: %s: run as root or join the group that owns it",
					  path, strerror(e));
		return pm_err_set(err, e, "cannot open %s: %s", path, strerror(e));
	}
	api = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (api < 0)
		return pm_err_set(err, errno, "%s is not a KVM device (KVM_GET_API_VERSION: %s)",
				  path, strerror(errno));
	if (api != KVM_API_VERSION)
		return pm_err_set(err, ENOTSUP, "KVM API version %d, pmvm needs %d", api, KVM_API_VERSION);
	for (unsigned i = 0; i < sizeof(required_caps) / sizeof(required_caps[0]); i++) {
		if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, required_caps[i].cap) <= 0)
			return pm_err_set(err, ENOTSUP, "this KVM lacks %s, which pmvm needs",
					  required_caps[i].name);
	}
	return 0;
}

static int get_cpuid(struct pmvm *vm, struct pm_err *err)
{
	for (unsigned n = 64; n <= 4096; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));

		if (!c)
			return pm_err_set(err, ENOMEM, "out of memory");
		c->nent = n;
		if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			vm->cpuid = c;
			return 0;
		}
		free(c);
		if (errno != E2BIG)
			return pm_err_set(err, errno, "KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
	}
	return pm_err_set(err, E2BIG, "KVM_GET_SUPPORTED_CPUID: too many entries");
}

static int get_msr_list(struct pmvm *vm, struct pm_err *err)
{
	struct kvm_msr_list probe = { .nmsrs = 0 };
	struct kvm_msr_list *l;

	/* The first call fails with E2BIG and tells the count. */
	if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG)
		return pm_err_set(err, errno, "KVM_GET_MSR_INDEX_LIST: %s", strerror(errno));
	l = calloc(1, sizeof(*l) + probe.nmsrs * sizeof(l->indices[0]));
	if (!l)
		return pm_err_set(err, ENOMEM, "out of memory");
	l->nmsrs = probe.nmsrs;
	if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, l) < 0) {
		int e = errno;

		free(l);
		return pm_err_set(err, e, "KVM_GET_MSR_INDEX_LIST: %s", strerror(e));
	}
	vm->msrs = malloc((l->nmsrs ? l->nmsrs : 1) * sizeof(uint32_t));
	if (!vm->msrs) {
		free(l);
		return pm_err_set(err, ENOMEM, "out of memory");
	}
	vm->nmsrs = pmvm_msr_filter(l->indices, l->nmsrs, vm->msrs);
	free(l);
	return 0;
}

static int set_slot(struct pmvm *vm, unsigned i, uint32_t flags, struct pm_err *err)
{
	struct kvm_userspace_memory_region r = {
		.slot = i,
		.flags = flags,
		.guest_phys_addr = vm->slots[i].gpa,
		.memory_size = vm->slots[i].npages * PM_PAGE_SIZE,
		.userspace_addr = (uintptr_t)vm->slots[i].host,
	};

	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		return pm_err_set(err, errno, "KVM_SET_USER_MEMORY_REGION slot %u: %s", i, strerror(errno));
	return 0;
}

static int setup_memory(struct pmvm *vm, enum pm_mem_kind kind, bool prealloc, struct pm_err *err)
{
	uint64_t low = vm->mem_bytes < PMVM_LOW_MEM_MAX ? vm->mem_bytes : PMVM_LOW_MEM_MAX;
	int r;

	/* A guest the host cannot hold is an error now, not the OOM killer later. */
	r = pm_check_guest_memory(vm->mem_bytes, err);
	if (r)
		return r;
	/* Anonymous memory with transparent huge pages by default, as QEMU's
	 * (--mem-backend): untouched guest memory is never read, sent or
	 * allocated by a migration, and what is touched comes 2 MiB at a time,
	 * one fault and one TLB entry where 4 KiB pages of a memfd (whose huge
	 * pages hosts often disable) took 512.  Measured nested (Linux guest,
	 * 256 MiB, 4 channels): a migration took 5.1 s instead of 8.3 s, and
	 * the guest ran at its set pace where it had been 20 times slower. */
	r = pm_guestmem_create(&vm->gm, kind, vm->mem_bytes, err);
	if (!r && prealloc)
		r = pm_guestmem_prealloc(&vm->gm, 0, err);
	if (r)
		return r;
	vm->mem = vm->gm.base;
	vm->slots[0] = (struct pmvm_slot){ .gpa = 0, .npages = low / PM_PAGE_SIZE, .host = vm->mem };
	vm->nslots = 1;
	if (vm->mem_bytes > low) {
		vm->slots[1] = (struct pmvm_slot){ .gpa = PMVM_HIGH_MEM_GPA,
			.npages = (vm->mem_bytes - low) / PM_PAGE_SIZE, .host = vm->mem + low };
		vm->nslots = 2;
	}
	for (unsigned i = 0; i < vm->nslots; i++)
		pthread_mutex_init(&vm->slots[i].clear_lock, NULL);
	for (unsigned i = 0; i < vm->nslots; i++) {
		r = set_slot(vm, i, 0, err);
		if (r)
			return r;
		vm->regions[i] = (struct pm_region){ .id = i, .gpa = vm->slots[i].gpa,
			.npages = vm->slots[i].npages, .host = vm->slots[i].host, .mem = &vm->gm,
			.mem_offset = (uint64_t)(vm->slots[i].host - vm->mem) };
	}
	return 0;
}

int pmvm_set_dirty_logging(struct pmvm *vm, bool on, struct pm_err *err)
{
	for (unsigned i = 0; i < vm->nslots; i++) {
		int r = set_slot(vm, i, on ? KVM_MEM_LOG_DIRTY_PAGES : 0, err);

		if (r)
			return r;
	}
	return 0;
}

static void serial_write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;     /* output is best effort; the guest never waits for it */
		p += w;
		n -= (size_t)w;
	}
}

/* Called with the serial lock held: line-buffered output. */
static void serial_out(void *opaque, uint8_t byte)
{
	struct pmvm *vm = opaque;

	vm->serial_line[vm->serial_len++] = (char)byte;
	if (byte == '\n' || vm->serial_len == sizeof(vm->serial_line)) {
		serial_write_all(vm->serial_fd, vm->serial_line, vm->serial_len);
		vm->serial_len = 0;
	}
}

void pmvm_serial_flush(struct pmvm *vm)
{
	pthread_mutex_lock(&vm->serial.lock);
	if (vm->serial_len && vm->serial_fd >= 0)
		serial_write_all(vm->serial_fd, vm->serial_line, vm->serial_len);
	vm->serial_len = 0;
	pthread_mutex_unlock(&vm->serial.lock);
}

static void serial_irq(void *opaque, bool level)
{
	struct pmvm *vm = opaque;
	struct kvm_irq_level l = { .irq = SERIAL_IRQ, .level = level };

	if (ioctl(vm->vm_fd, KVM_IRQ_LINE, &l) < 0)
		pmvm_fail(vm, "KVM_IRQ_LINE %d: %s", SERIAL_IRQ, strerror(errno));
}

int pmvm_create(struct pmvm *vm, const struct pmvm_config *c, struct pm_err *err)
{
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	uint64_t idmap = PMVM_IDMAP_ADDR;
	int r;

	memset(vm, 0, sizeof(*vm));
	vm->kvm_fd = vm->vm_fd = vm->serial_fd = -1;
	vm->gm.fd = vm->gm.pagemap_fd = -1;
	vm->nvcpus = c->vcpus;
	vm->mem_bytes = c->mem_bytes;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, NULL);
	pthread_rwlock_init(&vm->dirty_lock, NULL);
	pmvm_serial_init(&vm->serial, serial_out, serial_irq, vm);
	pmvm_rtc_init(&vm->rtc);

	if (c->serial) {
		vm->serial_fd = open(c->serial, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
		if (vm->serial_fd < 0)
			return pm_err_set(err, errno, "cannot open serial output %s: %s", c->serial,
					  strerror(errno));
	} else {
		vm->serial_fd = dup(STDOUT_FILENO);
	}

	r = open_kvm(vm, c->kvm_path, err);
	if (r)
		return r;
	do
		vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	while (vm->vm_fd < 0 && errno == EINTR);
	if (vm->vm_fd < 0)
		return pm_err_set(err, errno, "KVM_CREATE_VM: %s", strerror(errno));
	/* Both must precede the first vCPU (Intel needs them for real mode
	 * emulation; harmless elsewhere). */
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)PMVM_TSS_ADDR) < 0)
		return pm_err_set(err, errno, "KVM_SET_TSS_ADDR: %s", strerror(errno));
	if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0)
		return pm_err_set(err, errno, "KVM_SET_IDENTITY_MAP_ADDR: %s", strerror(errno));
	if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
		return pm_err_set(err, errno, "KVM_CREATE_IRQCHIP: %s", strerror(errno));
	if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0)
		return pm_err_set(err, errno, "KVM_CREATE_PIT2: %s", strerror(errno));

	r = setup_memory(vm, c->mem_kind, c->prealloc, err);
	if (!r)
		r = setup_disk(vm, c, err);
	if (r)
		return r;

	r = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
	if (r > 0)
		vm->xsave_size = (uint32_t)r;
	else if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE) > 0)
		vm->xsave_size = sizeof(struct kvm_xsave);
	vm->has_xcrs = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XCRS) > 0;

	r = get_cpuid(vm, err);
	if (!r)
		r = get_msr_list(vm, err);
	if (!r)
		r = pmvm_vcpus_create(vm, err);
	if (r)
		return r;
	if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_GET_TSC_KHZ) > 0) {
		r = ioctl(vm->vcpus[0].fd, KVM_GET_TSC_KHZ, 0);
		vm->tsc_khz = r > 0 ? (uint32_t)r : 0;
	}
	return 0;
}

/* The identity map of [0, top) and the GDT every vCPU starts with. */
static int write_long_mode_tables(struct pmvm *vm, uint64_t low_end, uint64_t top, struct pm_err *err)
{
	uint64_t gdt[PMVM_GDT_ENTRIES];
	int r = pmvm_build_page_tables(vm->mem, low_end, top, err);
	if (r)
		return r;
	pmvm_build_gdt(gdt, PMVM_TSS_GPA);
	memset(vm->mem + PMVM_GDT_GPA, 0, 4096);
	memcpy(vm->mem + PMVM_GDT_GPA, gdt, sizeof(gdt));
	return 0;
}

int pmvm_boot(struct pmvm *vm, const struct pmvm_config *c, const uint8_t *image,
	      size_t image_len, struct pm_err *err)
{
	uint64_t low_end = vm->slots[0].npages * PM_PAGE_SIZE;
	uint64_t top = vm->slots[vm->nslots - 1].gpa + vm->slots[vm->nslots - 1].npages * PM_PAGE_SIZE;
	struct pmvm_bootinfo bi;
	struct pmvm_image img;
	int r;

	r = pmvm_image_load(image, image_len, vm->mem, low_end, &img, err);
	if (r)
		return r;
	/* The disk's registers are in the hole: map up to them. */
	if (vm->disk && top < PMVM_VIRTIO_BLK_GPA + VIRTIO_MMIO_SIZE)
		top = PMVM_VIRTIO_BLK_GPA + VIRTIO_MMIO_SIZE;
	r = write_long_mode_tables(vm, low_end, top, err);
	if (r)
		return r;

	memset(&bi, 0, sizeof(bi));
	bi.magic = PMVM_BOOT_MAGIC;
	bi.version = PMVM_BOOT_VERSION;
	bi.nvcpus = vm->nvcpus;
	bi.mem_bytes = vm->mem_bytes;
	bi.low_mem_end = low_end;
	bi.free_start = (img.load_end + PM_PAGE_SIZE - 1) & ~(uint64_t)(PM_PAGE_SIZE - 1);
	bi.tsc_khz = vm->tsc_khz;
	bi.serial_port = PMVM_SERIAL_PORT;
	bi.exit_port = PMVM_EXIT_PORT;
	bi.nparams = c->nparams;
	memcpy(bi.params, c->params, sizeof(bi.params));
	if (vm->disk) {
		bi.virtio_blk_base = PMVM_VIRTIO_BLK_GPA;
		bi.virtio_blk_irq = PMVM_VIRTIO_BLK_IRQ;
	}
	memcpy(vm->mem + PMVM_BOOTINFO_GPA, &bi, sizeof(bi));

	for (unsigned i = 0; i < vm->nvcpus; i++) {
		r = pmvm_vcpu_boot(&vm->vcpus[i], img.entry, err);
		if (r)
			return r;
	}
	return 0;
}

static void cpuid_leaf1(const struct pmvm *vm, uint32_t *eax, uint32_t *edx)
{
	*eax = *edx = 0;
	for (unsigned i = 0; i < vm->cpuid->nent; i++)
		if (vm->cpuid->entries[i].function == 1) {
			*eax = vm->cpuid->entries[i].eax;
			*edx = vm->cpuid->entries[i].edx;
		}
}

int pmvm_boot_linux(struct pmvm *vm, const struct pmvm_linux_boot *b, struct pm_err *err)
{
	uint64_t low_end = vm->slots[0].npages * PM_PAGE_SIZE;
	uint64_t top = vm->slots[vm->nslots - 1].gpa + vm->slots[vm->nslots - 1].npages * PM_PAGE_SIZE;
	struct pmvm_linux_layout lay;
	uint32_t sig, features;
	int r;

	r = pmvm_linux_load(b, vm->mem, low_end, &lay, err);
	if (r)
		return r;
	/* The 64-bit entry wants long mode with an identity map of what the
	 * kernel touches before it builds its own tables: pmvm's usual one. */
	r = write_long_mode_tables(vm, low_end, top, err);
	if (r)
		return r;
	cpuid_leaf1(vm, &sig, &features);
	pmvm_mptable_write(vm->mem + PMVM_EBDA_GPA, (uint32_t)PMVM_EBDA_GPA, vm->nvcpus, sig, features);
	vm->linux_guest = true;
	/* Only the boot processor starts; Linux wakes the others with
	 * INIT/SIPI through the in-kernel LAPIC. */
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		r = pmvm_vcpu_boot_linux(&vm->vcpus[i], lay.entry, PMVM_BOOT_PARAMS_GPA, err);
		if (r)
			return r;
	}
	return 0;
}

void pmvm_destroy(struct pmvm *vm)
{
	pmvm_vcpus_stop(vm);
	pmvm_serial_flush(vm);
	if (vm->vcpus) {
		for (unsigned i = 0; i < vm->nvcpus; i++) {
			if (vm->vcpus[i].run)
				munmap(vm->vcpus[i].run, vm->vcpus[i].run_size);
			if (vm->vcpus[i].fd >= 0)
				close(vm->vcpus[i].fd);
		}
		free(vm->vcpus);
	}
	for (unsigned i = 0; i < vm->nslots; i++) {
		free(vm->slots[i].bitmap);
		free(vm->slots[i].synced);
		free(vm->slots[i].cleared);
		free(vm->slots[i].dev_dirty);
		pthread_mutex_destroy(&vm->slots[i].clear_lock);
	}
	if (vm->disk) {
		pmvm_virtio_blk_destroy(&vm->vblk);
		pm_disk_close(vm->disk);
	}
	pm_guestmem_destroy(&vm->gm);
	vm->mem = NULL;
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	if (vm->serial_fd >= 0)
		close(vm->serial_fd);
	free(vm->cpuid);
	free(vm->msrs);
	pmvm_serial_destroy(&vm->serial);
	pmvm_rtc_destroy(&vm->rtc);
	pthread_rwlock_destroy(&vm->dirty_lock);
	pthread_cond_destroy(&vm->cond);
	pthread_mutex_destroy(&vm->lock);
	memset(vm, 0, sizeof(*vm));
	vm->kvm_fd = vm->vm_fd = vm->serial_fd = -1;
	vm->gm.fd = vm->gm.pagemap_fd = -1;
}

static int get_chip(struct pmvm *vm, unsigned id, struct kvm_irqchip *chip, struct pm_err *err)
{
	memset(chip, 0, sizeof(*chip));
	chip->chip_id = id;
	if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, chip) < 0)
		return pm_err_set(err, errno, "KVM_GET_IRQCHIP %u: %s", id, strerror(errno));
	return 0;
}

int pmvm_save_vm(struct pmvm *vm, struct pmvm_vm_state *st, struct pm_err *err)
{
	int r;

	st->mem_bytes = vm->mem_bytes;
	r = get_chip(vm, KVM_IRQCHIP_PIC_MASTER, &st->pic_master, err);
	if (!r)
		r = get_chip(vm, KVM_IRQCHIP_PIC_SLAVE, &st->pic_slave, err);
	if (!r)
		r = get_chip(vm, KVM_IRQCHIP_IOAPIC, &st->ioapic, err);
	if (r)
		return r;
	if (ioctl(vm->vm_fd, KVM_GET_PIT2, &st->pit) < 0)
		return pm_err_set(err, errno, "KVM_GET_PIT2: %s", strerror(errno));
	pthread_mutex_lock(&vm->lock);
	if (vm->clock_frozen) {
		st->clock = vm->clock_at_pause;     /* the guest's time at the pause */
	} else if (ioctl(vm->vm_fd, KVM_GET_CLOCK, &st->clock) < 0) {
		pthread_mutex_unlock(&vm->lock);
		return pm_err_set(err, errno, "KVM_GET_CLOCK: %s", strerror(errno));
	}
	pthread_mutex_unlock(&vm->lock);
	pmvm_serial_save(&vm->serial, &st->serial);
	/* A line cut by the pause is written now rather than at exit. */
	pmvm_serial_flush(vm);
	st->has_rtc = true;
	pmvm_rtc_save(&vm->rtc, &st->rtc);
	if (vm->disk) {
		st->has_virtio_blk = true;
		virtio_mmio_save(&vm->vblk.t, &st->virtio_blk);
	}
	st->has_heartbeat = true;
	st->heartbeat.last_ns = atomic_load(&vm->hb.last_ns);
	st->heartbeat.count = atomic_load(&vm->hb.count);
	return 0;
}

/* VM-wide state restored before the vCPUs: interrupt controllers, PIT, serial. */
int pmvm_load_vm_early(struct pmvm *vm, const struct pmvm_vm_state *st, struct pm_err *err)
{
	const struct kvm_irqchip *chips[] = { &st->pic_master, &st->pic_slave, &st->ioapic };
	struct kvm_pit_state2 pit = st->pit;

	for (unsigned i = 0; i < 3; i++) {
		struct kvm_irqchip c = *chips[i];

		if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &c) < 0)
			return pm_err_set(err, errno, "KVM_SET_IRQCHIP %u: %s", c.chip_id, strerror(errno));
	}
	if (ioctl(vm->vm_fd, KVM_SET_PIT2, &pit) < 0)
		return pm_err_set(err, errno, "KVM_SET_PIT2: %s", strerror(errno));
	if (pmvm_serial_load(&vm->serial, &st->serial))
		return pm_err_set(err, EINVAL, "serial state is not one a 16550 can be in");
	if (st->has_rtc && pmvm_rtc_load(&vm->rtc, &st->rtc))
		return pm_err_set(err, EINVAL, "rtc state is not one an MC146818 can be in");
	if (st->has_virtio_blk != (vm->disk != NULL))
		return pm_err_set(err, EINVAL, "the state is of a VM %s a disk, this one has %s",
				  st->has_virtio_blk ? "with" : "without", vm->disk ? "one" : "none");
	if (vm->disk && virtio_mmio_load(&vm->vblk.t, &st->virtio_blk))
		return pm_err_set(err, EINVAL, "virtio-blk state does not fit this VM (rings outside its RAM)");
	if (st->has_heartbeat) {
		atomic_store(&vm->hb.last_ns, st->heartbeat.last_ns);
		atomic_store(&vm->hb.count, st->heartbeat.count);
	}
	return 0;
}

/* Last, just before the vCPUs run: kvmclock, set again by the resume
 * (pmvm_clock_thaw) so that the time spent between here and there does
 * not count either. */
int pmvm_load_vm_late(struct pmvm *vm, const struct pmvm_vm_state *st, struct pm_err *err)
{
	struct kvm_clock_data clock = { .clock = st->clock.clock };

	if (ioctl(vm->vm_fd, KVM_SET_CLOCK, &clock) < 0)
		return pm_err_set(err, errno, "KVM_SET_CLOCK: %s", strerror(errno));
	pthread_mutex_lock(&vm->lock);
	vm->clock_at_pause = clock;
	vm->clock_frozen = true;
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

int pmvm_clock_freeze(struct pmvm *vm, struct pm_err *err)
{
	if (vm->clock_frozen)
		return 0;
	memset(&vm->clock_at_pause, 0, sizeof(vm->clock_at_pause));
	if (ioctl(vm->vm_fd, KVM_GET_CLOCK, &vm->clock_at_pause) < 0)
		return pm_err_set(err, errno, "KVM_GET_CLOCK: %s", strerror(errno));
	vm->clock_frozen = true;
	return 0;
}

int pmvm_clock_thaw(struct pmvm *vm, struct pm_err *err)
{
	struct kvm_clock_data clock = { .clock = vm->clock_at_pause.clock };

	if (!vm->clock_frozen)
		return 0;
	if (ioctl(vm->vm_fd, KVM_SET_CLOCK, &clock) < 0)
		return pm_err_set(err, errno, "KVM_SET_CLOCK: %s", strerror(errno));
	vm->clock_frozen = false;
	return 0;
}
