#!/usr/bin/env bash
# TLS side-by-side: nginx and ringway terminating TLS with the same certificate (ECDSA P-256,
# config/certs/demo.pem) in front of the same upstream, one worker each pinned alone on
# PROXY_CPU; load generators and upstream on LOAD_CPU. Measures keep-alive request throughput
# (wrk over https, 1 KiB and 64 KiB bodies) and new-connection (full handshake) and resumed
# (TLS 1.2 and 1.3 tickets) handshake rates (`openssl s_time`, PAR parallel clients, one GET per
# connection). Beside each rate it gives the proxy's own CPU per operation: on-CPU time of all
# the proxy's threads (/proc/PID/task/*/schedstat) over the run divided by the requests or
# connections done. The client side of a handshake costs as much as the server side, so the
# rates are capped by the load core; CPU per handshake is the proxy's figure.
# RINGWAY_ALT=path/to/other/ringway adds a column for a second build (e.g. `--features
# tls-aws-lc`), measured in the same rounds. ROUNDS interleaves targets round by round; the
# summary gives medians and the ratio nginx/ringway of CPU per op (> 1: ringway cheaper).
# Installs nothing; needs wrk, nginx, openssl, taskset.
#
#   perf/tls-compare.sh                        # 10s runs, 64 connections, 1 round
#   DURATION=5s ROUNDS=3 RINGWAY_ALT=/tmp/rw-awslc perf/tls-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
SECS=${DURATION%s}
CONNS=${CONNS:-64}
PAR=${PAR:-4}
ROUNDS=${ROUNDS:-1}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
CERT=$PWD/config/certs/demo.pem
KEY=$PWD/config/certs/demo.key

for tool in wrk nginx openssl taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk nginx-light openssl util-linux" >&2; exit 1; }
done
# RINGWAY and BENCH name prebuilt binaries (then nothing is built).
[ -n "${RINGWAY:-}" ] && [ -n "${BENCH:-}" ] || cargo build --release -q -p ringway -p ringway-bench
RW=${RINGWAY:-${CARGO_TARGET_DIR:-target}/release/ringway}
BENCH=${BENCH:-${CARGO_TARGET_DIR:-target}/release/ringway-bench}
work=$(mktemp -d)
. perf/lib.sh


UP1=$(free_port); UP64=$(free_port); NGX=$(free_port); RWP=$(free_port); ALTP=$(free_port)
taskset -c "$LOAD_CPU" "$BENCH" serve --listen "127.0.0.1:$UP1" -t 1 --body-size 1024 2>"$work/up1.log" &
pids+=($!)
taskset -c "$LOAD_CPU" "$BENCH" serve --listen "127.0.0.1:$UP64" -t 1 --body-size 65536 2>"$work/up64.log" &
pids+=($!)

{ nginx_head "$PROXY_CPU"; cat <<NGINX; } >"$work/nginx.conf"
  upstream up1 { server 127.0.0.1:$UP1; keepalive 512; }
  upstream up64 { server 127.0.0.1:$UP64; keepalive 512; }
  server {
    listen 127.0.0.1:$NGX ssl reuseport;
    ssl_certificate $CERT;
    ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets on;
    keepalive_requests 100000;
    location /64k { proxy_pass http://up64; }
    location / { proxy_pass http://up1; }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)
NGX_MASTER=$!

rw_config() {
cat <<TOML
[server]
workers = 1
cpu_affinity = [$PROXY_CPU]
keepalive_requests = 100000
[[server.listen]]
addr = "127.0.0.1:$1"
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
}
# error: rustls warns on every handshake whose SNI is an IP address (wrk sends one).
rw_config "$RWP" >"$work/ringway.toml"
RINGWAY_LOG=error "$RW" run -c "$work/ringway.toml" &
pids+=($!)
RW_PID=$!
targets="nginx:$NGX ringway:$RWP"
if [ -n "${RINGWAY_ALT:-}" ]; then
  rw_config "$ALTP" >"$work/alt.toml"
  RINGWAY_LOG=error "$RINGWAY_ALT" run -c "$work/alt.toml" &
  pids+=($!)
  ALT_PID=$!
  targets="$targets alt:$ALTP"
else
  ALTP=$RWP
fi
for p in $UP1 $UP64 $NGX $RWP $ALTP; do wait_port "$p"; done
NGX_WORKER=$(pgrep -P "$NGX_MASTER" | head -n 1)
pid_of() { case $1 in nginx) echo "$NGX_WORKER" ;; ringway) echo "$RW_PID" ;; alt) echo "$ALT_PID" ;; esac; }
# (cpu_ns PID, from perf/lib.sh: nanoseconds on CPU of every thread of a process so far.)

