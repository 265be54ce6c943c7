// SPDX-License-Identifier: MIT
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *pmvm_usage(void)
{
	return "usage: pmvm run (--guest FILE | --kernel BZIMAGE [--initrd FILE] [--append CMDLINE])\n"
	       "                [--mem SIZE] [--mem-backend KIND] [--prealloc] [--vcpus N] [--control SOCKET]\n"
	       "                [--incoming ADDR[,ADDR...]] [--serial FILE]\n"
	       "                [--dump-at-pause FILE] [--dump-on-resume FILE]\n"
	       "                [--param KEY=VALUE]... [--kvm PATH] [--migration-nice N]\n"
	       "                [--disk FILE[,size=SIZE][,block=SIZE]]\n"
	       "                [--tls-creds DIR | --tls-psk FILE] [--tls-authz FILE] [--insecure] [--no-ktls]\n"
	       "  --mem SIZE        guest RAM, e.g. 64M, 1G (default 64M; 4M..63G)\n"
	       "  --mem-backend K   anon (default: private, transparent huge pages), memfd\n"
	       "                    (shared), hugetlb (reserved huge pages, vm.nr_hugepages)\n"
	       "  --prealloc        allocate all guest RAM at start (QEMU's prealloc=on): an\n"
	       "                    incoming VM then pays no first touch as pages arrive\n"
	       "  --vcpus N         vCPUs, 1..16 (default 1)\n"
	       "  --guest FILE      flat binary (loaded at 1 MiB) or static ELF64\n"
	       "  --kernel BZIMAGE  a Linux kernel (x86 boot protocol, 64-bit entry)\n"
	       "  --initrd FILE     its initramfs\n"
	       "  --append CMDLINE  added to the kernel command line \"" PMVM_LINUX_CMDLINE "\"\n"
	       "  --control SOCKET  JSON control socket (pmigrate migrate/status)\n"
	       "  --incoming ADDRS  wait for a migration on host:port[,host:port...]\n"
	       "  --tls-creds DIR   incoming: TLS 1.3, X.509 (QEMU's layout; docs/security.md)\n"
	       "  --tls-psk FILE    incoming: TLS 1.3, pre-shared keys (identity:hexkey lines)\n"
	       "  --tls-authz FILE  incoming, X.509: accept only the client DNs listed\n"
	       "  --insecure        incoming: allow plain TCP on a non-loopback address\n"
	       "  --no-ktls         keep TLS records in userspace\n"
	       "  --serial FILE     COM1 output (default: stdout)\n"
	       "  --param K=V       guest parameter (bootinfo block), V a number\n"
	       "  --kvm PATH        KVM device (default /dev/kvm)\n"
	       "  --migration-nice N  migration, control and device threads N nice levels below\n"
	       "                    the vCPUs (0..19, default 0), so a busy host starves them first\n"
	       "  --disk FILE,...   a virtio-blk disk over virtio-mmio: a raw image, created sparse\n"
	       "                    if missing (size= needed then); block= is the dirty-tracking unit\n";
}

int pmvm_parse_size(const char *s, uint64_t *out, struct pm_err *err)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	if (!s || !*s || !isdigit((unsigned char)*s))
		return pm_err_set(err, EINVAL, "bad size '%s': expected a number with an optional K/M/G/T suffix",
				  s ? s : "");
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno)
		return pm_err_set(err, EINVAL, "bad size '%s': out of range", s);
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default: break;
	}
	if (shift && (!strcmp(end, "iB") || !strcmp(end, "B")))
		end += strlen(end);
	if (*end)
		return pm_err_set(err, EINVAL, "bad size '%s': unexpected '%s'", s, end);
	if (shift && v > (UINT64_MAX >> shift))
		return pm_err_set(err, EINVAL, "bad size '%s': out of range", s);
	*out = (uint64_t)v << shift;
	return 0;
}

