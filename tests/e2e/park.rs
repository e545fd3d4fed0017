//! Idle plain keep-alive connections parked with no task (proxy/park.rs): each is answered
//! when it sends again, the keep-alive timeout and a drain close them, and a client's close
//! frees them; the `ringway_connections_parked` gauge shows them. Runs on either driver.

use crate::harness::ops;
use crate::harness::prometheus::{scrape, value};
use crate::harness::upgrade::Successor;
use crate::harness::*;
use std::net::SocketAddr;
use std::time::Duration;

/// One shard (so one park), a status listener, and `extra` server settings.
fn config(origin: SocketAddr, extra: &[(&str, &str)]) -> String {
    format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
        server(extra),
        upstream("backend", &[origin], ""),
        route("all", &["/*"], "backend", "")
    )
}

/// (open, parked) connections as /metrics reports them.
fn gauges(status: SocketAddr) -> (f64, f64) {
    let s = scrape(status);
    (
        value(&s, "ringway_connections_active", &[]),
        value(&s, "ringway_connections_parked", &[]),
    )
}

/// Waits until /metrics shows `open` open connections of which `parked` are parked.
fn wait_gauges(status: SocketAddr, open: f64, parked: f64, why: &str) {
    let mut last = (0.0, 0.0);
    assert!(
        wait_until(Duration::from_secs(10), || {
            last = gauges(status);
            last == (open, parked)
        }),
        "{why}: wanted {open} open / {parked} parked, /metrics says {last:?}"
    );
}

/// `n` clients, each served once (and so idle, and parked once past the 500 ms hold).
fn served_clients(gw: &Gateway, n: usize, tag: &str) -> Vec<Client> {
    (0..n)
        .map(|i| {
            let mut c = gw.client();
            let path = format!("/{tag}/{i}");
            let r = c.get(&path);
            assert_eq!((r.status, r.body_str()), (200, path));
            c
        })
        .collect()
}

#[test]
fn parked_connections_are_answered_when_they_send_again() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&config(origin.addr, &[]));
    let status = ops::listener(&gw.stderr, "status");
    let mut clients = served_clients(&gw, 40, "first");
    wait_gauges(status, 40.0, 40.0, "40 idle clients past the hold");
    // Each wakes with a whole request and is answered, then sends a second on the same
    // connection; a few send a head in two pieces, one a pipelined pair.
    for (i, c) in clients.iter_mut().enumerate() {
        let path = format!("/again/{i}");
        match i % 4 {
            0 => {
                c.send(format!("GET {path} HTTP/1.1\r\nHo"));
                std::thread::sleep(Duration::from_millis(20));
                c.send("st: example.com\r\n\r\n");
            }
            1 => c.send(format!(
                "GET {path} HTTP/1.1\r\nHost: a\r\n\r\nGET {path}/p HTTP/1.1\r\nHost: a\r\n\r\n"
            )),
            _ => c.send(get_req(&path, "example.com")),
        }
        let r = c.read_response();
        assert_eq!((r.status, r.body_str()), (200, path.clone()), "woken {i}");
        if i % 4 == 1 {
            let r = c.read_response();
            assert_eq!(r.body_str(), format!("{path}/p"), "pipelined after a wake");
        }
        let r = c.get(&format!("{path}/second"));
        assert_eq!(r.body_str(), format!("{path}/second"), "second request {i}");
        assert!(!r.connection_close(), "{}", r.raw_head);
    }
    // All idle again: parked again, none lost.
    wait_gauges(status, 40.0, 40.0, "the same 40 idle again");
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.get(&format!("/third/{i}")).status, 200, "third {i}");
    }
}

#[test]
fn the_keep_alive_timeout_closes_parked_connections() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&config(origin.addr, &[("keepalive_timeout", "\"5s\"")]));
    let status = ops::listener(&gw.stderr, "status");
    let mut clients = served_clients(&gw, 20, "t");
    wait_gauges(status, 20.0, 20.0, "20 idle clients past the hold");
    for (i, c) in clients.iter_mut().enumerate() {
        c.wait_closed(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("parked client {i} past keepalive_timeout: {e}"));
    }
    wait_gauges(status, 0.0, 0.0, "after the keep-alive timeout");
    assert_eq!(gw.client().get("/after").status, 200);
}

