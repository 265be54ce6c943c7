#!/bin/bash
# A destination fed garbage, truncated, oversized, out-of-range or
# otherwise wrong frames (by pmtool.py, which speaks the wire protocol).
# Before a session exists, a bad connection is rejected and the
# destination keeps waiting (a real migration then completes); inside the
# session, the migration fails with a message naming the problem, the peer
# is told why (ERROR frame) where the stream allows it, and the VM never
# resumes.
set -u
. "$(dirname "$0")/lib.sh"

MEM=$((16 << 20))

# --- Before a session exists: each bad connection is rejected and logged,
# answered with an ERROR where the stream allows, and the destination
# keeps waiting -- one destination takes them all, then a real migration.
# case | phrase in the destination's log | phrase in its ERROR frame (or -)
pre=(
	"garbage|not HELLO|not HELLO"
	"http|not a pmigrate source|not a pmigrate source"
	"truncated-hello|receiving HELLO: connection closed|-"
	"oversized-hello|HELLO frame has length 1073741824, expected 40|expected 40"
	"bad-magic|bad magic 0x12345678|bad magic"
	"bad-version|protocol version 7 is not supported|version 7"
	"bad-page-size|page size 65536 is not supported|page size"
	"silent|no HELLO within 2000 ms|no HELLO"
	"channel-index|channel index 4 is not below the channel count 4|channel index"
)
if start_vm pre --mem $MEM --incoming 127.0.0.1:0 --timeout 2000 --dump-on-resume "$T/pre.resume"; then
	for c in "${pre[@]}"; do
		IFS='|' read -r name phrase answer <<<"$c"
		"${TOOL[@]}" speak "$(incoming_of pre)" "$name" $MEM >"$T/$name.speak" 2>&1
		check "$name: rejected and logged (/$phrase/)" \
			grep_file "$T/pre.err" "rejected a connection from 127\.0\.0\.1:[0-9]+: .*$phrase"
		if [ "$answer" != - ]; then
			check "$name: answered with an ERROR frame (/$answer/)" \
				grep_file "$T/$name.speak" "^ERROR: .*$answer"
		fi
		check "$name: the destination keeps waiting" state_is pre incoming
	done
	check "the destination never resumed" never_resumed pre
	if start_vm src --mem $MEM --workload random,rate=20MB/s --dump-at-pause "$T/src.pause"; then
		one_hop "after ${#pre[@]} rejected connections, a real migration" src pre random
		check "the destination's report counts ${#pre[@]} rejected connections" \
			test "$(status_get pre last_migration.rejected_connections)" = "${#pre[@]}"
		check "vm pre quits cleanly" quit_vm pre
		check "vm src quits cleanly" quit_vm src
	else
		not_ok "start the source"
	fi
else
	not_ok "start the destination for rejected connections"
fi

# --- Inside the session (the HELLO was valid): the migration fails, the
# destination exits non-zero with a message naming the problem, tells the
# peer why where the stream allows it, and never resumes its VM.
cases=(
	"bad-layout|destination has 16 MiB.*smaller|destination memory is smaller"
	"pages-out-of-range|PAGES frame \[4095, \+2\) is outside region 0 of 4096 pages|outside region"
	"pages-bad-region|PAGES frame names region 3|region 3"
	"pages-oversized|PAGES frame length 2147483632 is out of range|-"
	"pages-truncated|channel 0: receiving pages: connection closed|-"
	"compressed-unnegotiated|compression was not negotiated|not negotiated"
	"corrupt-lz4|corrupt compressed run at region 0 page 0|corrupt compressed"
	"round-too-big|PAGES frame has round 100000|round 100000"
	"round-end-unnegotiated|ROUND_END on channel 0 without barrier or drain mode|without barrier or drain"
	"unknown-frame|unknown frame type 77|-"
	"end-mismatch|source counted 9 frames|source counted"
	"incomplete|incomplete migration: 4094 of 4096 pages never arrived|4094 of 4096"
	"barrier-end-early|channel 1: receiving a frame header: timed out after 2000 ms|-"
)
for c in "${cases[@]}"; do
	IFS='|' read -r name phrase answer <<<"$c"
	if ! start_vm "$name" --mem $MEM --incoming 127.0.0.1:0 --timeout 2000 --dump-on-resume "$T/$name.resume"; then
		not_ok "$name: start the destination"
		continue
	fi
	"${TOOL[@]}" speak "$(incoming_of "$name")" "$name" $MEM >"$T/$name.speak" 2>&1
	check "$name: destination exits non-zero" exited_nonzero "$name" 20
	check "$name: destination says what was wrong (/$phrase/)" \
		grep_file "$T/$name.err" "incoming migration failed: .*$phrase"
	check "$name: destination never resumed" never_resumed "$name"
	if [ "$name" = barrier-end-early ]; then
		check "$name: the barrier let channel 1 go (ROUND_ACK)" grep_file "$T/$name.speak" "channel 1 got ROUND_ACK"
	fi
	if [ "$answer" != - ]; then
		check "$name: destination answered with an ERROR frame (/$answer/)" \
			grep_file "$T/$name.speak" "^ERROR: .*$answer"
	fi
