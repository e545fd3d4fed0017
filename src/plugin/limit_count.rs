//! limit-count: N requests per time window per key, node-wide via the shard's `CountLimiter`
//! share, or in exact mode counted in Redis per request (limit_exact.rs: the request's future
//! awaits the store, the shard does not block). Sends X-RateLimit-* headers; never locks.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, LimiterSpec, ShardCx, ShardLimiter};
use super::consumer::Consumers;
use super::limit_exact::Exact;
use super::limit_policy::{self, ClusterConf, PolicyKeys, RedisConf};
use super::util::{duration, err, key_hash, key_parts, parse, positive, LimitKeyPart, RawDur};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Reply, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;
use crate::limit::count::{CountLimiter, CountParams};
use crate::limit::fleet::{is_exact, FleetSpec, Kind};
use crate::metrics::{Limiter, ShardMetrics};

pub const SPEC: Spec = Spec {
    name: "limit-count",
    priority: 1002,
    phases: phase::ACCESS,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    count: i64,
    time_window: i64,
    #[serde(default)]
    key: Option<String>,
    /// Accepted for APISIX compatibility: "var" and "var_combination" both parse `key`.
    #[serde(default)]
    key_type: Option<String>,
    #[serde(default)]
    rejected_code: Option<u16>,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    show_limit_quota_header: Option<bool>,
    #[serde(default)]
    sync_interval: Option<RawDur>,
    #[serde(default)]
    max_keys: Option<usize>,
    /// "local" (node-wide across shards, the default), "redis" or "redis-cluster" (cluster-wide
    /// through a shared store); see README "Rate limits across nodes".
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    redis: Option<RedisConf>,
    #[serde(default)]
    redis_cluster: Option<ClusterConf>,
    #[serde(default)]
    on_redis_error: Option<String>,
}

/// Status and body for a rejection, shared by the limit plugins.
pub fn rejection(
    path: &str,
    code: Option<u16>,
    msg: Option<String>,
) -> Result<(u16, Option<String>), ConfigError> {
    let code = code.unwrap_or(503);
    if !(200..=599).contains(&code) {
        return Err(err(
            path,
            "rejected_code",
            format!("expected 200..=599, got {code}"),
        ));
    }
    Ok((code, msg))
}

pub fn reject_reply(metrics: &ShardMetrics, by: Limiter, code: u16, msg: &Option<String>) -> Reply {
    metrics.count_rate_limited(by);
    match msg {
        Some(m) => Reply::json_message(code, m),
        None => Reply::json_message(code, crate::http::write::reason(code)),
    }
}

