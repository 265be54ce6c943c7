#!/bin/sh
# tools/nested/run itself (TAP): what comes back from L1, and how fast a
# dead or stuck L1 is noticed.  Usage: test_nested.sh NESTED_RUN
#  1. the command's output comes back byte for byte (stderr merged, a forged
#     end marker passed through), with its exit status, environment and
#     directory; /dev/kvm is there; a --share directory works both ways
#  2. L1 panicking mid-command: status 125 within 10 s, "panicked" said
#  3. a command that outlives --timeout: status 124 at the deadline
#  4. the tool killed with SIGKILL: its QEMU goes too
#  5. bad options exit 2, no boot
# Skipped where nested runs are not possible (tools/nested/run --check).
RUN=$1
NTESTS=5
echo "1..$NTESTS"
if ! why=$("$RUN" --check); then
	i=1
	while [ $i -le $NTESTS ]; do
		echo "ok $i # SKIP $why"
		i=$((i + 1))
	done
	exit 0
fi
T=$(mktemp -d)
BG=""
cleanup() {
	[ -n "$BG" ] && kill -9 $BG 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT
failed=0
result() { # N OK DESCRIPTION
	if [ "$2" = 1 ]; then
		echo "ok $1 - $3"
	else
		echo "not ok $1 - $3"
		sed 's/^/# /' "$T/err" 2>/dev/null | tail -n 30
		failed=1
	fi
}
now() { cut -d' ' -f1 /proc/uptime; }
boot_of() { sed -n 's/.*L1 up in \([0-9.]*\) s.*/\1/p' "$1"; }

# ---- 1: round trip ----
ok=1
mkdir -p "$T/cwd" "$T/share"
echo in >"$T/share/in"
"$RUN" --cache "$T/cache" --env X='a b' --cwd "$T/cwd" --share "$T/share" -- sh -c \
	'printf "one\n@@NESTED-EXIT 0 0@@\n"; echo two >&2; printf "%s|%s|" "$X" "$PWD"; [ -c /dev/kvm ] && printf kvm
	 cat "$0/in" >"$0/out" && echo out >>"$0/out"; exit 7' "$T/share" \
	>"$T/out" 2>"$T/err"
st=$?
[ "$(cat "$T/share/out" 2>/dev/null)" = "$(printf 'in\nout')" ] || { echo "# the 9p share did not work both ways"; ok=0; }
printf 'one\n@@NESTED-EXIT 0 0@@\ntwo\na b|%s|kvm' "$T/cwd" >"$T/expect"
[ $st = 7 ] || { echo "# status $st, expected 7"; ok=0; }
cmp "$T/out" "$T/expect" || { echo "# output:"; od -c "$T/out" | head -n 10 | sed 's/^/# /'; ok=0; }
grep -q 'L1 up in' "$T/err" || { echo "# no boot line"; ok=0; }
echo "# L1 boot: $(boot_of "$T/err") s"
result 1 $ok "output, status, environment, directory and a 9p share work with L1"

# ---- 2: L1 panics ----
ok=1
t0=$(now)
"$RUN" --cache "$T/cache" -- sh -c 'sleep 1; echo c >/proc/sysrq-trigger; sleep 600' >"$T/out" 2>"$T/err"
st=$?
took=$(echo "$(now) $t0 $(boot_of "$T/err")" | awk '{ printf "%.1f", $1 - $2 - $3 - 1 }')
echo "# noticed ${took} s after the panic was triggered (boot excluded)"
[ $st = 125 ] || { echo "# status $st, expected 125"; ok=0; }
grep -q 'panicked' "$T/err" || { echo "# 'panicked' not said"; ok=0; }
awk -v t="$took" 'BEGIN { exit !(t < 10) }' || { echo "# took too long"; ok=0; }
result 2 $ok "a panic in L1 is reported (status 125) within 10 s"

# ---- 3: deadline ----
ok=1
t0=$(now)
"$RUN" --cache "$T/cache" --timeout 15 -- sleep 600 >"$T/out" 2>"$T/err"
st=$?
took=$(echo "$(now) $t0" | awk '{ printf "%.1f", $1 - $2 }')
echo "# deadline 15 s, returned after $took s"
[ $st = 124 ] || { echo "# status $st, expected 124"; ok=0; }
grep -q 'deadline' "$T/err" || { echo "# 'deadline' not said"; ok=0; }
awk -v t="$took" 'BEGIN { exit !(t >= 15 && t < 25) }' || { echo "# not at the deadline"; ok=0; }
result 3 $ok "a command past --timeout is stopped (status 124) at the deadline"

# ---- 4: the tool killed ----
ok=1
rm -f "$T/err"  # not to find the last case's boot line before the shell truncates it
mkdir "$T/tmp"
TMPDIR="$T/tmp" "$RUN" --cache "$T/cache" -- sleep 600 >"$T/out" 2>"$T/err" &
BG=$!
i=0
while ! grep -q 'L1 up in' "$T/err" 2>/dev/null && [ $i -lt 1800 ]; do
	sleep 0.1
	i=$((i + 1))
done
q=$(grep -l qemu-system /proc/[0-9]*/cmdline 2>/dev/null | while read -r f; do
	p=${f#/proc/}
	p=${p%/cmdline}
	[ "$(awk '/^PPid:/ { print $2 }' /proc/$p/status 2>/dev/null)" = "$BG" ] && echo "$p"
done)
[ -n "$q" ] || { echo "# no QEMU child found"; ok=0; }
kill -9 $BG
wait $BG 2>/dev/null
BG=""
i=0
while [ -n "$q" ] && kill -0 "$q" 2>/dev/null && [ $i -lt 50 ]; do
	sleep 0.1
	i=$((i + 1))
done
if [ -n "$q" ] && kill -0 "$q" 2>/dev/null; then
	echo "# QEMU $q still runs"
	kill -9 "$q"
	ok=0
fi
TMPDIR="$T/tmp" "$RUN" --check >/dev/null
[ -z "$(ls "$T/tmp")" ] || { echo "# the killed run's directory was not removed by the next run"; ok=0; }
result 4 $ok "killing the tool (SIGKILL) ends its QEMU; the next run removes its directory"

# ---- 5: bad options ----
ok=1
"$RUN" >"$T/out" 2>"$T/err"
[ $? = 2 ] && grep -q 'no command' "$T/err" || { echo "# no command: not refused"; ok=0; }
"$RUN" --env 1X=2 -- true >"$T/out" 2>"$T/err"
[ $? = 2 ] && grep -q 'VAR=VALUE' "$T/err" || { echo "# bad --env: not refused"; ok=0; }
"$RUN" --project "$T/nonexistent" -- true >"$T/out" 2>"$T/err"
[ $? = 2 ] && grep -q 'not a Meson build' "$T/err" && [ ! -e "$T/nonexistent" ] ||
	{ echo "# --project of no build: not refused"; ok=0; }
"$RUN" --kernel /nonexistent -- true >"$T/out" 2>"$T/err"
[ $? = 125 ] && grep -q 'not possible' "$T/err" || { echo "# missing kernel: not refused"; ok=0; }
result 5 $ok "bad options exit 2, a missing kernel 125, before any boot"
exit $failed
