#!/usr/bin/env bash
# OpenAPI validation cost and the large document's start-up / change times, on one ringway
# (workers = 1, cpu 1) in front of ringway-bench serve, loaded with wrk on cpu 0:
#   plain     POST /plain/repos/o/r/issues   a route without plugins
#   validated POST /repos/o/r/issues         GitHub's issues/create, body checked (validate = "enforce")
# both with the same ~1 KiB JSON body, rounds alternating. Then: start-up to "listening" with
# GitHub's description (1223 operations) against the same config without it, and one admin PUT
# replacing that API (document inline), as the client sees it and as the log reports it.
# Usage: perf/openapi-overhead.sh [rounds] [seconds]   (needs a release build, wrk, curl, gzip)
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-10}
T=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
. "$(dirname "$0")/lib.sh"
need wrk "apt-get install wrk"
gzip -dc tests/openapi/github/api.github.com.json.gz >"$work/github.json"

start_serve

base() {
  cat <<TOML
[server]
listen = ["127.0.0.1:0"]
workers = 1
cpu_affinity = [1]

[admin]
listen = "127.0.0.1:0"
key = "bench-admin-key-0123456789"

[[upstreams]]
name = "origin"
nodes = [{ addr = "$ORIGIN", weight = 1 }]

[[routes]]
name = "plain"
paths = ["/plain/*"]
upstream = "origin"
TOML
}
base >"$work/plain.toml"
{ base; printf '\n[[apis]]\nname = "github"\nspec = "github.json"\nupstream = "origin"\n'; } >"$work/gw.toml"

start() { # config -> MS (to shard 0 started), GW_PID, GW, ADMIN
  local t0 t1
  t0=$(date +%s%N)
  start_gw "$1"
  for _ in $(seq 600); do grep -q "shard 0 started" "$work/gw.log" 2>/dev/null && break; sleep 0.01; done
  t1=$(date +%s%N)
  GW=$(log_addr "$work/gw.log")
  ADMIN=$(log_addr "$work/gw.log" admin)
  MS=$(((t1 - t0) / 1000000))
}
stop() { kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true; GW_PID=; }

for r in $(seq "$ROUNDS"); do
  start "$work/plain.toml"; a=$MS; stop
  start "$work/gw.toml"; b=$MS; stop
  echo "startup round $r: without the API ${a} ms, with GitHub's 1223 operations ${b} ms"
done

start "$work/gw.toml"
BODY=$(python3 -c 'import json; print(json.dumps({"title":"Theme change does not apply to the header until reload","body":("Steps to reproduce: open the settings page, change the theme twice and reload. The header keeps the old colours until the cache expires. ")*6,"assignees":["octocat","hubot"],"milestone":3,"labels":["bug","ui","needs-triage"]}))')
echo "body ${#BODY} bytes"
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[$BODY]]
LUA
for p in /plain/repos/o/r/issues /repos/o/r/issues; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' --data "$BODY" "http://$GW$p")
  [ "$code" = 200 ] || { echo "$p answered $code"; exit 1; }
done
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' --data '{"body":1}' "http://$GW/repos/o/r/issues")
[ "$code" = 400 ] || { echo "invalid body answered $code"; exit 1; }
run() { taskset -c 0 wrk -t1 -c64 -d"${SECS}s" -s "$work/post.lua" "$1" | awk '/Requests\/sec/ {print $2}'; }
for r in $(seq "$ROUNDS"); do
  p=$(run "http://$GW/plain/repos/o/r/issues")
  v=$(run "http://$GW/repos/o/r/issues")
  echo "round $r plain $p validated $v ($(python3 -c "print(f'{($v/$p-1)*100:+.1f}%')"))"
done

python3 - "$work/github.json" >"$work/put.json" <<'PY'
import json, sys
print(json.dumps({"upstream": "origin", "base_path": "/v2", "document": json.load(open(sys.argv[1]))}))
PY
for r in $(seq "$ROUNDS"); do
  t=$(curl -s -o "$work/put.out" -w '%{time_total}' -X PUT -H 'X-API-KEY: bench-admin-key-0123456789' \
      -H 'Content-Type: application/json' --data-binary @"$work/put.json" "http://$ADMIN/apisix/admin/apis/github")
  grep -q config_generation "$work/put.out" || { cat "$work/put.out"; exit 1; }
  echo "admin PUT round $r: ${t}s; log: $(grep -o 'generation [0-9]* applied in [^ ]*' "$work/gw.log" | tail -1)"
done
