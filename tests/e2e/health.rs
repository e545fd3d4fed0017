//! Retries and passive health checks.
use crate::harness::*;
use std::time::{Duration, Instant};

fn two_node_config(
    dead: std::net::SocketAddr,
    live: std::net::SocketAddr,
    fail_timeout: &str,
) -> String {
    format!(
        "{}{}{}",
        server(&[]),
        upstream(
            "backend",
            &[dead, live],
            &format!("retries = 1\nmax_fails = 1\nfail_timeout = \"{fail_timeout}\"\nconnect_timeout = \"1s\""),
        ),
        route("r", &["/*"], "backend", "")
    )
}

#[test]
fn dead_node_is_retried_then_ejected() {
    let dead = closed_port();
    let live = Origin::named("live");
    let gw = Gateway::start(&two_node_config(dead, live.addr, "10s"));
    let mut c = gw.client();
    for i in 0..10 {
        let t0 = Instant::now();
        let r = c.get(&format!("/{i}"));
        assert_eq!(
            r.status,
            200,
            "request {i} with one dead node and retries=1: {}{}",
            r.raw_head,
            r.body_str()
        );
        assert_eq!(r.body_str(), "live");
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "request {i} took {:?}",
            t0.elapsed()
        );
    }
    // Now bring the dead port back: within fail_timeout (10s) it is still
    // ejected and must get no traffic.
    let revived = Origin::start_with(&dead.to_string(), "revived", OriginOpts::default(), |_| {
        Resp::text(200, "revived").into()
    })
    .expect("re-bind the dead node's port");
    for i in 0..20 {
        let r = c.get(&format!("/after/{i}"));
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body_str(),
            "live",
            "request {i}: ejected node got traffic within fail_timeout"
        );
    }
    assert_eq!(
        revived.request_count(),
        0,
        "node ejected after max_fails=1 got requests within fail_timeout=10s"
    );
    assert_eq!(live.request_count(), 30);
}

#[test]
fn ejected_node_comes_back_after_fail_timeout() {
    let dead = closed_port();
    let live = Origin::named("live");
    let gw = Gateway::start(&two_node_config(dead, live.addr, "1s"));
    let mut c = gw.client();
    for i in 0..6 {
        let r = c.get(&format!("/{i}"));
        assert_eq!(r.status, 200, "request {i}: {}{}", r.raw_head, r.body_str());
    }
    let revived = Origin::start_with(&dead.to_string(), "revived", OriginOpts::default(), |_| {
        Resp::text(200, "revived").into()
    })
    .expect("re-bind the dead node's port");
    std::thread::sleep(Duration::from_millis(1600));
    let mut got_revived = 0;
    for i in 0..20 {
        let r = c.get(&format!("/back/{i}"));
        assert_eq!(r.status, 200);
        if r.body_str() == "revived" {
            got_revived += 1;
        }
    }
    assert!(
        got_revived >= 5,
        "node back up after fail_timeout=1s got only {got_revived} of 20 round-robin requests"
    );
    assert_eq!(revived.request_count(), got_revived);
}

#[test]
fn all_nodes_dead_gives_502() {
    let d1 = closed_port();
    let d2 = closed_port();
    let gw = Gateway::start(&format!(
        "{}{}{}",
        server(&[]),
        upstream(
            "backend",
            &[d1, d2],
            "retries = 1\nmax_fails = 1\nfail_timeout = \"10s\""
        ),
        route("r", &["/*"], "backend", "")
    ));
    let mut c = gw.client();
    for i in 0..3 {
        let t0 = Instant::now();
        let r = c.get(&format!("/{i}"));
        r.assert_gateway_error(502);
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "502 took {:?}",
            t0.elapsed()
        );
        if r.connection_close() {
            c = gw.client();
        }
    }
}

#[test]
fn upstream_closing_without_response_gives_502() {
    let origin = Origin::start("o", |_| Reply::Close);
    let gw = Gateway::start(&format!(
        "{}{}{}",
        server(&[]),
        upstream("backend", &[origin.addr], "retries = 0"),
        route("r", &["/*"], "backend", "")
    ));
    let r = one_shot(gw.addr, get_req("/", "example.com"));
    r.assert_gateway_error(502);
}

#[test]
fn reset_before_response_is_retried_on_next_node() {
    let bad = Origin::start("bad", |_| Reply::Close);
    let good = Origin::named("good");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        server(&[]),
        upstream(
            "backend",
            &[bad.addr, good.addr],
            "retries = 1\nmax_fails = 100"
        ),
        route("r", &["/*"], "backend", "")
    ));
    let mut c = gw.client();
    for i in 0..6 {
        let r = c.get(&format!("/{i}"));
        assert_eq!(r.status, 200, "request {i}: upstream closed before any response byte, retries=1 should move to the next node: {}{}", r.raw_head, r.body_str());
        assert_eq!(r.body_str(), "good");
    }
    assert!(
        bad.request_count() >= 1,
        "round robin should have tried the bad node at least once"
    );
}

#[test]
fn no_retry_after_response_bytes() {
    // The origin sends a partial response then closes: the gateway must not
    // replay the request on another node (the client has nothing sane to get).
    let partial = Origin::start("partial", |_| Reply::Raw {
        bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort".to_vec(),
        close: true,
    });
    let gw = Gateway::start(&format!(
        "{}{}{}",
        server(&[]),
        upstream("backend", &[partial.addr], "retries = 0"),
        route("r", &["/*"], "backend", "")
    ));
    let mut c = gw.client();
    c.send(get_req("/", "example.com"));
    match c.try_read_response() {
        Ok(r) => assert_eq!(
            r.status, 502,
            "upstream sent 5 of 100 body bytes and closed: the client must get a truncated response (then close) or a 502, got {} with body {:?}",
            r.status,
            r.body_str()
        ),
        Err(e) => assert!(!e.is_timeout(), "gateway should close the client connection, not hang: {e}"),
    }
    assert_eq!(partial.request_count(), 1);
}
