//! WebSocket upgrade tunnelling.
use crate::harness::*;
use std::io::{Read, Write};
use std::time::Duration;

const UPGRADE_REQ: &str =
    "GET /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn ws_origin(close_after_first_echo: bool) -> Origin {
    Origin::start("ws", move |r| {
        if r.header("upgrade")
            .map(|u| u.eq_ignore_ascii_case("websocket"))
            .unwrap_or(false)
        {
            Reply::Upgrade {
                close_after_first_echo,
            }
        } else {
            Resp::text(400, "expected upgrade").into()
        }
    })
}

fn read_exact_timeout(c: &mut Client, n: usize) -> Vec<u8> {
    let mut out = c.leftover().to_vec();
    assert!(out.len() <= n, "more tunnel bytes than expected");
    let mut buf = vec![0u8; 65536];
    while out.len() < n {
        let k = c.stream.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "reading echoed tunnel bytes ({} of {n} so far): {e}",
                out.len()
            )
        });
        assert!(
            k > 0,
            "tunnel closed after {} of {n} echoed bytes",
            out.len()
        );
        out.extend_from_slice(&buf[..k]);
    }
    out
}

fn upgrade(gw: &Gateway, origin: &Origin) -> Client {
    let mut c = gw.client();
    c.send(UPGRADE_REQ);
    let r = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("no 101 for websocket upgrade: {e}"));
    assert_eq!(
        r.status,
        101,
        "websocket upgrade: expected 101, got:\n{}{}",
        r.raw_head,
        r.body_str()
    );
    assert!(
        r.header("upgrade")
            .map(|u| u.eq_ignore_ascii_case("websocket"))
            .unwrap_or(false),
        "101 must carry `Upgrade: websocket` to the client:\n{}",
        r.raw_head
    );
    assert!(
        r.header_all("connection")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("upgrade")),
        "101 must carry `Connection: Upgrade` to the client:\n{}",
        r.raw_head
    );
    let req = origin.last_request();
    assert_eq!(
        req.header("upgrade").map(|s| s.to_ascii_lowercase()),
        Some("websocket".into()),
        "origin head:\n{}",
        req.head_str()
    );
    assert!(
        req.header_all("connection")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("upgrade")),
        "origin must receive `Connection: Upgrade`:\n{}",
        req.head_str()
    );
    assert!(
        req.has_header("sec-websocket-key"),
        "Sec-WebSocket-Key lost:\n{}",
        req.head_str()
    );
    c
}

#[test]
fn websocket_upgrade_and_echo_both_ways() {
    let origin = ws_origin(false);
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = upgrade(&gw, &origin);
    c.send(b"hello");
    assert_eq!(read_exact_timeout(&mut c, 5), b"hello");
    // a bigger binary payload
    let big: Vec<u8> = (0..200_000u64).map(pattern_byte).collect();
    let mut w = c.stream.try_clone().expect("clone stream");
    let big2 = big.clone();
    let writer = std::thread::spawn(move || w.write_all(&big2).map_err(|e| e.to_string()));
    let echoed = read_exact_timeout(&mut c, big.len());
    writer
        .join()
        .expect("writer thread")
        .expect("write tunnel payload");
    assert!(echoed == big, "tunnel corrupted a 200 KB payload");
}

#[test]
fn tunnel_closes_when_client_closes() {
    let origin = ws_origin(false);
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = upgrade(&gw, &origin);
    c.send(b"ping");
    assert_eq!(read_exact_timeout(&mut c, 4), b"ping");
    c.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown write");
    assert!(
        wait_until(Duration::from_secs(3), || origin.tunnels_closed() == 1),
        "client closed its side of the tunnel; the origin never saw EOF"
    );
    c.wait_closed(Duration::from_secs(3)).unwrap_or_else(|e| {
        panic!("after both sides closed, the client connection must close: {e}")
    });
}

#[test]
fn tunnel_closes_when_origin_closes() {
    let origin = ws_origin(true);
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = upgrade(&gw, &origin);
    c.send(b"bye");
    assert_eq!(read_exact_timeout(&mut c, 3), b"bye");
    c.wait_closed(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("origin closed the tunnel; client side must close too: {e}"));
}

#[test]
fn tunnel_idle_timeout_closes_tunnel() {
    let origin = ws_origin(false);
    let gw = Gateway::start(&simple_config(
        origin.addr,
        &[("tunnel_idle_timeout", "\"1s\"")],
    ));
    let mut c = upgrade(&gw, &origin);
    c.send(b"x");
    assert_eq!(read_exact_timeout(&mut c, 1), b"x");
    c.wait_closed(Duration::from_secs(4))
        .unwrap_or_else(|e| panic!("idle tunnel with tunnel_idle_timeout=1s: {e}"));
    assert!(
        wait_until(Duration::from_secs(3), || origin.tunnels_closed() == 1),
        "idle tunnel closed toward the client but not toward the origin"
    );
}

#[test]
fn upgrade_refused_by_origin_is_a_normal_response() {
    let origin = Origin::start("o", |r| {
        if r.path() == "/ws" {
            Resp::text(403, "no").into()
        } else {
            Resp::text(200, "plain").into()
        }
    });
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    c.send(UPGRADE_REQ);
    let r = c.read_response();
    assert_eq!(r.status, 403);
    assert_eq!(r.body_str(), "no");
}
