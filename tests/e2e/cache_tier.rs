//! The shared cache tier (proxy-cache `l2`) between two ringway processes, against a real
//! redis-server and a real memcached: an object one node fetched is a hit on the other with no
//! origin request, a purge on one node reaches the other's store, and a tier that is down leaves
//! requests served (state in /metrics, one log line).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::*;

const ADMIN: &str = "admin-key-0123456789";

/// Whether the test redis-server holds a key matching `pattern`.
fn redis_has(redis: &Redis, pattern: &str) -> bool {
    let mut c = redis.conn();
    redis::cmd("KEYS")
        .arg(pattern)
        .query::<Vec<Vec<u8>>>(&mut c)
        .is_ok_and(|k| !k.is_empty())
}

/// A node: two shards, one cached route "c" on "/*" with `l2` pointing at the tier (a generous
/// timeout: on a loaded machine a lookup that times out would be a miss, and a hit is asserted).
fn node(o: &Origin, backend: &str, addr: SocketAddr) -> (Gateway, SocketAddr) {
    let plugins = format!(
        "[routes.plugins.proxy-cache]\npurge_allow = [\"127.0.0.1\"]\n\
         l2 = {{ backend = \"{backend}\", addr = \"{addr}\", timeout = \"2s\" }}\n"
    );
    let cfg = format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\nkey = \"{ADMIN}\"\n\n{}{}",
        server(&[("workers", "2")]),
        upstream("backend", &[o.addr], ""),
        route("c", &["/*"], "backend", &plugins)
    );
    let gw = Gateway::start(&cfg);
    let status = ops::listener(&gw.stderr, "status");
    (gw, status)
}

