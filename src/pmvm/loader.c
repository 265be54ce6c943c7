// SPDX-License-Identifier: MIT
#include "loader.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bootinfo.h"

int pmvm_read_file(const char *path, uint8_t **buf, size_t *len, size_t max,
		   struct pm_err *err)
{
	struct stat st;
	uint8_t *b;
	size_t got = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return pm_err_set(err, errno, "cannot open %s: %m", path);
	if (fstat(fd, &st) < 0) {
		int e = errno;

		close(fd);
		return pm_err_set(err, e, "cannot stat %s: %s", path, strerror(e));
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return pm_err_set(err, EINVAL, "%s is not a regular file", path);
	}
	if ((uint64_t)st.st_size > max) {
		close(fd);
		return pm_err_set(err, EFBIG, "%s is %lld bytes, more than %zu", path,
				  (long long)st.st_size, max);
	}
	b = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (!b) {
		close(fd);
		return pm_err_set(err, ENOMEM, "out of memory reading %s", path);
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, b + got, (size_t)st.st_size - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;

			free(b);
			close(fd);
			return pm_err_set(err, e, "cannot read %s", path);
		}
		got += (size_t)n;
	}
	close(fd);
	*buf = b;
	*len = got;
	return 0;
}

static int load_flat(const uint8_t *file, size_t len, uint8_t *mem, uint64_t mem_len,
		     struct pmvm_image *out, struct pm_err *err)
{
	if (len == 0)
		return pm_err_set(err, EINVAL, "guest image is empty");
	if (PMVM_IMAGE_GPA + len > mem_len)
		return pm_err_set(err, ENOSPC, "flat image of %zu bytes does not fit at 0x%llx in %llu bytes of memory",
				  len, (unsigned long long)PMVM_IMAGE_GPA, (unsigned long long)mem_len);
	out->elf = false;
	out->entry = PMVM_IMAGE_GPA;
	out->load_start = PMVM_IMAGE_GPA;
	out->load_end = PMVM_IMAGE_GPA + len;
	if (mem)
		memcpy(mem + PMVM_IMAGE_GPA, file, len);
	return 0;
}

static int check_elf(const uint8_t *file, size_t len, uint64_t mem_len,
		     struct pmvm_image *out, struct pm_err *err)
{
	Elf64_Ehdr eh;
	bool entry_ok = false;
	unsigned nload = 0;

	if (len < sizeof(eh))
		return pm_err_set(err, EINVAL, "ELF image truncated: %zu bytes, header needs %zu",
				  len, sizeof(eh));
	memcpy(&eh, file, sizeof(eh));
	if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB)
		return pm_err_set(err, EINVAL, "ELF image is not 64-bit little-endian");
	if (eh.e_machine != EM_X86_64)
		return pm_err_set(err, EINVAL, "ELF image is for machine %u, not x86-64", eh.e_machine);
	if (eh.e_type != ET_EXEC)
		return pm_err_set(err, EINVAL, "ELF image is not a static executable (type %u)", eh.e_type);
	if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 ||
	    eh.e_phoff > len || (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr) > len - eh.e_phoff)
		return pm_err_set(err, EINVAL, "ELF program headers out of bounds");

	out->elf = true;
	out->entry = eh.e_entry;
	out->load_start = UINT64_MAX;
	out->load_end = 0;
	for (unsigned i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;

		memcpy(&ph, file + eh.e_phoff + (uint64_t)i * sizeof(ph), sizeof(ph));
		if (ph.p_type != PT_LOAD || ph.p_memsz == 0)
			continue;
		if (ph.p_filesz > ph.p_memsz)
			return pm_err_set(err, EINVAL, "ELF segment %u: file size exceeds memory size", i);
		if (ph.p_offset > len || ph.p_filesz > len - ph.p_offset)
			return pm_err_set(err, EINVAL, "ELF segment %u lies outside the file", i);
		if (ph.p_paddr < PMVM_IMAGE_GPA || ph.p_memsz > mem_len ||
		    ph.p_paddr > mem_len - ph.p_memsz)
			return pm_err_set(err, ENOSPC, "ELF segment %u at 0x%llx+0x%llx is outside guest RAM [0x%llx, 0x%llx)",
					  i, (unsigned long long)ph.p_paddr, (unsigned long long)ph.p_memsz,
					  (unsigned long long)PMVM_IMAGE_GPA, (unsigned long long)mem_len);
		if (ph.p_paddr < out->load_start)
			out->load_start = ph.p_paddr;
		if (ph.p_paddr + ph.p_memsz > out->load_end)
			out->load_end = ph.p_paddr + ph.p_memsz;
		if ((ph.p_flags & PF_X) && eh.e_entry >= ph.p_paddr && eh.e_entry < ph.p_paddr + ph.p_memsz)
			entry_ok = true;
		nload++;
	}
	if (nload == 0)
		return pm_err_set(err, EINVAL, "ELF image has no loadable segment");
	if (!entry_ok)
		return pm_err_set(err, EINVAL, "ELF entry point 0x%llx is not in an executable segment",
				  (unsigned long long)eh.e_entry);
	return 0;
}

int pmvm_image_load(const uint8_t *file, size_t len, uint8_t *mem, uint64_t mem_len,
		    struct pmvm_image *out, struct pm_err *err)
{
	struct pmvm_image img;
	int r;

	memset(&img, 0, sizeof(img));
	if (len >= SELFMAG && !memcmp(file, ELFMAG, SELFMAG)) {
		Elf64_Ehdr eh;

		r = check_elf(file, len, mem_len, &img, err);
		if (r)
			return r;
		if (mem) {
			memcpy(&eh, file, sizeof(eh));
			for (unsigned i = 0; i < eh.e_phnum; i++) {
				Elf64_Phdr ph;

				memcpy(&ph, file + eh.e_phoff + (uint64_t)i * sizeof(ph), sizeof(ph));
				if (ph.p_type != PT_LOAD || ph.p_memsz == 0)
					continue;
				memcpy(mem + ph.p_paddr, file + ph.p_offset, ph.p_filesz);
				memset(mem + ph.p_paddr + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
			}
		}
	} else {
		r = load_flat(file, len, mem, mem_len, &img, err);
		if (r)
			return r;
	}
	*out = img;
	return 0;
}
