//! Metrics and the status listener against the real binary: counter values match the traffic
//! sent (per route, per status class, per shard, per upstream node), the exposition passes a
//! strict format check, and /status and /healthz answer.

use crate::harness::ops;

use std::time::Duration;

use crate::harness::ops::{get, http};
use crate::harness::prometheus::{scrape, scrape_until, value};
use crate::harness::{route, server, upstream, Gateway, Origin, Resp};

fn two_routes(origin: std::net::SocketAddr) -> String {
    format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n{}{}{}",
        server(&[("workers", "2")]),
        upstream("backend", &[origin], ""),
        route("ok", &["/ok/*"], "backend", ""),
        // A name that needs escaping in label values.
        route("we\\\"ird\\\\name", &["/fail"], "backend", "")
    )
}

#[test]
fn counters_match_traffic() {
    let origin = Origin::start("o", |r| {
        if r.path().starts_with("/fail") {
            Resp::text(503, "down").into()
        } else {
            Resp::text(200, "hello").into()
        }
    });
    let gw = Gateway::start(&two_routes(origin.addr));
    let status = ops::listener(&gw.stderr, "status");
    for i in 0..7 {
        assert_eq!(gw.client().get(&format!("/ok/{i}")).status, 200);
    }
    for _ in 0..3 {
        assert_eq!(gw.client().get("/fail").status, 503);
    }
    for _ in 0..2 {
        assert_eq!(gw.client().get("/nowhere").status, 404);
    }
    let weird = "we\"ird\\name";
    let samples = scrape_until(status, Duration::from_secs(5), |s| {
        value(s, "ringway_http_requests_total", &[]) == 12.0
    });
    let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    assert_eq!(
        v(
            "ringway_http_requests_total",
            &[("route", "ok"), ("code", "2xx")]
        ),
        7.0
    );
    assert_eq!(
        v(
            "ringway_http_requests_total",
            &[("route", weird), ("code", "5xx")]
        ),
        3.0
    );
    assert_eq!(
        v(
            "ringway_http_requests_total",
            &[("route", ""), ("code", "4xx")]
        ),
        2.0
    );
    assert_eq!(
        v(
            "ringway_http_request_duration_seconds_count",
            &[("route", "ok")]
        ),
        7.0
    );
    assert_eq!(
        v(
            "ringway_http_request_duration_seconds_bucket",
            &[("route", "ok"), ("le", "+Inf")]
        ),
        7.0
    );
    // Each request came on its own connection; both shards' counters are in the sum.
    assert_eq!(v("ringway_shard_requests_total", &[]), 12.0);
    assert_eq!(v("ringway_shards_reporting", &[]), 2.0);
    assert_eq!(v("ringway_connections_accepted_total", &[]), 12.0);
    assert_eq!(v("ringway_gateway_errors_total", &[]), 2.0);
    // One request per connection: no connection ever idled into a hold, so none raced.
    assert_eq!(v("ringway_connections_closed_on_hold_race_total", &[]), 0.0);
    let node = origin.addr.to_string();
    assert_eq!(
        v(
            "ringway_upstream_responses_total",
            &[("node", &node), ("result", "success")]
        ),
        10.0
    );
    assert_eq!(
        v("ringway_upstream_node_up", &[("upstream", "backend")]),
        1.0
    );
    assert_eq!(v("ringway_config_generation", &[]), 1.0);
}

#[test]
fn failed_node_is_counted_and_marked_down() {
    let live = Origin::start("live", |_| Resp::text(200, "ok").into());
    let dead = crate::harness::closed_port();
    let cfg = format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
        server(&[]),
        upstream(
            "pair",
            &[dead, live.addr],
            "max_fails = 1\nfail_timeout = \"30s\""
        ),
        route("r", &["/*"], "pair", "")
    );
    let gw = Gateway::start(&cfg);
    let status = ops::listener(&gw.stderr, "status");
    for _ in 0..4 {
        assert_eq!(gw.client().get("/x").status, 200);
    }
    let samples = scrape(status);
    let dead = dead.to_string();
    assert_eq!(
        value(
            &samples,
            "ringway_upstream_responses_total",
            &[("node", &dead), ("result", "failure")]
        ),
        1.0,
        "one connect failure, then the node is ejected"
    );
    assert_eq!(
        value(&samples, "ringway_upstream_node_up", &[("node", &dead)]),
        0.0
    );
    assert_eq!(
        value(
            &samples,
            "ringway_upstream_node_up",
            &[("node", &live.addr.to_string())]
        ),
        1.0
    );
}

#[test]
fn status_json_healthz_and_errors() {
    let origin = Origin::start("o", |_| Resp::text(200, "ok").into());
    let gw = Gateway::start(&two_routes(origin.addr));
    let status = ops::listener(&gw.stderr, "status");
    assert_eq!(gw.client().get("/ok/1").status, 200);
    let (code, body) = get(status, "/status");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
    assert_eq!(v["config_generation"], 1);
    assert_eq!(v["shards"], 2);
    assert_eq!(v["shards_reporting"], 2);
    assert_eq!(v["upstreams"]["backend"][0]["healthy"], true);
    assert!(v["requests"].as_u64().unwrap() >= 1);
    assert_eq!(get(status, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(status, "/nope").0, 404);
    assert_eq!(http(status, "POST", "/metrics", &[], "x").0, 405);
}

#[test]
fn status_config_is_validated() {
    let out = crate::harness::check_config(&format!(
        "{}[status]\nlisten = \"localhost\"\n",
        server(&[])
    ));
    assert!(out.all().contains("status.listen"), "{}", out.all());
    let out = crate::harness::check_config(&format!("{}[status]\nport = 1\n", server(&[])));
    assert!(out.all().contains("status"), "{}", out.all());
}

#[test]
fn exposition_checker_rejects_bad_text() {
    use crate::harness::prometheus::check_exposition as c;
    assert!(c("# TYPE a counter\na 1\n").is_ok());
    assert!(c("a 1").is_err(), "no trailing newline");
    assert!(c("a{b=\"x} 1\n").is_err(), "unterminated value");
    assert!(c("a{b=\"\\q\"} 1\n").is_err(), "bad escape");
    assert!(c("a{1b=\"x\"} 1\n").is_err(), "bad label name");
    assert!(c("a one\n").is_err(), "bad value");
    assert!(c("a 1\nb 1\na 2\n").is_err(), "split family");
    assert!(c("a 1\na 1\n").is_err(), "duplicate series");
    assert!(c("a 1\n# TYPE a counter\n").is_err(), "TYPE after samples");
    assert!(c(
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"
    )
    .is_err());
    assert!(
        c("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n").is_err(),
        "no +Inf"
    );
    assert!(c(
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n"
    )
    .is_ok());
}
