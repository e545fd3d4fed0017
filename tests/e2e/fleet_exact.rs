//! limit-count's exact mode (`sync_interval = "0"`): two ringway processes and one real Redis
//! admit exactly `count` in a window, and a store that is down gives each route its
//! `on_redis_error` fallback without requests waiting past the timeout.

use std::thread;
use std::time::Duration;

use crate::fleet::{
    clear_of_hour_boundary, cmd, count_plugin, fleet_metric, node, tenant_admitted, timed,
};
use crate::harness::*;

/// Four clients (two per node, two shards each) send 160 requests on one key, limit 50 in an
/// hour-long window: exactly 50 are admitted across both nodes, and the store counted all 160.
#[test]
fn exact_mode_admits_exactly_count_across_two_nodes() {
    let _cpu = cpu_lock();
    let redis = Redis::start();
    let o = Origin::named("o");
    // A generous timeout and fail-closed: on a loaded machine a late answer must not turn into
    // a local decision, which would make the count inexact.
    let plugins = format!(
        "[routes.plugins.limit-count]\ncount = 50\ntime_window = 3600\n\
         key = \"header:X-Tenant\"\nrejected_code = 429\npolicy = \"redis\"\n\
         redis = {{ addr = \"{}\", timeout = \"3s\" }}\nsync_interval = \"0\"\n\
         on_redis_error = \"deny\"\n",
        redis.addr
    );
    clear_of_hour_boundary(60);
    let a = node(&o, 2, &plugins);
    let b = node(&o, 2, &plugins);
    let clients: Vec<_> = [&a, &a, &b, &b]
        .iter()
        .map(|gw| {
            let mut c = gw.client();
            thread::spawn(move || {
                let mut ok = 0u64;
                for _ in 0..40 {
                    let r = get_with(&mut c, "/x", "X-Tenant: t\r\n");
                    match r.status {
                        200 => ok += 1,
                        429 => {}
                        s => panic!("unexpected status {s}"),
                    }
                }
                ok
            })
        })
        .collect();
    let admitted: u64 = clients.into_iter().map(|t| t.join().expect("client")).sum();
    assert_eq!(admitted, 50, "exactly the limit across both nodes");
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("ringway:lx:*")
        .query(&mut c)
        .expect("KEYS");
    assert_eq!(keys.len(), 1, "one window key: {keys:?}");
    let n: u64 = redis::cmd("GET").arg(&keys[0]).query(&mut c).expect("GET");
    assert_eq!(n, 160, "one count per request");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query(&mut c)
        .expect("PTTL");
    assert!(
        (1..=3_601_000).contains(&ttl),
        "expires after its window: {ttl}"
    );
    // One more on node a: refused, with the quota headers.
    let r = get_with(&mut a.client(), "/x", "X-Tenant: t\r\n");
    assert_eq!(r.status, 429);
}

