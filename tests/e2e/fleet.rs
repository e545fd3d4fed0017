//! Cluster-wide limits through a real Redis: two ringway processes sharing one limit (traffic
//! 1:1, 4:1, on one node, switching), a store that stops, stalls and returns, a three-master
//! Redis Cluster with a slot moved under load, and limit-req's rate split between nodes.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::harness::*;

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A gateway with one route "api" on "/*" carrying `plugins`, and a status listener.
pub(crate) fn node(o: &Origin, workers: usize, plugins: &str) -> Gateway {
    let cfg = format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
        server(&[("workers", &workers.to_string())]),
        upstream("backend", &[o.addr], ""),
        route("api", &["/*"], "backend", plugins)
    );
    Gateway::start(&cfg)
}

pub(crate) fn count_plugin(redis: &str, count: u64, window: u64, extra: &str) -> String {
    format!(
        "[routes.plugins.limit-count]\ncount = {count}\ntime_window = {window}\n\
         key = \"header:X-Tenant\"\nrejected_code = 429\npolicy = \"redis\"\n\
         redis = {{ addr = \"{redis}\", timeout = \"100ms\" }}\n{extra}"
    )
}

/// Sleeps until `ms` past a whole second of the wall clock, so a phase starts on a window.
fn align_to_second(ms: u64) {
    let now = wall_ms();
    let next = (now / 1000 + 1) * 1000 + ms;
    thread::sleep(Duration::from_millis(next - now));
}

/// Sends `rate(node, second)` requests per second to each node from one paced thread per node
/// for `secs` seconds (second 0 starts now); returns admitted requests per wall-clock second.
fn drive(
    gws: &[&Gateway],
    tenant: &str,
    secs: u64,
    rate: impl Fn(usize, u64) -> u64 + Send + Sync + 'static,
) -> std::collections::BTreeMap<u64, u64> {
    let rate = Arc::new(rate);
    let start = Instant::now();
    let start_wall = wall_ms();
    let threads: Vec<_> = gws
        .iter()
        .enumerate()
        .map(|(i, gw)| {
            let mut c = gw.client();
            let rate = rate.clone();
            let tenant = tenant.to_string();
            thread::spawn(move || {
                let mut admitted: Vec<u64> = Vec::new();
                let mut next = Duration::ZERO;
                loop {
                    let s = next.as_secs();
                    if s >= secs {
                        break;
                    }
                    let r = rate(i, s);
                    if r == 0 {
                        next = Duration::from_secs(s + 1);
                        continue;
                    }
                    if let Some(wait) = next.checked_sub(start.elapsed()) {
                        thread::sleep(wait);
                    }
                    let sent = start.elapsed();
                    let resp = get_with(&mut c, "/x", &format!("X-Tenant: {tenant}\r\n"));
                    let got = start.elapsed();
                    let at = start_wall + ((sent + got) / 2).as_millis() as u64;
                    match resp.status {
                        200 => admitted.push(at),
                        429 => admitted.push(at | TRIED),
                        s => panic!("unexpected status {s}"),
                    }
                    next += Duration::from_secs_f64(1.0 / r as f64);
                }
                admitted
            })
        })
        .collect();
    let mut per = std::collections::BTreeMap::new();
    let mut tried = std::collections::BTreeMap::new();
    for t in threads {
        for ms in t.join().expect("load thread") {
            *tried.entry((ms & !TRIED) / 1000).or_insert(0u64) += 1;
            if ms & TRIED == 0 {
                *per.entry(ms / 1000).or_insert(0) += 1;
            }
        }
    }
    eprintln!(
        "fleet drive: sent per second {:?}",
        tried.values().collect::<Vec<_>>()
    );
    per
}

/// Marks a refused request's time in `drive`'s list (wall-clock ms stay far below it).
const TRIED: u64 = 1 << 62;

