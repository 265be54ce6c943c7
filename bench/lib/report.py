#!/usr/bin/env python3
"""Turns the benchmark's raw runs into results.json, results.csv, summary.md and SVG plots.

Usage: report.py OUTDIR   (reads OUTDIR/raw.jsonl and OUTDIR/meta.json)

Each raw run is one JSON object with at least: scenario, topology, tool,
channels, rate (dirty MB/s or null), rep, status. For each configuration
(scenario, topology, tool, channels, rate) the best run is kept: the shortest
total time for migrations and bare copies (loopcopy), the highest throughput
for iperf3. Runs flagged
"verify" (memory dumps inside the pause) are never used for timings.
Standard library only; plots need gnuplot (skipped with a note otherwise).
"""
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys

TOOLS_ORDER = ["iperf3", "loopcopy", "loopcopy-thp", "pmigrate", "pmigrate-barrier", "pmigrate-serial", "qemu-multifd", "qemu-precopy",
               "qemu-mirror-multifd", "qemu-mirror", "qemu-blockmig",
               "pmvm", "qemu-kvm", "pmigrate-scale", "pmigrate-full", "pmigrate-sparse", "pmigrate-idle"]
SCEN_TITLE = {
    1: "Scenario 1: paused VM, incompressible memory, loopback",
    2: "Scenario 2: paused VM, incompressible memory, K shaped veth links (multi-NIC)",
    3: "Scenario 3: live VM, write-heavy workload",
    4: "Scenario 4: barrier vs barrier-free rounds (pmigrate), high dirty rates",
    5: "Scenario 5: dirty-rate sweep, writes tracked by the guest itself (--dirty self)",
    6: "Scenario 6: where it does not converge: the non-convergence policies",
    "linux": "Scenario linux: a Linux guest, pmvm + pmigrate vs QEMU-KVM, inside the nested L1",
    "scale": "Scenario scale: big VMs that touched 1/8 of their memory",
    "tls": "Scenario tls: TLS 1.3 (X.509, PSK) beside plain TCP, paused VM",
    "storage": "Scenario storage: memory and a disk, pmigrate vs QEMU (drive-mirror over NBD, block migration)",
}
SCENARIOS = (1, 2, 3, 4, 5, 6, "tls", "linux", "scale", "storage")


def scen_order(s):
    """Scenarios sort 1..4, then the named ones."""
    return s if isinstance(s, int) else 100


