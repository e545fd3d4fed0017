//! A stale-while-revalidate background refresh: one upstream exchange with no client, whose response revalidates
//! or replaces the cache entry. Owns its own request state and buffers; never touches a client connection.

use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;

use super::cached::{conditionals, on_head};
use super::conn::{ClientConn, ClientStream};
use super::exchange::{
    balance_key, idempotent, settle, target_path, Attempt, Next, Outgoing, UpstreamExchange,
};
use super::phases::response_phases;
use super::pump::PumpCfg;
use super::shard::Shard;
use crate::cache::entry::Entry;
use crate::cache::peer::{Claim, Turn, ASK_TIMEOUT};
use crate::cache::{now_ms, CacheCx, Instance, Leader, Mode};
use crate::config::RouteConfig;
use crate::error::UpstreamError;
use crate::http::parse::{BodyKind, RequestHead, Status};
use crate::plugin::Ctx;
use crate::upstream::balance::Policy;
use crate::upstream::pool::PooledConn;
use crate::upstream::UpstreamState;

impl<S: ClientStream> ClientConn<S> {
    /// stale-while-revalidate: one background refresh per key per node (the owner's flight),
    /// replaying this request (with the plugins' upstream edits) to the upstream with no client
    /// attached.
    pub(super) fn spawn_refresh(&mut self, route: usize, inst: &Rc<Instance>, e: Arc<Entry>) {
        let (key, hash) = (&self.cx.private.cache.key, self.cx.private.cache.hash);
        let leader = if inst.is_local(hash) {
            match Leader::claim(inst, key) {
                Ok(l) => Some(l),
                Err(_) => return,
            }
        } else {
            None // claimed from the owner by the task
        };
        let Some(shard) = super::shard::current_here() else {
            return;
        };
        let head = self.req.buf.clone();
        let ip = self.client.ip;
        let client_ip = self.cx.client_ip;
        let edits = self.cx.req_headers.clone();
        let (uri, query, host, upstream) = (
            self.cx.uri.clone(),
            self.cx.query.clone(),
            self.cx.host.clone(),
            self.cx.upstream,
        );
        let cache = CacheCx {
            inst: Some(inst.clone()),
            key: self.cx.private.cache.key.clone(),
            hash: self.cx.private.cache.hash,
            mode: if e.has_validator() {
                Mode::Revalidate(e)
            } else {
                Mode::Expired(e)
            },
            store: true,
            req_ms: now_ms(),
            leader,
            background: true,
            ..CacheCx::default()
        };
        monoio::spawn(async move {
            let mut cache = cache;
            let mut req = RequestHead::default();
            if !matches!(req.parse(&head, &shard.limits), Ok(Status::Complete(_))) {
                return;
            }
            if cache.leader.is_none() {
                let Some(inst) = cache.inst.clone() else {
                    return;
                };
                let asking = inst.ask(&cache.key, cache.hash, Claim::LeadOnly);
                let Some(answer) = asking.next(ASK_TIMEOUT).await else {
                    return; // no owner to ask
                };
                let Turn::Lead(id) = answer.turn else {
                    return; // a refresh runs already
                };
                let leader = Leader::remote(&inst, &cache.key, cache.hash, id);
                if refreshed_meanwhile(&cache.mode, &answer.variants, &req) {
                    return; // dropping the turn ends it on the owner
                }
                cache.leader = Some(leader);
            }
            let mut r = Refresh {
                req,
                cx: Ctx::new(shard.id, client_ip),
                ip,
                path: BytesMut::with_capacity(256),
                wbuf: BytesMut::with_capacity(4096),
                upstream: UpstreamExchange::default(),
            };
            r.cx.reset(route);
            r.cx.req_headers = edits;
            r.cx.uri = uri;
            r.cx.query = query;
            r.cx.host = host;
            r.cx.upstream = upstream;
            r.cx.private.cache = cache;
            conditionals(&mut r.cx);
            // The tee stores the entry when the body ends; dropping `r` then releases the key's
            // leader, so waiters see the stored entry.
            r.run(&shard).await;
        });
    }
}

/// The owner gives a turn whenever no fetch of the key runs, also right after one ended: when
/// the stale hit that asked for this refresh read the entry before another refresh stored a new
/// one. A fresh variant of this request stored after the stale one means there is nothing to do
/// (on a loaded box this made a second origin request for one stale period).
fn refreshed_meanwhile(mode: &Mode, variants: &[Arc<Entry>], req: &RequestHead) -> bool {
    let (Mode::Revalidate(stale) | Mode::Expired(stale)) = mode else {
        return false;
    };
    let now = now_ms();
    variants
        .iter()
        .any(|v| v.stored_ms > stale.stored_ms && v.is_fresh(now) && v.matches(req))
}

