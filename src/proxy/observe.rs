//! Per-request observation: route counters and the access log line, recorded once a request is
//! answered. Reads the connection's request/context; must not change how the request is served.

use std::time::Instant;

use super::conn::{ClientConn, ClientStream};
use super::shard::Shard;
use crate::accesslog::Record;
use crate::http::parse::BodyKind;

/// `cx.route` before routing: "no route" until `with_plugins` sets it.
const NO_ROUTE: usize = usize::MAX;

impl<S: ClientStream> ClientConn<S> {
    /// Clears what `observe_end` reads, so values left by the previous request never leak in.
    pub(super) fn observe_start(&mut self) -> Instant {
        self.cx.route = NO_ROUTE;
        self.cx.status = 0;
        self.cx.status_override = None;
        self.cx.error_body = 0;
        self.upstream.resp.status = 0;
        // One clock reading per request, shared with the plugins (`Ctx::now_ms`).
        self.cx.start = Instant::now();
        self.cx.start
    }

    /// A request head that could not be parsed and was answered with a 4xx before any routing:
    /// counted as unrouted and logged with the client, status and bytes. Method and URI are
    /// logged as empty ("-" in the combined format): the parser's fields may still hold the
    /// previous request of this connection.
    pub(super) fn observe_bad_head(&self, shard: &Shard, started: Instant) {
        let took = started.elapsed();
        let status = self.cx.status;
        shard.metrics.unrouted.record(status, took);
        let Some(log) = &shard.log else {
            return;
        };
        log.record(&Record {
            remote_addr: self.cx.client_ip,
            method: b"",
            uri: b"",
            path: b"",
            version: 1,
            status,
            body_bytes: Some(self.cx.error_body),
            took,
            host: b"",
            referer: None,
            user_agent: None,
            route: "",
            upstream: "",
            request_id: None,
            shard: shard.id,
        });
    }

    pub(super) fn observe_end(&self, shard: &Shard, started: Instant) {
        let took = started.elapsed();
        // 0: nothing was answered (client went away mid-request); logged as nginx's 499.
        let status = match self.cx.status_override.unwrap_or(self.cx.status) {
            0 if self.upstream.resp.status != 0 => self.upstream.resp.status,
            0 => 499,
            s => s,
        };
        let route = shard.built.cfg.routes.get(self.cx.route);
        match shard
            .route_stats
            .get(self.cx.route)
            .and_then(Option::as_ref)
        {
            Some(r) => r.record(status, took),
            None => shard.metrics.unrouted.record(status, took),
        }
        let Some(log) = &shard.log else {
            return;
        };
        let upstream = route
            .and_then(|r| {
                shard
                    .built
                    .cfg
                    .upstreams
                    .get(self.cx.upstream.unwrap_or(r.upstream))
            })
            .map_or("", |u| u.name.as_str());
        let body_bytes = match self.upstream.resp.body {
            BodyKind::Length(n) if self.upstream.resp.status != 0 => Some(n),
            _ if self.cx.error_body > 0 => Some(self.cx.error_body),
            _ => None,
        };
        log.record(&Record {
            remote_addr: self.cx.client_ip,
            method: self.req.method_bytes(),
            uri: self.req.target(),
            path: self.req.path(),
            version: self.req.version,
            status,
            body_bytes,
            took,
            host: self.req.host(),
            referer: self.req.header("referer"),
            user_agent: self.req.header("user-agent"),
            route: route.map_or("", |r| r.name.as_str()),
            upstream,
            request_id: self.cx.request_id.as_deref(),
            shard: shard.id,
        });
    }
}
