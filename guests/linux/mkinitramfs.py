#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes the Linux guest's initramfs: a newc cpio archive holding /init
(the project's static workload) and the few directories and device nodes
a kernel expects, all owned by root.  No root privileges needed, no
external cpio.  Usage: mkinitramfs.py OUTPUT INIT [PATH_IN_ARCHIVE=FILE...]"""
import os
import stat
import sys


def header(out, name, ino, mode, size, rdev=(0, 0)):
    namez = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, size, 0, 0, rdev[0], rdev[1], len(namez), 0)
    out.write(b"070701" + b"".join(b"%08x" % v for v in fields) + namez)
    pad(out, 110 + len(namez))


def pad(out, n):
    if n % 4:
        out.write(b"\0" * (4 - n % 4))


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    files = {"init": argv[2]}
    for spec in argv[3:]:
        path, _, src = spec.partition("=")
        if not src:
            sys.exit(f"mkinitramfs: bad argument {spec!r}: expected PATH=FILE")
        files[path.strip("/")] = src
    entries = [("dev", stat.S_IFDIR | 0o755, None), ("proc", stat.S_IFDIR | 0o755, None),
               ("sys", stat.S_IFDIR | 0o755, None), ("root", stat.S_IFDIR | 0o700, None),
               ("tmp", stat.S_IFDIR | 0o1777, None),
               ("dev/console", stat.S_IFCHR | 0o600, (5, 1)), ("dev/null", stat.S_IFCHR | 0o666, (1, 3)),
               ("dev/port", stat.S_IFCHR | 0o600, (1, 4))]
    tmp = argv[1] + ".tmp"
    with open(tmp, "wb") as out:
        ino = 1
        for name, mode, rdev in entries:
            header(out, name, ino, mode, 0, rdev or (0, 0))
            ino += 1
        for name, src in sorted(files.items()):
            data = open(src, "rb").read()
            header(out, name, ino, stat.S_IFREG | 0o755, len(data))
            out.write(data)
            pad(out, len(data))
            ino += 1
        header(out, "TRAILER!!!", 0, 0, 0)
    os.replace(tmp, argv[1])


if __name__ == "__main__":
    main(sys.argv)
