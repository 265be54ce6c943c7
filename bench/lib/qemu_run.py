#!/usr/bin/env python3
"""One QEMU migration, driven over QMP; prints one JSON object on stdout.

The peer of the pmigrate benchmark (bench/run). Starts a source and a
destination qemu-system-x86_64 (TCG), each optionally inside a network
namespace (`ip netns exec NS`), migrates once with classic pre-copy
(--channels 0) or multifd with N channels, and reports QEMU's own figures
from `query-migrate` (total-time, downtime, ram.mbps, ram.transferred,
dirty-sync-count).

--mode paused: both VMs are started with -S; guest memory is a
  memory-backend-file over IMAGE (share=off, so the file is never written).
--mode live: the source boots a tiny Linux guest (--kernel/--initrd) whose
  init dirties pages at --rate MB/s and prints a heartbeat on the serial
  console. After the migration the destination's console is watched for
  --check-s seconds: the guest is alive if its heartbeat continues and the
  console shows no oops/panic. The host timestamps heartbeat lines on both
  ends; the gap between the source's last and the destination's first is the
  guest-visible pause (resolution: the heartbeat period plus ~2 ms polling).

Standard library only.
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time


class QMPError(Exception):
    pass


class QMP:
    def __init__(self, path, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise QMPError("cannot connect to QMP socket %s" % path)
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self.f = self.sock.makefile("rwb", buffering=0)
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        while True:
            line = self.f.readline()
            if not line:
                raise QMPError("QMP connection closed")
            msg = json.loads(line)
            if "event" in msg:
                continue
            return msg

    def cmd(self, name, **args):
        req = {"execute": name}
        if args:
            req["arguments"] = args
        self.f.write((json.dumps(req) + "\n").encode())
        msg = self._read()
        if "error" in msg:
            raise QMPError("%s: %s" % (name, msg["error"].get("desc", msg["error"])))
        return msg.get("return")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class SerialWatch(threading.Thread):
    """Tails a serial log file and timestamps every heartbeat line."""
    HB = re.compile(rb"^hb (\d+)")
    BAD = re.compile(rb"(Oops|BUG:|Kernel panic|general protection|RIP:|Call Trace|segfault|invalid opcode)")

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.hb = []  # (host monotonic time, seq)
        self.bad = []
        self.stop = False

    def run(self):
        buf = b""
        f = None
        while not self.stop:
            if f is None:
                try:
                    f = open(self.path, "rb")
                except OSError:
                    time.sleep(0.002)
                    continue
            chunk = f.read()
            if chunk:
                t = time.monotonic()
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for ln in lines:
                    m = self.HB.match(ln)
                    if m:
                        self.hb.append((t, int(m.group(1))))
                    elif self.BAD.search(ln):
                        self.bad.append(ln.decode(errors="replace")[:200])
            else:
                time.sleep(0.002)
        if f:
            f.close()


def qemu_cmd(a, role, qmp_path, serial_path):
    size = "%dM" % a.mem_mib
    cmd = []
    ns = a.src_ns if role == "src" else a.dst_ns
    if ns:
        cmd += ["ip", "netns", "exec", ns]
    cmd += [a.qemu, "-accel", "tcg", "-nodefaults", "-display", "none",
            "-machine", "pc,memory-backend=m0", "-m", size,
            "-qmp", "unix:%s,server=on,wait=off" % qmp_path,
            "-chardev", "file,id=ser0,path=%s" % serial_path, "-serial", "chardev:ser0",
            "-no-reboot"]
    if role == "src" and a.image:
        cmd += ["-object", "memory-backend-file,id=m0,size=%s,mem-path=%s,share=off" % (size, a.image)]
    else:
        # prealloc=on on the destination: all memory allocated before the
        # migration, as pmigrate's --prealloc and loopcopy's prefault.
        pre = ",prealloc=on" if role == "dst" and a.prealloc else ""
        cmd += ["-object", "memory-backend-ram,id=m0,size=%s%s" % (size, pre)]
    if a.mode == "paused":
        cmd += ["-S"]
    else:
        append = "console=ttyS0 quiet mitigations=off panic=0 dirty_rate=%g dirty_mem=%d hb_ms=%d" % (
            a.rate, a.dirty_mem_mib, a.hb_ms)
        cmd += ["-kernel", a.kernel, "-initrd", a.initrd, "-append", append]
    if role == "dst":
        cmd += ["-incoming", "defer"]
    return cmd


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["paused", "live"], default="paused")
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--mem-mib", type=int, required=True)
    p.add_argument("--image")
    p.add_argument("--prealloc", action="store_true", help="destination memory prealloc=on")
    p.add_argument("--kernel")
    p.add_argument("--initrd")
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--dirty-mem-mib", type=int, default=128)
    p.add_argument("--hb-ms", type=int, default=20)
    p.add_argument("--src-ns", default="")
    p.add_argument("--dst-ns", default="")
    p.add_argument("--addr", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4444)
    p.add_argument("--channels", type=int, default=0, help="0 = classic pre-copy")
    p.add_argument("--downtime-ms", type=int, default=300)
    p.add_argument("--max-bandwidth", type=int, default=100 * 1000 ** 3, help="bytes/s")
    p.add_argument("--workdir", required=True)
    p.add_argument("--boot-wait-s", type=float, default=3.0,
                   help="live: seconds of steady heartbeat before migrating")
    p.add_argument("--check-s", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=300.0)
    a = p.parse_args()

    os.makedirs(a.workdir, exist_ok=True)
    tag = "%d" % os.getpid()
    paths = {r: {"qmp": os.path.join(a.workdir, "qmp-%s-%s.sock" % (r, tag)),
                 "serial": os.path.join(a.workdir, "serial-%s-%s.log" % (r, tag)),
                 "log": os.path.join(a.workdir, "qemu-%s-%s.log" % (r, tag))}
             for r in ("src", "dst")}
    res = {"tool": "qemu-multifd" if a.channels > 0 else "qemu-precopy",
           "channels": max(a.channels, 1), "mode": a.mode, "status": "error",
           "links_used": 1, "dst_prealloc": bool(a.prealloc)}
    procs = []
    watches = []
    qmps = []
    try:
        for r in ("src", "dst"):
            for k in ("qmp", "serial"):
                if os.path.exists(paths[r][k]):
                    os.unlink(paths[r][k])
        src_w = SerialWatch(paths["src"]["serial"])
        dst_w = SerialWatch(paths["dst"]["serial"])
        watches = [src_w, dst_w]
        for w in watches:
            w.start()
        for r in ("src", "dst"):
            logf = open(paths[r]["log"], "wb")
            procs.append(subprocess.Popen(qemu_cmd(a, r, paths[r]["qmp"], paths[r]["serial"]),
                                          stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                          start_new_session=True))
            logf.close()
        src = QMP(paths["src"]["qmp"])
        dst = QMP(paths["dst"]["qmp"])
        qmps = [src, dst]

        if a.mode == "live":
            # Wait for the guest's heartbeat to run steadily.
            need = int(a.boot_wait_s * 1000 / a.hb_ms)
            deadline = time.monotonic() + 120
            while len(src_w.hb) < need:
                if time.monotonic() > deadline or procs[0].poll() is not None:
                    raise QMPError("source guest did not boot (no heartbeat)")
                time.sleep(0.05)

        caps = [{"capability": "multifd", "state": a.channels > 0}]
        for q in (src, dst):
            q.cmd("migrate-set-capabilities", capabilities=caps)
            if a.channels > 0:
                q.cmd("migrate-set-parameters", **{"multifd-channels": a.channels})
        src.cmd("migrate-set-parameters", **{"max-bandwidth": a.max_bandwidth,
                                             "downtime-limit": a.downtime_ms})
        uri = "tcp:%s:%d" % (a.addr, a.port)
        dst.cmd("migrate-incoming", uri=uri)
        time.sleep(0.1)
        t0 = time.monotonic()
        src.cmd("migrate", uri=uri)
        info = {}
        while True:
            info = src.cmd("query-migrate")
            st = info.get("status")
            if st in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() - t0 > a.timeout:
                src.cmd("migrate_cancel")
                res["status"] = "timeout"
                raise QMPError("migration did not finish in %.0f s" % a.timeout)
            time.sleep(0.01)
        t_done = time.monotonic()
        res["wall_ms"] = round((t_done - t0) * 1000, 1)
        res["status"] = "completed" if info.get("status") == "completed" else "failed"
        ram = info.get("ram", {})
        res["total_time_ms"] = info.get("total-time")
        res["downtime_ms"] = info.get("downtime")
        res["setup_time_ms"] = info.get("setup-time")
        res["mbps"] = ram.get("mbps")  # megabits/s as QEMU reports it
        res["bytes_sent"] = ram.get("transferred")
        res["rounds"] = ram.get("dirty-sync-count")
        res["zero_pages"] = ram.get("duplicate")
        if res["status"] == "completed" and not res["total_time_ms"]:
            # QEMU 7.2 sometimes reports total-time 0 for a completed live migration;
            # fall back to the time we measured around it (QMP polling every 10 ms).
            res["total_time_ms"] = round(res["wall_ms"])
            res["total_time_from"] = "wall clock (QEMU reported 0)"
        if info.get("error-desc"):
            res["error"] = info["error-desc"]
        # Throughput in MB/s of guest memory over total time (comparable to pmigrate).
        if res["status"] == "completed" and res["total_time_ms"]:
            res["throughput_MBps"] = round(res["bytes_sent"] / 1e6 / (res["total_time_ms"] / 1000.0), 1)

        if a.mode == "live" and res["status"] == "completed":
            time.sleep(a.check_s)
            last_src = src_w.hb[-1] if src_w.hb else None
            first_dst = dst_w.hb[0] if dst_w.hb else None
            dst_after = [h for h in dst_w.hb if h[0] >= t_done]
            if last_src and first_dst:
                res["guest_gap_ms"] = round((first_dst[0] - last_src[0]) * 1000, 1)
            # Alive: heartbeat continues at the destination, in sequence, for the check window.
            expect = a.check_s * 1000 / a.hb_ms
            alive = (first_dst is not None and len(dst_after) >= 0.3 * expect
                     and last_src is not None and first_dst[1] > last_src[1] - 5
                     and not dst_w.bad and procs[1].poll() is None)
            res["guest_alive"] = bool(alive)
            res["dst_heartbeats"] = len(dst_w.hb)
            if dst_w.bad:
                res["guest_errors"] = dst_w.bad[:5]
        elif a.mode == "paused" and res["status"] == "completed":
            st = dst.cmd("query-status")
            res["dst_state"] = st.get("status")
    except (QMPError, OSError, ValueError) as e:
        res.setdefault("error", str(e))
        if res["status"] not in ("timeout",):
            res["status"] = "error"
    finally:
        for q in qmps:
            try:
                q.cmd("quit")
            except Exception:
                pass
            q.close()
        for pr in procs:
            try:
                pr.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(pr.pid, signal.SIGKILL)
                pr.wait()
        for w in watches:
            w.stop = True
            w.join(timeout=2)
        for r in ("src", "dst"):
            if os.path.exists(paths[r]["qmp"]):
                os.unlink(paths[r]["qmp"])
        if res["status"] != "completed":
            # keep a hint from QEMU's own stderr
            for r in ("src", "dst"):
                try:
                    with open(paths[r]["log"], "rb") as f:
                        tail = f.read()[-400:].decode(errors="replace").strip()
                    if tail:
                        res["qemu_%s_log" % r] = tail
                except OSError:
                    pass
    print(json.dumps(res))
    return 0 if res["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
