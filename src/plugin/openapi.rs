//! The plugins `[[apis]]` put on the routes of an OpenAPI document (not configurable by name):
//! validation (parameters in `access`, the body in `request_body`), the 405/404 answers of
//! described paths, a deprecated version's notice. Must not touch routing or the document.

use std::rc::Rc;
use std::sync::Arc;

use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Reply, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;
use crate::metrics::ShardMetrics;
use crate::openapi::{problem, Failure, Operation, RequestParts};

/// After the auth plugins (2500..2520), so an anonymous caller learns nothing of the schema,
/// and before the limits, which then count only requests that could be served.
pub static VALIDATE: Spec = Spec {
    name: "openapi-validation",
    priority: 2450,
    phases: phase::ACCESS | phase::REQUEST_BODY,
    build: internal,
};

pub static METHOD: Spec = Spec {
    name: "openapi-method",
    priority: 2450,
    phases: phase::ACCESS,
    build: internal,
};

fn internal(_: &toml::Value, path: &str, _: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    Err(ConfigError::new(
        path,
        "set by [[apis]] from the OpenAPI document; it cannot be configured by hand",
    ))
}

/// What a validation failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer 400 (415 for an undescribed media type); the upstream never sees the request.
    Enforce,
    /// Forward anyway; count and log at debug level.
    Monitor,
}

/// The validation factory of one operation of one API.
pub struct Validation {
    pub api: Arc<str>,
    pub op: Arc<Operation>,
    pub mode: Mode,
    /// Largest body read for validation (413 beyond).
    pub max_body: u64,
}

impl PluginFactory for Validation {
    fn spec(&self) -> &'static Spec {
        &VALIDATE
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(Validator {
            api: self.api.clone(),
            op: self.op.clone(),
            mode: self.mode,
            max_body: self.max_body,
            metrics: shard.metrics.clone(),
        })
    }
}

struct Validator {
    api: Arc<str>,
    op: Arc<Operation>,
    mode: Mode,
    max_body: u64,
    metrics: Rc<ShardMetrics>,
}

impl Validator {
    fn verdict(&self, req: &RequestHead, failures: &[Failure]) -> Flow {
        let enforce = self.mode == Mode::Enforce;
        self.metrics.count_invalid(&self.api, enforce);
        if !enforce {
            log::debug!(
                "api {}: {} {} does not match operation {}: {:?}",
                self.api,
                String::from_utf8_lossy(req.method_bytes()),
                String::from_utf8_lossy(req.path()),
                self.op.name,
                failures
            );
            return Flow::Continue;
        }
        let instance = String::from_utf8_lossy(req.path());
        Flow::Respond(
            Reply::new(problem::status(failures))
                .header("Content-Type", "application/problem+json")
                .body(problem::body(&self.op.name, &instance, failures)),
        )
    }
}

impl Plugin for Validator {
    fn spec(&self) -> &'static Spec {
        &VALIDATE
    }

    fn access(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let mut failures = Vec::new();
        let header = |n: &str| req.header(n);
        self.op.check_head(
            &RequestParts {
                path: req.path(),
                query: req.query(),
                header: &header,
            },
            &mut failures,
        );
        if !failures.is_empty() {
            let flow = self.verdict(req, &failures);
            if matches!(flow, Flow::Respond(_)) {
                return flow;
            }
        }
        if self.op.wants_body() {
            cx.buffer_body = Some(self.max_body);
        }
        Flow::Continue
    }

    fn request_body(&self, req: &RequestHead, body: &[u8], _cx: &mut Ctx) -> Flow {
        let mut failures = Vec::new();
        let ct = req.header("content-type");
        // A request without a body has neither Content-Type nor bytes.
        let ct = if body.is_empty() && ct.is_none() {
            None
        } else {
            Some(ct.unwrap_or(b"application/octet-stream"))
        };
        self.op.check_body(ct, body, &mut failures);
        if failures.is_empty() {
            Flow::Continue
        } else {
            self.verdict(req, &failures)
        }
    }
}

/// The 405 of one described path: the methods the document gives it.
pub struct MethodNotAllowed {
    /// `GET, POST`.
    pub allow: Arc<str>,
}

impl PluginFactory for MethodNotAllowed {
    fn spec(&self) -> &'static Spec {
        &METHOD
    }
    fn build(&self, _: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(NotAllowed {
            allow: self.allow.clone(),
        })
    }
}

