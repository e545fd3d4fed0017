#!/usr/bin/env bash
# Cache hits side by side: nginx proxy_cache vs ringway proxy-cache (1 and 2 shards), all
# requests hits on one small object (BODY bytes), same wrk load, interleaved rounds.
# The upstream is ringway-bench serve; each proxy is warmed with one request first.
#
#   perf/cache-compare.sh                 # 10s runs, 64 connections, 2 rounds
#   DURATION=20s CONNS=128 ROUNDS=3 perf/cache-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-2}
BODY=${BODY:-128}
TARGET=${CARGO_TARGET_DIR:-target}

for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk nginx-light" >&2; exit 1; }
done
cargo build --release -q -p ringway -p ringway-bench
RW=$TARGET/release/ringway
BENCH=$TARGET/release/ringway-bench
work=$(mktemp -d)
. perf/lib.sh


UP=$(free_port); NGX=$(free_port); RW1=$(free_port); RW2=$(free_port)
"$BENCH" serve --listen "127.0.0.1:$UP" -t 1 --body-size "$BODY" 2>"$work/up.log" &
pids+=($!)

mkdir -p "$work/ngx-cache"
{ nginx_head; cat <<NGINX; } >"$work/nginx.conf"
  proxy_cache_path $work/ngx-cache keys_zone=c:16m max_size=64m;
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX reuseport;
    keepalive_requests 100000;
    location / {
      proxy_pass http://up;
      proxy_cache c;
      proxy_cache_valid 200 10m;
      add_header X-Cache-Status \$upstream_cache_status;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)

for pair in "1:$RW1" "2:$RW2"; do
  w=${pair%%:*}; port=${pair##*:}
  cat >"$work/rw$w.toml" <<TOML
[server]
listen = ["127.0.0.1:$port"]
workers = $w
keepalive_requests = 100000
[[upstreams]]
name = "up"
nodes = [{ addr = "127.0.0.1:$UP" }]
[[routes]]
name = "all"
paths = ["/*"]
upstream = "up"
[routes.plugins.proxy-cache]
cache_ttl = 600
TOML
  RINGWAY_LOG=warn "$RW" run -c "$work/rw$w.toml" &
  pids+=($!)
done
wait_port "$UP"; wait_port "$NGX"; wait_port "$RW1"; wait_port "$RW2"
for p in "$NGX" "$RW1" "$RW2"; do
  curl -s -o /dev/null "http://127.0.0.1:$p/obj"
  echo "warm :$p -> $(curl -s -D - -o /dev/null "http://127.0.0.1:$p/obj" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache-status" {print $2}')"
done

run() { # name port threads
  wrk -t"$3" -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$2/obj" >"$work/wrk.txt" 2>&1
  echo "$1 $(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt") $(awk '$1=="50%" {print $2}' "$work/wrk.txt") $(awk '$1=="99%" {print $2}' "$work/wrk.txt")" | tee -a "$work/raw.txt"
}
: >"$work/raw.txt"
for r in $(seq "$ROUNDS"); do
  run nginx-proxy_cache "$NGX" 1
  run ringway-1-shard "$RW1" 1
  run ringway-2-shards "$RW2" 2
done
echo "machine: $(nproc) cores, kernel $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ); wrk, proxies and upstream share the box; $CONNS conns, $DURATION x $ROUNDS rounds, body $BODY B"
python3 - "$work/raw.txt" <<'PY'
import sys, collections
agg = collections.defaultdict(list)
for l in open(sys.argv[1]):
    p = l.split()
    if len(p) == 4: agg[p[0]].append((float(p[1]), p[2], p[3]))
print("| target | req/s (median) | p50 | p99 |")
print("|---|---|---|---|")
for k, v in agg.items():
    v.sort(); m = v[len(v)//2]
    print(f"| {k} | {m[0]:,.0f} | {m[1]} | {m[2]} |")
PY
