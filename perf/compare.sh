#!/usr/bin/env bash
# Side by side in ONE run: the upstream alone (ceiling), nginx (1 worker, keep-alive pool),
# HAProxy (1 thread, http-reuse) and ringway (1 shard) as reverse proxies in front of the same
# upstreams, every scenario interleaved target by target so noise hits all equally.
# Proxies are pinned on PROXY_CPU; the load generator and the upstreams share LOAD_CPU.
# Everything listens on 127.0.0.1 ephemeral ports and is stopped by PID. Installs nothing: it
# checks for its tools and says how to get them.
#
#   perf/compare.sh                                  # wrk, 5s per run, 1 round, all scenarios
#   TOOL=ringway-bench perf/compare.sh               # same with the bundled load generator
#   DURATION=10s ROUNDS=3 SCENARIOS="get-64 get-256" perf/compare.sh
#   WARMUP=0 perf/compare.sh                         # no unrecorded warm-up run (default 1s)
#   RATE=8000 TOOL=ringway-bench perf/compare.sh     # open loop: every target gets the same
#                                                    # offered load; compare p50/p99, not req/s
#
# Scenarios: get-16/64/256 (128 B GET keep-alive), get4k-64, get64k-64, post1k-64 (1 KiB POST
# bodies), newconn-64 (a new connection per request), auth-64 (key-auth + limit-count; nginx:
# header check + limit_req, HAProxy: header ACL + stick-table counter), cache-64 (every request a
# cache hit: ringway proxy-cache, nginx proxy_cache, HAProxy cache).
# Output: a markdown table (median of rounds; req/s, p50, p99, ratio to nginx and to HAProxy,
# and the CPU time each proxy spent per request: the per-core cost, which still compares when the
# load generator's core is the one that saturates) and $OUT/compare-$TOOL.json with every run.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOL=${TOOL:-wrk}
DURATION=${DURATION:-5s}
# Each target gets one unrecorded run of this length per scenario before round 1 (fresh upstream
# pools, socket buffers, free lists), so round 1 is not a cold start: 0 disables it.
WARMUP=${WARMUP:-1s}
ROUNDS=${ROUNDS:-1}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
OUT=${OUT:-perf/out}
ALL="get-16 get-64 get-256 get4k-64 get64k-64 post1k-64 newconn-64 auth-64 cache-64"
SCENARIOS=${SCENARIOS:-$ALL}
TARGET=${CARGO_TARGET_DIR:-target}

. perf/lib.sh
need nginx "apt-get install -y nginx-light"
need haproxy "apt-get install -y haproxy"
need taskset "apt-get install -y util-linux"
need python3 "apt-get install -y python3"
need curl "apt-get install -y curl"
# Open loop (a fixed request rate, latency from each request's intended send time) needs
# ringway-bench: wrk has no rate option. It is how to compare tails when the closed loop
# saturates the load core first, since then each target's p99 includes the load side's queueing.
RATE=${RATE:-}
[ -z "$RATE" ] || [ "$TOOL" = ringway-bench ] || { echo "RATE needs TOOL=ringway-bench (wrk has no fixed-rate mode)" >&2; exit 1; }
case $TOOL in
  wrk) need wrk "apt-get install -y wrk" ;;
  ringway-bench) ;;
  *) echo "TOOL must be wrk or ringway-bench" >&2; exit 1 ;;
esac
# BUILD=0 measures the binaries already in $TARGET/release (a fat-LTO rebuild takes minutes).
[ "${BUILD:-1}" = 0 ] || cargo build --release -q -p ringway -p ringway-bench
RW=$TARGET/release/ringway
BENCH=$TARGET/release/ringway-bench
mkdir -p "$OUT"
work=$(mktemp -d)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true


# Upstreams: 128 B, 4 KiB and 64 KiB bodies.
UPS=$(free_port); UP4=$(free_port); UP64=$(free_port)
NGX=$(free_port); HAP=$(free_port); RWP=$(free_port)
for pair in "$UPS:128" "$UP4:4096" "$UP64:65536"; do
  taskset -c "$LOAD_CPU" "$BENCH" serve --listen "127.0.0.1:${pair%%:*}" -t 1 --body-size "${pair##*:}" 2>>"$work/up.log" &
  pids+=($!)
