# shellcheck shell=bash
# Benchmark topology: network namespaces joined by veth pairs. Sourced by bench/run.
#
#   topo_up_loopback          namespace $TOPO_LO with only "lo" up (127.0.0.1);
#                             source and destination both run in it, so the
#                             benchmark's ports never meet anything else on the host.
#   topo_up_links K RATE      namespaces $TOPO_SRC and $TOPO_DST joined by K veth
#                             pairs; link i (1..K) is 10.213.i.1/24 (source side) and
#                             10.213.i.2/24 (destination side); with RATE (e.g. 1gbit)
#                             both ends are shaped with tbf. RATE "none": unshaped.
#   topo_down                 removes everything topo_up_* created (idempotent).
#
# Every address lives only inside these namespaces; nothing is configured in the
# host's own namespace. Names carry the PID of bench/run so parallel runs never clash.

TOPO_ID=${TOPO_ID:-$$}
TOPO_LO="pmlo$TOPO_ID"
TOPO_SRC="pmsrc$TOPO_ID"
TOPO_DST="pmdst$TOPO_ID"
TOPO_NET=${TOPO_NET:-10.213}
TOPO_K=0
TOPO_CREATED=()

topo_src_addr() { echo "$TOPO_NET.$1.1"; }
topo_dst_addr() { echo "$TOPO_NET.$1.2"; }

topo_up_loopback() {
	ip netns add "$TOPO_LO" || return 1
	TOPO_CREATED+=("$TOPO_LO")
	ip -n "$TOPO_LO" link set lo up
}

topo_up_links() {
	local k=$1 rate=${2:-none} i s d
	ip netns add "$TOPO_SRC" || return 1
	TOPO_CREATED+=("$TOPO_SRC")
	ip netns add "$TOPO_DST" || return 1
	TOPO_CREATED+=("$TOPO_DST")
	ip -n "$TOPO_SRC" link set lo up
	ip -n "$TOPO_DST" link set lo up
	for ((i = 1; i <= k; i++)); do
		s="pm${TOPO_ID}s$i"
		d="pm${TOPO_ID}d$i"
		# Created directly inside the namespaces: nothing appears in the host's.
		ip link add "$s" netns "$TOPO_SRC" type veth peer name "$d" netns "$TOPO_DST" || return 1
		ip -n "$TOPO_SRC" addr add "$(topo_src_addr "$i")/24" dev "$s"
		ip -n "$TOPO_DST" addr add "$(topo_dst_addr "$i")/24" dev "$d"
		ip -n "$TOPO_SRC" link set "$s" up
		ip -n "$TOPO_DST" link set "$d" up
		if [[ $rate != none ]]; then
			# burst must hold the largest (GSO) packet veth hands over: 64 KiB.
			ip netns exec "$TOPO_SRC" tc qdisc add dev "$s" root tbf rate "$rate" burst 512kb latency 50ms || return 1
			ip netns exec "$TOPO_DST" tc qdisc add dev "$d" root tbf rate "$rate" burst 512kb latency 50ms || return 1
		fi
	done
	TOPO_K=$k
	# Check every link is up before measuring anything over it.
	for ((i = 1; i <= k; i++)); do
		ip -n "$TOPO_SRC" route get "$(topo_dst_addr "$i")" 2>/dev/null | grep -q "pm${TOPO_ID}s$i" ||
			{ echo "topo: no route over link $i" >&2; return 1; }
	done
}

# Kill whatever still runs inside a namespace we created (only those PIDs), then delete it.
topo_down() {
	local ns pids
	for ns in "${TOPO_CREATED[@]}"; do
		pids=$(ip netns pids "$ns" 2>/dev/null || true)
		if [[ -n $pids ]]; then
			kill $pids 2>/dev/null || true
			sleep 0.3
			pids=$(ip netns pids "$ns" 2>/dev/null || true)
			[[ -n $pids ]] && kill -9 $pids 2>/dev/null || true
		fi
		# Deleting the namespace destroys its veth ends (and their qdiscs) too.
		ip netns del "$ns" 2>/dev/null || true
	done
	TOPO_CREATED=()
	TOPO_K=0
}
