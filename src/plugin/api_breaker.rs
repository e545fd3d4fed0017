//! api-breaker: a circuit breaker on the route's upstream statuses. Trips after
//! `unhealthy.failures` unhealthy statuses in a row; the open time doubles per trip. Per shard.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::util::{err, parse};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Reply, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;

pub const SPEC: Spec = Spec {
    name: "api-breaker",
    priority: 1005,
    phases: phase::ACCESS | phase::LOG,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Health {
    #[serde(default)]
    http_statuses: Option<Vec<u16>>,
    #[serde(default)]
    failures: Option<u32>,
    #[serde(default)]
    successes: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderConf {
    key: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    break_response_code: u16,
    #[serde(default)]
    break_response_body: Option<String>,
    #[serde(default)]
    break_response_headers: Vec<HeaderConf>,
    #[serde(default)]
    max_breaker_sec: Option<u64>,
    #[serde(default)]
    unhealthy: Option<Health>,
    #[serde(default)]
    healthy: Option<Health>,
}

fn statuses(
    h: &Option<Health>,
    default: u16,
    path: &str,
    key: &str,
) -> Result<Vec<u16>, ConfigError> {
    let list = h
        .as_ref()
        .and_then(|h| h.http_statuses.clone())
        .unwrap_or_else(|| vec![default]);
    if list.is_empty() {
        return Err(err(path, key, "must list at least one status"));
    }
    if let Some(s) = list.iter().find(|s| !(200..=599).contains(*s)) {
        return Err(err(
            path,
            key,
            format!("expected statuses in 200..=599, got {s}"),
        ));
    }
    Ok(list)
}

fn count(v: Option<u32>, path: &str, key: &str) -> Result<u32, ConfigError> {
    match v.unwrap_or(3) {
        0 => Err(err(path, key, "expected at least 1")),
        n => Ok(n),
    }
}

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    if !(200..=599).contains(&c.break_response_code) {
        return Err(err(
            path,
            "break_response_code",
            format!("expected 200..=599, got {}", c.break_response_code),
        ));
    }
    let max = c.max_breaker_sec.unwrap_or(300);
    if max < 3 {
        return Err(err(
            path,
            "max_breaker_sec",
            format!("expected at least 3 (as APISIX), got {max}"),
        ));
    }
    for (i, h) in c.break_response_headers.iter().enumerate() {
        let ok = !h.key.is_empty()
            && h.key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
            && !h.value.bytes().any(|b| b < 0x20 && b != b'\t');
        if !ok {
            return Err(err(
                path,
                &format!("break_response_headers[{i}]"),
                "needs a header name as key and a value without control characters",
            ));
        }
    }
    Ok(Arc::new(Factory(Arc::new(Shared {
        code: c.break_response_code,
        body: c.break_response_body.unwrap_or_default(),
        headers: c
            .break_response_headers
            .into_iter()
            .map(|h| (h.key, h.value))
            .collect(),
        max: Duration::from_secs(max),
        unhealthy: statuses(&c.unhealthy, 500, path, "unhealthy.http_statuses")?,
        failures: count(
            c.unhealthy.as_ref().and_then(|h| h.failures),
            path,
            "unhealthy.failures",
        )?,
        healthy: statuses(&c.healthy, 200, path, "healthy.http_statuses")?,
        successes: count(
            c.healthy.as_ref().and_then(|h| h.successes),
            path,
            "healthy.successes",
        )?,
    }))))
}

struct Shared {
    code: u16,
    body: String,
    headers: Vec<(String, String)>,
    max: Duration,
    unhealthy: Vec<u16>,
    failures: u32,
    healthy: Vec<u16>,
    successes: u32,
}

impl Shared {
    /// 2^trips seconds, capped at max_breaker_sec (APISIX's schedule: 2 s, 4 s, 8 s, ...).
    fn open_for(&self, trips: u32) -> Duration {
        Duration::from_secs(1u64 << trips.min(40)).min(self.max)
    }
}

/// This shard's breaker. Closed: `open_until` is None. Open: now < open_until. Half-open:
/// past open_until, requests go through and their statuses decide.
#[derive(Default)]
struct State {
    failures: u32,
    successes: u32,
    trips: u32,
    open_until: Option<Instant>,
}

struct Factory(Arc<Shared>);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, _shard: &ShardCx) -> Rc<dyn Plugin> {
        let s = &self.0;
        let mut reply = Reply::new(s.code).body(Bytes::copy_from_slice(s.body.as_bytes()));
        for (k, v) in &s.headers {
            reply = reply.header(k, Bytes::copy_from_slice(v.as_bytes()));
        }
        Rc::new(ApiBreaker {
            s: s.clone(),
            reply,
            state: RefCell::new(State::default()),
        })
    }
}

