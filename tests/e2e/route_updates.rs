//! One-route admin changes on a large table, against the real binary: 50k routes load, and a
//! PUT/POST/PATCH/DELETE of one route is live on every shard (new answers, old ones gone) while
//! the rest keep working; journaled changes survive a restart. Speed is measured in perf/.

use crate::harness::ops;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::ops::{http, Proc};
use crate::harness::{cpu_lock, route, server, upstream, Client, Origin, Resp};

const KEY: &str = "admin-key-0123456789";

fn api(admin: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (code, text) = http(
        admin,
        method,
        path,
        &[("X-API-KEY", KEY), ("Content-Type", "application/json")],
        body,
    );
    let v =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text:?}"));
    (code, v)
}

fn config(routes: usize, a: SocketAddr, b: SocketAddr) -> String {
    let mut cfg = format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\nkey = \"{KEY}\"\n{}{}",
        server(&[("workers", "2")]),
        upstream("a", &[a], ""),
        upstream("b", &[b], ""),
    );
    for i in 0..routes {
        cfg.push_str(&route(&format!("r{i}"), &[&format!("/r/{i}")], "a", ""));
    }
    cfg
}

/// Expected (path, status, body) answered the same on many fresh connections, which the
/// kernel spreads over both shards' listening sockets.
fn expect_everywhere(gw: SocketAddr, checks: &[(&str, u16, &str)]) {
    for _ in 0..16 {
        let mut c = Client::connect(gw);
        for &(path, status, body) in checks {
            let r = c.get(path);
            assert_eq!((r.status, path), (status, path));
            if status == 200 {
                assert_eq!(r.body_str(), body, "{path}");
            }
        }
    }
}

/// Every shard reports `generation`: each has committed the change.
fn all_shards_on(status: SocketAddr, generation: u64) {
    let (code, text) = ops::get(status, "/status");
    assert_eq!(code, 200);
    let st: serde_json::Value = serde_json::from_str(&text).expect("status JSON");
    let gens: BTreeSet<u64> = st["per_shard"]
        .as_array()
        .expect("per_shard")
        .iter()
        .filter_map(|s| s["generation"].as_u64())
        .collect();
    assert_eq!(st["shards_reporting"].as_u64(), Some(2), "{st}");
    assert_eq!(gens, BTreeSet::from([generation]), "{st}");
}

/// The log line of the `n`-th applied admin change.
fn applied(p: &Proc, n: usize) -> String {
    let lines = p
        .logs
        .wait_for_n(|l| l.contains("admin: "), n, Duration::from_secs(10));
    assert!(lines.len() >= n, "{}", p.logs.text());
    lines[n - 1].clone()
}

fn generation_of(v: &serde_json::Value) -> u64 {
    v["config_generation"].as_u64().expect("config_generation")
}

