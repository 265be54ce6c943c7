#!/bin/bash
# Faults injected into live migrations between VM processes (pmfault, the
# frame-aware proxy of tests/fault, in front of some channels):
#   - DONE lost on one channel: the migration completes;
#   - DONE lost on every channel: never two running copies -- the
#     destination runs, the source stays paused in state "unknown" until
#     management decides (here: quit);
#   - cancel: the source runs on, the destination exits cleanly;
#   - the source killed mid-migration: the destination exits non-zero and
#     never runs a partial VM;
#   - a stalled channel: with failover the migration completes within
#     --timeout plus a second; without, it fails within that and the source
#     runs on.
# Usage: test_faults.sh PMIGRATE PMFAULT
set -u
. "$(dirname "$0")/lib.sh"
FAULT=${2:?usage: $0 PMIGRATE PMFAULT}

# source_runs LABEL VM: after a failed migration the source runs.
source_runs() {
	check "$1: source state is running" wait_state "$2" running 10
	check "$1: source heartbeat advances" hb_advances "$2"
}

# elapsed_below LABEL MS START_MS END_MS
elapsed_below() {
	local dt=$(($4 - $3))
	[ "$dt" -le "$2" ] && return 0
	echo "$1: took $dt ms (limit $2 ms)" | diag
	return 1
}

# --- DONE lost on one of two channels: one DONE is enough.
start_vm s1 --mem 64M --workload random,rate=50MB/s,threads=2 --dump-at-pause "$T/s1.pause" ||
	not_ok "start s1"
start_vm d1 --mem 64M --incoming 127.0.0.1:0 --dump-on-resume "$T/d1.resume" || not_ok "start d1"
start_fault f1 "$(incoming_of d1)" "dir=to-src,frame=DONE,action=drop"
migrate mig1 s1 --to "$(incoming_of d1),$FAULT_ADDR" --channels 2 --timeout 5000
check "DONE lost on one channel: migrate exits 0" rc_is 0 "$MIG_RC" "migrate"
check "DONE lost on one channel: the injector dropped it" grep_file "$T/f1.log" "dropped DONE"
check "DONE lost on one channel: source is migrated" state_is s1 migrated
check "DONE lost on one channel: destination runs" wait_state d1 running 10
check "DONE lost on one channel: memory verified" same_memory "$T/s1.pause" "$T/d1.resume"
check "vm s1 quits" quit_vm s1
check "vm d1 quits" quit_vm d1

# --- DONE lost on every channel: the destination runs; the source must not.
start_vm s2 --mem 64M --workload random,rate=50MB/s,threads=2 --dump-at-pause "$T/s2.pause" ||
	not_ok "start s2"
start_vm d2 --mem 64M --incoming 127.0.0.1:0 --dump-on-resume "$T/d2.resume" || not_ok "start d2"
start_fault f2a "$(incoming_of d2)" "dir=to-src,frame=DONE,action=drop"
fa=$FAULT_ADDR
start_fault f2b "$(incoming_of d2)" "dir=to-src,frame=DONE,action=drop"
migrate mig2 s2 --to "$fa,$FAULT_ADDR" --channels 2 --timeout 1000
check "DONE lost everywhere: migrate exits 3 (outcome unknown)" rc_is 3 "$MIG_RC" "migrate"
check "DONE lost everywhere: migrate says so" grep_file "$T/mig2.err" "outcome unknown.*stays paused here"
check "DONE lost everywhere: report status is unknown" \
	test "$("${TOOL[@]}" get status <"$T/mig2.json")" = unknown
check "DONE lost everywhere: both DONEs were dropped" \
	test "$(grep -c 'dropped DONE' "$T/f2a.log" "$T/f2b.log" | awk -F: '{s+=$2} END {print s}')" = 2
check "DONE lost everywhere: destination runs" wait_state d2 running 10
check "DONE lost everywhere: destination heartbeat advances" hb_advances d2
check "DONE lost everywhere: source state is unknown" state_is s2 unknown
check "DONE lost everywhere: source is paused (never two running copies)" hb_stuck s2
check "DONE lost everywhere: status says why" \
	grep -q "outcome unknown" <<<"$(status_get s2 last_migration.error)"
