//! Active health checks against the real binary: failing nodes leave and rejoin rotation on every
//! shard, TCP probes, one prober per gateway, verdicts across reloads, config key paths.

use crate::harness::ops;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::prometheus::{scrape, value};
use crate::harness::{
    check_config, route, server, upstream, wait_until, Gateway, Origin, OriginOpts, Resp,
};

/// An origin answering `/health` with 200, or 500 while `failing` is set; anything else 200 `name`.
fn origin(name: &'static str, failing: Arc<AtomicBool>) -> Origin {
    Origin::start(name, move |r| {
        if r.path() == "/health" && failing.load(SeqCst) {
            Resp::text(500, "sick").into()
        } else {
            Resp::text(200, name).into()
        }
    })
}

fn app_requests(o: &Origin) -> usize {
    o.requests()
        .iter()
        .filter(|r| r.path().starts_with("/app"))
        .count()
}

fn health_requests(o: &Origin) -> usize {
    o.requests()
        .iter()
        .filter(|r| r.path() == "/health")
        .count()
}

const HTTP_CHECK: &str = "max_fails = 0\n[upstreams.checks.active]\nhttp_path = \"/health\"\n\
    timeout = \"500ms\"\nhealthy = { interval = \"100ms\", successes = 2 }\n\
    unhealthy = { interval = \"100ms\", http_failures = 2 }\n";

fn config(workers: &str, nodes: &[SocketAddr], checks: &str) -> String {
    format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
        server(&[("workers", workers)]),
        upstream("backend", nodes, checks),
        route("app", &["/app/*"], "backend", "")
    )
}

fn node_up(status: SocketAddr, node: SocketAddr) -> f64 {
    value(
        &scrape(status),
        "ringway_upstream_node_up",
        &[("upstream", "backend"), ("node", &node.to_string())],
    )
}

/// Waits for the verdict, then scrapes once more: that scrape's snapshot requests reach each
/// shard after the verdict's control message (sent before the verdict is visible), so once it
/// answers with every shard, every shard routes by the verdict.
fn wait_node_up(status: SocketAddr, node: SocketAddr, want: f64) {
    let ok = wait_until(Duration::from_secs(10), || node_up(status, node) == want);
    assert!(ok, "node {node} never reached up={want}");
    let s = scrape(status);
    assert_eq!(
        value(&s, "ringway_shards_reporting", &[]),
        value(&s, "ringway_shards", &[])
    );
    assert_eq!(
        value(
            &s,
            "ringway_upstream_node_up",
            &[("node", &node.to_string())]
        ),
        want
    );
}

/// Round-robin over both nodes; returns how many of `n` requests `o` served.
fn spread(get: impl Fn() -> (u16, String), o: &Origin, n: usize) -> usize {
    let before = app_requests(o);
    for _ in 0..n {
        let (code, _) = get();
        assert_eq!(code, 200);
    }
    app_requests(o) - before
}

#[test]
fn failing_probe_takes_node_out_on_every_shard_and_it_comes_back() {
    let sick = Arc::new(AtomicBool::new(false));
    let a = origin("a", sick.clone());
    let b = origin("b", Arc::new(AtomicBool::new(false)));
    let gw = Gateway::start(&config("4", &[a.addr, b.addr], HTTP_CHECK));
    let status = ops::listener(&gw.stderr, "status");
    let get = || {
        let r = gw.client().get("/app/x");
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    };
    assert!(wait_until(Duration::from_secs(5), || health_requests(&a) >= 2));
    wait_node_up(status, a.addr, 1.0);
    assert!(spread(get, &a, 20) > 0, "a healthy node takes traffic");

    sick.store(true, SeqCst);
    wait_node_up(status, a.addr, 0.0);
    let (_, st) = ops::get(status, "/status");
    let st: serde_json::Value = serde_json::from_str(&st).expect("status json");
    let node_a = st["upstreams"]["backend"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["node"] == a.addr.to_string()))
        .cloned()
        .expect("node a in /status");
    assert_eq!(node_a["active_healthy"], false, "{st}");
    assert_eq!(node_a["healthy"], false, "{st}");
    // 4 shards, fresh connections: whichever shard takes a request, none sends it to `a`.
    assert_eq!(
        spread(get, &a, 40),
        0,
        "a node down by active checks gets no traffic"
    );
    let samples = scrape(status);
    let fails = value(
        &samples,
        "ringway_health_checks_total",
        &[("node", &a.addr.to_string()), ("result", "fail")],
    );
    assert!(fails >= 2.0, "failed probes counted: {fails}");

    sick.store(false, SeqCst);
    wait_node_up(status, a.addr, 1.0);
    assert!(
        spread(get, &a, 20) > 0,
        "a recovered node takes traffic again"
    );
}

#[test]
fn every_node_down_still_serves_from_all() {
    let sick = Arc::new(AtomicBool::new(true));
    let a = origin("a", sick.clone());
    let b = origin("b", sick.clone());
    let gw = Gateway::start(&config("2", &[a.addr, b.addr], HTTP_CHECK));
    let status = ops::listener(&gw.stderr, "status");
    wait_node_up(status, a.addr, 0.0);
    wait_node_up(status, b.addr, 0.0);
    let get = || (gw.client().get("/app/y").status, String::new());
    // Fail open, as with passive ejection: both still get requests.
    assert!(spread(get, &a, 20) > 0);
    assert!(spread(get, &b, 20) > 0);
}

