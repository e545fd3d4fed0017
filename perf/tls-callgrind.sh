#!/usr/bin/env bash
# Instructions (or syscalls) per keep-alive TLS request: perf/callgrind.sh's method on a TLS
# listener. One ringway shard terminating TLS (config/certs/demo.pem, ECDSA P-256) under
# `valgrind --tool=callgrind`, origin `ringway-bench serve` with a BODY-byte body (not profiled);
# wrk over https (its handshakes happen in the warm-up, before the counters are zeroed) drives
# CONNS keep-alive connections for SECS; the dump's total Ir is divided by wrk's request count.
#
#   perf/tls-callgrind.sh                 # 1 KiB body, 8 connections, 4 s
#   BODY=65536 perf/tls-callgrind.sh      # 64 KiB body
#   ANNOTATE=1 perf/tls-callgrind.sh      # also the top functions by self cost per request
#   STRACE=1 perf/tls-callgrind.sh        # no valgrind: syscalls per 1000 requests (strace -c -f)
#   RINGWAY=/path/to/ringway perf/tls-callgrind.sh   # another build (default target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-4}
CONNS=${CONNS:-8}
BODY=${BODY:-1024}
STRACE=${STRACE:-0}
T=${CARGO_TARGET_DIR:-target}/release
RW=${RINGWAY:-$T/ringway}
work=$(mktemp -d)
. perf/lib.sh
need wrk "apt-get install -y wrk"
if [ "$STRACE" = 1 ]; then need strace "apt-get install -y strace"; else
  for tool in valgrind callgrind_control callgrind_annotate; do need "$tool" "apt-get install -y valgrind"; done
fi
UP=$(free_port); GW=$(free_port)
"$T/ringway-bench" serve --listen "127.0.0.1:$UP" -t 1 --body-size "$BODY" >/dev/null 2>&1 &
pids+=($!)
cat >"$work/gw.toml" <<TOML
[server]
workers = 1
keepalive_requests = 1000000
[[server.listen]]
addr = "127.0.0.1:$GW"
tls = true
certificates = [{ cert = "$PWD/config/certs/demo.pem", key = "$PWD/config/certs/demo.key" }]
[[upstreams]]
name = "origin"
nodes = [{ addr = "127.0.0.1:$UP" }]
[[routes]]
name = "plain"
paths = ["/*"]
upstream = "origin"
TOML
# error: rustls warns on every handshake whose SNI is an IP address (wrk sends one).
if [ "$STRACE" = 1 ]; then
  RINGWAY_LOG=error "$RW" run -c "$work/gw.toml" >"$work/gw.log" 2>&1 &
else
  RINGWAY_LOG=error valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$work/cg.%p" \
    "$RW" run -c "$work/gw.toml" >"$work/gw.log" 2>&1 &
fi
VG=$!
pids+=($VG)
for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$GW") 2>/dev/null && break; sleep 0.1; done
# Warm the pool and allocator; the measured run's handshakes are then the only ones counted,
# CONNS of them (wrk reconnects nothing on keep-alive): a few thousand Ir per request at most.
wrk -t1 -c"$CONNS" -d2s "https://127.0.0.1:$GW/" >/dev/null 2>&1
if [ "$STRACE" = 1 ]; then
  strace -c -f -p "$VG" -o "$work/strace" 2>/dev/null &
  ST=$!
  sleep 0.5
else
  callgrind_control -z "$VG" >/dev/null
fi
reqs=$(wrk -t1 -c"$CONNS" -d"${SECS}s" "https://127.0.0.1:$GW/" | awk '/requests in/ {print $1}')
if [ "$STRACE" = 1 ]; then
  kill -INT "$ST"; wait "$ST" 2>/dev/null || true
  echo "tls body=$BODY requests=$reqs syscalls per 1000 requests:"
  awk -v r="$reqs" '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "  %-16s %8.1f\n", $NF, $4 * 1000 / r }' \
    "$work/strace" | sort -k2 -nr
  exit 0
fi
# Stop the dump's process outright: a graceful drain under valgrind takes long.
stop_vg() { kill -KILL "$VG" 2>/dev/null || true; }
callgrind_control -d tls "$VG" >/dev/null
sleep 0.5
f=$(ls -t "$work"/cg.* | head -1)
ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$f")
echo "tls body=$BODY requests=$reqs Ir=$ir Ir/request=$((ir / reqs))"
mkdir -p "${OUT:-perf/out}"
cp "$f" "${OUT:-perf/out}/callgrind-tls-$BODY.out"
stop_vg
if [ "${ANNOTATE:-0}" = 1 ]; then
  callgrind_annotate --threshold=100 --inclusive=no --auto=no "$f" 2>/dev/null \
    | grep -E '^ *[0-9,]+ \(' | grep -vE 'PROGRAM TOTALS|clone\.S|start_thread|thread_start|vtable\.shim' \
    | sed -n '1,40p' \
    | awk -v r="$reqs" '{n=$1; gsub(",","",n); sub(/^[^)]*\) +/, ""); printf "%8.0f  %s\n", n/r, $0}'
fi
