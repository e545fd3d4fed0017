//! The plugin chain: the `Plugin` trait (one method per phase), each plugin's `Spec`, factories
//! built once from validated config, the per-request `Ctx`. No I/O; the proxy drives the phases.
//!
//! Phase order for one request (see README "Plugins"):
//! `rewrite` -> `access` -> `before_upstream` -> [`request_body`, when a plugin asked for the
//! body in `Ctx::buffer_body`] -> [upstream] -> `response_headers`
//! -> `response_body` -> `log`. Within a phase the global chain runs first, then the route's
//! chain; within each chain, higher priority runs first (APISIX's numbers).

pub mod chain;
pub mod consumer;
pub mod ctx;
pub mod limit_sync;
pub mod logship;
pub mod rand;
pub mod registry;
pub mod set;
#[cfg(test)]
pub(crate) mod testkit;
pub mod util;
pub mod vars;

mod api_breaker;
mod basic_auth;
#[cfg(test)]
mod consumer_policy_tests;
mod consumer_restriction;
mod cors;
mod fault_injection;
mod http_logger;
mod ip_restriction;
mod jwt_auth;
mod key_auth;
mod limit_conn;
mod limit_count;
mod limit_exact;
mod limit_policy;
mod limit_req;
pub mod openapi;
pub mod openid_connect;
mod proxy_cache;
mod proxy_rewrite;
mod request_id;
mod response_rewrite;
mod syslog;
mod tcp_logger;
mod traffic_split;

use std::rc::Rc;

use bytes::Bytes;

use crate::error::ConfigError;
use crate::http::parse::{RequestHead, ResponseHead};

pub use chain::{PluginSet, Resume, ShardPlugins, Step};
pub use ctx::{Ctx, HeaderEdits};

/// A plugin's own answer, sent instead of going upstream.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// `{"message":"..."}`, the shape APISIX's plugins answer with.
    pub fn json_message(status: u16, message: &str) -> Reply {
        let body = serde_json::json!({ "message": message }).to_string();
        Reply::new(status)
            .header("Content-Type", "application/json")
            .body(body)
    }

    pub fn header(mut self, name: &str, value: impl Into<Bytes>) -> Reply {
        self.headers
            .push((Bytes::copy_from_slice(name.as_bytes()), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = body.into();
        self
    }
}

/// What a request phase decided.
#[derive(Debug)]
pub enum Flow {
    Continue,
    /// End the request here with this response; later request phases and the upstream are skipped.
    Respond(Reply),
    /// Not yet decidable: an answer is on its way (from a control thread, or from work on this
    /// shard's runtime). The proxy awaits it without blocking the shard, for at most `within`,
    /// then calls the same phase of the same plugin again, which must then decide.
    Wait(Wait),
}

/// A plugin's wait: openid-connect's introspection and key refetch (answered by its control
/// thread), limit-count exact mode's store round trip (awaited on the shard).
pub struct Wait {
    pub until: Until,
    /// The longest wait; then the plugin runs again and decides without the answer.
    pub within: std::time::Duration,
}

/// What a `Wait` waits for.
pub enum Until {
    /// An answer from another thread: true once the plugin can decide (it may drain its mailbox
    /// to find out). Checked each time the shard's doorbell rings, which the answer's sender
    /// does. Same thread only.
    Ready(Box<dyn Fn() -> bool>),
    /// Work on the shard's own runtime that leaves its answer where the plugin finds it: the
    /// request's future awaits it (no other thread, no doorbell).
    Done(std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>),
}

impl Wait {
    /// How often the unit-test driver (testkit) checks `ready`; the proxy is woken instead.
    pub const POLL: std::time::Duration = std::time::Duration::from_millis(1);
}

impl std::fmt::Debug for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wait")
            .field("within", &self.within)
            .finish()
    }
}

