//! Validation of `[config_source] etcd = {...}`: endpoints, key prefix, timeouts, credentials,
//! TLS files, the saved-configuration file. Plain data only; the etcd client lives in `fleet/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::RawConfig;
use super::ConfigError;
use crate::util::units::parse_duration;

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdSource {
    /// `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// Key prefix without a trailing slash, e.g. "/ringway".
    pub prefix: String,
    /// Per request (connect, read, write) and the keep-alive ping's answer.
    pub timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<EtcdTls>,
    /// With etcd unreachable at start-up and no saved configuration: wait this long, then fail.
    pub startup_wait: Duration,
    /// None: `<config file>.etcd.json` (nothing saved for configs not loaded from a file).
    pub saved_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub domain: Option<String>,
}

pub(super) fn etcd(raw: &RawConfig, dir: &Path) -> Result<Option<EtcdSource>, ConfigError> {
    let Some(src) = &raw.config_source else {
        return Ok(None);
    };
    let e = &src.etcd;
    let at = |k: &str| format!("config_source.etcd.{k}");
    if e.endpoints.is_empty() {
        return Err(ConfigError::new(
            at("endpoints"),
            "list at least one endpoint, e.g. [\"http://127.0.0.1:2379\"]",
        ));
    }
    for (i, ep) in e.endpoints.iter().enumerate() {
        let rest = ep
            .strip_prefix("http://")
            .or_else(|| ep.strip_prefix("https://"));
        if !rest.is_some_and(|r| !r.is_empty() && !r.contains('/')) {
            return Err(ConfigError::new(
                format!("config_source.etcd.endpoints[{i}]"),
                format!("{ep:?} is not an endpoint; expected \"http://HOST:PORT\" or \"https://HOST:PORT\""),
            ));
        }
    }
    let prefix = e
        .prefix
        .as_deref()
        .unwrap_or("/ringway")
        .trim_end_matches('/');
    if !prefix.starts_with('/') {
        return Err(ConfigError::new(
            at("prefix"),
            format!("{prefix:?} must start with \"/\", e.g. \"/ringway\""),
        ));
    }
    let dur = |key: &str, v: &Option<String>, default: u64| -> Result<Duration, ConfigError> {
        match v {
            None => Ok(Duration::from_secs(default)),
            Some(t) => match parse_duration(t) {
                Some(d) if !d.is_zero() => Ok(d),
                Some(_) => Err(ConfigError::new(at(key), "must be above zero")),
                None => Err(ConfigError::new(
                    at(key),
                    format!("{t:?} is not a duration such as \"2s\" or \"500ms\""),
                )),
            },
        }
    };
    if e.username.is_some() != e.password.is_some() {
        return Err(ConfigError::new(
            at("password"),
            "username and password go together: set both or neither",
        ));
    }
    let tls = e.tls.as_ref().map(|t| EtcdTls {
        ca: t.ca.as_ref().map(|p| dir.join(p)),
        cert: t.cert.as_ref().map(|p| dir.join(p)),
        key: t.key.as_ref().map(|p| dir.join(p)),
        domain: t.domain.clone(),
    });
    if let Some(t) = &tls {
        if t.cert.is_some() != t.key.is_some() {
            return Err(ConfigError::new(
                at("tls"),
                "cert and key go together (client certificate): set both or neither",
            ));
        }
        for (k, p) in [
            ("tls.ca", &t.ca),
            ("tls.cert", &t.cert),
            ("tls.key", &t.key),
        ] {
            if let Some(p) = p {
                if !p.exists() {
                    return Err(ConfigError::new(
                        at(k),
                        format!("{} does not exist", p.display()),
                    ));
                }
            }
        }
    }
    Ok(Some(EtcdSource {
        endpoints: e.endpoints.clone(),
        prefix: prefix.to_string(),
        timeout: dur("timeout", &e.timeout, 2)?,
        username: e.username.clone(),
        password: e.password.clone(),
        tls,
        startup_wait: dur("startup_wait", &e.startup_wait, 30)?,
        saved_file: e.saved_file.as_ref().map(|f| dir.join(f)),
    }))
}
