#!/bin/sh
# SPDX-License-Identifier: MIT
# A Linux guest in pmvm, migrated live.  TAP.
# Usage: test_linux.sh BUILD_DIR
#  1. pmvm boots Debian's kernel (/boot/vmlinuz-*, or $PMIGRATE_LINUX_KERNEL)
#     with the project's initramfs; the workload stamps its memory, checks
#     a full sweep and beats; no oops or warning on the console.
#  2. a migration to a destination of the wrong size is refused and the
#     source guest runs on.
#  3. live migration over 4 channels while the workload writes 20 MB/s: at
#     the destination the heartbeat continues from the source's last, the
#     workload's own memory check passes two more full sweeps, the guest's
#     clock never jumps, no oops; the guest-seen pause is printed.
# Linux needs a KVM that runs guest code at hardware (or TCG) speed; this
# script runs itself inside the nested L1 of tools/nested/run unless
# PMIGRATE_LINUX_DIRECT=1 (or it already is in L1).  Every wait watches the
# VMs and the console, so a dead VM or an oops fails the test at once.
BUILD=$(cd "$1" 2>/dev/null && pwd)
SRC_ROOT=$(cd "$(dirname "$0")/../.." && pwd)
NTESTS=3
PMVM=$BUILD/src/pmvm/pmvm
PMIGRATE=$BUILD/src/cli/pmigrate
INITRD=$BUILD/guests/linux/linux-initramfs.cpio
KERNEL=${PMIGRATE_LINUX_KERNEL:-$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)}
MEM=256M
# A guest that does not run for a while (a loaded host) sees its clock
# move on by that much: only a jump beyond 10 s counts as a clock fault.
APPEND="pmw_mem=64 pmw_rate=20 pmw_pattern=hot pmw_check=128 pmw_hb_ms=10 pmw_jump_ms=10000"

skip_all() {
	echo "1..$NTESTS"
	i=1
	while [ $i -le $NTESTS ]; do echo "ok $i # SKIP $1"; i=$((i + 1)); done
	exit 0
}
[ -n "$BUILD" ] && [ -x "$PMVM" ] && [ -x "$PMIGRATE" ] && [ -r "$INITRD" ] ||
	skip_all "not built: $1 lacks pmvm, pmigrate or the Linux initramfs"
[ -r "$KERNEL" ] || skip_all "no Linux kernel (install linux-image-amd64 or set PMIGRATE_LINUX_KERNEL)"

if [ -z "$PMIGRATE_LINUX_IN_L1" ] && [ "$PMIGRATE_LINUX_DIRECT" != 1 ]; then
	NESTED=$SRC_ROOT/tools/nested/run
	why=$("$NESTED" --check 2>&1) || skip_all "Linux runs nested here and nested runs are not possible: $why"
	echo "# running in the nested L1 (tools/nested/run): this host's KVM is not assumed fast enough for Linux"
	exec "$NESTED" --project "$BUILD" --include "$KERNEL" --include "$SRC_ROOT/tests/linux" --mem 1536M --timeout "${PMIGRATE_LINUX_TIMEOUT:-300}" \
		--env PMIGRATE_LINUX_IN_L1=1 --env PMIGRATE_LINUX_KERNEL="$KERNEL" -- "$0" "$BUILD"
fi
echo "1..$NTESTS"
[ -c /dev/kvm ] || skip_all "no /dev/kvm"

