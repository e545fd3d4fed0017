//! limit-req: leaky bucket per key (rate, burst, nodelay), the node's rate
//! split between shards by demand. Delays go through `Ctx::delay`; never sleeps itself.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, LimiterSpec, ShardCx, ShardLimiter};
use super::consumer::Consumers;
use super::limit_count::{reject_reply, rejection};
use super::limit_policy::{self, ClusterConf, PolicyKeys, RedisConf};
use super::util::{err, key_hash, key_parts, parse, LimitKeyPart, RawDur};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;
use crate::limit::bucket::{Bucket, BucketParams};
use crate::limit::fleet::Kind;
use crate::metrics::{Limiter, ShardMetrics};

pub const SPEC: Spec = Spec {
    name: "limit-req",
    priority: 1001,
    phases: phase::ACCESS,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    rate: f64,
    burst: f64,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_type: Option<String>,
    #[serde(default)]
    rejected_code: Option<u16>,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default)]
    nodelay: bool,
    #[serde(default)]
    max_keys: Option<usize>,
    /// "local" (default), "redis" or "redis-cluster"; see README "Rate limits across nodes".
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    redis: Option<RedisConf>,
    #[serde(default)]
    redis_cluster: Option<ClusterConf>,
    #[serde(default)]
    sync_interval: Option<RawDur>,
    #[serde(default)]
    on_redis_error: Option<String>,
}

fn factory(v: &toml::Value, path: &str, cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    if !(c.rate.is_finite() && c.rate > 0.0) {
        return Err(err(
            path,
            "rate",
            format!(
                "expected a positive number of requests per second, got {}",
                c.rate
            ),
        ));
    }
    if !(c.burst.is_finite() && c.burst >= 0.0) {
        return Err(err(
            path,
            "burst",
            format!("expected a number >= 0, got {}", c.burst),
        ));
    }
    let _ = c.key_type;
    let key = key_parts(
        &format!("{path}.key"),
        c.key.as_deref().unwrap_or("remote_addr"),
    )?;
    let (code, msg) = rejection(path, c.rejected_code, c.rejected_msg)?;
    let fleet = limit_policy::fleet(
        path,
        PolicyKeys {
            policy: c.policy.as_deref(),
            redis: c.redis.as_ref(),
            redis_cluster: c.redis_cluster.as_ref(),
            sync_interval: c.sync_interval.as_ref(),
            on_redis_error: c.on_redis_error.as_deref(),
        },
        format!("{}/limit-req", cx.owner),
        Kind::Req { rate: c.rate },
    )?;
    if fleet.is_none() && c.sync_interval.is_some() {
        return Err(err(
            path,
            "sync_interval",
            "sync_interval sets the exchange with the store: it needs policy = \"redis\" or \"redis-cluster\"",
        ));
    }
    let sync = fleet.as_ref().map_or(Duration::from_millis(20), |f| {
        f.interval.min(Duration::from_millis(20))
    });
    cx.want_sync(sync);
    let limiter = cx.add_limiter(LimiterSpec::Req(BucketParams {
        rate: c.rate,
        burst: c.burst,
        max_keys: c.max_keys.unwrap_or(100_000).max(1),
    }));
    if let Some(f) = fleet {
        cx.fleet.push((limiter, f));
    }
    Ok(Arc::new(Factory(Arc::new(Shared {
        limiter,
        key,
        code,
        msg,
        nodelay: c.nodelay,
    }))))
}

struct Shared {
    limiter: u32,
    key: Vec<LimitKeyPart>,
    code: u16,
    msg: Option<String>,
    nodelay: bool,
}

struct Factory(Arc<Shared>);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        let state = match shard.limiters.get(self.0.limiter as usize) {
            Some(ShardLimiter::Req(l)) => l.clone(),
            _ => Rc::new(RefCell::new(Bucket::new(
                BucketParams {
                    rate: 1.0,
                    burst: 0.0,
                    max_keys: 1,
                },
                0,
                1,
            ))),
        };
        Rc::new(LimitReq {
            s: self.0.clone(),
            state,
            epoch: shard.epoch,
            consumers: shard.consumers.clone(),
            metrics: shard.metrics.clone(),
        })
    }
}

struct LimitReq {
    s: Arc<Shared>,
    state: Rc<RefCell<Bucket>>,
    epoch: std::time::Instant,
    consumers: Arc<Consumers>,
    metrics: Rc<ShardMetrics>,
}

impl Plugin for LimitReq {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn access(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let key = key_hash(&self.s.key, req, cx, &self.consumers);
        let now = cx.now_ms(self.epoch);
        match self.state.borrow_mut().check(key, now) {
            Err(_) => Flow::Respond(reject_reply(
                &self.metrics,
                Limiter::Req,
                self.s.code,
                &self.s.msg,
            )),
            Ok(delay_ms) => {
                if !self.s.nodelay && delay_ms > 0 {
                    cx.delay += Duration::from_millis(delay_ms);
                }
                Flow::Continue
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::plugin::testkit;

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn burst_is_delayed_and_beyond_it_refused() {
        let gw = testkit::gateway("[limit-req]\nrate = 1.0\nburst = 1.0\nrejected_code = 429\n");
        let x = gw.send(GET);
        assert_eq!(x.replied(), None);
        assert_eq!(x.cx.delay, Duration::ZERO);
        let x = gw.send(GET);
        assert_eq!(x.replied(), None, "within the burst");
        assert!(
            x.cx.delay >= Duration::from_millis(900) && x.cx.delay <= Duration::from_secs(1),
            "delayed to the rate: {:?}",
            x.cx.delay
        );
        let x = gw.send(GET);
        assert_eq!(x.replied(), Some(429));
        assert_eq!(x.reply_message().as_deref(), Some("Too Many Requests"));
        // Another address is another key.
        assert_eq!(gw.send_from("127.0.0.2", GET).replied(), None);
    }

    #[test]
    fn nodelay_admits_the_burst_at_once() {
        let gw = testkit::gateway("[limit-req]\nrate = 1.0\nburst = 2.0\nnodelay = true\n");
        for _ in 0..3 {
            let x = gw.send(GET);
            assert_eq!(x.replied(), None);
            assert_eq!(x.cx.delay, Duration::ZERO);
        }
        assert_eq!(gw.send(GET).replied(), Some(503));
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[limit-req]\nrate = 0.0\nburst = 1.0\n");
        assert_eq!(e.path, "routes[0].plugins.limit-req.rate");
        let e = testkit::config_error("[limit-req]\nrate = 1.0\nburst = -1.0\n");
        assert_eq!(e.path, "routes[0].plugins.limit-req.burst");
        let e =
            testkit::config_error("[limit-req]\nrate = 1.0\nburst = 1.0\nrejected_code = 600\n");
        assert_eq!(e.path, "routes[0].plugins.limit-req.rejected_code");
        let e = testkit::config_error("[limit-req]\nrate = 1.0\nburst = 1.0\nkey = \"\"\n");
        assert_eq!(e.path, "routes[0].plugins.limit-req.key");
    }
}
