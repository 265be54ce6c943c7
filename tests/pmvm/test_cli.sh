#!/bin/sh
# pmvm's command line without KVM: bad options and images are refused with
# a clear message and status 2; a missing KVM device with status 1.
# TAP output.  Usage: test_cli.sh PMVM GUEST_DIR
PMVM=$1
GUESTS=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
n=0
failed=0

# check NAME WANT_STATUS WANT_TEXT -- ARGS...
check() {
	name=$1 want=$2 text=$3
	shift 4
	n=$((n + 1))
	"$PMVM" "$@" >"$T/out" 2>"$T/err"
	st=$?
	if [ "$st" -eq "$want" ] && grep -q -- "$text" "$T/out" "$T/err"; then
		echo "ok $n - $name"
	else
		echo "not ok $n - $name (status $st, want $want; output:)"
		sed 's/^/# /' "$T/out" "$T/err"
		failed=1
	fi
}

echo "1..20"
check "help" 0 "usage: pmvm run" -- --help
check "no command" 2 "missing command" --
check "unknown command" 2 "unknown command" -- start
check "guest required" 2 "or --kernel BZIMAGE is required" -- run --mem 16M
check "bad --mem" 2 "bad size '12Q'" -- run --guest "$GUESTS/exitcode.bin" --mem 12Q
check "--mem too small" 2 "out of range" -- run --guest "$GUESTS/exitcode.bin" --mem 1M
check "bad --vcpus" 2 "--vcpus" -- run --guest "$GUESTS/exitcode.bin" --vcpus 99
check "missing guest file" 2 "cannot open $T/nope" -- run --guest "$T/nope"
printf '\177ELF\002\001\001junkjunkjunk' >"$T/bad.elf"
check "broken ELF guest" 2 "ELF image truncated" -- run --guest "$T/bad.elf"
# Linux guests: options that go together, images that are not kernels,
# memory too small; all refused before /dev/kvm is opened.
check "--guest and --kernel" 2 "exclude each other" -- run --guest "$GUESTS/exitcode.bin" --kernel "$GUESTS/exitcode.bin"
check "--initrd without --kernel" 2 "--initrd needs --kernel" -- run --guest "$GUESTS/exitcode.bin" --initrd "$T/x"
check "--param with --kernel" 2 "--param is for freestanding" -- run --kernel "$GUESTS/exitcode.bin" --mem 256M --param a=1
check "--mem too small for Linux" 2 "too small for Linux" -- run --kernel "$GUESTS/exitcode.bin" --mem 64M
check "not a bzImage" 2 "not a bzImage" -- run --kernel "$GUESTS/exitcode.bin" --mem 256M --kvm "$T/no-kvm"
head -c 8192 /dev/zero >"$T/zero.img"
check "zeros as kernel" 2 "no boot signature" -- run --kernel "$T/zero.img" --mem 256M --kvm "$T/no-kvm"
check "missing initrd" 2 "initrd $T/nope" -- run --kernel "$T/zero.img" --initrd "$T/nope" --mem 256M
check "--migration-nice out of range" 2 "expected 0..19" -- run --guest "$GUESTS/exitcode.bin" --migration-nice 20
check "missing KVM device" 1 "KVM is not available" -- run --guest "$GUESTS/exitcode.bin" --mem 16M --kvm "$T/no-kvm"
check "not a KVM device" 1 "not a KVM device" -- run --guest "$GUESTS/exitcode.bin" --mem 16M --kvm /dev/null
n=$((n + 1))
if [ -e /dev/kvm ]; then
	echo "ok $n # SKIP /dev/kvm exists here (this checks the message where it does not)"
else
	"$PMVM" run --guest "$GUESTS/exitcode.bin" --mem 16M >"$T/out" 2>"$T/err"
	st=$?
	if [ "$st" -eq 1 ] && grep -q "cannot open /dev/kvm" "$T/err"; then
		echo "ok $n - no /dev/kvm: clear error, status 1"
	else
		echo "not ok $n - no /dev/kvm: status $st"
		sed 's/^/# /' "$T/err"
		failed=1
	fi
fi
exit $failed