/// The refresh's copy of the request and the state of its one exchange.
struct Refresh {
    req: RequestHead,
    cx: Ctx,
    /// Client address as text (X-Forwarded-For, chash on remote_addr).
    ip: crate::util::ip_text::IpText,
    path: BytesMut,
    wbuf: BytesMut,
    upstream: UpstreamExchange,
}

impl Refresh {
    /// Leases and attempts as a client request would (same node choice and retries); any
    /// failure just leaves the stale entry in place.
    async fn run(&mut self, shard: &Shard) {
        let Some(route) = shard.built.cfg.routes.get(self.cx.route) else {
            return;
        };
        // The client's body is not kept: only a request without one can be replayed.
        if !matches!(self.req.body, BodyKind::Empty | BodyKind::Length(0)) {
            return;
        }
        let up = &shard.upstreams[self.cx.upstream.unwrap_or(route.upstream)];
        target_path(&mut self.path, &self.req, route, &self.cx);
        let hash = if up.cfg.policy == Policy::Chash {
            balance_key(&up.cfg.hash_on, self.ip.as_bytes(), &self.req)
        } else {
            0
        };
        // No body: replayable when idempotent.
        let mut tries = up
            .attempts(hash)
            .replayable(idempotent(&self.req, &self.cx));
        loop {
            let Ok((lease, mut conn)) = tries.lease().await else {
                return;
            };
            let attempt = self
                .attempt(shard, route, up, lease.node(), &mut conn, lease.pooled())
                .await;
            match settle(lease, conn, attempt) {
                Next::Again => {}
                // Done: the entry was refreshed or stored (or may not be); anything else: the
                // stale entry stays. An upgraded connection has nobody to tunnel to.
                Next::Done(()) | Next::Tunnel(_) | Next::Fail(_) | Next::Close => return,
            }
        }
    }

    async fn attempt(
        &mut self,
        shard: &Shard,
        route: &RouteConfig,
        up: &UpstreamState,
        node: usize,
        conn: &mut PooledConn,
        pooled: bool,
    ) -> Attempt<()> {
        let server = &shard.built.cfg.server;
        let out = Outgoing {
            req: &self.req,
            cx: &self.cx,
            path: &self.path,
            client_ip: self.ip.as_bytes(),
            // As before the refresh had its own exchange: it never claimed the client's TLS.
            https: false,
        };
        let idempotent = out.idempotent();
        self.wbuf.clear();
        out.head(&mut self.wbuf, route, up.cfg.nodes[node].host.as_bytes());
        let head = self.upstream.read_head(
            conn,
            None::<&mut monoio::net::TcpStream>,
            pooled,
            Some(&mut self.wbuf),
            self.req.method,
            idempotent,
            (server, &up.cfg),
        );
        if let Err(f) = head.await {
            return f.into();
        }
        let resp = &self.upstream.resp;
        if resp.status == 101 {
            // As for a client: a switch it asked for ends the exchange, an unasked one is bad.
            return if self.req.websocket && route.websocket {
                Attempt::Upgrade
            } else {
                Attempt::Fail(
                    UpstreamError::BadResponse("upstream switched protocols unasked").into(),
                )
            };
        }
        if let Some(a) = on_head(&mut self.cx, &self.req, resp, self.upstream.reusable()) {
            // A 304 refreshed the entry, or a 5xx left the stale one: nothing more to read.
            return Attempt::Done {
                out: (),
                reusable: a.reusable,
            };
        }
        // The response phases run as for a client; with a replacement body the upstream's is
        // not read, so it is not stored either.
        if response_phases(shard, &mut self.cx, resp).is_some() {
            return Attempt::Done {
                out: (),
                reusable: false,
            };
        }
        let pc = PumpCfg {
            read_timeout: up.cfg.read_timeout,
            write_timeout: server.send_timeout,
            reserve: server.read_buffer_bytes,
            limit: 0,
            max_trailer: server.max_header_bytes,
        };
        match self
            .upstream
            .read_body(conn, self.cx.private.cache.tee.as_mut(), &pc)
            .await
        {
            Ok(_) => Attempt::Done {
                out: (),
                reusable: self.upstream.reusable(),
            },
            Err(_) => Attempt::Abort { node_failed: true },
        }
    }
}
