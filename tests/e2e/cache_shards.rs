//! One cache per node, sharded by key, through the real server with a counting origin: one
//! origin request per key per node however many shards see the misses, a key fetched on one
//! shard answered from every other, each object held once, purges visible everywhere.

use std::thread;
use std::time::Duration;

use crate::harness::prometheus::{scrape, value};
use crate::harness::*;

fn gw(o: &Origin, workers: usize, extra: &str) -> Gateway {
    let cfg = format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
        server(&[("workers", &workers.to_string())]),
        upstream("backend", &[o.addr], ""),
        route(
            "c",
            &["/*"],
            "backend",
            &format!("[routes.plugins.proxy-cache]\npurge_allow = [\"127.0.0.1\"]\n{extra}\n")
        )
    );
    Gateway::start(&cfg)
}

fn get(g: &Gateway, path: &str, extra: &str) -> Response {
    g.client()
        .request(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n"))
}

fn status(r: &Response) -> String {
    r.header("X-Cache-Status").unwrap_or("-").to_string()
}

/// PURGE's JSON: per-shard store stats.
fn purge(g: &Gateway, path: &str) -> (u16, serde_json::Value) {
    let r = g
        .client()
        .request(format!("PURGE {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
    )
}

/// Entries per shard, from a PURGE of a key nobody stores.
fn entries(g: &Gateway) -> Vec<u64> {
    let (_, v) = purge(g, "/no-such-key");
    let shards = v["shards"].as_array().expect("per-shard stats");
    shards
        .iter()
        .map(|s| s["entries"].as_u64().expect("entries"))
        .collect()
}

#[test]
fn one_origin_request_per_key_per_node_for_100_concurrent_misses() {
    for workers in [1, 2, 4] {
        let o = Origin::start("o", |_| {
            Resp::text(200, "slow")
                .header("Cache-Control", "max-age=60")
                .delay(Duration::from_millis(400))
                .into()
        });
        let g = gw(&o, workers, "");
        let addr = g.addr;
        let handles: Vec<_> = (0..100)
            .map(|_| {
                thread::spawn(move || {
                    // A new connection each: SO_REUSEPORT spreads them over every shard.
                    let r = Client::connect(addr).request("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
                    (r.status, r.body_str())
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), (200, "slow".to_string()));
        }
        assert_eq!(o.request_count(), 1, "{workers} shards: one origin fetch");
        let held: u64 = entries(&g).iter().sum();
        assert_eq!(held, 1, "{workers} shards: stored once");
    }
}

#[test]
fn a_key_fetched_on_one_shard_is_a_hit_on_every_other() {
    let o = tagged_cache_origin();
    let g = gw(&o, 4, "");
    let st = ops::listener(&g.stderr, "status");
    assert_eq!(status(&get(&g, "/k", "")), "MISS");
    for i in 0..60 {
        let r = get(&g, "/k", "");
        assert_eq!(
            (r.status, status(&r), r.body_str()),
            (200, "HIT".into(), "v-/k".into()),
            "#{i}"
        );
    }
    assert_eq!(o.request_count(), 1);
    let held = entries(&g);
    assert_eq!(held.len(), 4);
    assert_eq!(
        held.iter().sum::<u64>(),
        1,
        "one copy on the node: {held:?}"
    );
    // Every shard answered some of those requests, so non-owners served HITs. (The status
    // thread's counters settle a moment after the requests.)
    let mut served = Vec::new();
    let every = wait_until(Duration::from_secs(5), || {
        let samples = scrape(st);
        served = (0..4)
            .map(|shard| {
                let s = shard.to_string();
                value(&samples, "ringway_shard_requests_total", &[("shard", &s)])
            })
            .collect();
        served.iter().all(|&n| n > 0.0)
    });
    assert!(every, "requests per shard: {served:?}");
    // The lookups metric tells the owner's own lookups (local) from cross-shard asks (remote):
    // 61 lookups of one key, on every shard, so both kinds.
    let lookups = |owner| {
        value(
            &scrape(st),
            "ringway_cache_lookups_total",
            &[("owner", owner)],
        )
    };
    assert!(
        wait_until(Duration::from_secs(5), || lookups("local")
            + lookups("remote")
            == 61.0),
        "lookups: {} local, {} remote",
        lookups("local"),
        lookups("remote")
    );
    assert!(lookups("local") > 0.0 && lookups("remote") > 0.0);
    // Vary variants follow the owner too: one entry per variant, each a HIT everywhere.
    let ov = Origin::start("v", |r| {
        Resp::text(
            200,
            format!("lang={}", r.header("Accept-Language").unwrap_or("")),
        )
        .header("Cache-Control", "max-age=60")
        .header("Vary", "Accept-Language")
        .into()
    });
    let gv = gw(&ov, 4, "");
    for lang in ["en", "de"] {
        let h = format!("Accept-Language: {lang}\r\n");
        assert_eq!(status(&get(&gv, "/v", &h)), "MISS");
        for _ in 0..10 {
            let r = get(&gv, "/v", &h);
            assert_eq!(
                (status(&r), r.body_str()),
                ("HIT".into(), format!("lang={lang}"))
            );
        }
    }
    assert_eq!(ov.request_count(), 2);
    assert_eq!(entries(&gv).iter().sum::<u64>(), 2);
}

#[test]
fn purge_and_invalidation_are_visible_on_every_shard_before_the_answer() {
    let o = tagged_cache_origin();
    let g = gw(&o, 4, "");
    for round in 0..10 {
        assert_eq!(status(&get(&g, "/k", "")), "MISS", "round {round}");
        assert_eq!(status(&get(&g, "/k", "")), "HIT", "round {round}");
        let (st, v) = purge(&g, "/k");
        assert_eq!((st, &v["removed"]), (200, &serde_json::json!(1)), "{v}");
        assert_eq!(v["shards_answered"], 4);
    }
    assert_eq!(o.request_count(), 10);
    // An unsafe method's success removes the key on its owner, whichever shard it came through.
    for round in 0..5 {
        assert_eq!(status(&get(&g, "/u", "")), "MISS", "round {round}");
        assert_eq!(status(&get(&g, "/u", "")), "HIT");
        let r = g
            .client()
            .request("POST /u HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.status, 200);
        // Fire-and-forget on the owner's lane: visible as soon as the owner has run.
        let gone = wait_until(Duration::from_secs(2), || {
            entries(&g).iter().sum::<u64>() == 0
        });
        assert!(gone, "the owner dropped /u");
    }
}

#[test]
fn the_budget_is_the_nodes_and_never_exceeded() {
    let _cpu = cpu_lock();
    let o = Origin::start("o", |_| {
        Resp::new(200)
            .pattern(1024)
            .header("Cache-Control", "max-age=600")
            .into()
    });
    let max: u64 = 256 * 1024;
    let g = gw(&o, 4, &format!("max_bytes = {max}\nmax_body_bytes = 4096"));
    let addr = g.addr;
    let hs: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..400 {
                    // New connections: keys land on every shard and are stored by their owners.
                    let r = Client::connect(addr)
                        .request(format!("GET /f/{t}/{i} HTTP/1.1\r\nHost: t\r\n\r\n"));
                    assert_eq!(r.body.len(), 1024);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let (_, v) = purge(&g, "/none");
    let shards = v["shards"].as_array().expect("per-shard stats");
    let (mut budget, mut peak, mut bytes) = (0, 0, 0);
    for s in shards {
        let b = s["budget"].as_u64().unwrap();
        assert!(s["peak"].as_u64().unwrap() <= b, "{s}");
        assert!(
            s["entries"].as_u64().unwrap() > 10,
            "every shard owns keys: {s}"
        );
        budget += b;
        peak += s["peak"].as_u64().unwrap();
        bytes += s["bytes"].as_u64().unwrap();
    }
    assert!(
        budget <= max,
        "the shards' budgets add up to at most max_bytes"
    );
    assert!(peak <= max && bytes <= max, "{v}");
    assert!(
        bytes > max / 2,
        "the node's budget is used, not one shard's: {v}"
    );
}
