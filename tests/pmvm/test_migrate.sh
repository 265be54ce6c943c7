#!/bin/sh
# Live migration of a KVM guest with pmvm + pmigrate, over loopback.  TAP.
# Usage: test_migrate.sh PMVM GUEST_DIR [PMIGRATE]
#  1. verifier guest, 2 vCPUs, 32 MiB, 4 channels: the destination keeps
#     printing VERIFY OK with the counter continuing from the source's last,
#     never VERIFY FAIL, and the memory dumps at pause and resume are equal.
#  2. a destination killed mid-migration leaves the source guest running.
# Skipped (not passed) without /dev/kvm or without pmigrate.
PMVM=$1
GUESTS=$2
PMIGRATE=$3
NTESTS=2
echo "1..$NTESTS"
skip_all() {
	i=1
	while [ $i -le $NTESTS ]; do
		echo "ok $i # SKIP $1"
		i=$((i + 1))
	done
	exit 0
}
[ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ] || skip_all "no /dev/kvm"
[ -n "$PMIGRATE" ] && [ -x "$PMIGRATE" ] || skip_all "pmigrate not built"
# /dev/kvm is there; can a VM be made?  (The exitcode guest exits with 0.)
probe=$(timeout 120 "$PMVM" run --mem 4M --guest "$GUESTS/exitcode.bin" --param code=0 2>&1 >/dev/null)
[ $? = 0 ] || skip_all "KVM unusable: $(echo "$probe" | head -n 1)"

T=$(mktemp -d)
PIDS=""
cleanup() {
	for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
	rm -rf "$T"
}
trap cleanup EXIT
failed=0
MEM=32M

wait_for() { # FILE PATTERN SECONDS
	i=0
	while [ $i -lt $(($3 * 10)) ]; do
		grep -q -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}
cpu0_counters() { grep -E '^VERIFY OK [0-9]+$' "$1" | awk '{print $3}'; }

