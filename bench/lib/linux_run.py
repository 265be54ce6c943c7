#!/usr/bin/env python3
"""Scenario `linux` of bench/run, run inside the nested L1 (tools/nested/run):
the same Linux guest (Debian's kernel and the project's initramfs, whose
workload writes memory at a set rate, beats on the console every few ms and
checks its own memory) booted and migrated live over loopback, once per
configuration:

  pmvm:N      pmvm + pmigrate, N channels
  pmvm-nice:N the same with pmvm --migration-nice 10 (mode pmigrate-nice)
  qemu:0      QEMU-KVM, classic pre-copy
  qemu:N      QEMU-KVM, multifd with N channels

Each run prints one JSON object per line on stdout.  The pause the guest
saw is measured the same way for both: the host timestamps every heartbeat
line as it appears on the guest's console (a file, polled every 2 ms), and
the gap between the source's last line and the destination's first is the
pause (resolution: the heartbeat period, 10 ms, plus the polling).  A
guest is alive when, after the migration, its heartbeat continues from the
source's last and its memory check completes two more full sweeps at the
destination with no oops, warning, failed check or clock jump on its
console.

  linux_run.py --build BUILD --kernel BZIMAGE --runs pmvm:1,pmvm:4,qemu:0,qemu:4
               --rates 20,80 [--mem-mib 256] [--reps 1] [--downtime-ms 300]

Standard library only (qemu_run.QMP for QEMU's monitor)."""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_run import QMP, QMPError  # noqa: E402

HB = re.compile(rb"^HB (\d+) (\d+)\r?$")
CHECK = re.compile(rb"^CHECK OK (\d+) ")
BAD = re.compile(rb"Oops|BUG:|Kernel panic|WARNING:|Call Trace|general protection|soft lockup|"
                 rb"CHECK FAIL|CLOCK |PMW FAIL")
APPEND = "console=ttyS0 reboot=k panic=-1 pci=off"


