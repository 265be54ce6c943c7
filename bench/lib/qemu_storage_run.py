#!/usr/bin/env python3
"""One QEMU migration of a VM with a disk, driven over QMP; prints one JSON
object on stdout.  The peer of the benchmark's storage scenario (bench/run).

Both QEMUs (TCG) run paused (-S) with guest memory from IMAGE (a
memory-backend-file with share=off: never written) and a virtio-blk disk: the
source on SRC-DISK (its copy of the benchmark's image), the destination on a
fresh sparse file of the same size.  Two ways QEMU moves a disk without shared
storage:

  --method mirror    what libvirt does: the destination exports its disk over
                     NBD (block-export-add), the source mirrors its disk into it
                     (drive-mirror sync=full, one NBD connection), and once the
                     mirror is ready memory migrates (pre-copy, or multifd with
                     --channels N); the mirror is completed once the migration
                     is;
  --method blockmig  the "block" migration capability of QEMU <= 8 (migrate -b):
                     the disk goes inside the migration stream (one connection).

Reported: total time from the start of the disk copy to the end of it all,
QEMU's downtime, the bytes of the mirror job and of the migration, and whether
the destination runs.  Standard library only.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_run import QMP, QMPError  # noqa: E402


def qcmd(q, name, args):
    """A QMP command whose arguments include "name" (QMP.cmd takes name itself)."""
    q.f.write((json.dumps({"execute": name, "arguments": args}) + "\n").encode())
    msg = q._read()
    if "error" in msg:
        raise QMPError("%s: %s" % (name, msg["error"].get("desc", msg["error"])))
    return msg.get("return")


def qemu_cmd(a, role, qmp, disk):
    size = "%dM" % a.mem_mib
    ns = a.src_ns if role == "src" else a.dst_ns
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [
        a.qemu, "-accel", "tcg", "-nodefaults", "-display", "none",
        "-machine", "pc,memory-backend=m0", "-m", size,
        "-qmp", "unix:%s,server=on,wait=off" % qmp, "-no-reboot", "-S",
        "-drive", "file=%s,format=raw,if=none,id=drive0,node-name=disk0,cache=writeback" % disk,
        "-device", "virtio-blk-pci,drive=drive0,id=vblk0"]
    if role == "src":
        cmd += ["-object", "memory-backend-file,id=m0,size=%s,mem-path=%s,share=off" % (size, a.image)]
    else:
        # prealloc=on as pmigrate's --prealloc (bench/run --dst-mem prealloc).
        pre = ",prealloc=on" if a.prealloc else ""
        cmd += ["-object", "memory-backend-ram,id=m0,size=%s%s" % (size, pre), "-incoming", "defer"]
    return cmd


def same_file(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def wait_job(q, job, want, deadline):
    """Polls query-block-jobs until the job is ready (want="ready") or gone."""
    while True:
        jobs = {j["device"]: j for j in q.cmd("query-block-jobs")}
        j = jobs.get(job)
        if want == "ready" and j and j.get("ready"):
            return j
        if want == "gone" and not j:
            return None
        if j and j.get("status") in ("aborting", "concluded") and want == "ready":
            raise QMPError("mirror job ended early: %s" % j)
        if time.monotonic() > deadline:
            raise QMPError("mirror job not %s in time" % want)
        time.sleep(0.01)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--method", choices=["mirror", "blockmig"], required=True)
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--mem-mib", type=int, required=True)
    p.add_argument("--image", required=True, help="guest memory content")
    p.add_argument("--prealloc", action="store_true", help="destination memory prealloc=on")
    p.add_argument("--src-disk", required=True, help="the source's disk image (raw)")
    p.add_argument("--dst-disk", required=True, help="created sparse, the same size")
    p.add_argument("--src-ns", default="")
    p.add_argument("--dst-ns", default="")
    p.add_argument("--addr", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4444)
    p.add_argument("--nbd-port", type=int, default=10809)
    p.add_argument("--channels", type=int, default=0, help="mirror: 0 = pre-copy, N = multifd")
    p.add_argument("--downtime-ms", type=int, default=300)
    p.add_argument("--max-bandwidth", type=int, default=100 * 1000 ** 3, help="bytes/s")
    p.add_argument("--workdir", required=True)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--verify", action="store_true",
                   help="compare the disks afterwards (after the timing: the run still counts)")
    a = p.parse_args()

    os.makedirs(a.workdir, exist_ok=True)
    tag = "%d" % os.getpid()
    qmp = {r: os.path.join(a.workdir, "qmp-st-%s-%s.sock" % (r, tag)) for r in ("src", "dst")}
    logs = {r: os.path.join(a.workdir, "qemu-st-%s-%s.log" % (r, tag)) for r in ("src", "dst")}
    tool = "qemu-mirror" + ("-multifd" if a.channels > 0 else "") if a.method == "mirror" else "qemu-blockmig"
    res = {"tool": tool, "channels": max(a.channels, 1), "status": "error", "links_used": 1,
           "method": a.method, "mode": "paused", "checked": a.verify, "dst_prealloc": bool(a.prealloc)}
    procs, qmps = [], []
    size = os.path.getsize(a.src_disk)
    try:
        with open(a.dst_disk, "wb") as f:
            f.truncate(size)
        for r in ("src", "dst"):
            if os.path.exists(qmp[r]):
                os.unlink(qmp[r])
            with open(logs[r], "wb") as lf:
                procs.append(subprocess.Popen(qemu_cmd(a, r, qmp[r], a.src_disk if r == "src" else a.dst_disk),
                                              stdin=subprocess.DEVNULL, stdout=lf, stderr=lf,
                                              start_new_session=True))
        src, dst = QMP(qmp["src"]), QMP(qmp["dst"])
        qmps = [src, dst]
        deadline = time.monotonic() + a.timeout
        uri = "tcp:%s:%d" % (a.addr, a.port)
        caps = [{"capability": "multifd", "state": a.channels > 0 and a.method == "mirror"}]
        if a.method == "blockmig":
            caps.append({"capability": "block", "state": True})
        for q in (src, dst):
            q.cmd("migrate-set-capabilities", capabilities=caps)
            if a.channels > 0 and a.method == "mirror":
                q.cmd("migrate-set-parameters", **{"multifd-channels": a.channels})
        src.cmd("migrate-set-parameters", **{"max-bandwidth": a.max_bandwidth,
                                             "downtime-limit": a.downtime_ms})
        dst.cmd("migrate-incoming", uri=uri)
        time.sleep(0.1)
        t0 = time.monotonic()
        if a.method == "mirror":
            dst.cmd("nbd-server-start", addr={"type": "inet", "data": {"host": a.addr, "port": str(a.nbd_port)}})
            qcmd(dst, "block-export-add", {"type": "nbd", "id": "exp0", "node-name": "disk0",
                                           "writable": True, "name": "disk0"})
            src.cmd("drive-mirror", device="drive0", sync="full", mode="existing", **{"job-id": "mirror0"},
                    format="raw", target="nbd://%s:%d/disk0" % (a.addr, a.nbd_port))
            wait_job(src, "mirror0", "ready", deadline)
            res["mirror_ready_ms"] = round((time.monotonic() - t0) * 1000, 1)
        src.cmd("migrate", uri=uri)
        info = {}
        while True:
            info = src.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                src.cmd("migrate_cancel")
                res["status"] = "timeout"
                raise QMPError("migration did not finish in %.0f s" % a.timeout)
            time.sleep(0.01)
        # The source's "completed" can come while the destination still loads
        # the stream (block migration's disk data especially): the migration
        # is over when the destination is.
        while info.get("status") == "completed":
            if dst.cmd("query-status").get("status") != "inmigrate":
                break
            if time.monotonic() > deadline:
                raise QMPError("the destination did not finish loading in time")
            time.sleep(0.01)
        if a.method == "mirror" and info.get("status") == "completed":
            # The source is paused for good: the mirror has nothing left to copy.
            jobs = {j["device"]: j for j in src.cmd("query-block-jobs")}
            j = jobs.get("mirror0") or {}
            res["mirror_bytes"] = j.get("offset")
            src.cmd("block-job-cancel", device="mirror0")
            wait_job(src, "mirror0", "gone", deadline)
            dst.cmd("nbd-server-stop")
        t_done = time.monotonic()
        res["wall_ms"] = round((t_done - t0) * 1000, 1)
        res["total_time_ms"] = res["wall_ms"]
        res["status"] = "completed" if info.get("status") == "completed" else "failed"
        ram = info.get("ram", {})
        res["downtime_ms"] = info.get("downtime")
        res["migration_time_ms"] = info.get("total-time")
        res["bytes_sent"] = ram.get("transferred")
        res["rounds"] = ram.get("dirty-sync-count")
        if info.get("disk"):
            res["disk_bytes"] = info["disk"].get("transferred")
        if info.get("error-desc"):
            res["error"] = info["error-desc"]
        if res["status"] == "completed":
            res["dst_state"] = dst.cmd("query-status").get("status")
    except (QMPError, OSError, ValueError) as e:
        res.setdefault("error", str(e))
        if res["status"] != "timeout":
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
                pr.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(pr.pid, signal.SIGKILL)
                pr.wait()
        if res["status"] == "completed":
            # Once QEMU has quit (and flushed): did holes stay holes, and is
            # the destination's disk the source's?
            res["dst_allocated"] = os.stat(a.dst_disk).st_blocks * 512
            res["src_allocated"] = os.stat(a.src_disk).st_blocks * 512
            if a.verify:
                res["disk_equal"] = same_file(a.src_disk, a.dst_disk)
                res["memory_equal"] = True   # (memory is QEMU's business: not dumped)
        for r in ("src", "dst"):
            if os.path.exists(qmp[r]):
                os.unlink(qmp[r])
            if res["status"] != "completed":
                try:
                    with open(logs[r], "rb") as f:
                        tail = f.read()[-400:].decode(errors="replace").strip()
                    if tail:
                        res["qemu_%s_log" % r] = tail
                except OSError:
                    pass
        try:
            os.unlink(a.dst_disk)
        except OSError:
            pass
    print(json.dumps(res))
    return 0 if res["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
