//! Owns the TOML config builders (`[server]`, `[[upstreams]]`, `[[routes]]`, small whole configs)
//! and RINGWAY_TEST_DRIVER's `server.driver`. Must not start processes or open sockets.

use std::net::SocketAddr;
use std::sync::OnceLock;

use super::origin::Origin;

/// Names the `server.driver` every test gateway runs on ("legacy", "io_uring" or "auto") unless
/// the test chose one itself; unset or empty, configs say nothing and ringway's default applies.
/// README "Run the tests" runs the proxy-path modules a second time with it set to "legacy".
pub const DRIVER_ENV: &str = "RINGWAY_TEST_DRIVER";

/// The driver [`DRIVER_ENV`] asks for; panics on any other value, so a typo cannot quietly run
/// the default driver instead.
pub fn test_driver() -> Option<&'static str> {
    static DRIVER: OnceLock<Option<&'static str>> = OnceLock::new();
    *DRIVER.get_or_init(|| {
        let v = std::env::var(DRIVER_ENV).unwrap_or_default();
        match v.as_str() {
            "" => None,
            "legacy" => Some("legacy"),
            "io_uring" => Some("io_uring"),
            "auto" => Some("auto"),
            _ => panic!("{DRIVER_ENV}={v:?}: want legacy, io_uring or auto"),
        }
    })
}

/// `config` with `driver = "<RINGWAY_TEST_DRIVER>"` in its `[server]` table unless it names a
/// driver already; unchanged when the variable is unset. Every gateway the harness starts (and
/// every config `ops::Proc` rewrites) goes through here, so hand-written configs get it too.
pub fn with_test_driver(config: &str) -> String {
    match test_driver() {
        Some(driver) => with_default_driver(config, driver),
        None => config.to_string(),
    }
}

/// `config` with `driver = "<driver>"` added to `[server]` unless that table sets one (a config
/// without a `[server]` header gets the table appended).
pub fn with_default_driver(config: &str, driver: &str) -> String {
    if configured_driver(config).is_some() {
        return config.to_string();
    }
    let line = format!("driver = \"{driver}\"\n");
    match server_table(config) {
        Some((at, _)) => {
            let (head, rest) = config.split_at(at);
            let sep = if head.ends_with('\n') { "" } else { "\n" };
            format!("{head}{sep}{line}{rest}")
        }
        None => format!("{config}\n[server]\n{line}"),
    }
}

/// The `server.driver` value `config` sets, if any.
pub fn configured_driver(config: &str) -> Option<String> {
    let (_, body) = server_table(config)?;
    body.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "driver").then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Offset just past the `[server]` header line, and the text of that table (up to the next header).
fn server_table(config: &str) -> Option<(usize, &str)> {
    let mut at = 0;
    for line in config.split_inclusive('\n') {
        at += line.len();
        if line.trim() == "[server]" {
            let rest = &config[at..];
            let end = rest
                .split_inclusive('\n')
                .take_while(|l| !l.trim_start().starts_with('['))
                .map(str::len)
                .sum();
            return Some((at, &rest[..end]));
        }
    }
    None
}

/// `[server]` section with `listen = ["127.0.0.1:0"]`, `workers = 1` as defaults;
/// `overrides` are `(key, raw TOML value)` pairs that replace or add keys. With
/// RINGWAY_TEST_DRIVER set, `driver` too, unless `overrides` name one.
pub fn server(overrides: &[(&str, &str)]) -> String {
    let mut keys: Vec<(String, String)> = vec![
        ("listen".into(), r#"["127.0.0.1:0"]"#.into()),
        ("workers".into(), "1".into()),
    ];
    for (k, v) in overrides {
        if let Some(e) = keys.iter_mut().find(|(kk, _)| kk == k) {
            e.1 = v.to_string();
        } else {
            keys.push((k.to_string(), v.to_string()));
        }
    }
    if let Some(d) = test_driver() {
        if !keys.iter().any(|(k, _)| k == "driver") {
            keys.push(("driver".into(), format!("\"{d}\"")));
        }
    }
    let mut s = String::from("[server]\n");
    for (k, v) in keys {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s.push('\n');
    s
}

/// `[[upstreams]]` with equal-weight nodes; `extra` is raw TOML lines appended.
pub fn upstream(name: &str, nodes: &[SocketAddr], extra: &str) -> String {
    let w: Vec<(SocketAddr, u32)> = nodes.iter().map(|a| (*a, 1)).collect();
    upstream_weighted(name, &w, extra)
}

pub fn upstream_weighted(name: &str, nodes: &[(SocketAddr, u32)], extra: &str) -> String {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|(a, w)| format!(r#"{{ addr = "{a}", weight = {w} }}"#))
        .collect();
    format!(
        "[[upstreams]]\nname = \"{name}\"\nnodes = [{}]\n{extra}\n\n",
        nodes.join(", ")
    )
}

/// `[[routes]]` with the given paths and upstream; `extra` is raw TOML lines appended.
pub fn route(name: &str, paths: &[&str], upstream: &str, extra: &str) -> String {
    let paths: Vec<String> = paths.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[[routes]]\nname = \"{name}\"\npaths = [{}]\nupstream = \"{upstream}\"\n{extra}\n\n",
        paths.join(", ")
    )
}

/// One upstream "backend" over `origin`, one catch-all route, server overrides.
pub fn simple_config(origin: SocketAddr, server_overrides: &[(&str, &str)]) -> String {
    simple_config_with(origin, server_overrides, "")
}

/// `simple_config` with raw TOML lines added to the upstream (timeouts, pool, ...).
pub fn simple_config_with(
    origin: SocketAddr,
    server_overrides: &[(&str, &str)],
    upstream_extra: &str,
) -> String {
    format!(
        "{}{}{}",
        server(server_overrides),
        upstream("backend", &[origin], upstream_extra),
        route("default", &["/*"], "backend", "")
    )
}

/// A config with one route "r" on "/*" to upstream "backend" (the origin `o`); `plugins` is
/// appended to the route's table.
pub fn one_route(o: &Origin, server_overrides: &[(&str, &str)], plugins: &str) -> String {
    format!(
        "{}{}{}",
        server(server_overrides),
        upstream("backend", &[o.addr], ""),
        route("r", &["/*"], "backend", plugins)
    )
}

/// Shards for the proxy-cache tests: `default`, or `RINGWAY_TEST_CACHE_WORKERS` when set (run
/// `RINGWAY_TEST_CACHE_WORKERS=2 cargo test --test e2e -- cache` to try every cache test on two
/// shards; sharding must be invisible to clients).
pub fn cache_workers(default: usize) -> String {
    std::env::var("RINGWAY_TEST_CACHE_WORKERS")
        .ok()
        .filter(|v| v.parse::<usize>().is_ok_and(|n| n > 0))
        .unwrap_or_else(|| default.to_string())
}
