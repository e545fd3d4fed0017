# Shared by the perf/ scripts (sourced after `work=$(mktemp -d)`): background processes go in
# `pids` and are stopped by PID on exit with `$work`; ports are ephemeral 127.0.0.1 ones.
pids=()
PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# TERM first (a gateway drains), KILL whatever is still there 10 s later: a gateway under
# valgrind can take minutes to drain, and a script must stop by itself.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 100); do
    alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break; sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true; [ -z "${work:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
need() { command -v "$1" >/dev/null || { echo "missing $1: $2" >&2; exit 1; }; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_port PORT [SECONDS]: waits (10 s unless told) until 127.0.0.1:PORT accepts connections.
wait_port() { local i; for ((i = 0; i < ${2:-10} * 20; i++)); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; tail -n 5 "${work:-.}"/*.log >&2 2>/dev/null; exit 1; }

# log_addr LOG [KIND] [SECONDS]: waits (10 s unless told) until LOG shows "listening on ADDR"
# (the proxy's line or ringway-bench serve's; with KIND, "KIND listening on", e.g. admin or
# status) and prints ADDR; fails with LOG's tail if it never does.
log_addr() {
  local pat='(^|\] )listening on [0-9.:]+' i
  [ -z "${2:-}" ] || pat="$2 listening on [0-9.:]+"
  for ((i = 0; i < ${3:-10} * 20; i++)); do
    if grep -qE "$pat" "$1" 2>/dev/null; then grep -oE "$pat" "$1" | head -1 | grep -oE '[0-9.]+:[0-9]+$'; return 0; fi
    sleep 0.05
  done
  echo "no \"$pat\" in $1" >&2; tail -n 5 "$1" >&2; exit 1
}
# start_serve [ARGS...]: `ringway-bench serve` (from $T) on CPU 0 at an ephemeral port, logging to
# $work/serve.log; sets SERVE_PID and ORIGIN (its host:port).
start_serve() {
  taskset -c 0 "$T/ringway-bench" serve --listen 127.0.0.1:0 -t 1 "$@" 2>"$work/serve.log" &
  SERVE_PID=$!
  pids+=("$SERVE_PID")
  ORIGIN=$(log_addr "$work/serve.log")
}
# start_origin: `ringway-bench serve` (128 B bodies, from $T, not pinned) on a free 127.0.0.1
# port, for the callgrind scripts; sets UP. origin_gw_head (below) points a gateway at it.
start_origin() {
  UP=$(free_port)
  "$T/ringway-bench" serve --listen "127.0.0.1:$UP" -t 1 --body-size 128 >/dev/null 2>&1 &
  pids+=($!)
}
# origin_gw_head PORT: the start of a one-shard gateway config on 127.0.0.1:PORT with the
# upstream "origin" at 127.0.0.1:$UP (start_origin); the script appends the upstream's other
# settings and its routes.
origin_gw_head() {
  printf '[server]\nlisten = ["127.0.0.1:%s"]\nworkers = 1\nkeepalive_requests = 1000000\n' "$1"
  printf '[[upstreams]]\nname = "origin"\nnodes = [{ addr = "127.0.0.1:%s" }]\n' "$UP"
}
# start_gw CONFIG [LOG]: `ringway run` (BIN, else from $T) in the background, logging to LOG
# ($work/gw.log); sets GW_PID. Read its addresses with log_addr.
start_gw() {
  "${BIN:-$T/ringway}" run -c "$1" >"${2:-$work/gw.log}" 2>&1 &
  GW_PID=$!
  pids+=("$GW_PID")
}
# start_redis PORT [CPU]: a throwaway redis-server (no persistence) on 127.0.0.1:PORT, pinned to
# CPU if given; returns once it accepts connections.
start_redis() {
  local pin=()
  [ -z "${2:-}" ] || pin=(taskset -c "$2")
  "${pin[@]}" redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis-$1.log" 2>&1 &
  pids+=($!)
  wait_port "$1"
}
# redis_evals PORT: script calls (EVAL/EVALSHA) the store has executed (total_commands_processed
# would also count the commands each script runs inside).
redis_evals() { redis-cli -p "$1" info commandstats | awk -F'[=,:]' '/^cmdstat_eval(sha)?:/ {n += $3} END {print n+0}'; }
# cpu_ns PID...: CPU time (ns, user + system) the processes' threads have run so far
# (/proc/PID/task/*/schedstat): per-thread precise where /proc/PID/stat counts 10 ms ticks.
cpu_ns() { local p; for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done | awk '{s += $1} END {printf "%.0f", s}'; }
# nginx_head [CPU]: the start of an nginx.conf for a proxy benchmark (one worker, pinned to CPU if
# given, in the foreground, pid and error log in $work, HTTP/1.1 keep-alive to upstreams), left
# open inside `http {`.
nginx_head() {
  echo "worker_processes 1;"
  [ -z "${1:-}" ] || echo "worker_cpu_affinity $(python3 -c "print(format(1<<$1,'b'))");"
  cat <<NGINX
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
NGINX
}
# ringway_head PORT CPU: a ringway config's [server] table for a proxy benchmark (one shard on CPU,
# listening on 127.0.0.1:PORT). ringway_upstream NAME ADDR: an upstream with a keep-alive pool.
ringway_head() {
  printf '[server]\nlisten = ["127.0.0.1:%s"]\nworkers = 1\ncpu_affinity = [%s]\nkeepalive_requests = 1000000\nmax_connections = 60000\n' "$1" "$2"
}
ringway_upstream() {
  printf '[[upstreams]]\nname = "%s"\nnodes = [{ addr = "%s" }]\nkeepalive_pool = { size = 512, requests = 1000000 }\n' "$1" "$2"
}
# wrk_rps ARGS...: wrk, one thread and 64 connections on CPU 0 for $SECS seconds; prints req/s.
wrk_rps() { taskset -c 0 wrk -t1 -c64 -d"${SECS}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
# limit_route NAME PATH [POLICY-LINES]: a route to upstream "origin" with a limit-count high
# enough never to trip, keyed by remote_addr; POLICY-LINES (printf %b escapes) pick the policy.
limit_route() {
  printf '[[routes]]\nname = "%s"\npaths = ["%s"]\nupstream = "origin"\n[routes.plugins.limit-count]\ncount = 1000000000\ntime_window = 60\nkey = "remote_addr"\n%b\n' "$1" "$2" "${3:-}"
}
# start_idp [CPU]: the test OpenID provider (tests/oidc, npm oidc-provider; needs `npm ci` there),
# pinned to CPU if given, logging to $work/idp.log; sets IDP to its base URL once it listens.
start_idp() {
  local pin=() i
  [ -z "${1:-}" ] || pin=(taskset -c "$1")
  (cd "$PERF_DIR/../tests/oidc" && exec "${pin[@]}" node start.mjs) >"$work/idp.log" 2>&1 &
  pids+=($!)
  for ((i = 0; i < 100; i++)); do grep -q "^listening" "$work/idp.log" && break; sleep 0.1; done
  IDP="http://127.0.0.1:$(awk '/^listening/ {print $2}' "$work/idp.log")"
}
# idp_token RESOURCE: an access token from $IDP (client credentials of the tests' client "gw").
idp_token() {
  curl -fsS -u gw:gw-secret -d grant_type=client_credentials -d scope=read -d "resource=$1" \
    "$IDP/token" | sed 's/.*"access_token":"\([^"]*\)".*/\1/'
}
# start_cg_gw CONFIG: `ringway run` (BIN, else from $T) under callgrind, dumps in $work/cg.*, log in
# $work/gw.log; sets VG and waits (30 s: valgrind starts slowly) for 127.0.0.1:$GW to open.
start_cg_gw() {
  RINGWAY_LOG=warn valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$work/cg.%p" \
    "${BIN:-$T/ringway}" run -c "$1" >"$work/gw.log" 2>&1 &
  VG=$!
  pids+=("$VG")
  wait_port "$GW" 30
}
# cg_dump NAME: dumps what $VG counted since `callgrind_control -z "$VG"` as NAME; sets CG_FILE
# (the dump) and CG_IR (its instruction total).
cg_dump() {
  callgrind_control -d "$1" "$VG" >/dev/null
  sleep 0.5
  CG_FILE=$(ls -t "$work"/cg.* | head -1)
  CG_IR=$(awk '/^(summary|totals):/ {print $2; exit}' "$CG_FILE")
}
