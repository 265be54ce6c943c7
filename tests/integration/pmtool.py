#!/usr/bin/env python3
"""Helpers for the integration tests (standard library only).

  pmtool.py get PATH                 read JSON on stdin, print the value at a
                                     dotted PATH ("heartbeat.count",
                                     "incoming" prints a list comma-joined)
  pmtool.py ctl SOCKET JSON          send one control command, print the reply
  pmtool.py free-port [HOST]         print a TCP port nothing listens on
  pmtool.py speak HOST:PORT CASE MEM send a hand-made (bad) stream to a
                                     destination of MEM bytes; print what the
                                     destination answered (ERROR text)
  pmtool.py drip HOST:PORT N SECONDS [FIRSTBYTE]
                                     N slow clients: a first byte (16: TLS),
                                     then a byte a second
  pmtool.py proxy PORTFILE TARGET N [cut|stall]
                                     TCP proxy on 127.0.0.1:0 (port written to
                                     PORTFILE) for one connection to TARGET;
                                     once N bytes went from the client to
                                     TARGET it resets both sides (cut) or
                                     hangs the channel (stall)
"""
import json
import os
import socket
import struct
import sys
import threading
import time

MAGIC = 0x47494D50
HELLO, HELLO_ACK, LAYOUT, LAYOUT_ACK, PAGES, ROUND_END, ROUND_ACK, STATE, END, DONE, ERROR = range(1, 12)
PAGE = 4096
CHUNK = 512
BLOCKS = 20
FEAT_DISKS, FEAT_SHARED = 1 << 8, 1 << 9
DISK_BLOCK = 65536


def get(path):
    v = json.load(sys.stdin)
    for k in path.split("."):
        if isinstance(v, list):
            v = v[int(k)]
        elif isinstance(v, dict) and k in v:
            v = v[k]
        else:
            print("")
            return 1
    if isinstance(v, list):
        print(",".join(str(x) for x in v))
    elif isinstance(v, bool):
        print("true" if v else "false")
    else:
        print(v)
    return 0


def ctl(sock, cmd):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock)
    s.sendall(cmd.encode() + b"\n")
    buf = b""
    while b"\n" not in buf:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    s.close()
    print(buf.decode(errors="replace").split("\n")[0])
    return 0


def free_port(host="127.0.0.1"):
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    print(port)
    return 0


def frame(ftype, body):
    return struct.pack("<II", ftype, len(body)) + body


def hello(channel=0, nch=1, magic=MAGIC, version=1, features=0, chunk=CHUNK, page=PAGE, reserved=0):
    return struct.pack("<IHHHHI16sII", magic, version, channel, nch, reserved, features,
                       b"integration-test", chunk, page)


def layout(npages, nregions=1):
    b = struct.pack("<II", nregions, 0)
    for i in range(nregions):
        b += struct.pack("<IIQQ", i, 0, 0, npages)
    return b


def layout_disk(npages, disk_bytes, block=DISK_BLOCK):
    return (struct.pack("<IIIIQQ", 1, 1, 0, 0, 0, npages) +
            struct.pack("<IIQ16sQ", 0, block, disk_bytes, b"\0" * 16, 0))


def disk_handshake(s, npages, disk_bytes, features=FEAT_DISKS):
    s.sendall(frame(HELLO, hello(features=features)))
    expect(s, HELLO_ACK)
    s.sendall(frame(LAYOUT, layout_disk(npages, disk_bytes)))
    expect(s, LAYOUT_ACK)


def all_memory_zero(s, npages):
    """Every page as zero runs; returns (frames, pages)."""
    n = 0
    for first in range(0, npages, CHUNK):
        k = min(CHUNK, npages - first)
        s.sendall(frame(PAGES, pages_hdr(0, k, first, 1, 1, 0)))
        n += 1
    return n, npages


def pages_hdr(region, npages, first, rnd, enc, payload_len):
    return struct.pack("<IIQIHHII", region, npages, first, rnd, enc, 0, payload_len, 0)


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise EOFError("connection closed after %d of %d bytes" % (len(b), n))
        b += d
    return b