fn factory(v: &toml::Value, path: &str, cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    let count = positive(path, "count", c.count)?;
    let window_s = positive(path, "time_window", c.time_window)?;
    let key = key_parts(
        &format!("{path}.key"),
        c.key.as_deref().unwrap_or("remote_addr"),
    )?;
    if let Some(t) = c.key_type.as_deref() {
        if !matches!(t, "var" | "var_combination" | "constant") {
            return Err(err(
                path,
                "key_type",
                format!("expected \"var\", \"var_combination\" or \"constant\", got {t:?}"),
            ));
        }
    }
    let sliding = match c.window.as_deref() {
        None | Some("fixed") => false,
        Some("sliding") => true,
        Some(o) => {
            return Err(err(
                path,
                "window",
                format!("expected \"fixed\" or \"sliding\", got {o:?}"),
            ))
        }
    };
    let ns = match &c.group {
        Some(g) => format!("group {g:?}/limit-count"),
        None => format!("{}/limit-count", cx.owner),
    };
    let fleet = limit_policy::fleet(
        path,
        PolicyKeys {
            policy: c.policy.as_deref(),
            redis: c.redis.as_ref(),
            redis_cluster: c.redis_cluster.as_ref(),
            sync_interval: c.sync_interval.as_ref(),
            on_redis_error: c.on_redis_error.as_deref(),
        },
        ns,
        Kind::Count {
            limit: count,
            window_ms: window_s * 1000,
        },
    )?;
    if fleet.is_some() && sliding {
        return Err(err(
            path,
            "window",
            "a cluster-wide limit (policy = \"redis\") counts fixed windows only; drop window = \"sliding\"",
        ));
    }
    // Exact mode asks the store per request: its limiter is not shared through the fleet thread
    // (it is the node-local fallback for on_redis_error = "local").
    let exact = fleet.clone().filter(|f| is_exact(f));
    if exact.is_some() && cx.owner.starts_with("consumer") {
        // Consumer policy chains run without parking (chain.rs): no per-request round trip.
        return Err(err(
            path,
            "sync_interval",
            "exact mode (\"0\") is for route and global limit-count; use 1ms..=10s on a consumer or consumer group",
        ));
    }
    let fleet = fleet.filter(|f| !is_exact(f));
    let sync = match (&c.sync_interval, &fleet) {
        // Shards of a cluster-wide limit still sync among themselves at the local pace.
        (_, Some(f)) => f.interval.min(std::time::Duration::from_millis(20)),
        (Some(_), None) if exact.is_some() => std::time::Duration::from_millis(20),
        (Some(d), None) => duration(path, "sync_interval", d)?,
        (None, None) => std::time::Duration::from_millis(20),
    };
    if sync.as_millis() < 1 || sync.as_secs() > 10 {
        return Err(err(path, "sync_interval", "expected 1ms..=10s"));
    }
    cx.want_sync(sync);
    let (code, msg) = rejection(path, c.rejected_code, c.rejected_msg)?;
    let max_keys = c.max_keys.unwrap_or(100_000).max(1);
    let params = CountParams {
        limit: count,
        window_ms: window_s * 1000,
        sliding,
        max_keys,
    };
    let limiter = match &c.group {
        Some(g) => {
            let print = format!("{count}/{window_s}/{sliding}/{fleet:?}/{exact:?}");
            match cx.groups.get(g) {
                Some((id, p)) if *p == print => *id,
                Some(_) => {
                    return Err(err(path, "group", format!("group {g:?} is already defined with a different count/time_window/window; routes sharing a group must agree")))
                }
                None => {
                    let id = cx.add_limiter(LimiterSpec::Count(params));
                    cx.groups.insert(g.clone(), (id, print));
                    id
                }
            }
        }
        None => cx.add_limiter(LimiterSpec::Count(params)),
    };
    if let Some(f) = fleet {
        if !cx.fleet.iter().any(|(id, _)| *id == limiter) {
            cx.fleet.push((limiter, f));
        }
    }
    Ok(Arc::new(Factory(Arc::new(Shared {
        limiter,
        key,
        code,
        msg,
        headers: c.show_limit_quota_header.unwrap_or(true),
        limit_text: count.to_string().into_bytes(),
        exact,
    }))))
}

struct Shared {
    limiter: u32,
    key: Vec<LimitKeyPart>,
    code: u16,
    msg: Option<String>,
    headers: bool,
    /// X-RateLimit-Limit, formatted once: the limit is the configured count on every request.
    limit_text: Vec<u8>,
    /// `policy = "redis"` with `sync_interval = "0"`: a store round trip per request.
    exact: Option<Arc<FleetSpec>>,
}

struct Factory(Arc<Shared>);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        let state = match shard.limiters.get(self.0.limiter as usize) {
            Some(ShardLimiter::Count(l)) => l.clone(),
            // Unreachable with a validated config; a fresh private limiter keeps it safe.
            _ => Rc::new(RefCell::new(CountLimiter::new(
                CountParams {
                    limit: 1,
                    window_ms: 1000,
                    sliding: false,
                    max_keys: 1,
                },
                0,
                1,
            ))),
        };
        let exact = self
            .0
            .exact
            .as_ref()
            .map(|spec| Exact::new(spec.clone(), &shard.limit));
        Rc::new(LimitCount {
            s: self.0.clone(),
            exact,
            state,
            epoch: shard.epoch,
            consumers: shard.consumers.clone(),
            metrics: shard.metrics.clone(),
        })
    }
}

struct LimitCount {
    s: Arc<Shared>,
    exact: Option<Exact>,
    state: Rc<RefCell<CountLimiter>>,
    epoch: std::time::Instant,
    consumers: Arc<Consumers>,
    metrics: Rc<ShardMetrics>,
}

