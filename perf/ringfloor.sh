#!/usr/bin/env bash
# The kernel floor of a proxied small keep-alive GET and what each io_uring lever buys: the
# hand-written forwarder perf/ringcheck `ringfloor` (one process per lever set) interleaved with
# nginx (1 worker, keep-alive pool) and ringway (1 shard; also with io_uring_taskrun = "defer")
# in ONE run, as perf/compare.sh's get-64:
# proxies on PROXY_CPU, wrk -t1 -cCONNS and the same 128 B upstream on LOAD_CPU.
# Per target and round: req/s and the proxy's CPU per request (all its threads' schedstat time
# over the run / requests wrk completed; for "upstream" the upstream's own, driven directly; its
# user-mode part from /proc/PID/stat ticks); for the
# forwarders also io_uring_enter calls and CQEs per request. Everything on 127.0.0.1 ephemeral ports, stopped by PID.
#
#   perf/ringfloor.sh                               # 5 s runs, 3 rounds, the default lever sets
#   PRIO=rt perf/ringfloor.sh                       # every process SCHED_FIFO (a shared box's
#                                                   # builds cannot preempt them)
#   VARIANTS="base multishot,fixed" ROUNDS=5 DURATION=10s perf/ringfloor.sh
#   RATE=30000 perf/ringfloor.sh                   # open loop instead (ringway-bench -R): every
#                                                   # target offered the same load, so each has
#                                                   # the same idle time to batch over
#   BUILD=0 perf/ringfloor.sh                       # ringway from $CARGO_TARGET_DIR/release as is
# Lever names: see perf/ringcheck/src/bin/ringfloor/main.rs (base peek multishot link linkc pollfirst
# fixed defer). Output: a markdown table of medians and the per-round lines ($OUT/ringfloor.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
OUT=${OUT:-perf/out}
VARIANTS=${VARIANTS:-base peek multishot link link,linkc pollfirst fixed defer multishot,fixed link,linkc,pollfirst,fixed}
T=${CARGO_TARGET_DIR:-target}/release
RATE=${RATE:-}
prio=()
[ "${PRIO:-}" = rt ] && prio=(chrt -f 50)

work=$(mktemp -d)
. perf/lib.sh
need nginx "apt-get install -y nginx-light"
need wrk "apt-get install -y wrk"
need taskset "apt-get install -y util-linux"
[ "${BUILD:-1}" = 0 ] || cargo build --release -q -p ringway -p ringway-bench
(cd perf/ringcheck && cargo build --release -q --bin ringfloor)
RF=perf/ringcheck/target/release/ringfloor
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

"${prio[@]}" taskset -c "$LOAD_CPU" "$T/ringway-bench" serve --listen 127.0.0.1:0 -t 1 --body-size 128 >/dev/null 2>"$work/serve.log" &
UP_PID=$!; pids+=("$UP_PID")
UPS=$(log_addr "$work/serve.log")

NGX=$(free_port)
{ nginx_head "$PROXY_CPU"; cat <<NGINX; } >"$work/nginx.conf"
  upstream small { server $UPS; keepalive 512; }
  server {
    listen 127.0.0.1:$NGX reuseport;
    keepalive_requests 1000000;
    location /s/ { proxy_pass http://small; }
  }
}
NGINX
"${prio[@]}" nginx -c "$work/nginx.conf" -p "$work" &
NGX_PID=$!; pids+=("$NGX_PID")

# ringway twice: as configured by default (io_uring_taskrun = "coop", like the forwarders' ring)
# and with "defer" (DEFER_TASKRUN), the one ring lever ringway reaches today.
RW_PID=(); RW_PORT=()
for taskrun in coop defer; do
  port=$(free_port)
  { ringway_head "$port" "$PROXY_CPU"; echo "io_uring_taskrun = \"$taskrun\""; ringway_upstream small "$UPS"; cat <<TOML; } >"$work/ringway-$taskrun.toml"
[[routes]]
name = "s"
paths = ["/s/*"]
upstream = "small"
TOML
  RINGWAY_LOG=warn "${prio[@]}" "$T/ringway" run -c "$work/ringway-$taskrun.toml" >"$work/ringway-$taskrun.log" 2>&1 &
  RW_PID+=($!); RW_PORT+=("$port"); pids+=($!)
done

declare -A RF_PID RF_PORT
for v in $VARIANTS; do
  "${prio[@]}" taskset -c "$PROXY_CPU" "$RF" "$UPS" "$v" >"$work/rf-$v.log" 2>&1 &
  RF_PID[$v]=$!; pids+=($!)
  RF_PORT[$v]=$(log_addr "$work/rf-$v.log" ringfloor | cut -d: -f2)
done
wait_port "$NGX"; wait_port "${RW_PORT[0]}"; wait_port "${RW_PORT[1]}"

targets=(upstream nginx ringway ringway:defer)
for v in $VARIANTS; do targets+=("rf:$v"); done
port_of() { case $1 in upstream) echo "${UPS##*:}" ;; nginx) echo "$NGX" ;; ringway) echo "${RW_PORT[0]}" ;; ringway:defer) echo "${RW_PORT[1]}" ;; rf:*) echo "${RF_PORT[${1#rf:}]}" ;; esac; }
# The upstream-alone row measures the upstream itself: a server's recv + send per request, half a
# proxy's socket work.
pids_of() { case $1 in upstream) echo "$UP_PID" ;; nginx) echo "$NGX_PID" $(pgrep -P "$NGX_PID") ;; ringway) echo "${RW_PID[0]}" ;; ringway:defer) echo "${RW_PID[1]}" ;; rf:*) echo "${RF_PID[${1#rf:}]}" ;; esac; }
for t in "${targets[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(port_of "$t")/s/x")
  [ "$code" = 200 ] || { echo "$t answered $code" >&2; exit 1; }
