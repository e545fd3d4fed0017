//! The validated configuration as plain data, and the loader that turns a TOML file (or the
//! admin API's JSON) into it. Builds nothing: the router and plugin factories are `crate::built`'s.

pub mod apis;
mod checks;
pub mod ops;
mod raw;
mod routes;
pub mod slo;
pub mod source;
mod tls;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::error::ConfigError;
pub use crate::net::ring::{DriverKind, RingOpts, TaskRun};
pub use crate::util::units::parse_duration;
pub use checks::{ActiveCheck, CheckKind};
pub use routes::{with_route, Cond, RouteSpec, RouteTable};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// TLS settings per listen address, same order as `listen`; `None` for plain listeners.
    pub tls: Vec<Option<crate::net::tls::ListenTlsSpec>>,
    pub workers: usize,
    pub cpu_affinity: Option<Vec<usize>>,
    pub driver: DriverKind,
    pub io_uring_entries: u32,
    pub io_uring_taskrun: TaskRun,
    pub max_connections: usize,
    /// TCP_QUICKACK off on accepted sockets: the request's ACK rides on the response.
    pub defer_first_ack: bool,
    pub max_header_bytes: usize,
    pub max_request_line_bytes: usize,
    /// 0 means unlimited.
    pub max_body_bytes: u64,
    pub read_buffer_bytes: usize,
    pub client_header_timeout: Duration,
    pub client_body_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub keepalive_requests: u64,
    pub send_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    /// Where the running process listens for a binary upgrade's successor; `None`: beside the
    /// config file (`Config::upgrade_socket`), or nowhere for a config not loaded from a file.
    pub upgrade_socket: Option<PathBuf>,
}

impl Config {
    /// The upgrade socket this config names, or `<config file>.upgrade.sock`.
    pub fn upgrade_socket(&self) -> Option<PathBuf> {
        self.server.upgrade_socket.clone().or_else(|| {
            self.source.as_ref().map(|p| {
                let mut s = p.as_os_str().to_owned();
                s.push(".upgrade.sock");
                PathBuf::from(s)
            })
        })
    }
}

impl ServerConfig {
    pub fn ring(&self) -> RingOpts {
        RingOpts {
            driver: self.driver,
            entries: self.io_uring_entries,
            taskrun: self.io_uring_taskrun,
        }
    }
}

/// Which balancing algorithm an upstream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    LeastConn,
    Chash,
}

/// What a consistent-hash upstream hashes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    RemoteAddr,
    Uri,
    /// Lowercased header name.
    Header(String),
    Cookie(String),
    Arg(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub addr: SocketAddr,
    /// The address as written, used as Host for `pass_host = "node"`.
    pub host: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub size: usize,
    pub idle_timeout: Duration,
    pub requests: u32,
    /// A replayable request reuses a connection idle for less than this without peeking at it
    /// (upstream/pool.rs); zero: always peek. At most a quarter of `idle_timeout`.
    pub peek_after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub policy: Policy,
    pub hash_on: HashOn,
    pub nodes: Vec<NodeConfig>,
    pub connect_timeout: Duration,
    pub send_timeout: Duration,
    pub read_timeout: Duration,
    pub retries: u32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub pool: PoolConfig,
    /// `scheme = "https"` / `tls = { ... }`: connections to every node are TLS.
    pub tls: Option<crate::net::tls_client::UpstreamTlsSpec>,
    /// `[upstreams.checks.active]`: probed by the health thread (src/active_health), not by shards.
    pub checks: Option<std::sync::Arc<ActiveCheck>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassHost {
    Pass,
    Node,
    Rewrite(String),
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    pub strip_prefix: Option<String>,
    pub pass_host: PassHost,
    pub websocket: bool,
    /// `hsts` on the route: its Strict-Transport-Security value, sent over TLS only, in place of
    /// the listener's.
    pub hsts: Option<std::sync::Arc<str>>,
    /// What the router matches on (compiled by the build step).
    pub spec: RouteSpec,
    /// Plugin name -> its table, as written; each plugin validates it when the set is built.
    pub plugins: BTreeMap<String, toml::Value>,
}

/// One `[[consumers]]` entry: a name and one credential table per auth plugin, checked by
/// those plugins when the set is built.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub username: String,
    /// A `[[consumer_groups]]` name (checked when the plugin set is built).
    pub group: Option<String>,
    pub plugins: BTreeMap<String, toml::Value>,
}

/// One `[[consumer_groups]]` entry: plugins its consumers get (see README "Consumer groups").
#[derive(Debug, Clone)]
pub struct ConsumerGroupConfig {
    pub name: String,
    pub plugins: BTreeMap<String, toml::Value>,
}

/// The validated configuration as plain data. What shards run is built from it (router, plugin
/// factories) by `crate::built`; nothing here is compiled or shared with shards' mutable state.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub demo: Option<SocketAddr>,
    pub upstreams: Vec<UpstreamConfig>,
    /// By route id, the id `router` returns.
    pub routes: RouteTable,
    /// `[global_plugins]`: plugin name -> table, run before every route's own.
    pub global_plugins: Arc<BTreeMap<String, toml::Value>>,
    pub consumers: Arc<[ConsumerConfig]>,
    /// `[[apis]]`: their routes are made by the build step and added to `routes` there.
    pub apis: Arc<[apis::ApiConfig]>,
    pub consumer_groups: Arc<[ConsumerGroupConfig]>,
    pub status: Option<ops::StatusConfig>,
    pub admin: Option<ops::AdminConfig>,
    pub access_log: Option<crate::accesslog::AccessLogConfig>,
    /// `[config_source] etcd = {...}`: objects also come from etcd (see `crate::etcd`).
    pub config_source: Option<source::EtcdSource>,
    /// The file this was loaded from (SIGHUP re-reads it; the admin state file sits beside it).
    pub source: Option<PathBuf>,
}

impl Config {
    /// Upstream name -> index into `upstreams` (what routes and traffic-split name).
    pub fn upstream_ids(&self) -> std::collections::HashMap<String, usize> {
        self.upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.clone(), i))
            .collect()
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "",
            format!("cannot read config file {}: {e}", path.display()),
        )
    })?;
    // Relative certificate paths are relative to the config file, not the working directory.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut cfg = from_str_in(&text, &dir)?;
    cfg.source = Some(path.to_path_buf());
    Ok(cfg)
}

/// Parses and validates config text; relative file paths resolve against the working directory.
pub fn from_str(text: &str) -> Result<Config, ConfigError> {
    from_str_in(text, Path::new("."))
}

/// Parses and validates config text whose relative file paths resolve against `dir`.
pub fn from_str_in(text: &str, dir: &Path) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::new(text);
    let raw: raw::RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.message().to_string();
        let loc = inner
            .span()
            .map(|s| line_col(text, s.start))
            .map(|(l, c)| format!(" (line {l}, column {c})"))
            .unwrap_or_default();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, format!("{msg}{loc}"))
    })?;
    validate::validate(raw, dir)
}

/// Validates a config given as JSON (the admin API's document: the TOML file's shape), with
/// relative paths resolved against `dir`. Errors name the key path like the TOML loader's.
pub fn from_json_in(doc: serde_json::Value, dir: &Path) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, e.into_inner().to_string())
    })?;
    validate::validate(raw, dir)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |p| before.len() - p - 1)
        + 1;
    (line, col)
}
