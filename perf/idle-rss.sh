#!/usr/bin/env bash
# Memory per idle keep-alive client connection: one ringway shard in front of `ringway-bench
# serve`; a Python client opens N connections, sends one small GET on each (so every
# per-connection buffer has been used once, as in real keep-alive traffic), reads the answer and
# then holds them all idle. RSS of the gateway (VmRSS) before the connections and with all of
# them idle gives KiB per connection.
#
#   perf/idle-rss.sh            # N=10000
#   N=2000 perf/idle-rss.sh
#   PROXY=nginx perf/idle-rss.sh   # the same measure for nginx (one process, keep-alive upstream)
#   TLS=1 N=2000 perf/idle-rss.sh  # TLS client connections (config/certs/demo.*), either proxy
#   CLOSE=1 perf/idle-rss.sh       # then closes them all and prints the RSS left 2 s later
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000}
T=${CARGO_TARGET_DIR:-target}/release
# Each process (gateway, client) holds N sockets; raise the soft limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d)
. perf/lib.sh
UP=$(free_port); GW=$(free_port)
"$T/ringway-bench" serve --listen "127.0.0.1:$UP" -t 1 --body-size 128 >/dev/null 2>&1 &
pids+=($!)
TLS=${TLS:-0}
CERT=$PWD/config/certs/demo.pem
KEY=$PWD/config/certs/demo.key
if [ "$TLS" = 1 ]; then
  listen="[[server.listen]]
addr = \"127.0.0.1:$GW\"
tls = true
certificates = [{ cert = \"$CERT\", key = \"$KEY\" }]"
  ngx_listen="listen 127.0.0.1:$GW ssl; ssl_certificate $CERT; ssl_certificate_key $KEY;"
else
  listen=""
  ngx_listen="listen 127.0.0.1:$GW;"
fi
cat >"$work/gw.toml" <<TOML
[server]
$( [ "$TLS" = 1 ] || echo "listen = [\"127.0.0.1:$GW\"]" )
workers = 1
max_connections = $((N * 2))
keepalive_timeout = "300s"
$listen
[[upstreams]]
name = "origin"
nodes = [{ addr = "127.0.0.1:$UP" }]
# As many idle upstream connections kept as nginx's \`keepalive 64\` below (the default is 320).
keepalive_pool = { size = 64 }
[[routes]]
name = "all"
paths = ["/*"]
upstream = "origin"
TOML
if [ "${PROXY:-ringway}" = nginx ]; then
  need nginx "apt-get install -y nginx-light"
  cat >"$work/nginx.conf" <<NGINX
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile $((N * 3));
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections $((N * 2 + 100)); }
http {
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:$UP; keepalive 64; }
  server {
    $ngx_listen
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
  nginx -p "$work" -c "$work/nginx.conf" >"$work/gw.log" 2>&1 &
else
  RINGWAY_LOG=warn "$T/ringway" run -c "$work/gw.toml" >"$work/gw.log" 2>&1 &
fi
GWPID=$!
pids+=($GWPID)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$GW") 2>/dev/null && break; sleep 0.05; done
sleep 0.3
rss() { awk '/VmRSS/ {print $2}' "/proc/$GWPID/status"; }
python3 - "$GW" "$N" "$GWPID" "$TLS" "${CLOSE:-0}" <<'PY'
import socket, ssl, sys, time, selectors
port, n, pid, tls, close = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", sys.argv[5] == "1"
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def connect():
    s = socket.create_connection(("127.0.0.1", port))
    return ctx.wrap_socket(s, server_hostname="localhost") if tls else s
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1])
# Warm-up: one connection, a few requests, so one-off allocations (pools, upstream conn) are in the base.
w = connect()
for _ in range(3):
    w.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 128:
        got += w.recv(65536)
time.sleep(0.3)
base = rss()
socks = []
req = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: idle-rss\r\n\r\n"
for i in range(n):
    s = connect()
    s.sendall(req)
    socks.append(s)
    if len(socks) % 500 == 0:
        for t in socks[-500:]:
            got = b""
            while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 128:
                d = t.recv(65536)
                if not d:
                    sys.exit("connection closed early")
                got += d
for t in socks[len(socks) - len(socks) % 500:]:
    t.recv(65536)
# 2 s: ringway's connections park 0.5 s after their last request and a shard quiet for 0.1 s
# then collects (at most every 0.25 s), ~0.75 s in all on a quiet box; 1 s could come before
# it on a loaded one. nginx waits as long.
time.sleep(2.0)
held = rss()
print(f"connections={n} rss_before={base} KiB rss_idle={held} KiB per_connection={(held - base) * 1024 / n / 1024:.2f} KiB")
# How often the idle shard is woken while it holds them (timeslices in /proc/<pid>/task/*/schedstat):
# every connection has its keep-alive timeout pending, which is what a ticking timer would poll.
import glob
def slices():
    out = {}
    for t in glob.glob(f"/proc/{pid}/task/*"):
        try:
            out[open(t + "/comm").read().strip()] = int(open(t + "/schedstat").read().split()[2])
        except OSError:
            pass
    return out
a = slices(); time.sleep(3.0); b = slices()
for name in sorted(k for k in b if k.startswith("ringway-shard") and k in a):
    print(f"{name} wakeups_per_s_idle={(b[name] - a[name]) / 3.0:.1f}")
if close:
    # What stays after every connection closed: memory held since the burst (allocator pages,
    # tables grown to the peak), not by the idle connections themselves.
    for t in socks:
        t.close()
    time.sleep(2.0)
    print(f"after_close rss={rss()} KiB per_connection={(rss() - base) * 1024 / n / 1024:.2f} KiB")
PY
