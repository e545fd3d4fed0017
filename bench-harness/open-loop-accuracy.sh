#!/usr/bin/env bash
# Open-loop schedule accuracy: `ringway-bench serve --delay` (a target with a known fixed delay)
# on CPU 0, the generator on CPU 1, one run per rate and --spin; prints how long after its due
# time each request left (schedule error percentiles, us) and how many sends found their
# connection still busy.
# Usage: bench-harness/open-loop-accuracy.sh [DURATION] [CONNECTIONS]
#   RATES="1000 10000 50000 100000"  SPINS="0 50us"  DELAY=100us
#   PRIO=rt   target and generator SCHED_FIFO (on a shared machine, so builds cannot preempt them;
#             the kernel still takes 5% back from a CPU that real-time work keeps 100% busy)
set -uo pipefail
DUR=${1:-5s}
CONNS=${2:-128}
RATES=${RATES:-1000 10000 50000 100000}
SPINS=${SPINS:-0 50us}
DELAY=${DELAY:-100us}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/ringway-bench}
PORT=${PORT:-18081}
prio=()
[ "${PRIO:-}" = rt ] && prio=(chrt -f 50)

"${prio[@]}" taskset -c 0 "$BIN" serve --listen "127.0.0.1:$PORT" -t 1 --delay "$DELAY" 2>/dev/null &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

echo "spin rate rps late_sends sched_p50 p90 p99 p99.9 max latency_p50 latency_p99"
for spin in $SPINS; do
  for rate in $RATES; do
    "${prio[@]}" taskset -c 1 "$BIN" -t1 -c"$CONNS" -R "$rate" --spin "$spin" -d "$DUR" --json \
      "http://127.0.0.1:$PORT/" | python3 -c '
import json, sys
v = json.load(sys.stdin); s = v["schedule_error_us"]; u = v["latency_uncorrected_us"]
print(sys.argv[1], sys.argv[2], "%.0f" % v["rps"], v["late_sends"],
      " ".join("%.1f" % s[k] for k in ("p50", "p90", "p99", "p99_9", "max")),
      "%.0f %.0f" % (u["p50"], u["p99"]))' "$spin" "$rate"
  done
done