check "DONE lost everywhere: memory verified" same_memory "$T/s2.pause" "$T/d2.resume"
check "DONE lost everywhere: migrate says how to decide" grep_file "$T/mig2.err" "pmigrate cont --control .*pmigrate quit --control"
# Management saw the destination running: it drops the source.
"$PM" quit --control "$T/s2.sock" >"$T/quit2.out" 2>&1
check "DONE lost everywhere: pmigrate quit exits 0" rc_is 0 $? "quit"
check "DONE lost everywhere: the source VM process ends" wait_exit s2 30
check "DONE lost everywhere: it exits 0" rc_is 0 "${VMRC[s2]}" "source"
check "vm d2 quits" quit_vm d2

# --- DONE lost everywhere while the destination does NOT run the VM (its
# state is refused after every END went out... here: the destination dies
# right after END): the source stays paused in "unknown" until management
# finds the destination gone and sends cont.
start_vm s7 --mem 64M --workload random,rate=50MB/s || not_ok "start s7"
start_vm d7 --mem 64M --incoming 127.0.0.1:0 --dump-on-resume "$T/d7.resume" || not_ok "start d7"
start_fault f7 "$(incoming_of d7)" "dir=to-dest,frame=END,action=blackhole"
migrate mig7 s7 --to "$FAULT_ADDR" --channels 1 --timeout 1000
check "END lost: migrate exits 3 (outcome unknown)" rc_is 3 "$MIG_RC" "migrate"
check "END lost: source state is unknown" state_is s7 unknown
check "END lost: the destination did not resume" never_resumed d7
"$PM" cont --control "$T/s7.sock" >"$T/cont7.out" 2>&1
check "END lost: pmigrate cont exits 0" rc_is 0 $? "cont"
source_runs "END lost, then cont" s7
check "vm s7 quits" quit_vm s7

# --- cancel: channel 3 of 4 stalls after 1 MB, so the migration waits (its
# timeout is long) until the cancel.
start_vm s3 --mem 256M --fill random --workload random,rate=100MB/s || not_ok "start s3"
start_vm d3 --mem 256M --incoming 127.0.0.1:0 --dump-on-resume "$T/d3.resume" || not_ok "start d3"
daddr=$(incoming_of d3)
start_fault f3 "$daddr" "dir=to-dest,bytes=1M,action=stall"
"$PM" cancel --control "$T/s3.sock" >"$T/cancel0.out" 2>&1
check "cancel with no migration: exit 1" rc_is 1 $? "cancel"
check "cancel with no migration: says so" grep_file "$T/cancel0.out" "no migration is running"
(migrate mig3 s3 --to "$daddr,$daddr,$daddr,$FAULT_ADDR" --channels 4 --timeout 60000; exit $MIG_RC) &
mpid=$!
if wait_file "$T/f3.log" stalled 60; then
	check "cancel: the source was migrating" state_is s3 migrating
	t0=$(now_ms)
	"$PM" cancel --control "$T/s3.sock" >"$T/cancel.out" 2>&1
	check "cancel: pmigrate cancel exits 0" rc_is 0 $? "cancel"
else
	not_ok "cancel: the source was migrating"
fi
wait $mpid
MIG_RC=$?
t1=$(now_ms)
check "cancel: migrate exits 1" rc_is 1 "$MIG_RC" "migrate"
check "cancel: migrate says it was cancelled" grep_file "$T/mig3.err" "migration cancelled"
# (2 s; sanitizer builds on a loaded machine get slack: the point is that it
# does not wait for the 60 s timeout)
check "cancel: it ended within 2 s" elapsed_below cancel $((2000 * SLOW)) "$t0" "$t1"
source_runs "cancel" s3
check "cancel: destination exits 0" wait_exit d3 20
check "cancel: destination exit status 0" rc_is 0 "${VMRC[d3]}" "destination"
check "cancel: destination says the source cancelled" grep_file "$T/d3.err" "source cancelled the migration"
check "cancel: destination never resumed" never_resumed d3

