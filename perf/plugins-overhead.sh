#!/usr/bin/env bash
# Plugin-chain overhead: one ringway (workers = 1, cpu 1) with two routes to the same origin,
# /plain (no plugins) and /auth (key-auth + limit-count), loaded alternately with wrk on cpu 0.
# Usage: perf/plugins-overhead.sh [rounds] [seconds]   (needs a release build and wrk)
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-10}
T=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
. "$(dirname "$0")/lib.sh"
need wrk "apt-get install wrk"
start_serve

cat >"$work/gw.toml" <<TOML
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
start_gw "$work/gw.toml"
GW=$(log_addr "$work/gw.log")
echo "origin $ORIGIN gateway $GW"
# Check both routes answer 200 before measuring.
curl -fsS -o /dev/null "http://$GW/plain"
curl -fsS -o /dev/null -H 'apikey: bench-key' "http://$GW/auth"

for r in $(seq "$ROUNDS"); do
  p=$(wrk_rps "http://$GW/plain")
  a=$(wrk_rps -H 'apikey: bench-key' "http://$GW/auth")
  echo "round $r plain $p auth $a"
done
