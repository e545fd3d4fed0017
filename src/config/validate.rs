//! Turns the raw file into the validated `Config`: defaults, cross-checks, plain data.
//! Every error names the key path and says what would be accepted; nothing here runs per request.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::raw::{dur, RawConfig, RawListen, RawUpstream, RawWorkers};
use super::{
    Config, ConfigError, DriverKind, HashOn, NodeConfig, Policy, PoolConfig, ServerConfig, TaskRun,
    UpstreamConfig,
};
use super::{ConsumerConfig, ConsumerGroupConfig};

/// `keepalive_pool.peek_after` by default: every reuse is peeked. Skipping the peek saves a
/// system call per request but lets bytes an upstream sends beyond its framing answer the next
/// request (perf/RESULTS.md, "Issue 21, upstream pool: reuse without the peek").
const PEEK_AFTER: Duration = Duration::ZERO;

pub(super) fn validate(raw: RawConfig, dir: &Path) -> Result<Config, ConfigError> {
    let server = server(&raw, dir)?;
    let demo = match &raw.demo {
        Some(d) => Some(socket_addr("demo.listen", &d.listen)?),
        None => None,
    };
    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    let mut by_name = HashMap::new();
    for (i, u) in raw.upstreams.iter().enumerate() {
        let mut up = upstream(i, u)?;
        up.tls = super::tls::upstream_tls(i, u, dir)?;
        if by_name.insert(up.name.clone(), i).is_some() {
            return Err(ConfigError::new(
                format!("upstreams[{i}].name"),
                format!(
                    "duplicate upstream name {:?}; names must be unique",
                    up.name
                ),
            ));
        }
        upstreams.push(up);
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut route_names = HashMap::new();
    for (i, r) in raw.routes.iter().enumerate() {
        if route_names.insert(r.name.clone(), i).is_some() {
            return Err(ConfigError::new(
                format!("routes[{i}].name"),
                format!("duplicate route name {:?}; names must be unique", r.name),
            ));
        }
        routes.push(super::routes::route(i, r, &by_name)?);
    }
    let mut apis = Vec::with_capacity(raw.apis.len());
    let mut api_ids = HashMap::new();
    for (i, a) in raw.apis.iter().enumerate() {
        let api = super::apis::api(i, a, &by_name, dir)?;
        if api_ids.insert(api.id(), i).is_some() {
            return Err(ConfigError::new(
                format!("apis[{i}]"),
                format!("another API has name {:?} and the same version", api.name),
            ));
        }
        apis.push(api);
    }
    super::apis::resolve(&mut apis)?;
    // With the admin API on, ties between routes go to the lower name: that is the order of the
    // admin document (routes by id = name), so a file load, a build from the admin document and
    // a one-route change (which places a route among its neighbours by name) all agree.
    let name_order = raw.admin.is_some() || raw.config_source.is_some();
    let config_source = super::source::etcd(&raw, dir)?;
    let status = super::ops::status(&raw)?;
    let admin = super::ops::admin(&raw, dir)?;
    let access_log = super::ops::access_log(&raw, dir)?;
    let consumers: Vec<ConsumerConfig> = raw
        .consumers
        .into_iter()
        .map(|c| ConsumerConfig {
            username: c.username,
            group: c.group,
            plugins: c.plugins,
        })
        .collect();
    let consumer_groups: Vec<ConsumerGroupConfig> = raw
        .consumer_groups
        .into_iter()
        .map(|g| ConsumerGroupConfig {
            name: g.name,
            plugins: g.plugins,
        })
        .collect();
    Ok(Config {
        server,
        demo,
        upstreams,
        routes: super::RouteTable::new(routes, name_order),
        global_plugins: Arc::new(raw.global_plugins),
        consumers: consumers.into(),
        apis: apis.into(),
        consumer_groups: consumer_groups.into(),
        status,
        admin,
        access_log,
        config_source,
        source: None,
    })
}

fn server(raw: &RawConfig, dir: &Path) -> Result<ServerConfig, ConfigError> {
    let s = &raw.server;
    if s.listen.is_empty() {
        return Err(ConfigError::new(
            "server.listen",
            "at least one listen address is required, e.g. listen = [\"127.0.0.1:9080\"]",
        ));
    }
    let mut listen = Vec::with_capacity(s.listen.len());
    let mut tls = Vec::with_capacity(s.listen.len());
    for (i, l) in s.listen.iter().enumerate() {
        let text = match l {
            RawListen::Addr(a) => a.as_str(),
            RawListen::Table(t) => t.addr.as_str(),
        };
        listen.push(socket_addr(&format!("server.listen[{i}]"), text)?);
        tls.push(match l {
            RawListen::Addr(_) => None,
            RawListen::Table(t) => super::tls::listener_tls(i, t, dir)?,
        });
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match &s.workers {
        None => cpus,
        Some(RawWorkers::Count(n)) if *n >= 1 && *n <= 1024 => *n as usize,
        Some(RawWorkers::Word(w)) if w == "auto" => cpus,
        Some(other) => {
            return Err(ConfigError::new(
                "server.workers",
                format!("expected \"auto\" or a number from 1 to 1024, got {other:?}"),
            ))
        }
    };
    if let Some(list) = &s.cpu_affinity {
        if list.is_empty() {
            return Err(ConfigError::new(
                "server.cpu_affinity",
                "must list at least one CPU, or be left out",
            ));
        }
        let online: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        if let Some(bad) = list
            .iter()
            .find(|c| !online.is_empty() && !online.contains(c))
        {
            return Err(ConfigError::new(
                "server.cpu_affinity",
                format!("CPU {bad} is not available to this process (available: {online:?})"),
            ));
        }
    }
    let driver = match s.driver.as_deref() {
        None | Some("auto") => DriverKind::Auto,
        Some("io_uring") => DriverKind::IoUring,
        Some("legacy") => DriverKind::Legacy,
        Some(other) => {
            return Err(ConfigError::new(
                "server.driver",
                format!("expected \"auto\", \"io_uring\" or \"legacy\", got {other:?}"),
            ))
        }
    };
    let entries = s.io_uring_entries.unwrap_or(1024);
    if !(8..=32768).contains(&entries) {
        return Err(ConfigError::new(
            "server.io_uring_entries",
            format!("expected 8..=32768, got {entries}"),
        ));
    }
    let taskrun = match s.io_uring_taskrun.as_deref() {
        None | Some("coop") => TaskRun::Coop,
        Some("defer") => TaskRun::Defer,
        Some("kernel") => TaskRun::Kernel,
        Some(other) => {
            return Err(ConfigError::new(
                "server.io_uring_taskrun",
                format!("expected \"coop\", \"defer\" or \"kernel\", got {other:?}"),
            ))
        }
    };
    let max_header_bytes = s.max_header_bytes.unwrap_or(16 * 1024);
    if !(256..=1024 * 1024).contains(&max_header_bytes) {
        return Err(ConfigError::new(
            "server.max_header_bytes",
            format!("expected 256..=1048576 bytes, got {max_header_bytes}"),
        ));
    }
    let max_request_line_bytes = s.max_request_line_bytes.unwrap_or(8 * 1024);
    if max_request_line_bytes < 64 || max_request_line_bytes > max_header_bytes {
        return Err(ConfigError::new(
            "server.max_request_line_bytes",
            format!(
                "expected 64 up to max_header_bytes ({max_header_bytes}), got {max_request_line_bytes}"
            ),
        ));
    }
    let read_buffer_bytes = s.read_buffer_bytes.unwrap_or(16 * 1024);
    if !(1024..=4 * 1024 * 1024).contains(&read_buffer_bytes) {
        return Err(ConfigError::new(
            "server.read_buffer_bytes",
            format!("expected 1024..=4194304 bytes, got {read_buffer_bytes}"),
        ));
    }
    let max_connections = s.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        return Err(ConfigError::new(
            "server.max_connections",
            "must be at least 1",
        ));
    }
    Ok(ServerConfig {
        listen,
        tls,
        workers,
        cpu_affinity: s.cpu_affinity.clone(),
        driver,
        io_uring_entries: entries,
        io_uring_taskrun: taskrun,
        max_connections,
        defer_first_ack: s.defer_first_ack.unwrap_or(true),
        max_header_bytes,
        max_request_line_bytes,
        max_body_bytes: s.max_body_bytes.unwrap_or(0),
        read_buffer_bytes,
        client_header_timeout: dur("server.client_header_timeout", &s.client_header_timeout, 60)?,
        client_body_timeout: dur("server.client_body_timeout", &s.client_body_timeout, 60)?,
        keepalive_timeout: dur("server.keepalive_timeout", &s.keepalive_timeout, 75)?,
        keepalive_requests: s.keepalive_requests.unwrap_or(10_000),
        send_timeout: dur("server.send_timeout", &s.send_timeout, 60)?,
        shutdown_timeout: dur("server.shutdown_timeout", &s.shutdown_timeout, 10)?,
        tunnel_idle_timeout: dur("server.tunnel_idle_timeout", &s.tunnel_idle_timeout, 300)?,
        upgrade_socket: match s.upgrade_socket.as_deref() {
            None => None,
            Some("") => {
                return Err(ConfigError::new(
                    "server.upgrade_socket",
                    "must be a path (leave it out for the default beside the config file)",
                ))
            }
            Some(p) => Some(dir.join(p)),
        },
    })
}

fn upstream(i: usize, u: &RawUpstream) -> Result<UpstreamConfig, ConfigError> {
    let at = |key: &str| format!("upstreams[{i}].{key}");
    if u.name.is_empty() {
        return Err(ConfigError::new(at("name"), "must not be empty"));
    }
    if u.nodes.is_empty() {
        return Err(ConfigError::new(
            at("nodes"),
            "an upstream needs at least one node, e.g. nodes = [{ addr = \"127.0.0.1:8080\", weight = 1 }]",
        ));
    }
    let mut nodes = Vec::with_capacity(u.nodes.len());
    for (n, node) in u.nodes.iter().enumerate() {
        let weight = node.weight.unwrap_or(1);
        if weight == 0 || weight > 10_000 {
            return Err(ConfigError::new(
                at(&format!("nodes[{n}].weight")),
                format!("expected 1..=10000, got {weight}"),
            ));
        }
        nodes.push(NodeConfig {
            addr: socket_addr(&at(&format!("nodes[{n}].addr")), &node.addr)?,
            host: node.addr.clone(),
            weight,
        });
    }
    let policy = match u.balance.as_deref() {
        None | Some("round_robin") | Some("roundrobin") => Policy::RoundRobin,
        Some("least_conn") => Policy::LeastConn,
        Some("chash") => Policy::Chash,
        Some(other) => {
            return Err(ConfigError::new(
                at("balance"),
                format!("expected \"round_robin\", \"least_conn\" or \"chash\", got {other:?}"),
            ))
        }
    };
    let hash_on = match u.hash_on.as_deref() {
        None | Some("remote_addr") => HashOn::RemoteAddr,
        Some("uri") => HashOn::Uri,
        Some(other) => {
            let (kind, name) = other.split_once(':').unwrap_or((other, ""));
            if name.is_empty() {
                return Err(hash_on_error(at("hash_on"), other));
            }
            match kind {
                "header" => HashOn::Header(name.to_ascii_lowercase()),
                "cookie" => HashOn::Cookie(name.to_string()),
                "arg" => HashOn::Arg(name.to_string()),
                _ => return Err(hash_on_error(at("hash_on"), other)),
            }
        }
    };
    if u.hash_on.is_some() && policy != Policy::Chash {
        return Err(ConfigError::new(
            at("hash_on"),
            "only meaningful with balance = \"chash\"; remove it or set balance = \"chash\"",
        ));
    }
    let retries = u.retries.unwrap_or(nodes.len() as u32 - 1);
    let pool = match &u.keepalive_pool {
        None => PoolConfig {
            size: 320,
            idle_timeout: Duration::from_secs(60),
            requests: 1000,
            peek_after: PEEK_AFTER,
        },
        Some(p) => {
            let idle_timeout = dur(&at("keepalive_pool.idle_timeout"), &p.idle_timeout, 60)?;
            PoolConfig {
                size: p.size.unwrap_or(320),
                idle_timeout,
                requests: match p.requests {
                    Some(0) => {
                        return Err(ConfigError::new(
                            at("keepalive_pool.requests"),
                            "must be at least 1",
                        ))
                    }
                    Some(n) => n,
                    None => 1000,
                },
                // Skipping the peek is for connections moments old, not for most of their life.
                peek_after: match &p.peek_after {
                    None => PEEK_AFTER,
                    v => dur(&at("keepalive_pool.peek_after"), v, 0)?,
                }
                .min(idle_timeout / 4),
            }
        }
    };
    Ok(UpstreamConfig {
        name: u.name.clone(),
        policy,
        hash_on,
        nodes,
        connect_timeout: dur(&at("connect_timeout"), &u.connect_timeout, 5)?,
        send_timeout: dur(&at("send_timeout"), &u.send_timeout, 60)?,
        read_timeout: dur(&at("read_timeout"), &u.read_timeout, 60)?,
        retries,
        max_fails: u.max_fails.unwrap_or(1),
        fail_timeout: dur(&at("fail_timeout"), &u.fail_timeout, 10)?,
        pool,
        tls: None,
        checks: super::checks::active(&at("checks.active"), u)?,
    })
}

fn hash_on_error(path: String, got: &str) -> ConfigError {
    ConfigError::new(
        path,
        format!(
            "expected \"remote_addr\", \"uri\", \"header:NAME\", \"cookie:NAME\" or \"arg:NAME\", got {got:?}"
        ),
    )
}

fn socket_addr(path: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    // Host names are resolved once at load; the request path never does DNS.
    let resolved = if text
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
    {
        text.to_socket_addrs().ok().and_then(|mut it| it.next())
    } else {
        None
    };
    resolved.ok_or_else(|| {
        ConfigError::new(
            path,
            format!("{text:?} is not an address; expected HOST:PORT such as \"127.0.0.1:8080\""),
        )
    })
}
