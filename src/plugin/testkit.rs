//! Test-only plugin harness: builds plugins from TOML through the real registry, one shard's
//! chains on a solo limit mesh, and drives the phases as proxy/phases.rs does. No sockets.

// Typical use:
//
//     let gw = testkit::gateway("[key-auth]\nhide_credentials = true");
//     let x = gw.send(b"GET /x?apikey=k HTTP/1.1\r\nHost: a\r\n\r\n");
//     assert_eq!(x.replied(), Some(401));
//
// `Setup` adds global plugins, consumers and upstream names; `Exchange` carries one request
// through the request phases, then (optionally) a parsed upstream response head and `log`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::rc::Rc;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use serde::Deserialize;

use super::consumer::{RawConsumerRef, RawGroupRef};
use super::{registry, Ctx, Flow, Plugin, PluginSet, Reply, ShardPlugins};
use crate::error::ConfigError;
use crate::http::parse::{HeadLimits, RequestHead, ResponseHead, Status};

/// The one route every kit has.
pub const ROUTE: usize = 0;

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 16 << 10,
    max_request_line_bytes: 8 << 10,
};

/// A valid table for every plugin (`[name]` plus this body), for tests that go over all of them.
pub const MINIMAL: &[(&str, &str)] = &[
    ("request-id", ""),
    ("fault-injection", "abort = { http_status = 503 }"),
    ("cors", ""),
    ("ip-restriction", "whitelist = [\"127.0.0.1\"]"),
    (
        "openid-connect",
        "client_id = \"c\"\ndiscovery = \"http://127.0.0.1:9/.well-known/openid-configuration\"",
    ),
    ("basic-auth", ""),
    ("jwt-auth", ""),
    ("key-auth", ""),
    ("consumer-restriction", "whitelist = [\"a\"]"),
    ("proxy-cache", ""),
    ("proxy-rewrite", "uri = \"/x\""),
    ("api-breaker", "break_response_code = 502"),
    ("limit-conn", "conn = 1"),
    ("limit-count", "count = 1\ntime_window = 1"),
    ("limit-req", "rate = 1.0\nburst = 0.0"),
    (
        "traffic-split",
        "rules = [{ weighted_upstreams = [{ weight = 1 }] }]",
    ),
    ("response-rewrite", ""),
    ("http-logger", "uri = \"http://127.0.0.1:9/log\""),
    ("tcp-logger", "host = \"127.0.0.1\"\nport = 9"),
    ("syslog", "host = \"127.0.0.1\"\nport = 9"),
];

thread_local! {
    /// Set while a kit builds: loggers' batches are kept here (see `tap`) instead of going to
    /// a sender thread, so a test reads what a logger queued and nothing is sent anywhere.
    static TAP: RefCell<Option<Logs>> = const { RefCell::new(None) };
}

type Logs = Vec<(&'static str, Receiver<Vec<String>>)>;

/// Called by `logship::start` (test builds only): keeps the channel's receiving end when a kit
/// is building (`None`: no sender thread), hands it back otherwise.
pub(super) fn tap(name: &'static str, rx: Receiver<Vec<String>>) -> Option<Receiver<Vec<String>>> {
    TAP.with(|t| match t.borrow_mut().as_mut() {
        Some(logs) => {
            logs.push((name, rx));
            None
        }
        None => Some(rx),
    })
}

/// What to build: plugin tables as TOML with one table per plugin (`[key-auth]` ...).
#[derive(Default, Clone, Copy)]
pub struct Setup<'a> {
    route: &'a str,
    global: &'a str,
    consumers: &'a str,
    upstreams: &'a [&'a str],
}

#[derive(Deserialize)]
struct RawConsumers {
    #[serde(default)]
    consumers: Vec<RawConsumer>,
    #[serde(default)]
    consumer_groups: Vec<RawGroup>,
}

