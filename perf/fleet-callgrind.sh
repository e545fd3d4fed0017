#!/usr/bin/env bash
# Cluster-wide limits (issue 17): instructions per request of limit-count policy = "local" against
# policy = "redis" (one key, sync_interval 50 ms) and exact mode (sync_interval = "0", a script
# call per request) in one ringway under callgrind, as
# perf/callgrind.sh does for plugins. Every thread is counted, the fleet thread (tokio, Redis
# client) included, so the store exchanges are in the per-request figure. Needs redis-server.
#
#   perf/fleet-callgrind.sh           # SECS=4 CONNS=8 ROUTES="local redis exact" by default
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-4}
CONNS=${CONNS:-8}
ROUTES=${ROUTES:-local redis exact}
T=${CARGO_TARGET_DIR:-target}/release
for tool in valgrind callgrind_control callgrind_annotate; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y valgrind" >&2; exit 1; }
done
work=$(mktemp -d)
. perf/lib.sh
GW=$(free_port); RP=$(free_port)
start_redis "$RP"
start_origin
{ origin_gw_head "$GW"; cat <<TOML; } >"$work/gw.toml"
[[routes]]
name = "local"
paths = ["/local"]
upstream = "origin"
[routes.plugins.limit-count]
count = 1000000000
time_window = 60
key = "remote_addr"
[[routes]]
name = "redis"
paths = ["/redis"]
upstream = "origin"
[routes.plugins.limit-count]
count = 1000000000
time_window = 60
key = "remote_addr"
policy = "redis"
redis = { addr = "127.0.0.1:$RP" }
[[routes]]
name = "exact"
paths = ["/exact"]
upstream = "origin"
[routes.plugins.limit-count]
count = 1000000000
time_window = 60
key = "remote_addr"
policy = "redis"
sync_interval = "0"
on_redis_error = "deny"
redis = { addr = "127.0.0.1:$RP", timeout = "2s" }
TOML
start_cg_gw "$work/gw.toml"
for route in $ROUTES; do
  "$T/ringway-bench" -t 1 -c "$CONNS" -d 2s "http://127.0.0.1:$GW/$route" >/dev/null 2>&1
done
for route in $ROUTES $ROUTES; do
  callgrind_control -z "$VG" >/dev/null
  c0=$(redis_evals "$RP")
  reqs=$("$T/ringway-bench" -t 1 -c "$CONNS" -d "${SECS}s" --json \
    "http://127.0.0.1:$GW/$route" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  c1=$(redis_evals "$RP")
  cg_dump "$route"
  ir=$CG_IR
  echo "$route requests=$reqs Ir=$ir Ir/request=$((ir / reqs)) script-calls=$((c1 - c0))"
done
