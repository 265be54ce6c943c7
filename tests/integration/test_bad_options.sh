#!/bin/bash
# Bad options and bad addresses: each is refused up front with a clear
# message and a non-zero exit (2 for a malformed command line, 1 for an
# address that cannot be used), leaving nothing running; a source VM
# asked to migrate with them keeps running and never leaves "running".
set -u
. "$(dirname "$0")/lib.sh"

# refused LABEL WANT-RC PHRASE -- ARGS...: "pmigrate ARGS" exits WANT-RC
# within 30 s and says PHRASE on stderr.
refused() {
	local label=$1 want=$2 phrase=$3
	shift 4
	timeout $((30 * SLOW)) "$PM" "$@" >"$T/out" 2>"$T/err" </dev/null
	local rc=$?
	check "$label: exit $want" rc_is "$want" "$rc" "$label"
	check "$label: says /$phrase/" grep_file "$T/err" "$phrase"
}

# --- pmigrate vm
sock=$T/vm.sock
refused "vm --mem abc" 2 "bad size 'abc'" -- vm --mem abc --control "$sock"
refused "vm --mem -5M" 2 "bad size '-5M'" -- vm --mem -5M --control "$sock"
refused "vm --mem 3X" 2 "bad size unit in '3X'" -- vm --mem 3X --control "$sock"
refused "vm without --mem" 2 "--mem and --control are required" -- vm --control "$sock"
refused "vm without --control" 2 "--mem and --control are required" -- vm --mem 16M
refused "vm --workload bogus" 2 "unknown workload 'bogus'" -- vm --mem 16M --control "$sock" --workload bogus
refused "vm --workload random,rate=fast" 2 "bad rate 'fast'" -- vm --mem 16M --control "$sock" --workload random,rate=fast
refused "vm --workload zipf hot=500%" 2 "bad hot set '500%'" -- vm --mem 16M --control "$sock" --workload zipf,rate=10MB/s,hot=500%
refused "vm --workload seed=-1" 2 "bad seed '-1'" -- vm --mem 16M --control "$sock" --workload random,rate=1MB/s,seed=-1
refused "vm --workload seed=2^64" 2 "bad seed '18446744073709551616'" -- vm --mem 16M --control "$sock" --workload random,rate=1MB/s,seed=18446744073709551616
refused "vm --disk-workload seed=-1" 2 "bad seed '-1'" -- vm --mem 16M --control "$sock" --disk-workload randwrite,rate=1MB/s,seed=-1
refused "vm --fill bogus" 2 "--fill must be mixed, random or zero" -- vm --mem 16M --control "$sock" --fill bogus
refused "vm --dirty bogus" 2 "--dirty must be auto, uffd-wp, soft-dirty or self" -- vm --mem 16M --control "$sock" --dirty bogus
refused "vm --timeout abc" 2 "bad --timeout 'abc'" -- vm --mem 16M --control "$sock" --incoming 127.0.0.1:0 --timeout abc
refused "vm unknown option" 2 "unrecognized option '--bogus'" -- vm --mem 16M --control "$sock" --bogus
refused "vm stray argument" 2 "unexpected argument 'extra'" -- vm --mem 16M --control "$sock" extra
refused "vm --incoming with --mem-file" 2 "exclude each other" -- vm --mem 16M --control "$sock" --incoming 127.0.0.1:0 --mem-file /dev/null
# More memory than the host has: refused before anything is allocated
# (not left to the OOM killer), for a destination too.
refused "vm --mem 1T" 1 "cannot provide 1024.0 GiB of guest memory: only .* GiB is available" -- vm --mem 1T --control "$sock"
refused "vm --mem 1T --incoming" 1 "cannot provide 1024.0 GiB" -- vm --mem 1T --control "$sock" --incoming 127.0.0.1:0
check "vm --mem 1T: no control socket left" test ! -e "$sock"
refused "vm --mem-file missing" 1 "cannot open memory file $T/nonexistent" -- vm --mem 16M --control "$sock" --mem-file "$T/nonexistent"
refused "vm --incoming nohost" 1 "address 'nohost' has no port" -- vm --mem 16M --control "$sock" --incoming nohost
refused "vm --incoming port out of range" 1 "bad port in address '127.0.0.1:70000'" -- vm --mem 16M --control "$sock" --incoming 127.0.0.1:70000
refused "vm --incoming unresolvable host" 1 "cannot resolve 'nohost.invalid'" -- vm --mem 16M --control "$sock" --incoming nohost.invalid:1234
port=$("${TOOL[@]}" free-port)
refused "vm --incoming second address bad" 1 "bad port in address '127.0.0.1:x'" -- vm --mem 16M --control "$sock" --incoming "127.0.0.1:$port,127.0.0.1:x"
check "the refused VMs left no control socket behind" test ! -e "$sock"
check "the refused destination left nothing listening on $port" \
	"$PY" -c 'import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0)' "$port"
