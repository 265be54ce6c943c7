#!/bin/bash
# Storage migration between synthetic VMs with disks (docs/storage.md):
#   - a live VM writing memory and its disk (randwrite) migrates over 4
#     channels: the destination's memory and image at resume equal the
#     source's at the pause (cmp), holes stay holes, the destination writes on;
#   - two disks, lz4 and barrier mode; one channel, serial mode;
#   - the destination killed mid-disk: the source runs on, its image as the VM
#     left it, and a second migration then succeeds;
#   - a channel that delays every block frame: older copies arriving after
#     newer ones are discarded (the per-block round rule);
#   - over TLS with userspace records (no sendfile there);
#   - failover: a channel cut mid-disk, its unacknowledged disk chunks resent;
#   - --shared-storage: no block is sent, the destination runs on the same
#     image, flushed at the pause;
#   - refusals: no disk, a smaller disk, another block size, the source's own
#     image without --shared-storage.
# Usage: test_storage.sh PMIGRATE PMFAULT
set -u
. "$(dirname "$0")/lib.sh"
FAULT=${2:?usage: $0 PMIGRATE PMFAULT}

jget() { "${TOOL[@]}" get "$2" <"$T/$1.json"; }
alloc_kib() { du -k "$1" | cut -f1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# same_file A B LABEL: byte-identical (cmp), else the first difference.
same_file() {
	if [ ! -e "$1" ] || [ ! -e "$2" ]; then
		echo "missing: $(ls -l "$1" "$2" 2>&1)" | diag
		return 1
	fi
	cmp "$1" "$2" 2>&1 | diag
	[ "${PIPESTATUS[0]}" = 0 ]
}

# disk_written_advances NAME: the VM's disk writers write on.
disk_written_advances() {
	local c0 c deadline=$(($(now_ms) + 5000 * SLOW))
	c0=$(status_get "$1" disks.0.bytes_written)
	while [ "$(now_ms)" -lt "$deadline" ]; do
		sleep 0.05
		c=$(status_get "$1" disks.0.bytes_written)
		[ -n "$c" ] && [ "$c" -gt "$c0" ] && return 0
	done
	echo "vm $1: disk bytes_written stuck at $c0" | diag
	return 1
}

# holes_kept SRC-IMAGE DST-DUMP ZERO-BLOCKS: the destination allocated no
# more than the source, and less only by the zero blocks that became holes.
holes_kept() {
	local s d z=$(($3 * 64))
	s=$(alloc_kib "$1")
	d=$(alloc_kib "$2")
	if [ "$d" -le "$s" ] && [ "$d" -ge $((s - z - 1024)) ]; then return 0; fi
	echo "allocated: source $s KiB, destination $d KiB, zero blocks $3 ($z KiB)" | diag
	return 1
}

# --- 1. live: memory and disk written during the migration, 4 channels
start_vm s1 --mem 128M --workload random,rate=20MB/s --dirty self \
	--disk "$T/s1.img,size=256M,populated=64M" --disk-workload randwrite,rate=20MB/s \
	--dump-at-pause "$T/s1.pause" || not_ok "start s1"
start_vm d1 --mem 128M --incoming 127.0.0.1:0 --disk "$T/d1.img,size=256M" \
	--dump-on-resume "$T/d1.resume" || not_ok "start d1"
check "live: the source's disk is being written" disk_written_advances s1
"$PM" status --control "$T/s1.sock" >"$T/s1.status" 2>&1
check "status names the disk" grep_file "$T/s1.status" \
	"^disk 0 +$T/s1.img: 256 MiB in 64 KiB blocks, [0-9.]+ MiB allocated, [0-9.]+ MB written$"
check "status names the disk's writers" grep_file "$T/s1.status" \
	"^disk writes  randwrite,rate=20MB/s,bs=64K,threads=1 \(asked 20\.0 MB/s, achieved [0-9.]+ MB/s\)$"
migrate mig1 s1 --to "$(incoming_of d1)" --channels 4 --verify
check "live: migrate exits 0" rc_is 0 "$MIG_RC" "migrate"
check "live: memory and disk digests compared (--verify)" test "$(jget mig1 verified)" = true
check "live: memory at resume equals memory at the pause" same_memory "$T/s1.pause" "$T/d1.resume"
check "live: destination image at resume equals the source's at the pause (cmp)" \
	same_file "$T/s1.pause.disk0" "$T/d1.resume.disk0"
check "live: the source image stayed as it was at the pause" same_file "$T/s1.img" "$T/s1.pause.disk0"
check "live: data, zero and unallocated blocks were sent" \
	test "$(jget mig1 disks.0.blocks)" -gt 0 -a "$(jget mig1 disks.0.zero_blocks)" -gt 0 \
	-a "$(jget mig1 disks.0.unallocated_blocks)" -gt 0
check "live: holes stay holes (destination allocated about what the source did)" \
	holes_kept "$T/s1.img" "$T/d1.resume.disk0" "$(jget mig1 disks.0.zero_blocks)"
check "live: the table has a disk line" grep_file "$T/mig1.out" "^disk 0 .*s1.img: 256 MiB"
check "live: rounds count disk blocks" test "$(jget mig1 rounds.0.disk_blocks)" = 4096
check "live: destination runs" wait_state d1 running 10
check "live: destination's disk writers go on" disk_written_advances d1
check "live: destination synced its image before DONE" \
	grep -q '"disk_sync_ms"' <<<"$("$PM" status --control "$T/d1.sock" --json)"
check "vm s1 quits" quit_vm s1
check "vm d1 quits" quit_vm d1

# --- 2. two disks, lz4, barrier mode
start_vm s2 --mem 64M --workload random,rate=10MB/s --disk "$T/s2a.img,size=64M,populated=16M" \
	--disk "$T/s2b.img,size=32M,populated=8M,block=16K" --disk-workload seqwrite,rate=10MB/s,bs=16K \
	--dump-at-pause "$T/s2.pause" || not_ok "start s2"
start_vm d2 --mem 64M --incoming 127.0.0.1:0 --disk "$T/d2a.img,size=64M" \
	--disk "$T/d2b.img,size=32M,block=16K" --dump-on-resume "$T/d2.resume" || not_ok "start d2"
migrate mig2 s2 --to "$(incoming_of d2)" --channels 3 --compress lz4 --barrier
check "two disks, lz4, barrier: migrate exits 0" rc_is 0 "$MIG_RC" "migrate"
check "two disks: memory verified" same_memory "$T/s2.pause" "$T/d2.resume"
check "two disks: disk 0 verified (cmp)" same_file "$T/s2.pause.disk0" "$T/d2.resume.disk0"
check "two disks: disk 1 verified (cmp)" same_file "$T/s2.pause.disk1" "$T/d2.resume.disk1"
check "two disks: both in the report" test "$(jget mig2 disks.1.block_bytes)" = 16384
check "vm s2 quits" quit_vm s2
check "vm d2 quits" quit_vm d2

# --- 3. serial mode, one channel, a disk whose size is not a multiple of its block
start_vm s3 --mem 32M --disk "$T/s3.img,size=5000K,populated=2M" --disk-workload randwrite,rate=5MB/s,bs=4K \
	--dump-at-pause "$T/s3.pause" || not_ok "start s3"
start_vm d3 --mem 32M --incoming 127.0.0.1:0 --disk "$T/d3.img,size=5000K" \
	--dump-on-resume "$T/d3.resume" || not_ok "start d3"
migrate mig3 s3 --to "$(incoming_of d3)" --serial
check "serial, partial last block: migrate exits 0" rc_is 0 "$MIG_RC" "migrate"
check "serial: disk verified (cmp)" same_file "$T/s3.pause.disk0" "$T/d3.resume.disk0"
check "vm s3 quits" quit_vm s3
check "vm d3 quits" quit_vm d3

# --- 4. the destination killed mid-disk: the channel stalls at its 20th
# BLOCKS frame, then the destination dies
start_vm s4 --mem 64M --workload random,rate=20MB/s --disk "$T/s4.img,size=128M,populated=64M" ||
	not_ok "start s4"
before=$(sha "$T/s4.img")
start_vm d4 --mem 64M --incoming 127.0.0.1:0 --disk "$T/d4.img,size=128M" \
	--dump-on-resume "$T/d4.resume" || not_ok "start d4"
start_fault f4 "$(incoming_of d4)" "dir=to-dest,frame=BLOCKS,nth=20,action=stall"
(migrate mig4 s4 --to "$FAULT_ADDR" --channels 1 --timeout 4000; exit $MIG_RC) &
mpid=$!
for _ in $(seq $((300 * SLOW))); do grep -q "stall" "$T/f4.log" 2>/dev/null && break; sleep 0.02; done
check "killed mid-disk: the disk was being sent" grep_file "$T/f4.log" "BLOCKS"
kill -KILL "${VMPID[d4]}" 2>/dev/null
wait $mpid
MIG_RC=$?
check "killed mid-disk: migrate exits 1" rc_is 1 "$MIG_RC" "migrate"
check "killed mid-disk: the destination never resumed" test ! -e "$T/d4.resume"
check "killed mid-disk: source state is running" wait_state s4 running 10
check "killed mid-disk: source heartbeat advances" hb_advances s4
check "killed mid-disk: source image unchanged" test "$(sha "$T/s4.img")" = "$before"
start_vm d4b --mem 64M --incoming 127.0.0.1:0 --disk "$T/d4b.img,size=128M" \
	--dump-on-resume "$T/d4b.resume" || not_ok "start d4b"
migrate mig4b s4 --to "$(incoming_of d4b)" --channels 2
check "killed mid-disk: a second migration then succeeds" rc_is 0 "$MIG_RC" "migrate"
check "killed mid-disk: and its image is the source's" same_file "$T/s4.img" "$T/d4b.resume.disk0"
check "vm s4 quits" quit_vm s4
check "vm d4b quits" quit_vm d4b

# --- 5. shared storage: both VMs open the same image
start_vm s5 --mem 64M --disk "$T/shared.img,size=64M,populated=16M" --disk-workload randwrite,rate=10MB/s \
	--dump-at-pause "$T/s5.pause" || not_ok "start s5"
start_vm d5 --mem 64M --incoming 127.0.0.1:0 --disk "$T/shared.img" --dump-on-resume "$T/d5.resume" ||
	not_ok "start d5"
migrate mig5 s5 --to "$(incoming_of d5)" --channels 2 --shared-storage
check "shared storage: migrate exits 0" rc_is 0 "$MIG_RC" "migrate"
check "shared storage: no disk bytes sent" \
	test "$(jget mig5 disks.0.bytes)" = 0 -a "$(jget mig5 disks.0.blocks)" = 0
check "shared storage: the report says shared" test "$(jget mig5 shared_storage)" = true
check "shared storage: flushed at the pause" test -n "$(jget mig5 disk_flush_ms)"
check "shared storage: the image at resume is the image at the pause" \
	same_file "$T/s5.pause.disk0" "$T/d5.resume.disk0"
check "shared storage: memory verified" same_memory "$T/s5.pause" "$T/d5.resume"
check "shared storage: the destination writes on" disk_written_advances d5
check "vm s5 quits" quit_vm s5
check "vm d5 quits" quit_vm d5

# --- 7. the per-block round rule: one of three channels delays every
# BLOCKS frame, so older copies of blocks arrive after newer ones sent on
# the other channels; they must be discarded, not written over them
start_vm s7 --mem 32M --disk "$T/s7.img,size=32M,populated=32M" \
	--disk-workload randwrite,rate=40MB/s,threads=2 --dump-at-pause "$T/s7.pause" || not_ok "start s7"
start_vm d7 --mem 32M --incoming 127.0.0.1:0 --disk "$T/d7.img,size=32M" \
	--dump-on-resume "$T/d7.resume" || not_ok "start d7"
start_fault f7 "$(incoming_of d7)" "dir=to-dest,frame=BLOCKS,action=delay,delay=15"
migrate mig7 s7 --to "$FAULT_ADDR,$(incoming_of d7)" --channels 3 --downtime 5 --max-rounds 8 --policy force
check "slow channel: migrate exits 0" rc_is 0 "$MIG_RC" "migrate"
check "slow channel: stale blocks were discarded" \
	test "$(status_get d7 last_migration.stale_pages)" -gt 0
check "slow channel: disk verified (cmp)" same_file "$T/s7.pause.disk0" "$T/d7.resume.disk0"
check "vm s7 quits" quit_vm s7
check "vm d7 quits" quit_vm d7

# --- 8. over TLS (pre-shared keys): the records are made in userspace, so the
# blocks go through a read and the TLS layer instead of sendfile
if "$HERE/../tls/mkcreds.sh" psk "$T/keys.psk" 2>"$T/mkcreds.err"; then
	start_vm s8 --mem 32M --workload random,rate=10MB/s --disk "$T/s8.img,size=32M,populated=8M" \
		--disk-workload randwrite,rate=10MB/s --dump-at-pause "$T/s8.pause" || not_ok "start s8"
	start_vm d8 --mem 32M --incoming 127.0.0.1:0 --tls-psk "$T/keys.psk" --disk "$T/d8.img,size=32M" \
		--dump-on-resume "$T/d8.resume" || not_ok "start d8"
	migrate mig8 s8 --to "$(incoming_of d8)" --channels 2 --tls-psk "$T/keys.psk"
	check "TLS: migrate exits 0" rc_is 0 "$MIG_RC" "migrate"
	check "TLS: PSK with userspace records" \
		test "$(jget mig8 tls)/$(jget mig8 tls_records)" = psk/userspace
	check "TLS: disk verified (cmp)" same_file "$T/s8.pause.disk0" "$T/d8.resume.disk0"
	check "TLS: memory verified" same_memory "$T/s8.pause" "$T/d8.resume"
	check "vm s8 quits" quit_vm s8
	check "vm d8 quits" quit_vm d8
else
	not_ok "TLS: make pre-shared keys"
	diag <"$T/mkcreds.err"
fi

# --- 9. failover mid-disk: one of two channels is cut at its 8th BLOCKS
# frame; the disk chunks it had not had acknowledged go again on the other
start_vm s9 --mem 32M --workload random,rate=10MB/s --disk "$T/s9.img,size=64M,populated=32M" \
	--disk-workload randwrite,rate=10MB/s --dump-at-pause "$T/s9.pause" || not_ok "start s9"
start_vm d9 --mem 32M --incoming 127.0.0.1:0 --disk "$T/d9.img,size=64M" --dump-on-resume "$T/d9.resume" ||
	not_ok "start d9"
start_fault f9 "$(incoming_of d9)" "dir=to-dest,frame=BLOCKS,nth=8,action=cut"
migrate mig9 s9 --to "$(incoming_of d9),$FAULT_ADDR" --channels 2 --timeout 5000 --no-reconnect
check "failover mid-disk: migrate exits 0" rc_is 0 "$MIG_RC" "migrate"
check "failover mid-disk: a channel was cut in the disk's frames" grep_file "$T/f9.log" "cut.*BLOCKS|BLOCKS.*cut"
check "failover mid-disk: the report names the lost channel" test -n "$(jget mig9 lost_channels.0.reason)"
check "failover mid-disk: disk verified (cmp)" same_file "$T/s9.pause.disk0" "$T/d9.resume.disk0"
check "failover mid-disk: memory verified" same_memory "$T/s9.pause" "$T/d9.resume"
check "vm s9 quits" quit_vm s9
check "vm d9 quits" quit_vm d9

# --- 6. refusals: each before any block, the source runs on
start_vm s6 --mem 32M --workload random,rate=10MB/s --disk "$T/s6.img,size=64M,populated=4M" ||
	not_ok "start s6"
refused() { # LABEL DEST-ARGS PHRASE [MIGRATE-ARGS]
	local name=r$((++nref))
	start_vm "$name" --mem 32M --incoming 127.0.0.1:0 $2 || { not_ok "$1: start"; return; }
	migrate "mig-$name" s6 --to "$(incoming_of "$name")" --channels 2 ${4:-}
	check "$1: migrate exits 1" rc_is 1 "$MIG_RC" "migrate"
	check "$1: says why" grep_file "$T/mig-$name.err" "$3"
	check "$1: the destination exits non-zero, never resumed" exited_nonzero "$name" 30
	check "$1: source runs on" wait_state s6 running 10
}
nref=0
refused "no disk at the destination" "" "source has 1 disk, destination has 0"
refused "a smaller disk" "--disk $T/r2.img,size=32M" "disk 0: source has 67108864 bytes, destination has 33554432 \(destination disk is smaller\)"
refused "another block size" "--disk $T/r3.img,size=64M,block=128K" "disk 0: source tracks 65536-byte blocks, destination 131072"
refused "the source's own image" "--disk $T/s6.img" "is the source's own file"
check "source's own image: untouched by the refused destination" test "$(alloc_kib "$T/s6.img")" -le 5000
check "vm s6 quits" quit_vm s6

finish