fn get(gw: &Gateway, path: &str) -> Response {
    gw.client()
        .request(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"))
}

fn purge(gw: &Gateway, path: &str) -> Response {
    gw.client()
        .request(format!("PURGE {path} HTTP/1.1\r\nHost: t\r\n\r\n"))
}

fn label(r: &Response) -> &str {
    r.header("X-Cache-Status").unwrap_or("-")
}

fn metric(status: SocketAddr, name: &str) -> f64 {
    prometheus::value(&prometheus::scrape(status), name, &[])
}

/// Node A fetches `/a` from the origin; once A has written it to the tier, node B answers it
/// as a HIT (with the stored Age and headers) without asking the origin.
fn shared_between_nodes(backend: &str, addr: SocketAddr) -> (Origin, [(Gateway, SocketAddr); 2]) {
    let o = tagged_cache_origin();
    let (a, sa) = node(&o, backend, addr);
    let (b, sb) = node(&o, backend, addr);
    let r = get(&a, "/a");
    assert_eq!((r.status, label(&r)), (200, "MISS"));
    assert_eq!(o.request_count(), 1);
    assert!(
        wait_until(Duration::from_secs(5), || metric(
            sa,
            "ringway_cache_tier_writes_total"
        ) >= 1.0),
        "node A never wrote to the tier:\n{}",
        a.logs()
    );
    let r = get(&b, "/a");
    assert_eq!(
        (r.status, label(&r)),
        (200, "HIT"),
        "lookups {} hits {}\n{}",
        metric(sb, "ringway_cache_tier_lookups_total"),
        metric(sb, "ringway_cache_tier_hits_total"),
        b.logs()
    );
    assert_eq!(r.body_str(), "v-/a");
    assert_eq!(r.header("Surrogate-Key"), Some("other"));
    assert!(r.header("Age").is_some());
    assert_eq!(o.request_count(), 1, "node B went to the origin");
    assert_eq!(metric(sb, "ringway_cache_tier_hits_total"), 1.0);
    assert_eq!(metric(sb, "ringway_cache_tier_state"), 1.0);
    // Now in B's own store: a second request does not even ask the tier.
    let r = get(&b, "/a");
    assert_eq!((r.status, label(&r)), (200, "HIT"));
    assert_eq!(metric(sb, "ringway_cache_tier_lookups_total"), 1.0);
    (o, [(a, sa), (b, sb)])
}

#[test]
fn redis_tier_shares_objects_and_purges_reach_every_node() {
    let redis = Redis::start();
    let (o, [(a, _), (b, sb)]) = shared_between_nodes("redis", redis.addr);
    // A purge on A removes the object from the tier and, through pub/sub, from B's store.
    assert!(
        wait_until(Duration::from_secs(5), || metric(
            sb,
            "ringway_cache_tier_state"
        ) == 1.0),
        "B's tier state"
    );
    let before = o.request_count();
    let t = Instant::now();
    assert_eq!(purge(&a, "/a").status, 200);
    let mut seen = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            if metric(sb, "ringway_cache_tier_purges_heard_total") >= 1.0 {
                seen = Some(t.elapsed());
                true
            } else {
                false
            }
        }),
        "B never heard the purge:\n{}",
        b.logs()
    );
    eprintln!("purge heard on node B after {:?}", seen.unwrap_or_default());
    let r = get(&b, "/a");
    assert_eq!(
        (r.status, label(&r)),
        (200, "MISS"),
        "B still served the purged object"
    );
    assert_eq!(o.request_count(), before + 1);
    // A tag purge: B stored /p/1 (tag "grp") from the origin and wrote it to the tier; a tag
    // purge on A clears both.
    assert_eq!(label(&get(&b, "/p/1")), "MISS");
    assert!(wait_until(Duration::from_secs(5), || redis_has(
        &redis,
        "ringway:t:*grp"
    )));
    let r = a
        .client()
        .request("PURGE /p/1 HTTP/1.1\r\nHost: t\r\nSurrogate-Key: grp\r\n\r\n");
    assert_eq!(r.status, 404, "A itself held nothing tagged grp");
    assert!(wait_until(Duration::from_secs(5), || metric(
        sb,
        "ringway_cache_tier_purges_heard_total"
    ) >= 2.0));
    let n = o.request_count();
    assert_eq!(label(&get(&b, "/p/1")), "MISS");
    assert_eq!(o.request_count(), n + 1);
    // An admin-API prefix purge on A: out of the tier and out of B's store.
    assert_eq!(label(&get(&b, "/q/1")), "MISS");
    assert!(wait_until(Duration::from_secs(5), || redis_has(
        &redis,
        "ringway:c:*/q/1"
    )));
    let adm = ops::listener(&a.stderr, "admin");
    let (code, _) = ops::http(
        adm,
        "POST",
        "/apisix/admin/cache/purge",
        &[("X-API-KEY", ADMIN), ("Content-Type", "application/json")],
        r#"{"host":"t","prefix":"/q/"}"#,
    );
    assert_eq!(code, 404, "A itself held nothing under /q/");
    assert!(wait_until(Duration::from_secs(5), || metric(
        sb,
        "ringway_cache_tier_purges_heard_total"
    ) >= 3.0));
    assert!(!redis_has(&redis, "ringway:c:*/q/1"));
    let n = o.request_count();
    assert_eq!(label(&get(&b, "/q/1")), "MISS");
    assert_eq!(o.request_count(), n + 1);
}

#[test]
fn memcached_tier_shares_objects_between_nodes() {
    let mc = Memcached::start();
    let (o, [(a, sa), _]) = shared_between_nodes("memcached", mc.addr);
    // A key purge on A deletes it from memcached: a third node does not find it there.
    assert_eq!(purge(&a, "/a").status, 200);
    assert!(wait_until(Duration::from_secs(5), || metric(
        sa,
        "ringway_cache_tier_purges_sent_total"
    ) >= 1.0));
    let (c, _) = node(&o, "memcached", mc.addr);
    let n = o.request_count();
    assert_eq!(label(&get(&c, "/a")), "MISS");
    assert_eq!(o.request_count(), n + 1);
}