def read_frame(s):
    t, n = struct.unpack("<II", recv_exact(s, 8))
    return t, recv_exact(s, n) if n else b""


def expect(s, want):
    t, body = read_frame(s)
    if t == ERROR:
        raise RuntimeError("destination refused: " + body[8:].decode(errors="replace"))
    if t != want:
        raise RuntimeError("expected frame %d, got %d" % (want, t))
    return body


def handshake(s, npages):
    s.sendall(frame(HELLO, hello()))
    expect(s, HELLO_ACK)
    s.sendall(frame(LAYOUT, layout(npages)))
    expect(s, LAYOUT_ACK)


def speak(addr, case, mem):
    host, port = addr.rsplit(":", 1)
    npages = int(mem) // PAGE
    s = socket.create_connection((host, int(port)), timeout=20)
    try:
        if case == "garbage":
            s.sendall(os.urandom(100))
        elif case == "http":
            s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        elif case == "truncated-hello":
            s.sendall(frame(HELLO, hello())[:8 + 17])
            s.shutdown(socket.SHUT_WR)
        elif case == "oversized-hello":
            s.sendall(struct.pack("<II", HELLO, 1 << 30) + hello())
        elif case == "bad-magic":
            s.sendall(frame(HELLO, hello(magic=0x12345678)))
        elif case == "bad-version":
            s.sendall(frame(HELLO, hello(version=7)))
        elif case == "bad-page-size":
            s.sendall(frame(HELLO, hello(page=65536)))
        elif case == "bad-layout":
            s.sendall(frame(HELLO, hello()))
            expect(s, HELLO_ACK)
            s.sendall(frame(LAYOUT, layout(npages * 2)))
        elif case == "pages-out-of-range":
            handshake(s, npages)
            s.sendall(frame(PAGES, pages_hdr(0, 2, npages - 1, 1, 1, 0)))
        elif case == "pages-bad-region":
            handshake(s, npages)
            s.sendall(frame(PAGES, pages_hdr(3, 1, 0, 1, 1, 0)))
        elif case == "pages-oversized":
            handshake(s, npages)
            s.sendall(struct.pack("<II", PAGES, 0x7FFFFFF0) + pages_hdr(0, 1, 0, 1, 0, 0x7FFFFFF0 - 32))
        elif case == "pages-truncated":
            handshake(s, npages)
            s.sendall(frame(PAGES, pages_hdr(0, 4, 0, 1, 0, 4 * PAGE) + b"x" * (4 * PAGE))[:5000])
            s.shutdown(socket.SHUT_WR)
        elif case == "silent":
            pass
        elif case == "channel-index":
            s.sendall(frame(HELLO, hello(channel=4, nch=4)))
        elif case == "compressed-unnegotiated":
            handshake(s, npages)
            s.sendall(frame(PAGES, pages_hdr(0, 1, 0, 1, 2, 100) + os.urandom(100)))
        elif case == "corrupt-lz4":
            s.sendall(frame(HELLO, hello(features=2)))
            expect(s, HELLO_ACK)
            s.sendall(frame(LAYOUT, layout(npages)))
            expect(s, LAYOUT_ACK)
            s.sendall(frame(PAGES, pages_hdr(0, 1, 0, 1, 2, 100) + b"\xff" * 100))
        elif case == "round-too-big":
            handshake(s, npages)
            s.sendall(frame(PAGES, pages_hdr(0, 1, 0, 100000, 1, 0)))
        elif case == "round-end-unnegotiated":
            handshake(s, npages)
            s.sendall(frame(ROUND_END, struct.pack("<II", 1, 0)))
        elif case == "unknown-frame":
            handshake(s, npages)
            s.sendall(frame(77, b"\0" * 16))
        elif case == "incomplete":
            # A well-formed stream that carries 2 pages of the VM, the
            # state, and an END that counts exactly them.
            handshake(s, npages)
            s.sendall(frame(PAGES, pages_hdr(0, 1, 5, 1, 1, 0)))
            s.sendall(frame(PAGES, pages_hdr(0, 1, 6, 1, 1, 0)))
            s.sendall(frame(STATE, b"\0" * 16))
            s.sendall(frame(END, struct.pack("<IIQQQ", 1, 0, 2, 2, 0)))
        elif case == "barrier-end-early":
            # Barrier mode, 2 channels: channel 0 ends while channel 1
            # waits at a round barrier.  The barrier must let channel 1
            # go (an ended channel no longer counts), and the silent
            # channel 1 must then fail on its deadline, not hang.
            s.sendall(frame(HELLO, hello(channel=0, nch=2, features=1)))
            expect(s, HELLO_ACK)
            s1 = socket.create_connection((host, int(port)), timeout=20)
            s1.sendall(frame(HELLO, hello(channel=1, nch=2, features=1)))
            expect(s1, HELLO_ACK)
            s.sendall(frame(LAYOUT, layout(npages)))
            expect(s, LAYOUT_ACK)
            s.sendall(frame(PAGES, pages_hdr(0, 1, 5, 1, 1, 0)))
            s.sendall(frame(END, struct.pack("<IIQQQ", 1, 0, 1, 1, 0)))
            s1.sendall(frame(ROUND_END, struct.pack("<II", 1, 0)))
            t, body = read_frame(s1)
            print("channel 1 got %s" % ("ROUND_ACK" if t == ROUND_ACK else t))
            s, s1 = s1, s
        elif case == "error-escape":
            # The source aborts with a message full of terminal escapes.
            handshake(s, npages)
            msg = b"\x1b[2J\x1b]0;owned\x07evil\nline"
            s.sendall(frame(ERROR, struct.pack("<II", 5, len(msg)) + msg))
        elif case.startswith("blocks-") or case.startswith("disk-"):
            # A destination with a 1 MiB disk (16 blocks of 64 KiB).
            dbytes, nblk = 1 << 20, 16
            feats = FEAT_DISKS | (FEAT_SHARED if case == "blocks-shared" else 0)
            if case == "blocks-unannounced":
                s.sendall(frame(HELLO, hello()))
                expect(s, HELLO_ACK)
                s.sendall(frame(LAYOUT, layout_disk(npages, dbytes)))
                expect(s, LAYOUT_ACK)
            else:
                disk_handshake(s, npages, dbytes, feats)
            if case == "blocks-out-of-range":
                s.sendall(frame(BLOCKS, pages_hdr(0, 1, nblk, 1, 4, 0)))
            elif case == "blocks-bad-disk":
                s.sendall(frame(BLOCKS, pages_hdr(2, 1, 0, 1, 4, 0)))
            elif case == "blocks-raw-length":
                s.sendall(frame(BLOCKS, pages_hdr(0, 1, 0, 1, 0, 100) + b"x" * 100))
            elif case == "blocks-shared":
                s.sendall(frame(BLOCKS, pages_hdr(0, 1, 0, 1, 4, 0)))
            elif case in ("disk-incomplete", "blocks-stale"):
                frames, units = all_memory_zero(s, npages)
                payload = 0
                if case == "blocks-stale":
                    # Block 0 of round 2, then an older copy from round 1:
                    # the older one must be discarded.
                    new, old = b"N" * DISK_BLOCK, b"O" * DISK_BLOCK
                    s.sendall(frame(BLOCKS, pages_hdr(0, 1, 0, 2, 0, DISK_BLOCK) + new))
                    s.sendall(frame(BLOCKS, pages_hdr(0, 1, 0, 1, 0, DISK_BLOCK) + old))
                    s.sendall(frame(BLOCKS, pages_hdr(0, nblk - 1, 1, 1, 4, 0)))
                    frames, units, payload = frames + 3, units + 2 + nblk - 1, 2 * DISK_BLOCK
                else:
                    s.sendall(frame(BLOCKS, pages_hdr(0, 2, 3, 1, 4, 0)))
                    frames, units = frames + 1, units + 2
                s.sendall(frame(STATE, b"\0" * 16))
                s.sendall(frame(END, struct.pack("<IIQQQ", 2, 0, frames, units, payload)))
        elif case == "end-mismatch":
            # One valid zero page, then an END that claims more; no STATE.
            handshake(s, npages)
            s.sendall(frame(PAGES, pages_hdr(0, 1, 5, 1, 1, 0)))
            s.sendall(frame(END, struct.pack("<IIQQQ", 1, 0, 9, 9, 0)))
        else:
            print("unknown case " + case, file=sys.stderr)
            return 2
        # The destination should answer with ERROR and close.
        try:
            while True:
                t, body = read_frame(s)
                if t == ERROR:
                    print("ERROR: " + body[8:].decode(errors="replace"))
                    break
        except (EOFError, OSError) as e:
            print("closed: %s" % e)
    except (RuntimeError, EOFError, OSError) as e:
        print("failed: %s" % e)
    finally:
        s.close()
    return 0


