//! Cross-shard limit sync: the reports shards exchange over the node mesh's limit lane, and a
//! shard's end of that lane (plus, for cluster-wide limiters, its uplink to the node's fleet
//! thread and the grant lane back, and its Redis clients for limit-count's exact mode, which
//! the requests themselves await). Only the sync tick sends on the lanes.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Instant;

use crossbeam_channel::Sender;

use super::fleet::{Grant, Uplink};
use crate::net::redis::Clients;
use crate::util::mesh::Lane;

pub use super::Item;

/// A batch from one shard for one limiter.
#[derive(Debug, Clone)]
pub struct Report {
    /// The limiter set (by its epoch) the limiter id belongs to: ids are numbered per set, and
    /// the lane outlives sets (a reload builds a new one).
    pub set: Instant,
    pub limiter: u32,
    pub from: u16,
    pub window: u64,
    pub items: Vec<Item>,
}

/// What a shard's limiter set does with a peer's report.
pub trait Absorb {
    fn absorb(&self, r: &Report);
    /// The fleet thread's grant for one of the set's cluster-wide limiters.
    fn grant(&self, _g: &Grant) {}
}

/// A shard's end of the limit lane, shared by the config generations on the shard. Reports go
/// to the live set they were sent for: the current generation's, or one prepared and not yet
/// committed (peers that committed first already report for it); others are dropped.
pub struct Endpoint {
    lane: Lane<Report>,
    sets: RefCell<Vec<(Instant, Weak<dyn Absorb>)>>,
    /// Grants from the node's fleet thread, and the way to it (cluster-wide limiters).
    grants: Lane<Grant>,
    up: Option<Sender<Uplink>>,
    /// This shard's Redis clients for exact mode (`sync_interval = "0"`).
    exact: Option<Rc<Clients>>,
}

impl Endpoint {
    pub fn new(lane: Lane<Report>) -> Endpoint {
        Endpoint::node(lane, Lane::solo(), None, false)
    }

    /// An endpoint that also reaches the node's fleet thread (`up`) and hears its grants.
    /// With `exact`, the shard keeps Redis clients for exact mode.
    pub fn node(
        lane: Lane<Report>,
        grants: Lane<Grant>,
        up: Option<Sender<Uplink>>,
        exact: bool,
    ) -> Endpoint {
        Endpoint {
            exact: exact.then(|| Rc::new(Clients::new(lane.id()))),
            lane,
            sets: RefCell::new(Vec::new()),
            grants,
            up,
        }
    }

    /// This shard's Redis clients for exact mode; None (tests, a shard without them): exact-mode
    /// limiters fall back at once.
    pub fn exact(&self) -> Option<&Rc<Clients>> {
        self.exact.as_ref()
    }

    /// Sends a cluster-wide limiter's report to the fleet thread; false without one (the
    /// limiter then stays node-local).
    pub fn uplink(&self, u: Uplink) -> bool {
        self.up.as_ref().is_some_and(|tx| tx.send(u).is_ok())
    }

    /// A mesh of one (tests, or a single shard): nothing to send.
    pub fn solo() -> Endpoint {
        Endpoint::new(Lane::solo())
    }

    pub fn id(&self) -> usize {
        self.lane.id()
    }

    pub fn shards(&self) -> usize {
        self.lane.shards()
    }

    /// Registers a limiter set built on this shard; it receives reports until it is dropped.
    pub fn join(&self, set: Instant, state: Weak<dyn Absorb>) {
        let mut sets = self.sets.borrow_mut();
        sets.retain(|(_, w)| w.strong_count() > 0);
        sets.push((set, state));
    }

    /// Sends `r` to every other shard (each is woken to absorb it).
    pub fn broadcast(&self, r: Report) {
        self.lane.broadcast(r);
    }

    fn set(&self, set: Instant) -> Option<Rc<dyn Absorb>> {
        self.sets
            .borrow()
            .iter()
            .rev()
            .find(|(s, _)| *s == set)
            .and_then(|(_, w)| w.upgrade())
    }

    /// Hands every queued report and grant to the set it was sent for.
    pub fn drain(&self) {
        while let Some(r) = self.lane.try_recv() {
            if let Some(to) = self.set(r.set) {
                to.absorb(&r);
            }
        }
        while let Some(g) = self.grants.try_recv() {
            if let Some(to) = self.set(g.set) {
                to.grant(&g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::mesh::{Mesh, NoWake};
    use std::cell::Cell;
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Default)]
    struct Seen(Cell<u32>);

    impl Absorb for Seen {
        fn absorb(&self, r: &Report) {
            self.0.set(self.0.get() + r.items.len() as u32);
        }
    }

    fn report(set: Instant, n: usize) -> Report {
        let it = Item {
            key: 1,
            count: 1,
            alloc: 1,
            demand: 1,
        };
        Report {
            set,
            limiter: 0,
            from: 0,
            window: 0,
            items: vec![it; n],
        }
    }

    #[test]
    fn reports_reach_the_set_they_were_sent_for() {
        let mesh = Mesh::new(vec![Arc::new(NoWake), Arc::new(NoWake)]);
        let (mut lanes, _) = mesh.lane::<Report>();
        let b = Endpoint::new(lanes.pop().unwrap());
        let a = Endpoint::new(lanes.pop().unwrap());
        let (old, new) = (Instant::now(), Instant::now() + Duration::from_secs(1));
        // Shard b runs `old` and has `new` prepared; shard a already reports for `new`.
        let (cur, pending) = (Rc::new(Seen::default()), Rc::new(Seen::default()));
        b.join(old, Rc::downgrade(&cur) as Weak<dyn Absorb>);
        b.join(new, Rc::downgrade(&pending) as Weak<dyn Absorb>);
        a.broadcast(report(old, 1));
        a.broadcast(report(new, 2));
        a.broadcast(report(new + Duration::from_secs(1), 4));
        b.drain();
        assert_eq!(
            (cur.0.get(), pending.0.get()),
            (1, 2),
            "unknown set dropped"
        );
        // A set that is gone (an aborted or retired generation) gets nothing.
        drop(pending);
        a.broadcast(report(new, 8));
        b.drain();
        assert_eq!(cur.0.get(), 1);
        assert_eq!((a.id(), b.id(), a.shards()), (0, 1, 2));
    }
}
