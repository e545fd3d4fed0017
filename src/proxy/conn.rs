//! One client connection: reads request heads (with keep-alive, pipelining and timeouts),
//! routes each request and hands it to the phase driver (phases.rs). Owns the connection's reusable buffers.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};

use super::exchange::UpstreamExchange;
use super::hold::{Hold, IdleSocket};
use super::shard::Shard;
use super::splice::PlainSocket;
use super::tunnel;
use crate::error::{ClientError, ProxyError};
use crate::http::parse::{BodyKind, RequestHead, Status};
use crate::http::write;
use crate::net::io::{read_hold, read_some, write_all, IoFail};
use crate::net::tls::TlsInfo;
use crate::route::{Params, RequestView};
use crate::upstream::stream::UpstreamStream;
use crate::util::ip_text::IpText;

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
/// that says whether it is a bare socket (bodies can then be spliced, splice.rs) and how it waits
/// while idle (hold.rs).
pub trait ClientStream:
    AsyncReadRent + AsyncWriteRent + Split + PlainSocket + IdleSocket + 'static
{
}
impl<T: AsyncReadRent + AsyncWriteRent + Split + PlainSocket + IdleSocket + 'static> ClientStream
    for T
{
}

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
    /// Client address as text, written once per connection for X-Forwarded-For (inline: no
    /// formatter, no allocation; util/ip_text.rs).
    pub(super) ip: IpText,
    /// What the TLS handshake negotiated (`None` on plain listeners): X-Forwarded-Proto,
    /// and the verified client identity (mTLS) for plugins and logs.
    pub(super) tls: Option<Box<TlsInfo>>,
    /// Requests read on this connection so far.
    pub(super) served: u64,
    /// Held while this connection owns its socket: a hold's dropped read checks it before it
    /// shuts the socket down (net/hold_buf.rs).
    alive: Rc<()>,
    /// The socket became readable while the connection idled holding no buffer: the next read
    /// is for bytes (or a close) already there.
    woke: bool,
}

enum HeadRead {
    Ready,
    Close,
    Fail(ClientError),
    /// Idle past `IDLE_HOLD` (read cancelled, no buffer held); this much of the wait is left.
    Idle(Duration),
}

/// How the request loop ends.
enum Ran {
    Close,
    /// The upstream switched protocols: become a byte tunnel to this stream.
    Tunnel(UpstreamStream),
    /// Idle past `IDLE_HOLD`, with this much of the keep-alive wait left.
    Idle(Duration),
}

/// Read size while waiting for a request on an empty buffer: enough for typical request heads
/// in one read, small enough that 10k idle connections stay under 8 KiB each. A head or body
/// that needs more grows the buffer to `read_buffer_bytes`; it shrinks back when idle.
const IDLE_READ: usize = 2048;

/// How long an idle connection waits for its next request with a read (and its buffer) in
/// flight. Past it the read is cancelled (hold.rs), its buffer freed, and the connection waits
/// for readiness holding none (memory per idle connection, perf/idle-rss.sh); busy keep-alive
/// connections never get there, so they pay no extra ring operation per request.
const IDLE_HOLD: Duration = Duration::from_millis(500);

/// What an idle connection keeps while it waits for readiness past `IDLE_HOLD`: the socket
/// and a few facts about it. Everything request-shaped (`ClientConn`) is dropped meanwhile, so the
/// connection's task is this, a shard pointer and the readiness wait (perf/idle-rss.sh).
struct Idle<S> {
    stream: S,
    ip: IpAddr,
    tls: Option<Box<TlsInfo>>,
    served: u64,
    nonblocking: bool,
    alive: Rc<()>,
}

/// Serves one accepted connection to completion.
pub fn serve<S: ClientStream>(
    shard: Rc<Shard>,
    stream: S,
    peer: SocketAddr,
    tls: Option<Box<TlsInfo>>,
) -> impl std::future::Future<Output = ()> + 'static {
    let idle = Idle {
        stream,
        ip: peer.ip(),
        tls,
        served: 0,
        nonblocking: false,
        alive: Rc::new(()),
    };
    // Boxed: an async fn keeps its arguments for its whole life (rust-lang/rust#62958), which
    // would put the stream (a TLS one is ~4.5 KB) in the task beside the busy block's copy.
    connection(shard, Box::new(Some(idle)), false)
}

/// Starts the connection loop again for a parked connection whose socket became readable
/// (park.rs); the park's count of it becomes the task's.
pub(super) fn wake(shard: Rc<Shard>, w: super::park::Woken) {
    match monoio::net::TcpStream::from_std(std::net::TcpStream::from(w.fd)) {
        Ok(stream) => {
            let idle = Idle {
                stream,
                ip: w.ip,
                tls: None,
                served: w.served,
                nonblocking: w.nonblocking,
                alive: Rc::new(()),
            };
            monoio::spawn(connection(shard, Box::new(Some(idle)), true));
        }
        // The driver could not take the socket (closed with the error): no task counts it.
        Err(_) => shard.conns.set(shard.conns.get().saturating_sub(1)),
    }
}

