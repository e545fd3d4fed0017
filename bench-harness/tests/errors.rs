//! Error accounting and argument handling: refused connects, timeouts and non-2xx statuses are
//! counted by kind; bad arguments give one line on stderr, a non-zero exit and no panic.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{json, num, run, Server, BIN};

fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn refused_connections_are_connect_errors() {
    let url = format!("http://127.0.0.1:{}/", dead_port());
    let v = json(&run(
        &[
            "-t",
            "1",
            "-c",
            "2",
            "-d",
            "500ms",
            "--no-preflight",
            "--json",
            &url,
        ],
        Duration::from_secs(10),
    ));
    assert!(num(&v, &["errors", "connect"]) > 0.0, "{v}");
    assert_eq!(num(&v, &["requests"]), 0.0, "{v}");
    assert_eq!(
        num(&v, &["errors", "total"]),
        num(&v, &["errors", "connect"]),
        "{v}"
    );
}

#[test]
fn silent_server_gives_timeouts() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    let url = format!("http://127.0.0.1:{port}/");
    let v = json(&run(
        &[
            "-t",
            "1",
            "-c",
            "2",
            "-d",
            "1s",
            "--timeout",
            "200ms",
            "--json",
            &url,
        ],
        Duration::from_secs(10),
    ));
    assert!(num(&v, &["errors", "timeout"]) >= 4.0, "{v}");
    assert_eq!(num(&v, &["requests"]), 0.0, "{v}");
    assert_eq!(
        num(&v, &["errors", "read"]) + num(&v, &["errors", "connect"]),
        0.0,
        "{v}"
    );
}

#[test]
fn server_errors_are_counted_by_status() {
    let server = Server::start(&["--status", "500"]);
    let v = json(&run(
        &["-t", "1", "-c", "2", "-d", "500ms", "--json", &server.url()],
        Duration::from_secs(10),
    ));
    let requests = num(&v, &["requests"]);
    assert!(requests > 10.0, "{v}");
    assert_eq!(num(&v, &["errors", "status", "500"]), requests, "{v}");
    assert_eq!(num(&v, &["status_counts", "500"]), requests, "{v}");
    assert_eq!(num(&v, &["errors", "total"]), requests, "{v}");
}

#[test]
fn bad_arguments_fail_with_one_line() {
    let dead = format!("http://127.0.0.1:{}/", dead_port());
    let cases: Vec<Vec<&str>> = vec![
        vec!["not a url"],
        vec!["https://127.0.0.1:1/"],
        vec!["-c", "0", "http://127.0.0.1:1/"],
        vec!["-c", "lots", "http://127.0.0.1:1/"],
        vec!["-R", "100", "http://127.0.0.1:1/"],
        vec!["-R", "100", "-d", "0s", "http://127.0.0.1:1/"],
        vec!["-d", "forever", "http://127.0.0.1:1/"],
        vec!["-H", "no colon here", "http://127.0.0.1:1/"],
        vec!["--scenario", "/nonexistent/scenario.toml"],
        vec![],
        vec!["-d", "1s", &dead],
        vec!["serve", "--listen", "nowhere"],
    ];
    for args in cases {
        let out = run(&args, Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: want one line, got: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: stdout should be empty");
    }
    assert!(std::path::Path::new(BIN).exists());
}