# Keep-alive throughput: requests done (wrk's summary).
ka() { taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" "https://127.0.0.1:$1$2" | awk '/requests in/ {print $1}'; }
# Handshakes: PAR sequential s_time clients, one GET each connection; connections done.
hs() {
  local port=$1; shift
  for i in $(seq "$PAR"); do
    taskset -c "$LOAD_CPU" openssl s_time -connect "127.0.0.1:$port" -www / -time "$SECS" "$@" >"$work/st.$i" 2>&1 &
  done
  wait  # runs inside $(...), so only this subshell's s_time clients are waited for
  # -reuse prints "r" per resumed connection, "*" per full one: say if resumption failed.
  cat "$work"/st.* | awk '/^[r*]+$/ {r += gsub(/r/, ""); f += gsub(/\*/, "")} END {if (r + f) print "  resumed " r ", full " f >"/dev/stderr"}'
  cat "$work"/st.* | awk '/connections in [0-9.]+s/ {n += $1} END {printf "%.0f", n}'
  rm -f "$work"/st.*
}
# One measurement on one target: "ops cpu_ns" of the proxy over the run.
one() {
  local name=$1 port=$2 kind=$3 pid before n after
  pid=$(pid_of "$name")
  before=$(cpu_ns "$pid")
  case $kind in
    ka1) n=$(ka "$port" /1k) ;;
    ka64) n=$(ka "$port" /64k) ;;
    full13) n=$(hs "$port" -new -tls1_3) ;;
    full12) n=$(hs "$port" -new -tls1_2) ;;
    res12) n=$(hs "$port" -reuse -tls1_2) ;;
    res13) n=$(hs "$port" -reuse -tls1_3) ;;
  esac
  after=$(cpu_ns "$pid")
  echo "$n $((after - before))"
}

KINDS=${KINDS:-ka1 ka64 full13 full12 res12 res13}
raw=$work/raw
for r in $(seq "$ROUNDS"); do
  for k in $KINDS; do
    for t in $targets; do
      set -- $(one "${t%%:*}" "${t##*:}" "$k")
      echo "$r $k ${t%%:*} $1 $2" | tee -a "$raw" >&2
    done
  done
done
python3 - "$raw" "$SECS" "$CONNS" <<'PY'
import sys, statistics as st
raw, secs, conns = sys.argv[1], float(sys.argv[2]), sys.argv[3]
names = {"ka1": f"keep-alive 1 KiB, {conns} conns", "ka64": f"keep-alive 64 KiB, {conns} conns",
         "full13": "full handshake TLS 1.3 (+ GET 1 KiB)", "full12": "full handshake TLS 1.2 (+ GET 1 KiB)",
         "res12": "resumed TLS 1.2 ticket (+ GET 1 KiB)", "res13": "resumed TLS 1.3 ticket (+ GET 1 KiB)"}
d = {}
for line in open(raw):
    r, k, t, n, ns = line.split()
    n, ns = int(n), int(ns)
    d.setdefault((k, t), []).append((n / secs, ns / 1000 / max(n, 1)))
ts = [t for t in ("nginx", "ringway", "alt") if any(t == tt for (_, tt) in d)]
print("| measurement | " + " | ".join(f"{t} ops/s | {t} CPU us/op" for t in ts) + " | " +
      " | ".join(f"nginx/{t} CPU" for t in ts[1:]) + " |")
print("|---|" + "---:|" * (3 * len(ts) - 1))
for k in names:
    if (k, "nginx") not in d:
        continue
    med = {t: (st.median(x[0] for x in d[(k, t)]), st.median(x[1] for x in d[(k, t)])) for t in ts}
    cells = [f"{med[t][0]:,.0f} | {med[t][1]:.1f}" for t in ts]
    ratios = [f"{med['nginx'][1] / med[t][1]:.2f}x" if med[t][1] else "-" for t in ts[1:]]
    print(f"| {names[k]} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
print(f"(medians of {len(d[next(iter(d))])} rounds; per-round lines above on stderr: round kind target ops cpu_ns)")
PY
