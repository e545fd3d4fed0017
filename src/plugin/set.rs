//! The plugin configuration of one load, validated: factories (global, per route, per consumer),
//! limiter specs and sync settings (`PluginSet`), and what builders share (`BuildCx`). Config-time
//! only: builds no shard state and runs no phase (chain.rs does).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::consumer::Consumers;
use super::PluginFactory;
use crate::limit::bucket::BucketParams;
use crate::limit::count::CountParams;
use crate::limit::fleet::FleetSpec;
use crate::util::cow::CowVec;

pub type FactoryRef = Arc<dyn PluginFactory>;

/// What a limiter id stands for; each shard builds one state machine per id.
#[derive(Debug, Clone)]
pub enum LimiterSpec {
    Count(CountParams),
    Req(BucketParams),
    Conn { max_keys: usize },
}

/// All plugin configuration, validated and ready to build on each shard.
pub struct PluginSet {
    /// `[global_plugins]`, run for every route before the route's own.
    pub global: Vec<FactoryRef>,
    /// Per route id (as in `Config::routes`), sorted by priority; shared between generations.
    pub routes: CowVec<Arc<[FactoryRef]>>,
    /// Per consumer (index into `consumers.list`): its policy plugins, group's and own merged
    /// (registry::consumer_chains), sorted by priority; empty for most.
    pub consumer_chains: Arc<[Arc<[FactoryRef]>]>,
    pub consumers: Arc<Consumers>,
    pub limiters: Vec<LimiterSpec>,
    /// How often shards exchange limit state.
    pub sync_interval: Duration,
    /// Node-wide time origin, so every shard agrees on window boundaries; also names the
    /// limiter set in sync reports.
    pub epoch: Instant,
    /// Wall-clock ms at `epoch`: cluster-wide limiters number windows from the Unix epoch.
    pub wall_ms: u64,
    /// Per limiter id: what makes it cluster-wide, if it is (`policy = "redis"`).
    pub fleet: Vec<Option<Arc<FleetSpec>>>,
}

impl Default for PluginSet {
    fn default() -> Self {
        PluginSet {
            global: Vec::new(),
            routes: CowVec::default(),
            consumer_chains: Arc::new([]),
            consumers: Arc::new(Consumers::default()),
            limiters: Vec::new(),
            sync_interval: Duration::from_millis(20),
            epoch: Instant::now(),
            wall_ms: 0,
            fleet: Vec::new(),
        }
        .clocked()
    }
}

impl PluginSet {
    /// A copy for the next generation of a one-route change: factories, consumers and limiter
    /// specs are shared; shards keep the limit state they have (`ShardPlugins::with_route`).
    pub fn share(&self) -> PluginSet {
        PluginSet {
            global: self.global.clone(),
            routes: self.routes.clone(),
            consumer_chains: self.consumer_chains.clone(),
            consumers: self.consumers.clone(),
            limiters: self.limiters.clone(),
            sync_interval: self.sync_interval,
            epoch: self.epoch,
            wall_ms: self.wall_ms,
            fleet: self.fleet.clone(),
        }
    }

    /// Sets `wall_ms` from `epoch`, once per set, so every shard numbers windows alike.
    fn clocked(mut self) -> PluginSet {
        let since = self.epoch.elapsed().as_millis() as u64;
        self.wall_ms = crate::limit::fleet::wall_ms_now().saturating_sub(since);
        self
    }
}

impl std::fmt::Debug for PluginSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |v: &[FactoryRef]| v.iter().map(|p| p.name()).collect::<Vec<_>>();
        f.debug_struct("PluginSet")
            .field("global", &names(&self.global))
            .field(
                "routes",
                &self.routes.iter().map(|r| names(r)).collect::<Vec<_>>(),
            )
            .field("consumers", &self.consumers)
            .field("limiters", &self.limiters.len())
            .finish()
    }
}

/// Config-time state shared by the plugin builders of one load.
pub struct BuildCx<'a> {
    pub upstreams: &'a HashMap<String, usize>,
    pub consumers: Arc<Consumers>,
    pub limiters: Vec<LimiterSpec>,
    /// limit-count `group` -> (limiter id, the config it was defined with).
    pub groups: HashMap<String, (u32, String)>,
    pub sync_interval: Option<Duration>,
    /// Cluster-wide limiters by id (`policy = "redis"`).
    pub fleet: Vec<(u32, Arc<FleetSpec>)>,
    /// Whose plugin table is being built: `route "name"` or `global_plugins`. Unlike the table's
    /// path (`routes[i]`), it does not change when routes are reordered.
    pub owner: String,
}

impl BuildCx<'_> {
    pub fn add_limiter(&mut self, spec: LimiterSpec) -> u32 {
        self.limiters.push(spec);
        (self.limiters.len() - 1) as u32
    }

    /// Shards exchange state at the shortest interval any limiter asks for.
    pub fn want_sync(&mut self, d: Duration) {
        self.sync_interval = Some(self.sync_interval.map_or(d, |s| s.min(d)));
    }
}