#[test]
fn fifty_thousand_routes_single_route_changes_reach_every_shard() {
    let _cpu = cpu_lock(); // builds 50,000 routes on every shard
    let a = Origin::start("a", |_| Resp::text(200, "a").into());
    let b = Origin::start("b", |_| Resp::text(200, "b").into());
    let p = Proc::start("route-updates-50k", &config(50_000, a.addr, b.addr));
    let adm = ops::listener(&p.logs, "admin");
    let status = ops::listener(&p.logs, "status");
    expect_everywhere(p.addr, &[("/r/0", 200, "a"), ("/r/49999", 200, "a")]);

    // Replace: the route moves to another path and upstream.
    let (code, v) = api(
        adm,
        "PUT",
        "/apisix/admin/routes/r25000",
        r#"{"paths":["/moved/25000"],"upstream":"b"}"#,
    );
    assert_eq!(code, 200, "{v}");
    assert!(applied(&p, 1).contains("(one route)"), "{}", p.logs.text());
    all_shards_on(status, generation_of(&v));
    expect_everywhere(
        p.addr,
        &[
            ("/moved/25000", 200, "b"),
            ("/r/25000", 404, ""),
            ("/r/24999", 200, "a"),
            ("/r/25001", 200, "a"),
            ("/r/0", 200, "a"),
        ],
    );

    // Create with a generated id, then patch an existing route, then delete both changes.
    let (code, v) = api(
        adm,
        "POST",
        "/apisix/admin/routes",
        r#"{"paths":["/posted/*"],"upstream":"b","priority":5}"#,
    );
    assert_eq!(code, 201, "{v}");
    let posted = v["value"]["name"]
        .as_str()
        .expect("generated id")
        .to_string();
    let (code, v) = api(
        adm,
        "PATCH",
        "/apisix/admin/routes/r7",
        r#"{"upstream":"b"}"#,
    );
    assert_eq!(code, 200, "{v}");
    all_shards_on(status, generation_of(&v));
    expect_everywhere(
        p.addr,
        &[
            ("/posted/x/y", 200, "b"),
            ("/r/7", 200, "b"),
            ("/r/8", 200, "a"),
        ],
    );
    let (code, v) = api(adm, "DELETE", &format!("/apisix/admin/routes/{posted}"), "");
    assert_eq!(code, 200, "{v}");
    let (code, v) = api(adm, "DELETE", "/apisix/admin/routes/r49999", "");
    assert_eq!(code, 200, "{v}");
    all_shards_on(status, generation_of(&v));
    expect_everywhere(
        p.addr,
        &[
            ("/posted/x/y", 404, ""),
            ("/r/49999", 404, ""),
            ("/r/49998", 200, "a"),
            ("/moved/25000", 200, "b"),
        ],
    );
    for n in 1..=5 {
        assert!(applied(&p, n).contains("(one route)"), "{}", p.logs.text());
    }
    // A bad route is refused with its field and changes nothing.
    let (code, v) = api(
        adm,
        "PUT",
        "/apisix/admin/routes/r1",
        r#"{"paths":["/r/1"],"upstream":"nope"}"#,
    );
    assert_eq!(code, 400, "{v}");
    assert!(v.to_string().contains("routes/r1.upstream"), "{v}");
    expect_everywhere(p.addr, &[("/r/1", 200, "a")]);
}

#[test]
fn journaled_route_changes_survive_restart_and_match_a_full_rebuild() {
    let a = Origin::start("a", |_| Resp::text(200, "a").into());
    let b = Origin::start("b", |_| Resp::text(200, "b").into());
    let cfg = config(50, a.addr, b.addr);
    let mut p = Proc::start("route-updates-journal", &cfg);
    let adm = ops::listener(&p.logs, "admin");
    // Two routes of equal precedence for the same path: a full build ranks them by name, so
    // "m" (between "a..." and "r...") must beat "z" whichever order they were added in.
    for (name, up) in [("z", "a"), ("m", "b")] {
        let body = format!(r#"{{"paths":["/tie/*"],"upstream":"{up}"}}"#);
        let (code, v) = api(adm, "PUT", &format!("/apisix/admin/routes/{name}"), &body);
        assert_eq!(code, 201, "{v}");
    }
    let (code, v) = api(
        adm,
        "PUT",
        "/apisix/admin/routes/r3",
        r#"{"paths":["/three"],"upstream":"b"}"#,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(api(adm, "DELETE", "/apisix/admin/routes/r4", "").0, 200);
    for n in 1..=4 {
        assert!(applied(&p, n).contains("(one route)"), "{}", p.logs.text());
    }
    let checks = [
        ("/tie/1", 200, "b"),
        ("/three", 200, "b"),
        ("/r/3", 404, ""),
        ("/r/4", 404, ""),
        ("/r/5", 200, "a"),
    ];
    expect_everywhere(p.addr, &checks);
    // A change that is not to a route takes the full path and compacts the journal.
    let journal = p.path.with_extension("toml.state.json.journal");
    assert!(journal.exists(), "route changes are journaled");

    p.stop();
    let mut p2 = Proc::start("route-updates-journal", &cfg);
    assert!(
        p2.logs.text().contains("admin state loaded"),
        "{}",
        p2.logs.text()
    );
    expect_everywhere(p2.addr, &checks);
    let adm2 = ops::listener(&p2.logs, "admin");
    let (code, v) = api(
        adm2,
        "PUT",
        "/apisix/admin/upstreams/c",
        &format!(r#"{{"nodes":[{{"addr":"{}"}}]}}"#, b.addr),
    );
    assert_eq!(code, 201, "{v}");
    assert!(
        applied(&p2, 1).contains("(full rebuild)"),
        "{}",
        p2.logs.text()
    );
    assert!(
        !journal.exists(),
        "a full write folds the journal into the state file"
    );
    expect_everywhere(p2.addr, &checks);
    p2.stop();
    let p3 = Proc::start("route-updates-journal", &cfg);
    expect_everywhere(p3.addr, &checks);
}