def load(out):
    runs = []
    path = os.path.join(out, "raw.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for ln in f:
                ln = ln.strip()
                if ln:
                    try:
                        runs.append(json.loads(ln))
                    except ValueError:
                        pass
    meta = {}
    mp = os.path.join(out, "meta.json")
    if os.path.exists(mp):
        with open(mp) as f:
            meta = json.load(f)
    return meta, runs


def key(r):
    return (r.get("scenario"), r.get("topology"), r.get("tool"), r.get("channels"), r.get("rate"),
            r.get("policy"), r.get("mode"))


def best_rows(runs):
    groups = {}
    for r in runs:
        groups.setdefault(key(r), []).append(r)
    rows = []
    for k, rs in groups.items():
        # A policy-abort run that gave up with the source running ended as asked.
        ok = [r for r in rs if r.get("status") in ("completed", "gave_up")]
        timed = [r for r in ok if not r.get("verify")] or []
        dead = sum(1 for r in ok if r.get("guest_alive") is False)
        best = None
        if k[2] == "iperf3":
            if timed:
                best = max(timed, key=lambda r: r.get("throughput_MBps") or 0)
        else:
            alive = [r for r in timed if r.get("guest_alive") is not False]
            cand = alive or timed
            if cand:
                best = min(cand, key=lambda r: r.get("total_time_ms") or float("inf"))
        verified = [r.get("memory_equal") and r.get("disk_equal", True)
                    for r in rs if r.get("verify") or r.get("checked")]
        verified += [r.get("verified") for r in ok if r.get("digests")]
        row = {"scenario": k[0], "topology": k[1], "tool": k[2], "channels": k[3], "rate": k[4],
               "policy": k[5], "runs": len(rs), "ok": len(ok), "dead_guests": dead,
               "gave_up": sum(1 for r in rs if r.get("status") == "gave_up"),
               "memory_verified": (all(verified) if verified else None)}
        errs = [r.get("error") for r in rs if r.get("status") not in ("completed", "gave_up") and r.get("error")]
        if k[6]:
            row["mode"] = k[6]
        errs = errs or [r.get("error") for r in rs if r.get("guest_alive") is False and r.get("error")]
        if errs:
            row["first_error"] = str(errs[0])[:300]
        if best:
            for f in ("total_time_ms", "downtime_ms", "guest_gap_ms", "rounds", "bytes_sent", "tls_records",
                      "throughput_MBps", "links_used", "gbit_s", "dirty_method", "achieved_dirty_MBps",
                      "dst_huge_kb", "dst_mem", "switchover_reason", "throttle_pct", "write_rate_mbps",
                      "write_rate_asked_mbps", "loadavg", "timeline", "status", "src_alive",
                      "wall_ms", "wall_throughput_MBps", "src_peak_rss_mib", "dst_peak_rss_mib",
                      "src_guest_resident_mib", "dst_guest_resident_mib", "src_guest_huge_mib",
                      "dst_guest_huge_mib", "unpopulated_pages", "dst_data_pages", "verified", "verify_ms",
                      "downtime_breakdown", "populated", "mem",
                      "disk_bytes", "disk_blocks", "disk_zero_blocks", "disk_unallocated_blocks",
                      "src_allocated", "dst_allocated", "mirror_ready_ms", "dst_disk_sync_ms",
                      "disk_workload", "disk_size", "achieved_dirty_MBps"):
                if best.get(f) is not None:
                    row[f] = best[f]
            # all timed values, to show the spread
            if k[2] == "iperf3":
                row["all_MBps"] = [r.get("throughput_MBps") for r in timed]
            else:
                row["all_total_ms"] = [r.get("total_time_ms") for r in timed]
                row["all_downtime_ms"] = [r.get("downtime_ms") for r in ok if r.get("downtime_ms") is not None]
                row["all_guest_gap_ms"] = [r.get("guest_gap_ms") for r in ok if r.get("guest_gap_ms") is not None]
        rows.append(row)
    order = {t: i for i, t in enumerate(TOOLS_ORDER)}
    rows.sort(key=lambda r: (scen_order(r["scenario"] or 0), r["topology"] or "", r["rate"] or 0,
                             order.get(r["tool"], 99), r["channels"] or 0))
    return rows


def find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def fmt(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return ("%%.%df" % nd) % v
    return str(v)


def secs(r):
    if not r or r.get("total_time_ms") is None:
        return None
    return r["total_time_ms"] / 1000.0


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def cell_time(r):
    if not r:
        return "not run"
    if r.get("total_time_ms") is None:
        return "failed (%d/%d)" % (r["ok"], r["runs"])
    return "%.2f s / %s MB/s" % (secs(r), fmt(r.get("throughput_MBps"), 0))


def throughput_tables(rows, scen, md, ratios):
    topo = sorted({r["topology"] for r in rows if r["scenario"] == scen})
    for t in topo:
        rs = [r for r in rows if r["scenario"] == scen and r["topology"] == t]
        chans = sorted({r["channels"] for r in rs
                        if r["tool"] in ("pmigrate", "qemu-multifd", "iperf3", "loopcopy")})
        serial = find(rs, tool="pmigrate-serial")
        pre = find(rs, tool="qemu-precopy")
        md.append("Topology `%s`." % t)
        md.append("")
        md.append("| N | iperf3 N streams (link) | bare copy N streams (link + memory) | pmigrate N ch "
                  "| % of iperf3 | % of bare copy | QEMU multifd N ch (links used) "
                  "| pmigrate speedup vs multifd | vs pmigrate serial | vs QEMU pre-copy |")
        md.append("|---|---|---|---|---|---|---|---|---|---|")
        mbps = lambda r: (fmt(r.get("throughput_MBps"), 0) + " MB/s") if r and r.get("throughput_MBps") else "–"
        pcts = lambda x: (fmt(x * 100, 0) + "%") if x else "–"
        for n in chans:
            ip = find(rs, tool="iperf3", channels=n)
            bc = find(rs, tool="loopcopy", channels=n)
            pm = find(rs, tool="pmigrate", channels=n)
            qm = find(rs, tool="qemu-multifd", channels=n)
            pct = ratio((pm or {}).get("throughput_MBps"), (ip or {}).get("throughput_MBps"))
            pct_bc = ratio((pm or {}).get("throughput_MBps"), (bc or {}).get("throughput_MBps"))
            s_mf = ratio(secs(qm), secs(pm))
            s_ser = ratio(secs(serial), secs(pm))
            s_pre = ratio(secs(pre), secs(pm))
            md.append("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                n, mbps(ip), mbps(bc), cell_time(pm), pcts(pct), pcts(pct_bc),
                cell_time(qm) + ((" (%s)" % qm.get("links_used")) if qm and qm.get("links_used") else ""),
                (fmt(s_mf, 2) + "x") if s_mf else "–", (fmt(s_ser, 2) + "x") if s_ser else "–",
                (fmt(s_pre, 2) + "x") if s_pre else "–"))
            ratios.append({"scenario": scen, "topology": t, "channels": n,
                           "pmigrate_fraction_of_iperf3": pct, "pmigrate_fraction_of_bare_copy": pct_bc,
                           "bare_copy_fraction_of_iperf3": ratio((bc or {}).get("throughput_MBps"),
                                                                 (ip or {}).get("throughput_MBps")),
                           "speedup_vs_qemu_multifd": s_mf,
                           "speedup_vs_pmigrate_serial": s_ser, "speedup_vs_qemu_precopy": s_pre})
        md.append("")
        walls = []
        for n in chans:
            pm = find(rs, tool="pmigrate", channels=n)
            ip = find(rs, tool="iperf3", channels=n)
            qm = find(rs, tool="qemu-multifd", channels=n)
            if pm and pm.get("wall_ms"):
                w = ratio((pm or {}).get("wall_throughput_MBps"), (ip or {}).get("throughput_MBps"))
                walls.append("N=%d: %.2f s (%s MB/s, %s of iperf3%s)" % (
                    n, pm["wall_ms"] / 1000.0, fmt(pm.get("wall_throughput_MBps"), 0),
                    (fmt(w * 100, 0) + "%") if w else "–",
                    (", %sx QEMU multifd's total-time" % fmt(ratio(secs(qm), pm["wall_ms"] / 1000.0), 2))
                    if qm and secs(qm) else ""))
                ratios.append({"scenario": scen, "topology": t, "channels": n,
                               "pmigrate_wall_fraction_of_iperf3": w,
                               "speedup_wall_vs_qemu_multifd": ratio(secs(qm), pm["wall_ms"] / 1000.0)})
        if walls:
            md.append("pmigrate's wall clock (the `pmigrate migrate` command, what a user waits for): "
                      + "; ".join(walls) + ".")
            md.append("")
        md.append("Baselines: pmigrate 1 channel `--serial`: %s; QEMU classic pre-copy: %s." % (
            cell_time(serial), cell_time(pre)))
        thp = [r for r in rs if r["tool"] == "loopcopy-thp" and r.get("throughput_MBps")]
        for r in thp:
            bc = find(rs, tool="loopcopy", channels=r["channels"])
            md.append("Bare copy, %d streams, into anonymous memory with transparent huge pages "
                      "(%s MiB of 2 MiB pages): %s MB/s, %s of the memfd bare copy." % (
                          r["channels"], fmt((r.get("dst_huge_kb") or 0) // 1024, 0),
                          fmt(r["throughput_MBps"], 0),
                          (fmt(ratio(r["throughput_MBps"], (bc or {}).get("throughput_MBps")), 2) + "x")
                          if bc else "–"))
        huge = [r.get("dst_huge_kb") for r in rs if r["tool"] == "loopcopy" and r.get("dst_huge_kb") is not None]
        if huge:
            md.append("Bare copy's memfd destination (MADV_HUGEPAGE, like pmigrate's) got %s MiB of 2 MiB pages."
                      % fmt(max(huge) // 1024, 0))
        md.append("")


def gib(mode_size):
    """'16G' -> 16.0 (GiB), '512M' -> 0.5."""
    s = str(mode_size).upper()
    try:
        return float(s[:-1]) / (1024.0 if s.endswith("M") else 1.0) if s[-1] in "MG" else float(s) / 2**30
    except (ValueError, IndexError):
        return None


def scale_tables(rows, md, ratios):
    rs = [r for r in rows if r["scenario"] == "scale"]
    paused = sorted((r for r in rs if r["tool"] == "pmigrate-scale"), key=lambda r: gib(r.get("mode")) or 0)
    md.append("Paused, 1/8 populated (random bytes), every untouched page sent as one record per run, "
              "memory digests compared (their time excluded):")
    md.append("")
    md.append("| guest | populated | total time | wall clock | MB sent | never-populated pages | downtime "
              "| peak RSS source | peak RSS destination | destination guest memory (huge) | time per populated GiB | verified |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in paused:
        pop = gib(r.get("populated"))
        tpg = (r["total_time_ms"] / 1000.0 / pop) if r.get("total_time_ms") and pop else None
        md.append("| %s | %s | %s | %s | %s | %s | %s ms | %s MiB | %s MiB | %s MiB (%s) | %s s | %s |" % (
            r.get("mode"), r.get("populated", "?"),
            ("%.2f s" % (r["total_time_ms"] / 1000.0)) if r.get("total_time_ms") else "failed",
            ("%.2f s" % (r["wall_ms"] / 1000.0)) if r.get("wall_ms") else "–",
            fmt((r.get("bytes_sent") or 0) / 1e6, 0), fmt(r.get("unpopulated_pages"), 0),
            fmt(r.get("downtime_ms"), 1), fmt(r.get("src_peak_rss_mib"), 0), fmt(r.get("dst_peak_rss_mib"), 0),
            fmt(r.get("dst_guest_resident_mib"), 0), fmt(r.get("dst_guest_huge_mib"), 0),
            fmt(tpg, 2), {True: "yes", False: "NO", None: "–"}[r.get("memory_verified")]))
        ratios.append({"scenario": "scale", "mode": r.get("mode"), "seconds_per_populated_gib": tpg,
                       "dst_peak_rss_over_populated": ratio(r.get("dst_peak_rss_mib"), (pop or 0) * 1024)})
    md.append("")
    full = next((r for r in rs if r["tool"] == "pmigrate-full"), None)
    sparse = next((r for r in rs if r["tool"] == "pmigrate-sparse"), None)
    if full or sparse:
        md.append("Live, a zipf workload inside the populated part, %s channels, verified:" % (
            (full or sparse).get("channels")))
        md.append("")
        md.append("| VM | total time | downtime | guest-seen pause (with the digests) | MB sent | peak RSS destination | verified |")
        md.append("|---|---|---|---|---|---|---|")
        for r in (full, sparse):
            if r:
                md.append("| %s (%s populated) | %s | %s ms | %s ms | %s | %s MiB | %s |" % (
                    r.get("mode"), r.get("populated"),
                    ("%.2f s" % (r["total_time_ms"] / 1000.0)) if r.get("total_time_ms") else "failed",
                    fmt(r.get("downtime_ms"), 1), fmt(r.get("guest_gap_ms"), 1),
                    fmt((r.get("bytes_sent") or 0) / 1e6, 0), fmt(r.get("dst_peak_rss_mib"), 0),
                    {True: "yes", False: "NO", None: "–"}[r.get("memory_verified")]))
        md.append("")
        t = ratio(secs(sparse), secs(full))
        pop = gib((sparse or {}).get("populated"))
        m = ratio((sparse or {}).get("dst_peak_rss_mib"), (pop or 0) * 1024)
        # Per rep (the two run back to back): first touches of destination
        # memory decide much of each time on a paravirtualized host, so the
        # ratio of best times alone can mislead.
        per_rep = [b / a for a, b in zip((full or {}).get("all_total_ms") or [], (sparse or {}).get("all_total_ms") or [])
                   if a and b]
        if t or m:
            md.append("The big VM took %s the time of the fully populated one (best of each; per rep %s, median %s; "
                      "target at most 1.5x); its destination's peak RSS was %s of the populated size (target at most 1.10)." % (
                          (fmt(t, 2) + "x") if t else "–", ", ".join(fmt(x, 2) + "x" for x in per_rep) or "–",
                          (fmt(statistics.median(per_rep), 2) + "x") if per_rep else "–", fmt(m, 2)))
            md.append("")
        ratios.append({"scenario": "scale", "sparse_over_full_time": t, "sparse_over_full_time_per_rep": per_rep,
                       "sparse_dst_peak_rss_over_populated": m})
    idle = next((r for r in rs if r["tool"] == "pmigrate-idle"), None)
    if idle and idle.get("all_downtime_ms"):
        dts, gaps = idle["all_downtime_ms"], idle.get("all_guest_gap_ms") or []
        med = statistics.median(dts)
        gmed = statistics.median(gaps) if gaps else None
        bd = idle.get("downtime_breakdown") or {}
        md.append("An idle running %s VM, %s channels, %d migrations: downtime (engine) %s ms, median **%s ms** "
                  "(target at most 5 ms on a quiet machine); the pause the guest saw (heartbeat), median %s ms "
                  "(%s ms). Breakdown of the fastest: %s." % (
                      idle.get("mode"), idle.get("channels"), len(dts), ", ".join(fmt(d, 2) for d in dts),
                      fmt(med, 2), fmt(gmed, 2), ", ".join(fmt(g, 2) for g in gaps),
                      ", ".join("%s %s" % (k[:-3] if k.endswith("_ms") else k, fmt(v, 2)) for k, v in bd.items()) or "–"))
        md.append("")
        ratios.append({"scenario": "scale", "idle_median_downtime_ms": med, "idle_median_guest_gap_ms": gmed})


def live_tables(rows, scen, md, ratios):
    rs = [r for r in rows if r["scenario"] == scen]
    if not rs:
        return
    md.append("| dirty MB/s | tool | ch | total time | downtime (engine) | guest-visible gap | rounds "
              "| MB sent | dirtied while migrating | ok/runs | dead guests | memory verified |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rs:
        md.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d/%d | %d | %s |" % (
            fmt(r["rate"], 0), r["tool"] + (" (%s)" % r["mode"] if r.get("mode") else ""), r["channels"],
            (fmt(secs(r), 2) + " s") if secs(r) is not None else "failed",
            (fmt(r.get("downtime_ms"), 0) + " ms") if r.get("downtime_ms") is not None else "–",
            (fmt(r.get("guest_gap_ms"), 0) + " ms") if r.get("guest_gap_ms") is not None else "–",
            fmt(r.get("rounds")), fmt((r.get("bytes_sent") or 0) / 1e6, 0) if r.get("bytes_sent") else "–",
            (fmt(r["achieved_dirty_MBps"], 0) + " MB/s") if r.get("achieved_dirty_MBps") is not None else "–",
            r["ok"], r["runs"], r["dead_guests"],
            {True: "yes", False: "NO", None: "–"}[r.get("memory_verified")]))
    md.append("")
    methods = sorted({r["dirty_method"] for r in rs if r.get("dirty_method")})
    if methods:
        md.append("pmigrate's dirty tracking: %s (reported by the engine as `dirty_method`). "
                  "\"dirtied while migrating\" is what the workload achieved, not the rate it asked for."
                  % ", ".join("`%s`" % m for m in methods))
        md.append("")
    rates = sorted({r["rate"] for r in rs if r["rate"] is not None})
    lines = []
    for rate in rates:
        if scen == 3:
            pm = [r for r in rs if r["rate"] == rate and r["tool"] == "pmigrate"]
            for p in pm:
                q = find(rs, rate=rate, tool="qemu-multifd", channels=p["channels"])
                if not q:
                    continue
                tr = ratio(secs(q), secs(p))
                dr = ratio(q.get("downtime_ms"), p.get("downtime_ms"))
                ratios.append({"scenario": 3, "rate": rate, "channels": p["channels"],
                               "total_time_qemu_multifd_over_pmigrate": tr,
                               "downtime_qemu_multifd_over_pmigrate": dr})
                lines.append("- %s MB/s, %d ch: QEMU multifd / pmigrate total time %s, downtime %s" % (
                    fmt(rate, 0), p["channels"], (fmt(tr, 2) + "x") if tr else "–",
                    (fmt(dr, 2) + "x") if dr else "–"))
        elif scen == "linux":
            for p in [r for r in rs if r["rate"] == rate and r["tool"] == "pmvm"]:
                q = find(rs, rate=rate, tool="qemu-kvm", mode="multifd", channels=p["channels"])
                if not q:
                    continue
                tr = ratio(secs(q), secs(p))
                gr = ratio(q.get("guest_gap_ms"), p.get("guest_gap_ms"))
                dr = ratio(q.get("downtime_ms"), p.get("downtime_ms"))
                ratios.append({"scenario": "linux", "rate": rate, "channels": p["channels"],
                               "mode": p.get("mode"),
                               "total_time_qemu_kvm_multifd_over_pmvm": tr,
                               "guest_gap_qemu_kvm_multifd_over_pmvm": gr,
                               "downtime_qemu_kvm_multifd_over_pmvm": dr})
                lines.append("- %s MB/s, %d ch: QEMU-KVM multifd / pmvm+%s total time %s, "
                             "guest-seen pause %s, downtime %s" % (
                                 fmt(rate, 0), p["channels"], p.get("mode", "pmigrate"), (fmt(tr, 2) + "x") if tr else "–",
                                 (fmt(gr, 2) + "x") if gr else "–", (fmt(dr, 2) + "x") if dr else "–"))
        else:
            for p in [r for r in rs if r["rate"] == rate and r["tool"] == "pmigrate"]:
                b = find(rs, rate=rate, tool="pmigrate-barrier", channels=p["channels"])
                if not b:
                    continue
                tr = ratio(secs(b), secs(p))
                dr = ratio(b.get("downtime_ms"), p.get("downtime_ms"))
                ratios.append({"scenario": 4, "rate": rate, "channels": p["channels"],
                               "total_time_barrier_over_free": tr, "downtime_barrier_over_free": dr})
                lines.append("- %s MB/s, %d ch: barrier / barrier-free total time %s, downtime %s" % (
                    fmt(rate, 0), p["channels"], (fmt(tr, 2) + "x") if tr else "–",
                    (fmt(dr, 2) + "x") if dr else "–"))
    if lines:
        md.append("Ratios (above 1 means pmigrate%s is better):" % (" barrier-free" if scen == 4 else ""))
        md.append("")
        md.extend(lines)
        md.append("")


def tls_tables(rows, md, ratios):
    """TLS beside plain TCP: the same paused migration, interleaved in every rep."""
    rs = [r for r in rows if r["scenario"] == "tls"]
    for t in sorted({r["topology"] for r in rs}):
        plain = find(rs, topology=t, mode="none")
        md.append("%s:" % ("Loopback (both ends' encryption, decryption and copies share the cores)"
                           if t == "loopback" else "%s shaped links" % t))
        md.append("")
        md.append("| transport | records | ch | total time | MB/s | of plain | all runs (s) | load avg |")
        md.append("|---|---|---|---|---|---|---|---|")
        for mode, name in (("none", "plain TCP"), ("x509", "TLS 1.3, X.509"), ("psk", "TLS 1.3, PSK")):
            r = find(rs, topology=t, mode=mode)
            if not r:
                continue
            rel = ratio(r.get("throughput_MBps"), plain.get("throughput_MBps")) if plain and r is not plain else None
            md.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                name, r.get("tls_records", "-") if mode != "none" else "-", r["channels"], cell_time(r),
                fmt(r.get("throughput_MBps")), fmt(rel, 2) if rel else ("1" if r is plain else "-"),
                " ".join(fmt(x / 1000.0, 2) for x in r.get("all_total_ms") or [] if x),
                fmt(r.get("loadavg"), 2)))
            if rel:
                ratios.append({"scenario": "tls", "topology": t, "mode": mode, "channels": r["channels"],
                               "tls_vs_plain": round(rel, 3)})
        md.append("")
    md.append("\"of plain\": TLS throughput over plain TCP's, same run (above 1 would mean faster).")
    md.append("")


def mode_name(r):
    if r["tool"] == "pmigrate-serial":
        return "serial"
    if r["tool"] == "pmigrate":
        return "%d ch" % r["channels"]
    if r["tool"] == "pmigrate-barrier":
        return "%d ch barrier" % r["channels"]
    if r["tool"] == "qemu-multifd":
        return "QEMU multifd %d" % r["channels"]
    if r["tool"] == "qemu-precopy":
        return "QEMU pre-copy"
    return r["tool"]


def mode_order(r):
    t = {"pmigrate-serial": 0, "pmigrate": 1, "pmigrate-barrier": 1, "qemu-multifd": 5, "qemu-precopy": 6}
    return (t.get(r["tool"], 9), r["channels"] or 0, r["tool"] == "pmigrate-barrier")


def converged(r):
    return (r.get("status") == "completed" and r.get("switchover_reason") == "converged"
            and not r.get("throttle_pct"))


def how_it_ended(r):
    if r.get("tool", "").startswith("qemu"):
        if r.get("total_time_ms") is None:
            return "failed"
        return "dead guest" if r.get("dead_guests") else "completed"
    if r.get("gave_up"):
        return "gave up, VM runs at source"
    if r.get("total_time_ms") is None:
        return "failed"
    why = r.get("switchover_reason") or "?"
    if r.get("throttle_pct"):
        why += ", throttled %d%%" % r["throttle_pct"]
    return why


def sweep_tables(out, rows, scen, md, ratios):
    rs = [r for r in rows if r["scenario"] == scen]
    for t in sorted({r["topology"] for r in rs}):
        # Rows of verification runs only (dumps inside the pause: never timed) go below.
        verified = [r for r in rs if r["topology"] == t and r.get("memory_verified") is not None]
        verify_only = lambda r: r.get("memory_verified") is not None and r.get("total_time_ms") is None
        tr = sorted([r for r in rs if r["topology"] == t and not verify_only(r)],
                    key=lambda r: (r["policy"] or "", r["rate"] or 0, mode_order(r)))
        md.append("Topology `%s`." % t)
        md.append("")
        md.append("| asked MB/s | %smode | written while migrating | total time | downtime (engine) "
                  "| guest-seen pause | rounds | MB sent | switchover | load avg |" % ("policy | " if scen == 6 else ""))
        md.append("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if scen == 6 else ""))
        for r in tr:
            wr = r.get("write_rate_mbps", r.get("achieved_dirty_MBps"))
            md.append("| %s | %s%s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                fmt(r["rate"], 0), ("%s | " % r["policy"]) if scen == 6 else "", mode_name(r),
                (fmt(wr, 0) + " MB/s") if wr is not None else "–",
                (fmt(secs(r), 2) + " s") if secs(r) is not None else "–",
                (fmt(r.get("downtime_ms"), 0) + " ms") if r.get("downtime_ms") else "–",
                (fmt(r.get("guest_gap_ms"), 0) + " ms") if r.get("guest_gap_ms") is not None else "–",
                fmt(r.get("rounds")), fmt((r.get("bytes_sent") or 0) / 1e6, 0) if r.get("bytes_sent") else "–",
                how_it_ended(r) + ((" (%d dead of %d)" % (r["dead_guests"], r["ok"])) if r["dead_guests"] else ""),
                fmt(r.get("loadavg"), 1)))
        md.append("")
        for r in verified:
            md.append("Memory at the pause %s memory at the resume (untimed run with dumps): %s at %s MB/s."
                      % ("equals" if r["memory_verified"] else "DIFFERS from", mode_name(r), fmt(r["rate"], 0)))
            md.append("")
        if scen != 5:
            continue
        # Up to what converges, per mode.
        modes = sorted({(r["tool"], r["channels"]) for r in tr if r["tool"].startswith("pmigrate")},
                       key=lambda m: mode_order({"tool": m[0], "channels": m[1]}))
        lines = []
        for tool, ch in modes:
            mr = [r for r in tr if r["tool"] == tool and r["channels"] == ch]
            conv = [r["rate"] for r in mr if converged(r)]
            stop = [r for r in mr if not converged(r)]
            lines.append("%s: converged up to %s MB/s%s" % (
                mode_name(mr[0]), fmt(max(conv), 0) if conv else "–",
                ("; at %s MB/s: %s" % (fmt(stop[0]["rate"], 0), how_it_ended(stop[0]))) if stop else ""))
        md.append("Highest asked rate that converged without throttling: " + "; ".join(lines) + ".")
        md.append("")
        # Side-by-side ratios at each rate where both converged.
        lines = []
        for rate in sorted({r["rate"] for r in tr if r["rate"] is not None}):
            at = {(r["tool"], r["channels"]): r for r in tr if r["rate"] == rate}
            pairs = [("4 ch vs 1 ch", at.get(("pmigrate", 1)), at.get(("pmigrate", 4))),
                     ("4 ch vs serial", at.get(("pmigrate-serial", 1)), at.get(("pmigrate", 4)))]
            for n in (1, 2, 4):
                pairs.append(("barrier-free vs barrier, %d ch" % n, at.get(("pmigrate-barrier", n)),
                              at.get(("pmigrate", n))))
            for label, base, new in pairs:
                if not base or not new or secs(base) is None or secs(new) is None:
                    continue
                rt = ratio(secs(base), secs(new))
                rd = ratio(base.get("downtime_ms"), new.get("downtime_ms"))
                rg = ratio(base.get("guest_gap_ms"), new.get("guest_gap_ms"))
                ratios.append({"scenario": scen, "topology": t, "rate": rate, "comparison": label,
                               "total_time_ratio": rt, "downtime_ratio": rd, "guest_pause_ratio": rg,
                               "both_converged": converged(base) and converged(new)})
                lines.append("- %s MB/s, %s: total time %s, downtime %s, guest-seen pause %s%s" % (
                    fmt(rate, 0), label, (fmt(rt, 2) + "x") if rt else "–", (fmt(rd, 2) + "x") if rd else "–",
                    (fmt(rg, 2) + "x") if rg else "–",
                    "" if converged(base) and converged(new) else " (not both converged)"))
        if lines:
            md.append("Ratios of time taken, side by side at the same rate (above 1 means the first named is better):")
            md.append("")
            md.extend(lines)
            md.append("")
        # One timeline per mode: at the highest rate it converged (else the highest run).
        links = []
        for tool, ch in modes:
            mr = [r for r in tr if r["tool"] == tool and r["channels"] == ch and r.get("timeline")]
            conv = [r for r in mr if converged(r)]
            pick = max(conv or mr, key=lambda r: r["rate"] or 0) if (conv or mr) else None
            if pick and os.path.exists(pick["timeline"]):
                rel = os.path.relpath(pick["timeline"], out)
                links.append("[%s at %s MB/s](%s)" % (mode_name(pick), fmt(pick["rate"], 0), rel))
        if links:
            md.append("Timelines: " + ", ".join(links) + ".")
            md.append("")


def plots(out, rows, md):
    gp = shutil.which("gnuplot")
    pdir = os.path.join(out, "plots")
    os.makedirs(pdir, exist_ok=True)
    made = []
    specs = []
    for scen in (1, 2):
        for t in sorted({r["topology"] for r in rows if r["scenario"] == scen}):
            series = []
            for tool in ("iperf3", "loopcopy", "pmigrate", "qemu-multifd", "pmigrate-serial", "qemu-precopy"):
                pts = [(r["channels"], r["throughput_MBps"]) for r in rows
                       if r["scenario"] == scen and r["topology"] == t and r["tool"] == tool
                       and r.get("throughput_MBps")]
                if pts:
                    series.append((tool, sorted(pts)))
            if series:
                specs.append(("s%d_%s_throughput" % (scen, t), "%s (%s)" % (SCEN_TITLE[scen].split(":")[0], t),
                              "channels / streams", "MB/s", series, True))
    for scen, metric, label in ((3, "total_time_ms", "total time (s)"), (3, "downtime_ms", "downtime (ms)"),
                                (3, "guest_gap_ms", "guest-visible gap (ms)"),
                                ("linux", "total_time_ms", "total time (s)"),
                                ("linux", "guest_gap_ms", "guest-seen pause (ms)"),
                                (4, "total_time_ms", "total time (s)"), (4, "downtime_ms", "downtime (ms)")):
        series = []
        for tool in ("pmigrate", "pmigrate-barrier", "pmigrate-serial", "qemu-multifd", "qemu-precopy",
                     "pmvm", "qemu-kvm"):
            for ch in sorted({r["channels"] for r in rows if r["scenario"] == scen and r["tool"] == tool}):
                pts = [(r["rate"], r[metric] / (1000.0 if metric == "total_time_ms" else 1.0)) for r in rows
                       if r["scenario"] == scen and r["tool"] == tool and r["channels"] == ch
                       and r.get(metric) is not None and r["rate"] is not None]
                if pts:
                    series.append(("%s %dch" % (tool, ch), sorted(pts)))
        if series:
            specs.append(("s%s_%s" % (scen, metric.replace("_ms", "")), SCEN_TITLE[scen].split(":")[0],
                          "dirty rate (MB/s)", label, series, False))
    for t in sorted({r["topology"] for r in rows if r["scenario"] == 5}):
        for metric, label in (("total_time_ms", "total time (s)"), ("downtime_ms", "downtime (ms)"),
                              ("guest_gap_ms", "guest-seen pause (ms)")):
            series = []
            for m in sorted({(r["tool"], r["channels"]) for r in rows if r["scenario"] == 5 and r["topology"] == t},
                            key=lambda m: mode_order({"tool": m[0], "channels": m[1]})):
                pts = [(r["rate"], r[metric] / (1000.0 if metric == "total_time_ms" else 1.0)) for r in rows
                       if r["scenario"] == 5 and r["topology"] == t and (r["tool"], r["channels"]) == m
                       and r.get(metric) is not None and r["rate"] is not None]
                if pts:
                    series.append((mode_name({"tool": m[0], "channels": m[1]}), sorted(pts)))
            if series:
                specs.append(("s5_%s_%s" % (t, metric.replace("_ms", "")), "Dirty-rate sweep (%s)" % t,
                              "asked dirty rate (MB/s)", label, series, False))
    for name, title, xl, yl, series, logx in specs:
        dat = os.path.join(pdir, name + ".dat")
        with open(dat, "w") as f:
            for tool, pts in series:
                f.write('"%s"\n' % tool)
                for x, y in pts:
                    f.write("%s %s\n" % (x, y))
                f.write("\n\n")
        script = os.path.join(pdir, name + ".gp")
        with open(script, "w") as f:
            f.write('set terminal svg size 720,420 dynamic enhanced font "sans,11"\n')
            f.write('set output "%s"\n' % os.path.join(pdir, name + ".svg"))
            f.write('set title "%s"\nset xlabel "%s"\nset ylabel "%s"\n' % (title, xl, yl))
            f.write("set key outside right top\nset grid\nset yrange [0:*]\n")
            if logx:
                f.write("set logscale x 2\nset xrange [0.8:*]\n")
            f.write("plot " + ", ".join('"%s" index %d using 1:2 with linespoints title columnheader(1)' % (dat, i)
                                        for i in range(len(series))) + "\n")
        if gp:
            r = subprocess.run([gp, script], capture_output=True)
            if r.returncode == 0 and os.path.exists(os.path.join(pdir, name + ".svg")):
                made.append("plots/%s.svg" % name)
    if not gp:
        md.append("_Plots not drawn: gnuplot is not installed (the .gp and .dat files are in plots/)._")
    elif made:
        md.append("Plots: " + ", ".join("[%s](%s)" % (os.path.basename(m), m) for m in made))
    md.append("")
    return made


def storage_tables(rows, md, ratios):
    """Scenario storage: per topology, paused and live, every tool; then the
    ratios that matter (4 channels against 1, pmigrate against QEMU)."""
    rs = [r for r in rows if r["scenario"] == "storage"]
    for t in sorted({r["topology"] for r in rs}):
        md.append("### %s" % t)
        md.append("")
        md.append("| VM | tool | ch | total time | downtime | guest-seen pause | MB sent | disk MB sent "
                  "| destination allocated / source | verified | load avg |")
        md.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in sorted((x for x in rs if x["topology"] == t),
                        key=lambda x: (x.get("mode") or "", TOOLS_ORDER.index(x["tool"]) if x["tool"] in TOOLS_ORDER
                                       else 99, x["channels"] or 0)):
            alloc = "–"
            if r.get("dst_allocated") is not None and r.get("src_allocated"):
                alloc = "%.0f / %.0f MiB" % (r["dst_allocated"] / 1048576, r["src_allocated"] / 1048576)
            disk = r.get("disk_bytes")
            md.append("| %s | %s | %s | %s | %s ms | %s | %s | %s | %s | %s | %s |" % (
                r.get("mode") or "?", r["tool"], r["channels"], cell_time(r), fmt(r.get("downtime_ms")),
                ("%s ms" % fmt(r["guest_gap_ms"])) if r.get("guest_gap_ms") is not None else "–",
                fmt(r["bytes_sent"] / 1e6, 0) if r.get("bytes_sent") else "–",
                fmt(disk / 1e6, 0) if disk else "–", alloc,
                {True: "yes", False: "NO", None: "–"}[r.get("memory_verified")], fmt(r.get("loadavg"), 1)))
        md.append("")
        lines = []
        for mode in ("paused", "live"):
            p4 = find(rs, topology=t, tool="pmigrate", channels=4, mode=mode)
            p1 = find(rs, topology=t, tool="pmigrate", channels=1, mode=mode)
            x = ratio(secs(p1), secs(p4))
            if x:
                lines.append("pmigrate 4 channels vs 1 (%s VM): %.2fx shorter" % (mode, x))
                ratios.append({"scenario": "storage", "topology": t, "mode": mode,
                               "comparison": "pmigrate 4ch vs 1ch", "speedup": round(x, 2)})
            for q in ("qemu-mirror-multifd", "qemu-mirror", "qemu-blockmig"):
                qr = [r for r in rs if r["topology"] == t and r["tool"] == q and r.get("mode") == mode]
                for qq in qr:
                    x = ratio(secs(qq), secs(p4))
                    if x:
                        lines.append("pmigrate 4 channels vs %s %sch (%s VM): %.2fx shorter" % (
                            q, qq["channels"], mode, x))
                        ratios.append({"scenario": "storage", "topology": t, "mode": mode,
                                       "comparison": "pmigrate 4ch vs %s %sch" % (q, qq["channels"]),
                                       "speedup": round(x, 2)})
        if lines:
            md.append("Ratios (above 1: pmigrate 4 channels is faster):")
            md.append("")
            md.extend("- " + ln for ln in lines)
            md.append("")


def main():
    out = sys.argv[1]
    meta, runs = load(out)
    rows = best_rows(runs)
    md = ["# pmigrate benchmark summary", ""]
    if meta:
        md.append("Run %s on %s: %s CPUs, kernel %s, %s; guest memory %s, %s rep(s) per configuration "
                  "(best of them shown), quick=%s." % (
                      meta.get("date", "?"), meta.get("host", "?"), meta.get("cpus", "?"),
                      meta.get("kernel", "?"), meta.get("qemu", "?"), meta.get("mem", "?"),
                      meta.get("reps", "?"), meta.get("quick", "?")))
        if meta.get("pmigrate"):
            md.append("pmigrate: %s." % meta["pmigrate"])
        md.append("")
        for n in meta.get("notes", []):
            md.append("- " + n)
        if meta.get("notes"):
            md.append("")
    ratios = []
    for scen in SCENARIOS:
        if not any(r["scenario"] == scen for r in rows):
            continue
        md.append("## " + SCEN_TITLE[scen])
        md.append("")
        if scen in (1, 2):
            throughput_tables(rows, scen, md, ratios)
        elif scen in (5, 6):
            sweep_tables(out, rows, scen, md, ratios)
        elif scen == "scale":
            scale_tables(rows, md, ratios)
        elif scen == "tls":
            tls_tables(rows, md, ratios)
        elif scen == "storage":
            storage_tables(rows, md, ratios)
        else:
            live_tables(rows, scen, md, ratios)
    errs = [r for r in rows if r.get("first_error")]
    if errs:
        md.append("## Failures")
        md.append("")
        for r in errs:
            md.append("- scenario %s %s %s %sch rate %s: %d/%d completed; first error: `%s`" % (
                r["scenario"], r["topology"], r["tool"], r["channels"], fmt(r["rate"], 0), r["ok"], r["runs"],
                r["first_error"].replace("`", "'").replace("\n", " ")[:240]))
        md.append("")
    made = plots(out, rows, md)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"meta": meta, "best": rows, "ratios": ratios, "plots": made, "runs": runs}, f, indent=1)
    fields = ["scenario", "topology", "tool", "channels", "rate", "policy", "runs", "ok", "dead_guests",
              "memory_verified", "total_time_ms", "downtime_ms", "guest_gap_ms", "rounds", "bytes_sent",
              "throughput_MBps", "achieved_dirty_MBps", "write_rate_mbps", "switchover_reason", "throttle_pct",
              "loadavg", "links_used", "first_error"]
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        wr.writeheader()
        for r in rows:
            wr.writerow(r)
    print("\n".join(md))


if __name__ == "__main__":
    main()
