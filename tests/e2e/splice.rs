//! Long fixed-length bodies between plain sockets go socket to pipe to socket, both ways
//! (src/proxy/splice.rs). These drive that path through its waits and failures over real
//! sockets: an upstream that trickles, a client that reads slowly or not at all, an upstream that
//! stops, resets or sends more than it declared, pipelined requests behind a spliced body, uploads
//! that stall on either side. In every case the bytes must be exact, the connection boundaries
//! right, and nothing hang.
use crate::harness::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const READ_TIMEOUT: Duration = Duration::from_secs(1);
const MARGIN: Duration = Duration::from_secs(3);

/// Writes a `len`-byte pattern body after its head, in `piece`-byte writes with `pause` between.
fn write_pattern(s: &mut TcpStream, len: u64, piece: usize, pause: Duration) -> bool {
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
    if s.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let mut off = 0u64;
    let mut buf = vec![0u8; piece];
    while off < len {
        let n = (len - off).min(piece as u64) as usize;
        pattern_fill(off, &mut buf[..n]);
        if s.write_all(&buf[..n]).is_err() {
            return false;
        }
        off += n as u64;
        if !pause.is_zero() {
            thread::sleep(pause);
        }
    }
    true
}

/// The upstream's timeouts are short so a stall shows within the tests' margins.
const UPSTREAM: &str = "read_timeout = \"1s\"\nsend_timeout = \"1s\"\nmax_fails = 0";

fn gateway(origin: &RawOrigin, server_extra: &[(&str, &str)]) -> Gateway {
    Gateway::start(&simple_config_with(origin.addr, server_extra, UPSTREAM))
}

fn assert_pattern(r: &Response, len: u64) {
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(r.body.len() as u64, len, "body length");
    let mut want = vec![0u8; len as usize];
    pattern_fill(0, &mut want);
    assert!(r.body == want, "body bytes differ from the origin's");
}

/// The origin: "/big/<len>/<piece>/<pause_ms>" answers a pattern body of that shape;
/// "/ok" answers "ok".
fn shaped_origin() -> RawOrigin {
    RawOrigin::start(|head, s| {
        let path = head_path(head).to_string();
        if path == "/ok" {
            return s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_ok();
        }
        let parts: Vec<u64> = path
            .trim_start_matches("/big/")
            .split('/')
            .filter_map(|p| p.parse().ok())
            .collect();
        match parts[..] {
            [len, piece, pause] => {
                write_pattern(s, len, piece as usize, Duration::from_millis(pause))
            }
            _ => s
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .is_ok(),
        }
    })
}

#[test]
fn trickled_large_body_arrives_exact_and_both_connections_are_reused() {
    let o = shaped_origin();
    let gw = gateway(&o, &[]);
    let mut c = gw.client();
    // 1 MiB in 64 KiB pieces 20 ms apart: the splice waits on the upstream many times.
    let r = c.get("/big/1048576/65536/20");
    assert_pattern(&r, 1048576);
    // Same client connection, same upstream connection: the spliced body ended on its boundary.
    let r = c.get("/big/300000/300000/0");
    assert_pattern(&r, 300000);
    let r = c.get("/ok");
    assert_eq!(r.body_str(), "ok");
    assert_eq!(o.accepted(), 1, "the upstream connection was not reused");
}

