//! CLI and configuration validation.
use crate::harness::*;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn valid_config() -> String {
    valid_config_with(&[])
}

/// `valid_config` with these `[server]` keys set.
fn valid_config_with(server_keys: &[(&str, &str)]) -> String {
    format!(
        "{}{}{}",
        server(server_keys),
        upstream("backend", &["127.0.0.1:9".parse().expect("addr")], ""),
        route("r", &["/*"], "backend", "")
    )
}

fn assert_bad(config: &str, needles: &[&str], what: &str) {
    let out = check_config(config);
    assert!(
        !out.status.success(),
        "{what}: `ringway check` must fail, exited {}.\nconfig:\n{config}\noutput:\n{}",
        out.status,
        out.all()
    );
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "{what}: stderr must name `{n}`.\nconfig:\n{config}\nstderr:\n{}\nstdout:\n{}",
            out.stderr,
            out.stdout
        );
    }
}

#[test]
fn shipped_configs_pass_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().map(|e| e == "toml").unwrap_or(false))
        .collect();
    files.sort();
    assert!(
        files
            .iter()
            .any(|p| p.file_name().map(|n| n == "ringway.toml").unwrap_or(false)),
        "config/ringway.toml must be shipped; found {files:?}"
    );
    for f in &files {
        let out = check_config_file(f);
        assert!(
            out.status.success(),
            "`ringway check -c {}` failed ({}):\n{}",
            f.display(),
            out.status,
            out.all()
        );
        assert!(
            out.all().to_ascii_lowercase().contains("ok"),
            "`ringway check -c {}` should print an ok message, printed:\n{}",
            f.display(),
            out.all()
        );
    }
}

