//! Access log against the real binary: one line per request in combined and JSON formats with
//! the values the requests carried, and SIGUSR1 reopening the file after a rotation.

use std::path::PathBuf;
use std::time::Duration;

use crate::harness::{route, server, upstream, wait_until, Gateway, Origin, Resp};

fn log_path(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ringway-access-{tag}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn lines(p: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn config(origin: std::net::SocketAddr, log: &str) -> String {
    format!(
        "{}{log}\n{}{}",
        server(&[("workers", "2")]),
        upstream("backend", &[origin], ""),
        route("api", &["/api/*"], "backend", "")
    )
}

fn get_ua(gw: &Gateway, path: &str, ua: &str) -> u16 {
    gw.client()
        .request(format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nUser-Agent: {ua}\r\nReferer: http://r/\r\n\r\n"))
        .status
}

#[test]
fn combined_lines_match_requests() {
    let origin = Origin::start("o", |_| Resp::text(200, "12345").into());
    let p = log_path("combined");
    let gw = Gateway::start(&config(
        origin.addr,
        &format!("[access_log]\npath = {:?}\n", p.to_str().unwrap()),
    ));
    for i in 0..20 {
        assert_eq!(
            get_ua(&gw, &format!("/api/{i}?q=\"x\""), &format!("agent-{i}")),
            200
        );
    }
    assert_eq!(get_ua(&gw, "/other", "agent-404"), 404);
    assert!(
        wait_until(Duration::from_secs(5), || lines(&p).len() == 21),
        "{:?}",
        lines(&p)
    );
    let all = lines(&p);
    for i in 0..20 {
        let want_req =
            format!("\"GET /api/{i}?q=\\x22x\\x22 HTTP/1.1\" 200 5 \"http://r/\" \"agent-{i}\"");
        let line = all
            .iter()
            .find(|l| l.contains(&format!("\"agent-{i}\"")))
            .unwrap_or_else(|| panic!("no line for request {i}: {all:#?}"));
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(line.ends_with(&want_req), "{line}\nwant suffix {want_req}");
        // [dd/Mon/yyyy:hh:mm:ss +0000]
        let ts = &line[line.find('[').unwrap() + 1..line.find(']').unwrap()];
        assert_eq!(ts.len(), 26, "{ts}");
        assert!(ts.ends_with(" +0000"), "{ts}");
    }
    assert!(
        all.iter()
            .any(|l| l.contains("\"GET /other HTTP/1.1\" 404 ")),
        "{all:#?}"
    );
    let _ = std::fs::remove_file(&p);
}

#[test]
fn json_lines_carry_configured_fields() {
    let origin = Origin::start("o", |_| Resp::text(201, "abc").into());
    let p = log_path("json");
    let log = format!(
        "[access_log]\npath = {:?}\nformat = \"json\"\nfields = [\"method\", \"uri\", \"status\", \"route\", \"upstream\", \"host\", \"http_user_agent\", \"body_bytes_sent\", \"request_time\"]\n",
        p.to_str().unwrap()
    );
    let gw = Gateway::start(&config(origin.addr, &log));
    for i in 0..5 {
        assert_eq!(get_ua(&gw, &format!("/api/j{i}"), "json-agent"), 201);
    }
    assert_eq!(get_ua(&gw, "/unrouted", "json-agent"), 404);
    assert!(wait_until(Duration::from_secs(5), || lines(&p).len() == 6));
    let parsed: Vec<serde_json::Value> = lines(&p)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for i in 0..5 {
        let v = parsed
            .iter()
            .find(|v| v["uri"] == format!("/api/j{i}"))
            .expect("line for request");
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 9, "only the configured fields: {v}");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["status"], 201);
        assert_eq!(v["route"], "api");
        assert_eq!(v["upstream"], "backend");
        assert_eq!(v["host"], "example.com");
        assert_eq!(v["http_user_agent"], "json-agent");
        assert_eq!(v["body_bytes_sent"], 3);
        assert!(v["request_time"].as_f64().unwrap() >= 0.0);
    }
    let miss = parsed.iter().find(|v| v["uri"] == "/unrouted").unwrap();
    assert_eq!(miss["status"], 404);
    assert_eq!(miss["route"], "");
    let _ = std::fs::remove_file(&p);
}

#[test]
fn malformed_heads_answered_4xx_are_logged() {
    let origin = Origin::start("o", |_| Resp::text(200, "12345").into());
    let p = log_path("malformed");
    let gw = Gateway::start(&config(
        origin.addr,
        &format!("[access_log]\npath = {:?}\n", p.to_str().unwrap()),
    ));
    // Not HTTP at all; a header line without a colon; an over-long request line.
    assert_eq!(gw.client().request("GARBAGE\r\n\r\n").status, 400);
    assert_eq!(
        gw.client()
            .request("GET /api/x HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n")
            .status,
        400
    );
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(70_000));
    assert_eq!(gw.client().request(long).status, 414);
    // A good request, then a bad one on the same connection: the bad one's line must not
    // repeat the good request's method or URI.
    let mut c = gw.client();
    assert_eq!(get_with(&mut c, "/api/first").status, 200);
    assert_eq!(c.request("BAD\x01 / HTTP/1.1\r\n\r\n").status, 400);
    assert!(
        wait_until(Duration::from_secs(5), || lines(&p).len() == 5),
        "{:?}",
        lines(&p)
    );
    let all = lines(&p);
    let bad: Vec<&String> = all.iter().filter(|l| !l.contains("/api/first")).collect();
    assert_eq!(bad.len(), 4, "{all:#?}");
    let mut statuses: Vec<&str> = Vec::new();
    for l in &bad {
        assert!(l.starts_with("127.0.0.1 - - ["), "{l}");
        // "- - HTTP/1.1" STATUS BYTES: method and URI unknown, bytes of the error body sent.
        let req = l.split('"').nth(1).unwrap_or_default();
        assert_eq!(req, "- - HTTP/1.1", "{l}");
        let rest: Vec<&str> = l
            .split('"')
            .nth(2)
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert!(rest[1].parse::<u64>().is_ok_and(|n| n > 0), "{l}");
        statuses.push(rest[0]);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, ["400", "400", "400", "414"], "{all:#?}");
    let _ = std::fs::remove_file(&p);
}

