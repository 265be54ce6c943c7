#!/bin/sh
# tests/kvm-ways (TAP), with stand-in test programs: how results from each
# way are merged and how a broken run is reported.
# Usage: test_kvm_ways.sh KVM_WAYS BUILD
#  1. a program that ends early, one that fails after all its results, and
#     one killed at its time limit are failures, named by way (direct only,
#     with a stand-in pmvm that "runs" a guest: no boot)
#  2. an unknown PMIGRATE_KVM_TESTS is refused
#  3. no usable direct KVM (a stand-in pmvm that fails): the reason is given,
#     the program runs nested; L1 panicking mid-program is a failure named
#     "L1 failed", reported within 10 s of the panic (skipped where nested
#     runs are not possible)
WAYS=$1
BUILD=$2
RUN=$(dirname "$WAYS")/../tools/nested/run
echo "1..3"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
failed=0
now() { cut -d' ' -f1 /proc/uptime; }
expect() { # FILE REGEX
	grep -qE -- "$2" "$1" || { echo "# missing: $2"; ok=0; }
}

# ---- 1 ----
ok=1
PMIGRATE_KVM_TESTS=direct "$WAYS" --pmvm /bin/true --guests "$T" --project "$BUILD" -- \
	sh -c 'echo 1..3; echo ok 1 - a; echo "ok 2 # SKIP why"' >"$T/short" 2>&1
[ $? = 1 ] || { echo "# a short run did not fail"; ok=0; }
expect "$T/short" '^ok 1 - direct: a$'
expect "$T/short" '^ok 2 - direct: # SKIP why$'
expect "$T/short" '^not ok 3 - direct: exited with status 0 after 2 of 3 results$'
expect "$T/short" '^1\.\.3$'
expect "$T/short" '^# kvm-way: direct: 1 passed, 1 failed, 1 skipped in'
expect "$T/short" '^# kvm-way: nested: not run: PMIGRATE_KVM_TESTS=direct$'
PMIGRATE_KVM_TESTS=direct "$WAYS" --pmvm /bin/true --guests "$T" --project "$BUILD" -- \
	sh -c 'echo 1..1; echo ok 1 - a; echo oops >&2; exit 3' >"$T/status" 2>&1
[ $? = 1 ] || { echo "# a failing exit status did not fail"; ok=0; }
expect "$T/status" '^not ok 2 - direct: exited with status 3 after 1 of 1 results$'
t0=$(now)
PMIGRATE_KVM_TESTS=direct "$WAYS" --pmvm /bin/true --guests "$T" --project "$BUILD" \
	--direct-timeout 2 -- sh -c 'echo 1..1; exec sleep 60' >"$T/hang" 2>&1
[ $? = 1 ] || { echo "# a hanging program did not fail"; ok=0; }
expect "$T/hang" '^not ok 1 - direct: no result after 2 s \(killed\)$'
awk -v a="$(now)" -v b="$t0" 'BEGIN { exit !(a - b < 10) }' || { echo "# the time limit was not kept"; ok=0; }
if [ $ok = 1 ]; then echo "ok 1 - results renumbered by way; short, failing and hanging runs fail"; else
	sed 's/^/#   /' "$T/short" "$T/status" "$T/hang"; echo "not ok 1 - merging results"; failed=1; fi

# ---- 2 ----
ok=1
PMIGRATE_KVM_TESTS=sometimes "$WAYS" --pmvm /bin/true --guests "$T" --project "$BUILD" -- true >"$T/bad" 2>&1
[ $? = 1 ] || { echo "# an unknown PMIGRATE_KVM_TESTS was accepted"; ok=0; }
expect "$T/bad" '^Bail out! PMIGRATE_KVM_TESTS=sometimes'
if [ $ok = 1 ]; then echo "ok 2 - an unknown PMIGRATE_KVM_TESTS is refused"; else
	echo "not ok 2 - PMIGRATE_KVM_TESTS checked"; failed=1; fi

# ---- 3 ----
if ! why=$("$RUN" --check); then
	echo "ok 3 # SKIP $why"
	exit $failed
fi
ok=1
PMIGRATE_KVM_TESTS=both "$WAYS" --pmvm /bin/false --guests "$T" --project "$BUILD" -- \
	sh -c 'echo 1..2; echo ok 1 - before; sleep 1; echo c >/proc/sysrq-trigger; sleep 600' >"$T/panic" 2>&1 &
pid=$!
# From the first result on, L1 sleeps 1 s and panics.
while ! grep -q '^ok 1 - nested: before' "$T/panic" && kill -0 $pid 2>/dev/null; do sleep 0.1; done
t0=$(now)
wait $pid
st=$?
took=$(awk -v a="$(now)" -v b="$t0" 'BEGIN { printf "%.1f", a - b - 1 }')
echo "# L1's panic reported ${took} s after it was triggered"
[ $st = 1 ] || { echo "# status $st, expected 1"; ok=0; }
expect "$T/panic" '^# kvm-way: direct: not run: KVM unusable'
expect "$T/panic" '^ok 1 - nested: before$'
expect "$T/panic" '^not ok 2 - nested: L1 failed after 1 of 2 results$'
expect "$T/panic" '^# nested: L1 panicked'
expect "$T/panic" '^# kvm-way: nested: 1 passed, 1 failed in'
awk -v t="$took" 'BEGIN { exit !(t < 10) }' || { echo "# too slow"; ok=0; }
if [ $ok = 1 ]; then echo "ok 3 - no direct KVM: runs nested; L1 panicking is a failure, reported at once"; else
	sed 's/^/#   /' "$T/panic"; echo "not ok 3 - nested way"; failed=1; fi
exit $failed