/// Two processes, one Redis, limit 300/s on one key: every full window admits 300 within the
/// bound, whatever the split. Exact figures go to perf/RESULTS.md (printed with --nocapture).
#[test]
fn two_nodes_share_one_limit_within_five_percent() {
    let _cpu = cpu_lock();
    let redis = Redis::start();
    let o = Origin::named("o");
    let plugins = count_plugin(&redis.addr.to_string(), 300, 1, "");
    let a = node(&o, 2, &plugins);
    let b = node(&o, 1, &plugins);
    // 600 req/s offered in all: twice the limit.
    type Split = fn(usize, u64) -> u64;
    let switching: Split = |n, s| if (s % 2) as usize == n { 600 } else { 0 };
    // (name, split, where in the window traffic starts and switches)
    let cases: [(&str, Split, u64); 5] = [
        ("1:1", |_, _| 300, 0),
        ("4:1", |n, _| if n == 0 { 480 } else { 120 }, 0),
        ("one node", |n, _| if n == 0 { 600 } else { 0 }, 0),
        ("switching every second, at window starts", switching, 0),
        ("switching every second, mid-window", switching, 500),
    ];
    let mut report = Vec::new();
    for (i, (name, split, offset)) in cases.iter().enumerate() {
        let tenant = format!("t{i}");
        align_to_second(*offset);
        let per = drive(&[&a, &b], &tenant, 5, *split);
        // Full windows only: the first second (keys new everywhere) and the last are partial.
        let full: Vec<u64> = per
            .iter()
            .skip(1)
            .take(per.len().saturating_sub(2))
            .map(|(_, n)| *n)
            .collect();
        eprintln!("fleet accuracy {name}: admitted per full window {full:?} (limit 300)");
        assert!(full.len() >= 3, "{name}: too few full windows: {per:?}");
        report.push((name.to_string(), full));
    }
    for (name, full) in &report {
        for &n in full {
            assert!(
                (285..=315).contains(&n),
                "{name}: a full window admitted {n}, limit 300 ± 5% ({report:?})\nnode a:\n{}\nnode b:\n{}",
                a.logs(),
                b.logs()
            );
        }
    }
}

/// Waits, if need be, so that `secs` from now stay inside one hour-long window.
pub(crate) fn clear_of_hour_boundary(secs: u64) {
    let into = wall_ms() % 3_600_000;
    if into + secs * 1000 > 3_600_000 {
        thread::sleep(Duration::from_millis(3_600_000 - into + 100));
    }
}

pub(crate) fn fleet_metric(status: std::net::SocketAddr, name: &str) -> f64 {
    prometheus::value(&prometheus::scrape(status), name, &[])
}

/// Counts in the store for one limit-count route: (node field, count) of every node, found by
/// the route's namespace in the key.
fn stored_counts(redis: &Redis, route: &str) -> Vec<u64> {
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("ringway:lc:{{route \"{route}\"*"))
        .query(&mut c)
        .unwrap_or_default();
    let mut out = Vec::new();
    for k in keys {
        let h: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&k)
            .query(&mut c)
            .unwrap_or_default();
        for (_, v) in h {
            if let Some(n) = v.split(',').next().and_then(|n| n.parse().ok()) {
                out.push(n);
            }
        }
    }
    out
}

/// Sends to `path` and returns (status, how long the answer took).
pub(crate) fn timed(c: &mut Client, path: &str) -> (u16, Duration) {
    let t = Instant::now();
    let r = get_with(c, path, "X-Tenant: t\r\n");
    (r.status, t.elapsed())
}

