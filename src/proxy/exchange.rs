//! The upstream half of an exchange, apart from any client: the request as sent upstream, writing it, reading the
//! response head and body, and what an attempt's end means for its lease. Never touches a client socket.

use bytes::{Buf, BufMut, BytesMut};

use super::pump::{drain, PumpCfg, PumpFail};
use crate::cache::Tee;
use crate::config::{HashOn, PassHost, RouteConfig, ServerConfig, UpstreamConfig};
use crate::error::{ProxyError, UpstreamError};
use crate::http::parse::{Method, RequestHead, ResponseHead, Status};
use crate::http::write::{self, UpstreamRequest};
use crate::net::io::{read_some, write_all, IoFail};
use crate::plugin::Ctx;
use crate::upstream::balance::hash_key;
use crate::upstream::lease::{Lease, Outcome};
use crate::upstream::pool::PooledConn;
use crate::upstream::stream::UpstreamStream;

/// How one attempt on one leased connection ended.
pub(super) enum Attempt<T> {
    /// The exchange is over: `out` is the caller's result; `reusable`: the connection is clean.
    Done { out: T, reusable: bool },
    /// The 101 was relayed; the connection becomes a tunnel.
    Upgrade,
    /// A pooled connection was dead before any response byte: try a fresh one, same node.
    Stale,
    /// Nothing usable reached the client; another node may be tried.
    Retry(UpstreamError),
    /// Nothing was sent to the client yet; answer with this error.
    Fail(ProxyError),
    /// The response had started or the client is gone: close the connection.
    Abort { node_failed: bool },
}

/// Why no response head came: an `Attempt` ending before the response (small, so the head's
/// future hands it back cheaply).
#[derive(Clone, Copy)]
pub(super) enum HeadFail {
    Stale,
    Retry(UpstreamError),
    Fail(ProxyError),
}

impl<T> From<HeadFail> for Attempt<T> {
    #[inline]
    fn from(f: HeadFail) -> Attempt<T> {
        match f {
            HeadFail::Stale => Attempt::Stale,
            HeadFail::Retry(e) => Attempt::Retry(e),
            HeadFail::Fail(e) => Attempt::Fail(e),
        }
    }
}

/// What the attempts loop does after an attempt.
pub(super) enum Next<T> {
    /// Lease again (another node, or a fresh connection to the same one).
    Again,
    Done(T),
    Tunnel(UpstreamStream),
    Fail(ProxyError),
    Close,
}

/// Finishes `lease` with what `attempt` means for its node (balancer, health and pool are the
/// lease's business) and says how the request goes on.
// Inlined: one call site per loop, and the conn and attempt would otherwise be moved in memory.
#[inline(always)]
pub(super) fn settle<T>(lease: Lease<'_, '_>, conn: PooledConn, attempt: Attempt<T>) -> Next<T> {
    match attempt {
        Attempt::Done { out, reusable } => {
            lease.finish(if reusable {
                Outcome::Reusable(conn)
            } else {
                Outcome::Done
            });
            Next::Done(out)
        }
        Attempt::Upgrade => {
            lease.finish(Outcome::Done);
            Next::Tunnel(conn.stream)
        }
        Attempt::Stale => {
            lease.finish(Outcome::Stale);
            Next::Again
        }
        Attempt::Retry(e) => {
            lease.finish(Outcome::NodeFailed(e));
            Next::Again
        }
        Attempt::Fail(e) => {
            lease.finish(match e {
                ProxyError::Upstream(u) if u.counts_as_node_failure() => Outcome::NodeFailed(u),
                _ => Outcome::Aborted,
            });
            Next::Fail(e)
        }
        Attempt::Abort { node_failed } => {
            lease.finish(if node_failed {
                Outcome::NodeFailed(UpstreamError::Reset)
            } else {
                Outcome::Aborted
            });
            Next::Close
        }
    }
}

/// What the request sent upstream is written from: the client's head and the plugins' edits.
pub(super) struct Outgoing<'a> {
    pub(super) req: &'a RequestHead,
    pub(super) cx: &'a Ctx,
    /// Path and query to send (`target_path`).
    pub(super) path: &'a [u8],
    pub(super) client_ip: &'a [u8],
    pub(super) https: bool,
}

