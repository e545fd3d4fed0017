//! The proxy cache's hooks (on request, on upstream head, on error, on done), called only for routes with a cache:
//! HIT/STALE/304/Range answers, coalescing, revalidation, storing, stale-if-error, refreshes (PURGE is purge.rs). Never forwards a request.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use monoio::io::AsyncWriteRentExt;

use super::conn::{After, ClientConn, ClientStream};
use super::shard::Shard;
use crate::cache::entry::{self, Entry};
use crate::cache::peer::{Asking, Claim, Op, Turn, ASK_TIMEOUT};
use crate::cache::{invalidate, now_ms, partial, Instance, Leader, Mode, Pending, Target, Tee};
use crate::error::ProxyError;
use crate::http::parse::{BodyKind, Method, RequestHead, ResponseHead};
use crate::http::write::{header, put_u64, reason, status_line};
use crate::net::io::write_all;
use crate::plugin::{Ctx, Reply};

/// Bodies up to this size go out in one write with their head.
const COALESCE: usize = 32 * 1024;

/// How much longer than the tier's own timeout a request waits for the tier thread's answer.
const TIER_SLACK: Duration = Duration::from_millis(20);

/// What the cache's request hook decided.
pub(super) enum OnRequest {
    /// Answered from the store (HIT, STALE with a background refresh, a coalesced HIT, PURGE).
    Answered(After),
    /// Go to the upstream. `invalidate`: an unsafe method, whose success purges the key.
    Forward { invalidate: bool },
}

impl<S: ClientStream> ClientConn<S> {
    /// Request hook of a route with a cache (`cx.private.cache` is active): serve, coalesce with a fetch
    /// already running, or prepare the upstream request (fetch leader, conditional headers).
    pub(super) async fn cache_on_request(&mut self, shard: &Shard) -> OnRequest {
        let Some(inst) = self.cx.private.cache.inst.clone() else {
            return OnRequest::Forward { invalidate: false };
        };
        // Another shard's answer about a key it owns: what it stores, and our turn in its fetch.
        let mut mode = std::mem::take(&mut self.cx.private.cache.mode);
        match mode {
            Mode::Remote => shard.metrics.count_cache_lookup(true),
            Mode::Off | Mode::Bypass | Mode::Invalidate | Mode::Purge(_) => {}
            _ => shard.metrics.count_cache_lookup(false),
        }
        if let Mode::Remote = mode {
            let (asking, turn) = self.ask_owner(&inst).await;
            if turn == Turn::Wait {
                // Nothing stored and another shard fetches it (the mode is Miss).
                return self.wait_remote(shard, &inst, asking).await;
            }
            mode = std::mem::take(&mut self.cx.private.cache.mode);
        }
        match mode {
            Mode::Purge(t) => return OnRequest::Answered(self.purge(shard, &inst, t).await),
            Mode::Hit(e) => {
                // Stale only when the client's max-stale accepted it.
                let label = if e.is_fresh(now_ms()) { "HIT" } else { "STALE" };
                return OnRequest::Answered(self.serve_entry(shard, &e, label).await);
            }
            Mode::Unavailable => {
                shard.metrics.count_cache(false);
                let status = inst.conf.status_header.as_str();
                let reply = Reply::json_message(504, "only-if-cached: nothing usable is stored")
                    .header(status, "MISS");
                return OnRequest::Answered(self.send_reply(shard, reply).await);
            }
            Mode::StaleRefresh(e) => {
                self.spawn_refresh(self.cx.route, &inst, e.clone());
                return OnRequest::Answered(self.serve_entry(shard, &e, "STALE").await);
            }
            // The mode stays Off while it goes upstream: the response is labelled as a miss.
            Mode::Invalidate => return OnRequest::Forward { invalidate: true },
            m => self.cx.private.cache.mode = m,
        }
        if let Some(e) = partial::answers(&self.cx.private.cache, &self.req) {
            return OnRequest::Answered(self.serve_entry(shard, &e, "HIT").await);
        }
        let c = &self.cx.private.cache;
        if c.store && !matches!(c.mode, Mode::Bypass) && c.leader.is_none() {
            if inst.is_local(c.hash) {
                match Leader::claim(&inst, &c.key) {
                    Ok(l) => self.cx.private.cache.leader = Some(l),
                    Err(flight) => {
                        // Another request is fetching this key for the node: wait for it, then
                        // serve what it stored, or go to the origin ourselves.
                        // Boxed: an inline monoio timer would over-align the request future.
                        let _ =
                            Box::pin(monoio::time::timeout(inst.conf.lock_timeout, flight.wait()))
                                .await;
                        let found = inst
                            .store
                            .borrow_mut()
                            .get(&self.cx.private.cache.key, |e| e.matches(&self.req));
                        if let Some(e) = self.usable(found) {
                            return OnRequest::Answered(self.serve_entry(shard, &e, "HIT").await);
                        }
                    }
                }
            } else {
                // A stale entry that needs the origin: lead the owner's fetch or wait for it.
                let a = inst.ask(&c.key, c.hash, Claim::LeadOrWait);
                let turn = match a.next(ASK_TIMEOUT).await {
                    Some(ans) => ans.turn,
                    None => Turn::None,
                };
                match turn {
                    Turn::Lead(id) => self.lead(&inst, id),
                    Turn::Wait => return self.wait_remote(shard, &inst, Some(a)).await,
                    _ => {}
                }
            }
        }
        if let Some(after) = self.tier_lookup(shard, &inst).await {
            return OnRequest::Answered(after);
        }
        conditionals(&mut self.cx);
        OnRequest::Forward { invalidate: false }
    }

