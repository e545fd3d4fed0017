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
use super::util::{err, key_hash, key_parts, parse, KeyPart};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;
use crate::limit::bucket::{Bucket, BucketParams};
use crate::metrics::Limiter;

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
    cx.want_sync(Duration::from_millis(20));
    let limiter = cx.add_limiter(LimiterSpec::Req(BucketParams {
        rate: c.rate,
        burst: c.burst,
        max_keys: c.max_keys.unwrap_or(100_000).max(1),
    }));
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
    key: Vec<KeyPart>,
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
        })
    }
}

struct LimitReq {
    s: Arc<Shared>,
    state: Rc<RefCell<Bucket>>,
    epoch: std::time::Instant,
    consumers: Arc<Consumers>,
}

impl Plugin for LimitReq {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn access(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let key = key_hash(&self.s.key, req, cx, &self.consumers);
        let now = cx.now_ms(self.epoch);
        match self.state.borrow_mut().check(key, now) {
            Err(_) => Flow::Respond(reject_reply(Limiter::Req, self.s.code, &self.s.msg)),
            Ok(delay_ms) => {
                if !self.s.nodelay && delay_ms > 0 {
                    cx.delay += Duration::from_millis(delay_ms);
                }
                Flow::Continue
            }
        }
    }
}
