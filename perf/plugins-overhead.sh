#!/usr/bin/env bash
# Plugin-chain overhead: one ringway (workers = 1, cpu 1) with two routes to the same origin,
# /plain (no plugins) and /auth (key-auth + limit-count), loaded alternately with wrk on cpu 0.
# Usage: perf/plugins-overhead.sh [rounds] [seconds]   (needs a release build and wrk)
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-10}
T=${CARGO_TARGET_DIR:-target}/release
DIR=$(mktemp -d)
trap 'kill $SERVE_PID $GW_PID 2>/dev/null; cat "$DIR/gw.log" >&2; rm -rf "$DIR"' EXIT

taskset -c 0 "$T/ringway-bench" serve --listen 127.0.0.1:0 -t 1 2>"$DIR/serve.log" &
SERVE_PID=$!
for _ in $(seq 50); do grep -q "listening on" "$DIR/serve.log" 2>/dev/null && break; sleep 0.1; done
ORIGIN=$(grep -o "listening on [0-9.:]*" "$DIR/serve.log" | head -1 | awk '{print $3}')

cat >"$DIR/gw.toml" <<TOML
[server]
listen = ["127.0.0.1:0"]
workers = 1
cpu_affinity = [1]

[[upstreams]]
name = "origin"
nodes = [{ addr = "$ORIGIN", weight = 1 }]

[[routes]]
name = "plain"
paths = ["/plain"]
upstream = "origin"

[[routes]]
name = "auth"
paths = ["/auth"]
upstream = "origin"
[routes.plugins.key-auth]
[routes.plugins.limit-count]
count = 1000000000
time_window = 60
key = "consumer"

[[consumers]]
username = "bench"
[consumers.plugins.key-auth]
key = "bench-key"
TOML
"$T/ringway" run -c "$DIR/gw.toml" >"$DIR/gw.log" 2>&1 &
GW_PID=$!
for _ in $(seq 50); do grep -q "listening on" "$DIR/gw.log" 2>/dev/null && break; sleep 0.1; done
GW=$(grep -o "listening on [0-9.:]*" "$DIR/gw.log" | head -1 | awk '{print $3}')
echo "origin $ORIGIN gateway $GW"
# Check both routes answer 200 before measuring.
curl -fsS -o /dev/null "http://$GW/plain"
curl -fsS -o /dev/null -H 'apikey: bench-key' "http://$GW/auth"

run() { taskset -c 0 wrk -t1 -c64 -d"${SECS}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
for r in $(seq "$ROUNDS"); do
  p=$(run "http://$GW/plain")
  a=$(run -H 'apikey: bench-key' "http://$GW/auth")
  echo "round $r plain $p auth $a"
done
