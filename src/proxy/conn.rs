//! One client connection: reads request heads (with keep-alive, pipelining and timeouts),
//! routes each request and hands it to the phase driver (phases.rs). Owns the connection's reusable buffers.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};

use super::exchange::UpstreamExchange;
use super::shard::Shard;
use super::splice::PlainSocket;
use super::tunnel;
use crate::error::{ClientError, ProxyError};
use crate::http::parse::{BodyKind, RequestHead, Status};
use crate::http::write;
use crate::net::io::{read_some, write_all, IoFail};
use crate::net::tls::TlsInfo;
use crate::route::{Params, RequestView};
use crate::upstream::stream::UpstreamStream;

impl RequestView for RequestHead {
    fn header(&self, name: &str) -> Option<&[u8]> {
        RequestHead::header(self, name)
    }
}

/// What the connection does after a request.
pub(super) enum After {
    KeepAlive,
    Close,
    /// The upstream switched protocols: become a byte tunnel to this stream.
    Tunnel(UpstreamStream),
}

/// A client-side byte stream (plain TCP or TLS): anything monoio can read, write and split, and
/// that says whether it is a bare socket (bodies can then be spliced, splice.rs).
pub trait ClientStream: AsyncReadRent + AsyncWriteRent + Split + PlainSocket + 'static {}
impl<T: AsyncReadRent + AsyncWriteRent + Split + PlainSocket + 'static> ClientStream for T {}

/// One client connection: its client side, and the state of the request being served (reused
/// from request to request; the buffers are parked while the connection is idle, idle.rs).
pub(super) struct ClientConn<S> {
    pub(super) client: Client<S>,
    pub(super) req: RequestHead,
    /// Route parameters of the request (`/users/{id}`).
    pub(super) params: Params,
    /// Per-request plugin context, reused across the connection's requests.
    pub(super) cx: crate::plugin::Ctx,
    /// Scratch for the path sent upstream.
    pub(super) path: BytesMut,
    /// Heads written to the client or the upstream (and small bodies coalesced with them).
    pub(super) wbuf: BytesMut,
    /// The upstream side of the request: response head and bytes read from the upstream.
    pub(super) upstream: UpstreamExchange,
}

/// The client side of a connection: the socket, the bytes read from it, and what holds for every
/// request on it.
pub(super) struct Client<S> {
    pub(super) stream: S,
    /// The socket was put in O_NONBLOCK mode for splicing (once per connection).
    pub(super) nonblocking: bool,
    /// Bytes read from the client and not yet consumed: a head, body bytes, pipelined requests.
    pub(super) rbuf: BytesMut,
    /// Client address as text, formatted once per connection for X-Forwarded-For.
    pub(super) ip: String,
    /// What the TLS handshake negotiated (`None` on plain listeners): X-Forwarded-Proto,
    /// and the verified client identity (mTLS) for plugins and logs.
    pub(super) tls: Option<Box<TlsInfo>>,
    /// Requests read on this connection so far.
    pub(super) served: u64,
}

enum HeadRead {
    Ready,
    Close,
    Fail(ClientError),
}

/// Read size while waiting for a request on an empty buffer: enough for typical request heads
/// in one read, small enough that 10k idle connections stay under 8 KiB each. A head or body
/// that needs more grows the buffer to `read_buffer_bytes`; it shrinks back when idle.
const IDLE_READ: usize = 2048;

/// How long an idle plain connection waits for its next request with a read (and its buffer)
/// in flight. Past it the read is cancelled, taking the buffer along, and the connection waits
/// for readiness holding none (memory per idle connection, perf/idle-rss.sh); busy keep-alive
/// connections never get there, so they pay no extra ring operation per request.
const IDLE_HOLD: Duration = Duration::from_millis(500);

/// Serves one accepted connection to completion.
pub async fn serve<S: ClientStream>(
    shard: Rc<Shard>,
    stream: S,
    peer: SocketAddr,
    tls: Option<Box<TlsInfo>>,
) {
    let _guard = ConnGuard(shard.clone());
    let buf = shard.built.cfg.server.read_buffer_bytes;
    let mut c = ClientConn {
        client: Client {
            stream,
            nonblocking: false,
            rbuf: BytesMut::with_capacity(IDLE_READ.min(buf)),
            ip: peer.ip().to_string(),
            tls,
            served: 0,
        },
        req: RequestHead::default(),
        params: Params::new(),
        cx: crate::plugin::Ctx::new(shard.id, peer.ip()),
        // Buffers and head storage come from the thread's idle list when a request's bytes arrive (idle.rs).
        path: BytesMut::new(),
        wbuf: BytesMut::new(),
        upstream: UpstreamExchange::default(),
    };
    if let Some(upstream) = c.run(&shard).await {
        let ClientConn {
            client: Client { stream, rbuf, .. },
            upstream: UpstreamExchange { buf: ubuf, .. },
            ..
        } = c;
        // Boxed: inline, the tunnel's state would size every connection's task (idle memory).
        Box::pin(tunnel::run(
            stream,
            rbuf,
            upstream,
            ubuf,
            shard.built.cfg.server.tunnel_idle_timeout,
        ))
        .await;
    } else {
        // Recycled for the next connection (a new connection per request skips the allocator).
        c.park();
        if c.client.tls.is_some() {
            // close_notify: without it OpenSSL-based clients treat our close as a truncation and
            // drop the session, so they never resume (measured: s_time -reuse fell to full-handshake rate).
            let send = shard.built.cfg.server.send_timeout;
            let _ = crate::local::deadline::within(send, c.client.stream.shutdown()).await;
        }
    }
}