T=$(mktemp -d)
PIDS=""
cleanup() {
	for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT INT TERM
failed=0
BAD='Oops|BUG:|Kernel panic|WARNING:|Call Trace|general protection|soft lockup|hung_task|rcu.*stall|CHECK FAIL|CLOCK |PMW FAIL|PMW bad'

alive() { [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
diag() { for f in "$@"; do echo "# --- $(basename "$f")"; tail -n 25 "$f" 2>/dev/null | sed 's/^/# /'; done; }

# wait_lines FILE REGEX N SECONDS PID...: 0 once N lines match REGEX; 1 on
# timeout; 2 at once when a PID died or the console shows trouble.
wait_lines() {
	f=$1 re=$2 n=$3 secs=$4 end=$(($(now_ms) + $4 * 1000))
	shift 4
	while [ "$(now_ms)" -lt $end ]; do
		c=$(grep -cE -- "$re" "$f" 2>/dev/null)
		[ "${c:-0}" -ge "$n" ] && return 0
		if grep -qE -- "$BAD" "$f" 2>/dev/null; then
			echo "# trouble on $(basename "$f"): $(grep -m1 -E -- "$BAD" "$f")"
			return 2
		fi
		for p in "$@"; do
			alive "$p" || { echo "# process $p died waiting for $n x '$re' in $(basename "$f")"; return 2; }
		done
		sleep 0.1
	done
	echo "# timed out after $secs s waiting for $n x '$re' in $(basename "$f")"
	return 1
}

# start_vm TAG MEM [--incoming ...]: pmvm with the kernel, console to TAG.serial.
start_vm() {
	tag=$1 mem=$2
	shift 2
	"$PMVM" run --kernel "$KERNEL" --initrd "$INITRD" --append "$APPEND" --mem "$mem" --vcpus 2 \
		--control "$T/$tag.sock" --serial "$T/$tag.serial" "$@" 2>"$T/$tag.err" &
	LAST=$!
	PIDS="$PIDS $LAST"
}
# listen_addrs TAG PID: the 4 addresses a destination listens on.
listen_addrs() {
	i=0
	while [ "$(grep -c 'listening on' "$T/$1.err" 2>/dev/null)" != 4 ]; do
		alive "$2" || { echo "# destination $1 died at start:"; diag "$T/$1.err"; return 1; }
		[ $i -lt 100 ] || { echo "# destination $1 is not listening after 10 s"; return 1; }
		sleep 0.1
		i=$((i + 1))
	done
	sed -n 's/^pmvm: listening on //p' "$T/$1.err" | paste -sd, -
}
# The guest's tty turns "\n" into "\r\n".
hb_seqs() { tr -d '\r' <"$1" | grep -E '^HB [0-9]+ [0-9]+$' | cut -d' ' -f2; }
hb_times() { tr -d '\r' <"$1" | grep -E '^HB [0-9]+ [0-9]+$' | cut -d' ' -f3; }
json_num() { sed -n "s/.*\"$2\": *\([0-9.]*\).*/\1/p" "$1" | head -n 1; }

# ---- 1: boot ----
ok=1
t0=$(now_ms)
start_vm src $MEM
SRC=$LAST
wait_lines "$T/src.serial" '^CHECK OK 1 ' 1 150 "$SRC" || ok=0
if [ $ok = 1 ]; then
	echo "# booted to the workload's first full memory check in $(($(now_ms) - t0)) ms ($(basename "$KERNEL"), $MEM, 2 vCPUs)"
	grep -E 'Run /init|smpboot: Total|clocksource: Switched' "$T/src.serial" | sed 's/^/# /'
	echo "ok 1 - pmvm boots Linux; the workload stamps, checks and beats"
else
	diag "$T/src.err" "$T/src.serial"
	echo "not ok 1 - boot Linux in pmvm"
	failed=1
fi

# ---- 2: a destination of the wrong size is refused, the source runs on ----
ok2=$ok
if [ $ok2 = 1 ]; then
	start_vm bad 320M --incoming 127.0.0.1:0,127.0.0.1:0,127.0.0.1:0,127.0.0.1:0
	BADVM=$LAST
	TO=$(listen_addrs bad "$BADVM") || ok2=0
fi
if [ $ok2 = 1 ]; then
	if "$PMIGRATE" migrate --control "$T/src.sock" --to "$TO" --channels 4 --timeout 20000 \
		>"$T/bad-migrate.out" 2>&1; then
		echo "# a migration to a 320M destination succeeded"
		ok2=0
	fi
	sed 's/^/# /' "$T/bad-migrate.out" | tail -n 3
	before=$(hb_seqs "$T/src.serial" | wc -l)
	wait_lines "$T/src.serial" '^HB [0-9]+ [0-9]+' $((before + 20)) 30 "$SRC" || ok2=0
	"$PMIGRATE" status --control "$T/src.sock" 2>&1 | grep -q running || { echo "# source is not running"; ok2=0; }
fi
[ -n "$BADVM" ] && kill "$BADVM" 2>/dev/null
if [ $ok2 = 1 ]; then
	echo "ok 2 - a destination of another size is refused; the source guest runs on"
else
	diag "$T/bad-migrate.out" "$T/bad.err"
	echo "not ok 2 - refused migration leaves the source running"
	failed=1
fi

# ---- 3: live migration over 4 channels ----
ok3=$ok
if [ $ok3 = 1 ]; then
	start_vm dst $MEM --incoming 127.0.0.1:0,127.0.0.1:0,127.0.0.1:0,127.0.0.1:0
	DST=$LAST
	TO=$(listen_addrs dst "$DST") || ok3=0
fi
if [ $ok3 = 1 ]; then
	if ! "$PMIGRATE" migrate --control "$T/src.sock" --to "$TO" --channels 4 --timeout 30000 \
		--json "$T/report.json" >"$T/migrate.out" 2>&1; then
		echo "# pmigrate migrate failed"
		ok3=0
	fi
fi
if [ $ok3 = 1 ]; then
	last_sweep=$(grep -E '^CHECK OK [0-9]+ ' "$T/src.serial" | tail -n 1 | cut -d' ' -f3)
	# Two more sweeps: the second checked every page at the destination.
	wait_lines "$T/dst.serial" '^CHECK OK [0-9]+ ' 2 60 "$DST" || ok3=0
	first=$(hb_seqs "$T/dst.serial" | head -n 1)
	last=$(hb_seqs "$T/src.serial" | tail -n 1)
	echo "# heartbeat: source's last $last, destination's first $first; last sweep at the source $last_sweep," \
		"at the destination $(grep -E '^CHECK OK [0-9]+ ' "$T/dst.serial" | tail -n 1 | cut -d' ' -f3)"
	# A line cut by the switchover continues at the destination: at most one lost.
	[ -n "$first" ] && [ -n "$last" ] && [ "$first" -gt "$last" ] && [ "$first" -le $((last + 2)) ] ||
		{ echo "# the heartbeat does not continue across the migration"; ok3=0; }
	if grep -hE -- "$BAD" "$T/src.serial" "$T/dst.serial" | sed 's/^/# /' | grep .; then ok3=0; fi
	alive "$DST" || { echo "# the destination died"; ok3=0; }
	"$PMIGRATE" status --control "$T/dst.sock" --json >"$T/dst-status.json" 2>&1
	# The guest's clock across the switchover moves on by no more than the
	# pause the host saw (kvmclock stands still while paused).
	gap=$(json_num "$T/dst-status.json" resume_gap_ms | cut -d. -f1)
	step=$(($(hb_times "$T/dst.serial" | head -n 1) - $(hb_times "$T/src.serial" | tail -n 1)))
	echo "# guest clock across the switchover: +$step ms (host-seen pause ${gap:-?} ms)"
	[ "$step" -ge 0 ] && [ "$step" -le $((${gap:-0} + 1000)) ] || { echo "# the guest's clock jumped"; ok3=0; }
	echo "# total $(json_num "$T/report.json" total_time_ms) ms, downtime $(json_num "$T/report.json" downtime_ms) ms," \
		"rounds $(grep -o '"dirty_at_start"' "$T/report.json" | wc -l), pause seen by the guest $(json_num "$T/dst-status.json" resume_gap_ms) ms"
	sed 's/^/# /' "$T/migrate.out" | tail -n 12
fi
if [ $ok3 = 1 ]; then
	echo "ok 3 - Linux migrated live over 4 channels: heartbeat continues, memory checks pass, no oops, no clock jump"
else
	diag "$T/src.err" "$T/dst.err" "$T/src.serial" "$T/dst.serial" "$T/migrate.out"
	echo "not ok 3 - live migration of a Linux guest"
	failed=1
fi
exit $failed
