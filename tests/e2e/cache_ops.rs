//! Operating the proxy cache against the real binary: purging through the admin API (by URL,
//! prefix and Surrogate-Key tag, on every shard) and keeping cached objects across a config
//! reload (SIGHUP or admin change) that leaves the cache's settings alone.

use crate::harness::ops;

use std::net::SocketAddr;

use crate::harness::ops::{http, Proc};
use crate::harness::{cache_workers, route, server, tagged_cache_origin, upstream, Client, Origin};

const KEY: &str = "admin-key-0123456789";
const VIEWER: &str = "viewer-key-0123456789";

/// Shards (2 unless `RINGWAY_TEST_CACHE_WORKERS`), the admin API, route `c` caching everything, route `other` with `other_paths`.
fn config(o: &Origin, cache_extra: &str, other_paths: &[&str]) -> String {
    format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\nkey = \"{KEY}\"\nviewer_key = \"{VIEWER}\"\n\n{}{}{}",
        server(&[("workers", &cache_workers(2))]),
        upstream("backend", &[o.addr], ""),
        route("other", other_paths, "backend", ""),
        route(
            "c",
            &["/*"],
            "backend",
            &format!("[routes.plugins.proxy-cache]\n{cache_extra}\n")
        ),
    )
}

fn get(gw: SocketAddr, path: &str) -> String {
    let r = Client::connect(gw).request(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
    assert_eq!(r.status, 200);
    r.header("X-Cache-Status").unwrap_or("-").to_string()
}

/// Fetches `path` once for the whole node: one MISS, then HITs on new connections (which land
/// on every shard, owner or not) without asking the origin again.
fn cache_once(gw: SocketAddr, o: &Origin, path: &str) {
    let before = o.request_count();
    assert_eq!(get(gw, path), "MISS");
    for _ in 0..8 {
        assert_eq!(get(gw, path), "HIT", "{path} on a new connection");
    }
    assert_eq!(o.request_count(), before + 1, "one origin fetch of {path}");
}

fn purge(adm: SocketAddr, key: &str, body: &str) -> (u16, serde_json::Value) {
    let (code, text) = http(
        adm,
        "POST",
        "/apisix/admin/cache/purge",
        &[("X-API-KEY", key), ("Content-Type", "application/json")],
        body,
    );
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{body}: {e}: {text:?}"));
    (code, v)
}

#[test]
fn admin_purge_by_url_prefix_and_tag_on_every_shard() {
    let o = tagged_cache_origin();
    let p = Proc::start("cache-admin-purge", &config(&o, "", &["/none"]));
    let adm = ops::listener(&p.logs, "admin");
    cache_once(p.addr, &o, "/k");

    let (code, v) = purge(adm, KEY, r#"{"host":"t","uri":"/k"}"#);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["removed"], 1, "one copy per node: {v}");
    let shards: u64 = cache_workers(2).parse().unwrap();
    assert_eq!(v["shards_answered"], shards);
    assert_eq!(v["caches"], 1);
    // The answer waited for every shard: no connection gets a HIT afterwards.
    let before = o.request_count();
    for _ in 0..10 {
        assert_ne!(get(p.addr, "/k"), "HIT");
        assert_eq!(purge(adm, KEY, r#"{"url":"http://t/k"}"#).0, 200);
    }
    assert_eq!(o.request_count(), before + 10);
    let (code, v) = purge(adm, KEY, r#"{"url":"http://t/k"}"#);
    assert_eq!((code, &v["removed"]), (404, &serde_json::json!(0)), "{v}");

    for path in ["/p/1", "/p/2", "/q/1"] {
        cache_once(p.addr, &o, path);
    }
    let (code, v) = purge(adm, KEY, r#"{"host":"t","prefix":"/p/"}"#);
    assert_eq!(code, 200, "{v}");
    assert!(v["removed"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(get(p.addr, "/q/1"), "HIT", "outside the prefix");
    get(p.addr, "/p/3");
    assert_eq!(purge(adm, KEY, r#"{"tag":"grp"}"#).0, 200);
    assert_eq!(purge(adm, KEY, r#"{"tag":"grp"}"#).0, 404);
    assert_eq!(purge(adm, KEY, r#"{"host":"t","uri":"/q/1"}"#).0, 200);

    // Refused: bad bodies, the viewer key, no key.
    assert_eq!(purge(adm, KEY, r#"{"uri":"/k"}"#).0, 400);
    assert_eq!(purge(adm, KEY, r#"{"url":"http://t/k","tag":"x"}"#).0, 400);
    assert_eq!(purge(adm, VIEWER, r#"{"tag":"grp"}"#).0, 403);
    assert_eq!(purge(adm, "wrong", r#"{"tag":"grp"}"#).0, 401);
}

#[test]
fn cached_objects_survive_a_reload_that_keeps_the_cache_settings() {
    let o = tagged_cache_origin();
    let p = Proc::start("cache-reload", &config(&o, "cache_ttl = 60", &["/none"]));
    let adm = ops::listener(&p.logs, "admin");
    cache_once(p.addr, &o, "/k");
    let fetched = o.request_count();

    // SIGHUP with the very same file, then with another route changed: still cached.
    let line = p.reload(1);
    assert!(line.contains("generation 2"), "{line}");
    p.rewrite(&config(&o, "cache_ttl = 60", &["/none", "/other"]));
    let line = p.reload(2);
    assert!(line.contains("generation 3"), "{line}");
    for _ in 0..10 {
        assert_eq!(get(p.addr, "/k"), "HIT");
    }
    assert_eq!(o.request_count(), fetched, "the origin was not asked again");

    // An admin change to another route: a new generation, the same cache.
    let (code, text) = http(
        adm,
        "PATCH",
        "/apisix/admin/routes/other",
        &[("X-API-KEY", KEY), ("Content-Type", "application/json")],
        r#"{"paths":["/none","/third"]}"#,
    );
    assert_eq!(code, 200, "{text}");
    for _ in 0..10 {
        assert_eq!(get(p.addr, "/k"), "HIT");
    }
    assert_eq!(o.request_count(), fetched);
    // The cache stayed reachable for purges too: its one copy is removed.
    let (code, v) = purge(adm, KEY, r#"{"url":"http://t/k"}"#);
    assert_eq!((code, &v["removed"]), (200, &serde_json::json!(1)), "{v}");
    cache_once(p.addr, &o, "/k");

    // Changed cache settings start a fresh cache. (Routes now come from the admin state,
    // which a SIGHUP keeps, so the change goes through the admin API too.)
    let (code, text) = http(
        adm,
        "PATCH",
        "/apisix/admin/routes/c",
        &[("X-API-KEY", KEY), ("Content-Type", "application/json")],
        r#"{"plugins":{"proxy-cache":{"cache_ttl":30}}}"#,
    );
    assert_eq!(code, 200, "{text}");
    let before = o.request_count();
    assert_eq!(get(p.addr, "/k"), "MISS");
    assert_eq!(o.request_count(), before + 1);
}