impl Outgoing<'_> {
    /// Writes the request head for a node whose address reads `node_host` into `out`.
    #[inline(always)]
    pub(super) fn head(&self, out: &mut BytesMut, route: &RouteConfig, node_host: &[u8]) {
        let req = self.req;
        let host = match &route.pass_host {
            PassHost::Pass if !req.host().is_empty() => req.host(),
            PassHost::Pass | PassHost::Node => node_host,
            PassHost::Rewrite(h) => h.as_bytes(),
        };
        let host = self.cx.host.as_deref().unwrap_or(host);
        write::upstream_request_edited(
            out,
            req,
            &UpstreamRequest {
                path: self.path,
                host,
                client_ip: self.client_ip,
                proto: if self.https { b"https" } else { b"http" },
                body: req.body,
                method: self.cx.method.map(str::as_bytes),
            },
            &self.cx.req_headers,
        );
    }

    /// The method sent upstream (a plugin's, or the client's) may be repeated.
    #[inline]
    pub(super) fn idempotent(&self) -> bool {
        idempotent(self.req, self.cx)
    }
}

/// The method sent upstream for `req` (a plugin's, or the client's) may be repeated.
#[inline]
pub(super) fn idempotent(req: &RequestHead, cx: &Ctx) -> bool {
    match cx.method {
        Some(m) => Method::from_bytes(m.as_bytes()).idempotent(),
        None => req.method.idempotent(),
    }
}

/// Writes into `path` the path and query sent upstream: the route's strip_prefix, then a
/// plugin's uri / query rewrite.
#[inline(always)]
pub(super) fn target_path(path: &mut BytesMut, req: &RequestHead, route: &RouteConfig, cx: &Ctx) {
    path.clear();
    let p = req.path();
    let stripped = route.strip_prefix.as_deref().and_then(|pre| {
        let rest = p.strip_prefix(pre.as_bytes())?;
        (rest.is_empty() || rest[0] == b'/').then_some(rest)
    });
    match stripped {
        Some([]) => path.put_u8(b'/'),
        Some(rest) => path.put_slice(rest),
        None => path.put_slice(p),
    }
    let q = req.query();
    if !q.is_empty() {
        path.put_u8(b'?');
        path.put_slice(q);
    }
    if let Some(uri) = &cx.uri {
        let q = match &cx.query {
            Some(q) => q.as_slice(),
            None => req.query(),
        };
        path.clear();
        path.put_slice(uri);
        // As APISIX: the original query string follows a rewritten uri without one.
        if !q.is_empty() && !uri.contains(&b'?') {
            path.put_u8(b'?');
            path.put_slice(q);
        }
    } else if let Some(q) = &cx.query {
        let end = path.iter().position(|&b| b == b'?').unwrap_or(path.len());
        path.truncate(end);
        if !q.is_empty() {
            path.put_u8(b'?');
            path.put_slice(q);
        }
    }
}

/// The chash key of a request (`hash_on`).
pub(super) fn balance_key(on: &HashOn, client_ip: &[u8], req: &RequestHead) -> u64 {
    let key: &[u8] = match on {
        HashOn::RemoteAddr => client_ip,
        HashOn::Uri => req.path(),
        HashOn::Header(h) => req.header(h).unwrap_or_default(),
        HashOn::Cookie(name) => req
            .header("cookie")
            .and_then(|c| cookie(c, name.as_bytes()))
            .unwrap_or_default(),
        HashOn::Arg(name) => arg(req.query(), name.as_bytes()).unwrap_or_default(),
    };
    hash_key(key)
}

fn cookie<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let (k, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
        (k == name).then(|| &v[1..])
    })
}

fn arg<'a>(query: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    query.split(|&b| b == b'&').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
        (&pair[..eq] == name).then(|| pair.get(eq + 1..).unwrap_or_default())
    })
}

/// The upstream side of one request: the response head and the bytes read past it. A client
/// connection keeps one across its requests (parked while idle, idle.rs); a background refresh
/// has its own. The connection itself is the attempt's (leased), passed to each call.
#[derive(Default)]
pub(super) struct UpstreamExchange {
    /// Bytes read from the upstream not yet relayed (body bytes that came with the head).
    pub(super) buf: BytesMut,
    pub(super) resp: ResponseHead,
}

