#!/usr/bin/env bash
# Instructions per request under callgrind: repeatable where wall clock on the shared box is not.
# One ringway shard under `valgrind --tool=callgrind`, origin `ringway-bench serve` (not profiled);
# per route: zero the counters, drive it with ringway-bench for a fixed time, dump, and divide the
# dump's total Ir by the requests the load generator completed (ringway-bench counts every
# request the server received). Startup and config load are excluded by the zeroing.
#
#   perf/callgrind.sh                 # routes: plain (no plugins) and auth (key-auth + limit-count)
#   SECS=5 CONNS=8 perf/callgrind.sh
#   ANNOTATE=1 perf/callgrind.sh      # also print the top functions per route (callgrind_annotate)
#   OUT=/tmp/cg perf/callgrind.sh     # keep the dumps there (default perf/out) to diff routes or builds
#   PEEK_AFTER=25ms perf/callgrind.sh # the upstream's keepalive_pool.peek_after (unpeeked reuse)
#   STRACE=1 perf/callgrind.sh        # no valgrind: syscalls per 1000 requests per route instead
#                                     # (strace -c -f on the gateway; io_uring ops are not syscalls,
#                                     # only io_uring_enter is)
#   NEWCONN=1 perf/callgrind.sh       # a new client connection per request (ringway-bench
#                                     # --no-keepalive, like compare.sh's newconn scenario); dumps
#                                     # named callgrind-ROUTE-newconn.out; works with STRACE=1
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-4}
CONNS=${CONNS:-8}
T=${CARGO_TARGET_DIR:-target}/release
STRACE=${STRACE:-0}
# Bench arguments and dump-name suffix of the new-connection mode.
ka=() sfx=""
[ "${NEWCONN:-0}" = 1 ] && ka=(--no-keepalive) sfx=-newconn
tools="valgrind callgrind_control callgrind_annotate"
[ "$STRACE" = 1 ] && tools=strace
for tool in $tools; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y valgrind strace" >&2; exit 1; }
done
work=$(mktemp -d)
. perf/lib.sh
GW=$(free_port)
start_origin
{ origin_gw_head "$GW"; cat <<TOML; } >"$work/gw.toml"
${PEEK_AFTER:+keepalive_pool = { peek_after = \"$PEEK_AFTER\" \}}
[[routes]]
name = "plain"
paths = ["/plain"]
upstream = "origin"
[[routes]]
name = "auth"
paths = ["/auth"]
upstream = "origin"
[routes.plugins.key-auth]
[routes.plugins.limit-count]
count = 1000000000
time_window = 60
key = "consumer"
[[consumers]]
username = "bench"
[consumers.plugins.key-auth]
key = "bench-key"
TOML
if [ "$STRACE" = 1 ]; then
  RINGWAY_LOG=warn "$T/ringway" run -c "$work/gw.toml" >"$work/gw.log" 2>&1 &
  VG=$!
  pids+=("$VG")
  wait_port "$GW" 30
else
  start_cg_gw "$work/gw.toml"
fi
# Warm the connection pool and allocator before counting.
"$T/ringway-bench" -t 1 -c "$CONNS" -d 2s "${ka[@]}" -H 'apikey: bench-key' "http://127.0.0.1:$GW/auth" >/dev/null 2>&1
"$T/ringway-bench" -t 1 -c "$CONNS" -d 2s "${ka[@]}" "http://127.0.0.1:$GW/plain" >/dev/null 2>&1
n=0
for route in plain auth; do
  n=$((n + 1))
  if [ "$STRACE" = 1 ]; then
    strace -c -f -p "$VG" -o "$work/strace.$route" 2>/dev/null &
    ST=$!
    sleep 0.5
  else
    callgrind_control -z "$VG" >/dev/null
  fi
  reqs=$("$T/ringway-bench" -t 1 -c "$CONNS" -d "${SECS}s" --json "${ka[@]}" -H 'apikey: bench-key' \
    "http://127.0.0.1:$GW/$route" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  if [ "$STRACE" = 1 ]; then
    kill -INT "$ST"; wait "$ST" 2>/dev/null || true
    echo "$route$sfx requests=$reqs syscalls per 1000 requests:"
    awk -v r="$reqs" '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "  %-16s %8.1f\n", $NF, $4 * 1000 / r }' \
      "$work/strace.$route" | sort -k2 -nr
    continue
  fi
  cg_dump "$route$sfx"
  f=$CG_FILE ir=$CG_IR
  echo "$route$sfx requests=$reqs Ir=$ir Ir/request=$((ir / reqs))"
  mkdir -p "${OUT:-perf/out}"
  cp "$f" "${OUT:-perf/out}/callgrind-$route$sfx.out"
  if [ "${ANNOTATE:-0}" = 1 ]; then
    # Self cost per function (inlined code counted where it was written), per request. The
    # thread-entry frames carry everything inclusively, so they are left out.
    callgrind_annotate --threshold=100 --inclusive=no --auto=no "$f" 2>/dev/null \
      | grep -E '^ *[0-9,]+ \(' | grep -vE 'PROGRAM TOTALS|clone\.S|start_thread|thread_start|vtable\.shim' \
      | sed -n '1,30p' \
      | awk -v r="$reqs" '{n=$1; gsub(",","",n); sub(/^[^)]*\) +/, ""); printf "%8.0f  %s\n", n/r, $0}'
  fi
done
