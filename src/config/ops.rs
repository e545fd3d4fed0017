//! Validation of the operations sections: `[status]`, `[admin]` and `[access_log]`.
//! Owns only their defaults and checks; the listeners and the log writer live elsewhere.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use super::raw::RawConfig;
use super::ConfigError;
use crate::accesslog::{AccessLogConfig, Destination, Field, Format};

pub const DEFAULT_STATUS_LISTEN: &str = "127.0.0.1:9091";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9180";

#[derive(Debug, Clone)]
pub struct StatusConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// None: a key is generated at start-up and logged once.
    pub key: Option<String>,
    pub viewer_key: Option<String>,
    pub allow: Vec<ipnet::IpNet>,
    /// None: `<config file>.state.json` (no persistence for configs not loaded from a file).
    pub state_file: Option<PathBuf>,
}

impl AdminConfig {
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow.iter().any(|n| n.contains(&ip))
    }
}

fn addr(path: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        ConfigError::new(
            path,
            format!("{text:?} is not an address; expected IP:PORT such as \"127.0.0.1:9091\""),
        )
    })
}

pub(super) fn status(raw: &RawConfig) -> Result<Option<StatusConfig>, ConfigError> {
    let Some(s) = &raw.status else {
        return Ok(None);
    };
    let listen = addr(
        "status.listen",
        s.listen.as_deref().unwrap_or(DEFAULT_STATUS_LISTEN),
    )?;
    Ok(Some(StatusConfig { listen }))
}

pub(super) fn admin(raw: &RawConfig, dir: &Path) -> Result<Option<AdminConfig>, ConfigError> {
    let Some(a) = &raw.admin else {
        return Ok(None);
    };
    let listen = addr(
        "admin.listen",
        a.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
    )?;
    for (key, v) in [("admin.key", &a.key), ("admin.viewer_key", &a.viewer_key)] {
        if let Some(k) = v {
            if k.len() < 16 || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    key,
                    "must be at least 16 printable characters without spaces (leave it out to have one generated)",
                ));
            }
        }
    }
    if a.key.is_some() && a.key == a.viewer_key {
        return Err(ConfigError::new(
            "admin.viewer_key",
            "must differ from admin.key",
        ));
    }
    let allow = match &a.allow {
        None => vec![
            "127.0.0.0/8".parse().expect("literal"),
            "::1/128".parse().expect("literal"),
        ],
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, n) in list.iter().enumerate() {
                let net = n
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| n.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        ConfigError::new(
                            format!("admin.allow[{i}]"),
                            format!("{n:?} is not an address or network such as \"10.0.0.0/8\""),
                        )
                    })?;
                out.push(net);
            }
            out
        }
    };
    Ok(Some(AdminConfig {
        listen,
        key: a.key.clone(),
        viewer_key: a.viewer_key.clone(),
        allow,
        state_file: a.state_file.as_ref().map(|f| dir.join(f)),
    }))
}

pub(super) fn access_log(
    raw: &RawConfig,
    dir: &Path,
) -> Result<Option<AccessLogConfig>, ConfigError> {
    let Some(l) = &raw.access_log else {
        return Ok(None);
    };
    let target = match l.path.as_str() {
        "" => {
            return Err(ConfigError::new(
                "access_log.path",
                "must be a file path, \"stdout\" or \"syslog\"",
            ))
        }
        "stdout" => Destination::Stdout,
        "syslog" => Destination::Syslog(syslog_target(l.syslog.as_ref(), dir)?),
        p => Destination::File(dir.join(p)),
    };
    if l.syslog.is_some() && !matches!(target, Destination::Syslog(_)) {
        return Err(ConfigError::new(
            "access_log.syslog",
            "only used with path = \"syslog\"",
        ));
    }
    let format = match (l.format.as_deref(), &l.fields) {
        (None | Some("combined"), None) => Format::Combined,
        (None | Some("combined"), Some(_)) => {
            return Err(ConfigError::new(
                "access_log.fields",
                "only used with format = \"json\"",
            ))
        }
        (Some("json"), None) => Format::Json(Field::DEFAULT.to_vec()),
        (Some("json"), Some(names)) => {
            let mut fields = Vec::with_capacity(names.len());
            for (i, n) in names.iter().enumerate() {
                fields.push(Field::parse(n).ok_or_else(|| {
                    ConfigError::new(
                        format!("access_log.fields[{i}]"),
                        format!("unknown field {n:?}; known: {:?}", Field::NAMES),
                    )
                })?);
            }
            if fields.is_empty() {
                return Err(ConfigError::new(
                    "access_log.fields",
                    "list at least one field",
                ));
            }
            Format::Json(fields)
        }
        (Some(other), _) => {
            return Err(ConfigError::new(
                "access_log.format",
                format!("expected \"combined\" or \"json\", got {other:?}"),
            ))
        }
    };
    Ok(Some(AccessLogConfig { target, format }))
}

/// `[access_log] path = "syslog"` with its `syslog = { address = ..., ... }` table.
fn syslog_target(
    raw: Option<&super::raw::RawSyslog>,
    dir: &Path,
) -> Result<crate::net::syslog::Target, ConfigError> {
    use crate::net::syslog::{self, Transport};
    let at = |k: &str| format!("access_log.syslog.{k}");
    let Some(r) = raw else {
        return Err(ConfigError::new(
            "access_log.syslog",
            "path = \"syslog\" needs syslog = { address = \"HOST:PORT\" }",
        ));
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(r.address.as_str())
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            ConfigError::new(
                at("address"),
                format!("cannot resolve {:?} (expected HOST:PORT)", r.address),
            )
        })?;
    let transport = match r.transport.as_deref() {
        None | Some("udp") => Transport::Udp,
        Some("tcp") => Transport::Tcp,
        Some("tls") => Transport::Tls,
        Some(o) => {
            return Err(ConfigError::new(
                at("transport"),
                format!("expected \"udp\", \"tcp\" or \"tls\", got {o:?}"),
            ))
        }
    };
    let facility = syslog::facility(r.facility.as_deref().unwrap_or("local7"))
        .map_err(|e| ConfigError::new(at("facility"), e))?;
    let severity = syslog::severity(r.severity.as_deref().unwrap_or("info"))
        .map_err(|e| ConfigError::new(at("severity"), e))?;
    let app_name =
        syslog::app_name(r.app_name.as_deref()).map_err(|e| ConfigError::new(at("app_name"), e))?;
    let timeout =
        super::raw::dur(&at("timeout"), &r.timeout, 3)?.max(std::time::Duration::from_millis(1));
    let tls = if transport == Transport::Tls {
        let ca = r.tls_ca.as_ref().map(|p| dir.join(p));
        let cfg = syslog::tls_config(ca.as_deref(), r.tls_verify.unwrap_or(true))
            .map_err(|e| ConfigError::new(at("tls_ca"), e))?;
        let host = r
            .address
            .rsplit_once(':')
            .map_or(r.address.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = r
            .tls_server_name
            .clone()
            .unwrap_or_else(|| host.to_string());
        let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|_| {
            ConfigError::new(
                at("tls_server_name"),
                format!("{name:?} is not a server name"),
            )
        })?;
        Some((cfg, name))
    } else {
        None
    };
    Ok(syslog::Target {
        addr,
        transport,
        tls,
        timeout,
        pri: facility * 8 + severity,
        app_name,
        msgid: "access".into(),
    })
}