/// Keeps the shard's connection count right however the task ends.
struct ConnGuard(Rc<Shard>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.conns.set(self.0.conns.get().saturating_sub(1));
    }
}

impl<S: ClientStream> ClientConn<S> {
    async fn run(&mut self, first: &Rc<Shard>) -> Option<UpstreamStream> {
        let mut shard = first.clone();
        loop {
            match self.read_head(&shard).await {
                HeadRead::Ready => {}
                HeadRead::Close => return None,
                HeadRead::Fail(e) => {
                    let started = self.observe_start();
                    // Boxed (rare path) so its write timer does not size the idle task.
                    Box::pin(self.respond_error(&shard, e.into(), false)).await;
                    self.observe_bad_head(&shard, started);
                    return None;
                }
            }
            // Request boundary: a config swapped in since the last request applies from here;
            // `shard` keeps the generation this request started on alive until it is done.
            if let Some(newer) = super::shard::newer(&shard) {
                shard = newer;
            }
            self.client.served += 1;
            shard.stats.requests.set(shard.stats.requests.get() + 1);
            let started = self.observe_start();
            // On the heap for the request's duration: the exchange's state machine is ~2 KiB,
            // and inline it would stay allocated in the task of every idle keep-alive
            // connection. A recycled block, not a Box: see reuse.rs.
            let after = super::reuse::Pooled::new(self.handle(&shard)).await;
            self.observe_end(&shard, started);
            match after {
                // A response that promised keep-alive before a handover drain began: the client
                // may already be sending the next request, which is answered (with a close).
                After::KeepAlive
                    if !shard.drain.is_draining() || shard.drain.linger().is_some() => {}
                After::KeepAlive | After::Close => return None,
                After::Tunnel(up) => return Some(up),
            }
        }
    }