/// Where the idle state lives: one box for the connection's life, empty while it is busy (its
/// contents are then in the busy block). One allocation per connection, made with the task,
/// rather than a new one per idle period beside other connections' short-lived blocks.
type Slot<S> = Box<Option<Idle<S>>>;

async fn connection<S: ClientStream>(shard: Rc<Shard>, mut idle: Slot<S>, mut woke: bool) {
    let _guard = ConnGuard(shard.clone());
    let mut shard = shard;
    loop {
        // The request state (`ClientConn`, the head reads, the request's own block) lives on the
        // heap only while the connection is busy: inline, it would size the task of every idle
        // connection. One allocation per busy period, not per request.
        let (next, rest) = Box::pin(busy(shard, idle, woke)).await;
        shard = next;
        shard.stats.settled.set(shard.stats.settled.get() + 1);
        let Some((mut rest, left)) = rest else { return };
        let Some(i) = rest.as_ref() else { return };
        if let (Some(fd), Some(park)) = (i.stream.park_fd(), shard.park.as_deref()) {
            let p = super::park::Parking {
                fd,
                ip: i.ip,
                served: i.served,
                nonblocking: i.nonblocking,
                wait: left,
            };
            let alive = i.alive.clone();
            // Parked: the park holds a copy of the socket and counts the connection; this task
            // ends, its state handed to the park until the hold's cancelled read is done.
            match park.park(&shard.drain, p, alive, rest) {
                Ok(()) => return,
                Err(back) => match back.downcast() {
                    Ok(back) => rest = back,
                    Err(_) => return,
                },
            }
        }
        let Some(i) = rest.as_mut() else { return };
        if !super::hold::ready(&shard, &i.stream, left).await {
            if i.tls.is_some() {
                // close_notify, as after a last response (busy): the wait ended cleanly, and
                // clients that see a bare close drop the session instead of resuming it.
                // Boxed so that this last step does not size the idle task.
                let send = shard.built.cfg.server.send_timeout;
                let close = crate::local::deadline::within(send, i.stream.shutdown());
                let _ = Box::pin(close).await;
            }
            return;
        }
        idle = rest;
        woke = true;
    }
}