/// A tier that is down: requests are still served from the origin (no waiting on the tier per
/// request beyond one timeout per backoff period), the state gauge says so, and one log line.
fn down(backend: &str, addr: SocketAddr, stop: impl FnOnce()) {
    let o = tagged_cache_origin();
    let (a, sa) = node(&o, backend, addr);
    assert_eq!(get(&a, "/warm").status, 200);
    assert!(wait_until(Duration::from_secs(5), || metric(
        sa,
        "ringway_cache_tier_state"
    ) == 1.0));
    stop();
    for i in 0..20 {
        let r = get(&a, &format!("/down/{i}"));
        assert_eq!((r.status, label(&r)), (200, "MISS"));
    }
    assert_eq!(metric(sa, "ringway_cache_tier_state"), 2.0);
    assert!(metric(sa, "ringway_cache_tier_errors_total") >= 1.0);
    let logs = a.logs();
    assert_eq!(
        logs.matches("unreachable").count(),
        1,
        "one log line per state change:\n{logs}"
    );
    // Stored locally all the same (waited for: on a loaded machine a shard's answer about a
    // key it owns can come too late for the first request to be stored).
    assert!(wait_until(Duration::from_secs(5), || label(&get(
        &a, "/down/3"
    )) == "HIT"));
}

#[test]
fn redis_tier_down_requests_still_served() {
    let mut redis = Redis::start();
    let addr = redis.addr;
    down("redis", addr, || redis.stop());
}

#[test]
fn memcached_tier_down_requests_still_served() {
    let mut mc = Memcached::start();
    let addr = mc.addr;
    down("memcached", addr, || mc.stop());
}

/// Two Vary variants fetched on node A are both hits on node B (each kept in the tier under its
/// own key, listed beside the URL's); a URL purge on A removes every variant from the tier and
/// from B's store.
#[test]
fn redis_tier_keeps_every_vary_variant_and_purges_them_all() {
    let redis = Redis::start();
    let o = Origin::start("o", |r| {
        let lang = r.header("Accept-Language").unwrap_or("none").to_string();
        Resp::text(200, format!("v-{}-{lang}", r.target))
            .header("Cache-Control", "max-age=600")
            .header("Vary", "Accept-Language")
            .into()
    });
    let (a, sa) = node(&o, "redis", redis.addr);
    let (b, sb) = node(&o, "redis", redis.addr);
    let ask = |gw: &Gateway, lang: &str| {
        gw.client().request(format!(
            "GET /v HTTP/1.1\r\nHost: t\r\nAccept-Language: {lang}\r\n\r\n"
        ))
    };
    for lang in ["en", "de"] {
        let r = ask(&a, lang);
        assert_eq!((r.status, label(&r)), (200, "MISS"), "{lang} on A");
    }
    assert_eq!(o.request_count(), 2);
    assert!(
        at_least(sa, "ringway_cache_tier_writes_total", 2.0, 5),
        "node A never wrote both variants:\n{}",
        a.logs()
    );
    for lang in ["en", "de"] {
        let r = ask(&b, lang);
        assert_eq!(
            (r.status, label(&r), r.body_str()),
            (200, "HIT", format!("v-/v-{lang}")),
            "{lang} on B:\n{}",
            b.logs()
        );
    }
    assert_eq!(o.request_count(), 2, "node B went to the origin");
    assert_eq!(metric(sb, "ringway_cache_tier_hits_total"), 2.0);
    // A URL purge on A: every variant leaves the tier and B's store.
    assert_eq!(purge(&a, "/v").status, 200);
    assert!(
        at_least(sb, "ringway_cache_tier_purges_heard_total", 1.0, 5),
        "B never heard the purge:\n{}",
        b.logs()
    );
    assert!(
        !redis_has(&redis, "ringway:c:*/v*"),
        "a variant or the index is left in the tier"
    );
    for (i, lang) in ["en", "de"].into_iter().enumerate() {
        let r = ask(&b, lang);
        assert_eq!(
            (r.status, label(&r)),
            (200, "MISS"),
            "{lang} on B after the purge"
        );
        assert_eq!(o.request_count(), 3 + i);
    }
}

