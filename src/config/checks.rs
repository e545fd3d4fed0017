//! `[upstreams.checks.active]`: APISIX-style active health check settings, defaults and checks.
//! Owns only the validated shape; the prober that uses it lives in `src/active_health`.

use std::sync::Arc;
use std::time::Duration;

use super::raw::dur;
use super::raw::RawUpstream;
use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// GET `http_path`; the status decides (see the two status lists).
    Http,
    /// A TCP connect is the whole probe.
    Tcp,
}

/// One upstream's active check, with APISIX's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    pub kind: CheckKind,
    pub http_path: String,
    /// Host header for HTTP probes; `None` = the node's address as written.
    pub host: Option<String>,
    pub timeout: Duration,
    /// Probe period while the node is up / while it is down.
    pub healthy_interval: Duration,
    pub unhealthy_interval: Duration,
    pub healthy_statuses: Vec<u16>,
    pub unhealthy_statuses: Vec<u16>,
    /// Consecutive passes that bring a down node back.
    pub successes: u32,
    /// Consecutive failures of each kind that take an up node out.
    pub http_failures: u32,
    pub tcp_failures: u32,
    pub timeouts: u32,
}

const HEALTHY: &[u16] = &[200, 302];
const UNHEALTHY: &[u16] = &[429, 404, 500, 501, 502, 503, 504, 505];

pub(super) fn active(at: &str, u: &RawUpstream) -> Result<Option<Arc<ActiveCheck>>, ConfigError> {
    let Some(a) = u.checks.as_ref().and_then(|c| c.active.as_ref()) else {
        return Ok(None);
    };
    let key = |k: &str| format!("{at}.{k}");
    let kind = match a.kind.as_deref() {
        None | Some("http") => CheckKind::Http,
        Some("tcp") => CheckKind::Tcp,
        Some(other) => {
            return Err(ConfigError::new(
                key("type"),
                format!("expected \"http\" or \"tcp\", got {other:?}"),
            ))
        }
    };
    let http_path = a.http_path.clone().unwrap_or_else(|| "/".into());
    // Written into the probe's request line and Host header: no room for spaces or CR/LF.
    if !http_path.starts_with('/') || !http_path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            key("http_path"),
            format!("expected a path starting with \"/\" without spaces, got {http_path:?}"),
        ));
    }
    if let Some(h) = &a.host {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                key("host"),
                format!("expected a host name without spaces, got {h:?}"),
            ));
        }
    }
    let timeout = positive_dur(&key("timeout"), &a.timeout, Duration::from_secs(1))?;
    let (h, un) = (a.healthy.as_ref(), a.unhealthy.as_ref());
    let second = Duration::from_secs(1);
    Ok(Some(Arc::new(ActiveCheck {
        kind,
        http_path,
        host: a.host.clone(),
        timeout,
        healthy_interval: positive_dur(
            &key("healthy.interval"),
            &h.and_then(|h| h.interval.clone()),
            second,
        )?,
        unhealthy_interval: positive_dur(
            &key("unhealthy.interval"),
            &un.and_then(|u| u.interval.clone()),
            second,
        )?,
        healthy_statuses: statuses(
            &key("healthy.http_statuses"),
            h.and_then(|h| h.http_statuses.as_ref()),
            HEALTHY,
        )?,
        unhealthy_statuses: statuses(
            &key("unhealthy.http_statuses"),
            un.and_then(|u| u.http_statuses.as_ref()),
            UNHEALTHY,
        )?,
        successes: count(&key("healthy.successes"), h.and_then(|h| h.successes), 2)?,
        http_failures: count(
            &key("unhealthy.http_failures"),
            un.and_then(|u| u.http_failures),
            5,
        )?,
        tcp_failures: count(
            &key("unhealthy.tcp_failures"),
            un.and_then(|u| u.tcp_failures),
            2,
        )?,
        timeouts: count(&key("unhealthy.timeouts"), un.and_then(|u| u.timeouts), 3)?,
    })))
}

/// A duration that must not be zero: a zero interval would probe in a busy loop.
fn positive_dur(
    path: &str,
    v: &Option<super::raw::RawDuration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    if v.is_none() {
        return Ok(default);
    }
    let d = dur(path, v, 0)?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(3600) {
        return Err(ConfigError::new(
            path,
            format!("expected 1ms..=1h, got {d:?}"),
        ));
    }
    Ok(d)
}

fn statuses(path: &str, v: Option<&Vec<i64>>, default: &[u16]) -> Result<Vec<u16>, ConfigError> {
    let Some(list) = v else {
        return Ok(default.to_vec());
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        match u16::try_from(*s) {
            Ok(s) if (200..=599).contains(&s) => out.push(s),
            _ => {
                return Err(ConfigError::new(
                    format!("{path}[{i}]"),
                    format!("expected a status code 200..=599, got {s}"),
                ))
            }
        }
    }
    Ok(out)
}

fn count(path: &str, v: Option<i64>, default: u32) -> Result<u32, ConfigError> {
    match v {
        None => Ok(default),
        Some(n @ 1..=254) => Ok(n as u32),
        Some(n) => Err(ConfigError::new(
            path,
            format!("expected 1..=254 (as in APISIX), got {n}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(active: &str) -> Result<crate::config::Config, ConfigError> {
        crate::config::from_str(&format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[[upstreams]]\nname = \"u\"\n\
             nodes = [{{ addr = \"127.0.0.1:1\" }}]\n[upstreams.checks.active]\n{active}\n"
        ))
    }

    #[test]
    fn defaults_follow_apisix() {
        let cfg = load("").expect("valid");
        let c = cfg.upstreams[0].checks.as_ref().expect("checks");
        assert_eq!(c.kind, CheckKind::Http);
        assert_eq!(
            (c.successes, c.http_failures, c.tcp_failures, c.timeouts),
            (2, 5, 2, 3)
        );
        assert_eq!(c.healthy_statuses, HEALTHY);
        assert_eq!(c.timeout, Duration::from_secs(1));
    }

    #[test]
    fn errors_name_the_key() {
        let bad = [
            ("type = \"udp\"", "upstreams[0].checks.active.type"),
            (
                "http_path = \"health\"",
                "upstreams[0].checks.active.http_path",
            ),
            (
                "healthy = { interval = 0 }",
                "upstreams[0].checks.active.healthy.interval",
            ),
            (
                "healthy = { http_statuses = [200, 99] }",
                "upstreams[0].checks.active.healthy.http_statuses[1]",
            ),
            (
                "unhealthy = { tcp_failures = 0 }",
                "upstreams[0].checks.active.unhealthy.tcp_failures",
            ),
        ];
        for (text, path) in bad {
            let e = load(text).expect_err(text);
            assert_eq!(e.path, path, "{text}: {e}");
        }
    }
}