impl UpstreamExchange {
    /// Writes `unsent` first, if given (the request head and a body kept for replay; a streamed
    /// body went out before), then reads the response head into `resp` (informational responses
    /// other than 101 consumed). One future for both, so the common request (no body) awaits
    /// one level less. Ends as the attempt should: a write error or a close before any response
    /// byte is `Stale` on a pooled connection and `Retry` on a fresh one (the close only when the
    /// request can be replayed: `replayable`, kept whole and idempotent), anything else `Fail`.
    /// `client`: an HTTP/1.1 client, to which 102 and 103 (Early Hints) are relayed as they
    /// arrive (re-framed, hop-by-hop fields dropped; never stored by a cache, which only sees
    /// the final head); other 1xx, and all of them for HTTP/1.0 clients, are dropped.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn read_head<W: monoio::io::AsyncWriteRent>(
        &mut self,
        conn: &mut PooledConn,
        mut client: Option<&mut W>,
        pooled: bool,
        unsent: Option<&mut BytesMut>,
        method: Method,
        replayable: bool,
        (server, cfg): (&ServerConfig, &UpstreamConfig),
    ) -> Result<(), HeadFail> {
        if let Some(out) = unsent {
            match write_all(&mut conn.stream, out, cfg.send_timeout).await {
                Ok(()) => {}
                Err(IoFail::Timeout) => {
                    return Err(HeadFail::Fail(UpstreamError::SendTimeout.into()))
                }
                Err(_) if pooled => return Err(HeadFail::Stale),
                Err(_) => return Err(HeadFail::Retry(UpstreamError::Reset)),
            }
        }
        self.buf.clear();
        let mut got_bytes = false;
        loop {
            if !self.buf.is_empty() {
                match self.resp.parse(&self.buf, method, server.max_header_bytes) {
                    Ok(Status::Complete(n)) => {
                        self.buf.advance(n);
                        if self.resp.status < 200 && self.resp.status != 101 {
                            if let (Some(c), 102 | 103) = (client.as_deref_mut(), self.resp.status)
                            {
                                let mut out = interim_head(&self.resp);
                                // A client that cannot take it will fail on the final head.
                                let _ = write_all(c, &mut out, server.send_timeout).await;
                            }
                            continue;
                        }
                        return Ok(());
                    }
                    Ok(Status::Partial) => {}
                    Err(e) => return Err(HeadFail::Fail(e.into())),
                }
            }
            match read_some(
                &mut conn.stream,
                &mut self.buf,
                server.read_buffer_bytes,
                cfg.read_timeout,
            )
            .await
            {
                Ok(_) => got_bytes = true,
                Err(IoFail::Timeout) => {
                    return Err(HeadFail::Fail(UpstreamError::ReadTimeout.into()))
                }
                Err(_) if got_bytes => {
                    return Err(HeadFail::Fail(
                        UpstreamError::BadResponse("upstream closed inside the response head")
                            .into(),
                    ))
                }
                Err(_) => {
                    return Err(match (replayable, pooled) {
                        (true, true) => HeadFail::Stale,
                        (true, false) => HeadFail::Retry(UpstreamError::Reset),
                        (false, _) => HeadFail::Fail(UpstreamError::Reset.into()),
                    })
                }
            }
        }
    }

    /// Reads the response body to its end with no client to relay it to, handing its data to
    /// `tee` (a background refresh storing it).
    pub(super) async fn read_body(
        &mut self,
        conn: &mut PooledConn,
        tee: Option<&mut Tee>,
        pc: &PumpCfg,
    ) -> Result<u64, PumpFail> {
        drain(&mut conn.stream, &mut self.buf, self.resp.body, pc, tee).await
    }

    /// After the body: the connection may serve another request (the upstream keeps it open
    /// and sent nothing past the response).
    #[inline]
    pub(super) fn reusable(&self) -> bool {
        self.resp.keep_alive && self.buf.is_empty()
    }
}

/// An interim (1xx) response head as relayed to the client: status line and end-to-end fields.
fn interim_head(resp: &ResponseHead) -> BytesMut {
    let mut out = BytesMut::with_capacity(256);
    write::status_line(&mut out, resp.status, resp.reason());
    for h in &resp.headers {
        let n = resp.name(h);
        let hop = [
            &b"connection"[..],
            b"keep-alive",
            b"transfer-encoding",
            b"content-length",
            b"upgrade",
            b"proxy-connection",
            b"te",
        ]
        .iter()
        .any(|x| x.eq_ignore_ascii_case(n));
        if !hop && !resp.listed_in_connection(n) {
            write::header(&mut out, n, resp.value(h));
        }
    }
    out.put_slice(b"\r\n");
    out
}