static int parse_uint(const char *s, uint64_t *out)
{
	char *end;

	if (!s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	*out = strtoull(s, &end, 0);
	return (errno || *end) ? -EINVAL : 0;
}

static int check_addr(const char *a, struct pm_err *err)
{
	const char *colon;
	uint64_t port;

	if (!*a)
		return pm_err_set(err, EINVAL, "--incoming: empty address");
	if (a[0] == '[') {
		const char *rb = strchr(a, ']');

		if (!rb || rb[1] != ':')
			return pm_err_set(err, EINVAL, "--incoming: bad address '%s' (expected [v6]:port)", a);
		colon = rb + 1;
	} else {
		colon = strrchr(a, ':');
		if (!colon || colon == a)
			return pm_err_set(err, EINVAL, "--incoming: bad address '%s' (expected host:port)", a);
	}
	if (parse_uint(colon + 1, &port) || port > 65535)
		return pm_err_set(err, EINVAL, "--incoming: bad port in '%s'", a);
	return 0;
}

static int split_incoming(struct pmvm_config *c, const char *arg, struct pm_err *err)
{
	char *save = NULL, *tok;

	free(c->incoming_buf);
	c->nlisten = 0;
	c->incoming_buf = strdup(arg);
	if (!c->incoming_buf)
		return pm_err_set(err, ENOMEM, "out of memory");
	if (!*arg)
		return pm_err_set(err, EINVAL, "--incoming: empty address list");
	for (tok = strtok_r(c->incoming_buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		int r = check_addr(tok, err);

		if (r)
			return r;
		if (c->nlisten == PMVM_MAX_LISTEN)
			return pm_err_set(err, EINVAL, "--incoming: more than %u addresses", PMVM_MAX_LISTEN);
		c->listen[c->nlisten++] = tok;
	}
	if (!c->nlisten)
		return pm_err_set(err, EINVAL, "--incoming: empty address list");
	return 0;
}

static int parse_disk(struct pmvm_config *c, const char *arg, struct pm_err *err)
{
	char buf[sizeof(c->disk_path) + 64], *save = NULL, *tok;

	if (c->disk_path[0])
		return pm_err_set(err, EINVAL, "--disk given twice (pmvm has one disk)");
	if (!*arg || strlen(arg) >= sizeof(buf))
		return pm_err_set(err, EINVAL, "--disk '%s': expected FILE[,size=SIZE][,block=SIZE]", arg);
	strcpy(buf, arg);
	tok = strtok_r(buf, ",", &save);
	if (!tok || strchr(tok, '='))
		return pm_err_set(err, EINVAL, "--disk '%s' must start with the image file", arg);
	snprintf(c->disk_path, sizeof(c->disk_path), "%s", tok);
	while ((tok = strtok_r(NULL, ",", &save))) {
		char *eq = strchr(tok, '=');
		uint64_t *to;
		int r;

		if (!eq)
			return pm_err_set(err, EINVAL, "--disk option '%s' is not key=value", tok);
		*eq++ = 0;
		if (!strcmp(tok, "size"))
			to = &c->disk_size;
		else if (!strcmp(tok, "block"))
			to = &c->disk_block;
		else
			return pm_err_set(err, EINVAL, "unknown --disk option '%s' (size, block)", tok);
		r = pmvm_parse_size(eq, to, err);
		if (r)
			return r;
	}
	if (c->disk_size % 512 || (c->disk_block && (c->disk_block < 4096 || c->disk_block > (1u << 20) ||
						     (c->disk_block & (c->disk_block - 1)))))
		return pm_err_set(err, EINVAL, "--disk: size must be a multiple of 512 and block a power of two "
				  "from 4K to 1M");
	return 0;
}

static int add_param(struct pmvm_config *c, const char *arg, struct pm_err *err)
{
	const char *eq = strchr(arg, '=');
	size_t klen;
	uint64_t v;

	if (!eq || eq == arg)
		return pm_err_set(err, EINVAL, "--param '%s': expected KEY=VALUE", arg);
	klen = (size_t)(eq - arg);
	if (klen >= PMVM_PARAM_KEY_LEN)
		return pm_err_set(err, EINVAL, "--param '%s': key longer than %u characters",
				  arg, PMVM_PARAM_KEY_LEN - 1);
	if (parse_uint(eq + 1, &v))
		return pm_err_set(err, EINVAL, "--param '%s': value is not a number", arg);
	for (unsigned i = 0; i < c->nparams; i++)
		if (strlen(c->params[i].key) == klen && !memcmp(c->params[i].key, arg, klen)) {
			c->params[i].value = v;
			return 0;
		}
	if (c->nparams == PMVM_MAX_PARAMS)
		return pm_err_set(err, EINVAL, "more than %u --param options", PMVM_MAX_PARAMS);
	memset(c->params[c->nparams].key, 0, PMVM_PARAM_KEY_LEN);
	memcpy(c->params[c->nparams].key, arg, klen);
	c->params[c->nparams].value = v;
	c->nparams++;
	return 0;
}

int pmvm_parse_args(int argc, char *const argv[], struct pmvm_config *c, struct pm_err *err)
{
	int r;

	memset(c, 0, sizeof(*c));
	c->mem_bytes = 64ull << 20;
	c->vcpus = 1;
	c->kvm_path = "/dev/kvm";
	if (argc < 2)
		return pm_err_set(err, EINVAL, "missing command (expected 'run')");
	if (strcmp(argv[1], "run"))
		return pm_err_set(err, EINVAL, "unknown command '%s' (expected 'run')", argv[1]);

	for (int i = 2; i < argc; i++) {
		const char *opt = argv[i], *val = NULL, *eq;
		char name[32];

		if (strncmp(opt, "--", 2))
			return pm_err_set(err, EINVAL, "unexpected argument '%s'", opt);
		eq = strchr(opt, '=');
		if (eq) {
			if ((size_t)(eq - opt) >= sizeof(name))
				return pm_err_set(err, EINVAL, "unknown option '%s'", opt);
			memcpy(name, opt, (size_t)(eq - opt));
			name[eq - opt] = 0;
			val = eq + 1;
		} else {
			snprintf(name, sizeof(name), "%s", opt);
		}
		if (!strcmp(name, "--help"))
			return pm_err_set(err, EINVAL, "help requested");
		if (!strcmp(name, "--insecure") || !strcmp(name, "--no-ktls") || !strcmp(name, "--prealloc")) {
			if (val)
				return pm_err_set(err, EINVAL, "%s takes no value", name);
			if (name[2] == 'i')
				c->insecure = true;
			else if (name[2] == 'p')
				c->prealloc = true;
			else
				c->tls.no_ktls = true;
			continue;
		}
#define NEED_VAL()                                                                        \
	do {                                                                              \
		if (!val) {                                                               \
			if (i + 1 >= argc)                                                \
				return pm_err_set(err, EINVAL, "%s needs a value", name); \
			val = argv[++i];                                                  \
		}                                                                         \
	} while (0)
		NEED_VAL();
		if (!strcmp(name, "--mem")) {
			r = pmvm_parse_size(val, &c->mem_bytes, err);
			if (r)
				return r;
		} else if (!strcmp(name, "--mem-backend")) {
			if (pm_mem_kind_parse(val, &c->mem_kind))
				return pm_err_set(err, EINVAL, "--mem-backend '%s': expected anon, memfd or hugetlb", val);
		} else if (!strcmp(name, "--vcpus")) {
			uint64_t n;

			if (parse_uint(val, &n) || n < 1 || n > PMVM_MAX_VCPUS)
				return pm_err_set(err, EINVAL, "--vcpus '%s': expected 1..%u", val, PMVM_MAX_VCPUS);
			c->vcpus = (unsigned)n;
		} else if (!strcmp(name, "--guest")) {
			c->guest = val;
		} else if (!strcmp(name, "--kernel")) {
			c->kernel = val;
		} else if (!strcmp(name, "--initrd")) {
			c->initrd = val;
		} else if (!strcmp(name, "--append")) {
			c->append = val;
		} else if (!strcmp(name, "--control")) {
			c->control = val;
		} else if (!strcmp(name, "--serial")) {
			c->serial = val;
		} else if (!strcmp(name, "--dump-at-pause")) {
			c->dump_at_pause = val;
		} else if (!strcmp(name, "--dump-on-resume")) {
			c->dump_on_resume = val;
		} else if (!strcmp(name, "--migration-nice")) {
			uint64_t n;

			if (parse_uint(val, &n) || n > 19)
				return pm_err_set(err, EINVAL, "--migration-nice '%s': expected 0..19", val);
			c->migration_nice = (unsigned)n;
		} else if (!strcmp(name, "--kvm")) {
			c->kvm_path = val;
		} else if (!strcmp(name, "--incoming")) {
			r = split_incoming(c, val, err);
			if (r)
				return r;
		} else if (!strcmp(name, "--disk")) {
			r = parse_disk(c, val, err);
			if (r)
				return r;
		} else if (!strcmp(name, "--tls-creds")) {
			c->tls.creds_dir = val;
		} else if (!strcmp(name, "--tls-psk")) {
			c->tls.psk_file = val;
		} else if (!strcmp(name, "--tls-authz")) {
			c->tls.authz_file = val;
		} else if (!strcmp(name, "--param")) {
			r = add_param(c, val, err);
			if (r)
				return r;
		} else {
			return pm_err_set(err, EINVAL, "unknown option '%s'", name);
		}
#undef NEED_VAL
	}
	if (!c->guest && !c->kernel)
		return pm_err_set(err, EINVAL, "--guest FILE or --kernel BZIMAGE is required");
	if (c->guest && c->kernel)
		return pm_err_set(err, EINVAL, "--guest and --kernel exclude each other");
	if (!c->kernel && (c->initrd || c->append))
		return pm_err_set(err, EINVAL, "%s needs --kernel", c->initrd ? "--initrd" : "--append");
	if (c->kernel && c->nparams)
		return pm_err_set(err, EINVAL, "--param is for freestanding guests; pass Linux settings with --append");
	if (c->mem_bytes % 4096)
		return pm_err_set(err, EINVAL, "--mem %llu is not a multiple of 4 KiB",
				  (unsigned long long)c->mem_bytes);
	if (c->mem_bytes < PMVM_MIN_MEM || c->mem_bytes > PMVM_MAX_MEM)
		return pm_err_set(err, EINVAL, "--mem %llu MiB is out of range (%llu MiB..%llu GiB)",
				  (unsigned long long)(c->mem_bytes >> 20),
				  (unsigned long long)(PMVM_MIN_MEM >> 20),
				  (unsigned long long)(PMVM_MAX_MEM >> 30));
	if (c->kernel && c->mem_bytes < PMVM_MIN_LINUX_MEM)
		return pm_err_set(err, EINVAL, "--mem %llu MiB is too small for Linux (at least %llu MiB)",
				  (unsigned long long)(c->mem_bytes >> 20),
				  (unsigned long long)(PMVM_MIN_LINUX_MEM >> 20));
	if (c->dump_on_resume && !c->nlisten)
		return pm_err_set(err, EINVAL, "--dump-on-resume needs --incoming");
	if ((c->tls.creds_dir || c->tls.psk_file || c->tls.authz_file || c->insecure) && !c->nlisten)
		return pm_err_set(err, EINVAL, "--tls-creds, --tls-psk, --tls-authz and --insecure need --incoming "
				  "(a source takes them with 'pmigrate migrate')");
	return 0;
}

void pmvm_config_free(struct pmvm_config *c)
{
	free(c->incoming_buf);
	c->incoming_buf = NULL;
	c->nlisten = 0;
}
