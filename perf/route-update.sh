#!/usr/bin/env bash
# Route-table update cost: ringway (workers = 2) with N routes and the admin API on; reports the
# start-up time until the admin listener is up, then the end-to-end latency (curl, admin API) of
# single-route PUTs that move one route, a POST and a DELETE, and checks each change is live.
# Usage: perf/route-update.sh [routes] [puts] [ringway binary]   (needs a release build, curl)
set -euo pipefail
ROUTES=${1:-50000}
PUTS=${2:-20}
BIN=${3:-${CARGO_TARGET_DIR:-target}/release/ringway}
KEY=bench-admin-key-0123456789
work=$(mktemp -d)
. "$(dirname "$0")/lib.sh"

{
  printf '[server]\nlisten = ["127.0.0.1:0"]\nworkers = 2\n'
  printf '[admin]\nlisten = "127.0.0.1:0"\nkey = "%s"\n' "$KEY"
  # Nothing listens on the node: a matched route answers 502, an unmatched path 404.
  printf '[[upstreams]]\nname = "a"\nnodes = [{ addr = "127.0.0.1:9", weight = 1 }]\n'
  for ((i = 0; i < ROUTES; i++)); do
    printf '[[routes]]\nname = "r%d"\npaths = ["/r/%d/{id}"]\nupstream = "a"\n' "$i" "$i"
  done
} >"$work/gw.toml"

t0=$(date +%s.%N)
start_gw "$work/gw.toml"
for _ in $(seq 1200); do grep -q "admin listening on" "$work/gw.log" 2>/dev/null && break; sleep 0.05; done
t1=$(date +%s.%N)
GW=$(log_addr "$work/gw.log")
ADM=$(log_addr "$work/gw.log" admin)
echo "routes $ROUTES: start-up until the admin API answers $(echo "$t1 - $t0" | bc) s"

code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
api() { curl -s -o /dev/null -w '%{time_total}\n' -X "$1" -H "X-API-KEY: $KEY" -H 'Content-Type: application/json' --data "${3:-}" "http://$ADM/apisix/admin/$2"; }
[ "$(code "http://$GW/r/$((ROUTES / 2))/1")" = 502 ] || { echo "route not served" >&2; exit 1; }

mid=$((ROUTES / 2))
: >"$work/put.txt"
for ((k = 0; k < PUTS; k++)); do
  api PUT "routes/r$mid" "{\"paths\":[\"/moved/$k/{id}\"],\"upstream\":\"a\"}" >>"$work/put.txt"
  [ "$(code "http://$GW/moved/$k/1")" = 502 ] || { echo "PUT $k not live" >&2; exit 1; }
  [ "$(code "http://$GW/r/$mid/1")" = 404 ] || { echo "old path still served" >&2; exit 1; }
done
post=$(api POST routes '{"paths":["/posted/*"],"upstream":"a"}')
[ "$(code "http://$GW/posted/x")" = 502 ] || { echo "POST not live" >&2; exit 1; }
del=$(api DELETE "routes/r$((ROUTES - 1))")
[ "$(code "http://$GW/r/$((ROUTES - 1))/1")" = 404 ] || { echo "DELETE not live" >&2; exit 1; }
python3 - "$work/put.txt" "$post" "$del" <<'PY'
import statistics, sys
t = sorted(float(x) * 1000 for x in open(sys.argv[1]))
print(f"single-route PUT end-to-end (ms) over {len(t)}: median {statistics.median(t):.1f}, min {t[0]:.1f}, max {t[-1]:.1f}")
print(f"POST {float(sys.argv[2]) * 1000:.1f} ms, DELETE {float(sys.argv[3]) * 1000:.1f} ms")
PY
echo "server side (validate + apply on every shard), last 3:"
grep -o "generation [0-9]* applied in [^ ]*\( ([a-z ]*)\)\?" "$work/gw.log" | tail -3
