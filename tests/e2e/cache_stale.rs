//! proxy-cache through the real server, part 2: revalidation (ETag, Last-Modified),
//! stale-while-revalidate, stale-if-error, coalescing of concurrent misses, PURGE on every shard
//! (key, prefix, tag; permissions) and the node-wide memory budget under a flood of keys.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::harness::*;

/// A gateway with `workers` shards unless `RINGWAY_TEST_CACHE_WORKERS` says otherwise.
fn gw_with(o: &Origin, extra: &str, workers: usize) -> Gateway {
    let cfg = format!(
        "{}{}{}",
        server(&[("workers", &cache_workers(workers))]),
        upstream("backend", &[o.addr], ""),
        route(
            "c",
            &["/*"],
            "backend",
            &format!("[routes.plugins.proxy-cache]\n{extra}\n")
        )
    );
    Gateway::start(&cfg)
}

fn get(gw: &Gateway, path: &str, extra: &str) -> Response {
    gw.client()
        .request(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n"))
}

fn status(r: &Response) -> String {
    r.header("X-Cache-Status").unwrap_or("-").to_string()
}

#[test]
fn etag_revalidation_304_refreshes_the_entry() {
    // The 200 is fresh for 2 s (the HIT right after the MISS has that long, even on a loaded
    // box), the 304 for a minute (the HIT after it must come from the 304's refresh, not from a
    // race with the clock). Stale once max-age plus a second of Date rounding has passed.
    let o = Origin::start("o", |r| {
        let (resp, cc) = if r.header("If-None-Match") == Some("\"v1\"") {
            (Resp::new(304), "max-age=60")
        } else {
            (Resp::text(200, "v1"), "max-age=2")
        };
        resp.header("ETag", "\"v1\"")
            .header("Cache-Control", cc)
            .header("X-Gen", &r.target)
            .into()
    });
    let g = gw_with(&o, "", 2);
    assert_eq!(status(&get(&g, "/e", "")), "MISS");
    assert_eq!(status(&get(&g, "/e", "")), "HIT");
    thread::sleep(Duration::from_millis(3100));
    let r = get(&g, "/e", "");
    assert_eq!(
        (r.status, status(&r), r.body_str().as_str()),
        (200, "REVALIDATED".into(), "v1")
    );
    assert_eq!(o.last_request().header("If-None-Match"), Some("\"v1\""));
    assert_eq!(
        status(&get(&g, "/e", "")),
        "HIT",
        "the 304 made it fresh again"
    );
    assert_eq!(o.request_count(), 2);
}

#[test]
fn last_modified_revalidation_and_changed_content() {
    let lm = http_date(-5000);
    let gen = Arc::new(AtomicUsize::new(0));
    let g2 = gen.clone();
    let lm2 = lm.clone();
    let o = Origin::start("o", move |r| {
        let changed = g2.load(SeqCst) > 0;
        if r.header("If-Modified-Since").is_some() && !changed {
            return Resp::new(304).header("Cache-Control", "max-age=1").into();
        }
        let body = if changed { "new" } else { "old" };
        Resp::text(200, body)
            .header("Last-Modified", &lm2)
            .header("Cache-Control", "max-age=1")
            .into()
    });
    let g = gw_with(&o, "", 4);
    get(&g, "/l", "");
    thread::sleep(Duration::from_millis(2100));
    assert_eq!(status(&get(&g, "/l", "")), "REVALIDATED");
    assert_eq!(
        o.last_request().header("If-Modified-Since"),
        Some(lm.as_str())
    );
    gen.store(1, SeqCst);
    thread::sleep(Duration::from_millis(2100));
    let r = get(&g, "/l", "");
    assert_eq!((status(&r), r.body_str()), ("EXPIRED".into(), "new".into()));
    assert_eq!(get(&g, "/l", "").body_str(), "new");
}

#[test]
fn stale_while_revalidate_serves_stale_with_one_background_refresh() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    // The background refresh is held at the origin until the test releases it, so the stale
    // answers below provably did not wait for it (no wall-clock assertion needed).
    let release = Arc::new(AtomicBool::new(false));
    let release2 = release.clone();
    let answered = Arc::new(AtomicUsize::new(0));
    let answered2 = answered.clone();
    let o = Origin::start("o", move |_| {
        let i = n2.fetch_add(1, SeqCst);
        if i > 0 {
            let _ = wait_until(Duration::from_secs(15), || release2.load(SeqCst));
        }
        answered2.fetch_add(1, SeqCst);
        // gen0 goes stale after 2 s; the refreshed gen1 stays fresh for the rest of the test,
        // so a slow client on a loaded box cannot find it stale and start a second refresh.
        let cc = if i == 0 {
            "max-age=2, stale-while-revalidate=30"
        } else {
            "max-age=60, stale-while-revalidate=30"
        };
        Resp::text(200, format!("gen{i}"))
            .header("Cache-Control", cc)
            .into()
    });
    // The refresh is held at the origin while the five stale answers are fetched; past
    // lock_timeout (5 s by default) the owner would give the next stale hit a new turn, as
    // README "Coalescing" says. Five new connections took longer than that on a loaded 2-core
    // box (three origin requests), so the hold is kept well inside the lock here.
    let g = gw_with(&o, "lock_timeout = \"60s\"", 4);
    assert_eq!(get(&g, "/s", "").body_str(), "gen0");
    thread::sleep(Duration::from_millis(3100));
    for _ in 0..5 {
        let r = get(&g, "/s", "");
        assert_eq!((status(&r), r.body_str()), ("STALE".into(), "gen0".into()));
    }
    assert!(
        wait_until(Duration::from_secs(20), || n.load(SeqCst) == 2),
        "one background refresh reached the origin"
    );
    assert_eq!(
        answered.load(SeqCst),
        1,
        "the five stale answers came back while the refresh was still held at the origin"
    );
    release.store(true, SeqCst);
    let mut seen = Vec::new();
    let refreshed = wait_until(Duration::from_secs(20), || {
        let r = get(&g, "/s", "");
        seen.push(format!("{} {}", status(&r), r.body_str()));
        r.body_str() == "gen1"
    });
    assert!(
        refreshed,
        "the refresh's gen1 never served; answers: {seen:?}"
    );
    assert_eq!(
        o.request_count(),
        2,
        "one background refresh for five stale hits; answers after the release: {seen:?}"
    );
    assert_eq!(status(&get(&g, "/s", "")), "HIT");
}