/// Redis stalled, then killed: each route falls back per on_redis_error (local: the node enforces the count
/// on its own; allow; deny) at once, with one log line for the change and the store state in
/// /metrics; when Redis returns, counting there resumes.
#[test]
fn exact_mode_falls_back_when_the_store_is_down() {
    let _cpu = cpu_lock();
    let mut redis = Redis::start();
    let o = Origin::named("o");
    let r = redis.addr.to_string();
    let lc = |count: u64, on_err: &str| {
        count_plugin(
            &r,
            count,
            3600,
            &format!("sync_interval = \"0\"\non_redis_error = \"{on_err}\"\n"),
        )
    };
    let cfg = format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n{}{}{}{}",
        server(&[("workers", "1")]),
        upstream("backend", &[o.addr], ""),
        route("local", &["/local"], "backend", &lc(3, "local")),
        route("allow", &["/allow"], "backend", &lc(1, "allow")),
        route("deny", &["/deny"], "backend", &lc(1000, "deny")),
    );
    clear_of_hour_boundary(30);
    let gw = Gateway::start(&cfg);
    let status = ops::listener(&gw.stderr, "status");
    let mut c = gw.client();
    assert_eq!(timed(&mut c, "/allow").0, 200);
    assert_eq!(timed(&mut c, "/allow").0, 429, "counted in the store");
    assert_eq!(timed(&mut c, "/deny").0, 200);
    assert_eq!(fleet_metric(status, "ringway_fleet_store_state"), 1.0);

    // A stall: Redis holds every client for 3 s, far beyond the 100 ms timeout. (The bounds
    // below are loose for a loaded CI machine: well under the stall, not near the timeout.)
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query(&mut redis.conn())
        .expect("CLIENT PAUSE");
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let (s, t) = timed(&mut c, "/deny");
        slowest = slowest.max(t);
        assert_eq!(s, 429, "deny fails closed while the store stalls");
    }
    assert!(
        slowest < Duration::from_millis(1000),
        "a request waited {slowest:?} while the store stalled"
    );
    assert!(
        wait_until(Duration::from_secs(5), || timed(&mut c, "/deny").0 == 200),
        "deny not lifted after the stall:\n{}",
        gw.logs()
    );

    redis.stop();
    let mut slowest = Duration::ZERO;
    let mut local_ok = 0;
    for _ in 0..6 {
        let (s, t) = timed(&mut c, "/local");
        slowest = slowest.max(t);
        local_ok += usize::from(s == 200);
        let (s, t) = timed(&mut c, "/allow");
        slowest = slowest.max(t);
        assert_eq!(s, 200, "allow fails open");
        let (s, t) = timed(&mut c, "/deny");
        slowest = slowest.max(t);
        assert_eq!(s, 429, "deny fails closed");
    }
    assert_eq!(local_ok, 3, "local: the node enforces the count on its own");
    assert!(
        slowest < Duration::from_millis(1000),
        "a request waited {slowest:?} with the store down"
    );
    assert_eq!(fleet_metric(status, "ringway_fleet_store_state"), 2.0);

    redis.restart();
    assert!(
        wait_until(Duration::from_secs(5), || timed(&mut c, "/deny").0 == 200),
        "deny not lifted after the store returned:\n{}",
        gw.logs()
    );
    assert_eq!(fleet_metric(status, "ringway_fleet_store_state"), 1.0);
    let logs = gw.logs();
    assert_eq!(
        logs.matches("unreachable (").count(),
        2,
        "one line per change:\n{logs}"
    );
    assert!(fleet_metric(status, "ringway_fleet_errors_total") >= 1.0);
    assert!(fleet_metric(status, "ringway_fleet_state_changes_total") >= 2.0);
}

/// A store with a password and a database: each shard's client logs in (AUTH) and SELECTs the
/// configured database on every connection, so the counts land there; a wrong password is a
/// failed login, which falls back per on_redis_error.
#[test]
fn exact_mode_logs_in_and_selects_the_database() {
    let _cpu = cpu_lock();
    let redis = Redis::start();
    let mut admin = redis.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query(&mut admin)
        .expect("CONFIG SET requirepass");
    let o = Origin::named("o");
    let lc = |password: &str| {
        format!(
            "[routes.plugins.limit-count]\ncount = 2\ntime_window = 3600\nrejected_code = 429\n\
             policy = \"redis\"\nsync_interval = \"0\"\non_redis_error = \"allow\"\n\
             redis = {{ addr = \"{}\", password = \"{password}\", database = 2, timeout = \"3s\" }}\n",
            redis.addr
        )
    };
    let cfg = format!(
        "{}{}{}{}",
        server(&[("workers", "2")]),
        upstream("backend", &[o.addr], ""),
        route("good", &["/good"], "backend", &lc("s3cret")),
        route("bad", &["/bad"], "backend", &lc("wrong")),
    );
    clear_of_hour_boundary(30);
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    let codes: Vec<u16> = (0..3).map(|_| c.get("/good").status).collect();
    assert_eq!(codes, [200, 200, 429], "counted in the store");
    let _: () = redis::cmd("SELECT")
        .arg(2)
        .query(&mut admin)
        .expect("SELECT");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("ringway:lx:*")
        .query(&mut admin)
        .expect("KEYS");
    assert_eq!(keys.len(), 1, "the window key in database 2: {keys:?}");
    let n: u64 = redis::cmd("GET")
        .arg(&keys[0])
        .query(&mut admin)
        .expect("GET");
    assert_eq!(n, 3);
    // The wrong password: the login fails, so the route fails open (allow), logged once.
    let codes: Vec<u16> = (0..3).map(|_| c.get("/bad").status).collect();
    assert_eq!(codes, [200, 200, 200], "allow while the login fails");
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .logs()
            .contains("refused the login")),
        "no log line for the failed login:\n{}",
        gw.logs()
    );
}

