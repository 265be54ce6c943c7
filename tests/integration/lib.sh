# shellcheck shell=bash
# Shared helpers for the integration tests; sourced by each test script.
# Usage of a script: SCRIPT /path/to/pmigrate
# Prints TAP ("ok N - ...", plan at the end).  Every process a script starts
# is recorded and ended by pid on exit; its temp directory is removed.

PM=${1:?usage: $0 /path/to/pmigrate}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# A plain interpreter: version-manager shims cost ~0.4 s a call.
PY=$(command -v /usr/bin/python3 || command -v python3)
TOOL=("$PY" "$HERE/pmtool.py")
T=$(mktemp -d "${TMPDIR:-/tmp}/pmigrate-it.XXXXXX")
# Under sanitizers everything is slower: scale the waits, never the checks.
SLOW=${PM_TEST_SLOW:-1}
case "$PM" in *asan* | *tsan* | *san*) SLOW=3 ;; esac
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

declare -A VMPID=()      # name -> pid of "pmigrate vm"
declare -A VMRC=()       # name -> exit code once it exited
EXTRA_PIDS=()            # helpers (proxies, ...)
VM_PREFIX=()             # runs VMs under it, e.g. (ip netns exec NS)
TESTNUM=0
FAILS=0

cleanup() {
	local p name
	for name in "${!VMPID[@]}"; do
		p=${VMPID[$name]}
		kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null
	done
	for p in "${EXTRA_PIDS[@]}"; do
		kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null
	done
	for name in "${!VMPID[@]}"; do
		p=${VMPID[$name]}
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
	done
	for p in "${EXTRA_PIDS[@]}"; do
		kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
	done
	wait 2>/dev/null
	if [ -n "${PM_TEST_KEEP:-}" ]; then echo "# kept $T" ; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok() {
	TESTNUM=$((TESTNUM + 1))
	echo "ok $TESTNUM - $*"
}
not_ok() {
	TESTNUM=$((TESTNUM + 1))
	FAILS=$((FAILS + 1))
	echo "not ok $TESTNUM - $*"
}
diag() { sed 's/^/# /'; }
# check DESC CMD...: one TAP line from a command's success.
check() {
	local desc=$1
	shift
	if "$@"; then ok "$desc"; else not_ok "$desc"; fi
}
# Ends the script: plan last, exit status from the failures.
finish() {
	echo "1..$TESTNUM"
	[ "$FAILS" = 0 ]
}

now_ms() { date +%s%3N; }

# start_vm NAME ARGS...: runs "pmigrate vm --control $T/NAME.sock ARGS" in
# the background and waits until its control socket answers (or it died).
start_vm() {
	local name=$1
	shift
	rm -f "$T/$name.sock"
	"${VM_PREFIX[@]}" "$PM" vm --control "$T/$name.sock" "$@" >"$T/$name.out" 2>"$T/$name.err" &
	VMPID[$name]=$!
	local deadline=$(($(now_ms) + 60000 * SLOW))
	while [ "$(now_ms)" -lt "$deadline" ]; do
		if ! kill -0 "${VMPID[$name]}" 2>/dev/null; then
			wait "${VMPID[$name]}"
			VMRC[$name]=$?
			echo "vm $name exited early with ${VMRC[$name]}:" | diag
			diag <"$T/$name.err"
			return 1
		fi
		if [ -S "$T/$name.sock" ] && "$PM" status --control "$T/$name.sock" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.05
	done
	echo "vm $name: control socket did not come up" | diag
	return 1
}

# vm_alive NAME
vm_alive() { kill -0 "${VMPID[$1]}" 2>/dev/null; }

# status_get NAME PATH: a field of "pmigrate status --json" (empty if none).
status_get() {
	"$PM" status --control "$T/$1.sock" --json 2>/dev/null | "${TOOL[@]}" get "$2" 2>/dev/null
}

# wait_state NAME STATE [SECONDS]
wait_state() {
	local deadline=$(($(now_ms) + ${3:-20} * 1000 * SLOW)) s
	while [ "$(now_ms)" -lt "$deadline" ]; do
		s=$(status_get "$1" state)
		[ "$s" = "$2" ] && return 0
		sleep 0.02
	done
	echo "vm $1: state is '$s', expected '$2'" | diag
	return 1
}

# state_is NAME STATE: the state right now.
state_is() {
	local s
	s=$(status_get "$1" state)
	[ "$s" = "$2" ] && return 0
	echo "vm $1: state is '$s', expected '$2'" | diag
	return 1
}

# hb_advances NAME: the heartbeat count grows within a few seconds.
hb_advances() {
	local c0 c deadline=$(($(now_ms) + 5000 * SLOW))
	c0=$(status_get "$1" heartbeat.count)
	[ -n "$c0" ] || { echo "vm $1: no heartbeat in status" | diag; return 1; }
	while [ "$(now_ms)" -lt "$deadline" ]; do
		sleep 0.05
		c=$(status_get "$1" heartbeat.count)
		[ -n "$c" ] && [ "$c" -gt "$c0" ] && return 0
	done
	echo "vm $1: heartbeat stuck at $c0 (now '$c')" | diag
	return 1
}

# pages_written_advances NAME: the workload writes guest memory.
pages_written_advances() {
	local c0 c deadline=$(($(now_ms) + 5000 * SLOW))
	c0=$(status_get "$1" pages_written)
	while [ "$(now_ms)" -lt "$deadline" ]; do
		sleep 0.05
		c=$(status_get "$1" pages_written)
		[ -n "$c" ] && [ "$c" -gt "$c0" ] && return 0
	done
	echo "vm $1: pages_written stuck at $c0" | diag
	return 1
}

# incoming_of NAME: the addresses a destination listens on, comma-separated.
incoming_of() { status_get "$1" incoming; }

# wait_exit NAME [SECONDS]: waits for a vm process to exit; sets VMRC[NAME].
wait_exit() {
	local p=${VMPID[$1]} deadline=$(($(now_ms) + ${2:-20} * 1000 * SLOW))
	while kill -0 "$p" 2>/dev/null; do
		if [ "$(now_ms)" -ge "$deadline" ]; then
			echo "vm $1 (pid $p) did not exit" | diag
			return 1
		fi
		sleep 0.05
	done
	wait "$p"
	VMRC[$1]=$?
	return 0
}

# exited_nonzero NAME [SECONDS]: the vm exits, with a non-zero code.
exited_nonzero() {
	wait_exit "$1" "${2:-20}" || return 1
	[ "${VMRC[$1]}" != 0 ] && return 0
	echo "vm $1 exited with 0" | diag
	return 1
}

# quit_vm NAME: "quit" on the control socket; the process exits with 0
# (under ASan also: no leaks).
quit_vm() {
	if ! vm_alive "$1"; then
		wait_exit "$1" 1
		echo "vm $1 was not running (rc ${VMRC[$1]}):" | diag
		tail -5 "$T/$1.err" | diag
		return 1
	fi
	"${TOOL[@]}" ctl "$T/$1.sock" '{"execute":"quit"}' >/dev/null 2>&1
	wait_exit "$1" 30 || return 1
	[ "${VMRC[$1]}" = 0 ] && return 0
	echo "vm $1 exited with ${VMRC[$1]} after quit:" | diag
	tail -20 "$T/$1.err" | diag
	return 1
}

# grep_file FILE PATTERN: extended regexp, case-insensitive; shows the file
# when it does not match.
grep_file() {
	grep -qiE -- "$2" "$1" && return 0
	echo "no /$2/ in $(basename "$1"):" | diag
	tail -20 "$1" | diag
	return 1
}

# never_resumed NAME: a failed destination never resumed its VM.
never_resumed() {
	if grep -q "VM running" "$T/$1.err"; then
		echo "vm $1 resumed:" | diag
		diag <"$T/$1.err"
		return 1
	fi
	if [ -e "$T/$1.resume" ]; then
		echo "vm $1 wrote its dump-on-resume file" | diag
		return 1
	fi
	return 0
}

# migrate NAME SRC ARGS...: runs "pmigrate migrate" on SRC's socket, output
# in $T/NAME.{out,err,json}; sets MIG_RC.
migrate() {
	local name=$1 src=$2
	shift 2
	timeout $((120 * SLOW)) "$PM" migrate --control "$T/$src.sock" --no-progress \
		--json "$T/$name.json" "$@" >"$T/$name.out" 2>"$T/$name.err"
	MIG_RC=$?
}

# rc_is WANT GOT LABEL
rc_is() {
	[ "$2" = "$1" ] && return 0
	echo "$3: exit code $2, expected $1" | diag
	return 1
}

# same_memory A B: two dumps are byte-identical.
same_memory() {
	if [ ! -s "$1" ] || [ ! -s "$2" ]; then
		echo "missing dump: $(ls -l "$1" "$2" 2>&1)" | diag
		return 1
	fi
	cmp "$1" "$2" 2>&1 | diag
	[ "${PIPESTATUS[0]}" = 0 ]
}

# one_hop LABEL SRC DST WORKLOAD-KIND MIGRATE-ARGS...: migrates SRC -> DST
# over $HOP_CHANNELS (default 4) channels and checks everything: exit 0,
# SRC.pause == DST.resume, source "migrated", destination running with its
# heartbeat (and workload) advancing, the report.
one_hop() {
	local label=$1 src=$2 dst=$3 wl=$4
	shift 4
	local nch=${HOP_CHANNELS:-4}
	migrate "mig-$src" "$src" --to "$(incoming_of "$dst")" --channels "$nch" "$@"
	if rc_is 0 "$MIG_RC" "migrate"; then
		ok "$label: migrate exits 0"
	else
		not_ok "$label: migrate exits 0"
		diag <"$T/mig-$src.err"
		tail -5 "$T/$dst.err" | diag
	fi
	check "$label: destination memory at resume equals source memory at pause" \
		same_memory "$T/$src.pause" "$T/$dst.resume"
	rm -f "$T/$src.pause" "$T/$dst.resume"
	check "$label: source state is migrated" state_is "$src" migrated
	check "$label: destination state is running" wait_state "$dst" running 10
	check "$label: destination heartbeat advances" hb_advances "$dst"
	check "$label: destination runs the source's workload" \
		test "$(status_get "$dst" workload)" = "$(status_get "$src" workload)"
	if [ "$wl" != idle ]; then
		check "$label: destination workload writes memory" pages_written_advances "$dst"
	fi
	check "$label: report says completed over $nch channels" \
		test "$("${TOOL[@]}" get status <"$T/mig-$src.json") $("${TOOL[@]}" get channels <"$T/mig-$src.json")" = "completed $nch"
}

# wait_file FILE PATTERN SECONDS: FILE gets a line matching PATTERN.
wait_file() {
	local deadline=$(($(now_ms) + $3 * 1000 * SLOW))
	while [ "$(now_ms)" -lt "$deadline" ]; do
		grep -q -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.02
	done
	echo "no '$2' in $(basename "$1") after $3 s" | diag
	return 1
}

# start_fault NAME TARGET RULE...: the fault injector (pmfault, path in
# $FAULT) in front of TARGET, one --rule per argument; its events go to
# $T/NAME.log; sets FAULT_ADDR (127.0.0.1:port).
start_fault() {
	local name=$1 target=$2 args=() r
	shift 2
	for r in "$@"; do args+=(--rule "$r"); done
	rm -f "$T/$name.port"
	"$FAULT" --to "$target" --port-file "$T/$name.port" "${args[@]}" >"$T/$name.log" 2>&1 &
	EXTRA_PIDS+=($!)
	FAULT_ADDR=
	local deadline=$(($(now_ms) + 10000 * SLOW))
	while [ "$(now_ms)" -lt "$deadline" ]; do
		[ -s "$T/$name.port" ] && FAULT_ADDR=127.0.0.1:$(cat "$T/$name.port") && return 0
		sleep 0.02
	done
	echo "fault injector $name did not start" | diag
	return 1
}

# hb_stuck NAME: the heartbeat does not move (the VM is paused).
hb_stuck() {
	local c0 c
	c0=$(status_get "$1" heartbeat.count)
	sleep 0.3
	c=$(status_get "$1" heartbeat.count)
	[ -n "$c0" ] && [ "$c0" = "$c" ] && return 0
	echo "vm $1: heartbeat moved from $c0 to $c" | diag
	return 1
}
