//! The build step: turns a validated `Config` (plain data) into what shards run — the compiled
//! router, the plugin factories, TLS configs — and applies a one-route change to a generation.
//! Runs on the loading thread (start-up, SIGHUP, admin API), never per request; does no I/O.

pub mod apis;
mod reuse;
pub mod tls;

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::plugin::consumer::{RawConsumerRef, RawGroupRef};
use crate::plugin::PluginSet;
use crate::route::{Router, ORDER_STEP};

/// A config generation ready for the shards: the data it came from and what was compiled from it.
#[derive(Debug)]
pub struct Built {
    pub cfg: Config,
    /// Shared read-only by every shard; a one-route change makes a copy-on-write update.
    pub router: Arc<Router>,
    /// Plugin factories (global and per route) and consumers.
    pub plugins: PluginSet,
    /// Per listen address (`server.listen` order), the rustls config of a TLS listener.
    pub listener_tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// The ticket keys every TLS listener shares (`None` without TLS listeners); a binary
    /// upgrade exports them to the next process.
    pub tickets: Option<Arc<crate::net::tickets::Tickets>>,
    /// Per upstream (`upstreams` order), the connector of an `https` upstream.
    pub upstream_tls: Vec<Option<crate::net::tls_client::UpstreamTls>>,
    /// Per `[[apis]]` entry (`cfg.apis` order), its parsed document.
    pub apis: Arc<[apis::BuiltApi]>,
}

/// Compiles `cfg`: the router (ties broken by route name when the admin API is on, see
/// `Config::routes`), then every plugin table and consumer credential through the registry.
/// Errors name the key path like the loader's.
pub fn build(mut cfg: Config) -> Result<Built, ConfigError> {
    // `[[apis]]`: their operations join the route table first, after the file's routes.
    let (generated, apis) = apis::expand(&mut cfg)?;
    let specs: Vec<_> = cfg
        .routes
        .by_id()
        .map(|r| r.map(|r| r.spec.clone()).unwrap_or_default())
        .collect();
    let router = if cfg.routes.name_ordered() {
        let mut ids: Vec<usize> = (0..specs.len()).collect();
        let name = |id: usize| cfg.routes.get(id).map(|r| r.name.as_str());
        ids.sort_unstable_by(|&a, &b| name(a).cmp(&name(b)));
        let mut order = vec![0; ids.len()];
        for (rank, id) in ids.into_iter().enumerate() {
            order[id] = (rank as u64 + 1).saturating_mul(ORDER_STEP);
        }
        Router::build_with(&specs, |id| order.get(id).copied().unwrap_or(0))
    } else {
        Router::build(&specs)
    }
    .map_err(|e| ConfigError::new("routes", e.to_string()))?;
    let mut plugins = plugins(&cfg).map_err(|e| apis::relocate(e, &generated))?;
    apis::attach(&mut plugins, &generated);
    let (listener_tls, tickets) = tls::listeners(&cfg)?;
    Ok(Built {
        apis: apis.into(),
        listener_tls,
        tickets,
        upstream_tls: tls::upstreams(&cfg)?,
        cfg,
        router: Arc::new(router),
        plugins,
    })
}

/// Loads, validates and builds a config file: what `ringway run` and `check` start from.
pub fn load(path: &std::path::Path) -> Result<Built, ConfigError> {
    build(crate::config::load(path)?)
}

/// Validates and builds config text (relative paths against the working directory).
pub fn from_str(text: &str) -> Result<Built, ConfigError> {
    build(crate::config::from_str(text)?)
}

fn plugins(cfg: &Config) -> Result<PluginSet, ConfigError> {
    let empty = Default::default();
    let routes: Vec<_> = cfg
        .routes
        .by_id()
        .map(|r| r.map_or(("", &empty), |r| (r.name.as_str(), &r.plugins)))
        .collect();
    let consumers: Vec<_> = cfg
        .consumers
        .iter()
        .map(|c| RawConsumerRef {
            username: &c.username,
            group: c.group.as_deref(),
            plugins: &c.plugins,
        })
        .collect();
    let groups: Vec<_> = cfg
        .consumer_groups
        .iter()
        .map(|g| RawGroupRef {
            name: &g.name,
            plugins: &g.plugins,
        })
        .collect();
    crate::plugin::registry::build(
        &cfg.global_plugins,
        &routes,
        &consumers,
        &groups,
        &cfg.upstream_ids(),
    )
}

/// `cur` with route `name` put (`Some(route JSON)`) or removed, sharing everything else;
/// `order` places it among routes of equal precedence (see `route::ORDER_STEP`). Returns the
/// new generation and the route's id, or `Ok(None)` when the change needs a full build (the
/// route defines rate-limit state, or there is no such route to remove).
pub fn with_route(
    cur: &Built,
    name: &str,
    raw: Option<serde_json::Value>,
    order: u64,
) -> Result<Option<(Built, usize)>, ConfigError> {
    let at = format!("routes/{name}");
    let Some((cfg, id)) = crate::config::with_route(&cur.cfg, name, raw)? else {
        return Ok(None);
    };
    let mut plugins = cur.plugins.share();
    let spec = match cfg.routes.get(id) {
        Some(r) => {
            let chain = crate::plugin::registry::route_chain(
                name,
                &r.plugins,
                &format!("{at}.plugins"),
                &cur.plugins,
                &cfg.upstream_ids(),
            )?;
            let Some(chain) = chain else {
                return Ok(None);
            };
            plugins.routes.put(id, chain);
            Some(&r.spec)
        }
        None => {
            plugins.routes.put(id, Arc::default());
            None
        }
    };
    let mut router = (*cur.router).clone();
    router
        .set(id, spec, order)
        .map_err(|e| ConfigError::new(&at, e.message))?;
    Ok(Some((
        Built {
            router: Arc::new(router),
            plugins,
            cfg,
            listener_tls: cur.listener_tls.clone(),
            tickets: cur.tickets.clone(),
            upstream_tls: cur.upstream_tls.clone(),
            apis: cur.apis.clone(),
        },
        id,
    )))
}
