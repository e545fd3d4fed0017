//! Per-shard upstream state: balancer, passive health and keep-alive pools for each upstream; the
//! request path changes them only through leases (lease.rs). Owned by one shard, borrowed briefly (never across an await).

pub mod balance;
pub mod lease;
pub mod passive_health;
pub mod pool;
pub mod stream;

use std::cell::RefCell;
use std::time::Instant;

use crate::config::UpstreamConfig;
use balance::Balancer;
use passive_health::PassiveHealth;
use pool::Pool;

pub struct UpstreamState {
    pub cfg: UpstreamConfig,
    pub balancer: RefCell<Balancer>,
    pub health: RefCell<PassiveHealth>,
    pub pools: Vec<RefCell<Pool>>,
    /// The connector for `https` upstreams (built with the generation, see built/tls.rs).
    pub tls: Option<crate::net::tls_client::UpstreamTls>,
}

impl UpstreamState {
    pub fn new(cfg: &UpstreamConfig, tls: Option<crate::net::tls_client::UpstreamTls>) -> Self {
        let weights: Vec<u32> = cfg.nodes.iter().map(|n| n.weight).collect();
        UpstreamState {
            // Ring points keyed by node address, so editing the node list only moves the
            // keys of the nodes that changed.
            balancer: RefCell::new(Balancer::with_node_keys(
                cfg.policy,
                &weights,
                &cfg.nodes
                    .iter()
                    .map(|n| n.host.as_str())
                    .collect::<Vec<_>>(),
            )),
            health: RefCell::new(PassiveHealth::new(
                cfg.nodes.len(),
                cfg.max_fails,
                cfg.fail_timeout,
            )),
            pools: cfg
                .nodes
                .iter()
                .map(|_| RefCell::new(Pool::new()))
                .collect(),
            cfg: cfg.clone(),
            tls,
        }
    }

    pub fn sweep(&self, now: Instant) {
        for p in &self.pools {
            p.borrow_mut().sweep(&self.cfg.pool, now);
        }
    }
}
