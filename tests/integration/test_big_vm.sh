#!/bin/bash
# Big VMs cost what they touched: a 4 GiB synthetic VM that has written
# 256 MiB (a zipf workload inside it) migrates over 4 channels with
# --verify; the untouched memory is never read, sent as data or allocated
# on either side, and the destination's resident memory stays near the
# populated size.  The same with a memfd-backed 1 GiB VM (SEEK_DATA path).
# A VM larger than the host's memory that touched 64M starts and migrates.
# A preallocating destination holds all its memory and takes a migration.
# Then an idle VM: the pause's breakdown adds up to the downtime.
set -u
. "$(dirname "$0")/lib.sh"

MIB=$((1 << 20))

# peak_rss_mib NAME: VmHWM of a VM process, MiB.
peak_rss_mib() { awk '/^VmHWM/ { print int($2 / 1024) }' "/proc/${VMPID[$1]}/status"; }

# jget FILE EXPR: a Python expression over the report dict r.
jget() { "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$1"; }

# le A B LABEL: integer A <= B.
le() {
	[ "$1" -le "$2" ] && return 0
	echo "$3: $1 > $2" | diag
	return 1
}

# big LABEL MEM POPULATED BACKEND WORKLOAD
big() {
	local label=$1 mem=$2 pop=$3 backend=$4 wl=$5 popb vmb
	popb=$(($(numfmt --from=iec "$pop")))
	vmb=$(($(numfmt --from=iec "$mem")))
	start_vm "$label-s" --mem "$mem" --populated "$pop" --mem-backend "$backend" --workload "$wl" || return 1
	start_vm "$label-d" --mem "$mem" --mem-backend "$backend" --incoming 127.0.0.1:0 || return 1
	migrate "$label" "$label-s" --to "$(incoming_of "$label-d")" --channels 4 --verify
	local j="$T/$label.json"
	check "$label: migrate --verify exits 0" rc_is 0 "$MIG_RC" migrate
	[ "$MIG_RC" = 0 ] || { diag <"$T/$label.err"; return 1; }
	check "$label: memory verified (digests at pause and before resume)" \
		test "$(jget "$j" 'r.get("verified")')" = True
	local untouched=$(((vmb - popb) / 4096))
	check "$label: the $(((vmb - popb) / MIB)) MiB never written went as unpopulated records, never as data" \
		le "$untouched" "$(jget "$j" 'r["unpopulated_pages"]')" "unpopulated pages"
	check "$label: bytes sent stay near the populated size" \
		le "$(jget "$j" 'r["bytes_sent"]')" $((popb * 3 / 2)) "bytes sent"
	echo "# $label: sent $(($(jget "$j" 'r["bytes_sent"]') / MIB)) MiB in $(jget "$j" 'round(r["total_time_ms"])') ms," \
		"downtime $(jget "$j" 'round(r["downtime_ms"], 1)') ms, verify $(jget "$j" 'round(r["verify_ms"])') ms;" \
		"peak RSS source $(peak_rss_mib "$label-s") MiB, destination $(peak_rss_mib "$label-d") MiB"
	# Guest memory resident on each side (from the VMs themselves).
	local sres dres
	sres=$(status_get "$label-s" memory.resident_bytes)
	dres=$(status_get "$label-d" memory.resident_bytes)
	echo "# $label: guest memory resident: source $((sres / MIB)) MiB, destination $((dres / MIB)) MiB" \
		"(huge pages $(($(status_get "$label-d" memory.huge_bytes) / MIB)) MiB) of $((vmb / MIB)) MiB"
	check "$label: the source did not allocate untouched memory by scanning it" \
		le "$sres" $((popb * 11 / 10 + 4 * MIB)) "source resident"
	check "$label: the destination holds about what was populated" \
		le "$dres" $((popb * 11 / 10 + 4 * MIB)) "destination resident"
	# No prefault: the destination process never held much more than that.
	check "$label: the destination's peak RSS stays near the populated size" \
		le "$(peak_rss_mib "$label-d")" $((popb * 11 / 10 / MIB + 200)) "destination peak RSS MiB"
	check "$label: destination runs" wait_state "$label-d" running 10
	check "$label: destination heartbeat advances" hb_advances "$label-d"
	check "$label: quit source" quit_vm "$label-s"
	check "$label: quit destination" quit_vm "$label-d"
}

