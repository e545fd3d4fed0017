//! http-logger: POSTs request entries as a JSON array to `uri`, batched on the
//! shard and sent by a blocking sender thread (see `logship`), never from the shard itself.

use std::io::{Read, Write};
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
    name: "http-logger",
    priority: 410,
    phases: logship::PHASES,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    uri: String,
    #[serde(default)]
    auth_header: Option<String>,
    #[serde(default)]
    timeout: Option<RawDur>,
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

/// `http://host:port/path` -> (address, Host header, path).
fn parse_uri(path: &str, uri: &str) -> Result<(SocketAddr, String, String), ConfigError> {
    let bad = |m: &str| err(path, "uri", format!("{m}, got {uri:?}"));
    let rest = uri
        .strip_prefix("http://")
        .ok_or_else(|| bad("expected http://HOST:PORT/PATH (https is not supported)"))?;
    let (authority, p) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let p = if p.is_empty() { "/" } else { p };
    if authority.is_empty() || !p.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("expected http://HOST:PORT/PATH without spaces"));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    // Resolved once at load, like upstream nodes.
    let addr = with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| bad("cannot resolve the host"))?;
    Ok((addr, authority.to_string(), p.to_string()))
}

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    let (addr, host, target) = parse_uri(path, &c.uri)?;
    if let Some(h) = &c.auth_header {
        if h.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(err(path, "auth_header", "must not contain CR or LF"));
        }
    }
    let timeout = match &c.timeout {
        None => Duration::from_secs(3),
        Some(t) => duration(path, "timeout", t)?.max(Duration::from_millis(1)),
    };
    let conf = BatchConf::from_raw(path, &c.batch())?;
    let sink = HttpSink {
        addr,
        host,
        target,
        auth: c.auth_header,
        timeout,
    };
    let tx = logship::start(SPEC.name, conf.clone(), Box::new(sink), &logship::HTTP)
        .map_err(|e| ConfigError::new(path, e))?;
    Ok(Arc::new(logship::LoggerFactory {
        spec: &SPEC,
        tx,
        conf,
    }))
}

struct HttpSink {
    addr: SocketAddr,
    host: String,
    target: String,
    auth: Option<String>,
    timeout: Duration,
}

impl Sink for HttpSink {
    /// One connection per batch: batches are large and rare, and a fresh connection notices
    /// a restarted sink at once.
    fn send(&mut self, entries: &[&String]) -> Result<(), String> {
        let mut body = Vec::with_capacity(entries.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(e.as_bytes());
        }
        body.push(b']');
        let auth = self
            .auth
            .as_deref()
            .map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n",
            self.target,
            self.host,
            body.len()
        );
        let mut s =
            TcpStream::connect_timeout(&self.addr, self.timeout).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
        s.write_all(&body).map_err(|e| e.to_string())?;
        let mut line = [0u8; 12];
        s.read_exact(&mut line).map_err(|e| e.to_string())?;
        let status = std::str::from_utf8(&line[9..12])
            .ok()
            .and_then(|d| d.parse::<u16>().ok());
        match status {
            Some(200..=299) => Ok(()),
            Some(s) => Err(format!("sink answered {s}")),
            None => Err("not an HTTP response".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::plugin::testkit::{self, Setup};

    fn entries(gw: &testkit::Gateway) -> Vec<Value> {
        gw.shipped("http-logger")
            .iter()
            .map(|e| serde_json::from_str(e).expect("an entry is JSON"))
            .collect()
    }

    #[test]
    fn queues_one_json_entry_per_request_in_batches() {
        let gw = testkit::gateway(
            "[http-logger]\nuri = \"http://127.0.0.1:9/logs\"\nbatch_max_size = 2\n",
        );
        let mut x = gw.send(b"GET /x?y=1 HTTP/1.1\r\nHost: api.example\r\n\r\n");
        assert_eq!(x.replied(), None);
        x.response(b"HTTP/1.1 204 No Content\r\n\r\n");
        x.log();
        assert!(entries(&gw).is_empty(), "the batch waits until it is full");
        let mut y = gw.send_from("10.0.0.7", b"POST /y HTTP/1.1\r\nHost: b\r\n\r\n");
        y.response(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n");
        y.log();
        let got = entries(&gw);
        assert_eq!(got.len(), 2);
        let e = &got[0];
        assert_eq!(e["request"]["method"], "GET");
        assert_eq!(e["request"]["uri"], "/x?y=1");
        assert_eq!(e["request"]["host"], "api.example");
        assert_eq!(e["response"]["status"], 204);
        assert_eq!(e["client_ip"], "127.0.0.1");
        assert_eq!(e["forwarded"], true);
        assert_eq!(e["route_index"], 0);
        assert_eq!(e["shard"], 0);
        assert!(e["latency"].as_f64().unwrap() >= 0.0);
        assert!(e["start_time"].as_u64().unwrap() > 1_600_000_000_000);
        assert_eq!(got[1]["request"]["method"], "POST");
        assert_eq!(got[1]["client_ip"], "10.0.0.7");
        assert_eq!(got[1]["response"]["status"], 500);
    }

    #[test]
    fn logs_other_plugins_replies_with_the_request_id() {
        let gw = Setup::route("[key-auth]\n[request-id]\n")
            .global("[http-logger]\nuri = \"http://127.0.0.1:9/\"\nbatch_max_size = 1\n")
            .build()
            .unwrap();
        let mut x = gw.send(b"GET /private HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.replied(), Some(401));
        x.log();
        let got = entries(&gw);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["response"]["status"], 401);
        assert_eq!(got[0]["forwarded"], false);
        assert_eq!(got[0]["request"]["uri"], "/private");
        assert_eq!(
            got[0]["request_id"].as_str(),
            x.cx.request_id.as_deref(),
            "request-id ran before the reply"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[http-logger]\nuri = \"https://logs.example/\"\n");
        assert_eq!(e.path, "routes[0].plugins.http-logger.uri");
        let e = testkit::config_error(
            "[http-logger]\nuri = \"http://127.0.0.1:9/\"\nauth_header = \"a\\r\\nX: y\"\n",
        );
        assert_eq!(e.path, "routes[0].plugins.http-logger.auth_header");
        let e = testkit::config_error(
            "[http-logger]\nuri = \"http://127.0.0.1:9/\"\nbatch_max_size = 0\n",
        );
        assert_eq!(e.path, "routes[0].plugins.http-logger.batch_max_size");
        let e = testkit::config_error(
            "[http-logger]\nuri = \"http://127.0.0.1:9/\"\nbatch_max_size = 10\nmax_pending_entries = 5\n",
        );
        assert_eq!(e.path, "routes[0].plugins.http-logger.max_pending_entries");
        let e = testkit::config_error("[http-logger]\n");
        assert_eq!(e.path, "routes[0].plugins.http-logger");
        assert!(e.message.contains("uri"), "{}", e.message);
    }
}
