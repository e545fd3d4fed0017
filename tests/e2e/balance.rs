//! Load-balancing algorithms.
use crate::harness::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn round_robin_respects_weights_3_to_1() {
    let a = Origin::named("a");
    let b = Origin::named("b");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        server(&[("workers", "1")]),
        upstream_weighted(
            "backend",
            &[(a.addr, 3), (b.addr, 1)],
            "balance = \"round_robin\""
        ),
        route("r", &["/*"], "backend", "")
    ));
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut c = gw.client();
    for i in 0..400 {
        let r = c.get(&format!("/{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.raw_head);
        *counts.entry(r.body_str()).or_default() += 1;
    }
    let ca = counts.get("a").copied().unwrap_or(0);
    let cb = counts.get("b").copied().unwrap_or(0);
    assert_eq!(ca + cb, 400, "responses from unexpected nodes: {counts:?}");
    assert!(
        (292..=308).contains(&ca),
        "weights 3:1 over 400 requests: a={ca} b={cb} (expected 300/100 +-2%)"
    );
    assert_eq!(a.request_count(), ca);
    assert_eq!(b.request_count(), cb);
}

#[test]
fn round_robin_spreads_over_fresh_connections_too() {
    let a = Origin::named("a");
    let b = Origin::named("b");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        server(&[]),
        upstream("backend", &[a.addr, b.addr], ""),
        route("r", &["/*"], "backend", "")
    ));
    for i in 0..40 {
        let r = one_shot(gw.addr, get_req(&format!("/{i}"), "example.com"));
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        a.request_count(),
        20,
        "equal weights, 40 requests over new client connections"
    );
    assert_eq!(b.request_count(), 20);
}

#[test]
fn least_conn_prefers_idle_node() {
    let slow = Origin::start("slow", |_| {
        Resp::text(200, "slow")
            .delay(Duration::from_millis(300))
            .into()
    });
    let fast = Origin::named("fast");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        server(&[]),
        upstream(
            "backend",
            &[slow.addr, fast.addr],
            "balance = \"least_conn\""
        ),
        route("r", &["/*"], "backend", "")
    ));
    let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let mut handles = Vec::new();
    for t in 0..8 {
        let counts = counts.clone();
        let addr = gw.addr;
        handles.push(std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            for i in 0..12 {
                let r = c.get(&format!("/{t}/{i}"));
                assert_eq!(r.status, 200, "{}", r.raw_head);
                *counts
                    .lock()
                    .expect("lock")
                    .entry(r.body_str())
                    .or_default() += 1;
            }
        }));
    }
    for h in handles {
        h.join().expect("client thread panicked");
    }
    let counts = counts.lock().expect("lock").clone();
    let s = counts.get("slow").copied().unwrap_or(0);
    let f = counts.get("fast").copied().unwrap_or(0);
    assert_eq!(s + f, 96, "{counts:?}");
    assert!(
        f >= 3 * s,
        "least_conn with one node busy for 300 ms per request: fast={f} slow={s}; the idle node should get most traffic"
    );
}

#[test]
fn chash_header_is_sticky_and_spreads() {
    let nodes: Vec<Origin> = (0..3).map(|i| Origin::named(&format!("n{i}"))).collect();
    let addrs: Vec<_> = nodes.iter().map(|o| o.addr).collect();
    let gw = Gateway::start(&format!(
        "{}{}{}",
        server(&[]),
        upstream(
            "backend",
            &addrs,
            "balance = \"chash\"\nhash_on = \"header:X-User\""
        ),
        route("r", &["/*"], "backend", "")
    ));
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut used: HashMap<String, usize> = HashMap::new();
    let mut keep = Client::connect(gw.addr);
    for round in 0..4 {
        for u in 0..30 {
            let raw =
                format!("GET /r{round} HTTP/1.1\r\nHost: example.com\r\nX-User: user-{u}\r\n\r\n");
            // alternate between a kept connection and fresh connections
            let r = if round % 2 == 0 {
                keep.request(&raw)
            } else {
                one_shot(gw.addr, &raw)
            };
            assert_eq!(r.status, 200);
            let node = r.body_str();
            if let Some(prev) = seen.get(&format!("user-{u}")) {
                assert_eq!(
                    prev, &node,
                    "chash: user-{u} moved from {prev} to {node} in round {round}"
                );
            } else {
                seen.insert(format!("user-{u}"), node.clone());
                *used.entry(node).or_default() += 1;
            }
        }
    }
    assert!(
        used.len() >= 2,
        "chash over 3 nodes: 30 different users all landed on {used:?}"
    );
    // requests without the header still get served
    let r = one_shot(gw.addr, get_req("/nohdr", "example.com"));
    assert_eq!(r.status, 200);
}

#[test]
fn chash_uri_is_sticky() {
    let nodes: Vec<Origin> = (0..3).map(|i| Origin::named(&format!("n{i}"))).collect();
    let addrs: Vec<_> = nodes.iter().map(|o| o.addr).collect();
    let gw = Gateway::start(&format!(
        "{}{}{}",
        server(&[]),
        upstream("backend", &addrs, "balance = \"chash\"\nhash_on = \"uri\""),
        route("r", &["/*"], "backend", "")
    ));
    let mut c = gw.client();
    let mut used = std::collections::HashSet::new();
    for p in 0..20 {
        let first = c.get(&format!("/item/{p}")).body_str();
        for _ in 0..3 {
            assert_eq!(
                c.get(&format!("/item/{p}")).body_str(),
                first,
                "chash uri: /item/{p} moved"
            );
        }
        used.insert(first);
    }
    assert!(used.len() >= 2, "chash uri: 20 URIs all on {used:?}");
}