#[test]
fn stale_if_error_serves_stale_when_the_origin_fails() {
    let fail = Arc::new(AtomicUsize::new(0));
    let f2 = fail.clone();
    let o = Origin::start("o", move |r| {
        if f2.load(SeqCst) > 0 {
            return Resp::text(503, "down").into();
        }
        let cc = if r.path() == "/strict" {
            "max-age=1, stale-if-error=60, must-revalidate"
        } else {
            "max-age=1, stale-if-error=60"
        };
        Resp::text(200, "good").header("Cache-Control", cc).into()
    });
    let g = gw_with(&o, "", 2);
    get(&g, "/x", "");
    get(&g, "/strict", "");
    fail.store(1, SeqCst);
    thread::sleep(Duration::from_millis(2100));
    let r = get(&g, "/x", "");
    assert_eq!(
        (r.status, status(&r), r.body_str()),
        (200, "STALE".into(), "good".into())
    );
    let r = get(&g, "/strict", "");
    assert_eq!(
        (r.status, r.body_str()),
        (503, "down".into()),
        "must-revalidate forbids stale"
    );
    // The origin gone entirely (connection refused) is an error too.
    let addr = o.addr;
    drop(o);
    thread::sleep(Duration::from_millis(100));
    let g2 = {
        let o2 = Origin::start("o2", |_| {
            Resp::text(200, "second")
                .header("Cache-Control", "max-age=1, stale-if-error=60")
                .into()
        });
        let g2 = gw_with(&o2, "", 2);
        get(&g2, "/y", "");
        g2
    };
    thread::sleep(Duration::from_millis(2100));
    let r = get(&g2, "/y", "");
    assert_eq!(
        (r.status, status(&r), r.body_str()),
        (200, "STALE".into(), "second".into())
    );
    let _ = addr;
}

#[test]
fn coalescing_100_concurrent_misses_into_one_origin_request() {
    let o = Origin::start("o", |_| {
        Resp::text(200, "slow")
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(500))
            .into()
    });
    let g = gw_with(&o, "", 4);
    let addr = g.addr;
    let handles: Vec<_> = (0..100)
        .map(|_| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                let r = c.request("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
                (r.status, r.body_str())
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), (200, "slow".to_string()));
    }
    assert_eq!(
        o.request_count(),
        1,
        "one origin fetch for 100 concurrent misses"
    );
}

#[test]
fn coalesced_waiters_go_to_the_origin_after_lock_timeout() {
    let o = Origin::start("o", |_| {
        Resp::text(200, "slow")
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(1500))
            .into()
    });
    let g = gw_with(&o, "lock_timeout = \"200ms\"", 4);
    let addr = g.addr;
    let hs: Vec<_> = (0..3)
        .map(|_| {
            thread::spawn(move || {
                Client::connect(addr)
                    .request("GET /t HTTP/1.1\r\nHost: t\r\n\r\n")
                    .status
            })
        })
        .collect();
    for h in hs {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert_eq!(o.request_count(), 3, "waiters gave up after 200 ms");
}