impl Plugin for LimitCount {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn access(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let key = key_hash(&self.s.key, req, cx, &self.consumers);
        let now = cx.now_ms(self.epoch);
        let d = match &self.exact {
            None => self.state.borrow_mut().check(key, now),
            Some(x) => match cx.private.exact.take() {
                None => match x.ask(key) {
                    Some((counted, wait)) => {
                        cx.private.exact = Some(counted);
                        return Flow::Wait(wait);
                    }
                    None => x.decide(None, &self.state, key, now),
                },
                Some(counted) => x.decide(counted.get(), &self.state, key, now),
            },
        };
        if self.s.headers {
            debug_assert_eq!(self.s.limit_text, d.limit.to_string().as_bytes());
            let h = &mut cx.resp_headers;
            h.set(b"X-RateLimit-Limit", &self.s.limit_text);
            h.set_u64(b"X-RateLimit-Remaining", d.remaining);
            h.set_u64(b"X-RateLimit-Reset", d.reset_ms.div_ceil(1000));
        }
        if d.allowed {
            Flow::Continue
        } else {
            Flow::Respond(reject_reply(
                &self.metrics,
                Limiter::Count,
                self.s.code,
                &self.s.msg,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::plugin::testkit::{self, Setup};

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    fn header_u64(v: Option<&[u8]>) -> u64 {
        std::str::from_utf8(v.expect("header"))
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn counts_per_key_and_refuses_past_the_limit_with_quota_headers() {
        let gw = testkit::gateway(
            "[limit-count]\ncount = 2\ntime_window = 60\nkey = \"header:X-Tenant\"\n\
             rejected_code = 429\nrejected_msg = \"slow down\"\n",
        );
        let a = b"GET / HTTP/1.1\r\nHost: a\r\nX-Tenant: a\r\n\r\n";
        let x = gw.send(a);
        assert_eq!(x.replied(), None);
        assert_eq!(x.client_header("X-RateLimit-Limit"), Some(&b"2"[..]));
        assert_eq!(x.client_header("X-RateLimit-Remaining"), Some(&b"1"[..]));
        let reset = header_u64(x.client_header("X-RateLimit-Reset"));
        assert!((1..=60).contains(&reset), "reset {reset}");
        let x = gw.send(a);
        assert_eq!(x.replied(), None);
        assert_eq!(x.client_header("X-RateLimit-Remaining"), Some(&b"0"[..]));
        let x = gw.send(a);
        assert_eq!(x.replied(), Some(429));
        assert_eq!(x.reply_message().as_deref(), Some("slow down"));
        assert_eq!(x.reply_header("X-RateLimit-Remaining"), Some(&b"0"[..]));
        assert_eq!(x.reply_header("X-RateLimit-Limit"), Some(&b"2"[..]));
        // Another key has its own count.
        let x = gw.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Tenant: b\r\n\r\n");
        assert_eq!(x.replied(), None);
        assert_eq!(x.client_header("X-RateLimit-Remaining"), Some(&b"1"[..]));
    }

    #[test]
    fn exact_mode_loads_for_routes_and_not_for_limit_req() {
        let redis =
            "policy = \"redis\"\nredis = { addr = \"127.0.0.1:1\" }\nsync_interval = \"0\"\n";
        let gw = testkit::gateway(&format!(
            "[limit-count]\ncount = 1\ntime_window = 60\n{redis}"
        ));
        // No Redis clients here: on_redis_error's default ("local") decides at once.
        assert_eq!(gw.send(GET).replied(), None);
        assert_eq!(gw.send(GET).replied(), Some(503));
        let e = testkit::config_error(&format!("[limit-req]\nrate = 1\nburst = 0\n{redis}"));
        assert!(e.message.contains("is for limit-count"), "{}", e.message);
        // The shards connect in exact mode and never wait on DNS: names are refused at load.
        let e = testkit::config_error(
            "[limit-count]\ncount = 1\ntime_window = 60\npolicy = \"redis\"\nredis = { addr = \"redis.internal:6379\" }\nsync_interval = \"0\"\n",
        );
        assert_eq!(e.path, "routes[0].plugins.limit-count.redis.addr");
        assert!(e.message.contains("IP address"), "{}", e.message);
    }

    #[test]
    fn default_rejection_is_503_and_headers_can_be_off() {
        let gw = testkit::gateway(
            "[limit-count]\ncount = 1\ntime_window = 60\nshow_limit_quota_header = false\n",
        );
        assert_eq!(gw.send(GET).replied(), None);
        let x = gw.send(GET);
        assert_eq!(x.replied(), Some(503));
        assert_eq!(x.reply_message().as_deref(), Some("Service Unavailable"));
        assert_eq!(x.reply_header("X-RateLimit-Limit"), None);
        assert_eq!(
            gw.send_from("127.0.0.9", GET).replied(),
            None,
            "keyed by address"
        );
    }

    #[test]
    fn a_group_is_one_counter_for_global_and_route() {
        let gw = Setup::route("[limit-count]\ncount = 2\ntime_window = 60\ngroup = \"g\"\n")
            .global("[limit-count]\ncount = 2\ntime_window = 60\ngroup = \"g\"\n")
            .build()
            .unwrap();
        assert_eq!(gw.set.limiters.len(), 1);
        // The global and the route instance count the same request twice.
        assert_eq!(gw.send(GET).replied(), None);
        assert_eq!(gw.send(GET).replied(), Some(503));
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[limit-count]\ncount = 0\ntime_window = 1\n");
        assert_eq!(e.path, "routes[0].plugins.limit-count.count");
        assert_eq!(e.message, "expected a positive integer, got 0");
        let e = testkit::config_error("[limit-count]\ncount = 1\n");
        assert_eq!(e.path, "routes[0].plugins.limit-count");
        assert!(e.message.contains("time_window"), "{}", e.message);
        let e = testkit::config_error(
            "[limit-count]\ncount = 1\ntime_window = 1\nwindow = \"rolling\"\n",
        );
        assert_eq!(e.path, "routes[0].plugins.limit-count.window");
        let e = testkit::config_error(
            "[limit-count]\ncount = 1\ntime_window = 1\npolicy = \"memcached\"\n",
        );
        assert_eq!(e.path, "routes[0].plugins.limit-count.policy");
        let e = testkit::config_error(
            "[limit-count]\ncount = 1\ntime_window = 1\npolicy = \"redis\"\n",
        );
        assert_eq!(e.path, "routes[0].plugins.limit-count.redis");
        let e = testkit::config_error(
            "[limit-count]\ncount = 1\ntime_window = 1\npolicy = \"redis\"\n\
             redis = { addr = \"nohost\" }\n",
        );
        assert_eq!(e.path, "routes[0].plugins.limit-count.redis.addr");
        let e = testkit::config_error(
            "[limit-count]\ncount = 1\ntime_window = 1\npolicy = \"redis\"\n\
             redis = { addr = \"127.0.0.1:6379\" }\non_redis_error = \"maybe\"\n",
        );
        assert_eq!(e.path, "routes[0].plugins.limit-count.on_redis_error");
        let e = testkit::config_error(
            "[limit-count]\ncount = 1\ntime_window = 1\npolicy = \"redis-cluster\"\n\
             redis_cluster = { nodes = [] }\n",
        );
        assert_eq!(e.path, "routes[0].plugins.limit-count.redis_cluster.nodes");
        let e = testkit::config_error(
            "[limit-count]\ncount = 1\ntime_window = 1\nwindow = \"sliding\"\n\
             policy = \"redis\"\nredis = { addr = \"127.0.0.1:6379\" }\n",
        );
        assert_eq!(e.path, "routes[0].plugins.limit-count.window");
        let e = testkit::config_error(
            "[limit-count]\ncount = 1\ntime_window = 1\nredis = { addr = \"127.0.0.1:6379\" }\n",
        );
        assert_eq!(e.path, "routes[0].plugins.limit-count.policy");
        let e =
            testkit::config_error("[limit-count]\ncount = 1\ntime_window = 1\nkey = \"bogus\"\n");
        assert_eq!(e.path, "routes[0].plugins.limit-count.key");
        let e = testkit::config_error(
            "[limit-count]\ncount = 1\ntime_window = 1\nsync_interval = \"20s\"\n",
        );
        assert_eq!(e.path, "routes[0].plugins.limit-count.sync_interval");
        let e = Setup::route("[limit-count]\ncount = 3\ntime_window = 60\ngroup = \"g\"\n")
            .global("[limit-count]\ncount = 2\ntime_window = 60\ngroup = \"g\"\n")
            .build()
            .err()
            .unwrap();
        assert_eq!(e.path, "routes[0].plugins.limit-count.group");
    }
}
