#!/bin/bash
# A link taken down mid-migration: source and destination in their own
# network namespaces, joined by 4 veth links shaped to 200 Mbit/s each (so a
# 256 MiB migration lasts well over 2 s), channel i over link i+1.  Half a
# second into the migration link 3 goes down (`ip link set ... down`):
# channel 2 is lost, its work moves to the other three, the migration
# completes with memory verified and the report names channel 2.  Then the
# same with every link down: the migration fails and the source runs on.
# (Plain TCP between the namespaces: --insecure; TLS with failover is
# tested in the engine tests.)  Needs root (namespaces); reports a skip
# otherwise.
set -u
. "$(dirname "$0")/lib.sh"
. "$HERE/../../bench/lib/topo.sh"

if [ "$(id -u)" != 0 ] || ! topo_up_links 4 200mbit 2>"$T/topo.err"; then
	echo "1..0 # SKIP no network namespaces here (needs root): $(head -1 "$T/topo.err" 2>/dev/null)"
	topo_down
	exit 0
fi
trap 'topo_down; cleanup' EXIT

dst_addrs() {
	local i a=()
	for i in 1 2 3 4; do a+=("$(topo_dst_addr "$i"):7000"); done
	local IFS=,
	echo "${a[*]}"
}

# migrate_bg NAME SRC ARGS...: pmigrate migrate in the background (MPID).
migrate_bg() {
	local name=$1 src=$2
	shift 2
	timeout $((120 * SLOW)) "$PM" migrate --control "$T/$src.sock" --no-progress \
		--json "$T/$name.json" "$@" >"$T/$name.out" 2>"$T/$name.err" &
	MPID=$!
}

# --- one link of four down mid-migration
VM_PREFIX=(ip netns exec "$TOPO_SRC")
start_vm s1 --mem 256M --fill random --workload random,rate=20MB/s --dump-at-pause "$T/s1.pause" ||
	not_ok "start the source"
VM_PREFIX=(ip netns exec "$TOPO_DST")
start_vm d1 --mem 256M --incoming "$(dst_addrs)" --insecure --timeout 3000 --dump-on-resume "$T/d1.resume" ||
	not_ok "start the destination"
VM_PREFIX=()
t0=$(now_ms)
migrate_bg mig1 s1 --to "$(dst_addrs)" --insecure --channels 4 --timeout 3000
if wait_state s1 migrating 20; then
	sleep 0.5        # 256 MiB cannot cross 4 x 200 Mbit/s in under 2.6 s
	check "link down: the migration was still running" state_is s1 migrating
	ip -n "$TOPO_SRC" link set "pm${TOPO_ID}s3" down
	tdown=$(now_ms)
else
	not_ok "link down: the migration started"
fi
wait $MPID
MIG_RC=$?
t1=$(now_ms)
check "link down: migrate exits 0" rc_is 0 "$MIG_RC" "migrate"
[ "$MIG_RC" = 0 ] || diag <"$T/mig1.err"
check "link down: memory verified" same_memory "$T/s1.pause" "$T/d1.resume"
check "link down: destination runs" wait_state d1 running 10
check "link down: destination heartbeat advances" hb_advances d1
check "link down: source is migrated" state_is s1 migrated
check "link down: report names channel 2 as lost" \
	test "$("${TOOL[@]}" get lost_channels.0.channel <"$T/mig1.json")" = 2
echo "# migration $((t1 - t0)) ms, link down at +$((tdown - t0)) ms; lost: $("${TOOL[@]}" get lost_channels.0.reason <"$T/mig1.json"), at $("${TOOL[@]}" get lost_channels.0.at_ms <"$T/mig1.json") ms; resent pages $("${TOOL[@]}" get resent_pages <"$T/mig1.json")"
check "vm s1 quits" quit_vm s1
check "vm d1 quits" quit_vm d1
ip -n "$TOPO_SRC" link set "pm${TOPO_ID}s3" up

# --- every link down mid-migration: fails, the source runs on
VM_PREFIX=(ip netns exec "$TOPO_SRC")
start_vm s2 --mem 256M --fill random --workload random,rate=20MB/s || not_ok "start the source"
VM_PREFIX=(ip netns exec "$TOPO_DST")
start_vm d2 --mem 256M --incoming "$(dst_addrs)" --insecure --timeout 3000 --dump-on-resume "$T/d2.resume" ||
	not_ok "start the destination"
VM_PREFIX=()
migrate_bg mig2 s2 --to "$(dst_addrs)" --insecure --channels 4 --timeout 3000
if wait_state s2 migrating 20; then
	sleep 0.5
	for i in 1 2 3 4; do ip -n "$TOPO_SRC" link set "pm${TOPO_ID}s$i" down; done
else
	not_ok "all links down: the migration started"
fi
wait $MPID
MIG_RC=$?
check "all links down: migrate exits 1" rc_is 1 "$MIG_RC" "migrate"
check "all links down: migrate says why" grep_file "$T/mig2.err" "every channel is lost"
check "all links down: source runs" wait_state s2 running 10
check "all links down: source heartbeat advances" hb_advances s2
check "all links down: destination exits non-zero" exited_nonzero d2 30
check "all links down: destination never resumed" never_resumed d2
check "vm s2 quits" quit_vm s2
finish
