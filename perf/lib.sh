# Shared by the perf/ scripts (sourced after `work=$(mktemp -d)`): background processes go in
# `pids` and are stopped by PID on exit with `$work`; ports are ephemeral 127.0.0.1 ones.
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -z "${work:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
need() { command -v "$1" >/dev/null || { echo "missing $1: $2" >&2; exit 1; }; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; tail -n 5 "${work:-.}"/*.log >&2 2>/dev/null; exit 1; }
