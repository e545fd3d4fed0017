//! The TOML file as written by users: serde structs with `deny_unknown_fields`.
//! Owns only the file's shape, defaults and the duration reader every section shares; meaning
//! and cross-checks live in `validate.rs`, `routes.rs`, `checks.rs` and `ops.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::ConfigError;

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
    /// `[[apis]]`: APIs defined by their OpenAPI documents (config/apis.rs).
    #[serde(default)]
    pub apis: Vec<RawApi>,
    /// Plugins run for every route (APISIX's global rules), by plugin name.
    #[serde(default)]
    pub global_plugins: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
    /// `[[consumer_groups]]`: plugins shared by the consumers that name the group.
    #[serde(default)]
    pub consumer_groups: Vec<RawConsumerGroup>,
    /// `[status]`: the metrics / status listener (off when the section is absent).
    #[serde(default)]
    pub status: Option<RawStatus>,
    /// `[admin]`: the admin API listener (off when the section is absent).
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub access_log: Option<RawAccessLog>,
    /// `[config_source]`: where routes, upstreams, consumers and global rules come from
    /// besides this file (etcd).
    #[serde(default)]
    pub config_source: Option<RawConfigSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfigSource {
    pub etcd: RawEtcd,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub tls: Option<RawEtcdTls>,
    /// With etcd unreachable at start-up and no saved configuration: how long to keep trying.
    #[serde(default)]
    pub startup_wait: Option<String>,
    /// The last good configuration from etcd; default `<config file>.etcd.json`.
    #[serde(default)]
    pub saved_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcdTls {
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    #[serde(default)]
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default)]
    pub listen: Option<String>,
    /// X-API-KEY for full access; generated (and logged once) when absent.
    #[serde(default)]
    pub key: Option<String>,
    /// X-API-KEY for read-only access.
    #[serde(default)]
    pub viewer_key: Option<String>,
    /// Client networks allowed to connect, e.g. ["127.0.0.0/8", "10.0.0.0/8"].
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Where admin changes are persisted; default `<config file>.state.json`.
    #[serde(default)]
    pub state_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// A file path, or "stdout".
    pub path: String,
    /// "combined" (default) or "json".
    #[serde(default)]
    pub format: Option<String>,
    /// JSON format only: which fields, in order.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// `path = "syslog"`: where to send the lines.
    #[serde(default)]
    pub syslog: Option<RawSyslog>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSyslog {
    /// host:port of the collector.
    pub address: String,
    /// "udp" (default), "tcp" or "tls".
    #[serde(default)]
    pub transport: Option<String>,
    #[serde(default)]
    pub facility: Option<String>,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub app_name: Option<String>,
    #[serde(default)]
    pub tls_ca: Option<String>,
    #[serde(default)]
    pub tls_verify: Option<bool>,
    #[serde(default)]
    pub tls_server_name: Option<String>,
    #[serde(default)]
    pub timeout: Option<RawDuration>,
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
    /// The `[[consumer_groups]]` entry whose plugins this consumer gets.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub plugins: BTreeMap<String, toml::Value>,
}