    /// The node misses (or holds only a stale entry) and this request leads the key's fetch:
    /// asks the shared tier first (`l2`). Its fresh entry is stored here and served; a stale one
    /// newer than ours is revalidated with its validators; nothing, or no answer within the
    /// tier's timeout, goes to the origin as before.
    async fn tier_lookup(&mut self, shard: &Shard, inst: &Rc<Instance>) -> Option<After> {
        let c = &self.cx.private.cache;
        let ours = match &c.mode {
            Mode::Miss => None,
            Mode::Revalidate(e) | Mode::Expired(e) => Some(e.stored_ms),
            _ => return None,
        };
        // Only the key's one fetcher on this node asks (waiters get what it finds).
        c.leader.as_ref()?;
        let wait = inst.tier.as_ref()?.conf.timeout + TIER_SLACK;
        let asking = inst.ask_tier(&c.key)?;
        let ans = asking.next(wait).await?;
        let e = ans.variants.into_iter().find(|e| e.matches(&self.req))?;
        if ours.is_some_and(|s| s >= e.stored_ms) {
            return None;
        }
        let c = &mut self.cx.private.cache;
        c.decide(Some(e.clone()), true);
        if let Mode::StaleRefresh(e) = &c.mode {
            // This request leads the fetch already: it revalidates instead of a refresh.
            let e = e.clone();
            c.mode = if e.has_validator() {
                Mode::Revalidate(e)
            } else {
                Mode::Expired(e)
            };
        }
        if matches!(c.mode, Mode::Bypass | Mode::Miss) {
            return None;
        }
        inst.put(&c.key, c.hash, Op::Store(e.clone()), None);
        match c.mode {
            Mode::Hit(_) => Some(self.serve_entry(shard, &e, "HIT").await),
            _ => None,
        }
    }

    /// Asks the key's owner what it stores (claiming its fetch if nothing is) and decides the
    /// mode from the answer; returns the registration (kept when told to wait) and the turn.
    async fn ask_owner(&mut self, inst: &Rc<Instance>) -> (Option<Asking>, Turn) {
        let c = &self.cx.private.cache;
        let claim = if c.store { Claim::IfEmpty } else { Claim::No };
        let asking = inst.ask(&c.key, c.hash, claim);
        let ans = asking.next(ASK_TIMEOUT).await.unwrap_or_default();
        let found = ans.variants.iter().find(|e| e.matches(&self.req)).cloned();
        let contains = !ans.variants.is_empty();
        self.cx.private.cache.decide(found, contains);
        if !ans.known {
            // No owner to coalesce with (a reload is building the cache there): a plain miss
            // that is not stored either.
            self.cx.private.cache.store = false;
        }
        match ans.turn {
            Turn::Lead(id) => self.lead(inst, id),
            Turn::Wait => return (Some(asking), Turn::Wait),
            _ => {}
        }
        (None, ans.turn)
    }

    fn lead(&mut self, inst: &Rc<Instance>, id: u64) {
        let c = &mut self.cx.private.cache;
        c.leader = Some(Leader::remote(inst, &c.key, c.hash, id));
    }

