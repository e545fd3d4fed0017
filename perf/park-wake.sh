#!/usr/bin/env bash
# Instructions per request when every request comes after the connection idled past the 500 ms
# hold (so each one pays the idle wait's set-up and its wake-up: the park and its task since
# issue 21k, a POLL_ADD in the connection's task before). One ringway shard under callgrind,
# origin `ringway-bench serve`; a Python client keeps CONNS connections and, ROUNDS times, sends
# one GET on each, reads the answers, then lets them all idle for PAUSE seconds. Counters are
# zeroed after a warm-up round and dumped after the last; the first line is the total divided
# by the requests. Compare binaries with BIN=... (perf/RESULTS.md, issue 21k).
#
#   perf/park-wake.sh
#   CONNS=200 ROUNDS=10 PAUSE=0.8 BIN=/tmp/ringway-old perf/park-wake.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-100}
ROUNDS=${ROUNDS:-8}
PAUSE=${PAUSE:-0.8}
T=${CARGO_TARGET_DIR:-target}/release
for tool in valgrind callgrind_control python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y valgrind python3" >&2; exit 1; }
done
work=$(mktemp -d)
. perf/lib.sh
GW=$(free_port)
start_origin
{ origin_gw_head "$GW"; cat <<TOML; } >"$work/gw.toml"
[[routes]]
name = "plain"
paths = ["/plain"]
upstream = "origin"
TOML
start_cg_gw "$work/gw.toml"
cat >"$work/client.py" <<'PY'
import socket, sys, time
port, conns, rounds, pause, go, done = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
req = b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n"
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
def round_trip():
    for s in socks:
        s.sendall(req)
    for s in socks:
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, body = buf.partition(b"\r\n\r\n")
        n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
        while len(body) < n:
            body += s.recv(65536)
round_trip()  # warm: pool, buffers
time.sleep(pause)
open(go, "w").close()
while not open(go).read():  # the script zeroes the counters, then writes to `go`
    time.sleep(0.05)
for _ in range(rounds):
    round_trip()
    time.sleep(pause)
open(done, "w").close()
PY
python3 "$work/client.py" "$GW" "$CONNS" "$ROUNDS" "$PAUSE" "$work/go" "$work/done" &
CL=$!
pids+=("$CL")
while [ ! -e "$work/go" ]; do sleep 0.05; done
callgrind_control -z "$VG" >/dev/null
echo zeroed >"$work/go"
while [ ! -e "$work/done" ]; do sleep 0.1; done
cg_dump spaced
reqs=$((CONNS * ROUNDS))
echo "spaced requests=$reqs Ir=$CG_IR Ir/request=$((CG_IR / reqs))"
