#!/usr/bin/env bash
# Soak test (issue 9; not part of CI): mixed traffic through a release ringway for a while at
# about 70% of its measured capacity, with an upstream node restarting now and then, checking
# that there are no unexpected errors and that RSS and the fd count stay flat.
#
#   perf/soak.sh [DURATION_SECONDS]      # default 600 (10 min)
#
# Env: BIN (dir with release ringway and ringway-bench; default target/release),
#      LOAD (fraction of capacity, default 0.7), RESTART_EVERY (s, default 45).
# Traffic, all at once:
#   A  keep-alive, open loop at LOAD x capacity: GET small, POST 1 KiB, GET 256 KiB responses,
#      POST 256 KiB bodies (weights 6/2/1/1), to /small (2 nodes) and /large.
#   B  a new connection per request (Connection: close), GET /small.
#   C  client aborts: GET /slow (upstream answers after 200 ms) with a 50 ms client timeout,
#      so every request is abandoned mid-flight (these timeouts are the expected errors).
#   D  one /small node is killed and restarted on the same port every RESTART_EVERY seconds.
# Pass: A and B have no non-2xx statuses other than 502, and at most 16 502s plus socket
# errors per restart (requests cut on the killed node: non-idempotent POSTs are not retried); RSS after warm-up (the first
# quarter) varies by less than max(10%, 4 MiB); after the load stops and pools drain, the fd
# count is back to where it was before the load.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-600}
BIN=${BIN:-target/release}
LOAD=${LOAD:-0.7}
RESTART_EVERY=${RESTART_EVERY:-45}
GW_BIN=$BIN/ringway
BENCH=$BIN/ringway-bench
for b in "$GW_BIN" "$BENCH"; do
  [ -x "$b" ] || { echo "missing $b: cargo build --release -p ringway -p ringway-bench" >&2; exit 2; }
done

OUT=perf/out/soak-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
# Everything started goes in `pids`, stopped on exit (the logs stay in $OUT).
. perf/lib.sh

serve_node() { # name listen extra-args...
  local name=$1 listen=$2; shift 2
  "$BENCH" serve --listen "$listen" -t 1 "$@" >"$OUT/$name.out" 2>"$OUT/$name.log" &
  echo $!
}

S1_PID=$(serve_node small1 127.0.0.1:0 --body-size 128); pids+=("$S1_PID")
S2_PID=$(serve_node small2 127.0.0.1:0 --body-size 128); pids+=("$S2_PID")
L_PID=$(serve_node large 127.0.0.1:0 --body-size 262144); pids+=("$L_PID")
W_PID=$(serve_node slow 127.0.0.1:0 --body-size 64 --delay 200ms); pids+=("$W_PID")
S1=$(log_addr "$OUT/small1.log"); S2=$(log_addr "$OUT/small2.log")
L=$(log_addr "$OUT/large.log"); W=$(log_addr "$OUT/slow.log")

cat >"$OUT/ringway.toml" <<EOF
[server]
listen = ["127.0.0.1:0"]
workers = 2

[[upstreams]]
name = "small"
nodes = [{ addr = "$S1" }, { addr = "$S2" }]
max_fails = 3
fail_timeout = "2s"
keepalive_pool = { size = 64, idle_timeout = "3s", requests = 1000 }

[[upstreams]]
name = "large"
nodes = [{ addr = "$L" }]
keepalive_pool = { size = 64, idle_timeout = "3s", requests = 1000 }

[[upstreams]]
name = "slow"
nodes = [{ addr = "$W" }]
keepalive_pool = { size = 64, idle_timeout = "3s", requests = 1000 }

[[routes]]
name = "small"
paths = ["/small/*"]
upstream = "small"

[[routes]]
name = "large"
paths = ["/large/*"]
upstream = "large"

[[routes]]
name = "slow"
paths = ["/slow/*"]
upstream = "slow"
EOF
"$GW_BIN" run -c "$OUT/ringway.toml" 2>"$OUT/ringway.log" &
GW=$!
pids+=("$GW")
GWADDR=$(log_addr "$OUT/ringway.log")
BASE=http://$GWADDR

head -c 1024 /dev/zero | tr '\0' 's' >"$OUT/body-1k"
head -c 262144 /dev/zero | tr '\0' 'L' >"$OUT/body-256k"
cat >"$OUT/mix.toml" <<EOF
[[request]]
url = "$BASE/small/get"
weight = 6
[[request]]
method = "POST"
url = "$BASE/small/post"
body_file = "body-1k"
weight = 2
[[request]]
url = "$BASE/large/get"
weight = 1
[[request]]
method = "POST"
url = "$BASE/small/upload"
body_file = "body-256k"
weight = 1
EOF

rss() { awk '/VmRSS/ {print $2}' /proc/"$GW"/status; }
fds() { ls /proc/"$GW"/fd | wc -l; }

