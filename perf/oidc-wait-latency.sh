#!/usr/bin/env bash
# Latency of a request that waits for an introspection (an opaque token the shard has not seen),
# against the same request once its answer is cached: what parking a request costs on top of the
# provider's own answer. One ringway shard pinned on CPU 1; origin, provider and curl on CPU 0.
#   BIN=target/debug/ringway N=200 perf/oidc-wait-latency.sh   (needs node, curl; ringway-bench)
# CALLGRIND=1 runs the gateway under callgrind instead and prints its instruction total for the
# whole run (start-up, N introspected and N cached requests, drain): a wait's own cost.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug/ringway}
N=${N:-200}
BENCH=${BENCH:-$(dirname "$BIN")/ringway-bench}
work=$(mktemp -d)
. perf/lib.sh
need node "apt-get install -y nodejs npm; then npm ci in tests/oidc"
need curl "apt-get install -y curl"
UP=$(free_port); GW=$(free_port)
taskset -c 0 "$BENCH" serve --listen "127.0.0.1:$UP" -t 1 --body-size 16 >/dev/null 2>&1 &
pids+=($!)
start_idp 0
cat >"$work/gw.toml" <<TOML
[server]
listen = ["127.0.0.1:$GW"]
workers = 1
[[upstreams]]
name = "origin"
nodes = [{ addr = "127.0.0.1:$UP" }]
[[routes]]
name = "api"
paths = ["/*"]
upstream = "origin"
[routes.plugins.openid-connect]
discovery = "$IDP/.well-known/openid-configuration"
client_id = "gw"
client_secret = "gw-secret"
audience = "https://api.ringway.test"
TOML
if [ -n "${CALLGRIND:-}" ]; then
  need valgrind "apt-get install -y valgrind"
  taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$BIN" run -c "$work/gw.toml" >"$work/gw.log" 2>&1 &
else
  taskset -c 1 "$BIN" run -c "$work/gw.toml" >"$work/gw.log" 2>&1 &
fi
gw=$!
pids+=($gw)
wait_port "$GW"
for i in $(seq "$N"); do
  curl -s -u gw:gw-secret -d grant_type=client_credentials -d scope=read \
    -d resource=https://api.ringway.test/opaque "$IDP/token" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
done >"$work/tokens"
one() { taskset -c 0 curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -H "Authorization: Bearer $1" "http://127.0.0.1:$GW/x"; }
while read -r t; do one "$t" >>"$work/first"; one "$t" >>"$work/cached"; done <"$work/tokens"
stats() { # label file: status check, then median and p90 in ms
  awk -v l="$1" '$1 != 200 { bad++ } { print $2 * 1000 }
    END { if (bad) { print l ": " bad " non-200 answers" > "/dev/stderr" } }' "$2" | sort -n |
    awk -v l="$1" '{ a[NR] = $1 } END { printf "%-28s n=%d median %.2f ms  p90 %.2f ms  max %.2f ms\n", l, NR, a[int(NR/2)+1], a[int(NR*0.9)], a[NR] }'
}
echo "binary: $BIN"
stats "first (introspected)" "$work/first"
stats "again (cached)" "$work/cached"
if [ -n "${CALLGRIND:-}" ]; then
  kill -TERM "$gw"; wait "$gw" 2>/dev/null || true
  echo "gateway instructions, whole run: $(callgrind_annotate "$work/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { print $1 }')"
fi
