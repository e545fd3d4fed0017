//! The compiled-in plugins by name, and the builder that turns the config's plugin tables into
//! a `PluginSet`. Runs at load time only; errors name the route (or consumer) and the plugin.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::chain::{BuildCx, FactoryRef, PluginSet};
use super::consumer::{self, RawConsumerRef};
use crate::error::ConfigError;

type Builder = fn(&toml::Value, &str, &mut BuildCx) -> Result<FactoryRef, ConfigError>;

/// Every plugin ringway knows, with its APISIX priority (higher runs first).
pub const PLUGINS: &[(&str, i32, Builder)] = &[
    ("request-id", 12015, super::request_id::factory),
    ("fault-injection", 11000, super::fault_injection::factory),
    ("cors", 4000, super::cors::factory),
    ("ip-restriction", 3000, super::ip_restriction::factory),
    ("basic-auth", 2520, super::basic_auth::factory),
    ("jwt-auth", 2510, super::jwt_auth::factory),
    ("key-auth", 2500, super::key_auth::factory),
    ("proxy-cache", 1085, super::proxy_cache::factory),
    ("proxy-rewrite", 1008, super::proxy_rewrite::factory),
    ("api-breaker", 1005, super::api_breaker::factory),
    ("limit-conn", 1003, super::limit_conn::factory),
    ("limit-count", 1002, super::limit_count::factory),
    ("limit-req", 1001, super::limit_req::factory),
    ("traffic-split", 966, super::traffic_split::factory),
    ("response-rewrite", 899, super::response_rewrite::factory),
    ("http-logger", 410, super::http_logger::factory),
    ("tcp-logger", 405, super::tcp_logger::factory),
];

fn builder(name: &str) -> Option<Builder> {
    PLUGINS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, b)| *b)
}

fn chain(
    plugins: &BTreeMap<String, toml::Value>,
    at: &str,
    cx: &mut BuildCx,
) -> Result<Vec<FactoryRef>, ConfigError> {
    let mut out = Vec::with_capacity(plugins.len());
    for (name, v) in plugins {
        let path = format!("{at}.{name}");
        let Some(b) = builder(name) else {
            let known: Vec<&str> = PLUGINS.iter().map(|(n, _, _)| *n).collect();
            return Err(ConfigError::new(
                path,
                format!("unknown plugin {name:?}; known plugins: {known:?}"),
            ));
        };
        if !v.is_table() {
            return Err(ConfigError::new(
                path,
                "expected a table, e.g. [routes.plugins.key-auth]",
            ));
        }
        out.push(b(v, &path, cx)?);
    }
    // Stable sort: equal priorities keep name order, so the order is the same on every load.
    out.sort_by_key(|f| std::cmp::Reverse(f.priority()));
    Ok(out)
}

/// One route's chain on top of an existing set (the admin API's one-route change). `None`
/// when the chain defines rate-limit state, which is numbered across the whole set and so
/// needs a full build.
pub fn route_chain(
    name: &str,
    plugins: &BTreeMap<String, toml::Value>,
    at: &str,
    set: &PluginSet,
    upstreams: &HashMap<String, usize>,
) -> Result<Option<Arc<[FactoryRef]>>, ConfigError> {
    let mut cx = BuildCx {
        upstreams,
        consumers: set.consumers.clone(),
        limiters: Vec::new(),
        groups: HashMap::new(),
        sync_interval: None,
        owner: format!("route {name:?}"),
    };
    let out = chain(plugins, at, &mut cx)?;
    let standalone = cx.limiters.is_empty() && cx.groups.is_empty() && cx.sync_interval.is_none();
    Ok(standalone.then(|| out.into()))
}

/// Builds every plugin factory and the consumer table from the config's raw tables.
pub fn build(
    global: &BTreeMap<String, toml::Value>,
    routes: &[(&str, &BTreeMap<String, toml::Value>)],
    consumers: &[RawConsumerRef<'_>],
    upstreams: &HashMap<String, usize>,
) -> Result<PluginSet, ConfigError> {
    let consumers = Arc::new(consumer::build(consumers)?);
    let mut cx = BuildCx {
        upstreams,
        consumers: consumers.clone(),
        limiters: Vec::new(),
        groups: HashMap::new(),
        sync_interval: None,
        owner: "global_plugins".into(),
    };
    let global = chain(global, "global_plugins", &mut cx)?;
    let mut per_route = Vec::with_capacity(routes.len());
    for (i, (name, r)) in routes.iter().enumerate() {
        cx.owner = format!("route {name:?}");
        per_route.push(chain(r, &format!("routes[{i}].plugins"), &mut cx)?.into());
    }
    let mut set = PluginSet {
        global,
        routes: per_route.into_iter().collect(),
        consumers,
        limiters: cx.limiters,
        ..PluginSet::default()
    };
    if let Some(d) = cx.sync_interval {
        set.sync_interval = d;
    }
    Ok(set)
}
