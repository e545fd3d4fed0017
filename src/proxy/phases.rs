//! The phase driver of one routed request: plugin request phases (request_body too when a plugin asked for the body) or a
//! plugin's reply, the upstream phase with the cache's hooks, the response phase, log. Owns no state; plugins live on the shard.

use bytes::{BufMut, Bytes};

use super::body::Read;
use super::cached::OnRequest;
use super::conn::{After, ClientConn, ClientStream};
use super::shard::Shard;
use crate::http::parse::{Method, ResponseHead};
use crate::http::write::{header, put_u64, reason, status_line};
use crate::local::bell::parked;
use crate::net::io::write_all;
use crate::plugin::{Ctx, Reply, Resume, Step, Until};

impl<S: ClientStream> ClientConn<S> {
    /// Routed request -> plugin request phases -> forward (or the plugin's reply) -> log.
    /// Routes without plugins go straight to `forward`.
    pub(super) async fn with_plugins(&mut self, shard: &Shard, route: usize) -> After {
        self.cx.reset(route);
        // Over TLS only (RFC 6797 7.2): the route's own value, else the listener's.
        let hsts = self.client.tls.as_ref().and_then(|t| {
            shard
                .built
                .cfg
                .routes
                .get(route)
                .and_then(|r| r.hsts.as_deref())
                .or(t.hsts.as_deref())
        });
        if let Some(h) = hsts {
            // Before the plugins: response-rewrite may still change or remove it.
            self.cx
                .resp_headers
                .set(b"strict-transport-security", h.as_bytes());
        }
        if shard.plugins.is_empty(route) {
            return self.forward(shard, route).await;
        }
        let mut from = Resume::START;
        let step = loop {
            match shard
                .plugins
                .request_phases(route, &self.req, &mut self.cx, from)
            {
                Step::Wait(w, at) => {
                    match w.until {
                        // Parked until the shard's doorbell rings (the answer's sender rings it)
                        // or `within` passes. Boxed for the same reason as the delay's `Sleep`
                        // below.
                        Until::Ready(ready) => {
                            let end = std::time::Instant::now() + w.within;
                            while !ready() {
                                let left = end.saturating_duration_since(std::time::Instant::now());
                                if left.is_zero() {
                                    break;
                                }
                                let _ = Box::pin(monoio::time::timeout(left, parked())).await;
                            }
                        }
                        Until::Done(work) => {
                            let _ = Box::pin(monoio::time::timeout(w.within, work)).await;
                        }
                    }
                    from = at;
                }
                step => break step,
            }
        };
        let mut reply = match step {
            Step::Reply(reply) => Some(reply),
            Step::Pass | Step::Wait(..) => None,
        };
        if reply.is_none() {
            if let Some(limit) = self.cx.buffer_body.take() {
                // The request_body phase: the body is read whole (up to the limit) first.
                match self.read_whole_body(shard, limit).await {
                    Ok(read) => {
                        let body: &[u8] = match &read {
                            Read::Buffered(n) => &self.client.rbuf[..*n],
                            Read::Decoded(v) => v,
                        };
                        reply = shard
                            .plugins
                            .request_body(route, &self.req, body, &mut self.cx);
                    }
                    Err(e) => {
                        self.req.keep_alive = false;
                        let after = self.fail(shard, e).await;
                        shard.plugins.log(route, &mut self.cx);
                        return after;
                    }
                }
            }
        }
        let after = match reply {
            Some(reply) => {
                if !self.cx.delay.is_zero() {
                    // Boxed: a `Sleep` is 640 bytes aligned to 128, and inline it would make the
                    // per-request future (boxed in conn.rs) an over-aligned, slow allocation.
                    Box::pin(monoio::time::sleep(self.cx.delay)).await;
                }
                self.cx.status = reply.status;
                self.send_reply(shard, reply).await
            }
            _ => {
                if !self.cx.delay.is_zero() {
                    Box::pin(monoio::time::sleep(self.cx.delay)).await;
                }
                self.cx.forwarded = true;
                self.upstream(shard, route).await
            }
        };
        shard.plugins.log(route, &mut self.cx);
        after
    }

    /// The upstream phase: `forward`, with the proxy cache's request and done hooks around it
    /// when the route has a cache (proxy/cached.rs); the request hook may answer by itself.
    async fn upstream(&mut self, shard: &Shard, route: usize) -> After {
        if !self.cx.private.cache.active() {
            return self.forward(shard, route).await;
        }
        let invalidate = match self.cache_on_request(shard).await {
            OnRequest::Answered(after) => return after,
            OnRequest::Forward { invalidate } => invalidate,
        };
        let after = self.forward(shard, route).await;
        self.cache_on_done(invalidate);
        after
    }

    /// Writes a plugin's reply. The connection is kept if the unread request body, if any, is
    /// small enough to read and drop afterwards (discard.rs).
    pub(super) async fn send_reply(&mut self, shard: &Shard, reply: Reply) -> After {
        let keep = self.req.keep_alive
            && self.body_discardable()
            && !shard.drain.is_draining()
            && self.client.served < shard.built.cfg.server.keepalive_requests;
        let w = &mut self.wbuf;
        w.clear();
        status_line(w, reply.status, reason(reply.status).as_bytes());
        w.put_slice(b"Server: ringway\r\n");
        for (n, v) in &reply.headers {
            if n.eq_ignore_ascii_case(b"content-length") || n.eq_ignore_ascii_case(b"connection") {
                continue;
            }
            header(w, n, v);
        }
        let no_body = matches!(reply.status, 204 | 304) || reply.status < 200;
        if !no_body {
            w.put_slice(b"Content-Length: ");
            put_u64(w, reply.body.len() as u64);
            w.put_slice(b"\r\n");
        }
        if !keep {
            w.put_slice(b"Connection: close\r\n");
        }
        w.put_slice(b"\r\n");
        if !no_body && self.req.method != Method::Head {
            w.put_slice(&reply.body);
        }
        let ok = write_all(
            &mut self.client.stream,
            &mut self.wbuf,
            shard.built.cfg.server.send_timeout,
        )
        .await
        .is_ok();
        if ok && keep && self.discard_body(shard).await {
            After::KeepAlive
        } else {
            After::Close
        }
    }

    /// The response phases once the upstream head is parsed: header edits and status are
    /// recorded in `cx`; returns a replacement body if a plugin set one.
    pub(super) fn response_phase(&mut self, shard: &Shard) -> Option<Bytes> {
        response_phases(shard, &mut self.cx, &self.upstream.resp)
    }
}

/// The response phases of `cx.route` for the upstream head `resp` (also run by a background
/// refresh, whose response a replacement body keeps out of the cache).
#[inline(always)]
pub(super) fn response_phases(shard: &Shard, cx: &mut Ctx, resp: &ResponseHead) -> Option<Bytes> {
    cx.status = resp.status;
    let route = cx.route;
    if !shard.plugins.has_response_phases(route, cx) {
        return None;
    }
    shard.plugins.response_headers(route, resp, cx);
    shard.plugins.response_body(route, cx)
}
