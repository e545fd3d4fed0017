//! One generation's limit state on one shard: the limiter state machines built from the set's
//! specs and their `LimitSync` (peers' reports in, this shard's out, fleet uplinks). Runs no
//! plugin phase; the limit plugins reach the state machines through `ShardCx`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::set::{LimiterSpec, PluginSet};
use crate::limit::bucket::Bucket;
use crate::limit::conc::Concurrency;
use crate::limit::count::CountLimiter;
use crate::limit::fleet::{FleetSpec, Grant, Uplink};
use crate::limit::sync::{Absorb, Endpoint, Report};

/// One shard's limiter state machines, by limiter id.
#[derive(Clone)]
pub enum ShardLimiter {
    Count(Rc<RefCell<CountLimiter>>),
    Req(Rc<RefCell<Bucket>>),
    Conn(Rc<RefCell<Concurrency>>),
}

/// Shard `id` of `shards`' state machine per limiter id of `set`, and their sync joined to
/// `limit` (None without limiters).
pub(super) fn build(
    set: &PluginSet,
    limit: &Rc<Endpoint>,
    id: usize,
    shards: usize,
) -> (Vec<ShardLimiter>, Option<Rc<LimitSync>>) {
    let limiters = set
        .limiters
        .iter()
        .enumerate()
        .map(|(i, s)| match s {
            LimiterSpec::Count(p) => {
                let l = CountLimiter::new(*p, id, shards);
                let l = match set.fleet.get(i) {
                    Some(Some(f)) => l.fleet(set.wall_ms, f.opening(set.sync_interval)),
                    _ => l,
                };
                ShardLimiter::Count(Rc::new(RefCell::new(l)))
            }
            LimiterSpec::Req(p) => {
                ShardLimiter::Req(Rc::new(RefCell::new(Bucket::new(p.clone(), id, shards))))
            }
            LimiterSpec::Conn { max_keys } => ShardLimiter::Conn(Rc::new(RefCell::new(
                Concurrency::new(id, shards, *max_keys),
            ))),
        })
        .collect::<Vec<_>>();
    let sync = (!limiters.is_empty()).then(|| {
        let sync = Rc::new(LimitSync {
            limiters: limiters.clone(),
            endpoint: limit.clone(),
            epoch: set.epoch,
            wall_ms: set.wall_ms,
            fleet: set.fleet.clone(),
            interval: set.sync_interval,
        });
        let weak: std::rc::Weak<dyn Absorb> = Rc::downgrade(&sync) as _;
        limit.join(set.epoch, weak);
        sync
    });
    (limiters, sync)
}

/// One generation's limiter state machines on one shard and its end of the limit lane. Peers'
/// reports are absorbed as they arrive (the shard drains the lane when woken); the shard's own
/// report goes out every `interval`, batching what changed since.
pub struct LimitSync {
    limiters: Vec<ShardLimiter>,
    endpoint: Rc<Endpoint>,
    epoch: Instant,
    wall_ms: u64,
    fleet: Vec<Option<Arc<FleetSpec>>>,
    interval: Duration,
}

impl Absorb for LimitSync {
    fn absorb(&self, r: &Report) {
        let now = self.epoch.elapsed().as_millis() as u64;
        match self.limiters.get(r.limiter as usize) {
            Some(ShardLimiter::Count(l)) => {
                l.borrow_mut()
                    .absorb(r.from as usize, r.window, &r.items, now)
            }
            Some(ShardLimiter::Req(l)) => l.borrow_mut().absorb(r.from as usize, &r.items),
            Some(ShardLimiter::Conn(l)) => l.borrow_mut().absorb(r.from as usize, &r.items),
            None => {}
        }
    }

    fn grant(&self, g: &Grant) {
        let now = self.epoch.elapsed().as_millis() as u64;
        match self.limiters.get(g.limiter as usize) {
            Some(ShardLimiter::Count(l)) => {
                l.borrow_mut()
                    .grant(g.window, g.mode, g.default_frac, &g.items, now)
            }
            Some(ShardLimiter::Req(l)) => l.borrow_mut().grant(g.mode, g.default_frac, &g.items),
            _ => {}
        }
    }
}

impl LimitSync {
    /// How often this shard reports to its peers.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// One sync tick: take in peers' reports not yet absorbed, recompute shares, tell peers
    /// what changed.
    pub fn tick(&self, sweep: bool) {
        self.endpoint.drain();
        let now = self.epoch.elapsed().as_millis() as u64;
        let me = self.endpoint.id() as u16;
        for (i, l) in self.limiters.iter().enumerate() {
            let (window, items) = match l {
                ShardLimiter::Count(l) => {
                    let mut l = l.borrow_mut();
                    if sweep {
                        l.sweep(now);
                    }
                    l.tick(now)
                }
                ShardLimiter::Req(l) => {
                    let mut l = l.borrow_mut();
                    if sweep {
                        l.sweep(now);
                    }
                    (0, l.tick())
                }
                ShardLimiter::Conn(l) => {
                    let mut l = l.borrow_mut();
                    if sweep {
                        l.sweep();
                    }
                    (0, l.tick())
                }
            };
            if items.is_empty() {
                continue;
            }
            if let Some(Some(spec)) = self.fleet.get(i) {
                self.endpoint.uplink(Uplink {
                    set: self.epoch,
                    limiter: i as u32,
                    wall_ms: self.wall_ms,
                    spec: spec.clone(),
                    from: me,
                    tick: self.interval,
                    window,
                    items: items.clone(),
                });
            }
            if self.endpoint.shards() > 1 {
                self.endpoint.broadcast(Report {
                    set: self.epoch,
                    limiter: i as u32,
                    from: me,
                    window,
                    items,
                });
            }
        }
    }
}
