#!/usr/bin/env bash
# TLS side-by-side: nginx and ringway terminating TLS with the same certificate in front of the
# same upstream, one worker each pinned on PROXY_CPU; load generators and upstream on LOAD_CPU.
# Measures keep-alive request throughput (wrk over https, 1 KiB and 64 KiB bodies) and the
# new-connection (full handshake) and resumed-handshake rates (`openssl s_time`, PAR parallel
# clients, one GET per connection). Installs nothing; needs wrk, nginx, openssl, taskset.
#
#   perf/tls-compare.sh                        # 10s runs, 64 connections
#   DURATION=20s CONNS=128 PAR=8 perf/tls-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
SECS=${DURATION%s}
CONNS=${CONNS:-64}
PAR=${PAR:-4}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
CERT=$PWD/config/certs/demo.pem
KEY=$PWD/config/certs/demo.key

for tool in wrk nginx openssl taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk nginx-light openssl util-linux" >&2; exit 1; }
done
cargo build --release -q -p ringway -p ringway-bench
RW=${CARGO_TARGET_DIR:-target}/release/ringway
BENCH=${CARGO_TARGET_DIR:-target}/release/ringway-bench
work=$(mktemp -d)
. perf/lib.sh


UP1=$(free_port); UP64=$(free_port); NGX=$(free_port); RWP=$(free_port)
taskset -c "$LOAD_CPU" "$BENCH" serve --listen "127.0.0.1:$UP1" -t 1 --body-size 1024 2>"$work/up1.log" &
pids+=($!)
taskset -c "$LOAD_CPU" "$BENCH" serve --listen "127.0.0.1:$UP64" -t 1 --body-size 65536 2>"$work/up64.log" &
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
  upstream up1 { server 127.0.0.1:$UP1; keepalive 512; }
  upstream up64 { server 127.0.0.1:$UP64; keepalive 512; }
  server {
    listen 127.0.0.1:$NGX ssl reuseport;
    ssl_certificate $CERT;
    ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets on;
    keepalive_requests 100000;
    location /64k { proxy_pass http://up64; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location / { proxy_pass http://up1; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)

cat >"$work/ringway.toml" <<TOML
[server]
workers = 1
cpu_affinity = [$PROXY_CPU]
keepalive_requests = 100000
[[server.listen]]
addr = "127.0.0.1:$RWP"
tls = true
certificates = [{ cert = "$CERT", key = "$KEY" }]
[[upstreams]]
name = "up1"
nodes = [{ addr = "127.0.0.1:$UP1" }]
keepalive_pool = { size = 512, requests = 100000 }
[[upstreams]]
name = "up64"
nodes = [{ addr = "127.0.0.1:$UP64" }]
keepalive_pool = { size = 512, requests = 100000 }
[[routes]]
name = "64k"
paths = ["/64k"]
upstream = "up64"
[[routes]]
name = "all"
paths = ["/*"]
upstream = "up1"
TOML
# error: rustls warns on every handshake whose SNI is an IP address (wrk sends one).
RINGWAY_LOG=error "$RW" run -c "$work/ringway.toml" &
pids+=($!)
for p in $UP1 $UP64 $NGX $RWP; do wait_port "$p"; done

# Keep-alive throughput: requests/s from wrk's summary line.
ka() { taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" "https://127.0.0.1:$1$2" | awk '/Requests\/sec/ {print $2}'; }
# Handshakes/s: PAR sequential s_time clients, one GET each connection; sums connections.
hs() {
  local port=$1; shift
  for i in $(seq "$PAR"); do
    taskset -c "$LOAD_CPU" openssl s_time -connect "127.0.0.1:$port" -www / -time "$SECS" "$@" >"$work/st.$i" 2>&1 &
  done
  wait  # runs inside $(...), so only this subshell's s_time clients are waited for
  cat "$work"/st.* | awk -v s="$SECS" '/connections in [0-9.]+s/ {n += $1} END {printf "%.0f", n / s}'
  rm -f "$work"/st.*
}

printf '| measurement | nginx | ringway |\n|---|---:|---:|\n'
printf '| keep-alive req/s, 1 KiB body, %s conns | %s | %s |\n' "$CONNS" "$(ka $NGX /1k)" "$(ka $RWP /1k)"
printf '| keep-alive req/s, 64 KiB body, %s conns | %s | %s |\n' "$CONNS" "$(ka $NGX /64k)" "$(ka $RWP /64k)"
printf '| full handshakes/s, TLS 1.3 (new conn + GET 1 KiB) | %s | %s |\n' "$(hs $NGX -new -tls1_3)" "$(hs $RWP -new -tls1_3)"
printf '| full handshakes/s, TLS 1.2 (new conn + GET 1 KiB) | %s | %s |\n' "$(hs $NGX -new -tls1_2)" "$(hs $RWP -new -tls1_2)"
printf '| resumed handshakes/s, TLS 1.2 tickets (+ GET 1 KiB) | %s | %s |\n' "$(hs $NGX -reuse -tls1_2)" "$(hs $RWP -reuse -tls1_2)"
