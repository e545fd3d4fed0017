//! The client side of the upstream phase: sends a routed request over leased connections (exchange.rs is the upstream
//! half), streams bodies both ways, retries as the leases' outcomes allow. Never edits balancer, health or pools itself.

use bytes::{Buf, BufMut, BytesMut};

use super::conn::{After, ClientConn, ClientStream};
use super::exchange::{balance_key, idempotent, settle, target_path, Attempt, Next, Outgoing};
use super::pump::{pump_body, PumpCfg, PumpFail};
use super::shard::Shard;
use crate::config::RouteConfig;
use crate::error::{ClientError, ProxyError, UpstreamError};
use crate::http::parse::{BodyKind, Method};
use crate::http::write::{self, ClientFraming};
use crate::net::io::{write_all, IoFail};
use crate::upstream::balance::Policy;
use crate::upstream::pool::PooledConn;
use crate::upstream::UpstreamState;

/// Request bodies up to this size that already sit in the read buffer are kept until the
/// response arrives, so the request can be replayed on another node.
const REPLAY_MAX: u64 = 64 * 1024;

/// Upstream read size for a response body longer than `read_buffer_bytes` relayed to a TLS
/// client: a 64 KiB body sitting in the upstream socket comes in one read and leaves as one TLS
/// write (its records in one send), where 16 KiB reads made ~5 reads and ~5 sends (ring
/// submissions per 64 KiB request 12.0 -> 7.0). Plain clients get long bodies spliced instead.
/// The buffer is the parked set's (idle.rs keeps it up to its 64 KiB cap).
const TLS_RELAY_READ: usize = 64 * 1024;

impl<S: ClientStream> ClientConn<S> {
    pub(super) async fn forward(&mut self, shard: &Shard, route_id: usize) -> After {
        // The router only returns ids the route table has; a miss would be a bug, not input.
        let Some(route) = shard.built.cfg.routes.get(route_id) else {
            return self.fail(shard, ProxyError::NoRoute).await;
        };
        // A plugin (traffic-split) may have picked another upstream.
        let up = &shard.upstreams[self.cx.upstream.unwrap_or(route.upstream)];
        target_path(&mut self.path, &self.req, route, &self.cx);
        let hash = if up.cfg.policy == Policy::Chash {
            balance_key(&up.cfg.hash_on, self.client.ip.as_bytes(), &self.req)
        } else {
            0
        };
        let replay = match self.req.body {
            BodyKind::Empty => Some(0),
            BodyKind::Length(n) if n <= REPLAY_MAX && n as usize <= self.client.rbuf.len() => {
                Some(n as usize)
            }
            _ => None,
        };
        let after = self.attempts(shard, route, up, hash, replay).await;
        if let Some(n) = replay {
            // The replayable body stayed in the buffer for retries; it is consumed now.
            self.client.rbuf.advance(n.min(self.client.rbuf.len()));
        }
        after
    }

    async fn attempts(
        &mut self,
        shard: &Shard,
        route: &RouteConfig,
        up: &UpstreamState,
        hash: u64,
        replay: Option<usize>,
    ) -> After {
        // Node choice, connections and what each attempt's end means for balancer, passive
        // health and pool are the lease's (upstream/lease.rs); this loop only says how it ended.
        // A request that can be sent again may take a just-returned pooled connection unpeeked.
        let replayable = replay.is_some() && idempotent(&self.req, &self.cx);
        let mut tries = up.attempts(hash).replayable(replayable);
        loop {
            let (lease, mut conn) = match tries.lease().await {
                Ok(l) => l,
                Err(e) => return self.upstream_failed(shard, e.into()).await,
            };
            let attempt = self
                .exchange(
                    shard,
                    route,
                    up,
                    lease.node(),
                    &mut conn,
                    lease.pooled(),
                    (replay, replayable),
                )
                .await;
            match settle(lease, conn, attempt) {
                Next::Again => {}
                Next::Done(client) => return client,
                Next::Tunnel(stream) => return After::Tunnel(stream),
                Next::Fail(e) => return self.upstream_failed(shard, e).await,
                Next::Close => return After::Close,
            }
        }
    }