done

# nginx workers drop to an unprivileged user: they must be able to write the cache directory.
mkdir -p "$work/ngx-cache"; chmod 755 "$work"; chmod 777 "$work/ngx-cache"
{ nginx_head "$PROXY_CPU"; cat <<NGINX; } >"$work/nginx.conf"
  proxy_cache_path $work/ngx-cache keys_zone=c:16m max_size=64m;
  limit_req_zone \$http_apikey zone=rl:1m rate=1000000r/s;
  upstream small { server 127.0.0.1:$UPS; keepalive 512; }
  upstream b4k { server 127.0.0.1:$UP4; keepalive 512; }
  upstream b64k { server 127.0.0.1:$UP64; keepalive 512; }
  server {
    listen 127.0.0.1:$NGX reuseport;
    keepalive_requests 1000000;
    location /s/ { proxy_pass http://small; }
    location /4k/ { proxy_pass http://b4k; }
    location /64k/ { proxy_pass http://b64k; }
    location /auth/ {
      if (\$http_apikey != "bench-key") { return 401; }
      limit_req zone=rl burst=1000000 nodelay;
      proxy_pass http://small;
    }
    location /cache/ {
      proxy_pass http://small;
      proxy_cache c;
      proxy_cache_valid 200 10m;
      add_header X-Cache-Status \$upstream_cache_status;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!); NGX_PID=$!

cat >"$work/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 8000
  tune.bufsize 16384
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
cache c
  total-max-size 64
  max-object-size 100000
  max-age 600
frontend fe
  bind 127.0.0.1:$HAP
  acl p_auth path_beg /auth/
  acl p_cache path_beg /cache/
  acl p_4k path_beg /4k/
  acl p_64k path_beg /64k/
  http-request deny deny_status 401 if p_auth !{ req.hdr(apikey) -m str bench-key }
  http-request track-sc0 req.hdr(apikey) table rl if p_auth
  http-request deny deny_status 503 if p_auth { sc_http_req_rate(0) gt 100000000 }
  use_backend cached if p_cache
  use_backend b4k if p_4k
  use_backend b64k if p_64k
  default_backend small
backend rl
  stick-table type string len 64 size 100k expire 60s store http_req_rate(60s)
backend small
  server s 127.0.0.1:$UPS
backend b4k
  server s 127.0.0.1:$UP4
backend b64k
  server s 127.0.0.1:$UP64
backend cached
  http-request cache-use c
  http-response cache-store c
  http-response set-header X-Cache-Status HIT if { res.cache_hit }
  server s 127.0.0.1:$UPS
HAP
taskset -c "$PROXY_CPU" haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
pids+=($!); HAP_PID=$!

{ ringway_head "$RWP" "$PROXY_CPU"
  ringway_upstream small "127.0.0.1:$UPS"
  ringway_upstream b4k "127.0.0.1:$UP4"
  ringway_upstream b64k "127.0.0.1:$UP64"
  cat <<TOML; } >"$work/ringway.toml"
[[routes]]
name = "s"
paths = ["/s/*"]
upstream = "small"
[[routes]]
name = "4k"
paths = ["/4k/*"]
upstream = "b4k"
[[routes]]
name = "64k"
paths = ["/64k/*"]
upstream = "b64k"
[[routes]]
name = "auth"
paths = ["/auth/*"]
upstream = "small"
[routes.plugins.key-auth]
[routes.plugins.limit-count]
count = 1000000000
time_window = 60
key = "consumer"
[[routes]]
name = "cache"
paths = ["/cache/*"]
upstream = "small"
[routes.plugins.proxy-cache]
cache_ttl = 600
[[consumers]]
username = "bench"
[consumers.plugins.key-auth]
key = "bench-key"
TOML
RINGWAY_LOG=warn "$RW" run -c "$work/ringway.toml" 2>"$work/ringway.log" &
pids+=($!); RW_PID=$!
for p in $UPS $UP4 $UP64 $NGX $HAP $RWP; do wait_port "$p"; done

head -c 1024 /dev/zero | tr '\0' x >"$work/body1k"
cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA

# scenario -> "conns path kind"
spec() {
  case $1 in
    get-16) echo "16 /s/x get" ;;
    get-64) echo "64 /s/x get" ;;
    get-256) echo "256 /s/x get" ;;
    get4k-64) echo "64 /4k/x get" ;;
    get64k-64) echo "64 /64k/x get" ;;
    post1k-64) echo "64 /s/x post" ;;
    newconn-64) echo "64 /s/x close" ;;
    auth-64) echo "64 /auth/x auth" ;;
    cache-64) echo "64 /cache/x get" ;;
    *) echo "unknown scenario $1" >&2; exit 1 ;;
  esac
}
port_of() { # target path
  case $1 in
    nginx) echo "$NGX" ;; haproxy) echo "$HAP" ;; ringway) echo "$RWP" ;;
    upstream) case $2 in /4k/*) echo "$UP4" ;; /64k/*) echo "$UP64" ;; *) echo "$UPS" ;; esac ;;
  esac
}

# Sanity before measuring: every proxy answers every scenario with 200, and cache paths hit.
for t in nginx haproxy ringway; do
  p=$(port_of "$t" /)
  for path in /s/x /4k/x /64k/x /cache/x; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p$path")
    [ "$code" = 200 ] || { echo "$t $path answered $code" >&2; exit 1; }
  done
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'apikey: bench-key' "http://127.0.0.1:$p/auth/x")
  [ "$code" = 200 ] || { echo "$t /auth/x answered $code" >&2; exit 1; }
  hit=$(curl -s -D - -o /dev/null "http://127.0.0.1:$p/cache/x" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache-status" {print $2}')
  echo "cache check $t: X-Cache-Status=$hit"
done

# CPU the proxy itself spent (user + system ticks, all its threads and nginx's worker): the
# per-core cost, which still compares when the load generator's core is the one that saturates.
proxy_pids() {
  case $1 in
    nginx) echo "$NGX_PID" $(pgrep -P "$NGX_PID") ;;
    haproxy) echo "$HAP_PID" ;;
    ringway) echo "$RW_PID" ;;
  esac
}
cpu_ticks() {
  local t=0 p
  for p in $(proxy_pids "$1"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

run() { # target scenario round
  local conns path kind port
  read -r conns path kind <<<"$(spec "$2")"
  port=$(port_of "$1" "$path")
  local url="http://127.0.0.1:$port$path"
  local rps p50 p99 errs c0 c1
  c0=$(cpu_ticks "$1")
  if [ "$TOOL" = wrk ]; then
    local extra=()
    case $kind in
      post) extra=(-s "$work/post.lua") ;;
      close) extra=(-H "Connection: close") ;;
      auth) extra=(-H "apikey: bench-key") ;;
    esac
    taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"$DURATION" --latency "${extra[@]}" "$url" >"$work/load.txt" 2>&1 || true
    read -r rps p50 p99 errs < <(python3 - "$work/load.txt" <<'PY'
import sys, re
t = open(sys.argv[1]).read()
def ms(s):
    for suf, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if s.endswith(suf):
            return float(s[:-len(suf)]) * f
    return float(s)
rps = re.search(r"Requests/sec:\s+([\d.]+)", t)
p50 = re.search(r"^\s+50%\s+(\S+)", t, re.M)
p99 = re.search(r"^\s+99%\s+(\S+)", t, re.M)
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
errs = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
print(rps.group(1) if rps else 0, ms(p50.group(1)) if p50 else 0, ms(p99.group(1)) if p99 else 0, errs)
PY
)
  else
    local extra=()
    case $kind in
      post) extra=(-m POST -H "Content-Type: application/octet-stream" --body-file "$work/body1k") ;;
      close) extra=(--no-keepalive) ;;
      auth) extra=(-H "apikey: bench-key") ;;
    esac
    taskset -c "$LOAD_CPU" "$BENCH" -t 1 -c "$conns" -d "$DURATION" ${RATE:+-R "$RATE"} --json "${extra[@]}" "$url" >"$work/load.json" 2>/dev/null || true
    read -r rps p50 p99 errs < <(python3 - "$work/load.json" <<'PY'
import sys, json
try:
    j = json.load(open(sys.argv[1]))
    # open loop: from each request's intended send time, so a stall also counts the requests
    # it held back (coordinated omission)
    l = j.get("latency_corrected_us") or j["latency_uncorrected_us"]
    print(j["rps"], l["p50"] / 1000, l["p99"] / 1000, j["errors"]["total"])
except Exception:
    print(0, 0, 0, -1)
PY
)
  fi
  c1=$(cpu_ticks "$1")
  local secs=${DURATION%s}
  local cpu_us
  cpu_us=$(python3 -c "r=$rps*$secs; print(round(($c1-$c0)*$TICK_US/r, 2) if r else 0)")
  [ "$3" = warmup ] && return 0
  echo "$1 $2 $3 $rps $p50 $p99 $errs $cpu_us" | tee -a "$work/raw.txt"
}

: >"$work/raw.txt"
if [ "$WARMUP" != 0 ]; then
  for s in $SCENARIOS; do
    for t in upstream nginx haproxy ringway; do
      DURATION=$WARMUP run "$t" "$s" warmup
    done
  done
fi
for r in $(seq "$ROUNDS"); do
  for s in $SCENARIOS; do
    for t in upstream nginx haproxy ringway; do
      run "$t" "$s" "$r"
    done
  done
done

echo
echo "machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ), load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "tool $TOOL${RATE:+, open loop at $RATE req/s}; proxies on CPU $PROXY_CPU, load generator + upstreams on CPU $LOAD_CPU; $DURATION x $ROUNDS rounds; ringway $(git rev-parse --short HEAD)$(git diff --quiet -- src || echo +dirty), $(nginx -v 2>&1 | cut -d' ' -f3), HAProxy $(haproxy -v | head -1 | cut -d' ' -f3)"
python3 - "$work/raw.txt" "$OUT/compare-$TOOL.json" "$SCENARIOS" "$TOOL" <<'PY'
import json, sys, collections
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
order = sys.argv[3].split()
runs = collections.defaultdict(list)
for t, s, r, rps, p50, p99, errs, cpu in rows:
    runs[(s, t)].append(dict(round=int(r), rps=float(rps), p50_ms=float(p50), p99_ms=float(p99), errors=int(errs), cpu_us_per_req=float(cpu)))
def med(s, t):
    v = sorted(runs.get((s, t), []), key=lambda x: x["rps"])
    return v[len(v) // 2] if v else dict(rps=0, p50_ms=0, p99_ms=0, errors=0, cpu_us_per_req=0)
def med_cpu(s, t):
    v = sorted(x["cpu_us_per_req"] for x in runs.get((s, t), []))
    return v[len(v) // 2] if v else 0
out = []
print("| scenario | upstream req/s | nginx req/s (p50/p99 ms) | HAProxy req/s (p50/p99 ms) | ringway req/s (p50/p99 ms) | ringway/nginx | ringway/HAProxy | proxy CPU µs/req n/h/r | errors n/h/r |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
for s in order:
    u, n, h, w = (med(s, t) for t in ("upstream", "nginx", "haproxy", "ringway"))
    rn = w["rps"] / n["rps"] if n["rps"] else 0
    rh = w["rps"] / h["rps"] if h["rps"] else 0
    f = lambda m: f'{m["rps"]:,.0f} ({m["p50_ms"]:.2f}/{m["p99_ms"]:.2f})'
    cpu = "/".join(f'{med_cpu(s, t):.1f}' for t in ("nginx", "haproxy", "ringway"))
    print(f'| {s} | {u["rps"]:,.0f} | {f(n)} | {f(h)} | {f(w)} | {rn:.2f} | {rh:.2f} | {cpu} | {n["errors"]}/{h["errors"]}/{w["errors"]} |')
    out.append(dict(scenario=s, tool=sys.argv[4], ratio_to_nginx=round(rn, 3), ratio_to_haproxy=round(rh, 3),
                    median={t: med(s, t) for t in ("upstream", "nginx", "haproxy", "ringway")},
                    runs={t: runs.get((s, t), []) for t in ("upstream", "nginx", "haproxy", "ringway")}))
json.dump(out, open(sys.argv[2], "w"), indent=1)
print(f"\nJSON: {sys.argv[2]}")
PY