def proxy(portfile, target, limit, mode="cut"):
    """One connection to TARGET.  Once LIMIT bytes went from the client to
    TARGET: mode "cut" resets both connections at once; mode "stall" stops
    reading from the client (the channel hangs mid-stream) until TARGET's
    side goes away, then resets the client's connection."""
    limit = int(limit)
    host, port = target.rsplit(":", 1)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    with open(portfile + ".tmp", "w") as f:
        f.write("%d\n" % ls.getsockname()[1])
    os.rename(portfile + ".tmp", portfile)
    ls.settimeout(300)
    c, _ = ls.accept()
    d = socket.create_connection((host, int(port)), timeout=300)
    hit = threading.Event()     # LIMIT reached
    gone = threading.Event()    # either side closed

    def upstream():
        sent = 0
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    break
                if sent + len(data) >= limit:
                    d.sendall(data[:limit - sent])
                    print("proxy: %d bytes passed" % limit, flush=True)
                    hit.set()
                    return
                d.sendall(data)
                sent += len(data)
        except OSError:
            pass
        gone.set()

    def downstream():
        try:
            while True:
                data = d.recv(65536)
                if not data:
                    break
                c.sendall(data)
        except OSError:
            pass
        gone.set()

    threading.Thread(target=upstream, daemon=True).start()
    threading.Thread(target=downstream, daemon=True).start()
    while not hit.is_set() and not gone.is_set():
        hit.wait(0.1)
    if hit.is_set() and mode == "stall":
        print("proxy: stalled", flush=True)
        gone.wait(300)
    for x in (c, d):
        try:
            x.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            x.close()
        except OSError:
            pass
    print("proxy: %s the channel" % ("cut" if hit.is_set() else "closed"), flush=True)
    return 0


def drip(addr, n, seconds, first="16"):
    """N connections that each send byte FIRST (hex; 16 starts a TLS
    handshake) and then one byte a second, for SECONDS or until the peer
    closes them: clients slow enough to hold a port if one could."""
    host, port = addr.rsplit(":", 1)
    socks = []
    for _ in range(int(n)):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(bytes.fromhex(first))
        socks.append(s)
    print("drip: %d connections" % len(socks), flush=True)
    end = time.time() + float(seconds)
    closed = 0
    while socks and time.time() < end:
        time.sleep(1)
        for s in list(socks):
            try:
                s.sendall(b"\x03")
            except OSError:
                socks.remove(s)
                closed += 1
    print("drip: %d closed by the peer, %d still open" % (closed, len(socks)), flush=True)
    for s in socks:
        s.close()
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    fn = {"get": get, "ctl": ctl, "free-port": free_port, "speak": speak, "proxy": proxy,
          "drip": drip}.get(cmd)
    if not fn:
        print(__doc__, file=sys.stderr)
        return 2
    return fn(*args)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
