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
work=$(mktemp -d)
. "$(dirname "$0")/lib.sh"
need wrk "apt-get install wrk"
need node "apt-get install -y nodejs npm; then npm ci in tests/oidc"
start_serve
start_idp 0
API=https://api.ringway.test

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
start_gw "$work/gw.toml"
GW=$(log_addr "$work/gw.log")
echo "origin $ORIGIN gateway $GW provider $IDP"

JWT=$(idp_token "$API")
curl -fsS -o /dev/null "http://$GW/plain"
curl -fsS -o /dev/null -H 'apikey: bench-key' "http://$GW/key"
for _ in $(seq 50); do
  curl -fsS -o /dev/null -H "Authorization: Bearer $JWT" "http://$GW/oidc" && break; sleep 0.1
done
curl -fsS -o /dev/null -H "Authorization: Bearer $JWT" "http://$GW/oidc-noreuse"

for r in $(seq "$ROUNDS"); do
  p=$(wrk_rps "http://$GW/plain")
  k=$(wrk_rps -H 'apikey: bench-key' "http://$GW/key")
  o=$(wrk_rps -H "Authorization: Bearer $JWT" "http://$GW/oidc")
  n=$(wrk_rps -H "Authorization: Bearer $JWT" "http://$GW/oidc-noreuse")
  echo "round $r plain $p key-auth $k openid-connect $o openid-connect-without-reuse $n"
done

cat >"$work/tokens.lua" <<'LUA'
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
  : >"$work/$1.txt"
  for _ in $(seq 1000); do echo "$(idp_token "$2")" >>"$work/$1.txt"; done
  local before after
  before=$(counts)
  for m in 1 2; do
    out=$(TOKENS="$work/$1.txt" taskset -c 0 wrk -t1 -c64 -d"${STEADY}s" -s "$work/tokens.lua" "http://$GW/oidc" 2>&1) || { echo "wrk failed: $out"; head -c 300 "$work/$1.txt"; return 1; }
    after=$(counts)
    echo "steady $1 minute $m: $(echo "$out" | awk '/Requests\/sec/ {print $2}') req/s, non-2xx: $(echo "$out" | awk '/Non-2xx/ {print $5}'), provider counts before $before after $after"
    before=$after
  done
}
steady jwt "$API" || true
steady opaque "$API/opaque" || true
