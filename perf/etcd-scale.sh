#!/usr/bin/env bash
# Fleet configuration at scale: N routes in etcd (Debian's etcd on ephemeral ports, temp data
# dir), NODES ringway processes (workers = 2) following it. Reports start-up until each node
# serves, and the time from one route's write to etcd until every node serves it (median, p99
# over CHANGES), next to the same N routes from the config file (start-up, and a one-route change
# through the admin API). Usage: perf/etcd-scale.sh [routes] [nodes] [changes] [ringway binary]
# (needs a release build, etcd, python3).
set -euo pipefail
ROUTES=${1:-50000}
NODES=${2:-3}
CHANGES=${3:-50}
BIN=${4:-${CARGO_TARGET_DIR:-target}/release/ringway}
work=$(mktemp -d)
. "$(dirname "$0")/lib.sh"
need etcd "apt-get install etcd-server"
CP=$(free_port); PP=$(free_port)
DIR=$work
export ROUTES NODES CHANGES BIN DIR CP PP
python3 - <<'PY'
import atexit, base64, http.client, json, os, socket, statistics, subprocess, sys, time

routes, nodes, changes = int(os.environ["ROUTES"]), int(os.environ["NODES"]), int(os.environ["CHANGES"])
bin_, d, cp, pp = os.environ["BIN"], os.environ["DIR"], int(os.environ["CP"]), int(os.environ["PP"])
children = []
atexit.register(lambda: [c.kill() for c in children])

def start_etcd():
    c, p = f"http://127.0.0.1:{cp}", f"http://127.0.0.1:{pp}"
    e = subprocess.Popen(["etcd", "--name", "s", "--data-dir", f"{d}/etcd", "--listen-client-urls", c,
                          "--advertise-client-urls", c, "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                          "--initial-cluster", f"s={p}", "--quota-backend-bytes", "4294967296", "--log-level", "warn"],
                         stderr=open(f"{d}/etcd.log", "a"))
    children.append(e)
    return e

etcd_proc = start_etcd()
KEY = "bench-admin-key-0123456789"
b64 = lambda s: base64.b64encode(s.encode()).decode()
etcd = None

def call(path, body):
    global etcd
    for _ in range(200):
        try:
            if etcd is None:
                etcd = http.client.HTTPConnection("127.0.0.1", cp, timeout=30)
            etcd.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = etcd.getresponse(); data = r.read()
            if r.status == 200:
                return json.loads(data)
            raise RuntimeError(data)
        except (OSError, http.client.HTTPException):
            etcd = None; time.sleep(0.05)
    sys.exit("etcd did not answer")

def route(i, path=None):
    return json.dumps({"paths": [path or f"/r/{i}/{{id}}"], "upstream": "a"})

# Nothing listens on the node: a matched route answers 502, an unmatched path 404.
up = json.dumps({"nodes": [{"addr": "127.0.0.1:9", "weight": 1}]})
call("/v3/kv/put", {"key": b64("/ringway/upstreams/a"), "value": b64(up)})
t0 = time.time()
for s in range(0, routes, 128):  # etcd's default --max-txn-ops
    ops = [{"request_put": {"key": b64(f"/ringway/routes/r{i}"), "value": b64(route(i))}}
           for i in range(s, min(s + 128, routes))]
    call("/v3/kv/txn", {"success": ops})
print(f"loaded {routes} routes into etcd in {time.time() - t0:.1f} s")

def code(addr, path):
    try:
        c = http.client.HTTPConnection(*addr, timeout=5); c.request("GET", path)
        return c.getresponse().status
    except OSError:
        return 0

def start(tag, cfg):
    p = os.path.join(d, f"{tag}.toml"); open(p, "w").write(cfg)
    log = open(os.path.join(d, f"{tag}.log"), "w+")
    env = dict(os.environ, RINGWAY_LOG="info,ringway::etcd=debug")
    t = time.time()
    proc = subprocess.Popen([bin_, "run", "-c", p], stderr=log, stdout=subprocess.DEVNULL, env=env)
    children.append(proc)
    return proc, log, t

def serving(proc, log, t, probe="/r/1/x"):
    addr = None
    while time.time() - t < 300:
        if addr is None:
            log.seek(0)
            for line in log:
                if "listening on" in line and "admin" not in line and "status" not in line:
                    a = line.split("listening on ")[1].split()[0]; h, p = a.rsplit(":", 1); addr = (h, int(p)); break
        if addr and code(addr, probe) == 502:
            return addr, time.time() - t
        if proc.poll() is not None:
            log.seek(0); sys.exit("ringway exited:\n" + log.read())
        time.sleep(0.02)
    sys.exit("not serving in time")

def percentile(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, round((len(xs) - 1) * p))]

