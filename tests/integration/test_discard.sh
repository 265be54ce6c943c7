#!/bin/bash
# Discard (balloon) during a live migration: the synthetic VM punches holes
# in its memory under the layout range lock while 4 channels send it; the
# destination's memory at resume must equal the source's at pause.  TAP.
set -u
PM=${1:?usage: test_discard.sh PMIGRATE}
T=$(mktemp -d /tmp/pm-discard.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
echo "1..2"
wait_sock() { for _ in $(seq 300); do [ -S "$1" ] && return 0; sleep 0.1; done; return 1; }
"$PM" vm --mem 256M --workload random,rate=50MB/s --control "$T/s.sock" --dump-at-pause "$T/s.mem" 2>"$T/s.err" &
pids+=($!)
"$PM" vm --mem 256M --control "$T/d.sock" --incoming 127.0.0.1:0 --dump-on-resume "$T/d.mem" 2>"$T/d.err" &
pids+=($!)
wait_sock "$T/s.sock" && wait_sock "$T/d.sock" || { echo "not ok 1 - VMs did not start"; echo "not ok 2 - skipped"; exit 0; }
to=$("$PM" status --control "$T/d.sock" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["incoming"][0])')
# Discard random ranges until the migration is over (refused once the VM
# is paused for switchover: a paused guest makes no balloon requests).
python3 - "$T/s.sock" "$T/stop" > "$T/discards" <<'PY' &
import json, os, random, socket, sys, time
sock, stop = sys.argv[1], sys.argv[2]
n = ok = 0
random.seed(7)
while not os.path.exists(stop) and n < 20000:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    off = random.randrange(1, 65000) * 4096
    ln = random.randrange(1, 512) * 4096
    ln = min(ln, 65536 * 4096 - off)
    s.sendall((json.dumps({"execute": "discard", "arguments": {"offset": off, "length": ln}}) + "\n").encode())
    r = s.makefile().readline()
    n += 1
    ok += '"return"' in r
    if ok == 1:
        open(stop + ".ready", "w").close()
    s.close()
    time.sleep(0.002)
print(n, ok)
PY
dpid=$!
# Migrate only once discards are landing, so they overlap the pre-copy.
for _ in $(seq 300); do [ -e "$T/stop.ready" ] && break; sleep 0.02; done
"$PM" migrate --control "$T/s.sock" --to "$to" --channels 4 --no-progress --quiet --json "$T/r.json" >"$T/m.out" 2>&1
rc=$?
touch "$T/stop"
wait $dpid
read -r n ok < "$T/discards"
if [ $rc = 0 ] && [ "${ok:-0}" -gt 0 ]; then
	echo "ok 1 - migration completed while $ok of $n discards were applied on the source"
else
	echo "not ok 1 - migration rc=$rc, discards '$n $ok'"; sed 's/^/# /' "$T/m.out" "$T/d.err"
fi
if cmp -s "$T/s.mem" "$T/d.mem"; then
	echo "ok 2 - destination memory at resume equals source memory at pause"
else
	echo "not ok 2 - memory differs: $(cmp "$T/s.mem" "$T/d.mem" 2>&1 | head -1)"
fi
echo '{"execute":"quit"}' | python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.stdin.read().encode()); s.recv(100)' "$T/s.sock" 2>/dev/null
echo '{"execute":"quit"}' | python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.stdin.read().encode()); s.recv(100)' "$T/d.sock" 2>/dev/null
