//! fault-injection: delays and/or aborts a share of requests, optionally only
//! those matching `vars`. Runs in rewrite; the delay is served by the phase driver's sleep.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::rand::Rng;
use super::util::{err, parse};
use super::vars::{self, Conds};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Reply, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;

pub const SPEC: Spec = Spec {
    name: "fault-injection",
    priority: 11000,
    phases: phase::REWRITE,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortConf {
    http_status: u16,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    percentage: Option<f64>,
    #[serde(default)]
    vars: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayConf {
    /// Seconds, fractions allowed (APISIX's unit).
    duration: f64,
    #[serde(default)]
    percentage: Option<f64>,
    #[serde(default)]
    vars: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default)]
    abort: Option<AbortConf>,
    #[serde(default)]
    delay: Option<DelayConf>,
}

/// When a fault applies: a percentage and any one of several `vars` lists (APISIX's shape:
/// `vars = [[ [var, op, value], ... ], ...]`, outer list OR, inner AND).
struct When {
    pct: f64,
    vars: Vec<Conds>,
}

fn when(pct: Option<f64>, v: Option<&toml::Value>, path: &str) -> Result<When, ConfigError> {
    let pct = pct.unwrap_or(100.0);
    if !(0.0..=100.0).contains(&pct) {
        return Err(err(
            path,
            "percentage",
            format!("expected 0..=100, got {pct}"),
        ));
    }
    let mut out = Vec::new();
    if let Some(v) = v {
        let Some(list) = v.as_array() else {
            return Err(err(
                path,
                "vars",
                "expected [[ [var, op, value], ... ], ...]",
            ));
        };
        for (i, e) in list.iter().enumerate() {
            out.push(vars::parse(e, &format!("{path}.vars[{i}]"))?);
        }
    }
    Ok(When { pct, vars: out })
}

impl When {
    fn hit(&self, req: &RequestHead, cx: &Ctx, rng: &Rng) -> bool {
        (self.vars.is_empty() || self.vars.iter().any(|c| vars::matches(c, req, cx)))
            && rng.chance(self.pct)
    }
}

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    if c.abort.is_none() && c.delay.is_none() {
        return Err(ConfigError::new(path, "set abort, delay or both"));
    }
    let abort = match c.abort {
        Some(a) => {
            let at = format!("{path}.abort");
            if !(200..=599).contains(&a.http_status) {
                return Err(err(
                    &at,
                    "http_status",
                    format!("expected 200..=599, got {}", a.http_status),
                ));
            }
            Some((
                a.http_status,
                a.body.unwrap_or_default(),
                when(a.percentage, a.vars.as_ref(), &at)?,
            ))
        }
        None => None,
    };
    let delay = match c.delay {
        Some(d) => {
            let at = format!("{path}.delay");
            if !d.duration.is_finite() || d.duration <= 0.0 || d.duration > 3600.0 {
                return Err(err(
                    &at,
                    "duration",
                    format!("expected seconds in (0, 3600], got {}", d.duration),
                ));
            }
            Some((
                Duration::from_secs_f64(d.duration),
                when(d.percentage, d.vars.as_ref(), &at)?,
            ))
        }
        None => None,
    };
    Ok(Arc::new(Factory(Arc::new(Shared { abort, delay }))))
}

struct Shared {
    abort: Option<(u16, String, When)>,
    delay: Option<(Duration, When)>,
}

struct Factory(Arc<Shared>);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(FaultInjection {
            reply: self.0.abort.as_ref().map(|(code, body, _)| {
                Reply::new(*code).body(Bytes::copy_from_slice(body.as_bytes()))
            }),
            s: self.0.clone(),
            rng: Rng::new(shard.id),
        })
    }
}

struct FaultInjection {
    s: Arc<Shared>,
    /// This shard's copy of the abort reply.
    reply: Option<Reply>,
    rng: Rng,
}

impl Plugin for FaultInjection {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn rewrite(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        // As APISIX: the delay happens first, then the abort (the driver sleeps before replying).
        if let Some((d, w)) = &self.s.delay {
            if w.hit(req, cx, &self.rng) {
                cx.delay += *d;
            }
        }
        if let (Some((_, _, w)), Some(reply)) = (&self.s.abort, &self.reply) {
            if w.hit(req, cx, &self.rng) {
                return Flow::Respond(reply.clone());
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::plugin::testkit;

    #[test]
    fn aborts_with_the_configured_status_and_body() {
        let gw = testkit::gateway(
            "[fault-injection]\nabort = { http_status = 418, body = \"teapot\" }\n",
        );
        let x = gw.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.replied(), Some(418));
        assert_eq!(&x.reply().unwrap().body[..], b"teapot");
        assert_eq!(x.cx.delay, Duration::ZERO);
    }

    #[test]
    fn vars_pick_the_requests_and_delay_comes_before_abort() {
        let gw = testkit::gateway(
            "[fault-injection]\n\
             abort = { http_status = 503, vars = [[[\"arg_name\", \"==\", \"jack\"]]] }\n\
             delay = { duration = 0.25, vars = [[[\"http_x_slow\", \"==\", \"1\"]], [[\"arg_name\", \"==\", \"jack\"]]] }\n",
        );
        let x = gw.send(b"GET /?name=jill HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.replied(), None);
        assert_eq!(x.cx.delay, Duration::ZERO);
        let x = gw.send(b"GET /?name=jill HTTP/1.1\r\nHost: a\r\nX-Slow: 1\r\n\r\n");
        assert_eq!(x.replied(), None);
        assert_eq!(x.cx.delay, Duration::from_millis(250));
        let x = gw.send(b"GET /?name=jack HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.replied(), Some(503));
        assert_eq!(
            x.cx.delay,
            Duration::from_millis(250),
            "delayed, then aborted"
        );
    }

    #[test]
    fn percentage_zero_never_fires() {
        let gw = testkit::gateway(
            "[fault-injection]\nabort = { http_status = 500, percentage = 0.0 }\n",
        );
        for _ in 0..50 {
            assert_eq!(
                gw.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").replied(),
                None
            );
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[fault-injection]\n");
        assert_eq!(e.path, "routes[0].plugins.fault-injection");
        assert_eq!(e.message, "set abort, delay or both");
        let e = testkit::config_error("[fault-injection]\nabort = { http_status = 100 }\n");
        assert_eq!(
            e.path,
            "routes[0].plugins.fault-injection.abort.http_status"
        );
        let e = testkit::config_error("[fault-injection]\ndelay = { duration = 0.0 }\n");
        assert_eq!(e.path, "routes[0].plugins.fault-injection.delay.duration");
        let e = testkit::config_error(
            "[fault-injection]\nabort = { http_status = 500, percentage = 101.0 }\n",
        );
        assert_eq!(e.path, "routes[0].plugins.fault-injection.abort.percentage");
        let e = testkit::config_error(
            "[fault-injection]\nabort = { http_status = 500, vars = \"x\" }\n",
        );
        assert_eq!(e.path, "routes[0].plugins.fault-injection.abort.vars");
    }
}