#[derive(Deserialize)]
struct RawConsumer {
    username: String,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    plugins: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
struct RawGroup {
    name: String,
    #[serde(default)]
    plugins: BTreeMap<String, toml::Value>,
}

fn tables(text: &str) -> BTreeMap<String, toml::Value> {
    toml::from_str(text).unwrap_or_else(|e| panic!("test TOML does not parse: {e}\n{text}"))
}

impl<'a> Setup<'a> {
    /// The route's plugins (its chain runs after the global one).
    pub fn route(plugins: &'a str) -> Setup<'a> {
        Setup {
            route: plugins,
            ..Setup::default()
        }
    }

    /// `[global_plugins]`, as plugin tables.
    pub fn global(mut self, plugins: &'a str) -> Setup<'a> {
        self.global = plugins;
        self
    }

    /// `[[consumers]]` entries (`username`, `group`, `plugins.<name> = { ... }`) and
    /// `[[consumer_groups]]`.
    pub fn consumers(mut self, consumers: &'a str) -> Setup<'a> {
        self.consumers = consumers;
        self
    }

    /// Upstream names known to the config; the i-th has index i (traffic-split's `cx.upstream`).
    pub fn upstreams(mut self, names: &'a [&'a str]) -> Setup<'a> {
        self.upstreams = names;
        self
    }

    /// Builds through `registry::build`, then shard 0's instances (a one-shard mesh).
    pub fn build(self) -> Result<Gateway, ConfigError> {
        let global = tables(self.global);
        let route = tables(self.route);
        let raw: RawConsumers = toml::from_str(self.consumers)
            .unwrap_or_else(|e| panic!("test consumers do not parse: {e}"));
        let consumers: Vec<RawConsumerRef<'_>> = raw
            .consumers
            .iter()
            .map(|c| RawConsumerRef {
                username: &c.username,
                group: c.group.as_deref(),
                plugins: &c.plugins,
            })
            .collect();
        let groups: Vec<RawGroupRef<'_>> = raw
            .consumer_groups
            .iter()
            .map(|g| RawGroupRef {
                name: &g.name,
                plugins: &g.plugins,
            })
            .collect();
        let upstreams: HashMap<String, usize> = self
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), i))
            .collect();
        TAP.with(|t| *t.borrow_mut() = Some(Vec::new()));
        let set = registry::build(
            &global,
            &[("test", &route)],
            &consumers,
            &groups,
            &upstreams,
        );
        let logs = TAP.with(|t| t.borrow_mut().take()).unwrap_or_default();
        let set = set?;
        let plugins = ShardPlugins::solo(&set);
        Ok(Gateway {
            plugins,
            set,
            logs,
            rt: RefCell::new(None),
        })
    }
}

/// The route's plugins from TOML; panics on a config error.
pub fn gateway(route: &str) -> Gateway {
    Setup::route(route)
        .build()
        .unwrap_or_else(|e| panic!("config refused: {e}"))
}

/// The error a route with these plugin tables gets; panics if the config is accepted.
pub fn config_error(route: &str) -> ConfigError {
    match Setup::route(route).build() {
        Ok(_) => panic!("config accepted, expected an error:\n{route}"),
        Err(e) => e,
    }
}

/// One shard's plugins for one route (`ROUTE`), as a connection on that shard sees them.
pub struct Gateway {
    pub plugins: ShardPlugins,
    pub set: PluginSet,
    logs: Logs,
    /// For `log`: loggers spawn their batch timer on the shard's runtime.
    rt: RefCell<Option<monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>>>,
}

impl Gateway {
    /// A parsed request from 127.0.0.1 with a fresh `Ctx`; nothing has run yet.
    pub fn exchange(&self, raw: &[u8]) -> Exchange<'_> {
        let mut req = RequestHead::default();
        match req.parse(raw, &LIMITS) {
            Ok(Status::Complete(_)) => {}
            other => panic!("test request does not parse: {other:?}"),
        }
        let mut cx = Ctx::new(0, IpAddr::from([127, 0, 0, 1]));
        cx.reset(ROUTE);
        Exchange {
            gw: self,
            req,
            cx,
            flow: Flow::Continue,
        }
    }

    /// `exchange` plus the request phases.
    pub fn send(&self, raw: &[u8]) -> Exchange<'_> {
        let mut x = self.exchange(raw);
        x.request_phases();
        x
    }

    /// `send` from another client address.
    pub fn send_from(&self, ip: &str, raw: &[u8]) -> Exchange<'_> {
        let mut x = self.exchange(raw);
        x.cx.client_ip = ip.parse().expect("test client address");
        x.request_phases();
        x
    }

    /// The route's plugin instances in run order, with the phase mask the chain uses for each.
    pub fn links(&self) -> Vec<(u8, Rc<dyn Plugin>)> {
        self.plugins.links(ROUTE)
    }

    /// Entries the logger `name` handed on for shipping so far (whole batches, in order).
    pub fn shipped(&self, name: &str) -> Vec<String> {
        self.logs
            .iter()
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, rx)| rx.try_iter().flatten())
            .collect()
    }

    fn on_runtime<T>(&self, f: impl FnOnce() -> T) -> T {
        self.run(async { f() })
    }

    /// Runs `f` to its end on the test's monoio runtime (as a shard's would).
    fn run<F: std::future::Future>(&self, f: F) -> F::Output {
        let mut rt = self.rt.borrow_mut();
        let rt = rt.get_or_insert_with(|| {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("test runtime")
        });
        rt.block_on(f)
    }
}