procs = []
etcd_cfg = ('[server]\nlisten = ["127.0.0.1:0"]\nworkers = 2\n'
            f'[config_source]\netcd = {{ endpoints = ["http://127.0.0.1:{cp}"], prefix = "/ringway" }}\n')
addrs = []
for n in range(nodes):
    proc, log, t = start(f"node{n}", etcd_cfg)
    procs.append(proc)
    addr, took = serving(proc, log, t)
    addrs.append(addr)
    # The watch starts once the saved configuration is written (whole, at start-up).
    while True:
        log.seek(0)
        if any("etcd: watching" in l for l in log):
            break
        time.sleep(0.01)
    print(f"etcd node {n}: start-up until serving {took:.2f} s, until watching {time.time() - t:.2f} s")
    log.seek(0)
    print("  " + next(l.strip() for l in log if "config from etcd" in l).split("] ", 1)[1])
lat = []
for k in range(changes):
    path = f"/moved/{k}/{{id}}"
    t = time.time()
    call("/v3/kv/put", {"key": b64(f"/ringway/routes/r{routes // 2}"), "value": b64(route(0, path))})
    for a in addrs:
        while code(a, f"/moved/{k}/1") != 502:
            time.sleep(0.0005)
    lat.append((time.time() - t) * 1000)
    for a in addrs:
        assert code(a, f"/r/{routes // 2}/1") == 404
slow = [(k, round(x)) for k, x in enumerate(lat) if x > 50]
if slow:
    print(f"  changes over 50 ms (index, ms): {slow}")
print(f"etcd: one route change until all {nodes} nodes serve it, over {changes}: "
      f"median {statistics.median(lat):.1f} ms, p99 {percentile(lat, 0.99):.1f} ms, max {max(lat):.1f} ms")
for n in range(nodes):
    txt = open(os.path.join(d, f"node{n}.log")).read().splitlines()
    applied = [l.split(" in ")[-1] for l in txt if "etcd: routes/" in l and "generation" in l]
    print(f"  node {n} server side (one route), last 3: {applied[-3:]}")

# etcd crashes and comes back: every node re-reads the prefix and applies the difference.
def synced(n):
    return [l for l in open(os.path.join(d, f"node{n}.log")) if "in sync at revision" in l]
before = [len(synced(n)) for n in range(nodes)]
etcd_proc.kill(); etcd_proc.wait()
time.sleep(1)
etcd_proc = start_etcd()
call("/v3/kv/put", {"key": b64(f"/ringway/routes/r{routes // 3}"), "value": b64(route(0, "/after-restart/{id}"))})
t = time.time()
for n, a in enumerate(addrs):
    while len(synced(n)) == before[n] or code(a, "/after-restart/1") != 502:
        time.sleep(0.01)
    print(f"  after etcd restart, node {n}: " + synced(n)[-1].strip().split("] ", 1)[1])
print(f"etcd restart: all {nodes} nodes in sync and serving the change made meanwhile {time.time() - t:.2f} s after etcd answered")
for p in procs:
    p.terminate(); p.wait()

# The same routes from the config file, the admin API on.
with open(os.path.join(d, "file.toml"), "w") as f:
    f.write(f'[server]\nlisten = ["127.0.0.1:0"]\nworkers = 2\n[admin]\nlisten = "127.0.0.1:0"\nkey = "{KEY}"\n')
    f.write('[[upstreams]]\nname = "a"\nnodes = [{ addr = "127.0.0.1:9", weight = 1 }]\n')
    for i in range(routes):
        f.write(f'[[routes]]\nname = "r{i}"\npaths = ["/r/{i}/{{id}}"]\nupstream = "a"\n')
proc, log, t = start("file", open(os.path.join(d, "file.toml")).read())
addr, took = serving(proc, log, t)
print(f"file: start-up until serving {took:.2f} s")
adm = None
while adm is None:
    log.seek(0)
    adm = next((l.split("admin listening on ")[1].split()[0] for l in log if "admin listening on" in l), None)
    time.sleep(0.02)
h, p = adm.rsplit(":", 1)
lat = []
for k in range(changes):
    t = time.time()
    c = http.client.HTTPConnection(h, int(p), timeout=30)
    c.request("PUT", f"/apisix/admin/routes/r{routes // 2}", route(0, f"/moved/{k}/{{id}}"),
              {"X-API-KEY": KEY, "Content-Type": "application/json"})
    assert c.getresponse().status == 200
    while code(addr, f"/moved/{k}/1") != 502:
        time.sleep(0.0005)
    lat.append((time.time() - t) * 1000)
print(f"file + admin API: one route change until served, over {changes}: "
      f"median {statistics.median(lat):.1f} ms, p99 {percentile(lat, 0.99):.1f} ms")
proc.terminate(); proc.wait()
PY
