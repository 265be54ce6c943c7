#!/bin/bash
# Migrations that fail: destination unreachable, smaller or larger, killed
# mid-migration, one of four channels cut mid-migration, a workload that
# does not converge under --policy abort.  Each time "pmigrate migrate"
# exits 1 with a clear message, the source VM keeps running (state
# "running", heartbeat advancing) and a failed destination exits non-zero
# without ever resuming.
set -u
. "$(dirname "$0")/lib.sh"

# source_survives LABEL VM: the source runs on after a failed migration.
source_survives() {
	check "$1: source state is running" wait_state "$2" running 10
	check "$1: source heartbeat advances" hb_advances "$2"
	check "$1: source workload writes memory" pages_written_advances "$2"
}

# migrate_fails LABEL MIGRATION-NAME PHRASE: exit 1 and PHRASE on stderr.
migrate_fails() {
	check "$1: migrate exits 1" rc_is 1 "$MIG_RC" "$1"
	check "$1: migrate says why (/$3/)" grep_file "$T/$2.err" "$3"
	check "$1: report says failed" test "$("${TOOL[@]}" get status <"$T/$2.json")" = failed
}

# dest_fails LABEL VM PHRASE: a destination exits non-zero, never resumed.
dest_fails() {
	check "$1: destination exits non-zero" exited_nonzero "$2" 30
	check "$1: destination says why (/$3/)" grep_file "$T/$2.err" "incoming migration failed: .*$3"
	check "$1: destination never resumed" never_resumed "$2"
}

# s1: a small VM for the failures that happen before any page moves.
if ! start_vm s1 --mem 64M --workload random,rate=1GB/s,threads=2; then
	not_ok "start the source VM"
	finish
	exit 1
fi

# --- nothing listens on the port
port=$("${TOOL[@]}" free-port)
migrate unreach s1 --to "127.0.0.1:$port" --channels 4
migrate_fails "unreachable" unreach "cannot connect to 127\.0\.0\.1:$port: Connection refused"
source_survives "unreachable" s1

# --- destination memory smaller (and larger) than the source's
for size in 32M 128M; do
	d=dst-$size
	start_vm "$d" --mem $size --incoming 127.0.0.1:0 --dump-on-resume "$T/$d.resume" ||
		not_ok "$size destination: start"
	migrate "mig-$d" s1 --to "$(incoming_of "$d")" --channels 4
	if [ $size = 32M ]; then
		phrase="source has 64 MiB, destination has 32 MiB \(destination memory is smaller\)"
	else
		phrase="source has 64 MiB, destination has 128 MiB"
	fi
	migrate_fails "$size destination" "mig-$d" "destination refused: memory region 0: $phrase"
	check "$size destination: no page was sent" \
		test "$("${TOOL[@]}" get pages_sent <"$T/mig-$d.json")" = 0
	dest_fails "$size destination" "$d" "$phrase"
	source_survives "$size destination" s1
done

# --- a workload that does not converge, with --policy abort
start_vm nc --mem 64M --incoming 127.0.0.1:0 --dump-on-resume "$T/nc.resume" ||
	not_ok "non-converging: start the destination"
# One serial channel makes round 1 long, so plenty is dirty when round 2
# decides; a 1 ms target then cannot be met.
migrate mig-nc s1 --to "$(incoming_of nc)" --serial --policy abort --max-rounds 1 --downtime 1
migrate_fails "--policy abort" mig-nc "does not converge"
dest_fails "--policy abort" nc "connection closed|source aborted|reset"
source_survives "--policy abort" s1
check "vm s1 quits cleanly (exit 0)" quit_vm s1

# s2: large enough that a migration lasts a few seconds.
if ! start_vm s2 --mem 256M --fill random --workload random,rate=100MB/s; then
	not_ok "start the large source VM"
	finish
	exit 1
fi

