//! http-logger and tcp-logger against the real binary: batches reach HTTP and TCP sinks, a sink that
//! is down then up gets later entries with drops counted, a stuck sink does not slow requests.

use crate::harness::ops;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::prometheus::{scrape, value};
use crate::harness::{
    check_config, closed_port, cpu_lock, route, server, upstream, wait_until, Gateway, Origin,
    OriginOpts, Resp,
};

fn config(origin: SocketAddr, plugin: &str) -> String {
    format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
        server(&[("workers", "2")]),
        upstream("backend", &[origin], ""),
        route("app", &["/*"], "backend", plugin)
    )
}

/// Entries posted to an HTTP sink (each body is a JSON array), in arrival order.
fn posted(sink: &Origin) -> Vec<serde_json::Value> {
    sink.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path() == "/logs")
        .flat_map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
            v.as_array().expect("a JSON array per batch").clone()
        })
        .collect()
}

fn counter(status: SocketAddr, name: &str, plugin: &str) -> f64 {
    value(&scrape(status), name, &[("plugin", plugin)])
}

#[test]
fn http_logger_posts_json_batches() {
    let origin = Origin::start("o", |_| Resp::text(200, "ok").into());
    let sink = Origin::start("sink", |_| Resp::text(200, "").into());
    let plugin = format!(
        "[routes.plugins.http-logger]\nuri = \"http://{}/logs\"\nbatch_max_size = 3\n\
         inactive_timeout = \"100ms\"\n",
        sink.addr
    );
    let gw = Gateway::start(&config(origin.addr, &plugin));
    let status = ops::listener(&gw.stderr, "status");
    for i in 0..5 {
        assert_eq!(gw.client().get(&format!("/app/{i}?q=1")).status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(5), || posted(&sink).len() == 5),
        "{:?}",
        posted(&sink)
    );
    let entries = posted(&sink);
    let mut uris: Vec<&str> = entries
        .iter()
        .map(|e| e["request"]["uri"].as_str().expect("uri"))
        .collect();
    uris.sort_unstable();
    assert_eq!(
        uris,
        [
            "/app/0?q=1",
            "/app/1?q=1",
            "/app/2?q=1",
            "/app/3?q=1",
            "/app/4?q=1"
        ]
    );
    for e in &entries {
        assert_eq!(e["request"]["method"], "GET");
        assert_eq!(e["response"]["status"], 200);
        assert_eq!(e["client_ip"], "127.0.0.1");
        assert!(e["latency"].as_f64().is_some_and(|l| l >= 0.0));
        assert!(e["start_time"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000));
    }
    let posts = sink.requests();
    assert!(
        posts.len() < 5,
        "batched: {} POSTs for 5 entries",
        posts.len()
    );
    assert_eq!(posts[0].header("Content-Type"), Some("application/json"));
    assert!(wait_until(Duration::from_secs(5), || counter(
        status,
        "ringway_logger_entries_sent_total",
        "http-logger"
    ) == 5.0));
}

#[test]
fn http_sink_down_then_up_gets_later_entries_and_drops_are_counted() {
    let origin = Origin::start("o", |_| Resp::text(200, "ok").into());
    let sink_addr = closed_port();
    let plugin = format!(
        "[routes.plugins.http-logger]\nuri = \"http://{sink_addr}/logs\"\nbatch_max_size = 1\n\
         inactive_timeout = \"50ms\"\nmax_retry_count = 1\nretry_delay = \"20ms\"\n\
         max_pending_entries = 2\ntimeout = \"500ms\"\n"
    );
    let gw = Gateway::start(&config(origin.addr, &plugin));
    let status = ops::listener(&gw.stderr, "status");
    for i in 0..6 {
        assert_eq!(gw.client().get(&format!("/down/{i}")).status, 200);
    }
    let dropped = |s| counter(s, "ringway_logger_entries_dropped_total", "http-logger");
    assert!(
        wait_until(Duration::from_secs(10), || dropped(status) == 6.0),
        "dropped {}",
        dropped(status)
    );
    assert!(counter(status, "ringway_logger_send_failures_total", "http-logger") >= 3.0);

    let sink = Origin::start_with(
        &sink_addr.to_string(),
        "sink",
        OriginOpts::default(),
        |_| Resp::text(204, "").into(),
    )
    .expect("sink comes up on its port");
    // One at a time: with max_pending_entries = 2, three entries queued while the sender is
    // still connecting would (correctly) drop the oldest, and the count below would race.
    for i in 0..3 {
        assert_eq!(gw.client().get(&format!("/up/{i}")).status, 200);
        assert!(
            wait_until(Duration::from_secs(10), || posted(&sink).len() == i + 1),
            "entry {i} after the sink came back"
        );
    }
    let uris: Vec<String> = posted(&sink)
        .iter()
        .map(|e| e["request"]["uri"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(uris.iter().all(|u| u.starts_with("/up/")), "{uris:?}");
    assert_eq!(
        counter(status, "ringway_logger_entries_sent_total", "http-logger"),
        3.0
    );
    assert_eq!(dropped(status), 6.0);
}

/// A TCP sink that keeps every newline-terminated line it receives.
fn tcp_sink() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = lines.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut text = String::new();
            let _ = c.read_to_string(&mut text);
            let mut v = out.lock().expect("lines");
            v.extend(text.split_terminator('\n').map(str::to_string));
        }
    });
    (addr, lines)
}