refused "status of a VM that is not there" 1 "cannot connect to control socket" -- status --control "$sock"

# --- --control never deletes anything but a stale socket
echo precious >"$T/precious.txt"
refused "vm --control over a regular file" 1 "not a socket is in the way" -- vm --mem 16M --control "$T/precious.txt"
check "the regular file is untouched" grep -qx precious "$T/precious.txt"
ln -s "$T/precious.txt" "$T/link.sock"
refused "vm --control over a symlink" 1 "not a socket is in the way" -- vm --mem 16M --control "$T/link.sock"
check "the symlink and its target are untouched" test -L "$T/link.sock" -a "$(cat "$T/precious.txt")" = precious

# --- pmigrate migrate, against a running source
if ! start_vm src --mem 16M --workload random,rate=20MB/s; then
	not_ok "start the source VM"
	finish
	exit 1
fi
s=$T/src.sock
to=127.0.0.1:$port
check "the control socket is mode 0600" test "$(stat -c %a "$s")" = 600
refused "vm --control of a live VM" 1 "in use by another process" -- vm --mem 16M --control "$s"
check "the live VM's control socket still answers" state_is src running
refused "migrate without --to" 2 "--control and --to are required" -- migrate --control "$s"
refused "migrate without --control" 2 "--control and --to are required" -- migrate --to "$to"
refused "migrate --channels 0" 2 "bad value '0' for --channels" -- migrate --control "$s" --to "$to" --channels 0
refused "migrate --channels 65" 2 "bad value '65' for --channels" -- migrate --control "$s" --to "$to" --channels 65
refused "migrate --channels x" 2 "bad value 'x' for --channels" -- migrate --control "$s" --to "$to" --channels x
refused "migrate --downtime -5" 2 "bad value '-5' for --downtime" -- migrate --control "$s" --to "$to" --downtime -5
refused "migrate --max-rounds 1000" 2 "bad value '1000' for --max-rounds" -- migrate --control "$s" --to "$to" --max-rounds 1000
refused "migrate --timeout too large" 2 "bad value '99999999999' for --timeout" -- migrate --control "$s" --to "$to" --timeout 99999999999
refused "migrate --policy bogus" 2 "--policy must be throttle, force or abort" -- migrate --control "$s" --to "$to" --policy bogus
refused "migrate --compress bogus" 2 "--compress must be none, lz4 or zstd" -- migrate --control "$s" --to "$to" --compress bogus
refused "migrate --max-bytes-factor 0" 2 "bad --max-bytes-factor" -- migrate --control "$s" --to "$to" --max-bytes-factor 0
refused "migrate stray argument" 2 "unexpected argument 'now'" -- migrate --control "$s" --to "$to" now
refused "migrate to a dead control socket" 1 "cannot connect to control socket" -- migrate --control "$T/none.sock" --to "$to"
check "after refused options the source never started a migration" \
	test -z "$(status_get src last_migration.status)"
refused "migrate --to nohost" 1 "address 'nohost' has no port" -- migrate --control "$s" --to nohost --no-progress
refused "migrate --to port out of range" 1 "bad port in address '127.0.0.1:99999'" -- migrate --control "$s" --to 127.0.0.1:99999 --no-progress
refused "migrate --to unresolvable host" 1 "cannot resolve 'nohost.invalid'" -- migrate --control "$s" --to nohost.invalid:1234 --no-progress
refused "migrate --to empty list" 1 "'to' must list one or more host:port addresses" -- migrate --control "$s" --to , --no-progress
refused "migrate --bind non-local address" 1 "cannot bind to 192.0.2.1" -- migrate --control "$s" --to "$to" --bind 192.0.2.1 --no-progress
check "source state is running" state_is src running
check "source heartbeat advances" hb_advances src
check "source workload writes memory" pages_written_advances src
check "vm src quits cleanly (exit 0)" quit_vm src
check "quit removes the control socket" test ! -e "$s"

# --- a destination still waiting for a migration ends on SIGTERM and on
# "quit" (it used to sit in pm_incoming_run ignoring both)
for how in SIGTERM quit; do
	if start_vm "wait-$how" --mem 16M --incoming 127.0.0.1:0; then
		if [ $how = SIGTERM ]; then
			kill -TERM "${VMPID[wait-$how]}"
		else
			"${TOOL[@]}" ctl "$T/wait-$how.sock" '{"execute":"quit"}' >/dev/null
		fi
		check "waiting destination, $how: exits" wait_exit "wait-$how" 10
		check "waiting destination, $how: says no VM was started" \
			grep_file "$T/wait-$how.err" "no VM was started"
		check "waiting destination, $how: removes its control socket" test ! -e "$T/wait-$how.sock"
	else
		not_ok "waiting destination, $how: start"
	fi
done
finish
