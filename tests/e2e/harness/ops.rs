//! Owns the operations side: status/admin listener addresses from the log, one-shot HTTP to them,
//! `Proc` (a gateway on a config file the test rewrites). Must not check formats (prometheus.rs).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::config::with_test_driver;
use super::gateway::{
    parse_listening_line, ringway_command, send_signal, wait_shards_started, LogLines,
    START_TIMEOUT,
};

/// The address printed in the gateway's "`what` listening on ADDR" line.
pub fn listener(logs: &LogLines, what: &str) -> SocketAddr {
    let pat = format!("{what} listening on ");
    let line = logs
        .wait_for(|l| l.contains(&pat), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no `{pat}` line in:\n{}", logs.text()));
    let rest = &line[line.find(&pat).unwrap() + pat.len()..];
    let tok: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
    tok.parse().expect("listener address parses")
}

/// One request over a fresh connection; returns (status, body). Panics on transport errors.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    http_within(Duration::from_secs(10), addr, method, path, headers, body)
}

/// `http`, waiting up to `limit` for the answer.
pub fn http_within(
    limit: Duration,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(limit)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[], "")
}

/// A gateway started from a config file the test owns (so it can rewrite it and send SIGHUP).
pub struct Proc {
    child: std::process::Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub logs: LogLines,
    pub path: std::path::PathBuf,
}

impl Proc {
    /// Starts `ringway run` on `<tmp>/ringway-<tag>-<pid>.toml` (the same file for the same tag,
    /// so a restart finds its admin state) and waits for the listener and every shard.
    pub fn start(tag: &str, config: &str) -> Proc {
        let config = with_test_driver(config);
        let path = std::env::temp_dir().join(format!("ringway-{tag}-{}.toml", std::process::id()));
        std::fs::write(&path, &config).unwrap();
        let deadline = Instant::now() + START_TIMEOUT;
        let mut child = ringway_command()
            .args(["run", "-c", path.to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ringway");
        let logs = LogLines::spawn_reader(child.stderr.take().unwrap(), "ringway");
        let started = logs
            .wait_for(|l| parse_listening_line(l).is_some(), START_TIMEOUT)
            .ok_or_else(|| format!("no `listening on` line within {START_TIMEOUT:?}"))
            .and_then(|line| wait_shards_started(&logs, &line, &config, deadline).map(|_| line));
        let line = started.unwrap_or_else(|e| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{e}\nconfig:\n{config}\nstderr:\n{}", logs.text())
        });
        let addr = parse_listening_line(&line).unwrap();
        Proc {
            pid: child.id(),
            child,
            addr,
            logs,
            path,
        }
    }

    /// Kills the process but keeps its files (config, admin state) for a restart.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Replaces the config file (through [`with_test_driver`], like the first one).
    pub fn rewrite(&self, config: &str) {
        std::fs::write(&self.path, with_test_driver(config)).unwrap();
    }

    pub fn signal(&self, sig: &str) {
        send_signal(self.pid, sig);
    }

    /// Sends SIGHUP and waits for the `n`-th reload outcome line (applied or refused).
    pub fn reload(&self, n: usize) -> String {
        self.signal("HUP");
        let lines = self.logs.wait_for_n(
            |l| l.contains("SIGHUP: config reloaded") || l.contains("keeping config generation"),
            n,
            Duration::from_secs(10),
        );
        assert!(
            lines.len() >= n,
            "no reload outcome {n}:\n{}",
            self.logs.text()
        );
        lines[n - 1].clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.path.with_extension("toml.state.json"));
        let _ = std::fs::remove_file(self.path.with_extension("toml.state.json.journal"));
    }
}
