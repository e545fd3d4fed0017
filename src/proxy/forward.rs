//! Sends one routed request upstream over leased connections and relays the response: retries
//! as the lease's outcomes allow, body streaming both ways. Never edits balancer, health or pools itself.

use bytes::{Buf, BufMut};

use super::conn::{After, ClientConn, ClientStream};
use super::io::{read_some, write_all, IoFail};
use super::pump::{pump_body, PumpCfg, PumpFail};
use crate::config::{HashOn, PassHost, RouteConfig};
use crate::error::{ClientError, ProxyError, UpstreamError};
use crate::http::parse::{BodyKind, Method, Status};
use crate::http::write::{self, ClientFraming, UpstreamRequest};
use crate::runtime::shard::Shard;
use crate::upstream::balance::{hash_key, Policy};
use crate::upstream::lease::Outcome;
use crate::upstream::pool::PooledConn;
use crate::upstream::UpstreamState;

/// Request bodies up to this size that already sit in the read buffer are kept until the
/// response arrives, so the request can be replayed on another node.
const REPLAY_MAX: u64 = 64 * 1024;

/// How one attempt against one node ended.
enum Exchange {
    Done {
        client: After,
        reusable: bool,
    },
    /// The 101 went to the client; the connection becomes a tunnel.
    Upgrade,
    /// A pooled connection was dead before any response byte: try a fresh one, same node.
    Stale,
    /// Nothing usable reached the client; another node may be tried.
    Retry(UpstreamError),
    /// Nothing was sent to the client yet; answer with this error.
    Fail(ProxyError),
    /// The response had started or the client is gone: close the connection.
    Abort {
        node_failed: bool,
    },
}