done

# The same for a destination with a 1 MiB disk (BLOCKS frames, disks in
# LAYOUT).  blocks-stale gets as far as loading the state (which is
# garbage): by then every unit arrived and its image must hold the newer of
# the two copies of block 0 that came in the wrong order.
dcases=(
	"blocks-out-of-range|BLOCKS frame \[16, \+1\) is outside disk 0 of 16 blocks|outside disk 0"
	"blocks-bad-disk|BLOCKS frame names disk 2, the layout has 1|disk 2"
	"blocks-raw-length|raw BLOCKS frame of 1 blocks carries 100 bytes, not 65536|carries 100 bytes"
	"blocks-unannounced|LAYOUT lists disks but the source did not announce DISKS|did not announce"
	"blocks-shared|BLOCKS frame on channel 0 with shared storage|shared storage"
	"disk-incomplete|incomplete migration: 14 of 16 blocks of disk 0 never arrived|14 of 16 blocks"
	"blocks-stale|synthetic VM state has 16 bytes|synthetic VM state"
)
for c in "${dcases[@]}"; do
	IFS='|' read -r name phrase answer <<<"$c"
	if ! start_vm "$name" --mem $MEM --incoming 127.0.0.1:0 --timeout 2000 --dump-on-resume "$T/$name.resume" \
		--disk "$T/$name.img,size=1M"; then
		not_ok "$name: start the destination"
		continue
	fi
	"${TOOL[@]}" speak "$(incoming_of "$name")" "$name" $MEM >"$T/$name.speak" 2>&1
	check "$name: destination exits non-zero" exited_nonzero "$name" 20
	check "$name: destination says what was wrong (/$phrase/)" \
		grep_file "$T/$name.err" "incoming migration failed: .*$phrase"
	check "$name: destination never resumed" never_resumed "$name"
	check "$name: destination answered with an ERROR frame (/$answer/)" \
		grep_file "$T/$name.speak" "(^ERROR: |destination refused: ).*$answer"
done
check "blocks-stale: block 0 holds the newer copy (round 2), the older one was discarded" \
	"$PY" -c 'import sys; b = open(sys.argv[1], "rb").read(65536); sys.exit(b != b"N" * 65536)' "$T/blocks-stale.img"

# Text from the network reaches the terminal escaped.
if start_vm escape --mem $MEM --incoming 127.0.0.1:0 --timeout 2000; then
	"${TOOL[@]}" speak "$(incoming_of escape)" error-escape $MEM >"$T/escape.speak" 2>&1
	check "error-escape: destination exits non-zero" exited_nonzero escape 20
	check "error-escape: the source's message is shown escaped" \
		grep -qF 'source aborted: \x1b[2J\x1b]0;owned\x07evil\x0aline' "$T/escape.err"
	check "error-escape: no control character reaches the output" \
		bash -c '! LC_ALL=C grep -q "[[:cntrl:]]" <(tr -d "\n" <"$1")' _ "$T/escape.err"
else
	not_ok "error-escape: start the destination"
fi
finish
