#!/usr/bin/env python3
"""One pmigrate migration of a synthetic VM; prints one JSON object on stdout.

Starts a destination `pmigrate vm --incoming ...` (in the destination
namespace) and a source `pmigrate vm --mem-file IMAGE ...` (in the source
namespace), optionally pauses the source (--paused: the "paused VM"
scenarios), runs `pmigrate migrate ... --json`, and then checks the result:

  * the source reports "migrated", the destination runs and its heartbeat
    keeps advancing for --check-s seconds (alive);
  * the guest-visible pause is the destination heartbeat's max gap;
  * --dirty self makes both VMs log their own writes (asked rates hold while
    tracked); --timeline FILE.svg keeps the migration's picture; --policy
    sets the non-convergence policy (with abort, a migration that gives up
    is recorded as "gave_up" when the source still runs: the expected end);
  * with --verify, memory is dumped at the source's pause and at the
    destination's resume and compared (the dumps cost time inside the pause,
    so verified runs are flagged and not used for timings);
  * with --digests, `pmigrate migrate --verify` compares memory digests
    instead (no files: fit for 16 GiB; the engine leaves their time out of
    total and downtime, so such runs still time the migration);
  * --prealloc makes the destination allocate all of its memory before the
    migration starts, as QEMU's prealloc=on (untimed, like loopcopy's
    prefault): on a paravirtualized host a first touch of memory can cost
    more than the copy itself;
  * --populated SIZE / --mem-backend KIND / --fill F shape the guest's
    memory (a big VM that touched little), and the peak resident memory of
    both VM processes (VmHWM) and their guest memory's resident and huge-page
    bytes are recorded.
  * --disk-size/--disk-populated give both VMs a disk (the source's image is
    created and populated before the run, the destination's is fresh and
    sparse), --disk-workload writes to it; the report's disk figures are
    passed on, and --verify compares the disk images at pause and resume too.

Standard library only.
"""
import argparse
import filecmp
import json
import os
import signal
import socket
import subprocess
import sys
import time


def ns_prefix(ns):
    return ["ip", "netns", "exec", ns] if ns else []


def ctl(path, obj, timeout=5.0):
    """Send one JSON line to a control socket, return the parsed reply (or None)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall((json.dumps(obj) + "\n").encode())
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            line = buf.split(b"\n")[0]
            return json.loads(line) if line else None
    except (OSError, ValueError):
        return None


def status(a, sock):
    try:
        out = subprocess.run([a.bin, "status", "--control", sock, "--json"],
                             capture_output=True, timeout=10)
        if out.returncode != 0:
            return None
        return json.loads(out.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def hb(st):
    h = (st or {}).get("heartbeat") or {}
    return h.get("count"), h.get("max_gap_ms")


def wait_state(a, sock, states, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        if os.path.exists(sock):
            st = status(a, sock)
            if st and st.get("state") in states:
                return st
        time.sleep(0.05)
    return None


def peak_rss_mib(pid):
    """VmHWM of a process (ip netns exec execs into pmigrate: same pid)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for ln in f:
                if ln.startswith("VmHWM:"):
                    return round(int(ln.split()[1]) / 1024.0, 1)
    except (OSError, ValueError):
        pass
    return None


