#!/usr/bin/env bash
# openid-connect vs key-auth vs no auth: one ringway (workers = 1, cpu 1) with three routes to
# the same origin, loaded in turn with wrk on cpu 0 (one JWT reused: the verified-token cache);
# then a steady load of 1,000 distinct JWTs and of 1,000 distinct opaque tokens, counting the
# requests the provider (npm oidc-provider, tests/oidc) received per minute.
# Usage: perf/oidc-overhead.sh [rounds] [seconds] [steady-seconds]
#   (needs a release build of ringway and ringway-bench, wrk, node, and `npm ci` in tests/oidc)
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-10}
STEADY=${3:-60}
T=${CARGO_TARGET_DIR:-target}/release
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d)
trap 'kill $SERVE_PID $GW_PID $IDP_PID 2>/dev/null; [ -n "${GW:-}" ] || cat "$DIR/gw.log" >&2; rm -rf "$DIR"' EXIT

taskset -c 0 "$T/ringway-bench" serve --listen 127.0.0.1:0 -t 1 2>"$DIR/serve.log" &
SERVE_PID=$!
(cd "$ROOT/tests/oidc" && exec taskset -c 0 node start.mjs) >"$DIR/idp.log" 2>&1 &
IDP_PID=$!
for _ in $(seq 100); do
  grep -q "listening on" "$DIR/serve.log" 2>/dev/null && grep -q "^listening" "$DIR/idp.log" && break
  sleep 0.1
done
ORIGIN=$(grep -o "listening on [0-9.:]*" "$DIR/serve.log" | head -1 | awk '{print $3}')
IDP="http://127.0.0.1:$(awk '/^listening/ {print $2}' "$DIR/idp.log")"
API=https://api.ringway.test

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
name = "key"
paths = ["/key"]
upstream = "origin"
[routes.plugins.key-auth]

[[routes]]
name = "oidc"
paths = ["/oidc"]
upstream = "origin"
[routes.plugins.openid-connect]
discovery = "$IDP/.well-known/openid-configuration"
client_id = "gw"
client_secret = "gw-secret"
audience = "$API"
consumer_by = "client_id"

[[routes]]
name = "oidc-noreuse"
paths = ["/oidc-noreuse"]
upstream = "origin"
[routes.plugins.openid-connect]
discovery = "$IDP/.well-known/openid-configuration"
client_id = "gw"
client_secret = "gw-secret"
audience = "$API"
consumer_by = "client_id"
reuse_verified_tokens = false

[[consumers]]
username = "gw"
[consumers.plugins.key-auth]
key = "bench-key"
TOML
"$T/ringway" run -c "$DIR/gw.toml" >"$DIR/gw.log" 2>&1 &
GW_PID=$!
for _ in $(seq 50); do grep -q "listening on" "$DIR/gw.log" 2>/dev/null && break; sleep 0.1; done
GW=$(grep -o "listening on [0-9.:]*" "$DIR/gw.log" | head -1 | awk '{print $3}')
echo "origin $ORIGIN gateway $GW provider $IDP"

token() { # resource -> access token
  curl -fsS -u gw:gw-secret -d grant_type=client_credentials -d scope=read -d "resource=$1" \
    "$IDP/token" | sed 's/.*"access_token":"\([^"]*\)".*/\1/'
}
JWT=$(token "$API")
curl -fsS -o /dev/null "http://$GW/plain"
curl -fsS -o /dev/null -H 'apikey: bench-key' "http://$GW/key"
for _ in $(seq 50); do
  curl -fsS -o /dev/null -H "Authorization: Bearer $JWT" "http://$GW/oidc" && break; sleep 0.1
done
curl -fsS -o /dev/null -H "Authorization: Bearer $JWT" "http://$GW/oidc-noreuse"

run() { taskset -c 0 wrk -t1 -c64 -d"${SECS}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
for r in $(seq "$ROUNDS"); do
  p=$(run "http://$GW/plain")
  k=$(run -H 'apikey: bench-key' "http://$GW/key")
  o=$(run -H "Authorization: Bearer $JWT" "http://$GW/oidc")
  n=$(run -H "Authorization: Bearer $JWT" "http://$GW/oidc-noreuse")
  echo "round $r plain $p key-auth $k openid-connect $o openid-connect-without-reuse $n"
done

cat >"$DIR/tokens.lua" <<'LUA'
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/oidc", { ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA
counts() { curl -fsS "$IDP/test/counts"; }
steady() { # kind resource
  : >"$DIR/$1.txt"
  for _ in $(seq 1000); do echo "$(token "$2")" >>"$DIR/$1.txt"; done
  local before after
  before=$(counts)
  for m in 1 2; do
    out=$(TOKENS="$DIR/$1.txt" taskset -c 0 wrk -t1 -c64 -d"${STEADY}s" -s "$DIR/tokens.lua" "http://$GW/oidc" 2>&1) || { echo "wrk failed: $out"; head -c 300 "$DIR/$1.txt"; return 1; }
    after=$(counts)
    echo "steady $1 minute $m: $(echo "$out" | awk '/Requests\/sec/ {print $2}') req/s, non-2xx: $(echo "$out" | awk '/Non-2xx/ {print $5}'), provider counts before $before after $after"
    before=$after
  done
}
steady jwt "$API" || true
steady opaque "$API/opaque" || true
