//! Client and upstream keep-alive behaviour.
use crate::harness::*;
use std::time::Duration;

#[test]
fn many_requests_reuse_few_upstream_connections() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut total = 0;
    for c in 0..4 {
        let mut client = gw.client();
        for i in 0..50 {
            let path = format!("/ka/{c}/{i}");
            let r = client.get(&path);
            assert_eq!(r.status, 200, "request {path}: {}", r.raw_head);
            assert_eq!(r.body_str(), path, "wrong body for {path}");
            assert!(
                !r.connection_close(),
                "gateway closed a keep-alive client connection: {}",
                r.raw_head
            );
            total += 1;
        }
    }
    assert_eq!(origin.request_count(), total);
    let conns = origin.conns();
    assert!(
        conns <= 8,
        "{total} sequential requests over 4 client connections opened {conns} upstream connections; expected pooled reuse (<= 8)"
    );
}

#[test]
fn http10_without_keepalive_is_closed() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    c.send("GET /old HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(r.body_str(), "/old");
    c.wait_closed(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("HTTP/1.0 request without keep-alive: gateway must close the connection after the response: {e}"));
}

#[test]
fn client_connection_close_closes_after_response() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    c.send("GET /bye HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(r.body_str(), "/bye");
    c.wait_closed(Duration::from_secs(3)).unwrap_or_else(|e| {
        panic!("client sent `Connection: close`; gateway must close after the response: {e}")
    });
}

#[test]
fn upstream_connection_close_is_honoured() {
    let origin = Origin::start("o", |r| Resp::text(200, &r.target).close().into());
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    for i in 0..3 {
        let path = format!("/uc/{i}");
        let r = c.get(&path);
        assert_eq!(
            r.status, 200,
            "request {i} after upstream `Connection: close`: {}",
            r.raw_head
        );
        assert_eq!(r.body_str(), path);
        // give the gateway a moment to notice the upstream close before the next request
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(origin.request_count(), 3);
    assert_eq!(
        origin.conns(),
        3,
        "origin closed every connection (`Connection: close`), so each request needs a fresh upstream connection"
    );
}

#[test]
fn upstream_close_without_sleep_still_works() {
    // Same as above but back-to-back: a gateway that reuses the closed pooled
    // connection must not surface an error to the client.
    let origin = Origin::start("o", |r| Resp::text(200, &r.target).close().into());
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    for i in 0..10 {
        let path = format!("/fast/{i}");
        let r = c.get(&path);
        assert_eq!(
            r.status,
            200,
            "request {i}: {}\n{}",
            r.raw_head,
            r.body_str()
        );
        assert_eq!(r.body_str(), path);
    }
}

#[test]
fn keepalive_client_connection_serves_sequential_requests_with_bodies() {
    let origin = Origin::echo_body("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    for i in 0..20 {
        let body = format!("body-{i}-").repeat(i + 1);
        let req = format!(
            "POST /p HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = c.request(req);
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), body);
    }
}