class Console(threading.Thread):
    """Tails a console file; timestamps heartbeat and check lines."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.hb, self.checks, self.bad, self.stop = path, [], [], [], False

    def run(self):
        buf, f = b"", None
        while not self.stop:
            if f is None:
                try:
                    f = open(self.path, "rb")
                except OSError:
                    time.sleep(0.002)
                    continue
            chunk = f.read()
            if not chunk:
                time.sleep(0.002)
                continue
            t = time.monotonic()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for ln in lines:
                m = HB.match(ln)
                if m:
                    self.hb.append((t, int(m.group(1)), int(m.group(2))))
                elif CHECK.match(ln):
                    self.checks.append(t)
                elif BAD.search(ln):
                    self.bad.append(ln.decode(errors="replace").strip()[:200])
        if f:
            f.close()


class Failed(Exception):
    pass


def wait(cond, secs, procs, what, consoles=()):
    end = time.monotonic() + secs
    while not cond():
        for c in consoles:
            if c.bad:
                raise Failed("%s: console shows %s" % (what, c.bad[0]))
        for p in procs:
            if p.poll() is not None:
                raise Failed("%s: a VM exited (status %s)" % (what, p.returncode))
        if time.monotonic() > end:
            raise Failed("%s: not within %d s" % (what, secs))
        time.sleep(0.02)


def workload(a, rate):
    return ("pmw_mem=%d pmw_rate=%g pmw_pattern=hot pmw_check=%d pmw_hb_ms=10 pmw_jump_ms=10000"
            % (a.work_mib, rate, a.check_mbps))


def start_pmvm(a, d, role, rate, channels):
    cmd = [a.pmvm, "run", "--kernel", a.kernel, "--initrd", a.initrd, "--append", workload(a, rate),
           "--mem", "%dM" % a.mem_mib, "--vcpus", "2", "--control", "%s/%s.sock" % (d, role),
           "--serial", "%s/%s.console" % (d, role)]
    if role == "dst":
        cmd += ["--incoming", ",".join(["127.0.0.1:0"] * channels)]
    if a.pmvm_nice:
        cmd += ["--migration-nice", str(a.pmvm_nice)]
    log = open("%s/%s.log" % (d, role), "wb")
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


def start_qemu(a, d, role, rate):
    cmd = [a.qemu, "-accel", "kvm", "-cpu", "qemu64", "-m", "%dM" % a.mem_mib, "-smp", "2",
           "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
           "-kernel", a.kernel, "-initrd", a.initrd, "-append", APPEND + " " + workload(a, rate),
           "-chardev", "file,id=con,path=%s/%s.console" % (d, role), "-serial", "chardev:con",
           "-qmp", "unix:%s/%s.qmp,server=on,wait=off" % (d, role)]
    if role == "dst":
        cmd += ["-incoming", "defer"]
    log = open("%s/%s.log" % (d, role), "wb")
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


def migrate_pmvm(a, d, channels, res):
    err = open("%s/dst.log" % d).read()
    addrs = re.findall(r"pmvm: listening on (\S+)", err)
    rep = "%s/report.json" % d
    t0 = time.monotonic()
    r = subprocess.run([a.pmigrate, "migrate", "--control", "%s/src.sock" % d, "--to", ",".join(addrs),
                        "--channels", str(channels), "--downtime", str(a.downtime_ms),
                        "--timeout", "60000", "--json", rep], capture_output=True, text=True,
                       timeout=a.timeout)
    res["wall_ms"] = round((time.monotonic() - t0) * 1000, 1)
    try:
        j = json.load(open(rep))
    except (OSError, ValueError):
        raise Failed("pmigrate migrate: %s" % (r.stderr.strip()[-300:] or "no report"))
    res["status"] = "completed" if r.returncode == 0 else "failed"
    if a.trace:
        # The engine's own timeline: when each round and the pause began
        # (ms since the migration started), and when migrate was launched.
        tl = (j.get("timeline") or {}).get("samples", [])
        marks, last = [], None
        for smp in tl:
            k = (smp.get("round"), smp.get("phase"), smp.get("throttle_pct"))
            if k != last:
                marks.append([smp.get("t_ms"), smp.get("round"), smp.get("phase"), smp.get("throttle_pct")])
                last = k
        res["trace_engine"] = marks
        res["trace_t0_before_end_ms"] = round((time.monotonic() - t0) * 1000)
        res["trace_rounds"] = [(x.get("round"), round(x.get("duration_ms") or 0), x.get("pages"))
                               for x in j.get("rounds", [])]
    res["total_time_ms"] = j.get("total_time_ms")
    res["downtime_ms"] = j.get("downtime_ms")
    res["rounds"] = len(j.get("rounds", []))
    res["bytes_sent"] = j.get("bytes_sent")
    if r.returncode:
        res["error"] = (j.get("error") or r.stderr.strip())[-300:]


def migrate_qemu(a, d, channels, res):
    src, dst = QMP("%s/src.qmp" % d), QMP("%s/dst.qmp" % d)
    try:
        caps = [{"capability": "multifd", "state": channels > 0}]
        for q in (src, dst):
            q.cmd("migrate-set-capabilities", capabilities=caps)
            if channels > 0:
                q.cmd("migrate-set-parameters", **{"multifd-channels": channels})
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 100 * 1000 ** 3,
                                             "downtime-limit": a.downtime_ms})
        uri = "tcp:127.0.0.1:%d" % a.port
        dst.cmd("migrate-incoming", uri=uri)
        t0 = time.monotonic()
        src.cmd("migrate", uri=uri)
        while True:
            info = src.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() - t0 > a.timeout:
                src.cmd("migrate_cancel")
                raise Failed("migration did not finish in %d s" % a.timeout)
            time.sleep(0.01)
        res["wall_ms"] = round((time.monotonic() - t0) * 1000, 1)
        ram = info.get("ram", {})
        res["status"] = "completed" if info.get("status") == "completed" else "failed"
        res["total_time_ms"] = info.get("total-time") or round(res["wall_ms"])
        res["downtime_ms"] = info.get("downtime")
        res["rounds"] = ram.get("dirty-sync-count")
        res["bytes_sent"] = ram.get("transferred")
        if info.get("error-desc"):
            res["error"] = info["error-desc"]
    finally:
        for q in (src, dst):
            q.close()


def one(a, tool, channels, rate, rep):
    a.pmvm_nice = 10 if tool == "pmvm-nice" else 0
    if tool == "pmvm-nice":
        tool = "pmvm"
    res = {"tool": "pmvm" if tool == "pmvm" else "qemu-kvm", "channels": max(channels, 1),
           "mode": ("pmigrate-nice" if a.pmvm_nice else "pmigrate") if tool == "pmvm"
           else ("multifd" if channels else "precopy"),
           "rate": rate, "rep": rep, "status": "error", "ok": False, "dead_guests": 0}
    d = tempfile.mkdtemp(prefix="linux-run-")
    procs, cons = [], [Console("%s/src.console" % d), Console("%s/dst.console" % d)]
    for c in cons:
        c.start()
    src_c, dst_c = cons
    try:
        t0 = time.monotonic()
        start = start_pmvm if tool == "pmvm" else (lambda a_, d_, r_, x, n: start_qemu(a_, d_, r_, x))
        procs.append(start(a, d, "src", rate, channels))
        procs.append(start(a, d, "dst", rate, channels))
        wait(lambda: len(src_c.checks) >= 1, 240, procs, "source boot", [src_c])
        res["boot_s"] = round(time.monotonic() - t0, 1)
        time.sleep(a.warmup_s)       # the workload writes at its rate for a while
        (migrate_pmvm if tool == "pmvm" else migrate_qemu)(a, d, channels, res)
        t_done = time.monotonic()
        if res["status"] != "completed":
            raise Failed(res.get("error", "migration failed"))
        last_src = src_c.hb[-1] if src_c.hb else None
        try:
            wait(lambda: len(dst_c.checks) >= 2, a.check_s, procs[1:], "destination checks", [dst_c])
            first_dst = dst_c.hb[0] if dst_c.hb else None
            alive = bool(last_src and first_dst and last_src[1] < first_dst[1] <= last_src[1] + 2)
            if not alive:
                res["error"] = "heartbeat does not continue (source's last %s, destination's first %s)" % (
                    last_src and last_src[1], first_dst and first_dst[1])
        except Failed as e:
            alive, first_dst = False, dst_c.hb[0] if dst_c.hb else None
            res["error"] = str(e)
        if last_src and first_dst:
            res["guest_gap_ms"] = round((first_dst[0] - last_src[0]) * 1000, 1)
            # Where the gap lies against the end of the migration (the tool
            # returned): before it at the source, after it at the destination.
            res["src_last_beat_before_end_ms"] = round((t_done - last_src[0]) * 1000, 1)
            res["dst_first_beat_after_end_ms"] = round((first_dst[0] - t_done) * 1000, 1)
            if a.trace:
                res["trace_src"] = [round((h[0] - t_done) * 1000) for h in src_c.hb[-25:]]
                res["trace_dst"] = [round((h[0] - t_done) * 1000) for h in dst_c.hb[:5]]
            res["guest_clock_step_ms"] = first_dst[2] - last_src[2]
        if tool == "pmvm":
            # pmvm's own measure: host timestamps of the guest's writes to the
            # heartbeat port, across the pause (beside the console's).
            st = subprocess.run([a.pmigrate, "status", "--control", "%s/dst.sock" % d, "--json"],
                                capture_output=True, text=True, timeout=30)
            try:
                res["port_gap_ms"] = json.loads(st.stdout)["heartbeat"]["resume_gap_ms"]
            except (ValueError, KeyError):
                pass
        res["ok"] = alive
        res["guest_alive"] = alive
        res["dead_guests"] = 0 if alive else 1
        res["dst_checks"] = len(dst_c.checks)
    except (Failed, QMPError, OSError, subprocess.TimeoutExpired) as e:
        res.setdefault("error", str(e)[:300])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        for c in cons:
            c.stop = True
            c.join(2)
        if res.get("status") != "completed" or not res["ok"]:
            for r in ("src", "dst"):
                try:
                    tail = open("%s/%s.log" % (d, r), "rb").read()[-300:].decode(errors="replace").strip()
                    if tail:
                        res["%s_log" % r] = tail
                except OSError:
                    pass
        shutil.rmtree(d, ignore_errors=True)
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", required=True)
    p.add_argument("--kernel", required=True)
    p.add_argument("--runs", default="pmvm:1,pmvm:4,qemu:0,qemu:4")
    p.add_argument("--rates", default="20,80")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--mem-mib", type=int, default=256)
    p.add_argument("--work-mib", type=int, default=128, help="the workload's working set")
    p.add_argument("--check-mbps", type=int, default=128)
    p.add_argument("--downtime-ms", type=int, default=300)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--check-s", type=float, default=60.0)
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--port", type=int, default=4477)
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--trace", action="store_true", help="add the beats around the switchover")
    a = p.parse_args()
    a.pmvm = os.path.join(a.build, "src/pmvm/pmvm")
    a.pmigrate = os.path.join(a.build, "src/cli/pmigrate")
    a.initrd = os.path.join(a.build, "guests/linux/linux-initramfs.cpio")
    runs = []
    for spec in a.runs.split(","):
        tool, _, n = spec.partition(":")
        if tool not in ("pmvm", "pmvm-nice", "qemu") or not n.isdigit() or (tool != "qemu" and int(n) < 1):
            sys.exit("linux_run.py: bad run %r (pmvm:N, pmvm-nice:N or qemu:N)" % spec)
        runs.append((tool, int(n)))
    for rep in range(1, a.reps + 1):
        for rate in [float(r) for r in a.rates.split(",")]:
            for tool, n in runs:
                print("# rep %d, %g MB/s, %s:%d" % (rep, rate, tool, n), file=sys.stderr, flush=True)
                print(json.dumps(one(a, tool, n, rate, rep)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