    async fn read_head(&mut self, shard: &Shard) -> HeadRead {
        let server = &shard.built.cfg.server;
        let mut deadline: Option<Instant> = None;
        loop {
            if !self.client.rbuf.is_empty() {
                match self.req.parse(&self.client.rbuf, &shard.limits) {
                    Ok(Status::Complete(n)) => {
                        self.client.rbuf.advance(n);
                        return HeadRead::Ready;
                    }
                    Ok(Status::Partial) => {}
                    Err(e) => return HeadRead::Fail(e),
                }
                deadline.get_or_insert_with(|| Instant::now() + server.client_header_timeout);
            }
            let res = match deadline {
                None => {
                    // Idle between requests: park the exchange buffers on the shard's free list
                    // and read into a small buffer (memory per idle connection).
                    self.park_buffers(server.read_buffer_bytes);
                    // Idle between requests: wait for the first byte, but let a drain end the wait.
                    let wait = if self.client.served == 0 {
                        server.client_header_timeout
                    } else {
                        server.keepalive_timeout
                    };
                    let plain = self.client.stream.plain_tcp().is_some();
                    let hold = if plain { wait.min(IDLE_HOLD) } else { wait };
                    let res = {
                        let read = read_some(
                            &mut self.client.stream,
                            &mut self.client.rbuf,
                            IDLE_READ.min(server.read_buffer_bytes),
                            hold,
                        );
                        let mut read = std::pin::pin!(read);
                        monoio::select! {
                            r = &mut read => r,
                            _ = shard.drain.wait() => match shard.drain.linger() {
                                // A request already on its way is answered (with a close).
                                Some(l) => match monoio::time::timeout(l, read).await {
                                    Ok(r) => r,
                                    Err(_) => return HeadRead::Close,
                                },
                                None => return HeadRead::Close,
                            },
                        }
                    };
                    match res {
                        // Idle past IDLE_HOLD: the cancelled read took the buffer along.
                        Err(IoFail::Timeout) if hold < wait => {
                            if !self.idle_ready(shard, wait - hold).await {
                                return HeadRead::Close;
                            }
                            // Bytes (or a close) are waiting: a new buffer, one read.
                            read_some(
                                &mut self.client.stream,
                                &mut self.client.rbuf,
                                IDLE_READ.min(server.read_buffer_bytes),
                                server.client_header_timeout,
                            )
                            .await
                        }
                        r => r,
                    }
                }
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return HeadRead::Fail(ClientError::HeaderTimeout);
                    }
                    read_some(
                        &mut self.client.stream,
                        &mut self.client.rbuf,
                        server.read_buffer_bytes,
                        left,
                    )
                    .await
                }
            };
            match res {
                // Bytes of a request: it gets its buffers before it is parsed.
                Ok(_) => self.unpark(server.read_buffer_bytes),
                Err(IoFail::Timeout) if deadline.is_some() => {
                    return HeadRead::Fail(ClientError::HeaderTimeout)
                }
                Err(_) => return HeadRead::Close,
            }
        }
    }

    /// Waits until the idle plain socket is readable (bytes or a close) holding no buffer; false
    /// when `wait` ends first, or a drain does (after its linger, if any).
    async fn idle_ready(&self, shard: &Shard, wait: Duration) -> bool {
        use crate::local::deadline::within;
        let Some(tcp) = self.client.stream.plain_tcp() else {
            return true;
        };
        // Not relaxed: the legacy (epoll) driver then confirms its readiness with a poll(2)
        // (only here, on a connection that idled), so the read that follows does not wait.
        let ready = within(wait, tcp.readable(false));
        let mut ready = std::pin::pin!(ready);
        let r = monoio::select! {
            r = &mut ready => r,
            _ = shard.drain.wait() => match shard.drain.linger() {
                // A request already on its way is answered (with a close).
                Some(l) => match within(l, ready).await {
                    Ok(r) => r,
                    Err(_) => return false,
                },
                None => return false,
            },
        };
        // An error (the socket is gone) is left to the read to report.
        r.is_ok()
    }

    /// Parks the request-time buffers while the connection waits for a request (idle.rs), and
    /// swaps a read buffer grown past the idle size (large head, request body) for a small one.
    fn park_buffers(&mut self, read_buffer_bytes: usize) {
        self.park();
        if self.client.rbuf.is_empty() && self.client.rbuf.capacity() > 2 * IDLE_READ {
            self.client.rbuf = BytesMut::with_capacity(IDLE_READ.min(read_buffer_bytes));
        }
    }

    async fn handle(&mut self, shard: &Shard) -> After {
        // Normally taken when the head's bytes arrived (read_head).
        self.unpark(shard.built.cfg.server.read_buffer_bytes);
        let built = &shard.built;
        let route = {
            let req = &self.req;
            self.params.clear();
            built.router.find(
                req.host(),
                req.path(),
                req.query(),
                req.method_bytes(),
                req,
                &mut self.params,
            )
        };
        let Some(route) = route else {
            return self.fail(shard, ProxyError::NoRoute).await;
        };
        let max_body = built.cfg.server.max_body_bytes;
        if let BodyKind::Length(n) = self.req.body {
            if max_body > 0 && n > max_body {
                return self.fail(shard, ClientError::BodyTooLarge.into()).await;
            }
        }
        // Plugin phases (rewrite, access, before_upstream) run around the forward; see phases.rs.
        self.with_plugins(shard, route).await
    }

    /// Answers with the gateway's error response. The connection stays open only when the
    /// request had no body left unread.
    pub(super) async fn fail(&mut self, shard: &Shard, err: ProxyError) -> After {
        let keep = self.req.keep_alive
            && self.req.body == BodyKind::Empty
            && !shard.drain.is_draining()
            && !matches!(err, ProxyError::Client(_));
        if self.respond_error(shard, err, keep).await && keep {
            After::KeepAlive
        } else {
            After::Close
        }
    }

    /// Writes an error response; false if the client could not be written to.
    pub(super) async fn respond_error(
        &mut self,
        shard: &Shard,
        err: ProxyError,
        keep: bool,
    ) -> bool {
        shard.stats.errors.set(shard.stats.errors.get() + 1);
        self.cx.status = err.status();
        self.wbuf.clear();
        self.cx.error_body =
            write::error_response(&mut self.wbuf, err.status(), err.message(), keep);
        write_all(
            &mut self.client.stream,
            &mut self.wbuf,
            shard.built.cfg.server.send_timeout,
        )
        .await
        .is_ok()
    }

    /// Sends `100 Continue` when the client is waiting for it before sending a body.
    pub(super) async fn continue_if_expected(&mut self, send_timeout: Duration) -> bool {
        if !self.req.expect_continue || !self.client.rbuf.is_empty() {
            return true;
        }
        self.upstream.buf.clear();
        self.upstream
            .buf
            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        let ok = write_all(
            &mut self.client.stream,
            &mut self.upstream.buf,
            send_timeout,
        )
        .await
        .is_ok();
        self.upstream.buf.clear();
        ok
    }
}
