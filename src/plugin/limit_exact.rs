//! limit-count's exact mode (`sync_interval = "0"`) on one shard: one atomic INCR + PEXPIREAT
//! script call per request on the window's key, awaited by the request's own future on the
//! shard's runtime through the shard's Redis client (net/redis.rs). Never blocks the shard.
//!
//! A call that fails or outlasts `timeout`, or a store in backoff (no I/O then), leaves the
//! request to `on_redis_error`: count it in the node's own limiter (`local`), `allow`, `deny`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::{Until, Wait};
use crate::limit::count::{CountLimiter, Decision};
use crate::limit::fleet::{exact_key, wall_ms_now, FleetSpec, Kind, OnError, Store, EXACT_SCRIPT};
use crate::limit::sync::Endpoint;
use crate::net::redis::{Client, Script, Target};
use crate::net::resp::Value;

/// Where a request's count lands: (requests counted in the window, this one included; ms until
/// the window ends). Empty until the store answers.
pub type Counted = Rc<Cell<Option<(u64, u64)>>>;

/// One limit-count instance's exact mode on one shard.
pub struct Exact {
    spec: Arc<FleetSpec>,
    /// The shard's client for the store (None without one: every request falls back).
    client: Option<Rc<Client>>,
}

impl Exact {
    pub fn new(spec: Arc<FleetSpec>, endpoint: &Endpoint) -> Exact {
        let client = endpoint.exact().map(|c| c.get(&target(&spec.store)));
        Exact { spec, client }
    }

    /// Starts counting the request under `key`: where its count will land and the wait for it.
    /// None when no call can be made now (no client, or the store is backing off).
    pub fn ask(&self, key: u64) -> Option<(Counted, Wait)> {
        let client = self.client.clone().filter(|c| !c.backing_off())?;
        let slot: Counted = Rc::default();
        let (out, spec) = (slot.clone(), self.spec.clone());
        let work = async move {
            if let Some(c) = count(&client, &spec, key).await {
                out.set(Some(c));
            }
        };
        Some((
            slot,
            Wait {
                until: Until::Done(Box::pin(work)),
                // The call ends by its own timeout; the slack is for the timer's granularity.
                within: self.spec.timeout + Duration::from_millis(5),
            },
        ))
    }

    /// The decision from the store's count, or `on_redis_error`'s when there is none.
    pub fn decide(
        &self,
        counted: Option<(u64, u64)>,
        local: &RefCell<CountLimiter>,
        key: u64,
        now: u64,
    ) -> Decision {
        match counted {
            Some((n, reset_ms)) => {
                let limit = self.limit();
                Decision {
                    allowed: n <= limit,
                    limit,
                    remaining: limit.saturating_sub(n),
                    reset_ms,
                }
            }
            None => {
                let mut d = local.borrow_mut().check(key, now);
                match self.spec.on_error {
                    OnError::Local => {}
                    OnError::Allow => d.allowed = true,
                    OnError::Deny => d.allowed = false,
                }
                d
            }
        }
    }

    fn limit(&self) -> u64 {
        match self.spec.kind {
            Kind::Count { limit, .. } => limit,
            Kind::Req { .. } => 0,
        }
    }
}

/// The request's count in its window and the ms left in it; None when the store did not count it.
async fn count(client: &Client, spec: &FleetSpec, key: u64) -> Option<(u64, u64)> {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    let Kind::Count { window_ms, .. } = spec.kind else {
        return None;
    };
    let now = wall_ms_now();
    let window = now / window_ms.max(1);
    let end = (window + 1) * window_ms;
    let k = exact_key(&spec.ns, key, window);
    // Kept a second past the window's end, for clocks a little apart between nodes.
    let expire = (end + 1000).to_string();
    let script = SCRIPT.get_or_init(|| Script::new(EXACT_SCRIPT));
    let v = client
        .eval(spec.timeout, script, k.as_bytes(), &[expire.as_bytes()])
        .await
        .ok()?;
    let n = match v {
        Value::Array(Some(items)) => match items.first() {
            Some(Value::Int(n)) => *n,
            _ => return None,
        },
        Value::Int(n) => n,
        _ => return None,
    };
    Some((n.max(0) as u64, end.saturating_sub(now)))
}

fn target(s: &Store) -> Target {
    match s {
        Store::Redis {
            addr,
            password,
            database,
        } => Target {
            nodes: vec![addr.clone()],
            cluster: false,
            password: password.clone(),
            database: *database,
            name: s.describe(),
        },
        Store::Cluster { nodes, password } => Target {
            nodes: nodes.clone(),
            cluster: true,
            password: password.clone(),
            database: 0,
            name: s.describe(),
        },
    }
}
