/* SPDX-License-Identifier: MIT */
/* A raw disk image with a dirty-block bitmap kept by the VM's write path
 * (include/pmigrate/disk.h).  The bitmap is a struct pm_dirty_log of
 * blocks: pm_disk_write() marks after pwrite() returned, and the engine's
 * tracker (method self of src/dirty) harvests it with the same
 * release/acquire argument as for memory pages. */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <pmigrate/dirty.h>
#include <pmigrate/disk.h>

#define EXTENT (1u << 20)

struct pm_disk {
	int fd;
	char *path;
	uint64_t size, nblocks;
	uint32_t block_size, block_shift;
	struct pm_dirty_log *log;
	struct pm_dirty_tracker *dt;    /* while the engine tracks */
	_Atomic uint64_t written;
};

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

static void mark(struct pm_disk *d, uint64_t off, uint64_t len)
{
	if (!len)
		return;
	for (uint64_t b = off >> d->block_shift; b <= (off + len - 1) >> d->block_shift; b++)
		pm_dirty_log_mark(d->log, b);
}

static int check_range(const struct pm_disk *d, uint64_t off, uint64_t len, const char *what,
		       struct pm_err *err)
{
	if (off > d->size || len > d->size - off)
		return pm_err_set(err, EINVAL, "disk %s: %s of %llu bytes at %llu is outside the disk (%llu bytes)",
				  d->path, what, (unsigned long long)len, (unsigned long long)off,
				  (unsigned long long)d->size);
	return 0;
}

int pm_disk_write(struct pm_disk *d, const void *buf, size_t len, uint64_t off, struct pm_err *err)
{
	size_t done = 0;
	int r = check_range(d, off, len, "write", err);

	if (r)
		return r;
	while (done < len) {
		ssize_t n = pwrite(d->fd, (const uint8_t *)buf + done, len - done, off + done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;
			/* What did reach the file must still be sent. */
			mark(d, off, done);
			return pm_err_set(err, e, "disk %s: write at %llu: %s", d->path,
					  (unsigned long long)(off + done), strerror(e));
		}
		done += n;
	}
	/* After the data is in the file: see the header. */
	mark(d, off, len);
	atomic_fetch_add_explicit(&d->written, len, memory_order_relaxed);
	return 0;
}

