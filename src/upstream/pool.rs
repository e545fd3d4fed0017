//! Per-shard, per-node keep-alive pool of idle upstream connections.
//! Owns only idle sockets and their age/use counts; it never reads or writes them.

use std::time::Instant;

use monoio::net::TcpStream;

use crate::config::PoolConfig;

pub struct PooledConn {
    pub stream: TcpStream,
    /// Requests already served on this connection.
    pub requests: u32,
    idle_since: Instant,
}

impl PooledConn {
    pub fn fresh(stream: TcpStream) -> Self {
        PooledConn {
            stream,
            requests: 0,
            idle_since: Instant::now(),
        }
    }
}

pub struct Pool {
    // Oldest first: take from the back (warmest connection, least likely closed by the
    // upstream's idle timer), sweep from the front.
    idle: Vec<PooledConn>,
}

impl Pool {
    pub fn new() -> Self {
        Pool { idle: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.idle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idle.is_empty()
    }

    pub fn take(&mut self, cfg: &PoolConfig, now: Instant) -> Option<PooledConn> {
        while let Some(c) = self.idle.pop() {
            if now.saturating_duration_since(c.idle_since) < cfg.idle_timeout {
                return Some(c);
            }
        }
        None
    }

    /// Returns a connection after a clean exchange; drops it if the pool is full or it is worn out.
    pub fn put(&mut self, mut conn: PooledConn, cfg: &PoolConfig, now: Instant) {
        conn.requests += 1;
        if conn.requests >= cfg.requests || cfg.size == 0 {
            return;
        }
        if self.idle.len() >= cfg.size {
            self.idle.remove(0);
        }
        conn.idle_since = now;
        self.idle.push(conn);
    }

    /// Drops every idle connection (after one turned out dead, the rest are suspect).
    pub fn clear(&mut self) {
        self.idle.clear();
    }

    /// Closes connections idle longer than the configured timeout.
    pub fn sweep(&mut self, cfg: &PoolConfig, now: Instant) {
        let keep_from = self
            .idle
            .iter()
            .position(|c| now.saturating_duration_since(c.idle_since) < cfg.idle_timeout)
            .unwrap_or(self.idle.len());
        self.idle.drain(..keep_from);
    }
}

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}