impl<S: ClientStream> ClientConn<S> {
    pub(super) async fn forward(&mut self, shard: &Shard, route_id: usize) -> After {
        // The router only returns ids the route table has; a miss would be a bug, not input.
        let Some(route) = shard.cfg.routes.get(route_id) else {
            return self.fail(shard, ProxyError::NoRoute).await;
        };
        // A plugin (traffic-split) may have picked another upstream.
        let up = &shard.upstreams[self.cx.upstream.unwrap_or(route.upstream)];
        self.build_path(route);
        self.apply_plugin_uri();
        let hash = if up.cfg.policy == Policy::Chash {
            self.hash_key(&up.cfg.hash_on)
        } else {
            0
        };
        let replay = match self.req.body {
            BodyKind::Empty => Some(0),
            BodyKind::Length(n) if n <= REPLAY_MAX && n as usize <= self.rbuf.len() => {
                Some(n as usize)
            }
            _ => None,
        };
        let after = self.attempts(shard, route, up, hash, replay).await;
        if let Some(n) = replay {
            // The replayable body stayed in the buffer for retries; it is consumed now.
            self.rbuf.advance(n.min(self.rbuf.len()));
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
        let mut tries = up.attempts(hash);
        loop {
            let (lease, mut conn) = match tries.lease().await {
                Ok(l) => l,
                Err(e) => return self.upstream_failed(shard, e.into()).await,
            };
            let result = self
                .exchange(
                    shard,
                    route,
                    up,
                    lease.node(),
                    &mut conn,
                    lease.pooled(),
                    replay,
                )
                .await;
            match result {
                Exchange::Upgrade => {
                    lease.finish(Outcome::Done);
                    return After::Tunnel(conn.stream);
                }
                Exchange::Done { client, reusable } => {
                    lease.finish(if reusable {
                        Outcome::Reusable(conn)
                    } else {
                        Outcome::Done
                    });
                    return client;
                }
                Exchange::Stale => lease.finish(Outcome::Stale),
                Exchange::Retry(e) => lease.finish(Outcome::NodeFailed(e)),
                Exchange::Fail(e) => {
                    lease.finish(match e {
                        ProxyError::Upstream(u) if u.counts_as_node_failure() => {
                            Outcome::NodeFailed(u)
                        }
                        _ => Outcome::Aborted,
                    });
                    return self.upstream_failed(shard, e).await;
                }
                Exchange::Abort { node_failed } => {
                    lease.finish(if node_failed {
                        Outcome::NodeFailed(UpstreamError::Reset)
                    } else {
                        Outcome::Aborted
                    });
                    return After::Close;
                }
            }
        }
    }

    /// No answer from the upstream: the cache's stale-if-error hook may answer (routes with a
    /// cache); otherwise the gateway's error response.
    async fn upstream_failed(&mut self, shard: &Shard, err: ProxyError) -> After {
        if self.cx.cache.active() {
            if let Some(after) = self.cache_on_error(shard, err).await {
                return after;
            }
        }
        self.fail(shard, err).await
    }

    /// One request/response exchange on one upstream connection.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &mut self,
        shard: &Shard,
        route: &RouteConfig,
        up: &UpstreamState,
        node: usize,
        conn: &mut PooledConn,
        was_pooled: bool,
        replay: Option<usize>,
    ) -> Exchange {
        let server = &shard.cfg.server;
        let cfg = &up.cfg;
        let idempotent = match self.cx.method {
            Some(m) => Method::from_bytes(m.as_bytes()).idempotent(),
            None => self.req.method.idempotent(),
        };
        self.wbuf.clear();
        {
            let node_host = cfg.nodes[node].host.as_bytes();
            let host = match &route.pass_host {
                PassHost::Pass if !self.req.host().is_empty() => self.req.host(),
                PassHost::Pass | PassHost::Node => node_host,
                PassHost::Rewrite(h) => h.as_bytes(),
            };
            let host = self.cx.host.as_deref().unwrap_or(host);
            write::upstream_request_edited(
                &mut self.wbuf,
                &self.req,
                &UpstreamRequest {
                    path: &self.path,
                    host,
                    client_ip: self.ip.as_bytes(),
                    proto: if self.tls.is_some() {
                        b"https"
                    } else {
                        b"http"
                    },
                    body: self.req.body,
                    method: self.cx.method.map(str::as_bytes),
                },
                &self.cx.req_headers,
            );
        }
        match replay {
            Some(n) => {
                self.wbuf.put_slice(&self.rbuf[..n]);
                match write_all(&mut conn.stream, &mut self.wbuf, cfg.send_timeout).await {
                    Ok(()) => {}
                    Err(IoFail::Timeout) => {
                        return Exchange::Fail(UpstreamError::SendTimeout.into())
                    }
                    Err(_) if was_pooled => return Exchange::Stale,
                    Err(_) => return Exchange::Retry(UpstreamError::Reset),
                }
            }
            None => {
                if !self.continue_if_expected(server.send_timeout).await {
                    return Exchange::Abort { node_failed: false };
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
                    (&mut self.stream, &mut self.nonblocking),
                    &mut self.rbuf,
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
                            Exchange::Fail(ClientError::BodyTimeout.into())
                        }
                        PumpFail::Src(_) => Exchange::Abort { node_failed: false },
                        PumpFail::Framing(c) => {
                            Exchange::Fail(ClientError::BadRequest(c.message()).into())
                        }
                        PumpFail::TooLarge => Exchange::Fail(ClientError::BodyTooLarge.into()),
                        PumpFail::Dst(IoFail::Timeout) => {
                            Exchange::Fail(UpstreamError::SendTimeout.into())
                        }
                        PumpFail::Dst(_) => Exchange::Fail(UpstreamError::Reset.into()),
                    };
                }
            }
        }

        // Response head; informational responses other than 101 are consumed here.
        self.ubuf.clear();
        let mut got_bytes = false;
        loop {
            if !self.ubuf.is_empty() {
                match self
                    .resp
                    .parse(&self.ubuf, self.req.method, server.max_header_bytes)
                {
                    Ok(Status::Complete(n)) => {
                        self.ubuf.advance(n);
                        if self.resp.status < 200 && self.resp.status != 101 {
                            continue;
                        }
                        break;
                    }
                    Ok(Status::Partial) => {}
                    Err(e) => return Exchange::Fail(e.into()),
                }
            }
            match read_some(
                &mut conn.stream,
                &mut self.ubuf,
                server.read_buffer_bytes,
                cfg.read_timeout,
            )
            .await
            {
                Ok(_) => got_bytes = true,
                Err(IoFail::Timeout) => return Exchange::Fail(UpstreamError::ReadTimeout.into()),
                Err(_) if got_bytes => {
                    return Exchange::Fail(
                        UpstreamError::BadResponse("upstream closed inside the response head")
                            .into(),
                    )
                }
                Err(_) => {
                    return match (replay.is_some() && idempotent, was_pooled) {
                        (true, true) => Exchange::Stale,
                        (true, false) => Exchange::Retry(UpstreamError::Reset),
                        (false, _) => Exchange::Fail(UpstreamError::Reset.into()),
                    }
                }
            }
        }

        if self.resp.status == 101 {
            return self.switch_protocols(server.send_timeout, route).await;
        }
        if self.cx.cache.active() {
            // proxy-cache: a 304 to its revalidation or a 5xx under stale-if-error is answered
            // from the entry (proxy/cached.rs); otherwise it labels the response and may tee it.
            if let Some((client, reusable)) = self.cache_on_head(shard).await {
                return Exchange::Done { client, reusable };
            }
        }

        let framing = match self.resp.body {
            // 204/304/1xx and HEAD answers carry no framing of their own; any other empty
            // body must say so, or an HTTP/1.1 client would read until close.
            BodyKind::Empty
                if self.req.method == Method::Head
                    || self.resp.status < 200
                    || self.resp.status == 204
                    || self.resp.status == 304 =>
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
            && self.served < server.keepalive_requests;
        self.wbuf.clear();
        write::client_response_edited(
            &mut self.wbuf,
            &self.resp,
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
            if write_all(&mut self.stream, &mut self.wbuf, server.send_timeout)
                .await
                .is_err()
            {
                return Exchange::Abort { node_failed: false };
            }
            return Exchange::Done {
                client: if keep { After::KeepAlive } else { After::Close },
                reusable: false,
            };
        }
        let pc = PumpCfg {
            read_timeout: cfg.read_timeout,
            write_timeout: server.send_timeout,
            reserve: server.read_buffer_bytes,
            limit: 0,
            max_trailer: server.max_header_bytes,
        };
        let relayed = pump_body(
            (&mut conn.stream, &mut conn.nonblocking),
            &mut self.ubuf,
            (&mut self.stream, &mut self.nonblocking),
            &mut self.wbuf,
            self.resp.body,
            framing == ClientFraming::Chunked,
            &pc,
            self.cx.cache.tee.as_mut(),
        )
        .await;
        match relayed {
            Ok(_) => {}
            Err(PumpFail::Dst(_)) => return Exchange::Abort { node_failed: false },
            Err(_) => return Exchange::Abort { node_failed: true },
        }
        let reusable = self.resp.keep_alive && self.ubuf.is_empty();
        Exchange::Done {
            client: if keep { After::KeepAlive } else { After::Close },
            reusable,
        }
    }

    /// Relays a 101 and hands both sockets to the tunnel.
    async fn switch_protocols(
        &mut self,
        send_timeout: std::time::Duration,
        route: &RouteConfig,
    ) -> Exchange {
        if !(self.req.websocket && route.websocket) {
            return Exchange::Fail(
                UpstreamError::BadResponse("upstream switched protocols unasked").into(),
            );
        }
        self.wbuf.clear();
        write::client_response(
            &mut self.wbuf,
            &self.resp,
            ClientFraming::None,
            true,
            self.req.version,
            false,
        );
        if write_all(&mut self.stream, &mut self.wbuf, send_timeout)
            .await
            .is_err()
        {
            return Exchange::Abort { node_failed: false };
        }
        Exchange::Upgrade
    }

    fn build_path(&mut self, route: &RouteConfig) {
        self.path.clear();
        let path = self.req.path();
        let stripped = route.strip_prefix.as_deref().and_then(|p| {
            let rest = path.strip_prefix(p.as_bytes())?;
            (rest.is_empty() || rest[0] == b'/').then_some(rest)
        });
        match stripped {
            Some([]) => self.path.put_u8(b'/'),
            Some(rest) => self.path.put_slice(rest),
            None => self.path.put_slice(path),
        }
        let q = self.req.query();
        if !q.is_empty() {
            self.path.put_u8(b'?');
            self.path.put_slice(q);
        }
    }

    fn hash_key(&self, on: &HashOn) -> u64 {
        let key: &[u8] = match on {
            HashOn::RemoteAddr => self.ip.as_bytes(),
            HashOn::Uri => self.req.path(),
            HashOn::Header(h) => self.req.header(h).unwrap_or_default(),
            HashOn::Cookie(name) => self
                .req
                .header("cookie")
                .and_then(|c| cookie(c, name.as_bytes()))
                .unwrap_or_default(),
            HashOn::Arg(name) => arg(self.req.query(), name.as_bytes()).unwrap_or_default(),
        };
        hash_key(key)
    }
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