/// Redis stalls (CLIENT PAUSE beyond the timeout), is killed, and comes back empty: requests
/// never wait for it; each route falls back per on_redis_error; one log line per state change;
/// the store state is in /metrics; the node's counts are back in the store soon after it returns.
#[test]
fn store_stalls_stops_and_returns_without_requests_waiting() {
    let _cpu = cpu_lock();
    let mut redis = Redis::start();
    let o = Origin::named("o");
    let r = redis.addr.to_string();
    let lc = |count: u64, on_err: &str| {
        count_plugin(&r, count, 3600, &format!("on_redis_error = \"{on_err}\"\n"))
    };
    let cfg = format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n{}{}{}{}",
        // One shard: a fresh key's first interval is split among shards, which would make
        // the exact counts below depend on which shard a connection landed on.
        server(&[("workers", "1")]),
        upstream("backend", &[o.addr], ""),
        route("local", &["/local"], "backend", &lc(5, "local")),
        route("allow", &["/allow"], "backend", &lc(2, "allow")),
        route("deny", &["/deny"], "backend", &lc(1000, "deny")),
    );
    clear_of_hour_boundary(30);
    let gw = Gateway::start(&cfg);
    let status = ops::listener(&gw.stderr, "status");
    let mut c = gw.client();
    for _ in 0..3 {
        assert_eq!(timed(&mut c, "/local").0, 200);
    }
    assert_eq!(timed(&mut c, "/allow").0, 200);
    assert_eq!(timed(&mut c, "/allow").0, 200);
    assert_eq!(timed(&mut c, "/deny").0, 200);
    assert!(
        wait_until(Duration::from_secs(5), || fleet_metric(
            status,
            "ringway_fleet_store_state"
        ) == 1.0),
        "store never reported up:\n{}",
        gw.logs()
    );
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        timed(&mut c, "/allow").0,
        429,
        "limit enforced while the store is up"
    );

    // 1. A stall: Redis holds every client for 2 s, far beyond the 100 ms timeout.
    let mut admin = redis.conn();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2000)
        .arg("ALL")
        .query(&mut admin)
        .expect("CLIENT PAUSE");
    let stalled = Instant::now();
    let mut slowest = Duration::ZERO;
    while stalled.elapsed() < Duration::from_millis(1500) {
        for p in ["/allow", "/deny"] {
            slowest = slowest.max(timed(&mut c, p).1);
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        slowest < Duration::from_millis(250),
        "a request waited {slowest:?} while the store stalled"
    );
    assert_eq!(fleet_metric(status, "ringway_fleet_store_state"), 2.0);
    assert_eq!(timed(&mut c, "/deny").0, 429, "deny fails closed");
    assert_eq!(timed(&mut c, "/allow").0, 200, "allow fails open");
    assert!(
        wait_until(Duration::from_secs(5), || fleet_metric(
            status,
            "ringway_fleet_store_state"
        ) == 1.0),
        "store not back after the stall:\n{}",
        gw.logs()
    );

    // 2. Killed: same fallbacks, still no waiting; local keeps its last share (5 in all).
    redis.stop();
    assert!(
        wait_until(Duration::from_secs(5), || fleet_metric(
            status,
            "ringway_fleet_store_state"
        ) == 2.0),
        "store never reported down:\n{}",
        gw.logs()
    );
    let mut slowest = Duration::ZERO;
    let mut local_ok = 0;
    for _ in 0..10 {
        let (s, t) = timed(&mut c, "/local");
        slowest = slowest.max(t);
        local_ok += usize::from(s == 200);
    }
    assert_eq!(
        local_ok, 2,
        "the node's last share: 5 in the window, 3 used"
    );
    assert_eq!(timed(&mut c, "/deny").0, 429);
    assert_eq!(timed(&mut c, "/allow").0, 200);
    // Retries go on (with backoff) for a while: still one log line for the change.
    thread::sleep(Duration::from_millis(1500));
    assert!(slowest < Duration::from_millis(250), "waited {slowest:?}");

    // 3. Back, empty: the node's count for the window is in the store again shortly after.
    redis.restart();
    let back = Instant::now();
    assert!(
        wait_until(Duration::from_secs(3), || stored_counts(&redis, "local")
            .contains(&5)),
        "counts not reconciled after the store returned: {:?}\n{}",
        stored_counts(&redis, "local"),
        gw.logs()
    );
    eprintln!(
        "fleet reconcile: counts back in the store {:?} after restart",
        back.elapsed()
    );
    assert_eq!(fleet_metric(status, "ringway_fleet_store_state"), 1.0);
    assert_eq!(timed(&mut c, "/local").0, 429, "still 5 in the window");
    assert_eq!(timed(&mut c, "/deny").0, 200, "deny lifted");

    let logs = gw.logs();
    let down = logs.matches("unreachable (").count();
    let up = logs.matches("reachable again").count();
    assert_eq!((down, up), (2, 2), "one line per state change:\n{logs}");
    assert_eq!(
        fleet_metric(status, "ringway_fleet_state_changes_total"),
        4.0
    );
    assert!(fleet_metric(status, "ringway_fleet_errors_total") >= 2.0);
    assert!(fleet_metric(status, "ringway_fleet_syncs_total") >= 1.0);
}

