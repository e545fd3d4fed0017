#!/usr/bin/env bash
# Memory of hot 1 MiB objects: ringway with SHARDS shards (default 2) caches OBJECTS (8) distinct
# 1 MiB responses, each asked for ROUNDS (10) times over new connections (which SO_REUSEPORT
# spreads over every shard); RSS is read before and after, and divided by OBJECTS (one object
# alone is lost in the allocator's noise). One copy per node adds ~1 MiB per object; one per
# shard ~1 MiB per shard that saw it. BIN=path/to/ringway measures another build (e.g. before).
#
#   perf/cache-rss.sh
#   BIN=/tmp/before/release/ringway SHARDS=2 perf/cache-rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS=${SHARDS:-2}
ROUNDS=${ROUNDS:-10}
OBJECTS=${OBJECTS:-8}
T=${CARGO_TARGET_DIR:-target}/release
BIN=${BIN:-$T/ringway}
work=$(mktemp -d)
. perf/lib.sh
need curl "apt-get install -y curl"
UP=$(free_port); GW=$(free_port)
"$T/ringway-bench" serve --listen "127.0.0.1:$UP" -t 1 --body-size 1048576 >/dev/null 2>&1 &
pids+=($!)
cat >"$work/gw.toml" <<TOML
[server]
listen = ["127.0.0.1:$GW"]
workers = $SHARDS
[[upstreams]]
name = "origin"
nodes = [{ addr = "127.0.0.1:$UP" }]
[[routes]]
name = "cached"
paths = ["/*"]
upstream = "origin"
[routes.plugins.proxy-cache]
cache_ttl = 600
max_body_bytes = 2097152
max_bytes = 67108864
TOML
RINGWAY_LOG=warn "$BIN" run -c "$work/gw.toml" >"$work/gw.log" 2>&1 &
RW=$!
pids+=($RW)
wait_port "$UP"; wait_port "$GW"
rss() { awk '/^VmRSS/ {print $2}' "/proc/$RW/status"; }
# Warm every shard's buffers and allocator with small uncached-size traffic first.
for _ in $(seq "$ROUNDS"); do curl -s -o /dev/null "http://127.0.0.1:$GW/warm?x=$RANDOM" -H 'Range: bytes=0-0'; done
sleep 0.5
before=$(rss)
statuses=$(for o in $(seq "$OBJECTS"); do for _ in $(seq "$ROUNDS"); do
  curl -s -o /dev/null -D - "http://127.0.0.1:$GW/big/$o" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache-status" {print $2}'
done; done | sort | uniq -c | tr '\n' ' ' | tr -s ' ')
sleep 0.5
after=$(rss)
echo "binary $BIN, $SHARDS shards: RSS before ${before} KiB, after ${after} KiB: +$(( (after - before) / OBJECTS )) KiB per 1 MiB object ($OBJECTS objects x $ROUNDS requests on new connections:$statuses)"