#[test]
fn slow_reader_gets_every_byte() {
    let o = shaped_origin();
    let gw = gateway(&o, &[]);
    let mut c = gw.client();
    // Fill the client socket: the splice into it has to wait for room many times.
    let len: u64 = 4 * 1024 * 1024;
    c.send(get_req(&format!("/big/{len}/1048576/0"), "example.com"));
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut head_end = None;
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    while Instant::now() < deadline {
        let n = c.stream.read(&mut buf).expect("read from gateway");
        assert!(n > 0, "gateway closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if head_end.is_none() {
            head_end = got.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if let Some(h) = head_end {
            if (got.len() - h) as u64 >= len {
                break;
            }
        }
        thread::sleep(Duration::from_millis(2));
    }
    let h = head_end.expect("response head");
    assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", &got[..h.min(200)]);
    let body = &got[h..];
    assert_eq!(body.len() as u64, len);
    let mut want = vec![0u8; len as usize];
    pattern_fill(0, &mut want);
    assert!(body == want.as_slice(), "body bytes differ");
}

#[test]
fn pipelined_requests_behind_a_spliced_body_stay_in_order() {
    let o = shaped_origin();
    let gw = gateway(&o, &[]);
    let mut c = gw.client();
    let req = format!(
        "{}{}{}",
        get_req("/big/200000/50000/5", "example.com"),
        get_req("/ok", "example.com"),
        get_req("/big/70000/70000/0", "example.com")
    );
    c.send(req);
    assert_pattern(&c.read_response(), 200000);
    assert_eq!(c.read_response().body_str(), "ok");
    assert_pattern(&c.read_response(), 70000);
}

#[test]
fn upstream_stopping_mid_body_is_cut_within_the_read_timeout() {
    let o = RawOrigin::start(|head, s| {
        if head_path(head) == "/ok" {
            return s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_ok();
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 500000\r\n\r\n");
        let _ = s.write_all(&[b'x'; 100_000]);
        thread::sleep(READ_TIMEOUT + MARGIN + Duration::from_secs(1));
        false
    });
    let gw = gateway(&o, &[]);
    let mut c = gw.client();
    c.set_read_timeout(READ_TIMEOUT + MARGIN);
    let t = Instant::now();
    c.send(get_req("/stall", "example.com"));
    match c.try_read_response() {
        Ok(r) => panic!("a stalled body was relayed as complete: {}", r.raw_head),
        Err(e) => assert!(
            !e.is_timeout() && e.got() > 100_000,
            "expected the started response to be cut by a close, got {e}"
        ),
    }
    assert!(
        t.elapsed() < READ_TIMEOUT + MARGIN,
        "took {:?}",
        t.elapsed()
    );
    let mut c = gw.client();
    assert_eq!(c.get("/ok").body_str(), "ok");
}

#[test]
fn upstream_closing_early_then_the_next_body_is_clean() {
    // A failed splice may leave bytes in its pipe; that pipe must never carry the next body.
    let calls = Arc::new(AtomicUsize::new(0));
    let k = calls.clone();
    let o = RawOrigin::start(move |head, s| {
        if head_path(head) == "/short" && k.fetch_add(1, SeqCst) == 0 {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 400000\r\n\r\n");
            let _ = s.write_all(&[b'!'; 150_000]);
            return false;
        }
        write_pattern(s, 200_000, 200_000, Duration::ZERO)
    });
    let gw = gateway(&o, &[]);
    let mut c = gw.client();
    c.set_read_timeout(READ_TIMEOUT + MARGIN);
    c.send(get_req("/short", "example.com"));
    let e = c
        .try_read_response()
        .expect_err("truncated body relayed as complete");
    assert!(!e.is_timeout(), "{e}");
    for _ in 0..5 {
        let mut c = gw.client();
        assert_pattern(&c.get("/next"), 200_000);
    }
}

#[test]
fn upstream_sending_more_than_its_length_after_a_spliced_body_is_not_reused() {
    let o = RawOrigin::start(|head, s| {
        if head_path(head) == "/ok" {
            return s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_ok();
        }
        if !write_pattern(s, 100_000, 100_000, Duration::ZERO) {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!");
        true
    });
    let gw = gateway(&o, &[]);
    let mut c = gw.client();
    assert_pattern(&c.get("/big"), 100_000);
    drop(c);
    thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let mut c = gw.client();
        assert_eq!(c.get("/ok").body_str(), "ok");
    }
}

#[test]
fn client_that_never_reads_is_dropped_after_the_send_timeout() {
    let o = shaped_origin();
    let gw = gateway(&o, &[("send_timeout", "\"1s\"")]);
    let before = {
        let mut c = gw.client();
        assert_eq!(c.get("/ok").body_str(), "ok");
        drop(c);
        thread::sleep(Duration::from_millis(100));
        fd_count(gw.pid)
    };
    let mut c = gw.client();
    // Far more than the socket buffers hold, so the gateway's splice to the client blocks.
    let len: u64 = 256 * 1024 * 1024;
    c.send(get_req(&format!("/big/{len}/1048576/0"), "example.com"));
    // Not reading past the send timeout (plus the deadline sweeper's lateness).
    thread::sleep(Duration::from_secs(4));
    // Then drain: what was already in the socket buffers, then EOF.
    let mut total = 0u64;
    let mut buf = [0u8; 65536];
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let closed = loop {
        match c.stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(
        closed,
        "gateway kept a stalled client open ({total} bytes read)"
    );
    assert!(
        total < len,
        "the whole body went out to a client that never read"
    );
    drop(c);
    let mut c = gw.client();
    assert_eq!(c.get("/ok").body_str(), "ok");
    drop(c);
    let n = wait_fds_at_most(gw.pid, before, Duration::from_secs(5));
    assert!(n <= before, "fd leak: {n} open fds, {before} before");
}

/// An origin that answers every request with "<body length> <body hash>" (and "ok" for /ok).
fn sink_origin(opts: OriginOpts) -> Origin {
    Origin::start_with("127.0.0.1:0", "sink", opts, |r| {
        if r.path() == "/ok" {
            return Resp::text(200, "ok").into();
        }
        Resp::text(200, format!("{} {:x}", r.body_len, r.body_hash)).into()
    })
    .expect("start sink origin")
}

#[test]
fn spliced_upload_arrives_exact_and_a_pipelined_request_follows() {
    let o = sink_origin(OriginOpts {
        keep_body: false,
        ..OriginOpts::default()
    });
    let gw = Gateway::start(&simple_config_with(o.addr, &[], UPSTREAM));
    let mut c = gw.client();
    let len: u64 = 3 * 1024 * 1024 + 7;
    c.send(format!(
        "POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: {len}\r\n\r\n"
    ));
    // The next request rides right behind the body: the splice must stop exactly at its end.
    let w = upload_pattern(
        &c.stream,
        len,
        b"GET /ok HTTP/1.1\r\nHost: example.com\r\n\r\n",
    );
    c.set_read_timeout(Duration::from_secs(30));
    let r = c.read_response();
    let hash = w.join().expect("writer").expect("upload");
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(
        r.body_str(),
        format!("{len} {hash:x}"),
        "origin got another body"
    );
    assert_eq!(c.read_response().body_str(), "ok");
    // Both connections carry on.
    let mut c2 = gw.client();
    assert_eq!(c2.get("/ok").body_str(), "ok");
}

#[test]
fn upload_stalling_mid_body_is_408_or_cut_within_the_body_timeout() {
    let o = sink_origin(OriginOpts {
        keep_body: false,
        ..OriginOpts::default()
    });
    let gw = Gateway::start(&simple_config_with(
        o.addr,
        &[("client_body_timeout", "\"1s\"")],
        UPSTREAM,
    ));
    let mut c = gw.client();
    c.send("POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1000000\r\n\r\n");
    c.send(vec![b'x'; 100_000]);
    let t = Instant::now();
    // The rest never comes: the gateway must give up on the splice's wait for the client.
    let closed = c.wait_closed(Duration::from_secs(10));
    match closed {
        Ok(_) => {}
        // An error answer before the close is fine too (the upstream has had nothing back).
        Err(e) => assert!(e.contains("408") || e.contains("502"), "{e}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "took {:?}",
        t.elapsed()
    );
    let mut c = gw.client();
    assert_eq!(c.get("/ok").body_str(), "ok");
}

#[test]
fn upstream_not_reading_an_upload_gives_up_after_its_send_timeout() {
    // The origin stops reading after 64 KiB for longer than the upstream send_timeout (1s).
    let o = sink_origin(OriginOpts {
        keep_body: false,
        read_pause: Some((64 * 1024, Duration::from_secs(8))),
        ..OriginOpts::default()
    });
    let gw = Gateway::start(&simple_config_with(o.addr, &[], UPSTREAM));
    let mut c = gw.client();
    let len: u64 = 64 * 1024 * 1024;
    c.send(format!(
        "POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: {len}\r\n\r\n"
    ));
    let w = upload_pattern(&c.stream, len, b"");
    c.set_read_timeout(Duration::from_secs(10));
    let t = Instant::now();
    match c.try_read_response() {
        Ok(r) => assert!(
            r.status == 504 || r.status == 502,
            "expected the gateway to give up with 502/504, got {}",
            r.raw_head
        ),
        Err(e) => assert!(!e.is_timeout(), "gateway never gave up: {e}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(7),
        "took {:?}",
        t.elapsed()
    );
    // The writer may still be blocked on a socket nobody reads: end it.
    let _ = c.stream.shutdown(std::net::Shutdown::Both);
    let _ = w.join();
}
