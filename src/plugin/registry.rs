//! The compiled-in plugins by name, and the builder that turns the config's plugin tables into
//! a `PluginSet`. Runs at load time only; errors name the route (or consumer) and the plugin.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::chain::{BuildCx, FactoryRef, PluginSet};
use super::consumer::{self, RawConsumerRef};
use super::Spec;
use crate::error::ConfigError;

/// Every plugin ringway knows, by its `SPEC` (name, priority, phases, builder), each written
/// once in the plugin's own file.
pub const PLUGINS: &[&Spec] = &[
    &super::request_id::SPEC,
    &super::fault_injection::SPEC,
    &super::cors::SPEC,
    &super::ip_restriction::SPEC,
    &super::basic_auth::SPEC,
    &super::jwt_auth::SPEC,
    &super::key_auth::SPEC,
    &super::proxy_cache::SPEC,
    &super::proxy_rewrite::SPEC,
    &super::api_breaker::SPEC,
    &super::limit_conn::SPEC,
    &super::limit_count::SPEC,
    &super::limit_req::SPEC,
    &super::traffic_split::SPEC,
    &super::response_rewrite::SPEC,
    &super::http_logger::SPEC,
    &super::tcp_logger::SPEC,
];

fn spec(name: &str) -> Option<&'static Spec> {
    PLUGINS.iter().copied().find(|s| s.name == name)
}

fn chain(
    plugins: &BTreeMap<String, toml::Value>,
    at: &str,
    cx: &mut BuildCx,
) -> Result<Vec<FactoryRef>, ConfigError> {
    let mut out = Vec::with_capacity(plugins.len());
    for (name, v) in plugins {
        let path = format!("{at}.{name}");
        let Some(spec) = spec(name) else {
            let known: Vec<&str> = PLUGINS.iter().map(|s| s.name).collect();
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
        out.push((spec.priority, (spec.build)(v, &path, cx)?));
    }
    // By the SPEC's priority. Stable: equal priorities keep name order, so the order is the
    // same on every load.
    out.sort_by_key(|(priority, _)| std::cmp::Reverse(*priority));
    Ok(out.into_iter().map(|(_, f)| f).collect())
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
    workers: usize,
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
    set.endpoints = std::sync::Mutex::new(
        crate::limit::sync::mesh(workers)
            .into_iter()
            .map(Some)
            .collect(),
    );
    if let Some(d) = cx.sync_interval {
        set.sync_interval = d;
    }
    Ok(set)
}