#[test]
fn tcp_logger_writes_newline_delimited_json() {
    let origin = Origin::start("o", |_| Resp::text(200, "ok").into());
    let (addr, lines) = tcp_sink();
    let plugin = format!(
        "[routes.plugins.tcp-logger]\nhost = \"127.0.0.1\"\nport = {}\nbatch_max_size = 2\n\
         inactive_timeout = \"100ms\"\n",
        addr.port()
    );
    let gw = Gateway::start(&config(origin.addr, &plugin));
    let status = ops::listener(&gw.stderr, "status");
    for i in 0..3 {
        assert_eq!(gw.client().get(&format!("/t/{i}")).status, 200);
    }
    assert!(wait_until(Duration::from_secs(5), || lines
        .lock()
        .expect("lines")
        .len()
        == 3));
    let mut uris: Vec<String> = lines
        .lock()
        .expect("lines")
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
            v["request"]["uri"].as_str().expect("uri").to_string()
        })
        .collect();
    uris.sort();
    assert_eq!(uris, ["/t/0", "/t/1", "/t/2"]);
    assert!(wait_until(Duration::from_secs(5), || counter(
        status,
        "ringway_logger_entries_sent_total",
        "tcp-logger"
    ) == 3.0));
}

#[test]
fn a_stuck_sink_does_not_slow_requests() {
    let _cpu = cpu_lock(); // 30 requests must take under 2 s
    let origin = Origin::start("o", |_| Resp::text(200, "ok").into());
    // Accepts connections (kernel backlog) but never reads or answers.
    let stuck = TcpListener::bind("127.0.0.1:0").expect("bind");
    let plugin = format!(
        "[routes.plugins.http-logger]\nuri = \"http://{}/logs\"\nbatch_max_size = 1\n\
         timeout = \"3s\"\nmax_retry_count = 5\n",
        stuck.local_addr().expect("addr")
    );
    let gw = Gateway::start(&config(origin.addr, &plugin));
    let t0 = Instant::now();
    for i in 0..30 {
        assert_eq!(gw.client().get(&format!("/s/{i}")).status, 200);
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "30 requests took {took:?}");
}

#[test]
fn logger_config_errors_name_the_key() {
    let o: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let cases = [
        (
            "[routes.plugins.http-logger]\nuri = \"https://127.0.0.1:1/x\"\n",
            "routes[0].plugins.http-logger.uri",
        ),
        (
            "[routes.plugins.http-logger]\nuri = \"http://127.0.0.1:1/x\"\nbatch_max_size = 0\n",
            "routes[0].plugins.http-logger.batch_max_size",
        ),
        (
            "[routes.plugins.http-logger]\nuri = \"http://127.0.0.1:1/x\"\nbatch_size = 5\n",
            "routes[0].plugins.http-logger",
        ),
        (
            "[routes.plugins.tcp-logger]\nhost = \"127.0.0.1\"\n",
            "routes[0].plugins.tcp-logger",
        ),
        (
            "[routes.plugins.tcp-logger]\nhost = \"127.0.0.1\"\nport = 9\ninactive_timeout = \"soon\"\n",
            "routes[0].plugins.tcp-logger.inactive_timeout",
        ),
    ];
    for (plugin, path) in cases {
        let out = check_config(&config(o, plugin));
        assert!(!out.status.success(), "accepted:\n{plugin}");
        assert!(
            out.all().contains(path),
            "{plugin}: want {path} in\n{}",
            out.all()
        );
    }
}
