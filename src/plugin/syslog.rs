//! syslog: request entries as RFC 5424 messages (JSON body) to a collector over UDP, TCP with
//! octet counting, or TLS; batched on the shard, sent by a blocking sender thread (`logship`).

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef};
use super::logship::{self, BatchConf, RawBatch, Sink};
use super::util::{duration, err, parse, RawDur};
use super::Spec;
use crate::error::ConfigError;
use crate::net::syslog::{self, Syslog, Target, Transport};

pub const SPEC: Spec = Spec {
    name: "syslog",
    priority: 401,
    phases: logship::PHASES,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    host: String,
    port: u16,
    /// APISIX's key: "tcp" (default) or "udp".
    #[serde(default)]
    sock_type: Option<String>,
    /// TLS over TCP (RFC 5425).
    #[serde(default)]
    tls: Option<bool>,
    /// PEM bundle the collector's certificate must chain to (default: the web PKI roots).
    #[serde(default)]
    tls_ca: Option<String>,
    #[serde(default)]
    tls_verify: Option<bool>,
    /// Name checked in the collector's certificate (default: `host`).
    #[serde(default)]
    tls_server_name: Option<String>,
    #[serde(default)]
    timeout: Option<RawDur>,
    #[serde(default)]
    facility: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    app_name: Option<String>,
    #[serde(default)]
    batch_max_size: Option<i64>,
    #[serde(default)]
    inactive_timeout: Option<RawDur>,
    #[serde(default)]
    max_retry_count: Option<i64>,
    #[serde(default)]
    retry_delay: Option<RawDur>,
    #[serde(default)]
    max_pending_entries: Option<i64>,
}

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    let tls = c.tls.unwrap_or(false);
    let transport = match (c.sock_type.as_deref(), tls) {
        (None | Some("tcp"), false) => Transport::Tcp,
        (None | Some("tcp"), true) => Transport::Tls,
        (Some("udp"), false) => Transport::Udp,
        (Some("udp"), true) => return Err(err(path, "tls", "TLS needs sock_type = \"tcp\"")),
        (Some(o), _) => {
            return Err(err(
                path,
                "sock_type",
                format!("expected \"tcp\" or \"udp\", got {o:?}"),
            ))
        }
    };
    if c.port == 0 {
        return Err(err(path, "port", "expected 1..=65535"));
    }
    let addr = (c.host.as_str(), c.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| err(path, "host", format!("cannot resolve {:?}", c.host)))?;
    let timeout = match &c.timeout {
        None => Duration::from_secs(3),
        Some(t) => duration(path, "timeout", t)?.max(Duration::from_millis(1)),
    };
    let facility = syslog::facility(c.facility.as_deref().unwrap_or("user"))
        .map_err(|e| err(path, "facility", e))?;
    let severity = syslog::severity(c.severity.as_deref().unwrap_or("info"))
        .map_err(|e| err(path, "severity", e))?;
    let app_name = syslog::app_name(c.app_name.as_deref()).map_err(|e| err(path, "app_name", e))?;
    let tls = if transport == Transport::Tls {
        let ca = c.tls_ca.as_ref().map(PathBuf::from);
        let cfg = syslog::tls_config(ca.as_deref(), c.tls_verify.unwrap_or(true))
            .map_err(|e| err(path, "tls_ca", e))?;
        let name = c.tls_server_name.clone().unwrap_or_else(|| c.host.clone());
        let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|_| {
            err(
                path,
                "tls_server_name",
                format!("{name:?} is not a server name"),
            )
        })?;
        Some((cfg, name))
    } else {
        None
    };
    let batch = RawBatch {
        batch_max_size: c.batch_max_size,
        inactive_timeout: c.inactive_timeout.clone(),
        max_retry_count: c.max_retry_count,
        retry_delay: c.retry_delay.clone(),
        max_pending_entries: c.max_pending_entries,
    };
    let conf = BatchConf::from_raw(path, &batch)?;
    let target = Target {
        addr,
        transport,
        tls,
        timeout,
        pri: facility * 8 + severity,
        app_name,
        msgid: "access".into(),
    };
    let tx = logship::start(
        SPEC.name,
        conf.clone(),
        Box::new(SyslogSink(Syslog::new(target))),
        &logship::SYSLOG,
    )
    .map_err(|e| ConfigError::new(path, e))?;
    Ok(Arc::new(logship::LoggerFactory {
        spec: &SPEC,
        tx,
        conf,
    }))
}

struct SyslogSink(Syslog);

impl Sink for SyslogSink {
    /// One kept connection (TCP/TLS), checked before each batch: a collector that restarted is
    /// reconnected to instead of written into.
    fn send(&mut self, entries: &[&String]) -> Result<(), String> {
        let lines: Vec<&str> = entries.iter().map(|e| e.as_str()).collect();
        self.0.send(&lines)
    }
}

#[cfg(test)]
mod tests {
    use crate::plugin::testkit;

    #[test]
    fn config_errors_name_the_key() {
        let base = "[syslog]\nhost = \"127.0.0.1\"\nport = 514\n";
        for (extra, key) in [
            ("sock_type = \"sctp\"\n", "sock_type"),
            ("sock_type = \"udp\"\ntls = true\n", "tls"),
            ("facility = \"local9\"\n", "facility"),
            ("severity = \"loud\"\n", "severity"),
            ("app_name = \"two words\"\n", "app_name"),
            ("tls = true\ntls_ca = \"/nonexistent.pem\"\n", "tls_ca"),
            ("timeout = \"soon\"\n", "timeout"),
        ] {
            let e = testkit::config_error(&format!("{base}{extra}"));
            assert_eq!(e.path, format!("routes[0].plugins.syslog.{key}"), "{extra}");
        }
        let e = testkit::config_error("[syslog]\nhost = \"127.0.0.1\"\nport = 0\n");
        assert_eq!(e.path, "routes[0].plugins.syslog.port");
    }

    #[test]
    fn queues_one_entry_per_request() {
        let gw = testkit::gateway("[syslog]\nhost = \"127.0.0.1\"\nport = 9\nbatch_max_size = 1\n");
        let mut x = gw.send(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
        x.response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        x.log();
        let got = gw.shipped("syslog");
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("\"uri\":\"/a\""), "{}", got[0]);
    }
}