def tail(path, n=400):
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode(errors="replace").strip()
    except OSError:
        return ""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--mem", required=True, help="e.g. 512M, 2G")
    p.add_argument("--mem-bytes", type=int, required=True)
    p.add_argument("--image")
    p.add_argument("--workload", default="idle")
    p.add_argument("--paused", action="store_true")
    p.add_argument("--src-ns", default="")
    p.add_argument("--dst-ns", default="")
    p.add_argument("--to", required=True, help="ADDR:PORT[,ADDR:PORT...]")
    p.add_argument("--bind", default="")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--serial", action="store_true")
    p.add_argument("--barrier", action="store_true")
    p.add_argument("--downtime-ms", type=int, default=300)
    p.add_argument("--extra", default="", help="more migrate options, space separated")
    p.add_argument("--dirty", default="", help="dirty tracking of both VMs (auto, uffd-wp, self)")
    p.add_argument("--policy", default="", help="non-convergence policy: throttle, force, abort")
    p.add_argument("--timeline", default="", help="write the migration's timeline SVG here")
    p.add_argument("--workdir", required=True)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--check-s", type=float, default=1.5)
    p.add_argument("--verify", action="store_true")
    p.add_argument("--digests", action="store_true", help="migrate --verify: compare memory digests")
    p.add_argument("--populated", default="", help="source: how much memory was ever written")
    p.add_argument("--prealloc", action="store_true",
                   help="destination allocates all its memory before the migration (QEMU's prealloc=on)")
    p.add_argument("--mem-backend", default="", help="anon, memfd or hugetlb, both VMs")
    p.add_argument("--fill", default="", help="source without an image: mixed, random, zero")
    p.add_argument("--tool", default="", help="the name in the results (default pmigrate...)")
    p.add_argument("--mode", default="", help="a label that tells configurations of one tool apart")
    p.add_argument("--disk-size", default="", help="e.g. 4G: both VMs get a disk")
    p.add_argument("--disk-populated", default="", help="of it written before the run")
    p.add_argument("--disk-workload", default="", help="e.g. randwrite,rate=20MB/s")
    p.add_argument("--payload-bytes", type=int, default=0,
                   help="bytes the throughput is computed over (default: memory)")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--tls", default="none", choices=("none", "x509", "psk"),
                   help="transport security; x509/psk use --tls-dir (tests/tls/mkcreds.sh layout)")
    p.add_argument("--tls-dir", default="", help="x509/ (QEMU layout) and keys.psk")
    p.add_argument("--no-ktls", action="store_true", help="TLS records in userspace even with kTLS")
    a = p.parse_args()

    os.makedirs(a.workdir, exist_ok=True)
    tag = str(os.getpid())
    w = lambda name: os.path.join(a.workdir, "%s-%s" % (name, tag))
    src_sock, dst_sock = w("src.sock"), w("dst.sock")
    src_log, dst_log, mig_log = w("src.log"), w("dst.log"), w("migrate.log")
    report = w("migrate.json")
    dump_src, dump_dst = w("src.dump"), w("dst.dump")
    disk_src, disk_dst = w("src-disk.img"), w("dst-disk.img")
    tool = a.tool or ("pmigrate-serial" if a.serial else ("pmigrate-barrier" if a.barrier else "pmigrate"))
    res = {"tool": tool, "channels": a.channels, "status": "error",
           "links_used": len(set(x.rsplit(":", 1)[0] for x in a.to.split(","))) if a.channels > 1 else 1,
           "verify": a.verify}
    if a.policy:
        res["policy"] = a.policy
    if a.mode:
        res["mode"] = a.mode
    procs = []
    try:
        dst_cmd = ns_prefix(a.dst_ns) + [a.bin, "vm", "--mem", a.mem, "--workload", a.workload,
                                         "--control", dst_sock, "--incoming", a.to]
        src_cmd = ns_prefix(a.src_ns) + [a.bin, "vm", "--mem", a.mem, "--workload", a.workload,
                                         "--control", src_sock]
        if a.image:
            src_cmd += ["--mem-file", a.image]
        if a.populated:
            src_cmd += ["--populated", a.populated]
            res["populated"] = a.populated
        if a.fill:
            src_cmd += ["--fill", a.fill]
        if a.mem_backend:
            src_cmd += ["--mem-backend", a.mem_backend]
            dst_cmd += ["--mem-backend", a.mem_backend]
        res["mem"] = a.mem
        if a.prealloc:
            dst_cmd += ["--prealloc"]
        res["dst_prealloc"] = a.prealloc
        if a.dirty:
            src_cmd += ["--dirty", a.dirty]
            dst_cmd += ["--dirty", a.dirty]
        # The shaped links are not loopback: plain TCP needs --insecure.
        if a.tls == "none":
            tls_args = ["--insecure"]
        elif a.tls == "x509":
            tls_args = ["--tls-creds", os.path.join(a.tls_dir, "x509")]
        else:
            tls_args = ["--tls-psk", os.path.join(a.tls_dir, "keys.psk")]
        if a.no_ktls:
            tls_args += ["--no-ktls"]
        dst_cmd += tls_args
        res["tls"] = a.tls
        if a.verify:
            dst_cmd += ["--dump-on-resume", dump_dst]
            src_cmd += ["--dump-at-pause", dump_src]
        if a.disk_size:
            spec = "%s,size=%s" % (disk_src, a.disk_size)
            if a.disk_populated:
                spec += ",populated=%s" % a.disk_populated
            src_cmd += ["--disk", spec]
            dst_cmd += ["--disk", "%s,size=%s" % (disk_dst, a.disk_size)]
            if a.disk_workload:
                src_cmd += ["--disk-workload", a.disk_workload]
            res["disk_size"] = a.disk_size
            res["mode"] = "paused" if a.paused else "live"
            res["disk_workload"] = a.disk_workload or "idle"
        with open(dst_log, "wb") as lf:
            dst = subprocess.Popen(dst_cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf,
                                   start_new_session=True)
        procs.append(dst)
        with open(src_log, "wb") as lf:
            src = subprocess.Popen(src_cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf,
                                   start_new_session=True)
        procs.append(src)
        if not wait_state(a, dst_sock, ("incoming",), dst):
            raise RuntimeError("destination VM did not come up: " + tail(dst_log))
        if not wait_state(a, src_sock, ("running", "paused"), src, timeout=120):
            raise RuntimeError("source VM did not come up: " + tail(src_log))
        if a.paused:
            ctl(src_sock, {"execute": "stop"})
            if not wait_state(a, src_sock, ("paused",), src, timeout=10):
                raise RuntimeError("source VM did not pause")
        else:
            time.sleep(a.warmup_s)

        # The migration runs inside the source VM process (in its namespace);
        # the command only talks to its control socket, a file.  So it runs
        # here: `ip netns exec` would add its own mount set-up (tens of ms)
        # to the wall clock, which is the command's and nothing else.
        mig = [a.bin, "migrate", "--control", src_sock, "--to", a.to,
                                     "--channels", str(a.channels), "--downtime", str(a.downtime_ms),
                                     "--json", report] + tls_args
        if a.bind:
            mig += ["--bind", a.bind]
        if a.serial:
            mig += ["--serial"]
        if a.barrier:
            mig += ["--barrier"]
        if a.extra:
            mig += a.extra.split()
        if a.policy:
            mig += ["--policy", a.policy]
        if a.timeline:
            mig += ["--timeline", a.timeline]
            res["timeline"] = a.timeline
        if a.digests:
            mig += ["--verify"]
            res["digests"] = True
        pw0 = (status(a, src_sock) or {}).get("pages_written")
        t0 = time.monotonic()
        with open(mig_log, "wb") as lf:
            try:
                rc = subprocess.run(mig, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf,
                                    timeout=a.timeout).returncode
            except subprocess.TimeoutExpired:
                res["status"] = "timeout"
                raise RuntimeError("migrate did not finish in %.0f s" % a.timeout)
        res["wall_ms"] = round((time.monotonic() - t0) * 1000, 1)
        pw1 = (status(a, src_sock) or {}).get("pages_written")
        if not a.paused and isinstance(pw0, int) and isinstance(pw1, int) and res["wall_ms"] > 0:
            # What the workload really wrote while the migration ran (pages x 4 KiB).
            res["achieved_dirty_MBps"] = round((pw1 - pw0) * 4096 / 1e6 / (res["wall_ms"] / 1000.0), 1)
        try:
            with open(report) as f:
                rep = json.load(f)
        except (OSError, ValueError):
            rep = {}
        if a.timeline and rep:
            # The report (with its timeline samples) beside the picture.
            with open(os.path.splitext(a.timeline)[0] + ".json", "w") as f:
                json.dump(rep, f)
        if rc != 0 or rep.get("status") not in ("completed", "ok", "success", "migrated"):
            res["status"] = "failed"
            res["error"] = "migrate exit %d: %s" % (rc, tail(mig_log))
            # Policy abort: giving up with the VM still running at the source
            # is the expected end of a migration that does not converge.
            sst = status(a, src_sock) or {}
            res["src_state"] = sst.get("state")
            c1, _ = hb(sst)
            time.sleep(0.3)
            c2, _ = hb(status(a, src_sock))
            res["src_alive"] = c1 is not None and c2 is not None and c2 > c1
            if a.policy == "abort" and "does not converge" in res["error"] and res["src_alive"]:
                res["status"] = "gave_up"
        else:
            res["status"] = "completed"
        for k in ("total_time_ms", "downtime_ms", "bytes_sent", "pages_sent", "zero_pages",
                  "throughput_mbps", "channels"):
            if k in rep:
                res[k] = rep[k]
        rounds = rep.get("rounds")
        if isinstance(rounds, list):
            res["rounds"] = len(rounds)
        elif isinstance(rounds, int):
            res["rounds"] = rounds
        for k in ("dirty_method", "switchover_reason", "throttle_pct", "stale_pages", "setup_ms",
                  "verify_dump_ms", "write_rate_mbps", "write_rate_asked_mbps", "nrounds",
                  "tls_records", "unpopulated_pages", "dst_data_pages", "downtime_breakdown",
                  "verified", "verify_ms", "verify_error", "guest_memory"):
            if k in rep:
                res[k] = rep[k]
        if rep.get("disks"):
            d = rep["disks"][0]
            for k in ("blocks", "zero_blocks", "unallocated_blocks", "busy_ms"):
                res["disk_" + k] = d.get(k)
            res["disk_bytes"] = sum(x.get("bytes", 0) for x in rep["disks"])
            res["disk_blocks_final"] = (rep.get("rounds") or [{}])[-1].get("disk_blocks")
        if res["status"] == "completed":
            tt = res.get("total_time_ms") or res["wall_ms"]
            res["throughput_MBps"] = round((a.payload_bytes or a.mem_bytes) / 1e6 / (tt / 1000.0), 1)
            # What the user waited for: the command's wall clock (minus the
            # digests' time, a verification aid).
            wall = res["wall_ms"] - ((res.get("verify_dump_ms") or 0) if a.digests else 0)
            res["wall_throughput_MBps"] = round((a.payload_bytes or a.mem_bytes) / 1e6 / (wall / 1000.0), 1)
            # Alive: destination running and its heartbeat advancing.
            st1 = status(a, dst_sock)
            c1, gap = hb(st1)
            time.sleep(a.check_s)
            st2 = status(a, dst_sock)
            c2, gap2 = hb(st2)
            res["dst_state"] = (st2 or {}).get("state")
            res["guest_gap_ms"] = gap2 if gap2 is not None else gap
            rg = ((st2 or {}).get("heartbeat") or {}).get("resume_gap_ms")
            if rg is not None and not a.paused:
                res["guest_gap_ms"] = rg  # the heartbeat gap across the resume itself
            if a.paused:
                # The VM was paused by us before the migration: no guest-visible gap to speak of.
                res["guest_gap_ms"] = None
                # A paused VM's heartbeat does not run: alive = destination up, state sane.
                res["guest_alive"] = dst.poll() is None and st2 is not None
            else:
                res["guest_alive"] = (dst.poll() is None and c1 is not None and c2 is not None
                                      and c2 > c1)
            sst = status(a, src_sock)
            res["src_state"] = (sst or {}).get("state")
            res["src_peak_rss_mib"] = peak_rss_mib(src.pid)
            res["dst_peak_rss_mib"] = peak_rss_mib(dst.pid)
            for side, st in (("src", sst), ("dst", st2)):
                m = (st or {}).get("memory") or {}
                if m.get("resident_bytes") is not None:
                    res[side + "_guest_resident_mib"] = round(m["resident_bytes"] / 1048576.0, 1)
                    res[side + "_guest_huge_mib"] = round((m.get("huge_bytes") or 0) / 1048576.0, 1)
            if a.verify:
                ok = (os.path.exists(dump_src) and os.path.exists(dump_dst)
                      and filecmp.cmp(dump_src, dump_dst, shallow=False))
                res["memory_equal"] = bool(ok)
                if a.disk_size:
                    ok = (os.path.exists(dump_src + ".disk0") and os.path.exists(dump_dst + ".disk0")
                          and filecmp.cmp(dump_src + ".disk0", dump_dst + ".disk0", shallow=False))
                    res["disk_equal"] = bool(ok)
            if a.disk_size:
                dl = (st2 or {}).get("last_migration") or {}
                res["dst_disk_sync_ms"] = dl.get("disk_sync_ms")
                try:
                    res["src_allocated"] = os.stat(disk_src).st_blocks * 512
                    # At resume (the destination writes on after it).
                    res["dst_allocated"] = os.stat(dump_dst + ".disk0" if a.verify else disk_dst).st_blocks * 512
                except OSError:
                    pass
    except RuntimeError as e:
        res.setdefault("error", str(e))
        if res["status"] not in ("timeout", "failed"):
            res["status"] = "error"
    finally:
        for sock in (src_sock, dst_sock):
            if os.path.exists(sock):
                ctl(sock, {"execute": "quit"}, timeout=2)
        for pr in procs:
            try:
                pr.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(pr.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                pr.wait()
        for f in (src_sock, dst_sock, dump_src, dump_dst, report, disk_src, disk_dst,
                  dump_src + ".disk0", dump_dst + ".disk0"):
            try:
                os.unlink(f)
            except OSError:
                pass
    print(json.dumps(res))
    return 0 if res["status"] in ("completed", "gave_up") else 1


if __name__ == "__main__":
    sys.exit(main())