/// One request through the chain: its head, its `Ctx`, and what the request phases decided.
pub struct Exchange<'g> {
    gw: &'g Gateway,
    pub req: RequestHead,
    pub cx: Ctx,
    pub flow: Flow,
}

impl Exchange<'_> {
    /// rewrite, access and before_upstream, as `ClientConn::with_plugins` runs them: a reply
    /// sets the status `log` sees; otherwise the request counts as forwarded.
    pub fn request_phases(&mut self) -> &Flow {
        let p = &self.gw.plugins;
        self.flow = if p.is_empty(ROUTE) {
            Flow::Continue
        } else {
            let mut from = super::Resume::START;
            loop {
                match p.request_phases(ROUTE, &self.req, &mut self.cx, from) {
                    super::Step::Reply(reply) => break Flow::Respond(reply),
                    super::Step::Pass => break Flow::Continue,
                    // As proxy/phases.rs does, on this thread.
                    super::Step::Wait(w, at) => {
                        match w.until {
                            super::Until::Ready(ready) => {
                                let end = std::time::Instant::now() + w.within;
                                while !ready() && std::time::Instant::now() < end {
                                    std::thread::sleep(super::Wait::POLL);
                                }
                            }
                            super::Until::Done(work) => {
                                let _ = self.gw.run(monoio::time::timeout(w.within, work));
                            }
                        }
                        from = at;
                    }
                }
            }
        };
        match &self.flow {
            Flow::Respond(r) => self.cx.status = r.status,
            _ => self.cx.forwarded = true,
        }
        &self.flow
    }

    /// The plugin's own reply, if one answered.
    pub fn reply(&self) -> Option<&Reply> {
        match &self.flow {
            Flow::Respond(r) => Some(r),
            _ => None,
        }
    }

    /// The status of the plugin's reply; `None` when the request goes upstream.
    pub fn replied(&self) -> Option<u16> {
        self.reply().map(|r| r.status)
    }

    /// A header of the plugin's reply (first of that name, any case).
    pub fn reply_header(&self, name: &str) -> Option<&[u8]> {
        self.reply()?
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_ref())
    }

    /// The `message` of a `{"message": ...}` reply.
    pub fn reply_message(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.reply()?.body).ok()?;
        v.get("message")?.as_str().map(str::to_string)
    }

    /// What the request edits set or add for `name` on the way upstream.
    pub fn upstream_header(&self, name: &str) -> Option<&[u8]> {
        self.cx.req_headers.get(name.as_bytes())
    }

    /// What the edits set or add for `name` on the response to the client.
    pub fn client_header(&self, name: &str) -> Option<&[u8]> {
        self.cx.resp_headers.get(name.as_bytes())
    }

    /// The upstream's response head arrived (`raw`, e.g. b"HTTP/1.1 500 X\r\n\r\n"): the
    /// response phases, as `response_phase` runs them. Returns a replacement body, if any.
    pub fn response(&mut self, raw: &[u8]) -> Option<Bytes> {
        let mut resp = ResponseHead::default();
        match resp.parse(raw, self.req.method, 16 << 10) {
            Ok(Status::Complete(_)) => {}
            other => panic!("test response does not parse: {other:?}"),
        }
        self.cx.status = resp.status;
        let p = &self.gw.plugins;
        if !p.has_response_phases(ROUTE, &self.cx) {
            return None;
        }
        p.response_headers(ROUTE, &resp, &mut self.cx);
        p.response_body(ROUTE, &mut self.cx)
    }

    /// The log phase (once per request, after the reply or the upstream's response).
    pub fn log(&mut self) {
        let (p, cx) = (&self.gw.plugins, &mut self.cx);
        self.gw.on_runtime(|| p.log(ROUTE, cx));
    }
}
