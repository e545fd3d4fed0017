#!/usr/bin/env bash
# limit-count exact mode (sync_interval = "0", issue 17): what the round trip per request costs
# against policy = "local" and the batched policy = "redis" (50 ms), in one ringway (workers = 1,
# cpu 1) with wrk on cpu 0: latency at one connection, req/s at 64, and the script calls per
# second Redis executed (exact mode: one per request; batched: per key and interval).
# Usage: perf/fleet-exact.sh [seconds]   (needs a release build, or PROFILE=debug; wrk, redis-server)
set -euo pipefail
SECS=${1:-10}
T=${CARGO_TARGET_DIR:-target}/${PROFILE:-release}
work=$(mktemp -d)
. "$(dirname "$0")/lib.sh"
need wrk "apt-get install wrk"
need redis-server "apt-get install redis-server"

RPORT=$(free_port)
start_redis "$RPORT"

start_serve
{
  printf '[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ncpu_affinity = [1]\n\n'
  printf '[[upstreams]]\nname = "origin"\nnodes = [{ addr = "%s", weight = 1 }]\n\n' "$ORIGIN"
  limit_route local /local ''
  limit_route redis /redis "policy = \"redis\"\nredis = { addr = \"127.0.0.1:$RPORT\" }\n"
  limit_route exact /exact "policy = \"redis\"\nsync_interval = \"0\"\non_redis_error = \"deny\"\nredis = { addr = \"127.0.0.1:$RPORT\", timeout = \"1s\" }\n"
} >"$work/gw.toml"
start_gw "$work/gw.toml"
GW=$(log_addr "$work/gw.log")
echo "origin $ORIGIN gateway $GW redis 127.0.0.1:$RPORT"
for p in local redis exact; do curl -fsS -o /dev/null "http://$GW/$p"; done

# Prints "req/s p50 p99 non-2xx".
run() {
  taskset -c 0 wrk -t1 --latency "$@" | awk '/Requests\/sec/ {r = $2} / 50%/ {p50 = $2} / 99%/ {p99 = $2} /Non-2xx/ {bad = $5} END {printf "%s req/s p50 %s p99 %s non-2xx %d", r, p50, p99, bad}'
}
for p in local redis exact; do
  for c in 1 64; do
    c0=$(redis_evals "$RPORT"); out=$(run -c"$c" -d"${SECS}s" "http://$GW/$p"); c1=$(redis_evals "$RPORT")
    echo "$p connections $c: $out, $(( (c1 - c0) / SECS )) script calls/s"
  done
done
grep -E "WARN|unreachable" "$work/gw.log" | head -5 || true
