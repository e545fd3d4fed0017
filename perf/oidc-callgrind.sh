#!/usr/bin/env bash
# Instructions per request under callgrind for openid-connect (one JWT, reused or verified every
# time) against key-auth and no auth, as perf/callgrind.sh does for key-auth: one ringway shard
# under valgrind, origin `ringway-bench serve`, the real provider (tests/oidc) for the keys.
#   SECS=4 CONNS=8 perf/oidc-callgrind.sh      (needs a release build, valgrind, node)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-4}
CONNS=${CONNS:-8}
T=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
. perf/lib.sh
need valgrind "apt-get install -y valgrind"
need node "apt-get install -y nodejs npm; then npm ci in tests/oidc"
GW=$(free_port)
start_origin
start_idp
API=https://api.ringway.test
oidc() { # route name, extra line
  printf '[[routes]]\nname = "%s"\npaths = ["/%s"]\nupstream = "origin"\n' "$1" "$1"
  printf '[routes.plugins.openid-connect]\ndiscovery = "%s/.well-known/openid-configuration"\n' "$IDP"
  printf 'client_id = "gw"\nclient_secret = "gw-secret"\naudience = "%s"\nconsumer_by = "client_id"\n%s\n' "$API" "$2"
}
{
  origin_gw_head "$GW"
  cat <<TOML
[[routes]]
name = "plain"
paths = ["/plain"]
upstream = "origin"
[[routes]]
name = "key"
paths = ["/key"]
upstream = "origin"
[routes.plugins.key-auth]
TOML
  oidc oidc ""
  oidc oidc-noreuse "reuse_verified_tokens = false"
  # Like for like with key-auth, which forwards only the consumer's name: the same route without
  # the token and userinfo headers APISIX's defaults forward upstream.
  oidc oidc-bare "set_access_token_header = false
set_userinfo_header = false"
  printf '[[consumers]]\nusername = "gw"\n[consumers.plugins.key-auth]\nkey = "bench-key"\n'
} >"$work/gw.toml"
start_cg_gw "$work/gw.toml"
JWT=$(idp_token "$API")
for _ in $(seq 100); do
  curl -fsS -o /dev/null -H "Authorization: Bearer $JWT" "http://127.0.0.1:$GW/oidc" && break; sleep 0.2
done
H=(-H 'apikey: bench-key' -H "Authorization: Bearer $JWT")
for route in plain key oidc oidc-bare oidc-noreuse; do # warm up
  "$T/ringway-bench" -t 1 -c "$CONNS" -d 1s "${H[@]}" "http://127.0.0.1:$GW/$route" >/dev/null 2>&1
done
for route in plain key oidc oidc-bare oidc-noreuse; do
  callgrind_control -z "$VG" >/dev/null
  out=$("$T/ringway-bench" -t 1 -c "$CONNS" -d "${SECS}s" --json "${H[@]}" "http://127.0.0.1:$GW/$route")
  reqs=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  cg_dump "$route"
  ir=$CG_IR
  echo "$route requests=$reqs Ir=$ir Ir/request=$((ir / reqs))"
done
