//! Cross-shard limit sync: one crossbeam channel per shard, fed by every other shard on its
//! sync tick. Never used on the request path; only the per-shard sync task sends and receives.

use crossbeam_channel::{unbounded, Receiver, Sender};

/// One key's state as one shard sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub key: u64,
    /// Admitted in the window (limit-count) or in flight (limit-conn).
    pub count: u64,
    /// How many this shard may admit in the window (its local share incl. `count`).
    pub alloc: u64,
    /// Attempts in the last sync interval, admitted or not.
    pub demand: u32,
}

/// A batch from one shard for one limiter.
#[derive(Debug, Clone)]
pub struct Report {
    pub limiter: u32,
    pub from: u16,
    pub window: u64,
    pub items: Vec<Item>,
}

/// A shard's end of the sync mesh.
pub struct Endpoint {
    pub id: usize,
    pub shards: usize,
    pub rx: Receiver<Report>,
    /// Senders to every shard, `None` at our own index.
    pub peers: Vec<Option<Sender<Report>>>,
}

impl Endpoint {
    /// A mesh of one (tests, or a single shard): nothing to send.
    pub fn solo() -> Endpoint {
        let (_tx, rx) = unbounded();
        Endpoint {
            id: 0,
            shards: 1,
            rx,
            peers: vec![None],
        }
    }

    pub fn broadcast(&self, r: Report) {
        let mut left = self.peers.iter().flatten().count();
        let mut r = Some(r);
        for tx in self.peers.iter().flatten() {
            left -= 1;
            // The last peer gets the original; the others a copy.
            let msg = if left == 0 { r.take() } else { r.clone() };
            if let Some(m) = msg {
                // A shard that has exited has dropped its receiver; nothing to do.
                let _ = tx.send(m);
            }
        }
    }
}

/// One endpoint per shard, each able to reach all others.
pub fn mesh(n: usize) -> Vec<Endpoint> {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| unbounded::<Report>()).unzip();
    rxs.into_iter()
        .enumerate()
        .map(|(id, rx)| Endpoint {
            id,
            shards: n,
            rx,
            peers: txs
                .iter()
                .enumerate()
                .map(|(j, tx)| (j != id).then(|| tx.clone()))
                .collect(),
        })
        .collect()
}
