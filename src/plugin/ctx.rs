//! The per-request context that travels through the phases: what every plugin shares, and each
//! plugin's `Private` state apart. Reused across a connection's requests (capacity kept).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use crate::http::edits::{EditOp, HeaderEdits};

/// Everything the phases share about one request.
#[derive(Debug)]
pub struct Ctx {
    pub shard: usize,
    /// Index into `Config::routes`.
    pub route: usize,
    pub client_ip: IpAddr,
    /// Index into the consumer table, set by an auth plugin.
    pub consumer: Option<usize>,
    /// When the request's head was read: the request's one clock reading, which plugins share
    /// (`now_ms`) instead of each reading the clock again. Set by the connection, not `reset`.
    pub start: Instant,
    /// Upstream chosen by a plugin (traffic-split), instead of the route's.
    pub upstream: Option<usize>,
    /// Path and query to send upstream instead of the request's (proxy-rewrite).
    pub uri: Option<Vec<u8>>,
    /// Query string to send instead of the request's (hide_credentials), without the `?`.
    pub query: Option<Vec<u8>>,
    /// Host header to send upstream (proxy-rewrite).
    pub host: Option<Vec<u8>>,
    /// Method to send upstream instead of the client's (proxy-rewrite; never HEAD or CONNECT).
    pub method: Option<&'static str>,
    pub req_headers: HeaderEdits,
    pub resp_headers: HeaderEdits,
    /// Response status sent to the client instead of the upstream's (response-rewrite).
    pub status_override: Option<u16>,
    /// Final status (the upstream's, a plugin's, or the gateway's error), for `log`.
    pub status: u16,
    /// Body length of the gateway's own error response, if it sent one (access log bytes).
    pub error_body: u64,
    /// Wait this long before going on (limit-req, limit-conn, fault-injection delays).
    pub delay: Duration,
    /// The request id (request-id plugin), for logs and other plugins.
    pub request_id: Option<String>,
    /// The request was handed to the upstream side, so `status` is the upstream's answer
    /// (or the gateway's error reaching it), not a plugin reply (api-breaker counts these).
    pub forwarded: bool,
    /// A plugin wants the whole request body (for its `request_body` phase), read up to this
    /// many bytes; set in `rewrite`/`access`/`before_upstream`, taken by the proxy.
    pub buffer_body: Option<u64>,
    /// What single plugins keep about this request for their own later phases.
    pub private: Private,
}

/// Per-request state that belongs to one plugin (and, for the cache, the proxy's cache hooks
/// that act for proxy-cache): no other plugin reads or writes it. Everything in `Ctx` outside
/// this is shared by every phase of every plugin.
#[derive(Debug, Default)]
pub struct Private {
    /// limit-conn: key hashes it took a slot for, released in `log`. (limiter id, key)
    pub held: Vec<(u32, u64)>,
    /// proxy-cache: what the lookup decided and the response being stored (cache/mod.rs).
    pub cache: crate::cache::CacheCx,
    /// http-logger / tcp-logger: request line and host, taken in `rewrite` (None otherwise).
    pub log_req: Option<Box<ReqSummary>>,
    /// openid-connect: this request already waited once for the provider (decide now).
    pub oidc_waited: bool,
    /// limit-count's exact mode: where this request's count in the store lands.
    pub exact: Option<crate::plugin::limit_exact::Counted>,
}

impl Private {
    fn reset(&mut self) {
        self.held.clear();
        self.cache.reset();
        self.log_req = None;
        self.oidc_waited = false;
        self.exact = None;
    }
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
            method: None,
            req_headers: HeaderEdits::default(),
            resp_headers: HeaderEdits::default(),
            status_override: None,
            error_body: 0,
            status: 0,
            delay: Duration::ZERO,
            request_id: None,
            forwarded: false,
            buffer_body: None,
            private: Private::default(),
        }
    }

    /// Milliseconds from `epoch` (the node's limit clock) to this request's start.
    #[inline]
    pub fn now_ms(&self, epoch: Instant) -> u64 {
        let d = self.start.saturating_duration_since(epoch);
        d.as_secs() * 1000 + u64::from(d.subsec_millis())
    }

    /// Ready for the next request on the same connection.
    pub fn reset(&mut self, route: usize) {
        self.route = route;
        self.consumer = None;
        self.upstream = None;
        self.uri = None;
        self.query = None;
        self.host = None;
        self.method = None;
        self.req_headers.clear();
        self.resp_headers.clear();
        self.status_override = None;
        self.status = 0;
        self.delay = Duration::ZERO;
        self.request_id = None;
        self.forwarded = false;
        self.buffer_body = None;
        self.private.reset();
    }
}

/// A header value copied out for a reply.
pub fn bytes(v: &[u8]) -> Bytes {
    Bytes::copy_from_slice(v)
}

/// The request line and host, taken in `rewrite` (the `log` phase sees only `Ctx`).
#[derive(Debug, Clone, Default)]
pub struct ReqSummary {
    pub method: String,
    pub uri: String,
    pub host: String,
}
