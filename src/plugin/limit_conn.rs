//! limit-conn: concurrent requests per key (conn + burst, the excess delayed),
//! counted node-wide from shards' reports. Takes a slot in access, gives it back in log.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, LimiterSpec, ShardCx, ShardLimiter};
use super::consumer::Consumers;
use super::limit_count::{reject_reply, rejection};
use super::util::{duration, err, key_hash, key_parts, parse, positive, LimitKeyPart, RawDur};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;
use crate::limit::conc::Concurrency;
use crate::metrics::{Limiter, ShardMetrics};

pub const SPEC: Spec = Spec {
    name: "limit-conn",
    priority: 1003,
    phases: phase::ACCESS | phase::LOG,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    conn: i64,
    #[serde(default)]
    burst: i64,
    #[serde(default)]
    default_conn_delay: Option<RawDur>,
    #[serde(default)]
    only_use_default_delay: Option<bool>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_type: Option<String>,
    #[serde(default)]
    rejected_code: Option<u16>,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default)]
    max_keys: Option<usize>,
}

fn factory(v: &toml::Value, path: &str, cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    let conn = positive(path, "conn", c.conn)?;
    if c.burst < 0 {
        return Err(err(
            path,
            "burst",
            format!("expected an integer >= 0, got {}", c.burst),
        ));
    }
    let _ = (c.key_type, c.only_use_default_delay);
    let delay = match &c.default_conn_delay {
        Some(d) => duration(path, "default_conn_delay", d)?,
        None => Duration::from_millis(100),
    };
    let key = key_parts(
        &format!("{path}.key"),
        c.key.as_deref().unwrap_or("remote_addr"),
    )?;
    let (code, msg) = rejection(path, c.rejected_code, c.rejected_msg)?;
    cx.want_sync(Duration::from_millis(20));
    let limiter = cx.add_limiter(LimiterSpec::Conn {
        max_keys: c.max_keys.unwrap_or(100_000).max(1),
    });
    Ok(Arc::new(Factory(Arc::new(Shared {
        limiter,
        key,
        conn,
        max: conn + c.burst as u64,
        delay,
        code,
        msg,
    }))))
}

struct Shared {
    limiter: u32,
    key: Vec<LimitKeyPart>,
    conn: u64,
    max: u64,
    delay: Duration,
    code: u16,
    msg: Option<String>,
}

struct Factory(Arc<Shared>);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        let state = match shard.limiters.get(self.0.limiter as usize) {
            Some(ShardLimiter::Conn(l)) => l.clone(),
            _ => Rc::new(RefCell::new(Concurrency::new(0, 1, 1))),
        };
        Rc::new(LimitConn {
            s: self.0.clone(),
            state,
            consumers: shard.consumers.clone(),
            metrics: shard.metrics.clone(),
        })
    }
}

struct LimitConn {
    s: Arc<Shared>,
    state: Rc<RefCell<Concurrency>>,
    consumers: Arc<Consumers>,
    metrics: Rc<ShardMetrics>,
}

impl Plugin for LimitConn {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn access(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let key = key_hash(&self.s.key, req, cx, &self.consumers);
        match self.state.borrow_mut().acquire(key, self.s.max) {
            None => Flow::Respond(reject_reply(
                &self.metrics,
                Limiter::Conn,
                self.s.code,
                &self.s.msg,
            )),
            Some(total) => {
                cx.private.held.push((self.s.limiter, key));
                if total > self.s.conn {
                    // In the burst: admitted, but after a delay per excess request (as APISIX).
                    cx.delay += self.s.delay * (total - self.s.conn) as u32;
                }
                Flow::Continue
            }
        }
    }

    fn log(&self, cx: &mut Ctx) {
        if let Some(pos) = cx
            .private
            .held
            .iter()
            .position(|&(l, _)| l == self.s.limiter)
        {
            let (_, key) = cx.private.held.swap_remove(pos);
            self.state.borrow_mut().release(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::plugin::testkit;

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn holds_a_slot_until_log_delays_the_burst_and_refuses_beyond() {
        let gw = testkit::gateway(
            "[limit-conn]\nconn = 1\nburst = 1\ndefault_conn_delay = \"50ms\"\nrejected_msg = \"busy\"\n",
        );
        let mut first = gw.send(GET);
        assert_eq!(first.replied(), None);
        assert_eq!(first.cx.delay, Duration::ZERO);
        assert_eq!(first.cx.private.held.len(), 1);
        let mut second = gw.send(GET);
        assert_eq!(second.replied(), None, "in the burst");
        assert_eq!(second.cx.delay, Duration::from_millis(50));
        let mut third = gw.send(GET);
        assert_eq!(third.replied(), Some(503));
        assert_eq!(third.reply_message().as_deref(), Some("busy"));
        assert!(third.cx.private.held.is_empty());
        third.log();
        // The first finishes: its slot is free again.
        first.log();
        assert!(first.cx.private.held.is_empty());
        let fourth = gw.send(GET);
        assert_eq!(fourth.replied(), None);
        assert_eq!(
            fourth.cx.delay,
            Duration::from_millis(50),
            "second still in flight"
        );
        second.log();
        // Other addresses never shared the key.
        assert_eq!(gw.send_from("127.0.0.2", GET).cx.delay, Duration::ZERO);
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[limit-conn]\nconn = 0\n");
        assert_eq!(e.path, "routes[0].plugins.limit-conn.conn");
        let e = testkit::config_error("[limit-conn]\nconn = 1\nburst = -1\n");
        assert_eq!(e.path, "routes[0].plugins.limit-conn.burst");
        let e = testkit::config_error("[limit-conn]\nconn = 1\ndefault_conn_delay = \"soon\"\n");
        assert_eq!(e.path, "routes[0].plugins.limit-conn.default_conn_delay");
        let e = testkit::config_error("[limit-conn]\nconn = 1\nkey = \"header:\"\n");
        assert_eq!(e.path, "routes[0].plugins.limit-conn.key");
    }
}
