#!/usr/bin/env python3
"""The second limit: bare memory-to-memory copy over TCP (bench/loopcopy.c).

Starts `loopcopy --listen` in the destination namespace (listening on every
link's destination address), waits until its memory is prefaulted and it
listens, then runs `loopcopy --connect` in the source namespace with stream i
on link i mod K (bound to that link's source address), as pmigrate's channels.
Prints one JSON object: the sender's (which carries the receiver's figures).
"""
import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time


def ns_prefix(ns):
    return ["ip", "netns", "exec", ns] if ns else []


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True, help="the loopcopy executable")
    p.add_argument("--src-ns", default="")
    p.add_argument("--dst-ns", default="")
    p.add_argument("--links", default="127.0.0.1:127.0.0.1",
                   help="comma list of SRCADDR:DSTADDR, one per link")
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--size", required=True, help="bytes to move, e.g. 512M")
    p.add_argument("--port", type=int, default=5301)
    p.add_argument("--tool", default="loopcopy", help="name in the results")
    p.add_argument("--receiver-opts", default="--huge",
                   help="destination memory options, e.g. '--huge' or '--huge --dst-mem anon'")
    p.add_argument("--verify", action="store_true")
    p.add_argument("--timeout", type=float, default=300.0)
    a = p.parse_args()

    links = [tuple(x.split(":")) for x in a.links.split(",") if x]
    used = links[:a.streams]
    res = {"tool": a.tool, "channels": a.streams, "links_used": len(used), "status": "error"}
    ropts = a.receiver_opts.split() + (["--verify"] if a.verify else [])
    common = ["--size", a.size, "--streams", str(a.streams)]
    listen = ",".join("%s:%d" % (d, a.port + i) for i, (s, d) in enumerate(used))
    connect = ",".join("%s:%d" % (d, a.port + i) for i, (s, d) in enumerate(used))
    bind = ",".join(s for s, d in used if s != d)
    rx = None
    try:
        rx = subprocess.Popen(ns_prefix(a.dst_ns) + [a.bin, "--listen", listen] + common + ropts,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        # Wait for {"listening":true}: the receiver has prefaulted its memory.
        deadline = time.monotonic() + 120
        line = b""
        while time.monotonic() < deadline and rx.poll() is None:
            r, _, _ = select.select([rx.stdout], [], [], 0.5)
            if r:
                line = rx.stdout.readline()
                break
        if b"listening" not in line:
            raise RuntimeError("receiver did not come up: " + rx.stderr.read1(400).decode(errors="replace")
                               if rx.poll() is not None else "receiver did not come up")
        cmd = ns_prefix(a.src_ns) + [a.bin, "--connect", connect] + common
        if bind:
            cmd += ["--bind", bind]
        tx = subprocess.run(cmd, capture_output=True, timeout=a.timeout)
        try:
            d = json.loads(tx.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError("sender printed no JSON: " + tx.stderr.decode(errors="replace")[-300:])
        if tx.returncode != 0 or d.get("status") != "completed":
            raise RuntimeError("sender: exit %d, %s %s" % (tx.returncode, d.get("status"),
                                                            tx.stderr.decode(errors="replace")[-300:]))
        d["tool"] = a.tool
        d["links_used"] = len(used)
        # The receiver checks after the clock stopped: verified runs stay timed runs.
        d["verify"] = False
        if a.verify:
            d["memory_equal"] = d.get("verified") is True
        res = d
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        res["error"] = str(e)
    finally:
        if rx is not None:
            try:
                rx.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(rx.pid, signal.SIGKILL)
                rx.wait()
    print(json.dumps(res))
    return 0 if res.get("status") == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