/// Phase bits for `Plugin::phases`.
pub mod phase {
    pub const REWRITE: u8 = 1;
    pub const ACCESS: u8 = 2;
    pub const BEFORE_UPSTREAM: u8 = 4;
    pub const RESPONSE_HEADERS: u8 = 8;
    pub const RESPONSE_BODY: u8 = 16;
    pub const LOG: u8 = 32;
    pub const REQUEST_BODY: u8 = 64;
    pub const ALL: u8 = 127;
}

/// Turns one plugin table (at key path `path`) into a factory; errors name the key.
pub type Build =
    fn(&toml::Value, &str, &mut chain::BuildCx) -> Result<chain::FactoryRef, ConfigError>;

/// A plugin's identity, written once as `pub const SPEC` in its own file: the registry lists
/// these, and factories and instances answer `name`/`priority`/`phases` from theirs.
#[derive(Debug)]
pub struct Spec {
    /// The config key (`[routes.plugins.NAME]`).
    pub name: &'static str,
    /// Higher runs first (APISIX's numbers, also in README "Plugins").
    pub priority: i32,
    /// The phases its instances implement (`phase::*` bits); the chain calls no others, which
    /// saves the no-op calls (callgrind: ~20 Ir each, ten per request for two plugins).
    pub phases: u8,
    /// Validates the plugin's table and builds its factory.
    pub build: Build,
}

/// One plugin instance on one shard. Every phase has a no-op default, so a plugin writes only
/// what it needs. Instances are built once per shard; state lives in `Cell`/`RefCell`.
pub trait Plugin {
    /// The spec this instance was built from; `name` and `phases` are read from it.
    fn spec(&self) -> &'static Spec;

    fn name(&self) -> &'static str {
        self.spec().name
    }

    /// The phases this plugin implements: its spec's. Read once when a chain is built.
    fn phases(&self) -> u8 {
        self.spec().phases
    }

    /// First look at the request: rewrite it (uri, host, headers) before any decision.
    fn rewrite(&self, _req: &RequestHead, _cx: &mut Ctx) -> Flow {
        Flow::Continue
    }

    /// Decide: authenticate, authorise, rate-limit. May end the request.
    fn access(&self, _req: &RequestHead, _cx: &mut Ctx) -> Flow {
        Flow::Continue
    }

    /// Last chance before the upstream is contacted (upstream choice, final header edits).
    fn before_upstream(&self, _req: &RequestHead, _cx: &mut Ctx) -> Flow {
        Flow::Continue
    }

    /// The whole request body, read by the proxy because a plugin set `Ctx::buffer_body` in an
    /// earlier phase (up to that limit: beyond it the client gets 413). `body` is the decoded
    /// payload; what goes upstream is the request's bytes as they came. May end the request.
    fn request_body(&self, _req: &RequestHead, _body: &[u8], _cx: &mut Ctx) -> Flow {
        Flow::Continue
    }

    /// The upstream's response head arrived; record header edits or a status override in `cx`.
    fn response_headers(&self, _resp: &ResponseHead, _cx: &mut Ctx) {}

    /// A replacement for the upstream response body, if this plugin wants one.
    fn response_body(&self, _cx: &mut Ctx) -> Option<Bytes> {
        None
    }

    /// After the response went out (or the request failed); always runs once per request
    /// that reached the chain, so state taken in `access` (e.g. limit-conn) is given back.
    fn log(&self, _cx: &mut Ctx) {}
}

/// Built once from validated config, shared by every shard.
pub trait PluginFactory: Send + Sync {
    /// The spec this factory was built from; `name` and `priority` are read from it.
    fn spec(&self) -> &'static Spec;
    fn name(&self) -> &'static str {
        self.spec().name
    }
    /// Higher runs first (APISIX priorities, listed in README "Plugins").
    fn priority(&self) -> i32 {
        self.spec().priority
    }
    /// Builds this shard's instance with its own shard-local state.
    fn build(&self, shard: &chain::ShardCx) -> Rc<dyn Plugin>;
}
