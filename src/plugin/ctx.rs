//! The per-request context that travels through the phases, and the header edit lists that
//! http::write applies when serialising. Reused across a connection's requests (capacity kept).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How an edit treats existing headers of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EditOp {
    /// Drop every existing header of this name, then write this one.
    Set,
    /// Write this one in addition to the existing ones.
    Add,
    /// Drop every existing header of this name.
    Remove,
}

/// A byte range into the arena.
type Range = (u32, u32);

/// Header edits copied into one reusable byte arena, so recording an edit allocates nothing
/// once warm and shares no reference count with other shards.
#[derive(Debug, Default, Clone)]
pub struct HeaderEdits {
    arena: Vec<u8>,
    ops: Vec<(EditOp, Range, Range)>,
    /// Filter over the names of all ops (`name_bit`): `set`/`remove` skip the scan for an earlier
    /// edit of the same name when its bit is clear. A superset after `retain` is harmless.
    names: u64,
    /// Same over set/remove ops only: the writers call `drops` for every header of the message,
    /// and almost all of them are answered by this bit (callgrind: the scan was ~25 Ir/header).
    dropped: u64,
}

/// One of 64 bits from a header name's length and lowercased first and last bytes.
#[inline]
fn name_bit(name: &[u8]) -> u64 {
    let (f, l) = match name {
        [] => (0, 0),
        [f, .., l] => (f | 0x20, l | 0x20),
        [f] => (f | 0x20, f | 0x20),
    };
    1u64 << ((name.len() as u32 ^ u32::from(f) ^ (u32::from(l) << 2)) & 63)
}

impl HeaderEdits {
    pub fn clear(&mut self) {
        self.arena.clear();
        self.ops.clear();
        self.names = 0;
        self.dropped = 0;
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn push(&mut self, op: EditOp, name: &[u8], value: &[u8]) {
        let n0 = self.arena.len() as u32;
        self.arena.extend_from_slice(name);
        let n1 = self.arena.len() as u32;
        self.arena.extend_from_slice(value);
        let v1 = self.arena.len() as u32;
        self.ops.push((op, (n0, n1), (n1, v1)));
        let bit = name_bit(name);
        self.names |= bit;
        if op != EditOp::Add {
            self.dropped |= bit;
        }
    }

    /// Drops earlier edits of `name` (a later set or remove replaces them).
    fn forget(&mut self, name: &[u8]) {
        if self.names & name_bit(name) == 0 {
            return;
        }
        self.ops
            .retain(|(_, n, _)| !self.arena[n.0 as usize..n.1 as usize].eq_ignore_ascii_case(name));
    }

    pub fn set(&mut self, name: &[u8], value: &[u8]) {
        self.forget(name);
        self.push(EditOp::Set, name, value);
    }

    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        self.push(EditOp::Add, name, value);
    }

    pub fn remove(&mut self, name: &[u8]) {
        self.forget(name);
        self.push(EditOp::Remove, name, b"");
    }

    /// True if an original header of this name must not be written.
    #[inline]
    pub fn drops(&self, name: &[u8]) -> bool {
        if self.dropped & name_bit(name) == 0 {
            return false;
        }
        self.ops.iter().any(|(op, n, _)| {
            *op != EditOp::Add && self.arena[n.0 as usize..n.1 as usize].eq_ignore_ascii_case(name)
        })
    }

    /// The headers this list writes (sets and adds), in order.
    pub fn written(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.ops
            .iter()
            .filter(|(op, _, _)| *op != EditOp::Remove)
            .map(|(_, n, v)| {
                (
                    &self.arena[n.0 as usize..n.1 as usize],
                    &self.arena[v.0 as usize..v.1 as usize],
                )
            })
    }

    /// The value this list sets or adds for `name`, if any (last one wins).
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.written()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .last()
            .map(|(_, v)| v)
    }
}

