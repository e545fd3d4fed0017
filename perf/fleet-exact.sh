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
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
wait_port "$RPORT"
rcmds() { redis-cli -p "$RPORT" info commandstats | awk -F'[=,:]' '/^cmdstat_eval(sha)?:/ {n += $3} END {print n+0}'; }

taskset -c 0 "$T/ringway-bench" serve --listen 127.0.0.1:0 -t 1 2>"$work/serve.log" &
pids+=($!)
for _ in $(seq 50); do grep -q "listening on" "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
ORIGIN=$(grep -o "listening on [0-9.:]*" "$work/serve.log" | head -1 | awk '{print $3}')

route() { # name path policy-lines
  printf '[[routes]]\nname = "%s"\npaths = ["%s"]\nupstream = "origin"\n[routes.plugins.limit-count]\ncount = 1000000000\ntime_window = 60\nkey = "remote_addr"\n%b\n' "$1" "$2" "$3"
}
{
  printf '[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ncpu_affinity = [1]\n\n'
  printf '[[upstreams]]\nname = "origin"\nnodes = [{ addr = "%s", weight = 1 }]\n\n' "$ORIGIN"
  route local /local ''
  route redis /redis "policy = \"redis\"\nredis = { addr = \"127.0.0.1:$RPORT\" }\n"
  route exact /exact "policy = \"redis\"\nsync_interval = \"0\"\non_redis_error = \"deny\"\nredis = { addr = \"127.0.0.1:$RPORT\", timeout = \"1s\" }\n"
} >"$work/gw.toml"
"$T/ringway" run -c "$work/gw.toml" >"$work/gw.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q "listening on" "$work/gw.log" 2>/dev/null && break; sleep 0.1; done
GW=$(grep -o "listening on [0-9.:]*" "$work/gw.log" | head -1 | grep -o "[0-9.]*:[0-9]*$")
echo "origin $ORIGIN gateway $GW redis 127.0.0.1:$RPORT"
for p in local redis exact; do curl -fsS -o /dev/null "http://$GW/$p"; done

# Prints "req/s p50 p99 non-2xx".
run() {
  taskset -c 0 wrk -t1 --latency "$@" | awk '/Requests\/sec/ {r = $2} / 50%/ {p50 = $2} / 99%/ {p99 = $2} /Non-2xx/ {bad = $5} END {printf "%s req/s p50 %s p99 %s non-2xx %d", r, p50, p99, bad}'
}
for p in local redis exact; do
  for c in 1 64; do
    c0=$(rcmds); out=$(run -c"$c" -d"${SECS}s" "http://$GW/$p"); c1=$(rcmds)
    echo "$p connections $c: $out, $(( (c1 - c0) / SECS )) script calls/s"
  done
done
grep -E "WARN|unreachable" "$work/gw.log" | head -5 || true
