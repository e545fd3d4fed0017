#!/usr/bin/env bash
# Shared cache tier (issue 17): how long a cross-node hit takes (node B answers from the tier what
# node A fetched) against a miss that goes to the origin and a hit in B's own store. Two ringway
# nodes (workers = 1, both on cpu 1), redis-server or memcached and a small python origin on
# this machine; each request on a new connection (same Host on both nodes, as behind a load
# balancer: the key is host + URI), timed by curl (time_total).
# Usage: perf/tier-latency.sh [keys] [origin-delay-ms]
#   (needs a release build of ringway, curl, python3, redis-server, memcached)
set -euo pipefail
N=${1:-200}
DELAY=${2:-0}
T=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
. "$(dirname "$0")/lib.sh"
need curl "apt-get install curl"
need redis-server "apt-get install redis-server"
need memcached "apt-get install memcached"

RPORT=$(free_port)
start_redis "$RPORT" 0
MPORT=$(free_port)
taskset -c 0 memcached -l 127.0.0.1 -p "$MPORT" -U 0 -m 256 -u root >"$work/memcached.log" 2>&1 &
pids+=($!)
OPORT=$(free_port)
# The origin: a cacheable 1 KiB answer per path, after DELAY ms (a farther origin).
taskset -c 0 python3 - "$OPORT" "$DELAY" >"$work/origin.log" 2>&1 <<'EOF' &
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, delay = int(sys.argv[1]), float(sys.argv[2]) / 1000
body = b"x" * 1024
seen = [0]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536  # head and body in one write (no Nagle + delayed-ACK stall)
    def do_GET(self):
        if self.path == "/count":
            n = str(seen[0]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(n)))
            self.end_headers()
            self.wfile.write(n)
            return
        seen[0] += 1
        if delay:
            time.sleep(delay)
        self.send_response(200)
        self.send_header("Cache-Control", "max-age=600")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
EOF
pids+=($!)
wait_port "$MPORT"
wait_port "$OPORT"

# node NAME BACKEND ADDR: starts a node, sets NODE to its address (not in a $(...) subshell,
# so its pid reaches `pids` and the cleanup stops it).
node() {
  cat >"$work/$1.toml" <<EOF
[server]
listen = ["127.0.0.1:0"]
workers = 1
cpu_affinity = [1]

[[upstreams]]
name = "origin"
nodes = [{ addr = "127.0.0.1:$OPORT", weight = 1 }]

[[routes]]
name = "c"
paths = ["/*"]
upstream = "origin"
[routes.plugins.proxy-cache]
l2 = { backend = "$2", addr = "$3" }
EOF
  start_gw "$work/$1.toml" "$work/$1.log"
  NODE=$(log_addr "$work/$1.log" "" 5)
}

# times URL-PREFIX RUN: GETs URL-PREFIX/k1..N on new connections, prints "median p90" in ms.
times() {
  for i in $(seq "$N"); do
    curl -s -o /dev/null -H "Host: t" -w '%{time_total}\n' "$1/$2/k$i"
  done | sort -n | awk '{v[NR] = $1 * 1000} END {printf "%.3f %.3f", v[int(NR / 2) + 1], v[int(NR * 0.9)]}'
}

echo "keys $N, origin delay ${DELAY} ms; median and p90 per request in ms (curl time_total, new connection each)"
echo "origin direct: $(times "http://127.0.0.1:$OPORT" direct)"
for b in redis memcached; do
  addr="127.0.0.1:$RPORT"
  [ "$b" = memcached ] && addr="127.0.0.1:$MPORT"
  node "a-$b" "$b" "$addr"; A=$NODE
  node "b-$b" "$b" "$addr"; B=$NODE
  miss=$(times "http://$A" "$b")
  sleep 1 # A's writes reach the tier
  tier=$(times "http://$B" "$b")
  local=$(times "http://$B" "$b")
  echo "$b: node A miss (origin) $miss | node B tier hit $tier | node B own hit $local | origin requests so far $(curl -s "http://127.0.0.1:$OPORT/count")"
done
