//! tcp-logger: writes request entries as newline-delimited JSON to host:port,
//! batched on the shard and sent by a blocking sender thread (see `logship`).

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef};
use super::logship::{self, BatchConf, RawBatch, Sink};
use super::util::{duration, err, parse, RawDur};
use super::Spec;
use crate::error::ConfigError;

pub const SPEC: Spec = Spec {
    name: "tcp-logger",
    priority: 405,
    phases: logship::PHASES,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    host: String,
    port: u16,
    #[serde(default)]
    timeout: Option<RawDur>,
    /// APISIX's key; only `false` is accepted (no TLS to log sinks yet).
    #[serde(default)]
    tls: Option<bool>,
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

impl Conf {
    /// The batch keys (spelled out here: `deny_unknown_fields` does not work with `flatten`).
    fn batch(&self) -> RawBatch {
        RawBatch {
            batch_max_size: self.batch_max_size,
            inactive_timeout: self.inactive_timeout.clone(),
            max_retry_count: self.max_retry_count,
            retry_delay: self.retry_delay.clone(),
            max_pending_entries: self.max_pending_entries,
        }
    }
}

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    if c.tls == Some(true) {
        return Err(err(path, "tls", "TLS to the log sink is not supported"));
    }
    if c.port == 0 {
        return Err(err(path, "port", "expected 1..=65535"));
    }
    let addr = (c.host.as_str(), c.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| err(path, "host", format!("cannot resolve {:?}", c.host)))?;
    let timeout = match &c.timeout {
        None => Duration::from_secs(1),
        Some(t) => duration(path, "timeout", t)?.max(Duration::from_millis(1)),
    };
    let conf = BatchConf::from_raw(path, &c.batch())?;
    let tx = logship::start(
        SPEC.name,
        conf.clone(),
        Box::new(TcpSink { addr, timeout }),
        &logship::TCP,
    )
    .map_err(|e| ConfigError::new(path, e))?;
    Ok(Arc::new(logship::LoggerFactory {
        spec: &SPEC,
        tx,
        conf,
    }))
}

struct TcpSink {
    addr: SocketAddr,
    timeout: Duration,
}

impl Sink for TcpSink {
    /// One connection per batch: a write to a half-dead kept connection can "succeed" and lose
    /// the batch, while a fresh connect fails visibly when the sink is down.
    fn send(&mut self, entries: &[&String]) -> Result<(), String> {
        let mut buf = Vec::with_capacity(entries.iter().map(|e| e.len() + 1).sum());
        for e in entries {
            buf.extend_from_slice(e.as_bytes());
            buf.push(b'\n');
        }
        let mut s =
            TcpStream::connect_timeout(&self.addr, self.timeout).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        s.write_all(&buf).map_err(|e| e.to_string())?;
        s.flush().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::plugin::testkit;

    #[test]
    fn queues_an_entry_per_request_once_the_batch_is_full() {
        let gw = testkit::gateway(
            "[tcp-logger]\nhost = \"127.0.0.1\"\nport = 9\nbatch_max_size = 1\n[proxy-rewrite]\nuri = \"/internal\"\n",
        );
        let mut x = gw.send(b"DELETE /items/7 HTTP/1.1\r\nHost: shop\r\n\r\n");
        assert_eq!(x.replied(), None);
        assert!(x.cx.private.log_req.is_some(), "captured in rewrite");
        x.response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        x.log();
        let got = gw.shipped("tcp-logger");
        assert_eq!(got.len(), 1);
        assert!(!got[0].contains('\n'), "one line per entry: {}", got[0]);
        let e: Value = serde_json::from_str(&got[0]).unwrap();
        assert_eq!(e["request"]["method"], "DELETE");
        assert_eq!(
            e["request"]["uri"], "/items/7",
            "the client's request line, not the rewrite"
        );
        assert_eq!(e["request"]["host"], "shop");
        assert_eq!(e["response"]["status"], 404);
        assert_eq!(gw.shipped("http-logger"), Vec::<String>::new());
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[tcp-logger]\nhost = \"127.0.0.1\"\nport = 9\ntls = true\n");
        assert_eq!(e.path, "routes[0].plugins.tcp-logger.tls");
        let e = testkit::config_error("[tcp-logger]\nhost = \"127.0.0.1\"\nport = 0\n");
        assert_eq!(e.path, "routes[0].plugins.tcp-logger.port");
        let e = testkit::config_error(
            "[tcp-logger]\nhost = \"127.0.0.1\"\nport = 9\ntimeout = \"soon\"\n",
        );
        assert_eq!(e.path, "routes[0].plugins.tcp-logger.timeout");
        let e = testkit::config_error(
            "[tcp-logger]\nhost = \"127.0.0.1\"\nport = 9\nretry_delay = 0\n",
        );
        assert_eq!(e.path, "routes[0].plugins.tcp-logger.retry_delay");
    }
}
