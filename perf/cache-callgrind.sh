#!/usr/bin/env bash
# Instructions per cache HIT under callgrind, local vs cross-shard (perf/callgrind.sh's method:
# zero the counters, drive one route with ringway-bench for a fixed time, dump, divide the
# dump's total Ir by the requests completed). ringway runs SHARDS shards under valgrind (which
# runs its threads one at a time: the counts are exact, the wall clock is not); one keep-alive
# connection stays on one shard and asks, in turn, for a key owned by each shard
# (perf/examples/cache_owner.rs picks them): the cheapest is that shard's own (a local hit), the
# others are cross-shard hits (ask the owner over the mesh, serve its refcounted entry). Each
# key's run opens a new connection, which may land on another shard: run it a few times; the
# lower "net" figure is the local hit.
#
#   perf/cache-callgrind.sh              # SHARDS=2, 4 s per key
#   SHARDS=1 perf/cache-callgrind.sh     # the one-shard hit (no mesh), for before/after builds
#   CONNS=8 perf/cache-callgrind.sh      # 8 connections, spread over the shards: a mix of local
#                                        # and cross-shard hits whose wake-ups batch, as under load
#   DRIVER=io_uring perf/cache-callgrind.sh   # default "legacy": valgrind does not see io_uring
#                                             # completions of an idle shard, which then wakes
#                                             # only at its tick
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-4}
CONNS=${CONNS:-1}
SHARDS=${SHARDS:-2}
DRIVER=${DRIVER:-legacy}
T=${CARGO_TARGET_DIR:-target}/release
for tool in valgrind callgrind_control; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y valgrind" >&2; exit 1; }
done
[ -x "$T/examples/cache_owner" ] || cargo build --release -q -p ringway-perf --example cache_owner
work=$(mktemp -d)
. perf/lib.sh
UP=$(free_port); GW=$(free_port)
"$T/ringway-bench" serve --listen "127.0.0.1:$UP" -t 1 --body-size 128 >/dev/null 2>&1 &
pids+=($!)
cat >"$work/gw.toml" <<TOML
[server]
listen = ["127.0.0.1:$GW"]
workers = $SHARDS
driver = "$DRIVER"
keepalive_requests = 1000000
[[upstreams]]
name = "origin"
nodes = [{ addr = "127.0.0.1:$UP" }]
[[routes]]
name = "cached"
paths = ["/*"]
upstream = "origin"
[routes.plugins.proxy-cache]
cache_ttl = 600
TOML
start_cg_gw "$work/gw.toml"
"$T/examples/cache_owner" "127.0.0.1:$GW" "$SHARDS" >"$work/keys.txt"
while read -r shard path; do
  # Stored once (by its owner), then warmed on one connection.
  "$T/ringway-bench" -t 1 -c 1 -d 2s "http://127.0.0.1:$GW$path" >/dev/null 2>&1
done <"$work/keys.txt"
# What the idle shards cost in SECS (ticks, sweeps): taken off each run, since a run's request
# count varies a lot under valgrind, which runs one thread at a time.
callgrind_control -z "$VG" >/dev/null
sleep "$SECS"
cg_dump idle
idle=$CG_IR
echo "idle ${SECS}s: Ir=$idle"
while read -r shard path; do
  callgrind_control -z "$VG" >/dev/null
  reqs=$("$T/ringway-bench" -t 1 -c "$CONNS" -d "${SECS}s" --json "http://127.0.0.1:$GW$path" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  cg_dump "owner$shard"
  f=$CG_FILE ir=$CG_IR
  echo "key owned by shard $shard ($path): requests=$reqs Ir=$ir Ir/request=$((ir / reqs)) net of idle=$(((ir - idle) / reqs))"
  mkdir -p "${OUT:-perf/out}"
  cp "$f" "${OUT:-perf/out}/callgrind-cache-owner$shard.out"
done <"$work/keys.txt"