/// `[[consumer_groups]]`: a named set of (non-auth) plugins for its consumers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumerGroup {
    pub name: String,
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
    pub io_uring_taskrun: Option<String>,
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub defer_first_ack: Option<bool>,
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
    #[serde(default)]
    pub upgrade_socket: Option<String>,
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
    /// Pick the cipher suite by the server's order, not the client's (default true).
    #[serde(default)]
    pub prefer_server_ciphers: Option<bool>,
    /// Strict-Transport-Security on every response of this listener.
    #[serde(default)]
    pub hsts: Option<RawHsts>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHsts {
    pub max_age: RawDuration,
    #[serde(default)]
    pub include_subdomains: Option<bool>,
    #[serde(default)]
    pub preload: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub sni: Vec<String>,
    /// A DER OCSP response to staple (e.g. from `openssl ocsp -respout`), re-read on SIGHUP.
    #[serde(default)]
    pub ocsp: Option<String>,
    /// Fetch the OCSP answer from the responder the certificate names (AIA) and staple it.
    #[serde(default)]
    pub ocsp_fetch: Option<bool>,
    /// The responder's URL (`http://...`) instead of the certificate's; implies `ocsp_fetch`.
    #[serde(default)]
    pub ocsp_responder: Option<String>,
    /// Longest time between two fetches (default 1h); sooner when the answer's nextUpdate nears.
    #[serde(default)]
    pub ocsp_refresh: Option<RawDuration>,
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
    /// `[upstreams.checks]`: active health checks (APISIX's `checks.active`).
    #[serde(default)]
    pub checks: Option<RawChecks>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChecks {
    #[serde(default)]
    pub active: Option<RawActive>,
}

/// `[upstreams.checks.active]`; validated in `checks.rs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawActive {
    /// `"http"` (default) or `"tcp"`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub http_path: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub timeout: Option<RawDuration>,
    #[serde(default)]
    pub healthy: Option<RawHealthy>,
    #[serde(default)]
    pub unhealthy: Option<RawUnhealthy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthy {
    #[serde(default)]
    pub interval: Option<RawDuration>,
    #[serde(default)]
    pub http_statuses: Option<Vec<i64>>,
    #[serde(default)]
    pub successes: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUnhealthy {
    #[serde(default)]
    pub interval: Option<RawDuration>,
    #[serde(default)]
    pub http_statuses: Option<Vec<i64>>,
    #[serde(default)]
    pub http_failures: Option<i64>,
    #[serde(default)]
    pub tcp_failures: Option<i64>,
    #[serde(default)]
    pub timeouts: Option<i64>,
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
    #[serde(default)]
    pub peek_after: Option<RawDuration>,
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
    /// Strict-Transport-Security on this route's responses over TLS (beside the listener's).
    #[serde(default)]
    pub hsts: Option<RawHsts>,
    /// Plugin name -> its table; each plugin validates its own keys.
    #[serde(default)]
    pub plugins: BTreeMap<String, toml::Value>,
}

/// `[[apis]]`: one API (one version of it) defined by an OpenAPI document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub name: String,
    /// Path of the OpenAPI document, relative to the config file.
    #[serde(default)]
    pub spec: Option<String>,
    /// The document itself (JSON or YAML text, or a JSON object from the admin API).
    #[serde(default)]
    pub document: Option<RawDocument>,
    pub upstream: String,
    #[serde(default)]
    pub base_path: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub version: Option<String>,
    /// "enforce" (default), "monitor" or "off".
    #[serde(default)]
    pub validate: Option<String>,
    /// Largest request body read for validation (413 beyond).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// How a request picks among APIs of one name: "path", "header:NAME" (e.g.
    /// "header:Accept-Version"); absent = `version` is a label only.
    #[serde(default)]
    pub version_by: Option<String>,
    /// The version a request that names none gets (default: the first of its name).
    #[serde(default)]
    pub default: Option<bool>,
    /// `true`, or the date it was deprecated ("2026-01-31"): Deprecation header (RFC 9745).
    #[serde(default)]
    pub deprecated: Option<RawDeprecated>,
    /// The date it goes away ("2027-06-30"): Sunset header (RFC 8594).
    #[serde(default)]
    pub sunset: Option<String>,
    /// Link target of rel="successor-version" (default: the successor's base, path versioning).
    #[serde(default)]
    pub successor: Option<String>,
    /// `[apis.slo]`: thresholds `ringway alerts` writes Prometheus rules for.
    #[serde(default)]
    pub slo: Option<RawSlo>,
    /// Plugins on every operation (an operation's `x-ringway-plugins` adds or overrides).
    #[serde(default)]
    pub plugins: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlo {
    #[serde(default)]
    pub latency_p99: Option<RawDuration>,
    #[serde(default)]
    pub error_ratio: Option<f64>,
    /// How long a breach lasts before the alert fires (default 5m).
    #[serde(default)]
    pub r#for: Option<RawDuration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawDeprecated {
    Flag(bool),
    Date(String),
}

/// An inline document: text, or (from the admin API's JSON) the document as an object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawDocument {
    Text(String),
    Json(serde_json::Value),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCond {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
}

pub fn dur(
    path: &str,
    v: &Option<RawDuration>,
    default_secs: u64,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(Duration::from_secs(default_secs)),
        Some(RawDuration::Seconds(s))
            if *s >= 0 && (*s as u64) <= crate::util::units::MAX_DURATION.as_secs() =>
        {
            Ok(Duration::from_secs(*s as u64))
        }
        Some(RawDuration::Seconds(s)) if *s >= 0 => Err(ConfigError::new(
            path,
            format!("a duration must be at most 10 years, got {s} s"),
        )),
        Some(RawDuration::Seconds(s)) => Err(ConfigError::new(
            path,
            format!("a duration cannot be negative, got {s}"),
        )),
        Some(RawDuration::Text(t)) => crate::util::units::parse_duration(t).ok_or_else(|| {
            ConfigError::new(
                path,
                format!("{t:?} is not a duration; write e.g. \"500ms\", \"10s\", \"2m\" or \"1h\""),
            )
        }),
    }
}
