//! The generator's request total must equal what the server saw, across keep-alive,
//! pipelining, no-keepalive, chunked and read-until-close responses.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{json, num, run, Server};

fn check_against_serve(extra: &[&str]) {
    let server = Server::start(&[]);
    let url = server.url();
    let mut args = vec!["-t", "1", "-c", "4", "-d", "1s", "--json"];
    args.extend_from_slice(extra);
    args.push(&url);
    let v = json(&run(&args, Duration::from_secs(15)));
    let requests = num(&v, &["requests"]) as u64;
    assert!(requests > 50, "{v}");
    assert_eq!(
        requests,
        server.count(),
        "generator and server disagree: {v}"
    );
    assert_eq!(num(&v, &["status_counts", "200"]) as u64, requests, "{v}");
    assert_eq!(num(&v, &["errors", "total"]), 0.0, "{v}");
}

#[test]
fn keepalive_total_matches_server() {
    check_against_serve(&[]);
}

#[test]
fn serve_prints_its_count_on_sigterm() {
    let server = Server::start(&[]);
    let v = json(&run(
        &["-t", "1", "-c", "2", "-d", "300ms", "--json", &server.url()],
        Duration::from_secs(10),
    ));
    let out = server.terminate();
    assert_eq!(
        out.trim(),
        format!("requests={}", num(&v, &["requests"]) as u64)
    );
}

#[test]
fn pipelined_total_matches_server() {
    check_against_serve(&["--pipeline", "8"]);
}

#[test]
fn no_keepalive_total_matches_server() {
    check_against_serve(&[
        "--no-keepalive",
        "-m",
        "POST",
        "--body",
        "hello",
        "-H",
        "X-Test: 1",
    ]);
}

/// A std-thread server answering with chunked bodies (keep-alive) or HTTP/1.0 bodies ended by
/// close, counting requests itself. Stops accepting after `life`.
fn framing_server(chunked: bool, life: Duration) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        let until = Instant::now() + life;
        while Instant::now() < until {
            match listener.accept() {
                Ok((s, _)) => {
                    let counter = counter.clone();
                    std::thread::spawn(move || answer(s, chunked, &counter));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    (port, count)
}

fn answer(mut s: TcpStream, chunked: bool, count: &AtomicU64) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            count.fetch_add(1, Ordering::SeqCst);
            let reply: &[u8] = if chunked {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
            } else {
                b"HTTP/1.0 200 OK\r\n\r\nbody until close"
            };
            if s.write_all(reply).is_err() || !chunked {
                return;
            }
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn check_framing(chunked: bool, body_len: u64) {
    let (port, count) = framing_server(chunked, Duration::from_secs(5));
    let url = format!("http://127.0.0.1:{port}/x");
    let v = json(&run(
        &["-t", "1", "-c", "2", "-d", "1s", "--json", &url],
        Duration::from_secs(15),
    ));
    let requests = num(&v, &["requests"]) as u64;
    assert!(requests > 10, "{v}");
    assert_eq!(requests, count.load(Ordering::SeqCst), "{v}");
    assert_eq!(num(&v, &["errors", "total"]), 0.0, "{v}");
    let bytes = num(&v, &["bytes"]) as u64;
    assert_eq!(bytes % requests, 0, "every response is the same size: {v}");
    assert!(bytes / requests > body_len, "{v}");
}

#[test]
fn chunked_responses_are_framed() {
    check_framing(true, 11);
}

#[test]
fn read_until_close_responses_are_framed() {
    check_framing(false, 16);
}

#[test]
fn scenario_and_weighted_urls_total_matches_server() {
    let server = Server::start(&[]);
    let dir = std::env::temp_dir().join(format!("ringway-bench-scenario-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("body.json"), br#"{"item": 42}"#).expect("write body");
    let scenario = dir.join("mix.toml");
    let text = format!(
        "[[request]]\nurl = \"http://127.0.0.1:{p}/users\"\nweight = 3\n\n\
         [[request]]\nmethod = \"POST\"\nurl = \"http://127.0.0.1:{p}/orders\"\n\
         headers = [\"Content-Type: application/json\"]\nbody_file = \"body.json\"\n\n\
         [[request]]\nmethod = \"HEAD\"\nurl = \"http://127.0.0.1:{p}/h\"\n",
        p = server.port
    );
    std::fs::write(&scenario, text).expect("write scenario");
    let weighted = format!("http://127.0.0.1:{}/extra@2", server.port);
    let scenario_arg = scenario.to_string_lossy().to_string();
    let args = [
        "-t",
        "1",
        "-c",
        "3",
        "-d",
        "1s",
        "--json",
        "--scenario",
        &scenario_arg,
        "--url",
        &weighted,
    ];
    let v = json(&run(&args, Duration::from_secs(15)));
    let _ = std::fs::remove_dir_all(&dir);
    let requests = num(&v, &["requests"]) as u64;
    assert!(requests > 50, "{v}");
    assert_eq!(requests, server.count(), "{v}");
    assert_eq!(num(&v, &["errors", "total"]), 0.0, "{v}");
}