#[test]
fn a_parked_connection_closed_by_its_client_is_freed() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&config(origin.addr, &[]));
    let status = ops::listener(&gw.stderr, "status");
    let clients = served_clients(&gw, 30, "c");
    wait_gauges(status, 30.0, 30.0, "30 idle clients past the hold");
    let held = fd_count(gw.pid);
    drop(clients);
    wait_gauges(status, 0.0, 0.0, "after 30 parked clients closed");
    let n = wait_fds_at_most(gw.pid, held - 30, Duration::from_secs(10));
    assert!(
        n <= held - 30,
        "{n} fds after 30 parked clients closed, {held} before"
    );
    assert_eq!(gw.client().get("/after").status, 200);
}

#[test]
fn a_request_sent_with_a_half_close_on_a_parked_connection_is_answered() {
    // The wake sees the client's FIN, but bytes are queued before it: the request is served,
    // not taken for a closed connection.
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&config(origin.addr, &[]));
    let status = ops::listener(&gw.stderr, "status");
    let mut clients = served_clients(&gw, 5, "h");
    wait_gauges(status, 5.0, 5.0, "5 idle clients past the hold");
    for (i, c) in clients.iter_mut().enumerate() {
        let path = format!("/half/{i}");
        c.send(get_req(&path, "example.com"));
        c.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("half close");
        let r = c.read_response();
        assert_eq!(
            (r.status, r.body_str()),
            (200, path),
            "half-closed client {i}"
        );
    }
    wait_gauges(status, 0.0, 0.0, "the half-closed clients' connections end");
}

#[test]
fn shutdown_closes_parked_connections() {
    let origin = Origin::echo_target("o");
    let mut gw = Gateway::start(&config(origin.addr, &[("shutdown_timeout", "\"20s\"")]));
    let status = ops::listener(&gw.stderr, "status");
    let mut clients = served_clients(&gw, 10, "s");
    wait_gauges(status, 10.0, 10.0, "10 idle clients past the hold");
    gw.send_sigterm();
    // No linger on a shutdown: closed at once, so the gateway exits long before its timeout.
    for (i, c) in clients.iter_mut().enumerate() {
        c.wait_closed(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("parked client {i} after SIGTERM: {e}"));
    }
    let st = gw.wait_exit(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "exit: {st:?}");
}

#[test]
fn a_binary_upgrade_answers_a_request_already_sent_on_a_parked_connection() {
    let origin = Origin::echo_target("o");
    let mut gw = Gateway::start(&config(origin.addr, &[("shutdown_timeout", "\"20s\"")]));
    let status = ops::listener(&gw.stderr, "status");
    let mut clients = served_clients(&gw, 10, "u");
    wait_gauges(status, 10.0, 10.0, "10 idle clients past the hold");
    let mut next = Successor::start(gw.config_path());
    assert!(
        next.wait_log("upgrade: serving", Duration::from_secs(30))
            .is_some(),
        "the successor did not serve:\n{}",
        next.stderr.text()
    );
    // The old process lingers (2 s) for idle connections: a request sent on each (all within
    // a few ms) is answered, whether it lands before or after the handover, and the connection
    // ends with a close (sent with the answer, or when the linger ends).
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(get_req(&format!("/during/{i}"), "example.com"));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.read_response();
        let path = format!("/during/{i}");
        assert_eq!((r.status, r.body_str()), (200, path), "parked client {i}");
        if !r.connection_close() {
            c.wait_closed(Duration::from_secs(15))
                .unwrap_or_else(|e| panic!("client {i} after the handover: {e}"));
        }
    }
    let st = gw.wait_exit(Duration::from_secs(20));
    assert!(st.is_some_and(|s| s.success()), "old process exit: {st:?}");
    next.send_sigterm();
    assert!(next.wait_exit(Duration::from_secs(20)).is_some());
}
