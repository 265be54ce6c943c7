#!/bin/bash
# The guests keep to what KVM's instruction emulator runs (guests/README.md):
# no instruction touches an XMM/YMM/ZMM register except movdqu/movdqa loads
# and stores.  Reads the disassembly of every guest ELF; a broken rule
# fails here instead of as "KVM internal error, suberror 1" on some hosts.
set -u
dir=${1:?usage: $0 GUEST_DIR}
n=0 fails=0
objdump=$(command -v objdump) || { echo "1..0 # SKIP no objdump (binutils)"; exit 0; }
for elf in "$dir"/*.elf; do
	n=$((n + 1))
	name=$(basename "$elf" .elf)
	bad=$("$objdump" -d --no-show-raw-insn "$elf" | grep -E '%[xyz]mm[0-9]' |
		grep -vE '\s(movdqu|movdqa)\s')
	if [ -z "$bad" ]; then
		echo "ok $n - $name: vector registers only through movdqu/movdqa"
	else
		echo "not ok $n - $name: instructions KVM's emulator may not run"
		echo "$bad" | head -5 | sed 's/^/# /'
		fails=$((fails + 1))
	fi
done
[ "$n" -gt 0 ] || { echo "not ok 1 - no guest ELF in $dir"; n=1; fails=1; }
echo "1..$n"
[ "$fails" = 0 ]