struct NotAllowed {
    allow: Arc<str>,
}

impl Plugin for NotAllowed {
    fn spec(&self) -> &'static Spec {
        &METHOD
    }

    fn access(&self, req: &RequestHead, _: &mut Ctx) -> Flow {
        let msg = format!(
            "method {} is not allowed here; allowed: {}",
            String::from_utf8_lossy(req.method_bytes()),
            self.allow
        );
        Flow::Respond(
            Reply::json_message(405, &msg).header("Allow", self.allow.as_bytes().to_vec()),
        )
    }
}

/// A path under a deprecated version's prefix that its document does not describe: 404, so
/// the answer carries the version's notice like every other.
pub static NOT_FOUND: Spec = Spec {
    name: "openapi-not-found",
    priority: 2450,
    phases: phase::ACCESS,
    build: internal,
};

pub struct NotDescribed;

impl PluginFactory for NotDescribed {
    fn spec(&self) -> &'static Spec {
        &NOT_FOUND
    }
    fn build(&self, _: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(NotDescribed)
    }
}

impl Plugin for NotDescribed {
    fn spec(&self) -> &'static Spec {
        &NOT_FOUND
    }

    fn access(&self, _: &RequestHead, _: &mut Ctx) -> Flow {
        Flow::Respond(Reply::json_message(
            404,
            "no operation of this API version has this path",
        ))
    }
}

/// First of all: the notice goes into the response header edits before any plugin can
/// answer by itself (400 validation, 401, 405, 429, a CORS preflight), since a plugin's reply
/// carries the edits made so far.
pub static DEPRECATION_NOTICE: Spec = Spec {
    name: "api-deprecation-notice",
    priority: 20000,
    phases: phase::REWRITE,
    build: internal,
};

impl PluginFactory for Notice {
    fn spec(&self) -> &'static Spec {
        &DEPRECATION_NOTICE
    }
    fn build(&self, _: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(Notice {
            headers: self.headers.clone(),
        })
    }
}

/// The deprecation headers, set early (see `DEPRECATION_NOTICE`).
pub struct Notice {
    pub headers: Arc<[(&'static str, String)]>,
}

impl Plugin for Notice {
    fn spec(&self) -> &'static Spec {
        &DEPRECATION_NOTICE
    }

    fn rewrite(&self, _: &RequestHead, cx: &mut Ctx) -> Flow {
        for (n, v) in self.headers.iter() {
            cx.resp_headers.set(n.as_bytes(), v.as_bytes());
        }
        Flow::Continue
    }
}

/// Last in the response phase, so no other plugin's edit removes the notice.
pub static DEPRECATION: Spec = Spec {
    name: "api-deprecation",
    priority: -10000,
    phases: phase::RESPONSE_HEADERS | phase::LOG,
    build: internal,
};

/// A deprecated API version's notice: the response headers it adds and the name its calls are
/// counted under (per consumer).
pub struct Deprecation {
    /// `name@version`.
    pub api: Arc<str>,
    /// (Deprecation / Sunset / Link, value), ready to send.
    pub headers: Arc<[(&'static str, String)]>,
}

impl PluginFactory for Deprecation {
    fn spec(&self) -> &'static Spec {
        &DEPRECATION
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(Deprecated {
            api: self.api.clone(),
            headers: self.headers.clone(),
            metrics: shard.metrics.clone(),
            consumers: shard.consumers.clone(),
        })
    }
}

struct Deprecated {
    api: Arc<str>,
    headers: Arc<[(&'static str, String)]>,
    metrics: Rc<ShardMetrics>,
    consumers: Arc<super::consumer::Consumers>,
}

impl Plugin for Deprecated {
    fn spec(&self) -> &'static Spec {
        &DEPRECATION
    }

    fn response_headers(&self, _: &crate::http::parse::ResponseHead, cx: &mut Ctx) {
        for (n, v) in self.headers.iter() {
            cx.resp_headers.set(n.as_bytes(), v.as_bytes());
        }
    }

    fn log(&self, cx: &mut Ctx) {
        let who = cx
            .consumer
            .and_then(|i| self.consumers.list.get(i))
            .map_or("", |c| c.username.as_str());
        self.metrics.count_deprecated(&self.api, who);
    }
}