/// One request as tenant `name`: admitted (200) or refused (429), nothing else.
pub(crate) fn tenant_admitted(c: &mut Client, name: &str) -> bool {
    let r = get_with(c, "/x", &format!("X-Tenant: {name}\r\n"));
    match r.status {
        200 => true,
        429 => false,
        s => panic!("unexpected status {s}"),
    }
}

pub(crate) fn cmd<T: redis::FromRedisValue>(c: &mut redis::Connection, args: &[&str]) -> T {
    let mut k = redis::cmd(args[0]);
    for a in &args[1..] {
        k.arg(*a);
    }
    k.query(c).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
}

/// The newest timestamp among a limit hash's node fields (`count,alloc,demand,ts`).
fn newest_ts(c: &mut redis::Connection, key: &str) -> u64 {
    let h: Vec<(String, String)> = cmd(c, &["HGETALL", key]);
    h.iter()
        .filter_map(|(_, v)| v.rsplit(',').next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// A real three-master Redis Cluster, given to both nodes by one seed: limits on six keys
/// spread over the masters (one limit's keys on one slot by their hash tag), none admitted past
/// its count; then one limit's slot is migrated under load (ASK, then MOVED) and the nodes
/// keep exchanging with its new owner.
#[test]
fn redis_cluster_shares_limits_and_follows_a_moved_slot() {
    let _cpu = cpu_lock();
    let cluster = RedisCluster::start();
    let o = Origin::named("o");
    let plugins = format!(
        "[routes.plugins.limit-count]\ncount = 20\ntime_window = 3600\nkey = \"header:X-Tenant\"\n\
         rejected_code = 429\npolicy = \"redis-cluster\"\n\
         redis_cluster = {{ nodes = [\"{}\"], timeout = \"200ms\" }}\n",
        cluster.nodes[0]
    );
    clear_of_hour_boundary(60);
    let a = node(&o, 1, &plugins);
    let b = node(&o, 1, &plugins);
    let (mut ca, mut cb) = (a.client(), b.client());
    let tenants: Vec<String> = (0..6).map(|i| format!("tenant-{i}")).collect();
    let mut admitted = vec![0u32; tenants.len()];
    let round = |ca: &mut Client, cb: &mut Client, admitted: &mut Vec<u32>, n: usize| {
        for i in 0..n {
            for (t, name) in tenants.iter().enumerate() {
                let c = if (i + t) % 2 == 0 { &mut *ca } else { &mut *cb };
                admitted[t] += u32::from(tenant_admitted(c, name));
            }
            thread::sleep(Duration::from_millis(5));
        }
    };
    round(&mut ca, &mut cb, &mut admitted, 40);
    eprintln!("fleet cluster: admitted per tenant {admitted:?} (count 20, 40 sent each)");
    for (t, &n) in admitted.iter().enumerate() {
        assert!(
            (18..=20).contains(&n),
            "tenant {t}: admitted {n} of 20: {admitted:?}"
        );
    }
    // Where the limits live: every master answers KEYS for its own slots only.
    let mut owners = std::collections::BTreeMap::new();
    for &m in &cluster.nodes {
        let keys: Vec<String> = cmd(&mut cluster.conn(m), &["KEYS", "ringway:lc:*"]);
        for k in keys {
            assert!(
                k.starts_with("ringway:lc:{route \"api\"/limit-count:"),
                "{k}"
            );
            assert_eq!(
                cluster.owner_of(&k),
                m,
                "{k} is on the node that owns its slot"
            );
            owners.insert(k, m);
        }
    }
    assert_eq!(
        owners.len(),
        tenants.len(),
        "one hash per limit and window: {owners:?}"
    );
    let masters: std::collections::BTreeSet<_> = owners.values().collect();
    assert!(
        masters.len() >= 2,
        "six limits all on one master: {owners:?}"
    );

    // Move one limit's slot to another master while both nodes keep exchanging.
    let (key, &src) = owners.iter().next().expect("a stored limit");
    let dst = *cluster
        .nodes
        .iter()
        .find(|&&n| n != src)
        .expect("another master");
    let mut d = cluster.conn(dst);
    let moving = cluster.migrate(key, src, dst);
    // Nodes asking the old owner now get ASK for the migrated keys.
    thread::sleep(Duration::from_millis(200));
    cluster.finish(&moving);
    let moved_at = wall_ms();
    round(&mut ca, &mut cb, &mut admitted, 20);
    eprintln!("fleet cluster: after the move {admitted:?}");
    for (t, &n) in admitted.iter().enumerate() {
        assert!(
            n <= 20,
            "tenant {t}: admitted {n} past its count after the move"
        );
    }
    assert_eq!(cluster.owner_of(key), dst);
    assert!(
        wait_until(Duration::from_secs(3), || newest_ts(&mut d, key) > moved_at),
        "no exchange reached the slot's new owner:\n{}",
        a.logs()
    );
    // While a slot migrates, Redis answers a multi-key script whose keys are split between the
    // two owners (this window's hash moved, the previous window's absent) with TRYAGAIN; the
    // client retries past the timeout at most for that round: one fallback, then back.
    for gw in [&a, &b] {
        let logs = gw.logs();
        let (down, up) = (
            logs.matches("unreachable (").count(),
            logs.matches("reachable again").count(),
        );
        assert!(
            down <= 1 && up == down,
            "more than one failed round:\n{logs}"
        );
    }
}

/// limit-req with policy = "redis": two nodes at 3:1 demand admit the cluster's rate, not
/// each node's.
#[test]
fn limit_req_rate_is_split_between_nodes() {
    let _cpu = cpu_lock();
    let redis = Redis::start();
    let o = Origin::named("o");
    let plugins = format!(
        "[routes.plugins.limit-req]\nrate = 100.0\nburst = 5.0\nnodelay = true\n\
         key = \"header:X-Tenant\"\nrejected_code = 429\npolicy = \"redis\"\n\
         redis = {{ addr = \"{}\" }}\n",
        redis.addr
    );
    let a = node(&o, 1, &plugins);
    let b = node(&o, 1, &plugins);
    align_to_second(0);
    let per = drive(&[&a, &b], "req", 5, |n, _| if n == 0 { 240 } else { 80 });
    let full: Vec<u64> = per
        .values()
        .skip(1)
        .take(per.len().saturating_sub(2))
        .copied()
        .collect();
    eprintln!("fleet limit-req 3:1: admitted per second {full:?} (rate 100)");
    let mean = full.iter().sum::<u64>() as f64 / full.len().max(1) as f64;
    assert!(
        (90.0..=110.0).contains(&mean),
        "admitted {mean}/s for a cluster rate of 100 ({full:?})"
    );
}