    /// Waits (up to `lock_timeout`) for the fetch another shard leads for the owner: serves what
    /// it stored, or goes to the origin itself.
    async fn wait_remote(
        &mut self,
        shard: &Shard,
        inst: &Rc<Instance>,
        asking: Option<Asking>,
    ) -> OnRequest {
        let done = match &asking {
            Some(a) => a.next(inst.conf.lock_timeout).await,
            None => None,
        };
        drop(asking);
        let found = done.and_then(|d| d.variants.into_iter().find(|e| e.matches(&self.req)));
        if let Some(e) = self.usable(found) {
            return OnRequest::Answered(self.serve_entry(shard, &e, "HIT").await);
        }
        conditionals(&mut self.cx);
        OnRequest::Forward { invalidate: false }
    }

    /// A coalesced fetch's entry, if it may answer this request as a HIT.
    fn usable(&self, found: Option<Arc<Entry>>) -> Option<Arc<Entry>> {
        let auth = self.req.header("authorization").is_some();
        found.filter(|e| e.partial.is_none() && e.is_fresh(now_ms()) && (!auth || e.auth_ok))
    }

    /// Done hook, after the upstream exchange: coalesced waiters are released (the teed
    /// response was stored when its body ended). An unsafe request's invalidations were sent
    /// when its head arrived (`on_head`).
    pub(super) fn cache_on_done(&mut self, invalidate: bool) {
        if invalidate {
            return;
        }
        // The tee stored the entry when the body ended; waiters are released after that.
        self.cx.private.cache.tee = None;
        self.cx.private.cache.leader = None;
    }

    /// Head hook: the upstream response head arrived. Answers from the entry for a 304 to our
    /// revalidation or a 5xx under stale-if-error (returns the outcome and whether the upstream
    /// connection is reusable); otherwise labels the response and prepares the tee.
    pub(super) async fn cache_on_head(&mut self, shard: &Shard) -> Option<(After, bool)> {
        let reusable = self.upstream.reusable();
        let looked_up = self.cx.private.cache.inst.is_some()
            && !matches!(self.cx.private.cache.mode, Mode::Invalidate);
        let Some(a) = on_head(&mut self.cx, &self.req, &self.upstream.resp, reusable) else {
            if looked_up {
                shard.metrics.count_cache(false);
            }
            return None;
        };
        Some((self.serve_entry(shard, &a.entry, a.label).await, a.reusable))
    }

    /// Error hook: the upstream could not be reached or failed before answering. A stale entry
    /// within stale-if-error answers instead of the gateway's error; `None` leaves it to `fail`.
    pub(super) async fn cache_on_error(&mut self, shard: &Shard, err: ProxyError) -> Option<After> {
        if !matches!(err, ProxyError::Upstream(_)) {
            return None;
        }
        let e = self
            .cx
            .private
            .cache
            .stale()
            .filter(|e| e.in_sie(now_ms()))
            .cloned()?;
        Some(self.serve_entry(shard, &e, "STALE").await)
    }

