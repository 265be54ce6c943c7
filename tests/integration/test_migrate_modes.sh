#!/bin/bash
# One 256 MiB VM (random,rate=100MB/s) migrated along a chain, each hop in
# another mode: --serial (1 channel), --compress lz4, --compress zstd, then
# 4 channels spread over two destination addresses (127.0.0.1, 127.0.0.2).
# Every hop: memory verified equal (dump at pause vs dump at resume), the
# destination runs on, the source ends "migrated".
set -u
. "$(dirname "$0")/lib.sh"

wl=random,rate=100MB/s
started=1
start_vm a --mem 256M --workload "$wl" --dump-at-pause "$T/a.pause" || started=0
for v in b c d; do
	start_vm "$v" --mem 256M --incoming 127.0.0.1:0 \
		--dump-on-resume "$T/$v.resume" --dump-at-pause "$T/$v.pause" || started=0
done
start_vm e --mem 256M --incoming 127.0.0.1:0,127.0.0.2:0 --dump-on-resume "$T/e.resume" || started=0
if [ $started = 0 ]; then
	not_ok "start the VMs"
	finish
	exit 1
fi

HOP_CHANNELS=1 one_hop "--serial" a b random --serial
check "--serial: report says serial" test "$("${TOOL[@]}" get serial <"$T/mig-a.json")" = true

one_hop "--compress lz4" b c random --compress lz4
check "--compress lz4: report says lz4" test "$("${TOOL[@]}" get compress <"$T/mig-b.json")" = lz4

one_hop "--compress zstd, --barrier" c d random --compress zstd --barrier
check "--compress zstd: report says zstd" test "$("${TOOL[@]}" get compress <"$T/mig-c.json")" = zstd

addrs=$(incoming_of e)
check "destination listens on 127.0.0.1 and 127.0.0.2" \
	grep -qE '^127\.0\.0\.1:[0-9]+,127\.0\.0\.2:[0-9]+$' <<<"$addrs"
one_hop "two --to addresses" d e random
check "two --to addresses: every channel carried data" \
	"$PY" -c 'import json,sys; b=json.load(open(sys.argv[1]))["channel_bytes"]; sys.exit(not (len(b) == 4 and all(x > 0 for x in b)))' \
	"$T/mig-d.json"

for v in a b c d e; do
	check "vm $v quits cleanly (exit 0)" quit_vm "$v"
done
finish