    /// No answer from the upstream: the cache's stale-if-error hook may answer (routes with a
    /// cache); otherwise the gateway's error response.
    async fn upstream_failed(&mut self, shard: &Shard, err: ProxyError) -> After {
        if self.cx.private.cache.active() {
            if let Some(after) = self.cache_on_error(shard, err).await {
                return after;
            }
        }
        self.fail(shard, err).await
    }

    /// One request/response exchange on one upstream connection. `replay`: the body length kept
    /// in the read buffer for a retry; `replayable`: that, and the method is idempotent.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &mut self,
        shard: &Shard,
        route: &RouteConfig,
        up: &UpstreamState,
        node: usize,
        conn: &mut PooledConn,
        was_pooled: bool,
        (replay, replayable): (Option<usize>, bool),
    ) -> Attempt<After> {
        let server = &shard.built.cfg.server;
        let cfg = &up.cfg;
        let out = Outgoing {
            req: &self.req,
            cx: &self.cx,
            path: &self.path,
            client_ip: self.client.ip.as_bytes(),
            https: self.client.tls.is_some(),
        };
        self.wbuf.clear();
        out.head(&mut self.wbuf, route, cfg.nodes[node].host.as_bytes());
        let unsent = match replay {
            Some(n) => {
                self.wbuf.put_slice(&self.client.rbuf[..n]);
                Some(&mut self.wbuf)
            }
            None => {
                if !self.continue_if_expected(server.send_timeout).await {
                    return Attempt::Abort { node_failed: false };
                }
                let pc = PumpCfg {
                    read_timeout: server.client_body_timeout,
                    write_timeout: cfg.send_timeout,
                    reserve: server.read_buffer_bytes,
                    limit: server.max_body_bytes,
                    max_trailer: server.max_header_bytes,
                };
                let chunked = self.req.body == BodyKind::Chunked;
                let sent = pump_body(
                    (&mut self.client.stream, &mut self.client.nonblocking),
                    &mut self.client.rbuf,
                    (&mut conn.stream, &mut conn.nonblocking),
                    &mut self.wbuf,
                    self.req.body,
                    chunked,
                    &pc,
                    None,
                )
                .await;
                if let Err(e) = sent {
                    self.req.keep_alive = false;
                    return match e {
                        PumpFail::Src(IoFail::Timeout) => {
                            Attempt::Fail(ClientError::BodyTimeout.into())
                        }
                        PumpFail::Src(_) => Attempt::Abort { node_failed: false },
                        PumpFail::Framing(c) => {
                            Attempt::Fail(ClientError::BadRequest(c.message()).into())
                        }
                        PumpFail::TooLarge => Attempt::Fail(ClientError::BodyTooLarge.into()),
                        PumpFail::Dst(IoFail::Timeout) => {
                            Attempt::Fail(UpstreamError::SendTimeout.into())
                        }
                        PumpFail::Dst(_) => Attempt::Fail(UpstreamError::Reset.into()),
                    };
                }
                None
            }
        };

        // Response head (after the request, if it was kept for replay); informational
        // responses other than 101 are consumed there.
        let head = self.upstream.read_head(
            conn,
            (self.req.version == 1).then_some(&mut self.client.stream),
            was_pooled,
            unsent,
            self.req.method,
            replayable,
            (server, cfg),
        );
        if let Err(f) = head.await {
            return f.into();
        }

        if self.upstream.resp.status == 101 {
            return self.switch_protocols(server.send_timeout, route).await;
        }
        if self.cx.private.cache.active() {
            // proxy-cache: a 304 to its revalidation or a 5xx under stale-if-error is answered
            // from the entry (proxy/cached.rs); otherwise it labels the response and may tee it.
            if let Some((client, reusable)) = self.cache_on_head(shard).await {
                return Attempt::Done {
                    out: client,
                    reusable,
                };
            }
        }

        let framing = match self.upstream.resp.body {
            // 204/304/1xx and HEAD answers carry no framing of their own; any other empty
            // body must say so, or an HTTP/1.1 client would read until close.
            BodyKind::Empty
                if self.req.method == Method::Head
                    || self.upstream.resp.status < 200
                    || self.upstream.resp.status == 204
                    || self.upstream.resp.status == 304 =>
            {
                ClientFraming::None
            }
            BodyKind::Empty => ClientFraming::Length(0),
            BodyKind::Length(n) => ClientFraming::Length(n),
            BodyKind::Chunked | BodyKind::UntilClose if self.req.version == 1 => {
                ClientFraming::Chunked
            }
            BodyKind::Chunked | BodyKind::UntilClose => ClientFraming::Close,
        };
        // Response phases (plugins): header edits, status override, maybe a replacement body.
        let new_body = self.response_phase(shard);
        let framing = match &new_body {
            Some(b) => ClientFraming::Length(b.len() as u64),
            None => framing,
        };
        let keep = self.req.keep_alive
            && framing != ClientFraming::Close
            && !shard.drain.is_draining()
            && self.client.served < server.keepalive_requests;
        self.wbuf.clear();
        write::client_response_edited(
            &mut self.wbuf,
            &self.upstream.resp,
            framing,
            keep,
            self.req.version,
            self.req.method == Method::Head,
            &self.cx.resp_headers,
            self.cx.status_override,
        );
        if let Some(b) = new_body {
            // The upstream body is not read, so its connection is not reused.
            if self.req.method != Method::Head {
                self.wbuf.put_slice(&b);
            }
            if write_all(&mut self.client.stream, &mut self.wbuf, server.send_timeout)
                .await
                .is_err()
            {
                return Attempt::Abort { node_failed: false };
            }
            return Attempt::Done {
                out: if keep { After::KeepAlive } else { After::Close },
                reusable: false,
            };
        }
        let reserve = self.relay_reserve(server.read_buffer_bytes);
        let pc = PumpCfg {
            read_timeout: cfg.read_timeout,
            write_timeout: server.send_timeout,
            reserve,
            limit: 0,
            max_trailer: server.max_header_bytes,
        };
        let relayed = pump_body(
            (&mut conn.stream, &mut conn.nonblocking),
            &mut self.upstream.buf,
            (&mut self.client.stream, &mut self.client.nonblocking),
            &mut self.wbuf,
            self.upstream.resp.body,
            framing == ClientFraming::Chunked,
            &pc,
            self.cx.private.cache.tee.as_mut(),
        )
        .await;
        match relayed {
            Ok(_) => {}
            Err(PumpFail::Dst(_)) => return Attempt::Abort { node_failed: false },
            Err(_) => return Attempt::Abort { node_failed: true },
        }
        Attempt::Done {
            out: if keep { After::KeepAlive } else { After::Close },
            reusable: self.upstream.reusable(),
        }
    }

    /// The upstream read size for relaying this response's body: `read_buffer_bytes`, or
    /// [`TLS_RELAY_READ`] for a long body to a TLS client (its buffer then widened once).
    fn relay_reserve(&mut self, read_buffer_bytes: usize) -> usize {
        let long = match self.upstream.resp.body {
            BodyKind::Length(n) => n > read_buffer_bytes as u64,
            BodyKind::Empty => false,
            BodyKind::Chunked | BodyKind::UntilClose => true,
        };
        if !long || self.client.stream.plain_tcp().is_some() {
            return read_buffer_bytes;
        }
        let buf = &mut self.upstream.buf;
        if buf.capacity() < TLS_RELAY_READ / 2 {
            // One exact allocation, which the parked set then keeps: growing the 16 KiB buffer
            // by `reserve` overshot the set's 64 KiB cap, so every request dropped its set and
            // regrew (and copied) both buffers (callgrind, perf/RESULTS.md).
            let mut wide = BytesMut::with_capacity(TLS_RELAY_READ);
            wide.extend_from_slice(buf);
            *buf = wide;
        }
        read_buffer_bytes.max(TLS_RELAY_READ)
    }

    /// Relays a 101 and hands both sockets to the tunnel.
    async fn switch_protocols(
        &mut self,
        send_timeout: std::time::Duration,
        route: &RouteConfig,
    ) -> Attempt<After> {
        if !(self.req.websocket && route.websocket) {
            return Attempt::Fail(
                UpstreamError::BadResponse("upstream switched protocols unasked").into(),
            );
        }
        self.wbuf.clear();
        write::client_response(
            &mut self.wbuf,
            &self.upstream.resp,
            ClientFraming::None,
            true,
            self.req.version,
            false,
        );
        if write_all(&mut self.client.stream, &mut self.wbuf, send_timeout)
            .await
            .is_err()
        {
            return Attempt::Abort { node_failed: false };
        }
        Attempt::Upgrade
    }
}
