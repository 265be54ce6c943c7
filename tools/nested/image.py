# SPDX-License-Identifier: MIT
"""L1's initramfs: host files at their own paths (with the symlinks on the
way, so a merged-/usr host stays merged), the shared libraries ldd lists for
every ELF among them, generated files, all written as one newc cpio archive
(uncompressed: L1 runs under TCG, where unpacking gzip costs seconds)."""
import hashlib
import os
import shutil
import stat
import subprocess

# Directories of a Meson build that hold no runnable file.
SKIP_DIRS = ("meson-private", "meson-logs", "meson-info", "meson-uninstalled",
             "__pycache__", ".git", "nested-cache")


class ImageError(Exception):
    pass


def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def ldd(path):
    """The absolute paths of the libraries (and loader) a dynamic ELF needs;
    [] for a static one."""
    r = subprocess.run(["ldd", path], capture_output=True, text=True)
    libs = []
    for line in r.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            raise ImageError(f"{path}: ldd: {line}")
        if "=>" in line:
            target = line.split("=>", 1)[1].split("(")[0].strip()
        else:
            target = line.split("(")[0].strip()
        if target.startswith("/"):
            libs.append(target)
    return libs


class Image:
    """Entries by path inside L1 (absolute, normalized):
       ("file", host_path, mode) | ("data", bytes, mode) | ("link", target)
       | ("dir", mode) | ("chr", mode, major, minor)."""

    def __init__(self):
        self.entries = {}
        self._ldd_done = set()

    def add_data(self, path, data, mode=0o644):
        self.entries[path] = ("data", data, mode)

    def add_dir(self, path, mode=0o755):
        self.entries.setdefault(path, ("dir", mode))

    def add_node(self, path, mode, major, minor):
        self.entries[path] = ("chr", mode, major, minor)

    def add_link(self, path, target, replace=True):
        if replace or path not in self.entries:
            self.entries[path] = ("link", target)

    def _resolve(self, path):
        """Follows symlinks component by component, recording each link met,
        and returns the path with none left (the last component may be
        missing on the host)."""
        for _ in range(40):
            parts = [p for p in path.split("/") if p]
            cur = "/"
            for i, comp in enumerate(parts):
                nxt = os.path.join(cur, comp)
                if os.path.islink(nxt):
                    target = os.readlink(nxt)
                    self.entries[nxt] = ("link", target)
                    base = target if target.startswith("/") else os.path.join(cur, target)
                    path = os.path.normpath(os.path.join(base, *parts[i + 1:]))
                    break
                cur = nxt
            else:
                return cur
        raise ImageError(f"{path}: too many levels of symbolic links")

    def resolve_parent(self, path):
        """path with its directory resolved (the file itself need not exist)."""
        return os.path.join(self._resolve(os.path.dirname(path)), os.path.basename(path))

    def add_host(self, path, libs=True, skip=()):
        """A host file or directory (recursively, but for the names in
        skip), at the same path in L1; ELF executables bring their
        libraries."""
        path = os.path.normpath(os.path.abspath(path))
        real = self._resolve(path)
        try:
            st = os.stat(real)
        except OSError as e:
            raise ImageError(f"cannot include {path}: {e.strerror}")
        if stat.S_ISDIR(st.st_mode):
            self.add_dir(real, stat.S_IMODE(st.st_mode))
            for name in sorted(os.listdir(real)):
                if name in SKIP_DIRS or name in skip or name.endswith((".p", ".o", ".a")):
                    continue
                self.add_host(os.path.join(real, name), libs, skip)
            return
        if not stat.S_ISREG(st.st_mode):
            return  # sockets, fifos: nothing to carry
        self.entries[real] = ("file", real, stat.S_IMODE(st.st_mode))
        if libs and real not in self._ldd_done and st.st_mode & 0o111 and is_elf(real):
            self._ldd_done.add(real)
            for lib in ldd(real):
                self.add_host(lib, libs=False)

    def interpreters(self):
        """The programs the scripts among the files name on their #! line
        ("env X" resolved on the host's PATH)."""
        found = set()
        for e in list(self.entries.values()):
            if e[0] != "file" or not e[2] & 0o111:
                continue
            try:
                with open(e[1], "rb") as f:
                    first = f.readline(256)
            except OSError:
                continue
            if not first.startswith(b"#!"):
                continue
            words = first[2:].decode(errors="replace").split()
            if words and os.path.basename(words[0]) == "env" and len(words) > 1:
                words = [shutil.which(words[1], path="/usr/local/bin:/usr/bin:/bin") or words[1]]
            if words and words[0].startswith("/"):
                found.add(words[0])
        return found

    def manifest(self):
        """What decides the archive's bytes: paths, and for host files their
        size and modification time (so a rebuild changes the key)."""
        h = hashlib.sha256()
        for path in sorted(self.entries):
            e = self.entries[path]
            if e[0] == "file":
                st = os.stat(e[1])
                h.update(f"F {path} {e[1]} {e[2]:o} {st.st_size} {st.st_mtime_ns}\n".encode())
            elif e[0] == "data":
                h.update(f"D {path} {e[2]:o} {hashlib.sha256(e[1]).hexdigest()}\n".encode())
            else:
                h.update(f"{path} {e!r}\n".encode())
        return h.hexdigest()

    def _all_dirs(self):
        """Every parent directory not itself an entry (never through a link:
        add_host stores files at their resolved paths)."""
        dirs = {}
        for path in self.entries:
            d = os.path.dirname(path)
            while d != "/" and d not in self.entries and d not in dirs:
                dirs[d] = ("dir", 0o755)
                d = os.path.dirname(d)
        return dirs

    def write_cpio(self, out):
        """newc format; every file owned by root, mtime 0."""
        entries = dict(self._all_dirs())
        entries.update(self.entries)
        for ino, path in enumerate(sorted(entries), start=1):
            e = entries[path]
            kind = e[0]
            rdev = (0, 0)
            if kind == "dir":
                mode, data, size = stat.S_IFDIR | e[1], None, 0
            elif kind == "link":
                data = e[1].encode()
                mode, size = stat.S_IFLNK | 0o777, len(data)
            elif kind == "chr":
                mode, data, size, rdev = stat.S_IFCHR | e[1], None, 0, (e[2], e[3])
            elif kind == "data":
                mode, data, size = stat.S_IFREG | e[2], e[1], len(e[1])
            else:
                mode, data, size = stat.S_IFREG | e[2], None, os.stat(e[1]).st_size
            _header(out, path.lstrip("/"), ino, mode, size, rdev)
            if kind == "file":
                copied = 0
                with open(e[1], "rb") as f:
                    while True:
                        chunk = f.read(1 << 20)
                        if not chunk:
                            break
                        copied += len(chunk)
                        out.write(chunk)
                if copied != size:
                    raise ImageError(f"{e[1]} changed while being archived")
            elif data:
                out.write(data)
            _pad(out, size)
        _header(out, "TRAILER!!!", 0, 0, 0, (0, 0))


def _header(out, name, ino, mode, size, rdev):
    namez = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, size, 0, 0, rdev[0], rdev[1], len(namez), 0)
    out.write(b"070701" + b"".join(b"%08x" % v for v in fields) + namez)
    _pad(out, 110 + len(namez))


def _pad(out, n):
    if n % 4:
        out.write(b"\0" * (4 - n % 4))