#[test]
fn valid_config_passes_check_without_serving() {
    let cfg = valid_config();
    let t0 = Instant::now();
    let out = check_config(&cfg);
    assert!(
        out.status.success(),
        "valid config failed check:\n{}",
        out.all()
    );
    assert!(
        out.all().to_ascii_lowercase().contains("ok"),
        "check printed:\n{}",
        out.all()
    );
    assert!(
        !out.all().contains("listening on"),
        "check must not serve:\n{}",
        out.all()
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn full_contract_config_passes_check() {
    let cfg = r#"
[server]
listen = ["127.0.0.1:0"]
workers = "auto"
driver = "auto"
io_uring_entries = 1024
io_uring_taskrun = "coop"
max_connections = 10000
defer_first_ack = true
max_header_bytes = 16384
max_request_line_bytes = 8192
max_body_bytes = 0
client_header_timeout = "10s"
client_body_timeout = "500ms"
keepalive_timeout = "2m"
send_timeout = 60
shutdown_timeout = "10s"
tunnel_idle_timeout = "300s"

[[upstreams]]
name = "backend"
balance = "chash"
hash_on = "cookie:sid"
nodes = [{ addr = "127.0.0.1:8080", weight = 1 }, { addr = "127.0.0.1:8081", weight = 3 }]
connect_timeout = "5s"
send_timeout = "60s"
read_timeout = "60s"
retries = 1
max_fails = 1
fail_timeout = "10s"
keepalive_pool = { size = 320, idle_timeout = "60s", requests = 1000, peek_after = "0s" }

[[upstreams]]
name = "other"
balance = "least_conn"
nodes = [{ addr = "127.0.0.1:8082", weight = 1 }]

[[routes]]
name = "default"
paths = ["/*", "/exact", "/users/{id}", "/api/*"]
hosts = ["example.com", "*.example.com"]
methods = ["GET", "POST"]
priority = 0
headers = [{ name = "X-Canary", value = "1" }, { name = "X-Present" }]
args = [{ name = "v", value = "2" }]
upstream = "backend"
strip_prefix = "/api"
pass_host = "rewrite"
upstream_host = "internal.example"

[[routes]]
name = "second"
paths = ["/other"]
upstream = "other"
pass_host = "node"
"#;
    let out = check_config(cfg);
    assert!(
        out.status.success(),
        "config using every contract key failed check:\n{}",
        out.all()
    );
}

#[test]
fn unknown_key_in_server() {
    let cfg = valid_config().replace("[server]\n", "[server]\nbogus_key = 1\n");
    assert_bad(&cfg, &["bogus_key"], "unknown key in [server]");
}

#[test]
fn unknown_key_in_route() {
    let cfg = valid_config() + "";
    let cfg = cfg.replace(
        "upstream = \"backend\"",
        "upstream = \"backend\"\npathz = [\"/x\"]",
    );
    assert_bad(&cfg, &["pathz"], "unknown key in [[routes]]");
}

#[test]
fn workers_not_a_number() {
    let cfg = valid_config().replace("workers = 1", "workers = \"many\"");
    assert_bad(&cfg, &["server.workers"], "workers = \"many\"");
}

#[test]
fn workers_zero() {
    let cfg = valid_config().replace("workers = 1", "workers = 0");
    assert_bad(&cfg, &["server.workers"], "workers = 0");
}

#[test]
fn route_with_missing_upstream() {
    let cfg = valid_config().replace("upstream = \"backend\"", "upstream = \"nope\"");
    assert_bad(
        &cfg,
        &["routes[0].upstream"],
        "route naming a missing upstream",
    );
}

#[test]
fn empty_nodes_list() {
    let cfg = format!(
        "{}[[upstreams]]\nname = \"backend\"\nnodes = []\n\n{}",
        server(&[]),
        route("r", &["/*"], "backend", "")
    );
    assert_bad(&cfg, &["upstreams[0].nodes"], "empty nodes list");
}

#[test]
fn bad_duration() {
    let cfg = valid_config().replace(
        "[server]\n",
        "[server]\nclient_header_timeout = \"10 parsecs\"\n",
    );
    assert_bad(
        &cfg,
        &["server.client_header_timeout"],
        "duration \"10 parsecs\"",
    );
}

#[test]
fn bad_duration_in_upstream() {
    let cfg = valid_config().replace("nodes = [", "read_timeout = \"soon\"\nnodes = [");
    assert_bad(&cfg, &["upstreams[0].read_timeout"], "duration \"soon\"");
}

#[test]
fn bad_peek_after_in_keepalive_pool() {
    let cfg = valid_config().replace(
        "nodes = [",
        "keepalive_pool = { peek_after = \"-5ms\" }\nnodes = [",
    );
    assert_bad(
        &cfg,
        &["upstreams[0].keepalive_pool.peek_after"],
        "duration \"-5ms\"",
    );
}

#[test]
fn bad_node_addr() {
    let cfg = valid_config().replace("127.0.0.1:9", "127.0.0.1:99999");
    assert_bad(
        &cfg,
        &["upstreams[0].nodes[0].addr"],
        "node addr 127.0.0.1:99999",
    );
}

#[test]
fn bad_listen_addr() {
    let cfg = valid_config().replace(
        r#"listen = ["127.0.0.1:0"]"#,
        r#"listen = ["not an address"]"#,
    );
    assert_bad(&cfg, &["server.listen"], "listen = [\"not an address\"]");
}

#[test]
fn bad_balance() {
    let cfg = valid_config().replace("nodes = [", "balance = \"random\"\nnodes = [");
    assert_bad(&cfg, &["upstreams[0].balance"], "balance = \"random\"");
}

#[test]
fn bad_driver() {
    let cfg = valid_config_with(&[("driver", "\"epoll\"")]);
    assert_bad(&cfg, &["server.driver"], "driver = \"epoll\"");
}

#[test]
fn invalid_toml_syntax_reports_line() {
    // the error is on line 7
    let cfg = "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[[upstreams]]\nname = \"backend\"\nnodes = [ = ]\n";
    let out = check_config(cfg);
    assert!(
        !out.status.success(),
        "invalid TOML passed check:\n{}",
        out.all()
    );
    let e = &out.stderr;
    assert!(
        e.contains("line 7") || e.contains(":7:") || e.contains(":7,"),
        "TOML syntax error message must give the line number (7):\n{e}"
    );
}

#[test]
fn missing_config_file() {
    let out = run_cli(
        &["check", "-c", "/nonexistent/ringway-does-not-exist.toml"],
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("ringway-does-not-exist.toml"),
        "error should name the missing file:\n{}",
        out.stderr
    );
}

#[test]
fn run_with_bad_config_exits_without_serving() {
    let port = closed_port();
    let cfg = valid_config()
        .replace("127.0.0.1:0", &port.to_string())
        .replace("upstream = \"backend\"", "upstream = \"nope\"");
    let tmp = TempFile::new(&cfg);
    let out = run_cli(&["run", "-c", tmp.path_str()], Duration::from_secs(10));
    assert!(
        !out.status.success(),
        "`ringway run` with a bad config must exit non-zero:\n{}",
        out.all()
    );
    assert!(
        out.stderr.contains("routes[0].upstream"),
        "stderr must name the key path:\n{}",
        out.stderr
    );
    assert!(
        !out.all().contains("listening on"),
        "must not serve with a bad config:\n{}",
        out.all()
    );
    assert!(
        TcpStream::connect_timeout(&port, Duration::from_millis(500)).is_err(),
        "something accepted on the configured port"
    );
}

#[test]
fn help_and_version() {
    let h = run_cli(&["--help"], Duration::from_secs(10));
    assert!(h.status.success(), "--help exit {}", h.status);
    let text = h.all();
    assert!(
        text.contains("run") && text.contains("check"),
        "--help should list run and check:\n{text}"
    );
    let v = run_cli(&["--version"], Duration::from_secs(10));
    assert!(v.status.success(), "--version exit {}", v.status);
    assert!(
        v.all().contains(env!("CARGO_PKG_VERSION")),
        "--version output:\n{}",
        v.all()
    );
}

#[test]
fn two_listeners_both_serve() {
    let origin = Origin::echo_target("o");
    let cfg = simple_config(
        origin.addr,
        &[("listen", r#"["127.0.0.1:0", "127.0.0.1:0"]"#)],
    );
    let gw = Gateway::start_with_listeners(&cfg, 2);
    assert_ne!(gw.addrs[0], gw.addrs[1]);
    for a in &gw.addrs {
        let r = one_shot(*a, get_req("/two", "example.com"));
        assert_eq!(r.status, 200, "listener {a}: {}", r.raw_head);
    }
}