/// Serves requests until the connection is done (None) or idles past the hold: then hands back
/// what the idle wait keeps, and how much of the keep-alive wait is left.
async fn busy<S: ClientStream>(
    mut shard: Rc<Shard>,
    mut slot: Slot<S>,
    woke: bool,
) -> (Rc<Shard>, Option<(Slot<S>, Duration)>) {
    let Some(idle) = slot.take() else {
        return (shard, None);
    };
    let mut c = ClientConn::resume(&shard, idle, woke);
    match c.run(&mut shard).await {
        Ran::Idle(left) => {
            c.park();
            let Client {
                stream,
                tls,
                served,
                nonblocking,
                alive,
                ..
            } = c.client;
            *slot = Some(Idle {
                stream,
                ip: c.cx.client_ip,
                tls,
                served,
                nonblocking,
                alive,
            });
            return (shard, Some((slot, left)));
        }
        Ran::Tunnel(upstream) => {
            let ClientConn {
                client: Client { stream, rbuf, .. },
                upstream: UpstreamExchange { buf: ubuf, .. },
                ..
            } = c;
            // Boxed: inline, the tunnel's state would size every busy connection's block.
            Box::pin(tunnel::run(
                stream,
                rbuf,
                upstream,
                ubuf,
                shard.built.cfg.server.tunnel_idle_timeout,
            ))
            .await;
        }
        Ran::Close => {
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
    (shard, None)
}

/// Keeps the shard's connection count right however the task ends.
struct ConnGuard(Rc<Shard>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.conns.set(self.0.conns.get().saturating_sub(1));
    }
}

impl<S: ClientStream> ClientConn<S> {
    /// A connection idle between requests, rebuilt around its socket (a new connection, or one
    /// whose socket became readable after an idle wait: `woke`).
    fn resume(shard: &Shard, idle: Idle<S>, woke: bool) -> ClientConn<S> {
        ClientConn {
            client: Client {
                stream: idle.stream,
                nonblocking: idle.nonblocking,
                alive: idle.alive,
                // Allocated by the first read (read_some reserves the idle read size).
                rbuf: BytesMut::new(),
                ip: IpText::new(idle.ip),
                tls: idle.tls,
                served: idle.served,
                woke,
            },
            req: RequestHead::default(),
            params: Params::new(),
            cx: crate::plugin::Ctx::new(shard.id, idle.ip),
            // Buffers and head storage come from the thread's idle list when a request's bytes arrive (idle.rs).
            path: BytesMut::new(),
            wbuf: BytesMut::new(),
            upstream: UpstreamExchange::default(),
        }
    }

    /// Serves requests; `shard` follows config swaps (the generation the last request ran on).
    async fn run(&mut self, shard: &mut Rc<Shard>) -> Ran {
        loop {
            match self.read_head(shard).await {
                HeadRead::Ready => {}
                HeadRead::Close => return Ran::Close,
                HeadRead::Idle(left) => return Ran::Idle(left),
                HeadRead::Fail(e) => {
                    let started = self.observe_start();
                    // Boxed (rare path) so its write timer does not size the idle task.
                    Box::pin(self.respond_error(shard, e.into(), false)).await;
                    self.observe_bad_head(shard, started);
                    return Ran::Close;
                }
            }
            // Request boundary: a config swapped in since the last request applies from here;
            // `shard` keeps the generation this request started on alive until it is done.
            if let Some(newer) = super::shard::newer(shard) {
                *shard = newer;
            }
            self.client.served += 1;
            shard.stats.requests.set(shard.stats.requests.get() + 1);
            let started = self.observe_start();
            // On the heap for the request's duration: the exchange's state machine is ~2 KiB,
            // and inline it would stay allocated in the task of every idle keep-alive
            // connection. A recycled block, not a Box: see reuse.rs.
            let after = super::reuse::Pooled::new(self.handle(shard)).await;
            self.observe_end(shard, started);
            match after {
                // A response that promised keep-alive before a handover drain began: the client
                // may already be sending the next request, which is answered (with a close).
                After::KeepAlive
                    if !shard.drain.is_draining() || shard.drain.linger().is_some() => {}
                After::KeepAlive | After::Close => return Ran::Close,
                After::Tunnel(up) => return Ran::Tunnel(up),
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
            // Readable after an idle wait holding nothing (serve): bytes or a close are there.
            let woke = deadline.is_none() && std::mem::take(&mut self.client.woke);
            let res = match deadline {
                // A new buffer, one read.
                None if woke => {
                    read_some(
                        &mut self.client.stream,
                        &mut self.client.rbuf,
                        IDLE_READ.min(server.read_buffer_bytes),
                        server.client_header_timeout,
                    )
                    .await
                }
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
                    let idles = self.client.stream.idle_tcp().is_some();
                    let hold = if idles { wait.min(IDLE_HOLD) } else { wait };
                    let res = {
                        let (stream, rbuf) = (&mut self.client.stream, &mut self.client.rbuf);
                        let alive = &self.client.alive;
                        let size = IDLE_READ.min(server.read_buffer_bytes);
                        let read = async move {
                            match stream.hold(hold, alive).await {
                                Hold::Read => {
                                    let fd = stream.idle_tcp().map_or(-1, |t| t.as_raw_fd());
                                    read_hold(stream, rbuf, size, hold, fd, alive).await
                                }
                                // Bytes are there: the rest of the head has the header timeout.
                                Hold::Bytes => {
                                    read_some(stream, rbuf, size, server.client_header_timeout)
                                        .await
                                }
                                Hold::Passed => Err(IoFail::Timeout),
                                Hold::Failed => Err(IoFail::Error),
                            }
                        };
                        let mut read = std::pin::pin!(read);
                        monoio::select! {
                            r = &mut read => r,
                            _ = shard.drain.wait() => match shard.drain.linger() {
                                // A request already on its way is answered (with a close).
                                // Boxed (rare): an inline monoio timer is 128-byte aligned,
                                // which made every busy block an over-aligned allocation
                                // (mimalloc's slow path, once per connection: issue 21n).
                                Some(l) => match Box::pin(monoio::time::timeout(l, read)).await {
                                    Ok(r) => r,
                                    Err(_) => return HeadRead::Close,
                                },
                                None => return HeadRead::Close,
                            },
                        }
                    };
                    match res {
                        // Idle past IDLE_HOLD: the cancelled read took the buffer along; the
                        // rest of the wait is on readiness, with the request state dropped (serve).
                        Err(IoFail::Timeout) if hold < wait => return HeadRead::Idle(wait - hold),
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

#[cfg(test)]
mod tests {
    //! Sizes that decide memory per idle keep-alive connection (perf/idle-rss.sh): a regression
    //! here shows up as kilobytes per connection times every idle client.

    use super::*;
    use monoio::net::TcpStream;
    use std::mem::size_of;

    fn output_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        size_of::<F>()
    }

    #[test]
    fn an_idle_connection_task_holds_no_request_state() {
        type Tls = crate::net::tls::ServerStream;
        let task = output_size(connection::<TcpStream>);
        let tls_task = output_size(connection::<Tls>);
        let busy_block = output_size(busy::<TcpStream>);
        let conn = size_of::<ClientConn<TcpStream>>();
        let idle = size_of::<Idle<TcpStream>>();
        eprintln!(
            "serve future (the task while idle) {task} B, TLS {} B; busy block {busy_block} B \
             (ClientConn {conn} B, Ctx {} B, RequestHead {} B); idle state {idle} B",
            tls_task,
            size_of::<crate::plugin::Ctx>(),
            size_of::<RequestHead>(),
        );
        // The task of an idle connection is the socket, a few facts and the readiness wait; the
        // request state is in the busy block, which is dropped while idle.
        assert!(task <= 400, "connection future grew to {task} bytes");
        // A TLS connection idles the same way (its stream is in the boxed idle state).
        assert!(
            tls_task <= 600,
            "TLS connection future grew to {tls_task} bytes"
        );
        assert!(idle <= 160, "idle state grew to {idle} bytes");
        assert!(
            busy_block >= conn,
            "the request state must live in the busy block"
        );
    }
}