done

# load PORT DURATION: one load run at the target; prints "requests req/s errors".
load() {
  local url="http://127.0.0.1:$1/s/x"
  if [ -z "$RATE" ]; then
    taskset -c "$LOAD_CPU" "${prio[@]}" wrk -t1 -c"$CONNS" -d"$2" "$url" >"$work/load.txt" 2>&1 || true
    awk '/requests in/ {n = $1} /Requests\/sec/ {r = $2} /Non-2xx/ {e += $NF}
      /Socket errors/ {gsub(",", ""); e += $4 + $6 + $8 + $10} END {print n + 0, r + 0, e + 0}' "$work/load.txt"
  else
    taskset -c "$LOAD_CPU" "${prio[@]}" "$T/ringway-bench" -t 1 -c "$CONNS" -d "$2" -R "$RATE" --json "$url" >"$work/load.txt" 2>/dev/null || true
    python3 -c 'import json, sys
try:
    j = json.load(open(sys.argv[1])); print(j["requests"], j["rps"], j["errors"]["total"])
except Exception:
    print(0, 0, -1)' "$work/load.txt"
  fi
}
# user_ticks PID...: user-mode CPU ticks of the processes so far (/proc/PID/stat utime, all threads).
user_ticks() { local p; for p in "$@"; do sed 's/.*) //' /proc/"$p"/stat 2>/dev/null; done | awk '{s += $12} END {print s + 0}'; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
# run TARGET ROUND [DURATION]: appends "target round req/s cpu_us/req enters/req cqes/req errors
# user_us/req".
run() {
  local t=$1 c0 c1 u0 u1 n rps errs ent=- cq=-
  c0=$(cpu_ns $(pids_of "$t")); u0=$(user_ticks $(pids_of "$t"))
  read -r n rps errs < <(load "$(port_of "$t")" "${3:-$DURATION}")
  c1=$(cpu_ns $(pids_of "$t")); u1=$(user_ticks $(pids_of "$t"))
  if [[ $t == rf:* ]]; then
    # The forwarder logs its counts once the load's connections have all closed.
    sleep 0.3
    read -r ent cq < <(grep 'ringfloor run:' "$work/rf-${t#rf:}.log" | tail -1 |
      awk -v n="$n" '{if (n) printf "%.3f %.2f\n", $6 / n, $8 / n; else print "0 0"}')
  fi
  [ "$2" = warmup ] && return 0
  echo "$t $2 $rps $(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN {printf "%.2f", n ? (b - a) / 1000 / n : 0}') $ent $cq $errs $(awk -v a="$u0" -v b="$u1" -v n="$n" -v k="$TICK_US" 'BEGIN {printf "%.2f", n ? (b - a) * k / n : 0}')" | tee -a "$work/raw.txt"
}

: >"$work/raw.txt"
if [ "$WARMUP" != 0 ]; then for t in "${targets[@]}"; do run "$t" warmup "$WARMUP"; done; fi
for r in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do run "$t" "$r"; done
done
cp "$work/raw.txt" "$OUT/ringfloor.txt"

echo
echo "machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ), load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$([ -z "$RATE" ] && echo wrk || echo "ringway-bench open loop at $RATE req/s") -t1 -c$CONNS, $DURATION x $ROUNDS rounds${PRIO:+, PRIO=$PRIO}; proxies on CPU $PROXY_CPU, wrk + upstream on CPU $LOAD_CPU; ringway $(git rev-parse --short HEAD), $(nginx -v 2>&1 | cut -d' ' -f3)"
python3 - "$work/raw.txt" <<'PY'
import sys, collections, statistics as st
rows = collections.defaultdict(dict)
order = []
for l in open(sys.argv[1]):
    t, r, rps, cpu, ent, cq, errs, user = l.split()
    if t not in rows: order.append(t)
    rows[t][r] = (float(rps), float(cpu), ent, cq, int(errs), float(user))
# Against the floor round by round (neighbours in time share the box's state), then the median.
base = rows.get("rf:base", {})
def delta(t):
    d = [rows[t][r][1] - base[r][1] for r in rows[t] if r in base and base[r][1]]
    p = [(rows[t][r][1] - base[r][1]) / base[r][1] * 100 for r in rows[t] if r in base and base[r][1]]
    return f"{st.median(d):+.2f} µs ({st.median(p):+.0f}%)" if d else ""
def col(t, i, f):
    v = [x[i] for x in rows[t].values() if x[i] != "-"]
    return f(st.median(float(x) for x in v)) if v else ""
print("| target | req/s | proxy CPU µs/req: median (min-max) | of which user space | vs floor rf:base, median of per-round differences | io_uring_enter/req | CQEs/req | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for t in order:
    cpus = [x[1] for x in rows[t].values()]
    cpu = f"{st.median(cpus):.2f} ({min(cpus):.2f}-{max(cpus):.2f})"
    d = "" if t in ("upstream", "rf:base") else delta(t)
    user = col(t, 5, lambda v: f"{v:.2f}")
    print(f"| {t} | {col(t, 0, lambda v: f'{v:,.0f}')} | {cpu} | {user} | {d} | {col(t, 2, lambda v: f'{v:.3f}')} | {col(t, 3, lambda v: f'{v:.2f}')} | {sum(x[4] for x in rows[t].values())} |")
PY