    /// Writes `e` to the client: 304 for a satisfied conditional, 206/416 for a Range on a
    /// full 200, the stored response otherwise; HEAD gets the head only.
    async fn serve_entry(&mut self, shard: &Shard, e: &Entry, label: &str) -> After {
        shard.metrics.count_cache(true);
        let Some(inst) = self.cx.private.cache.inst.clone() else {
            return After::Close;
        };
        let conf = &inst.conf;
        // A partial entry's body starts at `off` of a representation of `len` bytes.
        let (len, off) = e
            .partial
            .map_or((e.body.len() as u64, 0), |s| (s.total, s.start));
        let (status, span) = if (200..300).contains(&e.status) && entry::not_modified(&self.req, e)
        {
            (304, None)
        } else if e.partial.is_some() {
            // Only a range wholly inside its bytes is ever answered from a partial entry.
            match partial::covered(&self.req, e) {
                Some(r) => (206, Some(r)),
                None => return After::Close,
            }
        } else if e.status == 200 {
            match entry::range(&self.req, e, len) {
                Ok(Some((a, b))) => (206, Some((a, b))),
                Ok(None) => (200, None),
                Err(()) => (416, None),
            }
        } else {
            (e.status, None)
        };
        let keep = self.req.keep_alive
            && self.req.body == BodyKind::Empty
            && !shard.drain.is_draining()
            && self.client.served < shard.built.cfg.server.keepalive_requests;
        let w = &mut self.wbuf;
        w.clear();
        status_line(w, status, reason(status).as_bytes());
        let edits = &self.cx.resp_headers;
        for (n, v) in &e.headers {
            let hidden = (conf.hide_cache_headers
                && (n.eq_ignore_ascii_case(b"cache-control")
                    || n.eq_ignore_ascii_case(b"expires")))
                || conf
                    .targeted
                    .iter()
                    .any(|t| n.eq_ignore_ascii_case(t.as_bytes()))
                || (e.partial.is_some() && n.eq_ignore_ascii_case(b"content-range"));
            // A 304 carries the fields that guide caches, not the absent body's metadata
            // (RFC 9110 15.4.5).
            let not_for_304 = status == 304
                && ![
                    &b"cache-control"[..],
                    b"content-location",
                    b"date",
                    b"etag",
                    b"expires",
                    b"vary",
                    b"last-modified",
                ]
                .iter()
                .any(|x| n.eq_ignore_ascii_case(x));
            if hidden || not_for_304 || (!edits.is_empty() && edits.drops(n)) {
                continue;
            }
            header(w, n, v);
        }
        for (n, v) in edits.written() {
            if !n.eq_ignore_ascii_case(conf.status_header.as_bytes()) {
                header(w, n, v);
            }
        }
        w.put_slice(b"Age: ");
        put_u64(w, e.age_secs(now_ms()));
        w.put_slice(b"\r\n");
        header(w, conf.status_header.as_bytes(), label.as_bytes());
        let (a, b) = match (status, span) {
            (206, Some((a, b))) => {
                w.put_slice(b"Content-Range: bytes ");
                put_u64(w, a);
                w.put_u8(b'-');
                put_u64(w, b - 1);
                w.put_u8(b'/');
                put_u64(w, len);
                w.put_slice(b"\r\n");
                (a, b)
            }
            (416, _) => {
                w.put_slice(b"Content-Range: bytes */");
                put_u64(w, len);
                w.put_slice(b"\r\n");
                (0, 0)
            }
            (304, _) => (0, 0),
            _ => (0, len),
        };
        if status != 304 && status != 204 {
            w.put_slice(b"Content-Length: ");
            put_u64(w, b - a);
            w.put_slice(b"\r\n");
        }
        if !keep {
            w.put_slice(b"Connection: close\r\n");
        } else if self.req.version == 0 {
            w.put_slice(b"Connection: keep-alive\r\n");
        }
        w.put_slice(b"\r\n");
        self.cx.status = status;
        let body = if self.req.method == Method::Head || b == a {
            Bytes::new()
        } else {
            Bytes::slice(&e.body, (a - off) as usize..(b - off) as usize)
        };
        let send = shard.built.cfg.server.send_timeout;
        if body.len() <= COALESCE {
            self.wbuf.put_slice(&body);
            if write_all(&mut self.client.stream, &mut self.wbuf, send)
                .await
                .is_err()
            {
                return After::Close;
            }
        } else {
            if write_all(&mut self.client.stream, &mut self.wbuf, send)
                .await
                .is_err()
            {
                return After::Close;
            }
            // Large bodies go out straight from the shared entry, never copied.
            match crate::local::deadline::within(send, self.client.stream.write_all(body)).await {
                Ok((Ok(_), _)) => {}
                _ => return After::Close,
            }
        }
        if keep {
            After::KeepAlive
        } else {
            After::Close
        }
    }
}

/// Upstream conditional headers: ours when revalidating; none when fetching to store
/// (a full response is needed); the client's own otherwise.
pub(super) fn conditionals(cx: &mut Ctx) {
    let c = &cx.private.cache;
    let edits = &mut cx.req_headers;
    match &c.mode {
        Mode::Revalidate(e) => {
            for (req, resp) in [
                ("if-none-match", "etag"),
                ("if-modified-since", "last-modified"),
            ] {
                match e.header(resp) {
                    Some(v) => edits.set(req.as_bytes(), v),
                    None => edits.remove(req.as_bytes()),
                }
            }
        }
        _ if c.store => {
            edits.remove(b"if-none-match");
            edits.remove(b"if-modified-since");
        }
        _ => {}
    }
}

/// The entry the head hook answers with instead of the upstream's response.
pub(super) struct FromEntry {
    pub(super) entry: Arc<Entry>,
    pub(super) label: &'static str,
    /// The upstream connection is clean (its 304 had no body left unread).
    pub(super) reusable: bool,
}