# refused_vm ARGS...: pmigrate vm exits 1 at once, saying it cannot provide the memory.
refused_vm() {
	local out rc
	out=$(timeout 30 "$PM" vm --control "$T/refused.sock" "$@" 2>&1)
	rc=$?
	[ "$rc" = 1 ] && [[ "$out" == *"cannot provide"* ]] && return 0
	echo "exit $rc: $out" | diag
	return 1
}

big anon 4G 256M anon zipf,rate=50MB/s,hot=10%
big memfd 1G 128M memfd random,rate=20MB/s

# A guest larger than this host could ever hold, that has touched little:
# the memory check counts what it will hold (--populated), not --mem.
avail_gib=$(awk '/^MemAvailable/ { print int($2 / 1048576) }' /proc/meminfo)
sparse="$((avail_gib * 3 / 2 + 1))G"
check "sparse: a $sparse VM without --populated is refused on a host with $avail_gib GiB available" \
	refused_vm --mem "$sparse"
start_vm sparse-s --mem "$sparse" --populated 64M --workload random,rate=20MB/s
start_vm sparse-d --mem "$sparse" --populated 64M --incoming 127.0.0.1:0
migrate sparse sparse-s --to "$(incoming_of sparse-d)" --channels 4 --verify
check "sparse: migrate --verify of the $sparse VM with 64M populated exits 0" rc_is 0 "$MIG_RC" migrate
[ "$MIG_RC" = 0 ] || diag <"$T/sparse.err"
check "sparse: memory verified" test "$(jget "$T/sparse.json" 'r.get("verified")')" = True
check "sparse: destination runs" wait_state sparse-d running 10
check "sparse: quit source" quit_vm sparse-s
check "sparse: quit destination" quit_vm sparse-d

# A destination that preallocates (--prealloc, as QEMU's prealloc=on) holds all
# of its memory before the migration and takes one; preallocating more than the
# host has is refused up front, whatever --populated says.
check "prealloc: a $sparse destination with --prealloc is refused even with --populated 64M" \
	refused_vm --mem "$sparse" --populated 64M --prealloc --incoming 127.0.0.1:0
start_vm pre-s --mem 256M --populated 64M --workload random,rate=20MB/s
start_vm pre-d --mem 256M --prealloc --incoming 127.0.0.1:0
check "prealloc: the destination holds all 256 MiB before the migration" \
	le $((256 * MIB)) "$(status_get pre-d memory.resident_bytes)" "destination resident"
check "prealloc: the destination says how long preallocating took" \
	test -n "$(status_get pre-d memory.prealloc_ms)"
migrate pre pre-s --to "$(incoming_of pre-d)" --channels 4 --verify
check "prealloc: migrate --verify into the preallocated destination exits 0" rc_is 0 "$MIG_RC" migrate
[ "$MIG_RC" = 0 ] || diag <"$T/pre.err"
check "prealloc: memory verified" test "$(jget "$T/pre.json" 'r.get("verified")')" = True
check "prealloc: destination runs" wait_state pre-d running 10
check "prealloc: quit source" quit_vm pre-s
check "prealloc: quit destination" quit_vm pre-d

# An idle VM: the pause is short and its breakdown adds up.
start_vm idle-s --mem 512M --populated 64M
start_vm idle-d --mem 512M --incoming 127.0.0.1:0
migrate idle idle-s --to "$(incoming_of idle-d)" --channels 4
check "idle: migrate exits 0" rc_is 0 "$MIG_RC" migrate
j="$T/idle.json"
echo "# idle: downtime $(jget "$j" 'round(r["downtime_ms"], 2)') ms = $(jget "$j" '" + ".join("%s %.2f" % (k[:-3], v) for k, v in r["downtime_breakdown"].items())')"
check "idle: the breakdown adds up to the downtime" \
	"$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); s=sum(r["downtime_breakdown"].values()); sys.exit(abs(s - r["downtime_ms"]) > max(1.0, 0.1 * r["downtime_ms"]))' "$j"
check "idle: the final round visited no clean chunk (nothing to send)" \
	test "$(jget "$j" 'r["rounds"][-1]["pages"] + r["rounds"][-1]["zero_pages"]')" -le 2
check "idle: quit source" quit_vm idle-s
check "idle: quit destination" quit_vm idle-d
finish
