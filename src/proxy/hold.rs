//! How a client stream waits between keep-alive requests: the short hold (a read in flight) per
//! kind of stream, and the wait on the socket's readiness holding no buffer after it. Owns no
//! buffers and no request state; knows nothing of HTTP.
//!
//! Why: an idle keep-alive connection should hold no read buffer (perf/idle-rss.sh). A plain
//! socket's hold is the next request's read with a short limit (a cancelled plain read takes its
//! buffer along; net/hold_buf.rs closes the connection if a request was read into it anyway); a TLS stream holds inside the stream (net/tls_stream.rs `hold`), which knows
//! whether its session still buffers bytes, cancels its read only when the socket has nothing
//! queued, and frees its record buffers before the readiness wait.

use std::future::Future;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use monoio::net::TcpStream;

use super::shard::Shard;
use crate::local::deadline::Wait;

/// How a stream's hold ended.
pub enum Hold {
    /// Nothing done: the caller's read holds (plain sockets).
    Read,
    /// Bytes (or the peer's close) are there for the next read, or already were.
    Bytes,
    /// None came; no read is in flight and the stream holds no buffer.
    Passed,
    /// The socket failed (or the stream is unusable).
    Failed,
}

/// A client stream that can idle holding no buffer between requests.
pub trait IdleSocket {
    /// The socket whose readiness an idle connection waits on; `None`: it cannot idle.
    fn idle_tcp(&self) -> Option<&TcpStream>;

    /// The socket, when the connection can idle as that alone (park.rs): a plain one.
    fn park_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Waits up to `limit` for the next request's first bytes where the stream buffers above the
    /// socket (TLS); see [`Hold`].
    /// `alive` is held by the connection while it owns the stream (net/hold_buf.rs).
    fn hold(&mut self, limit: Duration, alive: &Rc<()>) -> impl Future<Output = Hold>;
}

impl IdleSocket for TcpStream {
    fn idle_tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }

    fn park_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }

    #[inline(always)]
    fn hold(&mut self, _: Duration, _: &Rc<()>) -> impl Future<Output = Hold> {
        std::future::ready(Hold::Read)
    }
}

impl IdleSocket for crate::net::tls::ServerStream {
    fn idle_tcp(&self) -> Option<&TcpStream> {
        (!self.is_poisoned()).then(|| self.get_ref().tcp())
    }

    async fn hold(&mut self, limit: Duration, alive: &Rc<()>) -> Hold {
        match self.run(|s| s.hold(limit, alive)).await {
            Ok(true) => Hold::Bytes,
            Ok(false) => Hold::Passed,
            Err(_) => Hold::Failed,
        }
    }
}

/// Waits until the idle socket is readable (bytes or a close) holding no buffer; false when
/// `wait` ends first, or a drain does (after its linger, if any).
///
/// Hand-written rather than `select!` over two `within`s: this future is what every idle
/// connection's task holds, and one deadline that a lingering drain replaces is smaller.
pub(super) async fn ready<S: IdleSocket>(shard: &Shard, stream: &S, wait: Duration) -> bool {
    let Some(tcp) = stream.idle_tcp() else {
        return true;
    };
    // Not relaxed: the legacy (epoll) driver then confirms its readiness with a poll(2)
    // (only here, on a connection that idled), so the read that follows does not wait.
    let mut op = std::pin::pin!(tcp.readable(false));
    let mut deadline = Wait::new(wait);
    let mut drain = Some(shard.drain.wait());
    std::future::poll_fn(|cx| {
        if let Some(d) = drain.as_mut() {
            if std::pin::Pin::new(d).poll(cx).is_ready() {
                drain = None;
                match shard.drain.linger() {
                    // A request already on its way is answered (with a close).
                    Some(l) => deadline = Wait::new(l),
                    None => return Poll::Ready(false),
                }
            }
        }
        // An error (the socket is gone) is left to the read to report.
        deadline.poll_with(op.as_mut(), cx).map(|r| r.is_some())
    })
    .await
}