/// The head hook's decision, apart from any client: for a 304 to our revalidation the entry
/// is refreshed in the store and answers; a 5xx under stale-if-error is answered from the stale
/// entry; otherwise the response is labelled (`cx.resp_headers`) and, if it may be stored, a
/// tee is prepared for its body. `reusable`: the upstream connection is clean after the head.
pub(super) fn on_head(
    cx: &mut Ctx,
    req: &RequestHead,
    resp: &ResponseHead,
    reusable: bool,
) -> Option<FromEntry> {
    let inst = cx.private.cache.inst.clone()?;
    let conf = inst.conf.clone();
    let now = now_ms();
    let status = resp.status;
    if let (Mode::Revalidate(e), 304) = (&cx.private.cache.mode, status) {
        let e = e.clone();
        let c = &cx.private.cache;
        let entry = match e.refreshed(resp, &conf.policy(), c.req_ms, now) {
            Some(fresh) => {
                let fresh = Arc::new(fresh);
                if let Some(t) = &inst.tier {
                    t.put(&c.key, &fresh);
                }
                inst.put(&c.key, c.hash, Op::Store(fresh.clone()), None);
                fresh
            }
            None => {
                // The origin now forbids storing: drop the entry, answer from it once.
                inst.put(&c.key, c.hash, Op::Remove, None);
                e
            }
        };
        return Some(FromEntry {
            entry,
            label: "REVALIDATED",
            reusable,
        });
    }
    if let (Method::Head, 200, Some(e)) = (req.method, status, cx.private.cache.stale()) {
        // A HEAD's answer updates (or retires) the stored GET response (RFC 9111 4.3.5).
        let c = &cx.private.cache;
        let op = match entry::head_update(e, resp, &conf.policy(), c.req_ms, now) {
            Some(Some(updated)) => Op::Store(Arc::new(updated)),
            _ => Op::Remove,
        };
        inst.put(&c.key, c.hash, op, None);
    }
    for t in &conf.targeted {
        // Meant for this cache only (RFC 9213 2.1).
        cx.resp_headers.remove(t.as_bytes());
    }
    if matches!(status, 500 | 502 | 503 | 504) {
        if let Some(e) = cx.private.cache.stale().filter(|e| e.in_sie(now)).cloned() {
            return Some(FromEntry {
                entry: e,
                label: "STALE",
                reusable: false,
            });
        }
    }
    let unsafe_method = matches!(
        req.method,
        Method::Post | Method::Put | Method::Delete | Method::Patch
    );
    if unsafe_method && (200..400).contains(&status) {
        // Its success invalidates the key at its owner, and the same-origin Location and
        // Content-Location URIs (RFC 9111 4.4): sent before the response goes on to the
        // client, as a store is, so its next request does not find them.
        let c = &cx.private.cache;
        inst.put(&c.key, c.hash, Op::Remove, None);
        if let Some(tier) = &inst.tier {
            // The shared tier and, through it, every other node.
            tier.purge(&Target::Key(c.key.clone()));
        }
        let uris: Vec<String> = ["location", "content-location"]
            .iter()
            .filter_map(|n| resp.header(n))
            .filter_map(|v| invalidate::same_origin_uri(v, req.host(), req.path()))
            .collect();
        for t in invalidate::targets(&conf.key, req.host(), uris.iter().map(String::as_str)) {
            inst.invalidate(&t);
            if let Some(tier) = &inst.tier {
                tier.purge(&t);
            }
        }
    }
    let label: &[u8] = match cx.private.cache.mode {
        Mode::Invalidate => return None,
        Mode::Bypass => b"BYPASS",
        Mode::Revalidate(_) | Mode::Expired(_) => b"EXPIRED",
        _ => b"MISS",
    };
    cx.resp_headers.set(conf.status_header.as_bytes(), label);
    if conf.hide_cache_headers {
        cx.resp_headers.remove(b"cache-control");
        cx.resp_headers.remove(b"expires");
    }
    let c = &mut cx.private.cache;
    if c.ask.store_partial && status == 206 {
        partial::store(c, &inst, req, resp, now);
        return None;
    }
    if !c.store || req.method != Method::Get {
        return None;
    }
    match Entry::from_response(resp, req, &conf.policy(), c.req_ms, now) {
        Some(e) => {
            let expect = match resp.body {
                BodyKind::Empty => Some(0),
                BodyKind::Length(n) => Some(n),
                _ => None,
            };
            // Known to be too large: stream it through without copying a byte.
            if expect.map_or(true, |n| n <= conf.max_body_bytes as u64) {
                let mut tee = Tee::new(conf.max_body_bytes, expect);
                tee.pending = Some(Pending {
                    inst: inst.clone(),
                    key: c.key.clone(),
                    hash: c.hash,
                    entry: e,
                    leader: c.leader.take(),
                    merge: None,
                });
                c.tee = Some(tee);
            }
        }
        None if c.stale().is_some() => {
            // The origin's new answer may not be stored: the old one must not be used.
            inst.put(&c.key, c.hash, Op::Remove, None);
        }
        None => {}
    }
    None
}
