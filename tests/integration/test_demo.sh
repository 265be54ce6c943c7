#!/bin/bash
# pmigrate demo, the README's first command: a live migration between two
# VM processes, verified, on its defaults made small; the same over TLS 1.3
# with the pre-shared key it makes (mode 0600, removed unless --keep); the
# KVM guest where /dev/kvm is; and bad options refused before any VM starts.
set -u
. "$(dirname "$0")/lib.sh"

jget() { "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$1"; }

# demo LABEL ARGS...: runs the demo, its JSON report in $T/LABEL.json.
demo() {
	local label=$1
	shift
	timeout $((240 * SLOW)) "$PM" demo --json "$T/$label.json" "$@" >"$T/$label.out" 2>"$T/$label.err" </dev/null
	DEMO_RC=$?
	[ "$DEMO_RC" = 0 ] || { tail -20 "$T/$label.out" "$T/$label.err" | diag; }
}

demo plain --mem 128M --workload random,rate=50MB/s
check "demo: exits 0" rc_is 0 "$DEMO_RC" demo
check "demo: says it migrated live and verified" grep -q "result       migrated live and verified" "$T/plain.out"
check "demo: the report says verified, over plain TCP" \
	test "$(jget "$T/plain.json" 'r["verified"], r.get("tls")')" = "True none"

demo tls --mem 128M --tls --keep
check "demo --tls: exits 0" rc_is 0 "$DEMO_RC" "demo --tls"
check "demo --tls: the report names TLS 1.3 with PSK" \
	test "$(jget "$T/tls.json" 'r["verified"], r.get("tls")')" = "True psk"
kept=$(sed -n 's/^files kept in //p' "$T/tls.out")
check "demo --tls: its key file is the owner's alone (0600)" \
	test "$(stat -c %a "$kept/demo.psk" 2>/dev/null)" = 600
[ -n "$kept" ] && case $kept in /tmp/pmigrate-demo.*) rm -rf "$kept" ;; esac

if [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
	demo kvm --vm kvm --mem 64M
	check "demo --vm kvm: exits 0 (every page re-checked at the destination)" rc_is 0 "$DEMO_RC" "demo --vm kvm"
	check "demo --vm kvm: the guest's check passed" grep -q "guest check  OK" "$T/kvm.out"
else
	ok "demo --vm kvm # SKIP no /dev/kvm here"
fi

# refused LABEL PHRASE ARGS...: exit 2 at once, saying PHRASE, no VM started.
refused() {
	local label=$1 phrase=$2
	shift 2
	timeout $((30 * SLOW)) "$PM" demo "$@" >"$T/out" 2>"$T/err" </dev/null
	local rc=$?
	check "demo $label: exit 2" rc_is 2 "$rc" "demo $label"
	check "demo $label: says /$phrase/" grep -q -- "$phrase" "$T/err"
	check "demo $label: starts no VM" test ! -s "$T/out"
}
refused "--vm bogus" "--vm must be synthetic, kvm or linux" --vm bogus
refused "--tls --vm linux" "--tls goes with the synthetic or the kvm VM" --tls --vm linux
refused "--kernel without --vm linux" "--kernel goes with --vm linux" --kernel /nonexistent
refused "--channels 0" "bad value '0'" --channels 0
refused "--workload bogus" "unknown workload 'bogus'" --workload bogus
finish
