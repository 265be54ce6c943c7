#!/bin/bash
# --dirty self: the synthetic VM's vCPUs log the pages they write, and the
# engine harvests that log.  For each write-heavy workload at a high asked
# rate (two writer threads for random): status says "self" and shows the
# asked and achieved rates; a live migration over 4 channels ends with the
# destination's memory at resume equal to the source's at pause, the report
# says "self"; the VM that arrived (also --dirty self) migrates on with
# --barrier.  The first hop draws its --timeline.  Rates are printed, never asserted (tests are not timings:
# bench/run measures them).
set -u
. "$(dirname "$0")/lib.sh"

svg_ok() { # FILE: an SVG with round r1 and the pause band
	grep_file "$1" "^<svg " && grep_file "$1" ">r1<" && grep_file "$1" ">paused: final round" &&
		grep_file "$1" "</svg>"
}

rate_of() { # NAME: "achieved/asked"
	echo "$(status_get "$1" write_rate_mbps)/$(status_get "$1" write_rate_asked_mbps)"
}

for wl in seq,rate=400MB/s random,rate=400MB/s,threads=2 zipf,rate=400MB/s,hot=10%; do
	kind=${wl%%,*}
	a=$kind-a b=$kind-b c=$kind-c
	if ! start_vm "$a" --mem 256M --dirty self --workload "$wl" --dump-at-pause "$T/$a.pause" ||
		! start_vm "$b" --mem 256M --dirty self --incoming 127.0.0.1:0 \
			--dump-on-resume "$T/$b.resume" --dump-at-pause "$T/$b.pause" ||
		! start_vm "$c" --mem 256M --incoming 127.0.0.1:0 --dump-on-resume "$T/$c.resume"; then
		not_ok "$kind: start the VMs"
		continue
	fi
	check "$kind: status says dirty_method self" test "$(status_get "$a" dirty_method)" = self
	check "$kind: status gives the asked rate" test "$(status_get "$a" write_rate_asked_mbps)" = 400.0
	sleep $((2 * SLOW))
	r=$(rate_of "$a")
	echo "$kind: achieved/asked MB/s before migrating: $r" | diag
	check "$kind: status gives a non-zero achieved rate" test "${r%%/*}" != 0.0
	one_hop "$kind, self, barrier-free" "$a" "$b" "$kind" --timeline "$T/$kind.svg"
	check "$kind: --timeline wrote an SVG with rounds and the pause" \
		svg_ok "$T/$kind.svg"
	check "$kind: the report's timeline has samples up to done" \
		test "$("${TOOL[@]}" get timeline.samples.0.phase <"$T/mig-$a.json")/$("${TOOL[@]}" get timeline.samples.-1.phase <"$T/mig-$a.json")" = precopy/done
	check "$kind: pmigrate timeline redraws the kept report" \
		bash -c "'$PM' timeline '$T/mig-$a.json' '$T/$kind-again.svg' && cmp -s '$T/$kind.svg' '$T/$kind-again.svg'"
	check "$kind: the report gives the achieved and asked write rates" \
		test "$("${TOOL[@]}" get write_rate_asked_mbps <"$T/mig-$a.json")" = 400.0
	check "$kind: report says dirty_method self" \
		test "$("${TOOL[@]}" get dirty_method <"$T/mig-$a.json")" = self
	echo "$kind: rounds $("${TOOL[@]}" get rounds <"$T/mig-$a.json" | tr -d '\n' | head -c 400)" | diag
	one_hop "$kind, self, --barrier" "$b" "$c" "$kind" --barrier
	check "$kind, --barrier: report says dirty_method self" \
		test "$("${TOOL[@]}" get dirty_method <"$T/mig-$b.json")" = self
	for v in "$a" "$b" "$c"; do
		check "$kind: vm $v quits cleanly (exit 0)" quit_vm "$v"
	done
done
check "pmigrate timeline: a report without a timeline is refused (exit 1, says why)" \
	bash -c "echo '{}' >'$T/empty.json'; '$PM' timeline '$T/empty.json' '$T/x.svg' 2>'$T/tl.err'; [ \$? = 1 ] && grep -q 'has no timeline' '$T/tl.err'"
check "pmigrate timeline: wrong arguments are a usage error (exit 2)" \
	bash -c "'$PM' timeline only-one 2>/dev/null; [ \$? = 2 ]"
finish
