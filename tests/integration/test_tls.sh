#!/bin/bash
# TLS 1.3 on every channel, end to end between "pmigrate vm" processes, with
# credentials made for the run (tests/tls/mkcreds.sh).  A VM goes along a
# chain -- X.509 with an authz list, then PSK, then plain TCP on loopback --
# and every hop's memory is verified.  Before each hop the destination is
# attacked: a wrong CA, a client certificate from another CA, a client the
# authz list does not name, a plain source, the wrong kind of credentials,
# a wrong name, a wrong key, an unknown identity, a TLS source to a plain
# destination, and 20 slow clients that hold handshakes open.  Each fails
# with a clear message on both sides, the source keeps running, and the
# destination keeps waiting and then completes the real migration.  Also:
# plain TCP beyond loopback is refused unless --insecure, and bad TLS
# options are refused up front.
set -u
. "$(dirname "$0")/lib.sh"

MK=$HERE/../tls/mkcreds.sh
if ! { "$MK" x509 "$T/x509" && "$MK" x509 "$T/x509b" && "$MK" psk "$T/keys.psk" &&
	"$MK" psk "$T/other.psk" && "$MK" psk "$T/stranger.psk" stranger; } 2>"$T/mkcreds.err"; then
	not_ok "make TLS credentials"
	diag <"$T/mkcreds.err"
	finish
	exit 1
fi
mkdir "$T/mixed"
cp "$T/x509/ca-cert.pem" "$T/mixed/"
cp "$T/x509b/client-cert.pem" "$T/x509b/client-key.pem" "$T/mixed/"
printf '# sources allowed to migrate here\nCN=pmigrate-source,O=pmigrate tests\n' >"$T/authz"

MEM=64M
started=1
start_vm src --mem $MEM --workload random,rate=20MB/s --dump-at-pause "$T/src.pause" || started=0
start_vm dx --mem $MEM --incoming 127.0.0.1:0 --tls-creds "$T/x509" --tls-authz "$T/authz" \
	--dump-on-resume "$T/dx.resume" --dump-at-pause "$T/dx.pause" || started=0
start_vm dp --mem $MEM --incoming 127.0.0.1:0 --tls-psk "$T/keys.psk" \
	--dump-on-resume "$T/dp.resume" --dump-at-pause "$T/dp.pause" || started=0
start_vm dn --mem $MEM --incoming 127.0.0.1:0 --dump-on-resume "$T/dn.resume" || started=0
if [ $started = 0 ]; then
	not_ok "start the VMs"
	finish
	exit 1
fi

# refused LABEL SRC DST SOURCE-PHRASE DESTINATION-PHRASE MIGRATE-ARGS...
refused() {
	local label=$1 src=$2 dst=$3 sp=$4 dp=$5
	shift 5
	migrate "$label" "$src" --to "$(incoming_of "$dst")" --channels 2 "$@"
	check "$label: migrate exits 1" rc_is 1 "$MIG_RC" "$label"
	check "$label: the source says /$sp/" grep_file "$T/$label.err" "$sp"
	check "$label: the destination logs /$dp/" grep_file "$T/$dst.err" "rejected a connection from .*$dp"
	check "$label: the destination keeps waiting" state_is "$dst" incoming
	check "$label: the source VM keeps running" state_is "$src" running
}

# --- X.509 destination (with an authz list)
refused "wrong CA" src dx "destination's certificate is not trusted" "does not trust our certificate" \
	--tls-creds "$T/x509b"
refused "client certificate from another CA" src dx "destination refused our certificate" \
	"source's certificate is not trusted" --tls-creds "$T/mixed"
refused "client not in the authz list" src dx "certificate \(CN=other-source,O=pmigrate tests\) is not in" \
	"certificate \(CN=other-source,O=pmigrate tests\) is not in" --tls-creds "$T/x509/other"
refused "plain source to a TLS destination" src dx "this destination requires TLS" \
	"a plain pmigrate source" --insecure
refused "PSK source to an X.509 destination" src dx "it uses X.509 credentials, not a pre-shared key" \
	"does not trust our certificate" --tls-psk "$T/keys.psk"
refused "wrong destination name" src dx "does not name 'elsewhere.example'" \
	"does not trust our certificate" --tls-creds "$T/x509" --tls-hostname elsewhere.example

# 20 clients that each hold a handshake open, dripping a byte a second:
# handshakes are concurrent, so the real source is not held up.
"${TOOL[@]}" drip "$(incoming_of dx)" 20 60 >"$T/drip.out" 2>&1 &
EXTRA_PIDS+=($!)
for _ in $(seq 50); do grep -q "drip: 20 connections" "$T/drip.out" && break; sleep 0.1; done
t0=$(now_ms)
one_hop "X.509, beside 20 dripping clients" src dx random --tls-creds "$T/x509"
check "X.509: done long before the slow clients' deadline" test $(($(now_ms) - t0)) -lt $((20000 * SLOW))
check "X.509: the source's report says tls x509" test "$("${TOOL[@]}" get tls <"$T/mig-src.json")" = x509
check "X.509: records made by the kernel or OpenSSL" \
	grep -qE '^(ktls|userspace)$' <<<"$("${TOOL[@]}" get tls_records <"$T/mig-src.json")"
