#!/usr/bin/env bash
# Instructions, syscalls or ring submissions per keep-alive TLS request: perf/callgrind.sh's
# method on a TLS listener. One ringway shard terminating TLS (config/certs/demo.pem, ECDSA P-256),
# origin `ringway-bench serve` with a BODY-byte body (not measured); wrk over https drives CONNS
# keep-alive connections for SECS after a 2 s warm-up, and the count is divided by wrk's requests.
# Each wrk run opens CONNS new connections, so its count holds CONNS full handshakes too
# (~1.3M Ir each): callgrind mode therefore counts two runs, SECS and 2 x SECS long, and reports
# (Ir of the long - Ir of the short) / (requests of the long - requests of the short), in which
# the handshakes cancel (also the plain totals of the long run, handshakes included).
#
#   perf/tls-callgrind.sh                 # callgrind: Ir per request, 1 KiB body, 8 conns, 4 s
#   BODY=65536 perf/tls-callgrind.sh      # 64 KiB body
#   ANNOTATE=1 perf/tls-callgrind.sh      # also the top functions by self cost per request
#   MODE=strace perf/tls-callgrind.sh     # no valgrind: syscalls per 1000 requests (strace -c -f)
#   MODE=ops perf/tls-callgrind.sh        # no valgrind: io_uring submissions per request (perf stat)
#   RINGWAY=/path/to/ringway perf/tls-callgrind.sh   # another build (default target/release)
#   OUT=/tmp/cg perf/tls-callgrind.sh     # keep the dump there (default perf/out), e.g. for
#                                         # perf/callgrind-diff.py between two builds
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-4}
CONNS=${CONNS:-8}
BODY=${BODY:-1024}
MODE=${MODE:-callgrind}
T=${CARGO_TARGET_DIR:-target}/release
RW=${RINGWAY:-$T/ringway}
work=$(mktemp -d)
. perf/lib.sh
need wrk "apt-get install -y wrk"
case $MODE in
  strace) need strace "apt-get install -y strace" ;;
  ops) need perf "apt-get install -y linux-perf" ;;
  callgrind) for tool in valgrind callgrind_control callgrind_annotate; do need "$tool" "apt-get install -y valgrind"; done ;;
  *) echo "MODE is callgrind, strace or ops" >&2; exit 1 ;;
esac
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
if [ "$MODE" = callgrind ]; then
  RINGWAY_LOG=error valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$work/cg.%p" \
    "$RW" run -c "$work/gw.toml" >"$work/gw.log" 2>&1 &
else
  RINGWAY_LOG=error "$RW" run -c "$work/gw.toml" >"$work/gw.log" 2>&1 &
fi
GWPID=$!
pids+=($GWPID)
for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$GW") 2>/dev/null && break; sleep 0.1; done
# Warm the upstream pool and the allocator before counting.
wrk -t1 -c"$CONNS" -d2s "https://127.0.0.1:$GW/" >/dev/null 2>&1
case $MODE in
  strace) strace -c -f -p "$GWPID" -o "$work/count" 2>/dev/null & ST=$!; sleep 0.5 ;;
  ops) perf stat -e io_uring:io_uring_submit_req -p "$GWPID" -x, -o "$work/count" & ST=$!; sleep 0.5 ;;
  callgrind) callgrind_control -z "$GWPID" >/dev/null ;;
esac
reqs=$(wrk -t1 -c"$CONNS" -d"${SECS}s" "https://127.0.0.1:$GW/" | awk '/requests in/ {print $1}')
reqs1=$reqs
case $MODE in
  strace)
    kill -INT "$ST"; wait "$ST" 2>/dev/null || true
    echo "tls body=$BODY requests=$reqs syscalls per 1000 requests:"
    awk -v r="$reqs" '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "  %-16s %8.1f\n", $NF, $4 * 1000 / r }' \
      "$work/count" | sort -k2 -nr
    exit 0 ;;
  ops)
    kill -INT "$ST"; wait "$ST" 2>/dev/null || true
    awk -F, -v r="$reqs" -v b="$BODY" '/io_uring_submit_req/ {
      printf "tls body=%s requests=%s io_uring submissions per request: %.2f\n", b, r, $1 / r }' "$work/count"
    exit 0 ;;
esac
callgrind_control -d short "$GWPID" >/dev/null
sleep 0.5
ir_of() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }
ir1=$(ir_of "$(ls -t "$work"/cg.* | head -1)")
callgrind_control -z "$GWPID" >/dev/null
reqs=$(wrk -t1 -c"$CONNS" -d"$((2 * SECS))s" "https://127.0.0.1:$GW/" | awk '/requests in/ {print $1}')
callgrind_control -d long "$GWPID" >/dev/null
sleep 0.5
f=$(ls -t "$work"/cg.* | head -1)
ir=$(ir_of "$f")
echo "tls body=$BODY requests=$reqs Ir=$ir Ir/request=$((ir / reqs)) (handshakes included);" \
  "without handshakes: $(((ir - ir1) / (reqs - reqs1))) Ir/request"
mkdir -p "${OUT:-perf/out}"
cp "$f" "${OUT:-perf/out}/callgrind-tls-$BODY.out"
# Stopped outright: a graceful drain under valgrind takes minutes.
kill -KILL "$GWPID" 2>/dev/null || true
if [ "${ANNOTATE:-0}" = 1 ]; then
  callgrind_annotate --threshold=100 --inclusive=no --auto=no "$f" 2>/dev/null \
    | grep -E '^ *[0-9,]+ \(' | grep -vE 'PROGRAM TOTALS|clone\.S|start_thread|thread_start|vtable\.shim' \
    | sed -n '1,40p' \
    | awk -v r="$reqs" '{n=$1; gsub(",","",n); sub(/^[^)]*\) +/, ""); printf "%8.0f  %s\n", n/r, $0}'
fi