/// Everything the phases share about one request.
#[derive(Debug)]
pub struct Ctx {
    pub shard: usize,
    /// Index into `Config::routes`.
    pub route: usize,
    pub client_ip: IpAddr,
    /// Index into the consumer table, set by an auth plugin.
    pub consumer: Option<usize>,
    pub start: Instant,
    /// Upstream chosen by a plugin (traffic-split), instead of the route's.
    pub upstream: Option<usize>,
    /// Path and query to send upstream instead of the request's (proxy-rewrite).
    pub uri: Option<Vec<u8>>,
    /// Query string to send instead of the request's (hide_credentials), without the `?`.
    pub query: Option<Vec<u8>>,
    /// Host header to send upstream (proxy-rewrite).
    pub host: Option<Vec<u8>>,
    pub req_headers: HeaderEdits,
    pub resp_headers: HeaderEdits,
    /// Response status sent to the client instead of the upstream's (response-rewrite).
    pub status_override: Option<u16>,
    /// Final status (the upstream's, a plugin's, or the gateway's error), for `log`.
    pub status: u16,
    /// Wait this long before going on (limit-req, limit-conn, fault-injection delays).
    pub delay: Duration,
    /// Key hashes limit-conn took a slot for; released in `log`. (limiter id, key)
    pub held: Vec<(u32, u64)>,
    /// The request id (request-id plugin), for logs and other plugins.
    pub request_id: Option<String>,
    /// The request was handed to the upstream side, so `status` is the upstream's answer
    /// (or the gateway's error reaching it), not a plugin reply (api-breaker counts these).
    pub forwarded: bool,
    /// proxy-cache: what the lookup decided and the response being stored (cache/mod.rs).
    pub cache: crate::cache::CacheCx,
    /// Request line and host for http-logger / tcp-logger, taken in `rewrite` (None otherwise).
    pub log_req: Option<Box<super::logship::ReqSummary>>,
}

impl Ctx {
    pub fn new(shard: usize, client_ip: IpAddr) -> Ctx {
        Ctx {
            shard,
            route: 0,
            client_ip,
            consumer: None,
            start: Instant::now(),
            upstream: None,
            uri: None,
            query: None,
            host: None,
            req_headers: HeaderEdits::default(),
            resp_headers: HeaderEdits::default(),
            status_override: None,
            status: 0,
            delay: Duration::ZERO,
            held: Vec::new(),
            request_id: None,
            forwarded: false,
            cache: crate::cache::CacheCx::default(),
            log_req: None,
        }
    }

    /// Ready for the next request on the same connection.
    pub fn reset(&mut self, route: usize) {
        self.route = route;
        self.consumer = None;
        self.start = Instant::now();
        self.upstream = None;
        self.uri = None;
        self.query = None;
        self.host = None;
        self.req_headers.clear();
        self.resp_headers.clear();
        self.status_override = None;
        self.status = 0;
        self.delay = Duration::ZERO;
        self.held.clear();
        self.request_id = None;
        self.forwarded = false;
        self.cache.reset();
        self.log_req = None;
    }
}

/// A header value copied out for a reply.
pub fn bytes(v: &[u8]) -> Bytes {
    Bytes::copy_from_slice(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_and_remove_drops() {
        let mut e = HeaderEdits::default();
        e.add(b"X-A", b"1");
        e.set(b"x-a", b"2");
        e.set(b"X-B", b"3");
        e.remove(b"x-b");
        let w: Vec<_> = e.written().collect();
        assert_eq!(w, vec![(&b"x-a"[..], &b"2"[..])]);
        assert!(e.drops(b"X-A") && e.drops(b"X-B") && !e.drops(b"X-C"));
        assert_eq!(e.get(b"X-A"), Some(&b"2"[..]));
    }

    #[test]
    fn filter_never_hides_a_drop() {
        let names: [&[u8]; 6] = [
            b"X-RateLimit-Limit",
            b"server",
            b"a",
            b"",
            b"Set-Cookie",
            b"x-b",
        ];
        for n in names {
            let mut e = HeaderEdits::default();
            e.add(b"X-Other", b"1");
            assert!(!e.drops(n));
            e.set(n, b"v");
            let upper = n.to_ascii_uppercase();
            assert!(e.drops(n) && e.drops(&upper), "{n:?}");
            e.set(&upper, b"w");
            assert_eq!(
                e.written()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(n))
                    .count(),
                1
            );
        }
    }
}