/// Exact mode on a real three-master Redis Cluster, the nodes given one seed: the shard's own
/// client follows MOVED to the masters owning the other limits, every request is counted once
/// on the owner of its key's slot and exactly `count` are admitted per tenant; then one limit's
/// slot is migrated (ASK while it moves, MOVED after) and the counting follows it, no call failing.
#[test]
fn exact_mode_on_a_redis_cluster_follows_moved_and_ask() {
    let _cpu = cpu_lock();
    let cluster = RedisCluster::start();
    let o = Origin::named("o");
    let plugins = format!(
        "[routes.plugins.limit-count]\ncount = 10\ntime_window = 3600\n\
         key = \"header:X-Tenant\"\nrejected_code = 429\npolicy = \"redis-cluster\"\n\
         redis_cluster = {{ nodes = [\"{}\"], timeout = \"3s\" }}\nsync_interval = \"0\"\n\
         on_redis_error = \"deny\"\n",
        cluster.nodes[0]
    );
    clear_of_hour_boundary(60);
    let a = node(&o, 2, &plugins);
    let b = node(&o, 1, &plugins);
    let (mut ca, mut cb) = (a.client(), b.client());
    let tenants: Vec<String> = (0..6).map(|i| format!("tenant-{i}")).collect();
    let mut admitted = vec![0u32; tenants.len()];
    // Tenant `t`'s `i`th request, on the nodes in turn.
    let mut send = |t: usize, i: usize, admitted: &mut Vec<u32>| {
        let c = if (i + t) % 2 == 0 { &mut ca } else { &mut cb };
        admitted[t] += u32::from(tenant_admitted(c, &tenants[t]));
    };
    for i in 0..15 {
        for t in 0..tenants.len() {
            send(t, i, &mut admitted);
        }
    }
    assert_eq!(admitted, vec![10; 6], "exactly the count per tenant");
    // Every window key on the master that owns its slot, counting every request once.
    let mut owners = std::collections::BTreeMap::new();
    for &m in &cluster.nodes {
        let mut c = cluster.conn(m);
        let keys: Vec<String> = cmd(&mut c, &["KEYS", "ringway:lx:*"]);
        for k in keys {
            assert_eq!(cluster.owner_of(&k), m, "{k} on its slot's owner");
            let n: u64 = cmd(&mut c, &["GET", &k]);
            assert_eq!(n, 15, "{k}: one count per request");
            owners.insert(k, m);
        }
    }
    assert_eq!(owners.len(), 6, "one key per tenant: {owners:?}");
    let away: Vec<_> = owners
        .iter()
        .filter(|(_, &m)| m != cluster.nodes[0])
        .collect();
    assert!(!away.is_empty(), "all six on the seed: no MOVED followed");

    // Migrate one limit's slot to another master.
    let (key, &src) = owners.iter().next().expect("a key");
    let dst = *cluster
        .nodes
        .iter()
        .find(|&&n| n != src)
        .expect("another master");
    let mut d = cluster.conn(dst);
    let moving = cluster.migrate(key, src, dst);
    // While the slot migrates, the old owner answers ASK for the moved key.
    let before = admitted.clone();
    for i in 0..4 {
        for t in 0..tenants.len() {
            send(t, i, &mut admitted);
        }
    }
    let _: () = cmd(&mut d, &["ASKING"]);
    let n: u64 = cmd(&mut d, &["GET", key]);
    assert_eq!(
        n, 19,
        "{key}: counted on the importing master during the move"
    );
    cluster.finish(&moving);
    // Now MOVED: the nodes learn the slot's new owner.
    for i in 0..4 {
        for t in 0..tenants.len() {
            send(t, i, &mut admitted);
        }
    }
    assert_eq!(cluster.owner_of(key), dst);
    let n: u64 = cmd(&mut d, &["GET", key]);
    assert_eq!(n, 23, "{key}: counted on its new owner after the move");
    assert_eq!(admitted, before, "nothing admitted past the count");
    for gw in [&a, &b] {
        let logs = gw.logs();
        assert!(!logs.contains("unreachable ("), "a call failed:\n{logs}");
    }
}
