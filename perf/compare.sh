#!/usr/bin/env bash
# Side-by-side: upstream alone, nginx and ringway as reverse proxies in front of the same
# upstream, under the same wrk load, interleaved in one run so noise hits all equally.
# Proxies are pinned alone on PROXY_CPU; wrk and the upstream share LOAD_CPU.
# Installs nothing: it checks for wrk and nginx and says how to get them.
#
#   perf/compare.sh                      # defaults: 10s runs, 64 and 256 connections, 2 rounds
#   DURATION=20s CONNS="16 64 256" ROUNDS=3 perf/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-"64 256"}
ROUNDS=${ROUNDS:-2}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
BODY=${BODY:-128}
OUT=${OUT:-perf/out}

for tool in wrk nginx taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk nginx-light util-linux" >&2; exit 1; }
done
cargo build --release -q -p ringway -p ringway-bench
RW=target/release/ringway
BENCH=target/release/ringway-bench
mkdir -p "$OUT"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

UP=$(free_port); NGX=$(free_port); RWP=$(free_port)

taskset -c "$LOAD_CPU" "$BENCH" serve --listen "127.0.0.1:$UP" -t 1 --body-size "$BODY" 2>"$work/up.log" &
pids+=($!)

cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
worker_cpu_affinity $(python3 -c "print(format(1<<$PROXY_CPU,'b'))");
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 512; }
  server {
    listen 127.0.0.1:$NGX reuseport;
    keepalive_requests 100000;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)

cat >"$work/ringway.toml" <<TOML
[server]
listen = ["127.0.0.1:$RWP"]
workers = 1
cpu_affinity = [$PROXY_CPU]
keepalive_requests = 100000
[[upstreams]]
name = "up"
nodes = [{ addr = "127.0.0.1:$UP" }]
keepalive_pool = { size = 512, requests = 100000 }
[[routes]]
name = "all"
paths = ["/*"]
upstream = "up"
TOML
RINGWAY_LOG=warn "$RW" run -c "$work/ringway.toml" &
pids+=($!)
wait_port "$UP"; wait_port "$NGX"; wait_port "$RWP"

run() { # name port conns -> "rps p50 p99"
  taskset -c "$LOAD_CPU" wrk -t1 -c"$3" -d"$DURATION" --latency "http://127.0.0.1:$2/" >"$work/wrk.txt" 2>&1
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  p50=$(awk '$1=="50%" {print $2}' "$work/wrk.txt")
  p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
  echo "$1 $3 $rps $p50 $p99" | tee -a "$work/raw.txt"
}

: >"$work/raw.txt"
for c in $CONNS; do
  for r in $(seq "$ROUNDS"); do
    run upstream "$UP" "$c"
    run nginx "$NGX" "$c"
    run ringway "$RWP" "$c"
  done
done

echo
echo "machine: $(nproc) cores, kernel $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ); proxy on CPU $PROXY_CPU, wrk+upstream on CPU $LOAD_CPU, $DURATION x $ROUNDS rounds, body $BODY B"
python3 - "$work/raw.txt" "$OUT/compare.json" <<'PY'
import json, sys, collections
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
def ms(t):
    t = t.strip()
    for suf, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if t.endswith(suf):
            return float(t[:-len(suf)]) * f
    return float(t)
agg = collections.defaultdict(list)
for name, c, rps, p50, p99 in rows:
    agg[(name, int(c))].append((float(rps), ms(p50), ms(p99)))
out = []
print("| target | conns | req/s (median) | p50 ms | p99 ms | ratio to nginx |")
print("|---|---|---|---|---|---|")
for (name, c), v in sorted(agg.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    v.sort()
    rps, p50, p99 = v[len(v) // 2]
    ng = sorted(agg.get(("nginx", c), [(0, 0, 0)]))[len(agg.get(("nginx", c), [0])) // 2][0]
    ratio = rps / ng if ng else 0
    out.append(dict(target=name, conns=c, rps=rps, p50_ms=p50, p99_ms=p99, ratio_to_nginx=round(ratio, 3), runs=v))
    print(f"| {name} | {c} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {ratio:.2f} |")
json.dump(out, open(sys.argv[2], "w"), indent=1)
PY