int pm_disk_read(struct pm_disk *d, void *buf, size_t len, uint64_t off, struct pm_err *err)
{
	size_t done = 0;
	int r = check_range(d, off, len, "read", err);

	if (r)
		return r;
	while (done < len) {
		ssize_t n = pread(d->fd, (uint8_t *)buf + done, len - done, off + done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return pm_err_set(err, n < 0 ? errno : EIO, "disk %s: read at %llu: %s", d->path,
					  (unsigned long long)(off + done), n < 0 ? strerror(errno) : "end of file");
		done += n;
	}
	return 0;
}

int pm_disk_discard(struct pm_disk *d, uint64_t off, uint64_t len, struct pm_err *err)
{
	int r = check_range(d, off, len, "discard", err);

	if (r)
		return r;
	if (off % 512 || len % 512)
		return pm_err_set(err, EINVAL, "disk %s: discard offset and length must be multiples of 512", d->path);
	if (len && fallocate(d->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len))
		return pm_err_set(err, errno, "disk %s: discard: %s", d->path, strerror(errno));
	mark(d, off, len);
	return 0;
}

int pm_disk_flush(struct pm_disk *d, struct pm_err *err)
{
	if (fdatasync(d->fd))
		return pm_err_set(err, errno, "disk %s: fdatasync: %s", d->path, strerror(errno));
	return 0;
}

int pm_disk_next_data(int fd, uint64_t off, uint64_t size, uint64_t *data, uint64_t *hole,
		      struct pm_err *err)
{
	off_t d, h;

	if (off >= size) {
		*data = *hole = size;
		return 0;
	}
	d = lseek(fd, (off_t)off, SEEK_DATA);
	if (d < 0) {
		if (errno == ENXIO) {           /* nothing allocated from off on */
			*data = *hole = size;
			return 0;
		}
		if (errno == EINVAL || errno == EOPNOTSUPP) {   /* no SEEK_DATA here */
			*data = off;
			*hole = size;
			return 0;
		}
		return pm_err_set(err, errno, "SEEK_DATA at %llu: %s", (unsigned long long)off, strerror(errno));
	}
	h = lseek(fd, d, SEEK_HOLE);
	if (h < 0)
		return pm_err_set(err, errno, "SEEK_HOLE at %lld: %s", (long long)d, strerror(errno));
	*data = (uint64_t)d < size ? (uint64_t)d : size;
	*hole = (uint64_t)h < size ? (uint64_t)h : size;
	return 0;
}

static uint64_t mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

void pm_disk_identity(int fd, uint8_t out[16])
{
	char boot[64] = "";
	struct stat st;
	uint64_t h1 = 0x6a09e667f3bcc908ull, h2 = 0xbb67ae8584caa73bull;
	int bfd;

	memset(out, 0, 16);
	if (fd < 0 || fstat(fd, &st))
		return;
	bfd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	if (bfd >= 0) {
		if (read(bfd, boot, sizeof(boot) - 1) < 0)
			boot[0] = '\0';
		close(bfd);
	}
	for (size_t i = 0; boot[i]; i++) {
		h1 = mix(h1 ^ (uint8_t)boot[i]);
		h2 = mix(h2 + (uint8_t)boot[i]);
	}
	h1 = mix(h1 ^ (uint64_t)st.st_dev) ^ mix((uint64_t)st.st_ino);
	h2 = mix(h2 ^ (uint64_t)st.st_ino) ^ mix((uint64_t)st.st_dev + 1);
	memcpy(out, &h1, 8);
	memcpy(out + 8, &h2, 8);
}

/* ---- the engine's view ---- */

static int bd_dirty_start(void *dev, struct pm_err *err)
{
	struct pm_disk *d = dev;

	if (d->dt)
		return pm_err_set(err, EBUSY, "disk %s: dirty tracking is already running", d->path);
	return pm_dirty_open_self(&d->dt, d->log, err);
}

static int bd_dirty_count(void *dev, uint64_t *blocks, struct pm_err *err)
{
	struct pm_disk *d = dev;

	if (!d->dt)
		return pm_err_set(err, EINVAL, "disk %s: dirty tracking is not running", d->path);
	return pm_dirty_count(d->dt, blocks, err);
}

static int bd_dirty_harvest(void *dev, uint64_t first, uint64_t n, uint64_t *bitmap, struct pm_err *err)
{
	struct pm_disk *d = dev;

	if (!d->dt)
		return pm_err_set(err, EINVAL, "disk %s: dirty tracking is not running", d->path);
	return pm_dirty_harvest(d->dt, first, n, bitmap, err);
}

static void bd_dirty_stop(void *dev)
{
	struct pm_disk *d = dev;

	pm_dirty_close(d->dt);
	d->dt = NULL;
}

static int bd_flush(void *dev, struct pm_err *err)
{
	return pm_disk_flush(dev, err);
}

static const struct pm_blockdev_ops disk_ops = {
	.dirty_start = bd_dirty_start,
	.dirty_count = bd_dirty_count,
	.dirty_harvest = bd_dirty_harvest,
	.dirty_stop = bd_dirty_stop,
	.flush = bd_flush,
};

void pm_disk_blockdev(struct pm_disk *d, uint32_t id, struct pm_blockdev *out)
{
	*out = (struct pm_blockdev){ .id = id, .name = d->path, .size = d->size,
				     .block_size = d->block_size, .fd = d->fd,
				     .ops = &disk_ops, .dev = d };
}

/* ---- creation ---- */

/* Writes populate bytes in 1 MiB extents spread evenly over the disk. */
static int populate(struct pm_disk *d, uint64_t bytes, uint64_t seed, struct pm_err *err)
{
	uint64_t next = d->size / EXTENT, n = (bytes + EXTENT - 1) / EXTENT;
	uint8_t *buf;
	int r = 0;

	if (bytes > d->size)
		return pm_err_set(err, EINVAL, "disk %s: populated=%llu is more than the disk's %llu bytes",
				  d->path, (unsigned long long)bytes, (unsigned long long)d->size);
	buf = malloc(EXTENT);
	if (!buf)
		return pm_err_set(err, ENOMEM, "out of memory");
	if (n > next)
		n = next ? next : 1;
	for (uint64_t i = 0; i < n && !r; i++) {
		/* Extent i of n starts at the i-th n-th of the disk's whole
		 * extents, so allocated and unallocated ranges alternate. */
		uint64_t off = next ? (i * next / n) * EXTENT : 0;
		uint64_t len = bytes - i * EXTENT < EXTENT ? bytes - i * EXTENT : EXTENT;
		uint64_t s = (seed + 1) * 0x9E3779B97F4A7C15ull ^ off;

		if (len > d->size - off)
			len = d->size - off;
		for (uint64_t k = 0; k < len / 8; k++) {
			uint64_t v = xorshift(&s);
			memcpy(buf + 8 * k, &v, 8);
		}
		for (uint64_t b = 0; b < len; b += d->block_size)
			if (((off + b) >> d->block_shift) % 16 == 15)
				memset(buf + b, 0, len - b < d->block_size ? len - b : d->block_size);
		r = pm_disk_write(d, buf, len, off, err);
	}
	free(buf);
	return r;
}

int pm_disk_open(struct pm_disk **out, const struct pm_disk_params *p, struct pm_err *err)
{
	struct pm_disk *d;
	struct stat st;
	bool created = false;
	int r;

	*out = NULL;
	uint32_t bs = p->block_size ? p->block_size : PM_DISK_DEFAULT_BLOCK;
	if (!p->path || !*p->path)
		return pm_err_set(err, EINVAL, "disk: no image file given");
	if (bs < PM_DISK_MIN_BLOCK || bs > PM_DISK_MAX_BLOCK || (bs & (bs - 1)))
		return pm_err_set(err, EINVAL, "disk %s: block size %u must be a power of two from 4 KiB to 1 MiB",
				  p->path, bs);
	if (p->size % 512)
		return pm_err_set(err, EINVAL, "disk %s: size %llu is not a multiple of 512", p->path,
				  (unsigned long long)p->size);
	d = calloc(1, sizeof(*d));
	if (!d || !(d->path = strdup(p->path))) {
		free(d);
		return pm_err_set(err, ENOMEM, "out of memory");
	}
	d->block_size = bs;
	d->block_shift = __builtin_ctz(bs);
	d->fd = open(p->path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (d->fd < 0 && errno == ENOENT && p->create) {
		if (!p->size) {
			r = pm_err_set(err, EINVAL, "disk %s does not exist: give its size (size=) to create it", p->path);
			goto fail;
		}
		d->fd = open(p->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
		created = d->fd >= 0;
	}
	if (d->fd < 0 && errno == EISDIR) {
		r = pm_err_set(err, EINVAL, "disk %s is not a regular file (raw image files only)", p->path);
		goto fail;
	}
	if (d->fd < 0) {
		r = pm_err_set(err, errno, "disk %s: cannot open: %s", p->path, strerror(errno));
		goto fail;
	}
	if (fstat(d->fd, &st)) {
		r = pm_err_set(err, errno, "disk %s: fstat: %s", p->path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		r = pm_err_set(err, EINVAL, "disk %s is not a regular file (raw image files only)", p->path);
		goto fail;
	}
	d->size = p->size ? p->size : (uint64_t)st.st_size;
	if (st.st_size && p->size && (uint64_t)st.st_size != p->size) {
		r = pm_err_set(err, EINVAL, "disk %s is %lld bytes, size= says %llu (resize it yourself, or "
			       "leave size= out)", p->path, (long long)st.st_size, (unsigned long long)p->size);
		goto fail;
	}
	if (!d->size || d->size % 512) {
		r = pm_err_set(err, EINVAL, "disk %s: size %llu bytes is not a positive multiple of 512%s",
			       p->path, (unsigned long long)d->size, d->size ? "" : " (an empty file needs size=)");
		goto fail;
	}
	if ((uint64_t)st.st_size != d->size && ftruncate(d->fd, (off_t)d->size)) {
		r = pm_err_set(err, errno, "disk %s: cannot set its size: %s", p->path, strerror(errno));
		goto fail;
	}
	d->nblocks = (d->size + bs - 1) / bs;
	r = pm_dirty_log_create(&d->log, d->nblocks, err);
	if (r)
		goto fail;
	if (p->populate) {
		r = populate(d, p->populate, p->seed, err);
		if (r)
			goto fail;
	}
	*out = d;
	return 0;
fail:
	if (created)
		unlink(p->path);
	pm_disk_close(d);
	return r;
}

void pm_disk_close(struct pm_disk *d)
{
	if (!d)
		return;
	if (d->dt)
		pm_dirty_close(d->dt);
	if (d->fd >= 0)
		close(d->fd);
	pm_dirty_log_destroy(d->log);
	free(d->path);
	free(d);
}

const char *pm_disk_path(const struct pm_disk *d) { return d->path; }
int pm_disk_fd(const struct pm_disk *d) { return d->fd; }
uint64_t pm_disk_size(const struct pm_disk *d) { return d->size; }
uint32_t pm_disk_block_size(const struct pm_disk *d) { return d->block_size; }

uint64_t pm_disk_allocated(const struct pm_disk *d)
{
	struct stat st;

	return fstat(d->fd, &st) ? 0 : (uint64_t)st.st_blocks * 512;
}

uint64_t pm_disk_bytes_written(const struct pm_disk *d)
{
	return atomic_load_explicit(&d->written, memory_order_relaxed);
}