struct ApiBreaker {
    s: Arc<Shared>,
    /// This shard's copy of the break response.
    reply: Reply,
    state: RefCell<State>,
}

impl Plugin for ApiBreaker {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn access(&self, _req: &RequestHead, _cx: &mut Ctx) -> Flow {
        match self.state.borrow().open_until {
            Some(until) if Instant::now() < until => Flow::Respond(self.reply.clone()),
            _ => Flow::Continue,
        }
    }

    fn log(&self, cx: &mut Ctx) {
        // Only what the upstream (or the gateway failing to reach it) answered counts;
        // replies of this or other plugins do not.
        if !cx.forwarded {
            return;
        }
        let s = &self.s;
        let mut st = self.state.borrow_mut();
        let now = Instant::now();
        let half_open = st.open_until.is_some_and(|u| now >= u);
        if s.unhealthy.contains(&cx.status) {
            st.successes = 0;
            if half_open {
                // The probe failed: open again, for twice as long.
                st.trips += 1;
                st.open_until = Some(now + s.open_for(st.trips));
            } else if st.open_until.is_none() {
                st.failures += 1;
                if st.failures >= s.failures {
                    st.failures = 0;
                    st.trips += 1;
                    st.open_until = Some(now + s.open_for(st.trips));
                }
            }
            // Open: a response to a request sent before the trip changes nothing.
        } else if s.healthy.contains(&cx.status) {
            if half_open {
                st.successes += 1;
                if st.successes >= s.successes {
                    *st = State::default();
                }
            } else if st.open_until.is_none() {
                st.failures = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::plugin::testkit::{self, Gateway};

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    /// One request that reaches the upstream and gets `status`; false if the breaker answered.
    fn upstream_says(gw: &Gateway, status: u16) -> bool {
        let mut x = gw.send(GET);
        let passed = x.replied().is_none();
        if passed {
            x.response(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes());
        }
        x.log();
        passed
    }

    #[test]
    fn opens_after_unhealthy_statuses_in_a_row_with_the_break_response() {
        let gw = testkit::gateway(
            "[api-breaker]\nbreak_response_code = 503\nbreak_response_body = \"down\"\n\
             break_response_headers = [{ key = \"X-Breaker\", value = \"open\" }]\n\
             unhealthy = { http_statuses = [500, 502], failures = 2 }\n",
        );
        assert!(upstream_says(&gw, 500));
        // A healthy status resets the run.
        assert!(upstream_says(&gw, 200));
        assert!(upstream_says(&gw, 502));
        // Neither healthy nor unhealthy: changes nothing.
        assert!(upstream_says(&gw, 404));
        assert!(upstream_says(&gw, 500));
        let x = gw.send(GET);
        assert_eq!(x.replied(), Some(503));
        assert_eq!(&x.reply().unwrap().body[..], b"down");
        assert_eq!(x.reply_header("x-breaker"), Some(&b"open"[..]));
        assert!(!x.cx.forwarded);
    }

    #[test]
    fn other_plugins_replies_do_not_count() {
        let gw = testkit::gateway(
            "[api-breaker]\nbreak_response_code = 502\nunhealthy = { http_statuses = [401], failures = 1 }\n\
             [key-auth]\n",
        );
        for _ in 0..3 {
            let mut x = gw.send(GET);
            assert_eq!(x.replied(), Some(401), "key-auth's own reply");
            x.log();
        }
        assert_eq!(gw.send(GET).replied(), Some(401), "still closed");
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[api-breaker]\nbreak_response_code = 100\n");
        assert_eq!(e.path, "routes[0].plugins.api-breaker.break_response_code");
        let e = testkit::config_error(
            "[api-breaker]\nbreak_response_code = 502\nmax_breaker_sec = 1\n",
        );
        assert_eq!(e.path, "routes[0].plugins.api-breaker.max_breaker_sec");
        let e = testkit::config_error(
            "[api-breaker]\nbreak_response_code = 502\nunhealthy = { failures = 0 }\n",
        );
        assert_eq!(e.path, "routes[0].plugins.api-breaker.unhealthy.failures");
        let e = testkit::config_error(
            "[api-breaker]\nbreak_response_code = 502\nhealthy = { http_statuses = [] }\n",
        );
        assert_eq!(
            e.path,
            "routes[0].plugins.api-breaker.healthy.http_statuses"
        );
        let e = testkit::config_error(
            "[api-breaker]\nbreak_response_code = 502\nbreak_response_headers = [{ key = \"\", value = \"v\" }]\n",
        );
        assert_eq!(
            e.path,
            "routes[0].plugins.api-breaker.break_response_headers[0]"
        );
    }
}
