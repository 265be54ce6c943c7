#!/bin/bash
# The soak with VM processes: one synthetic VM (pmigrate vm, a random
# workload) migrated back and forth -- each time to a fresh destination
# process -- with a fault injected by pmfault at a random moment into most
# migrations.  Seeded, bounded in time.  Each migration must end as
#   completed  the destination runs with the source's memory at the pause
#              (memory dumps compared), the source is "migrated";
#   failed     the source runs on ("running"), the destination never resumed;
#   unknown    (exit 3) the source waits paused in "unknown"; management
#              looks at the destination: running -> quit the source, else
#              cont it.
# Never corrupted memory, never two running copies.
# Usage: vm-soak.sh PMIGRATE PMFAULT [SEED] [MIGRATIONS] [SECONDS]   (prints TAP)
set -u
. "$(dirname "$0")/../integration/lib.sh"
FAULT=${2:?usage: $0 PMIGRATE PMFAULT [SEED] [MIGRATIONS] [SECONDS]}
SEED=${3:-1}
N=${4:-200}
SECONDS_MAX=${5:-1800}
RANDOM=$SEED
t_stop=$(($(now_ms) + SECONDS_MAX * 1000))

pick() { local a=("$@"); echo "${a[RANDOM % ${#a[@]}]}"; }

completed=0 failed=0 unknown=0 corrupted=0 two=0 other=0 n=0 cur=0 next=1
start_vm v0 --mem 64M --fill random --workload random,rate=40MB/s,threads=2 --dump-at-pause "$T/v0.pause" ||
	{ not_ok "start the first VM"; finish; exit 1; }
while [ $n -lt "$N" ] && [ "$(now_ms)" -lt $t_stop ]; do
	n=$((n + 1))
	src=v$cur dst=v$next
	rm -f "$T/$src.pause" "$T/$dst.resume" "$T/$dst.pause"
	if ! start_vm "$dst" --mem 64M --incoming 127.0.0.1:0 --timeout 1500 --dump-on-resume "$T/$dst.resume" \
		--dump-at-pause "$T/$dst.pause"; then
		not_ok "#$n: start the destination"
		other=$((other + 1))
		break
	fi
	daddr=$(incoming_of "$dst")
	nch=$((2 + RANDOM % 3))
	bytes=$((48 + RANDOM * 8 % (768 << 10)))
	rule=$(pick "dir=to-dest,bytes=$bytes,action=cut" "dir=to-dest,bytes=$bytes,action=close" \
		"dir=to-dest,bytes=$bytes,action=stall" "dir=to-dest,bytes=$bytes,action=blackhole" \
		"dir=to-src,frame=DONE,action=drop" "dir=to-dest,frame=PAGES,nth=$((1 + RANDOM % 30)),action=corrupt" \
		"dir=to-dest,frame=PAGES,nth=$((1 + RANDOM % 30)),action=delay,delay=$((RANDOM % 400))" \
		"dir=to-src,frame=DONE,action=delay,delay=$((RANDOM % 600))" "none" "none")
	to=$daddr
	if [ "$rule" != none ]; then
		start_fault "f$n" "$daddr" "$rule" || { other=$((other + 1)); break; }
		hit=$((RANDOM % nch))
		list=()
		for ((i = 0; i < nch; i++)); do
			if [ $i = $hit ] || [[ $rule == *DONE* ]]; then list+=("$FAULT_ADDR"); else list+=("$daddr"); fi
		done
		to=$(IFS=,; echo "${list[*]}")
	fi
	extra=()
	[ $((RANDOM % 6)) = 0 ] && extra+=(--barrier)
	[ $((RANDOM % 8)) = 0 ] && extra+=(--no-failover)
	migrate "m$n" "$src" --to "$to" --channels "$nch" --timeout 1500 --downtime $((1 + RANDOM % 50)) "${extra[@]}"
	srcst=$(status_get "$src" state)
	dst_running=0
	vm_alive "$dst" && [ "$(status_get "$dst" state)" = running ] && dst_running=1
	what="#$n $rule, $nch channels${extra[*]:+, ${extra[*]}}"
	case $MIG_RC in
	0)
		if [ "$dst_running" != 1 ] || [ "$srcst" != migrated ]; then
			not_ok "$what: completed, but source '$srcst', destination running $dst_running"
			other=$((other + 1))
		elif ! same_memory "$T/$src.pause" "$T/$dst.resume"; then
			not_ok "$what: CORRUPTED"
			corrupted=$((corrupted + 1))
		else
			ok "$what: completed, memory verified"
			completed=$((completed + 1))
		fi ;;
	3)
		if [ "$srcst" != unknown ]; then
			not_ok "$what: unknown outcome, but the source is '$srcst'"
			other=$((other + 1))
		elif [ "$dst_running" = 1 ] && ! same_memory "$T/$src.pause" "$T/$dst.resume"; then
			not_ok "$what: unknown outcome, destination runs, CORRUPTED"
			corrupted=$((corrupted + 1))
		else
			ok "$what: outcome unknown, the destination $([ $dst_running = 1 ] && echo runs || echo does not run)"
			unknown=$((unknown + 1))
			# Management's decision.
			if [ "$dst_running" = 0 ]; then "$PM" cont --control "$T/$src.sock" >/dev/null 2>&1; fi
		fi ;;
	*)
		if [ "$dst_running" = 1 ]; then
			not_ok "$what: failed, but the destination runs"
			other=$((other + 1))
		elif ! wait_state "$src" running 10; then
			not_ok "$what: failed, but the source is '$(status_get "$src" state)'"
			other=$((other + 1))
		else
			ok "$what: failed cleanly, the source runs ($(tail -1 "$T/m$n.err" | cut -c1-120))"
			failed=$((failed + 1))
		fi ;;
	esac
	if [ "$srcst" != migrated ] && [ "$srcst" != unknown ] && [ "$dst_running" = 1 ]; then
		two=$((two + 1))
		not_ok "$what: TWO RUNNING COPIES"
	fi
	# The VM lives where it runs now; the other process goes.
	if [ "$dst_running" = 1 ]; then
		quit_vm "$src" >/dev/null 2>&1 || kill -KILL "${VMPID[$src]}" 2>/dev/null
		unset "VMPID[$src]"
		cur=$next
	else
		vm_alive "$dst" && { "$PM" quit --control "$T/$dst.sock" >/dev/null 2>&1; wait_exit "$dst" 20; }
		unset "VMPID[$dst]"
	fi
	next=$(((cur + 1 + RANDOM % 2) % 3))
	[ $next = $cur ] && next=$(((cur + 1) % 3))
	[ -n "${EXTRA_PIDS[*]}" ] && { kill "${EXTRA_PIDS[@]}" 2>/dev/null; wait "${EXTRA_PIDS[@]}" 2>/dev/null; EXTRA_PIDS=(); }
done
echo "# vm-soak: $n migrations (seed $SEED): $completed completed and verified, $failed failed cleanly with the source running, $unknown unknown; $corrupted corrupted, $two with two running copies, $other other violations"
check "vm-soak: 0 corrupted, 0 with two running copies, no other violation" test $((corrupted + two + other)) = 0
finish
