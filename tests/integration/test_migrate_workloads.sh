#!/bin/bash
# Live migration of a 256 MiB synthetic VM over 4 channels under each
# workload, first barrier-free (A -> B), then with --barrier (B -> C): the
# destination's memory at resume equals the source's at pause (cmp of the
# two dumps), the destination runs on (heartbeat and workload advancing)
# and the source ends in state "migrated".
set -u
. "$(dirname "$0")/lib.sh"

for wl in ${PM_TEST_WORKLOADS:-idle seq,rate=150MB/s random,rate=100MB/s zipf,rate=200MB/s,hot=10%}; do
	kind=${wl%%,*}
	a=$kind-a b=$kind-b c=$kind-c
	if ! start_vm "$a" --mem 256M --workload "$wl" --dump-at-pause "$T/$a.pause" ||
		! start_vm "$b" --mem 256M --incoming 127.0.0.1:0 \
			--dump-on-resume "$T/$b.resume" --dump-at-pause "$T/$b.pause" ||
		! start_vm "$c" --mem 256M --incoming 127.0.0.1:0 --dump-on-resume "$T/$c.resume"; then
		not_ok "$kind: start the VMs"
		continue
	fi
	check "$kind: source heartbeat advances before migrating" hb_advances "$a"
	check "$kind: destinations wait in state incoming" state_is "$b" incoming
	one_hop "$kind, barrier-free" "$a" "$b" "$kind"
	check "$kind, barrier-free: report says no barrier" \
		test "$("${TOOL[@]}" get barrier <"$T/mig-$a.json")" = false
	# The VM that arrived migrates on, now with a barrier at each round end.
	one_hop "$kind, --barrier" "$b" "$c" "$kind" --barrier
	check "$kind, --barrier: report says barrier" \
		test "$("${TOOL[@]}" get barrier <"$T/mig-$b.json")" = true
	for v in "$a" "$b" "$c"; do
		check "$kind: vm $v quits cleanly (exit 0)" quit_vm "$v"
	done
done
finish
