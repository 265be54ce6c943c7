# SPDX-License-Identifier: MIT
"""What L1 needs from the host: a kernel with kvm_amd among its modules (and,
to boot faster, that kernel decompressed), the modules themselves, a static
busybox, QEMU and its firmware.  Each finder raises NotPossible, saying what
is missing, rather than failing later inside L1."""
import glob
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib

QEMU_FIRMWARE = ["bios-256k.bin", "kvmvapic.bin", "linuxboot_dma.bin"]


class NotPossible(Exception):
    """Nested runs cannot work on this machine (say why)."""


def log(msg):
    print(f"nested: {msg}", file=sys.stderr, flush=True)


def kernel_version(path):
    """The release string a bzImage carries (boot protocol: header "HdrS"
    at 0x202, kernel_version pointer at 0x20e)."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x8000)
    except OSError as e:
        raise NotPossible(f"{path}: {e.strerror}" + (" (run as root)" if e.errno == 13 else ""))
    if head[0x202:0x206] != b"HdrS":
        raise NotPossible(f"{path}: not a bzImage")
    off = int.from_bytes(head[0x20e:0x210], "little") + 0x200
    return head[off:head.index(b"\0", off)].decode(errors="replace").split()[0]


def find_kernel(arg):
    """(vmlinuz, version): the given kernel, or the newest one in /boot that
    has kvm_amd among its modules."""
    cands = [arg] if arg else sorted(glob.glob("/boot/vmlinuz-*"), key=_version_key, reverse=True)
    for k in cands:
        ver = kernel_version(k)
        if glob.glob(f"/lib/modules/{ver}/kernel/arch/x86/kvm/kvm-amd.ko*"):
            return k, ver
        if arg:
            raise NotPossible(f"{k}: no kvm-amd module in /lib/modules/{ver}")
    raise NotPossible("no kernel with kvm-amd in /boot and /lib/modules "
                      "(apt-get install linux-image-amd64)")


def _version_key(path):
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", path)]


def module_files(ver, names):
    """The .ko files of names and their dependencies, in load order."""
    base = f"/lib/modules/{ver}"
    deps = {}
    try:
        with open(f"{base}/modules.dep") as f:
            for line in f:
                mod, _, rest = line.partition(":")
                deps[mod] = rest.split()
    except OSError as e:
        raise NotPossible(f"{base}/modules.dep: {e.strerror}")
    by_name = {re.sub(r"\.ko(\.\w+)?$", "", os.path.basename(m)).replace("_", "-"): m for m in deps}
    order = []

    def visit(rel):
        if rel in order:
            return
        for d in reversed(deps.get(rel, [])):
            visit(d)
        order.append(rel)

    for n in names:
        rel = by_name.get(n.replace("_", "-"))
        if not rel:
            raise NotPossible(f"module {n} not found for kernel {ver}")
        visit(rel)
    return [f"{base}/{rel}" for rel in order]


def module_bytes(path):
    if path.endswith(".ko"):
        with open(path, "rb") as f:
            return f.read()
    tool = {".xz": ["xz", "-dc"], ".zst": ["zstd", "-dcq"], ".gz": ["gzip", "-dc"]}
    for ext, cmd in tool.items():
        if path.endswith(ext):
            r = subprocess.run(cmd + [path], capture_output=True)
            if r.returncode:
                raise NotPossible(f"cannot decompress {path}: {r.stderr.decode().strip()}")
            return r.stdout
    raise NotPossible(f"{path}: unknown module compression")


def is_static(path):
    """True for an ELF without a program interpreter (PT_INTERP)."""
    try:
        with open(path, "rb") as f:
            h = f.read(64)
            if h[:4] != b"\x7fELF" or h[4] != 2:  # 64-bit only
                return False
            phoff = int.from_bytes(h[32:40], "little")
            phentsize = int.from_bytes(h[54:56], "little")
            phnum = int.from_bytes(h[56:58], "little")
            f.seek(phoff)
            ph = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(int.from_bytes(ph[i:i + 4], "little") != 3 for i in range(0, len(ph), phentsize))


def find_busybox(cache):
    """A static busybox: the host's if it is one, else busybox-static's,
    downloaded once into the cache (it conflicts with an installed busybox,
    so it is unpacked, not installed)."""
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(p) and is_static(p):
            return p
    mine = os.path.join(cache, "busybox-static", "bin", "busybox")
    if os.path.exists(mine):
        return mine
    log("no static busybox on the host: fetching Debian's busybox-static")
    tmp = tempfile.mkdtemp(dir=cache)
    try:
        r = subprocess.run(["apt-get", "download", "busybox-static"], cwd=tmp,
                           capture_output=True, text=True)
        debs = glob.glob(f"{tmp}/busybox-static_*.deb")
        if r.returncode or not debs:
            raise NotPossible("no static busybox (install busybox-static, or let "
                              f"'apt-get download busybox-static' work): {r.stderr.strip()}")
        subprocess.run(["dpkg-deb", "-x", debs[0], f"{tmp}/x"], check=True)
        found = glob.glob(f"{tmp}/x/**/bin/busybox", recursive=True)
        if not found or not is_static(found[0]):
            raise NotPossible(f"{debs[0]} holds no static bin/busybox")
        os.makedirs(os.path.dirname(mine), exist_ok=True)
        shutil.move(found[0], mine)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return mine


def qemu_binary():
    q = shutil.which("qemu-system-x86_64")
    if not q:
        raise NotPossible("no qemu-system-x86_64 (apt-get install qemu-system-x86)")
    return q


def qemu_firmware(qemu):
    """The firmware files QEMU needs with -nodefaults, where this QEMU looks
    for them (Debian keeps SeaBIOS apart from the rest)."""
    dirs = ["/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu",
            os.path.normpath(os.path.join(os.path.dirname(qemu), "../share/qemu"))]
    found = []
    for f in QEMU_FIRMWARE:
        p = next((os.path.join(d, f) for d in dirs if os.path.exists(os.path.join(d, f))), None)
        if not p:
            raise NotPossible(f"QEMU firmware {f} not found in {', '.join(dirs)}")
        found.append(p)
    return found




def _has_pvh_note(elf):
    """Whether an ELF vmlinux carries XEN_ELFNOTE_PHYS32_ENTRY (18), which
    QEMU needs to boot it directly (PVH)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    u16 = lambda o: int.from_bytes(elf[o:o + 2], "little")  # noqa: E731
    u32 = lambda o: int.from_bytes(elf[o:o + 4], "little")  # noqa: E731
    u64 = lambda o: int.from_bytes(elf[o:o + 8], "little")  # noqa: E731
    phoff, phentsize, phnum = u64(32), u16(54), u16(56)
    for i in range(phnum):
        ph = phoff + i * phentsize
        if u32(ph) != 4:  # PT_NOTE
            continue
        off, end = u64(ph + 8), u64(ph + 8) + u64(ph + 32)
        while off + 12 <= end:
            namesz, descsz, typ = u32(off), u32(off + 4), u32(off + 8)
            name = elf[off + 12:off + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and typ == 18:
                return True
            off += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _decompress(data):
    """The vmlinux inside a bzImage's payload (xz or gzip, as Debian builds
    them), or None."""
    i = data.find(b"\xfd7zXZ\x00")
    if i >= 0:
        try:
            return lzma.LZMADecompressor().decompress(data[i:])
        except lzma.LZMAError:
            pass
    i = data.find(b"\x1f\x8b\x08\x00")
    if i >= 0:
        try:
            return zlib.decompressobj(31).decompress(data[i:])
        except zlib.error:
            pass
    return None


def fast_kernel(bzimage, ver, cache):
    """The kernel QEMU boots fastest: the bzImage decompressed on the host
    into an ELF vmlinux that QEMU enters by PVH, so TCG does not spend
    seconds decompressing it; cached.  The bzImage itself when that cannot
    be done."""
    st = os.stat(bzimage)
    out = os.path.join(cache, f"vmlinux-{ver}-{st.st_size}-{st.st_mtime_ns}")
    if os.path.exists(out):
        return out
    with open(bzimage, "rb") as f:
        elf = _decompress(f.read())
    if not elf or not _has_pvh_note(elf):
        return bzimage
    for stale in glob.glob(os.path.join(cache, f"vmlinux-{ver}-*")):
        os.unlink(stale)
    fd, tmp = tempfile.mkstemp(dir=cache)
    with os.fdopen(fd, "wb") as f:
        f.write(elf)
    os.chmod(tmp, 0o644)
    os.rename(tmp, out)
    return out
