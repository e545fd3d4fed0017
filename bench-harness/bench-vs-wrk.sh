#!/usr/bin/env bash
# Compares ringway-bench with wrk on CPU cost per request against `ringway-bench serve`.
# Server pinned to CPU 0, generator to CPU 1; runs interleaved so drift hits both equally.
# Usage: bench-harness/bench-vs-wrk.sh [ROUNDS] [DURATION] [CONNECTIONS]
set -uo pipefail
ROUNDS=${1:-3}
DUR=${2:-10s}
CONNS=${3:-64}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/ringway-bench}
PORT=${PORT:-18080}
URL="http://127.0.0.1:$PORT/"

taskset -c 0 "$BIN" serve --listen "127.0.0.1:$PORT" -t 1 2>/tmp/rb-serve.err &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
sleep 0.5

run() { # name, command...; prints: name rps requests cpu_seconds
  local name=$1; shift
  local out
  out=$( { /usr/bin/time -f "CPU %U %S" "$@" ; } 2>&1 ) || { echo "$name FAILED: $out" >&2; return; }
  local reqs rps cpu
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  cpu=$(echo "$out" | awk '/^CPU/ {print $2 + $3}')
  echo "$name $rps $reqs $cpu"
}

echo "tool rps requests cpu_s"
for _ in $(seq "$ROUNDS"); do
  run wrk taskset -c 1 wrk -t1 -c"$CONNS" -d"$DUR" "$URL"
  run ringway-bench taskset -c 1 "$BIN" -t1 -c"$CONNS" -d"$DUR" "$URL"
done
