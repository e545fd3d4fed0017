#!/usr/bin/env bash
# Cluster-wide limits (issue 17): request-path cost of limit-count policy = "redis" against
# policy = "local" in one ringway (workers = 1, cpu 1), two routes to one origin, loaded
# alternately with wrk on cpu 0; and the Redis commands the node sends per second at two
# request rates and two sync intervals (they follow keys and interval, not requests).
# Usage: perf/fleet-overhead.sh [rounds] [seconds]   (needs a release build, wrk, redis-server)
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-10}
T=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
. "$(dirname "$0")/lib.sh"
need wrk "apt-get install wrk"
need redis-server "apt-get install redis-server"

RPORT=$(free_port)
start_redis "$RPORT"

start_serve
{
  printf '[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ncpu_affinity = [1]\n\n[status]\nlisten = "127.0.0.1:0"\n\n'
  printf '[[upstreams]]\nname = "origin"\nnodes = [{ addr = "%s", weight = 1 }]\n\n' "$ORIGIN"
  limit_route local /local ''
  limit_route redis /redis "policy = \"redis\"\nredis = { addr = \"127.0.0.1:$RPORT\" }\n"
  limit_route redis10 /redis10 "policy = \"redis\"\nsync_interval = \"10ms\"\nredis = { addr = \"127.0.0.1:$RPORT\", database = 1 }\n"
} >"$work/gw.toml"
start_gw "$work/gw.toml"
log_addr "$work/gw.log" status >/dev/null
GW=$(log_addr "$work/gw.log")
echo "origin $ORIGIN gateway $GW redis 127.0.0.1:$RPORT"
for p in local redis redis10; do curl -fsS -o /dev/null "http://$GW/$p"; done

# The gateway's CPU time (user + system, clock ticks) from /proc: per request it is steadier than
# req/s on a shared machine.
ticks() { awk '{print $14 + $15}' "/proc/$GW_PID/stat"; }
HZ=$(getconf CLK_TCK)
# Prints "req/s cpu-us-per-request".
run() {
  local t0 t1 out
  t0=$(ticks)
  out=$(taskset -c 0 wrk -t1 "$@")
  t1=$(ticks)
  awk -v d=$((t1 - t0)) -v hz="$HZ" '/requests in/ {n = $1} /Requests\/sec/ {r = $2} END {printf "%s %.1f", r, d * 1e6 / hz / n}' <<<"$out"
}
for r in $(seq "$ROUNDS"); do
  l=$(run -c64 -d"${SECS}s" "http://$GW/local")
  c0=$(redis_evals "$RPORT"); rr=$(run -c64 -d"${SECS}s" "http://$GW/redis"); c1=$(redis_evals "$RPORT")
  echo "round $r local $l | redis $rr (req/s, gateway CPU us/request) | $(( (c1 - c0) / SECS )) script calls/s"
done
# Commands per second against request rate (one key): a light and a full load, 50 ms and 10 ms.
for p in redis redis10; do
  for c in 1 64; do
    c0=$(redis_evals "$RPORT"); rr=$(run -c"$c" -d"${SECS}s" "http://$GW/$p"); c1=$(redis_evals "$RPORT")
    echo "$p connections $c: $rr (req/s, CPU us/request), $(( (c1 - c0) / SECS )) script calls/s"
  done
done