#[test]
fn probes_run_once_per_gateway_not_once_per_shard() {
    let a = origin("a", Arc::new(AtomicBool::new(false)));
    let checks = "[upstreams.checks.active]\nhttp_path = \"/health\"\n\
        healthy = { interval = \"200ms\" }\n";
    let gw = Gateway::start(&config("4", &[a.addr], checks));
    let _status = ops::listener(&gw.stderr, "status");
    assert!(wait_until(Duration::from_secs(5), || health_requests(&a) >= 1));
    let before = health_requests(&a);
    std::thread::sleep(Duration::from_secs(2));
    let n = health_requests(&a) - before;
    // One prober: ~10 probes in 2 s (fewer on a loaded machine). Four per-shard probers: ~40.
    assert!(
        (2..=15).contains(&n),
        "{n} probes in 2 s at a 200 ms interval"
    );
}

#[test]
fn tcp_probe_marks_a_closed_port_down_and_up_when_it_opens() {
    let a = origin("a", Arc::new(AtomicBool::new(false)));
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let checks = "max_fails = 0\n[upstreams.checks.active]\ntype = \"tcp\"\ntimeout = \"300ms\"\n\
        healthy = { interval = \"100ms\", successes = 2 }\n\
        unhealthy = { interval = \"100ms\", tcp_failures = 2 }\n";
    let gw = Gateway::start(&config("2", &[a.addr, closed], checks));
    let status = ops::listener(&gw.stderr, "status");
    wait_node_up(status, closed, 0.0);
    wait_node_up(status, a.addr, 1.0);
    let samples = scrape(status);
    let node = closed.to_string();
    assert!(
        value(
            &samples,
            "ringway_health_checks_total",
            &[("node", &node), ("result", "fail")]
        ) >= 2.0
    );
    let get = || (gw.client().get("/app/z").status, String::new());
    assert_eq!(spread(get, &a, 10), 10, "everything goes to the open node");

    let c = Origin::start_with(&node, "c", OriginOpts::default(), |_| {
        Resp::text(200, "c").into()
    })
    .expect("reopen the closed port");
    wait_node_up(status, closed, 1.0);
    assert!(spread(get, &c, 20) > 0, "the reopened node takes traffic");
}

#[test]
fn verdicts_follow_config_reloads() {
    let sick = Arc::new(AtomicBool::new(true));
    let a = origin("a", sick.clone());
    let b = origin("b", Arc::new(AtomicBool::new(false)));
    let p = ops::Proc::start("active-health", &config("2", &[a.addr, b.addr], HTTP_CHECK));
    let status = ops::listener(&p.logs, "status");
    wait_node_up(status, a.addr, 0.0);
    let get = || ops::get(p.addr, "/app/r");
    assert_eq!(spread(get, &a, 20), 0);

    // A changed upstream is rebuilt on every shard (all nodes up); the prober re-sends `a` down.
    let changed = HTTP_CHECK.replace("max_fails = 0\n", "max_fails = 0\nretries = 1\n");
    p.rewrite(&config("2", &[a.addr, b.addr], &changed));
    assert!(p.reload(1).contains("config reloaded"), "{}", p.logs.text());
    assert_eq!(node_up(status, a.addr), 0.0);
    assert_eq!(spread(get, &a, 20), 0, "still out after the reload");

    // Checks removed: the node is back and its check series are gone.
    p.rewrite(&config("2", &[a.addr, b.addr], "max_fails = 0\n"));
    assert!(p.reload(2).contains("config reloaded"), "{}", p.logs.text());
    wait_node_up(status, a.addr, 1.0);
    assert!(spread(get, &a, 20) > 0);
    let checks = scrape(status)
        .iter()
        .filter(|s| s.name == "ringway_health_checks_total")
        .count();
    assert_eq!(checks, 0, "no check series once checks are removed");
}

#[test]
fn config_errors_name_the_key_path() {
    let nodes = ["127.0.0.1:1".parse().expect("addr")];
    let cases = [
        ("type = \"udp\"", "upstreams[0].checks.active.type"),
        (
            "http_path = \"no-slash\"",
            "upstreams[0].checks.active.http_path",
        ),
        (
            "healthy = { http_statuses = [200, 99] }",
            "upstreams[0].checks.active.healthy.http_statuses[1]",
        ),
        (
            "unhealthy = { timeouts = 0 }",
            "upstreams[0].checks.active.unhealthy.timeouts",
        ),
        (
            "unhealthy = { bogus = 1 }",
            "upstreams[0].checks.active.unhealthy",
        ),
        ("timeout = \"soon\"", "upstreams[0].checks.active.timeout"),
    ];
    for (line, path) in cases {
        let cfg = config("1", &nodes, &format!("[upstreams.checks.active]\n{line}\n"));
        let out = check_config(&cfg);
        assert!(!out.status.success(), "{line} accepted");
        assert!(
            out.all().contains(path),
            "{line}: want {path} in\n{}",
            out.all()
        );
    }
    let ok = config("1", &nodes, "[upstreams.checks.active]\ntype = \"tcp\"\n");
    let out = check_config(&ok);
    assert!(out.status.success(), "{}", out.all());
}
