#!/usr/bin/env bash
# Two ringway builds side by side (A/B) on compare.sh's get-64: wall clock for a change that
# callgrind cannot see (page sizes, TLB, kernel paths). One shard each, both pinned on
# PROXY_CPU (only the one under load runs), the same `ringway-bench serve` upstream and wrk
# -t1 -cCONNS on LOAD_CPU; rounds interleave A and B (A first in odd rounds, B in even ones) so
# drift hits both. Per run: req/s and the proxy's CPU per request (schedstat time of all its
# threads / requests wrk completed). 127.0.0.1 ephemeral ports, everything stopped by PID.
#
#   A=/tmp/ringway-old B=target/release/ringway perf/ab.sh
#   ROUNDS=6 DURATION=5s CONNS=256 PATH_=/s/x A=... B=... perf/ab.sh
#   PRIO=rt A=... B=... perf/ab.sh          # SCHED_FIFO for proxy, wrk and upstream (root)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${A:?A=path of the first ringway binary}" "${B:?B=path of the second ringway binary}"
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
T=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
. perf/lib.sh
need wrk "apt-get install wrk"
[ -x "$T/ringway-bench" ] || { echo "build it first: cargo build --release -p ringway-bench" >&2; exit 1; }
rt=()
[ "${PRIO:-}" = rt ] && rt=(chrt -f 50)

taskset -c "$LOAD_CPU" "${rt[@]}" "$T/ringway-bench" serve --listen 127.0.0.1:0 -t 1 --body-size 128 \
  >/dev/null 2>"$work/serve.log" &
pids+=($!)
ORIGIN=$(log_addr "$work/serve.log")

declare -A port pid
for k in A B; do
  port[$k]=$(free_port)
  { ringway_head "${port[$k]}" "$PROXY_CPU"
    ringway_upstream small "$ORIGIN"
    printf '[[routes]]\nname = "s"\npaths = ["/s/*"]\nupstream = "small"\n'; } >"$work/$k.toml"
  RINGWAY_LOG=warn "${rt[@]}" "${!k}" run -c "$work/$k.toml" 2>"$work/$k.log" &
  pid[$k]=$!
  pids+=($!)
  wait_port "${port[$k]}"
done

run() { # run KEY ROUND: one wrk run against KEY's gateway; prints a result line
  local before after out rps n
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:${port[$1]}${PATH_:-/s/x}" >/dev/null
  before=$(cpu_ns "${pid[$1]}")
  out=$(taskset -c "$LOAD_CPU" "${rt[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:${port[$1]}${PATH_:-/s/x}")
  after=$(cpu_ns "${pid[$1]}")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v k="$1" -v r="$2" -v rps="$rps" -v n="$n" -v ns=$((after - before)) \
    'BEGIN {printf "%s round %d: %.0f req/s, %.2f us CPU per request\n", k, r, rps, ns / n / 1000}'
}
: >"$work/runs"
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then order="A B"; else order="B A"; fi
  for k in $order; do run "$k" "$r" | tee -a "$work/runs"; done
done
echo "A=$A"
echo "B=$B"
median() { sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
for k in A B; do
  rps=$(awk -v k="$k" '$1 == k {gsub(",", "", $4); print $4}' "$work/runs" | median)
  cpu=$(awk -v k="$k" '$1 == k {print $6}' "$work/runs" | median)
  echo "$k median of $ROUNDS: $rps req/s, $cpu us CPU per request"
done