/// Node B's path to Redis is cut (a black-hole relay) while node A purges: B misses the
/// published purge and still serves its copy; once the path heals, B resubscribes, replays the
/// purge from the purge stream and drops its copy. Then a purge trimmed from the stream while B
/// was cut off (a gap): B drops every entry of the cache.
#[test]
fn redis_tier_purge_missed_while_unsubscribed_is_replayed() {
    let redis = Redis::start();
    let relay = etcd::Relay::start(redis.addr);
    let o = tagged_cache_origin();
    let (a, _) = node(&o, "redis", redis.addr);
    let (b, sb) = node(&o, "redis", relay.addr);
    // B stores /m and writes it to the tier; A gets it from there.
    assert_eq!(label(&get(&b, "/m")), "MISS");
    assert!(wait_until(Duration::from_secs(5), || redis_has(
        &redis,
        "ringway:c:*/m"
    )));
    assert_eq!(label(&get(&a, "/m")), "HIT");
    assert_eq!(o.request_count(), 1);
    // B listens (a first purge, of something else, is heard).
    assert_eq!(purge(&a, "/other").status, 404);
    assert!(
        at_least(sb, "ringway_cache_tier_purges_heard_total", 1.0, 5),
        "B never subscribed:\n{}",
        b.logs()
    );
    relay.cut();
    assert_eq!(purge(&a, "/m").status, 200);
    assert!(!redis_has(&redis, "ringway:c:*/m"), "out of the tier");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        metric(sb, "ringway_cache_tier_purges_heard_total"),
        1.0,
        "B heard the purge through a cut path"
    );
    assert_eq!(label(&get(&b, "/m")), "HIT", "B's own copy, purge missed");
    relay.heal();
    assert!(
        at_least(sb, "ringway_cache_tier_purges_replayed_total", 1.0, 10),
        "B never replayed the missed purge:\n{}",
        b.logs()
    );
    let n = o.request_count();
    assert!(
        wait_until(Duration::from_secs(5), || label(&get(&b, "/m")) == "MISS"),
        "B still serves the purged object:\n{}",
        b.logs()
    );
    assert_eq!(o.request_count(), n + 1);
    assert!(b.logs().contains("replayed from ringway:cache:purges"));
    assert_eq!(metric(sb, "ringway_cache_tier_purge_gaps_total"), 0.0);

    // A gap: while B is cut off again, A purges /g and the stream is trimmed past it. B cannot
    // know what it missed: it drops every entry of the cache (/keep too, never purged).
    for path in ["/g", "/keep"] {
        assert_eq!(label(&get(&b, path)), "MISS");
        assert!(wait_until(Duration::from_secs(5), || label(&get(&b, path)) == "HIT"));
    }
    relay.cut();
    assert_eq!(purge(&a, "/g").status, 404, "A itself held nothing at /g");
    let _: u64 = redis::cmd("XTRIM")
        .arg("ringway:cache:purges")
        .arg("MAXLEN")
        .arg(0)
        .query(&mut redis.conn())
        .expect("XTRIM");
    relay.heal();
    assert!(
        at_least(sb, "ringway_cache_tier_purge_gaps_total", 1.0, 10),
        "B never noticed the gap:\n{}",
        b.logs()
    );
    for path in ["/g", "/keep"] {
        assert!(
            wait_until(Duration::from_secs(5), || label(&get(&b, path)) == "MISS"),
            "B kept {path} after a gap:\n{}",
            b.logs()
        );
    }
    assert!(b.logs().contains("were trimmed from ringway:cache:purges"));
}

/// Waits up to `secs` for the metric `name` to reach `min`.
fn at_least(status: SocketAddr, name: &str, min: f64, secs: u64) -> bool {
    wait_until(Duration::from_secs(secs), || metric(status, name) >= min)
}
