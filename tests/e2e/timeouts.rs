//! Client-side and upstream-side timeouts.
use crate::harness::*;
use std::time::{Duration, Instant};

#[test]
fn client_header_timeout_gives_408() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(
        origin.addr,
        &[("client_header_timeout", "\"1s\"")],
    ));
    let mut c = gw.client();
    let t0 = Instant::now();
    c.send("GET / HTTP/1.1\r\nHost: exam"); // half a head
    let r = c.try_read_response().unwrap_or_else(|e| {
        panic!(
            "half a head with client_header_timeout=1s: expected 408, got {e} after {:?}",
            t0.elapsed()
        )
    });
    let el = t0.elapsed();
    r.assert_gateway_error(408);
    assert!(
        el >= Duration::from_millis(800),
        "408 came too early ({el:?}) for a 1s timeout"
    );
    assert!(
        el <= Duration::from_secs(4),
        "408 came too late ({el:?}) for a 1s timeout"
    );
    c.wait_closed(std::time::Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connection not closed after 408: {e}"));
    assert_eq!(origin.bytes_in(), 0);
}

#[test]
fn client_header_timeout_with_trickled_head() {
    // Bytes keep arriving, but the whole head takes longer than the timeout.
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(
        origin.addr,
        &[("client_header_timeout", "\"1s\"")],
    ));
    let mut c = gw.client();
    let t0 = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    for b in head.iter() {
        if c.try_send([*b]).is_err() || t0.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(60));
    }
    let res = c.try_read_response();
    match res {
        Ok(r) => r.assert_gateway_error(408),
        Err(e) => assert!(
            e.got() == 0 && !e.is_timeout(),
            "trickled head longer than client_header_timeout: expected 408 (or close), got {e}"
        ),
    }
    assert!(t0.elapsed() < Duration::from_secs(6));
    assert_eq!(
        origin.request_count(),
        0,
        "origin must not get a request whose head took longer than client_header_timeout"
    );
}

#[test]
fn client_body_timeout_gives_408() {
    let origin = Origin::echo_body("o");
    let gw = Gateway::start(&simple_config(
        origin.addr,
        &[("client_body_timeout", "\"1s\"")],
    ));
    let mut c = gw.client();
    let t0 = Instant::now();
    c.send("POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\nabc");
    let r = c.try_read_response().unwrap_or_else(|e| {
        panic!(
            "CL 10 with 3 bytes and client_body_timeout=1s: expected 408, got {e} after {:?}",
            t0.elapsed()
        )
    });
    let el = t0.elapsed();
    r.assert_gateway_error(408);
    assert!(el >= Duration::from_millis(800), "408 too early ({el:?})");
    assert!(el <= Duration::from_secs(4), "408 too late ({el:?})");
    c.wait_closed(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connection not closed after 408: {e}"));
    assert_eq!(
        origin.request_count(),
        0,
        "origin got a complete request from a truncated body"
    );
}

#[test]
fn upstream_connect_refused_gives_502() {
    let dead = closed_port();
    let gw = Gateway::start(&format!(
        "{}{}{}",
        server(&[]),
        upstream("backend", &[dead], "retries = 0"),
        route("r", &["/*"], "backend", "")
    ));
    let t0 = Instant::now();
    let r = one_shot(gw.addr, get_req("/", "example.com"));
    r.assert_gateway_error(502);
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "connect refused should fail fast, took {:?}",
        t0.elapsed()
    );
}

#[test]
fn upstream_read_timeout_gives_504() {
    let origin = Origin::start("o", |_| Reply::Hang);
    let gw = Gateway::start(&format!(
        "{}{}{}",
        server(&[]),
        upstream(
            "backend",
            &[origin.addr],
            "read_timeout = \"1s\"\nretries = 0"
        ),
        route("r", &["/*"], "backend", "")
    ));
    let mut c = gw.client();
    let t0 = Instant::now();
    c.send(get_req("/", "example.com"));
    let r = c.try_read_response().unwrap_or_else(|e| {
        panic!(
            "origin never answers, read_timeout=1s: expected 504, got {e} after {:?}",
            t0.elapsed()
        )
    });
    let el = t0.elapsed();
    r.assert_gateway_error(504);
    assert!(el >= Duration::from_millis(800), "504 too early ({el:?})");
    assert!(el <= Duration::from_secs(4), "504 too late ({el:?})");
    assert_eq!(origin.request_count(), 1);
}

#[test]
fn upstream_read_timeout_applies_between_body_reads_not_total() {
    // The origin sends a chunk every 300 ms for ~2 s: each gap is under the
    // 1 s read_timeout, so the response must complete.
    let origin = SlowDrip::start();
    let gw = Gateway::start(&format!(
        "{}{}{}",
        server(&[]),
        upstream(
            "backend",
            &[origin.addr],
            "read_timeout = \"1s\"\nretries = 0"
        ),
        route("r", &["/*"], "backend", "")
    ));
    let r = one_shot(gw.addr, get_req("/", "example.com"));
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(r.body_str(), "abcdefg", "dripped body");
}

/// Origin that sends a chunked body one chunk every 300 ms.
struct SlowDrip {
    addr: std::net::SocketAddr,
}

impl SlowDrip {
    fn start() -> SlowDrip {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind drip origin");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                );
                for ch in "abcdefg".chars() {
                    std::thread::sleep(Duration::from_millis(300));
                    let _ = s.write_all(format!("1\r\n{ch}\r\n").as_bytes());
                }
                let _ = s.write_all(b"0\r\n\r\n");
            }
        });
        SlowDrip { addr }
    }
}

#[test]
fn keepalive_timeout_closes_idle_client_connection() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(
        origin.addr,
        &[("keepalive_timeout", "\"2s\"")],
    ));
    let mut c = gw.client();
    assert_eq!(c.get("/").status, 200);
    let t0 = Instant::now();
    assert!(
        c.stays_open_for(Duration::from_millis(1000)),
        "idle connection closed before keepalive_timeout=2s"
    );
    let closed = c.wait_closed(Duration::from_secs(4));
    let el = t0.elapsed();
    closed.unwrap_or_else(|e| {
        panic!("idle keep-alive connection not closed after keepalive_timeout=2s: {e}")
    });
    assert!(
        el >= Duration::from_millis(1500),
        "closed too early: {el:?}"
    );
}

#[test]
fn idle_connection_without_any_request_is_closed() {
    // A connection that never sends anything is bounded by client_header_timeout
    // (or keepalive_timeout); it must not stay open forever.
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(
        origin.addr,
        &[
            ("client_header_timeout", "\"1s\""),
            ("keepalive_timeout", "\"1s\""),
        ],
    ));
    let mut c = gw.client();
    c.set_read_timeout(Duration::from_secs(5));
    let t0 = Instant::now();
    match c.try_read_response() {
        Ok(r) => r.assert_gateway_error(408),
        Err(e) => assert!(
            e.got() == 0 && !e.is_timeout(),
            "silent connection with 1s header/keepalive timeouts: expected close (or 408), got {e}"
        ),
    }
    let el = t0.elapsed();
    assert!(el >= Duration::from_millis(700), "closed too early: {el:?}");
    assert!(el <= Duration::from_secs(4), "closed too late: {el:?}");
}