check "X.509: the destination's report says tls x509" test "$(status_get dx last_migration.tls)" = x509
check "X.509: the destination counts every rejected connection" \
	test "$(status_get dx last_migration.rejected_connections)" -ge 26
check "X.509: the slow clients were closed once the migration had its channels" \
	grep_file "$T/dx.err" "rejected a connection from .*the migration has all its channels"

# --- PSK destination
refused "wrong pre-shared key" dx dp "destination refused our pre-shared key" "pre-shared key differs" \
	--tls-psk "$T/other.psk"
refused "unknown PSK identity" dx dp "destination refused our pre-shared key" \
	"unknown PSK identity 'stranger'" --tls-psk "$T/stranger.psk"
refused "X.509 source to a PSK destination" dx dp "does it use X.509 credentials too" \
	"same kind of credentials" --tls-creds "$T/x509"
one_hop "PSK" dx dp random --tls-psk "$T/keys.psk"
check "PSK: the report says tls psk" test "$("${TOOL[@]}" get tls <"$T/mig-dx.json")" = psk

# --- plain destination (loopback)
refused "TLS source to a plain destination" dp dn "the destination does not speak TLS" \
	"a TLS client: this destination listens without TLS" --tls-psk "$T/keys.psk"
one_hop "plain TCP on loopback, after a TLS client was refused" dp dn random
check "plain: the report says tls none" test "$("${TOOL[@]}" get tls <"$T/mig-dp.json")" = none

# --- secure by default beyond loopback
sock=$T/nl.sock
timeout $((30 * SLOW)) "$PM" vm --mem 16M --control "$sock" --incoming 0.0.0.0:0 >"$T/nl.out" 2>"$T/nl.err" </dev/null
check "plain destination on 0.0.0.0: refused (exit 1)" rc_is 1 $? "0.0.0.0 without TLS"
check "plain destination on 0.0.0.0: says why" grep_file "$T/nl.err" "refusing to listen on 0.0.0.0:0 without TLS"
if start_vm insecure --mem 16M --incoming 0.0.0.0:0 --insecure; then
	check "--insecure: starts, with a warning" grep_file "$T/insecure.err" \
		"without TLS \(--insecure\): anyone who can reach this port can replace the VM"
	check "--insecure: quits cleanly" quit_vm insecure
else
	not_ok "--insecure: starts"
fi
migrate "plain beyond loopback" dn --to 192.0.2.1:7000
check "plain source to a non-loopback address: refused (exit 1)" rc_is 1 "$MIG_RC" "plain beyond loopback"
check "plain source to a non-loopback address: says why" grep_file "$T/plain beyond loopback.err" \
	"refusing to send guest memory to 192.0.2.1:7000 without TLS"
check "plain source to a non-loopback address: the VM runs on" state_is dn running

# --- bad options
opt_refused() { # LABEL RC PHRASE ARGS...
	local label=$1 want=$2 phrase=$3
	shift 3
	timeout $((30 * SLOW)) "$PM" "$@" >"$T/opt.out" 2>"$T/opt.err" </dev/null
	check "$label: exit $want" rc_is "$want" $? "$label"
	check "$label: says /$phrase/" grep_file "$T/opt.err" "$phrase"
}
opt_refused "vm --tls-creds without --incoming" 2 "are for a destination" \
	vm --mem 16M --control "$T/o.sock" --tls-creds "$T/x509"
opt_refused "vm --tls-creds missing files" 1 "cannot read $T/none/ca-cert.pem" \
	vm --mem 16M --control "$T/o.sock" --incoming 127.0.0.1:0 --tls-creds "$T/none"
printf 'pmigrate:abcd\n' >"$T/short.psk"
opt_refused "vm --tls-psk with a short key" 1 "16 to 64 bytes" \
	vm --mem 16M --control "$T/o.sock" --incoming 127.0.0.1:0 --tls-psk "$T/short.psk"
opt_refused "vm --tls-creds and --tls-psk" 1 "not both" \
	vm --mem 16M --control "$T/o.sock" --incoming 127.0.0.1:0 --tls-creds "$T/x509" --tls-psk "$T/keys.psk"
opt_refused "migrate --tls-psk missing file" 1 "tls-psk $T/none.psk" \
	migrate --control "$T/dn.sock" --to 127.0.0.1:1 --tls-psk "$T/none.psk"
opt_refused "migrate --tls-hostname without --tls-creds" 1 "need --tls-creds" \
	migrate --control "$T/dn.sock" --to 127.0.0.1:1 --tls-hostname x --no-progress
check "after bad options the VM still runs" state_is dn running

for v in src dx dp dn; do
	check "vm $v quits cleanly (exit 0)" quit_vm "$v"
done
finish