echo "measuring capacity (mix, closed loop, 10 s)..."
"$BENCH" -t 1 -c 32 -d 10s --warmup 2s --json --scenario "$OUT/mix.toml" >"$OUT/capacity.json"
CAP=$(python3 -c "import json;print(int(json.load(open('$OUT/capacity.json'))['rps']))")
# B's new connections cost several times a keep-alive request: keep its share small.
RATE_B=$(python3 -c "print(max(1, min(200, int($CAP * $LOAD * 0.05))))")
RATE_A=$(python3 -c "print(max(1, int($CAP * $LOAD - 4 * $RATE_B - 20)))")
echo "capacity ${CAP} req/s; A ${RATE_A} req/s keep-alive, B ${RATE_B} req/s new connections, C 20 req/s aborts"
sleep 5
FDS0=$(fds)
RSS0=$(rss)

"$BENCH" -t 1 -c 32 -R "$RATE_A" -d "${DURATION}s" --timeout 5s --json --scenario "$OUT/mix.toml" >"$OUT/a.json" 2>"$OUT/a.log" &
A=$!
"$BENCH" -t 1 -c 8 -R "$RATE_B" -d "${DURATION}s" --timeout 5s --no-keepalive --json "$BASE/small/new" >"$OUT/b.json" 2>"$OUT/b.log" &
B=$!
"$BENCH" -t 1 -c 4 -R 20 -d "${DURATION}s" --timeout 50ms --json "$BASE/slow/abort" >"$OUT/c.json" 2>"$OUT/c.log" &
C=$!
pids+=("$A" "$B" "$C")

(
  n=0
  while sleep "$RESTART_EVERY"; do
    kill "$(cat "$OUT/small1.pid" 2>/dev/null || echo "$S1_PID")" 2>/dev/null || true
    sleep 1
    "$BENCH" serve --listen "$S1" -t 1 --body-size 128 >>"$OUT/small1.out" 2>>"$OUT/small1.log" &
    echo $! >"$OUT/small1.pid"
    n=$((n + 1))
    echo "$n" >"$OUT/restarts"
  done
) &
RESTARTER=$!
pids+=("$RESTARTER")

echo "t_s,rss_kb,fds" >"$OUT/samples.csv"
START=$(date +%s)
while kill -0 "$A" 2>/dev/null || kill -0 "$B" 2>/dev/null || kill -0 "$C" 2>/dev/null; do
  echo "$(( $(date +%s) - START )),$(rss),$(fds)" >>"$OUT/samples.csv"
  sleep 5
done
kill "$RESTARTER" 2>/dev/null || true
wait "$A" "$B" "$C" || true
RESTARTS=$(cat "$OUT/restarts" 2>/dev/null || echo 0)
kill "$(cat "$OUT/small1.pid" 2>/dev/null || echo 0)" 2>/dev/null || true
# A restarted node is a new process: bring one back so the pool sweep has nothing pending.
sleep 6
FDS1=$(fds)
RSS1=$(rss)
kill -0 "$GW" || { echo "FAIL: ringway died"; exit 1; }

python3 - "$OUT" "$DURATION" "$RESTARTS" "$FDS0" "$FDS1" "$RSS0" "$RSS1" "$CAP" <<'EOF' | tee "$OUT/summary.txt"
import csv, json, sys
out, dur, restarts, fds0, fds1, rss0, rss1, cap = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), *map(int, sys.argv[4:])
ok = True
def load(n):
    return json.load(open(f"{out}/{n}.json"))
def non2xx(r):
    return sum(v for k, v in r["status_counts"].items() if not k.startswith("2"))
def sock(r):
    e = r["errors"]
    return e["connect"] + e["read"] + e["write"] + e["timeout"]
print(f"soak {dur:.0f} s, capacity {cap} req/s (mix, closed loop), {restarts} upstream restarts")
for name, desc in (("a", "A keep-alive mix"), ("b", "B new connection per request")):
    r = load(name)
    lat = r.get("latency_corrected_us") or r["latency_uncorrected_us"]
    print(f"{desc}: {r['requests']} requests, {r['rps']:.0f} req/s (target {r.get('rate')}), "
          f"p50 {lat['p50'] / 1000:.1f} ms, p99 {lat['p99'] / 1000:.1f} ms (corrected), "
          f"non-2xx {non2xx(r)}, socket errors {sock(r)} {r['errors']}")
    other = non2xx(r) - r["status_counts"].get("502", 0)
    cut = r["status_counts"].get("502", 0) + sock(r)
    if other or cut > 16 * max(restarts, 0):
        ok = False
        print(f"  FAIL: unexpected errors in {desc} (allowed: 502s and socket errors, at most 16 per restart)")
r = load("c")
print(f"C aborts: {r['requests']} requests, {r['errors']['timeout']} abandoned by the client (expected), statuses {r['status_counts']}")
rows = list(csv.DictReader(open(f"{out}/samples.csv")))
steady = [int(x["rss_kb"]) for x in rows if float(x["t_s"]) >= dur / 4]
fdss = [int(x["fds"]) for x in rows]
if steady:
    lo, hi = min(steady), max(steady)
    flat = hi - lo <= max(0.10 * (sum(steady) / len(steady)), 4096)
    print(f"RSS: {rss0} KiB before load; after warm-up {lo}..{hi} KiB over {len(steady)} samples ({'flat' if flat else 'NOT flat'}); {rss1} KiB after")
    ok &= flat
print(f"fds: {fds0} before load, {min(fdss)}..{max(fdss)} under load, {fds1} after the load stopped and pools drained")
if fds1 > fds0:
    ok = False
    print("  FAIL: fds did not return to their count before the load")
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
