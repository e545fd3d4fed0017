//! Per-shard, per-node keep-alive pool of idle upstream connections.
//! Owns only idle sockets and their age/use counts; it never reads or writes them.

use std::time::{Duration, Instant};

use super::stream::UpstreamStream;
use crate::config::PoolConfig;

pub struct PooledConn {
    pub stream: UpstreamStream,
    /// Requests already served on this connection.
    pub requests: u32,
    /// The socket was put in O_NONBLOCK mode for splicing bodies (once per connection).
    pub nonblocking: bool,
    idle_since: Instant,
}

impl PooledConn {
    pub fn fresh(stream: UpstreamStream) -> Self {
        PooledConn {
            stream,
            requests: 0,
            nonblocking: false,
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

    /// The warmest usable connection. It is peeked (`IdleCheck`) unless `replayable` (the
    /// request can be sent again on a fresh connection if this one turns out dead) and it came
    /// back less than `peek_after` ago (ages are read on the coarse clock, so up to one 10 ms
    /// tick more).
    pub fn take(&mut self, cfg: &PoolConfig, now: Instant, replayable: bool) -> Option<PooledConn> {
        let unpeeked = if replayable {
            cfg.peek_after
        } else {
            Duration::ZERO
        };
        while let Some(c) = self.idle.pop() {
            let idle = now.saturating_duration_since(c.idle_since);
            if idle < cfg.idle_timeout && (idle < unpeeked || c.stream.idle_quiet()) {
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

/// An idle keep-alive connection must have nothing to say. Bytes waiting on it mean the
/// upstream sent more than the response it framed (reusing it would hand those bytes to the
/// next request as its response); EOF means the upstream closed it.
pub trait IdleCheck {
    /// True when nothing (not even EOF) is waiting to be read.
    fn idle_quiet(&self) -> bool;
}

impl IdleCheck for monoio::net::TcpStream {
    fn idle_quiet(&self) -> bool {
        fd_quiet(std::os::fd::AsRawFd::as_raw_fd(self))
    }
}

impl IdleCheck for UpstreamStream {
    fn idle_quiet(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.idle_quiet(),
            // A TLS session may hold records of its own (tickets) unread; not checked here.
            UpstreamStream::Tls(_) => true,
        }
    }
}

/// Peeks one byte without blocking or consuming: quiet only if the socket would block.
fn fd_quiet(fd: std::os::fd::RawFd) -> bool {
    let mut b = 0u8;
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the call; recv
    // writes at most 1 byte into `b`; MSG_PEEK | MSG_DONTWAIT neither consumes nor blocks.
    let n = unsafe {
        libc::recv(
            fd,
            std::ptr::addr_of_mut!(b).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
}

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
