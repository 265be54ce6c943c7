#!/bin/bash
# Runs a TLS test program inside the nested L1 of tools/nested/run, whose
# Debian kernel has kernel TLS (the tls module and the AES-GCM crypto
# modules), so the kTLS record path -- keys handed to the kernel, sendmsg /
# recvmsg with the kernel making the records -- runs for real even where the
# host's kernel has no TLS.  The program's TAP is passed through.
# Usage: ktls_nested.sh BUILD_DIR PROGRAM [PM_TEST_FILTER]
# Skips (TAP) where nested runs are impossible (tools/nested/run --check).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:?usage: ktls_nested.sh BUILD_DIR PROGRAM [FILTER]}
prog=${2:?usage: ktls_nested.sh BUILD_DIR PROGRAM [FILTER]}
filter=${3:-}
NESTED=$ROOT/tools/nested/run
if ! why=$("$NESTED" --check 2>&1); then
	echo "1..0 # SKIP no nested L1 here: $(echo "$why" | tail -n 1)"
	exit 0
fi
args=(--project "$build" --modules tls,gcm,ctr,ghash-generic,aesni-intel
	-i /usr/bin/openssl -i /usr/lib/ssl -i /etc/ssl/openssl.cnf
	--env "PM_MKCREDS=$ROOT/tests/tls/mkcreds.sh" --env CMOCKA_MESSAGE_OUTPUT=TAP
	--env PM_EXPECT_KTLS=1 --timeout 600)
[ -n "$filter" ] && args+=(--env "PM_TEST_FILTER=$filter")
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$NESTED" "${args[@]}" -- "$prog" >"$out" 2>&1
rc=$?
# TAP lines go through; everything else (L1's own lines) as comments.
grep -E '^(ok|not ok|1\.\.|#)' "$out"
grep -vE '^(ok|not ok|1\.\.|#)' "$out" | sed 's/^/# /'
if [ $rc = 125 ]; then
	echo "not ok - L1 could not run $prog"
	exit 1
fi
exit $rc
