//! The TOML file as written by users: serde structs with `deny_unknown_fields`.
//! Owns only the file's shape and defaults; meaning and cross-checks live in `validate.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    #[serde(default)]
    pub demo: Option<RawDemo>,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Plugins run for every route (APISIX's global rules), by plugin name.
    #[serde(default)]
    pub global_plugins: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
}

/// `[[consumers]]`: a named identity with credentials per auth plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    pub username: String,
    /// Free text for people reading the file; ringway ignores it.
    #[serde(default)]
    #[allow(dead_code)]
    pub desc: Option<String>,
    #[serde(default)]
    pub plugins: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Vec<RawListen>,
    #[serde(default)]
    pub workers: Option<RawWorkers>,
    #[serde(default)]
    pub cpu_affinity: Option<Vec<usize>>,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub io_uring_entries: Option<u32>,
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub max_header_bytes: Option<usize>,
    #[serde(default)]
    pub max_request_line_bytes: Option<usize>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub read_buffer_bytes: Option<usize>,
    #[serde(default)]
    pub client_header_timeout: Option<RawDuration>,
    #[serde(default)]
    pub client_body_timeout: Option<RawDuration>,
    #[serde(default)]
    pub keepalive_timeout: Option<RawDuration>,
    #[serde(default)]
    pub keepalive_requests: Option<u64>,
    #[serde(default)]
    pub send_timeout: Option<RawDuration>,
    #[serde(default)]
    pub shutdown_timeout: Option<RawDuration>,
    #[serde(default)]
    pub tunnel_idle_timeout: Option<RawDuration>,
}

/// `listen = ["127.0.0.1:9080"]` or `[[server.listen]] addr = "..."` (the table form
/// is where per-listener options such as TLS will live).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawListen {
    Addr(String),
    Table(RawListenTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenTable {
    pub addr: String,
    #[serde(default)]
    pub tls: Option<bool>,
    /// First entry is the default certificate.
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    #[serde(default)]
    pub sni_strict: Option<bool>,
    #[serde(default)]
    pub client_ca: Option<String>,
    #[serde(default)]
    pub min_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub sni: Vec<String>,
}

/// `tls = { ... }` on an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub verify: Option<bool>,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
}

/// `workers = 2` or `workers = "auto"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawWorkers {
    Count(i64),
    Word(String),
}

/// `"10s"`, `"250ms"`, `"2m"`, `"1h"` or a bare integer number of seconds.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawDuration {
    Seconds(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDemo {
    pub listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    #[serde(default)]
    pub balance: Option<String>,
    #[serde(default)]
    pub hash_on: Option<String>,
    pub nodes: Vec<RawNode>,
    #[serde(default)]
    pub connect_timeout: Option<RawDuration>,
    #[serde(default)]
    pub send_timeout: Option<RawDuration>,
    #[serde(default)]
    pub read_timeout: Option<RawDuration>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub max_fails: Option<u32>,
    #[serde(default)]
    pub fail_timeout: Option<RawDuration>,
    #[serde(default)]
    pub keepalive_pool: Option<RawPool>,
    /// `"http"` (default) or `"https"`.
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub addr: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    #[serde(default)]
    pub size: Option<usize>,
    #[serde(default)]
    pub idle_timeout: Option<RawDuration>,
    #[serde(default)]
    pub requests: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub paths: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub headers: Vec<RawCond>,
    #[serde(default)]
    pub args: Vec<RawCond>,
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: Option<String>,
    #[serde(default)]
    pub pass_host: Option<String>,
    #[serde(default)]
    pub upstream_host: Option<String>,
    #[serde(default)]
    pub enable_websocket: Option<bool>,
    /// Plugin name -> its table; each plugin validates its own keys.
    #[serde(default)]
    pub plugins: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCond {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
}
