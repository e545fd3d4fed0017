//! Owns the TOML config builders tests compose: `[server]`, `[[upstreams]]`, `[[routes]]` and
//! small whole configs. Must not start processes or open sockets: addresses in, text out.

use std::net::SocketAddr;

use super::origin::Origin;

/// `[server]` section with `listen = ["127.0.0.1:0"]`, `workers = 1` as defaults;
/// `overrides` are `(key, raw TOML value)` pairs that replace or add keys.
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