# start_proxy NAME TARGET BYTES MODE: pmtool.py proxy in the background;
# sets PROXY_PORT.
start_proxy() {
	rm -f "$T/$1.port"
	"${TOOL[@]}" proxy "$T/$1.port" "$2" "$3" "$4" >"$T/$1.out" 2>&1 &
	EXTRA_PIDS+=($!)
	PROXY_PORT=
	for _ in $(seq $((200 * SLOW))); do
		[ -s "$T/$1.port" ] && PROXY_PORT=$(cat "$T/$1.port") && return 0
		sleep 0.05
	done
	echo "proxy $1 did not start" | diag
	return 1
}

# --- destination killed (SIGKILL) mid-migration.  Channel 3 of 4 runs
# through a proxy that hangs it after 1 MB, so the migration cannot finish
# before the kill (the destination acknowledges only once every channel
# ended); channels 0-2 go straight to the destination.
start_vm killed --mem 256M --incoming 127.0.0.1:0 --dump-on-resume "$T/killed.resume" ||
	not_ok "killed: start the destination"
daddr=$(incoming_of killed)
start_proxy pk "$daddr" $((1 << 20)) stall
(migrate mig-killed s2 --to "$daddr,$daddr,$daddr,127.0.0.1:$PROXY_PORT" --channels 4; exit $MIG_RC) &
mpid=$!
if wait_file "$T/pk.out" stalled 60; then
	check "destination killed: the source was migrating" state_is s2 migrating
	kill -KILL "${VMPID[killed]}"
else
	not_ok "destination killed: the source was migrating"
fi
wait $mpid
MIG_RC=$?
migrate_fails "destination killed" mig-killed "connection reset|broken pipe|connection closed"
wait_exit killed 10
check "destination killed: it died of SIGKILL" rc_is 137 "${VMRC[killed]}" "killed destination"
check "destination killed: it never resumed" never_resumed killed
source_survives "destination killed" s2

# --- one channel of four cut mid-migration (the proxy resets it after 1 MB),
# without failover: the migration fails, the source runs on.
start_vm cut --mem 256M --incoming 127.0.0.1:0 --dump-on-resume "$T/cut.resume" ||
	not_ok "cut: start the destination"
daddr=$(incoming_of cut)
start_proxy pc "$daddr" $((1 << 20)) cut
migrate mig-cut s2 --to "$daddr,$daddr,$daddr,127.0.0.1:$PROXY_PORT" --channels 4 --no-failover
migrate_fails "channel cut, --no-failover" mig-cut "connection reset|broken pipe|connection closed"
check "channel cut, --no-failover: the proxy did cut it" grep_file "$T/pc.out" "cut the channel"
dest_fails "channel cut, --no-failover" cut "channel 3"
source_survives "channel cut, --no-failover" s2

# --- the same with failover (the default): channel 3's work moves to the
# other three, the migration completes with the memory verified, and the
# report names the lost channel.
start_vm cut2 --mem 256M --incoming 127.0.0.1:0 --dump-on-resume "$T/cut2.resume" ||
	not_ok "cut: start the destination"
daddr=$(incoming_of cut2)
start_proxy pc2 "$daddr" $((1 << 20)) cut
migrate mig-cut2 s2 --to "$daddr,$daddr,$daddr,127.0.0.1:$PROXY_PORT" --channels 4
check "channel cut, failover: migrate exits 0" rc_is 0 "$MIG_RC" "migrate"
check "channel cut, failover: the proxy did cut it" grep_file "$T/pc2.out" "cut the channel"
check "channel cut, failover: destination runs" wait_state cut2 running 10
check "channel cut, failover: destination heartbeat advances" hb_advances cut2
check "channel cut, failover: source is migrated" state_is s2 migrated
check "channel cut, failover: report names channel 3 as lost" \
	test "$("${TOOL[@]}" get lost_channels.0.channel <"$T/mig-cut2.json")" = 3
check "channel cut, failover: report says why" \
	grep -qiE "reset|broken pipe|closed" <<<"$("${TOOL[@]}" get lost_channels.0.reason <"$T/mig-cut2.json")"
check "vm s2 quits cleanly (exit 0)" quit_vm s2
check "vm cut2 quits cleanly (exit 0)" quit_vm cut2
finish
