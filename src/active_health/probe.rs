//! One blocking probe of one node: a TCP connect, or a minimal HTTP/1.1 GET whose status line
//! decides. Runs on the health thread's scoped workers, never on a shard.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::verdict::Outcome;
use crate::config::{ActiveCheck, CheckKind};

/// Longest status line read; anything longer is not an HTTP server we understand.
const MAX_LINE: usize = 1024;

pub fn run(c: &ActiveCheck, addr: SocketAddr, node_host: &str) -> Outcome {
    let deadline = Instant::now() + c.timeout;
    let mut s = match TcpStream::connect_timeout(&addr, c.timeout) {
        Ok(s) => s,
        Err(e) => return io_outcome(&e),
    };
    if c.kind == CheckKind::Tcp {
        return Outcome::Pass;
    }
    let host = c.host.as_deref().unwrap_or(node_host);
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringway-health-check\r\nConnection: close\r\n\r\n",
        c.http_path
    );
    let left = |d: Instant| {
        d.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    if s.set_write_timeout(Some(left(deadline))).is_err() {
        return Outcome::TcpFail;
    }
    if let Err(e) = s.write_all(req.as_bytes()) {
        return io_outcome(&e);
    }
    let mut buf = [0u8; MAX_LINE];
    let mut got = 0;
    loop {
        if Instant::now() >= deadline {
            return Outcome::Timeout;
        }
        if s.set_read_timeout(Some(left(deadline))).is_err() {
            return Outcome::TcpFail;
        }
        match s.read(&mut buf[got..]) {
            Ok(0) => return Outcome::TcpFail,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return io_outcome(&e),
        }
        if let Some(end) = buf[..got].windows(2).position(|w| w == b"\r\n") {
            return classify(&buf[..end], c);
        }
        if got == buf.len() {
            return Outcome::TcpFail;
        }
    }
}

fn io_outcome(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::Timeout,
        _ => Outcome::TcpFail,
    }
}

/// `HTTP/1.x NNN reason` -> the status lists decide.
fn classify(line: &[u8], c: &ActiveCheck) -> Outcome {
    let status = line
        .strip_prefix(b"HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse::<u16>().ok());
    match status {
        Some(s) if c.healthy_statuses.contains(&s) => Outcome::Pass,
        Some(s) if c.unhealthy_statuses.contains(&s) => Outcome::HttpFail(s),
        Some(s) => Outcome::Neutral(s),
        None => Outcome::TcpFail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let c = ActiveCheck {
            kind: CheckKind::Http,
            http_path: "/".into(),
            host: None,
            timeout: Duration::from_secs(1),
            healthy_interval: Duration::from_secs(1),
            unhealthy_interval: Duration::from_secs(1),
            healthy_statuses: vec![200],
            unhealthy_statuses: vec![503],
            successes: 1,
            http_failures: 1,
            tcp_failures: 1,
            timeouts: 1,
        };
        assert_eq!(classify(b"HTTP/1.1 200 OK", &c), Outcome::Pass);
        assert_eq!(classify(b"HTTP/1.0 503 x", &c), Outcome::HttpFail(503));
        assert_eq!(classify(b"HTTP/1.1 418", &c), Outcome::Neutral(418));
        assert_eq!(classify(b"SSH-2.0-OpenSSH", &c), Outcome::TcpFail);
    }
}
