#!/usr/bin/env bash
# ringway-bench against wrk where the generator is the bottleneck: target pinned to CPU 0,
# generator to CPU 1, -t1, runs interleaved so drift hits both equally.
# Usage: bench-harness/bench-vs-wrk.sh [ROUNDS] [DURATION] [CONNECTIONS]
#   TARGET=nginx     target is nginx `return 200` (1 worker; needs nginx) instead of `ringway-bench serve`
#   PRIO=rt          target and generators run SCHED_FIFO (a shared machine's builds cannot preempt them)
#   CALLGRIND=1      instead: user-space instructions per request under callgrind, from a 3 s and
#                    an 8 s run of each tool (the difference cancels start-up and the final report)
#   BIN, BIN_B       ringway-bench binaries (BIN_B: a second build, run as a third tool)
set -uo pipefail
ROUNDS=${1:-3}
DUR=${2:-10s}
CONNS=${3:-64}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/ringway-bench}
BIN_B=${BIN_B:-}
PORT=${PORT:-18080}
URL="http://127.0.0.1:$PORT/"
work=$(mktemp -d)
prio=()
[ "${PRIO:-}" = rt ] && prio=(chrt -f 50)

if [ "${TARGET:-serve}" = nginx ]; then
  command -v nginx >/dev/null || { echo "missing nginx: apt-get install -y nginx" >&2; exit 1; }
  cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000;
  server { listen 127.0.0.1:$PORT; location / { return 200 "hello, world\n"; } } }
EOF
  "${prio[@]}" taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" &
else
  "${prio[@]}" taskset -c 0 "$BIN" serve --listen "127.0.0.1:$PORT" -t 1 2>"$work/serve.err" &
fi
SERVER=$!
trap 'kill $SERVER 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

tools=(wrk ringway-bench)
[ -n "$BIN_B" ] && tools+=(ringway-bench-B)
cmd() { # tool, duration
  case $1 in
    wrk) echo wrk -t1 -c"$CONNS" -d"$2" "$URL" ;;
    ringway-bench) echo "$BIN" -t1 -c"$CONNS" -d"$2" "$URL" ;;
    ringway-bench-B) echo "$BIN_B" -t1 -c"$CONNS" -d"$2" "$URL" ;;
  esac
}

if [ -n "${CALLGRIND:-}" ]; then
  echo "tool Ir_per_request (Ir(8s)-Ir(3s))/(requests(8s)-requests(3s))"
  for tool in "${tools[@]}"; do
    declare -A ir=() rq=()
    for d in 3 8; do
      # shellcheck disable=SC2046
      out=$(taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$work/cg.$tool.$d" \
        $(cmd "$tool" "${d}s") 2>&1)
      ir[$d]=$(echo "$out" | awk '/Collected :/ {print $4}')
      rq[$d]=$(echo "$out" | awk '/requests in/ {print $1}')
    done
    echo "$tool $(( (ir[8] - ir[3]) / (rq[8] - rq[3]) ))  (3s: ${rq[3]} req ${ir[3]} Ir; 8s: ${rq[8]} req ${ir[8]} Ir)"
  done
  exit 0
fi

run() { # tool; prints: tool rps requests cpu_s us_cpu_per_request
  local out reqs rps cpu
  # shellcheck disable=SC2046
  out=$( { /usr/bin/time -f "CPU %U %S" "${prio[@]}" taskset -c 1 $(cmd "$1" "$DUR"); } 2>&1 ) \
    || { echo "$1 FAILED: $out" >&2; return; }
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  cpu=$(echo "$out" | awk '/^CPU/ {print $2 + $3}')
  echo "$1 $rps $reqs $cpu $(awk -v c="$cpu" -v n="$reqs" 'BEGIN {printf "%.2f", c * 1e6 / n}')"
}

echo "tool rps requests cpu_s us_cpu_per_request"
for _ in $(seq "$ROUNDS"); do
  for tool in "${tools[@]}"; do run "$tool"; done
done