start_source() { # TAG
	"$PMVM" run --mem $MEM --vcpus 2 --guest "$GUESTS/verifier.bin" \
		--control "$T/$1-src.sock" --serial "$T/$1-src.serial" \
		--dump-at-pause "$T/$1-src.dump" 2>"$T/$1-src.err" &
	SRC=$!
	PIDS="$PIDS $SRC"
	wait_for "$T/$1-src.serial" "^VERIFY OK 3$" 120
}
start_dest() { # TAG
	"$PMVM" run --mem $MEM --vcpus 2 --guest "$GUESTS/verifier.bin" \
		--control "$T/$1-dst.sock" --serial "$T/$1-dst.serial" \
		--incoming 127.0.0.1:0,127.0.0.1:0,127.0.0.1:0,127.0.0.1:0 \
		--dump-on-resume "$T/$1-dst.dump" 2>"$T/$1-dst.err" &
	DST=$!
	PIDS="$PIDS $DST"
	i=0
	while [ "$(grep -c 'listening on' "$T/$1-dst.err" 2>/dev/null)" != 4 ] && [ $i -lt 100 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	TO=$(sed -n 's/^pmvm: listening on //p' "$T/$1-dst.err" | paste -sd, -)
}
diag() { for f in "$@"; do echo "# --- $f"; tail -n 20 "$f" 2>/dev/null | sed 's/^/# /'; done; }

# ---- 1: live migration ----
ok=1
if ! start_source live; then
	echo "# source guest did not reach VERIFY OK 3"
	ok=0
fi
[ $ok = 1 ] && start_dest live
if [ $ok = 1 ] && ! "$PMIGRATE" migrate --control "$T/live-src.sock" --to "$TO" --channels 4 \
	--json "$T/report.json" >"$T/migrate.out" 2>&1; then
	echo "# pmigrate migrate failed"
	ok=0
fi
if [ $ok = 1 ]; then
	# The source hands over and stays, paused, in state "migrated".
	"$PMIGRATE" status --control "$T/live-src.sock" >"$T/status.out" 2>&1
	grep -q migrated "$T/status.out" || { echo "# source status is not migrated:"; sed 's/^/# /' "$T/status.out"; ok=0; }
	kill -TERM "$SRC"
	wait "$SRC"
	st=$?
	[ "$st" = 0 ] || { echo "# source exited with $st after SIGTERM"; ok=0; }
	# The source flushed its last (maybe partial) line at exit; a line cut
	# by the switchover continues at the destination, so the source's and
	# the destination's output together must count 1, 2, 3, ... without a gap.
	i=0
	while [ "$(grep -cE '^VERIFY OK [0-9]+$' "$T/live-dst.serial" 2>/dev/null)" -lt 3 ] && [ $i -lt 1200 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	cat "$T/live-src.serial" "$T/live-dst.serial" >"$T/live-all.serial"
	last=$(cpu0_counters "$T/live-src.serial" | tail -n 1)
	first=$(cpu0_counters "$T/live-dst.serial" | head -n 1)
	echo "# source's last complete VERIFY OK: $last; destination's first: $first"
	if [ "$(grep -cE '^VERIFY OK [0-9]+$' "$T/live-dst.serial")" -lt 3 ]; then
		echo "# destination did not print 3 VERIFY OK lines"
		ok=0
	fi
	if ! cpu0_counters "$T/live-all.serial" | awk 'NR == 1 && $1 != 1 { exit 1 } NR > 1 && $1 != p + 1 { exit 1 } { p = $1 }'; then
		echo "# the counter does not continue across the migration:"
		cpu0_counters "$T/live-all.serial" | tr '\n' ' ' | sed 's/^/# /'
		echo
		ok=0
	fi
	if grep -h "VERIFY FAIL" "$T/live-src.serial" "$T/live-dst.serial"; then ok=0; fi
	if ! cmp "$T/live-src.dump" "$T/live-dst.dump"; then echo "# dumps differ"; ok=0; fi
	sed 's/^/# /' "$T/migrate.out" | tail -n 30
	echo "# report: $(cat "$T/report.json" 2>/dev/null | tr -d '\n' | cut -c1-600)"
fi
if [ $ok = 1 ]; then
	echo "ok 1 - verifier migrated live over 4 channels, VERIFY OK continues, dumps equal"
else
	diag "$T/live-src.err" "$T/live-dst.err" "$T/live-src.serial" "$T/live-dst.serial" "$T/migrate.out"
	echo "not ok 1 - live migration of the verifier guest"
	failed=1
fi
kill "$DST" 2>/dev/null
wait "$DST" 2>/dev/null

# ---- 2: destination dies mid-migration ----
ok=1
MEM=64M
start_source dead || ok=0
[ $ok = 1 ] && start_dest dead
if [ $ok = 1 ]; then
	"$PMIGRATE" migrate --control "$T/dead-src.sock" --to "$TO" --channels 4 \
		>"$T/dead-migrate.out" 2>&1 &
	MIG=$!
	sleep 0.2
	kill -9 "$DST"
	wait "$MIG"
	mst=$?
	if [ $mst = 0 ]; then
		echo "ok 2 # SKIP the migration completed before the destination was killed"
	else
		before=$(cpu0_counters "$T/dead-src.serial" | tail -n 1)
		if ! kill -0 "$SRC" 2>/dev/null; then
			echo "# source died"
			ok=0
		elif ! wait_for "$T/dead-src.serial" "^VERIFY OK $((before + 2))$" 120; then
			echo "# source guest stopped making progress at $before"
			ok=0
		fi
		if grep -h "VERIFY FAIL" "$T/dead-src.serial"; then ok=0; fi
		if [ $ok = 1 ]; then
			echo "ok 2 - destination killed mid-migration: migrate failed ($mst), source guest runs on"
		else
			diag "$T/dead-src.err" "$T/dead-src.serial" "$T/dead-migrate.out"
			echo "not ok 2 - source after a destination died"
			failed=1
		fi
	fi
else
	echo "not ok 2 - source guest did not start"
	failed=1
fi
exit $failed
