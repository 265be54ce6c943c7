#!/usr/bin/env python3
"""The limit: iperf3 with N streams and 1 MiB writes over the benchmark's links.

Streams are spread over the given links the way pmigrate spreads channels
(stream i on link i mod K): one iperf3 server per used link in the destination
namespace, one client per used link in the source namespace, all at once; the
result is the sum of what the receivers got. Prints one JSON object.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time


def ns_prefix(ns):
    return ["ip", "netns", "exec", ns] if ns else []


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--src-ns", default="")
    p.add_argument("--dst-ns", default="")
    p.add_argument("--links", default="127.0.0.1:127.0.0.1",
                   help="comma list of SRCADDR:DSTADDR, one per link")
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--len", default="1M")
    p.add_argument("--port", type=int, default=5201)
    a = p.parse_args()

    links = [tuple(x.split(":")) for x in a.links.split(",") if x]
    per_link = [0] * len(links)
    for i in range(a.streams):
        per_link[i % len(links)] += 1
    used = [(i, links[i], n) for i, n in enumerate(per_link) if n > 0]
    res = {"tool": "iperf3", "channels": a.streams, "links_used": len(used), "status": "error"}
    servers, clients = [], []
    try:
        for i, (src, dst), n in used:
            servers.append(subprocess.Popen(
                ns_prefix(a.dst_ns) + ["iperf3", "-s", "-1", "-B", dst, "-p", str(a.port + i)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        time.sleep(0.5)
        for i, (src, dst), n in used:
            cmd = ns_prefix(a.src_ns) + ["iperf3", "-c", dst, "-p", str(a.port + i), "-P", str(n),
                                         "-l", a.len, "-t", str(a.seconds), "-J"]
            if src and src != dst:
                cmd += ["-B", src]
            clients.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            start_new_session=True))
        total_bps = 0.0
        errors = []
        for c in clients:
            out, err = c.communicate(timeout=a.seconds + 30)
            try:
                d = json.loads(out)
                if "error" in d:
                    errors.append(d["error"])
                total_bps += d["end"]["sum_received"]["bits_per_second"]
            except (ValueError, KeyError) as e:
                errors.append("iperf3 output: %s %s" % (e, err.decode(errors="replace")[:200]))
        if errors:
            res["error"] = "; ".join(errors)
        else:
            res["status"] = "completed"
            res["gbit_s"] = round(total_bps / 1e9, 3)
            res["throughput_MBps"] = round(total_bps / 8 / 1e6, 1)
    except (OSError, subprocess.TimeoutExpired) as e:
        res["error"] = str(e)
    finally:
        for pr in clients + servers:
            if pr.poll() is None:
                try:
                    pr.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    os.killpg(pr.pid, signal.SIGKILL)
                    pr.wait()
    print(json.dumps(res))
    return 0 if res["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
