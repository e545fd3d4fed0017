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