fn get_with(c: &mut crate::harness::Client, path: &str) -> crate::harness::Response {
    c.request(format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n"))
}

#[test]
fn sigusr1_reopens_after_rotation() {
    let origin = Origin::start("o", |_| Resp::text(200, "ok").into());
    let p = log_path("rotate");
    let rotated = p.with_extension("log.1");
    let _ = std::fs::remove_file(&rotated);
    let gw = Gateway::start(&config(
        origin.addr,
        &format!("[access_log]\npath = {:?}\n", p.to_str().unwrap()),
    ));
    for _ in 0..3 {
        assert_eq!(get_ua(&gw, "/api/before", "a"), 200);
    }
    assert!(wait_until(Duration::from_secs(5), || lines(&p).len() == 3));
    std::fs::rename(&p, &rotated).unwrap();
    gw.send_signal("USR1");
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .logs()
            .contains("access log reopened")),
        "{}",
        gw.logs()
    );
    for _ in 0..4 {
        assert_eq!(get_ua(&gw, "/api/after", "a"), 200);
    }
    assert!(
        wait_until(Duration::from_secs(5), || lines(&p).len() == 4),
        "{:?}",
        lines(&p)
    );
    assert!(lines(&p).iter().all(|l| l.contains("/api/after")));
    assert_eq!(lines(&rotated).len(), 3);
    assert!(lines(&rotated).iter().all(|l| l.contains("/api/before")));
    let _ = std::fs::remove_file(&p);
    let _ = std::fs::remove_file(&rotated);
}

#[test]
fn access_log_config_errors_name_the_key() {
    let base = server(&[]);
    for (section, key) in [
        (
            "[access_log]\npath = \"/tmp/x\"\nfields = [\"status\"]\n",
            "access_log.fields",
        ),
        (
            "[access_log]\npath = \"/tmp/x\"\nformat = \"json\"\nfields = [\"nope\"]\n",
            "access_log.fields[0]",
        ),
        (
            "[access_log]\npath = \"/tmp/x\"\nformat = \"xml\"\n",
            "access_log.format",
        ),
        ("[access_log]\npath = \"\"\n", "access_log.path"),
    ] {
        let out = crate::harness::check_config(&format!("{base}{section}"));
        assert!(out.all().contains(key), "{key}: {}", out.all());
    }
}
