#!/usr/bin/env bash
# One admin change beside a large API: with GitHub's description (1223 operations) configured,
# PUT a small API (the OAI petstore, its version string changed each round so it is a real
# change) and time the admin round trip; the GitHub document is unchanged, so its parse and
# validators are reused (src/built/reuse.rs) and only the petstore is compiled.
# Usage: perf/openapi-reuse.sh [ROUNDS] [BINARY]   (BINARY default target/release/ringway)
set -euo pipefail
ROUNDS=${1:-5}
BIN=${2:-${CARGO_TARGET_DIR:-target}/release/ringway}
work=$(mktemp -d)
. "$(dirname "$0")/lib.sh"
gzip -dc tests/openapi/github/api.github.com.json.gz >"$work/github.json"
cat >"$work/gw.toml" <<TOML
[server]
listen = ["127.0.0.1:0"]
workers = 1

[admin]
listen = "127.0.0.1:0"
key = "bench-admin-key-0123456789"

[[upstreams]]
name = "origin"
nodes = [{ addr = "127.0.0.1:9", weight = 1 }]

[[apis]]
name = "github"
spec = "github.json"
upstream = "origin"
TOML
t0=$(date +%s%N)
start_gw "$work/gw.toml"
for _ in $(seq 6000); do grep -q "admin listening on" "$work/gw.log" 2>/dev/null && break; sleep 0.01; done
echo "start-up to admin listening: $((($(date +%s%N) - t0) / 1000000)) ms"
ADMIN=$(log_addr "$work/gw.log" admin)
for r in $(seq "$ROUNDS"); do
  python3 - "$r" >"$work/put.json" <<'PY'
import json, sys
doc = open("tests/openapi/oai/petstore.yaml").read().replace("version: 1.0.0", f"version: 1.0.{sys.argv[1]}")
print(json.dumps({"upstream": "origin", "base_path": "/p", "document": doc}))
PY
  t=$(curl -s -o "$work/put.out" -w '%{time_total}' -X PUT -H 'X-API-KEY: bench-admin-key-0123456789' \
      -H 'Content-Type: application/json' --data-binary @"$work/put.json" "http://$ADMIN/apisix/admin/apis/pets")
  grep -q config_generation "$work/put.out" || { cat "$work/put.out"; exit 1; }
  echo "admin PUT of the petstore, round $r: ${t}s"
done