/// Sends PURGE; returns status and the JSON body.
fn purge(g: &Gateway, path: &str, extra: &str) -> (u16, serde_json::Value) {
    let r = g
        .client()
        .request(format!("PURGE {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n"));
    let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status, v)
}

#[test]
fn purge_is_visible_on_every_shard() {
    let o = tagged_cache_origin();
    let g = gw_with(&o, "purge_allow = [\"127.0.0.1/32\"]", 2);
    // One fetch for the node; new connections land on both shards and all hit.
    get(&g, "/k", "");
    for _ in 0..6 {
        assert_eq!(status(&get(&g, "/k", "")), "HIT");
    }
    assert_eq!(o.request_count(), 1, "one fetch of /k for the node");
    let (st, v) = purge(&g, "/k", "");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["removed"], 1, "held once: {v}");
    assert_eq!(v["shards_answered"], g_shards(2));
    // The PURGE answer waited for every shard: nothing is served from the cache afterwards.
    for _ in 0..20 {
        let r = get(&g, "/k", "");
        assert_ne!(status(&r), "HIT");
        purge(&g, "/k", "");
    }
    assert_eq!(purge(&g, "/k", "").0, 404);
    assert_eq!(purge(&g, "/never", "").0, 404);
    // By prefix and by Surrogate-Key tag.
    for p in ["/p/1", "/p/2", "/q/1"] {
        get(&g, p, "");
    }
    let (st, v) = purge(&g, "/p/*", "");
    assert_eq!((st, v["removed"].as_u64().unwrap() >= 2), (200, true));
    get(&g, "/p/3", "");
    assert_eq!(purge(&g, "/", "Surrogate-Key: grp\r\n").0, 200);
    assert_eq!(purge(&g, "/", "Surrogate-Key: grp\r\n").0, 404);
    assert_eq!(purge(&g, "/q/1", "").0, 200);
}

/// The shard count `gw_with(.., workers)` started.
fn g_shards(workers: usize) -> u64 {
    cache_workers(workers).parse().unwrap_or(1)
}

#[test]
fn purge_needs_an_allowed_address_or_the_admin_key() {
    let o = Origin::start("o", |_| {
        Resp::text(200, "x")
            .header("Cache-Control", "max-age=600")
            .into()
    });
    let g = gw_with(
        &o,
        "purge_allow = [\"10.0.0.0/8\"]\nadmin_key = \"s3cret\"",
        2,
    );
    get(&g, "/a", "");
    assert_eq!(purge(&g, "/a", "").0, 403);
    assert_eq!(purge(&g, "/a", "X-API-KEY: wrong\r\n").0, 403);
    assert_eq!(status(&get(&g, "/a", "")), "HIT");
    assert_eq!(purge(&g, "/a", "X-API-KEY: s3cret\r\n").0, 200);
    assert_eq!(status(&get(&g, "/a", "")), "MISS");
    assert_eq!(
        o.request_count(),
        2,
        "PURGE itself never reaches the origin"
    );
}

#[test]
fn memory_budget_is_never_exceeded_under_a_flood_of_keys() {
    let _cpu = cpu_lock(); // a flood of distinct keys as fast as the gateway takes them
    let o = Origin::start("o", |_| {
        Resp::new(200)
            .pattern(1024)
            .header("Cache-Control", "max-age=600")
            .into()
    });
    let max = 256 * 1024;
    let g = gw_with(
        &o,
        &format!("max_bytes = {max}\nmax_body_bytes = 4096\npurge_allow = [\"127.0.0.1\"]"),
        2,
    );
    let addr = g.addr;
    let hs: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..1500 {
                    let r = c.request(format!("GET /f/{t}/{i} HTTP/1.1\r\nHost: t\r\n\r\n"));
                    assert_eq!(r.body.len(), 1024);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let (_, v) = purge(&g, "/none", "");
    let shards = v["shards"].as_array().expect("per-shard stats").clone();
    assert_eq!(shards.len() as u64, g_shards(2));
    let (mut budget, mut peak, mut entries) = (0, 0, 0);
    for s in &shards {
        let b = s["budget"].as_u64().unwrap();
        assert!(s["peak"].as_u64().unwrap() <= b, "{s}");
        assert!(s["bytes"].as_u64().unwrap() <= b, "{s}");
        budget += b;
        peak += s["peak"].as_u64().unwrap();
        entries += s["entries"].as_u64().unwrap();
    }
    assert!(
        budget <= max as u64,
        "shards' budgets sum to at most max_bytes"
    );
    assert!(peak <= max as u64);
    assert!(entries > 50, "the cache was used: {v}");
}