# --- the source killed mid-migration (channel 3 stalled, so it is mid-way).
start_vm d4 --mem 256M --incoming 127.0.0.1:0 --timeout 3000 --dump-on-resume "$T/d4.resume" ||
	not_ok "start d4"
daddr=$(incoming_of d4)
start_fault f4 "$daddr" "dir=to-dest,bytes=1M,action=stall"
(migrate mig4 s3 --to "$daddr,$daddr,$daddr,$FAULT_ADDR" --channels 4 --timeout 60000; exit $MIG_RC) &
mpid=$!
if wait_file "$T/f4.log" stalled 60; then
	kill -KILL "${VMPID[s3]}"
	wait_exit s3 10
	check "source killed: it died of SIGKILL" rc_is 137 "${VMRC[s3]}" "source"
else
	not_ok "source killed: the migration was under way"
fi
wait $mpid
check "source killed: destination exits non-zero" exited_nonzero d4 20
check "source killed: destination says why" grep_file "$T/d4.err" "incoming migration failed: .*channel"
check "source killed: destination never ran a partial VM" never_resumed d4

# --- a stalled channel (nothing it carries after its HELLO arrives, nothing
# is closed), with failover (the default): its work moves to the other
# channel within --timeout + 1 s and the migration completes, verified.
start_vm s5 --mem 64M --fill random --workload random,rate=50MB/s --dump-at-pause "$T/s5.pause" ||
	not_ok "start s5"
start_vm d5 --mem 64M --incoming 127.0.0.1:0 --timeout 2000 --dump-on-resume "$T/d5.resume" ||
	not_ok "start d5"
daddr=$(incoming_of d5)
start_fault f5 "$daddr" "dir=to-dest,bytes=48,action=stall"
t0=$(now_ms)
migrate mig5 s5 --to "$daddr,$FAULT_ADDR" --channels 2 --timeout 2000
t1=$(now_ms)
check "stalled channel: the injector stalled it" grep_file "$T/f5.log" "stalled"
check "stalled channel: migrate exits 0 (failover)" rc_is 0 "$MIG_RC" "migrate"
check "stalled channel: done within --timeout + 1 s" elapsed_below stall $((3000 + 1000 * (SLOW - 1))) "$t0" "$t1"
check "stalled channel: report names channel 1 as lost" \
	test "$("${TOOL[@]}" get lost_channels.0.channel <"$T/mig5.json")" = 1
check "stalled channel: destination runs" wait_state d5 running 10
check "stalled channel: memory verified" same_memory "$T/s5.pause" "$T/d5.resume"
check "vm s5 quits" quit_vm s5
check "vm d5 quits" quit_vm d5

# --- the same without failover: the migration fails within the same
# bound and the source runs on.
start_vm s6 --mem 64M --fill random --workload random,rate=50MB/s || not_ok "start s6"
start_vm d6 --mem 64M --incoming 127.0.0.1:0 --timeout 2000 --dump-on-resume "$T/d6.resume" ||
	not_ok "start d6"
daddr=$(incoming_of d6)
start_fault f6 "$daddr" "dir=to-dest,bytes=48,action=stall"
t0=$(now_ms)
migrate mig6 s6 --to "$daddr,$FAULT_ADDR" --channels 2 --timeout 2000 --no-failover
t1=$(now_ms)
check "stalled channel, --no-failover: migrate exits 1" rc_is 1 "$MIG_RC" "migrate"
check "stalled channel, --no-failover: ended within --timeout + 1 s" \
	elapsed_below stall $((3000 + 1000 * (SLOW - 1))) "$t0" "$t1"
check "stalled channel, --no-failover: migrate says why" grep_file "$T/mig6.err" "timed out|destination refused"
source_runs "stalled channel, --no-failover" s6
check "stalled channel, --no-failover: destination exits non-zero" exited_nonzero d6 20
check "stalled channel, --no-failover: destination never resumed" never_resumed d6
check "vm s6 quits" quit_vm s6
finish
