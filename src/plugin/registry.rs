//! The compiled-in plugins (their `SPEC`s), and the builder that turns the config's plugin tables
//! and consumers into a `PluginSet`. Runs at load time only; errors name the route (or consumer) and the plugin.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::chain::{BuildCx, FactoryRef, PluginSet};
use super::consumer::{Consumer, Consumers, RawConsumerRef, RawGroupRef};
use super::Spec;
use crate::error::ConfigError;

/// Every plugin ringway knows, by its `SPEC` (name, priority, phases, builder), each written
/// once in the plugin's own file.
pub const PLUGINS: &[&Spec] = &[
    &super::request_id::SPEC,
    &super::fault_injection::SPEC,
    &super::cors::SPEC,
    &super::ip_restriction::SPEC,
    &super::openid_connect::SPEC,
    &super::basic_auth::SPEC,
    &super::jwt_auth::SPEC,
    &super::key_auth::SPEC,
    &super::consumer_restriction::SPEC,
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
    &super::syslog::SPEC,
];

fn spec(name: &str) -> Option<&'static Spec> {
    PLUGINS.iter().copied().find(|s| s.name == name)
}

fn chain(
    plugins: &BTreeMap<String, toml::Value>,
    at: &str,
    cx: &mut BuildCx,
) -> Result<Vec<FactoryRef>, ConfigError> {
    let tables = plugins
        .iter()
        .map(|(n, v)| (n.as_str(), v, format!("{at}.{n}")));
    Ok(sorted(tables, cx)?.into_iter().map(|(_, f)| f).collect())
}

/// Factories for (name, table, key path) entries, by the SPEC's priority. Stable: equal
/// priorities keep input order, so the order is the same on every load.
fn sorted<'v>(
    tables: impl Iterator<Item = (&'v str, &'v toml::Value, String)>,
    cx: &mut BuildCx,
) -> Result<Vec<(i32, FactoryRef)>, ConfigError> {
    let mut out = Vec::new();
    for (name, v, path) in tables {
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
    out.sort_by_key(|(priority, _)| std::cmp::Reverse(*priority));
    Ok(out)
}

/// Plugins that identify a consumer: credentials on a consumer, never a consumer's policy.
const AUTH: &[&str] = &["key-auth", "basic-auth", "jwt-auth", "openid-connect"];

/// Every consumer's policy chain (README "Consumer groups"): its group's plugins, the
/// consumer's own replacing a group plugin of the same name. A group's factories are built once
/// and shared by its consumers, so a group's limit-count counts for the whole group.
fn consumer_chains(
    consumers: &[RawConsumerRef<'_>],
    groups: &[RawGroupRef<'_>],
    cx: &mut BuildCx,
) -> Result<Vec<Arc<[FactoryRef]>>, ConfigError> {
    let mut built: HashMap<&str, Vec<(i32, FactoryRef)>> = HashMap::new();
    for (j, g) in groups.iter().enumerate() {
        let at = format!("consumer_groups[{j}]");
        if g.name.is_empty() || built.contains_key(g.name) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("{:?}: group names must be non-empty and unique", g.name),
            ));
        }
        if let Some(n) = g.plugins.keys().find(|n| AUTH.contains(&n.as_str())) {
            return Err(ConfigError::new(
                format!("{at}.plugins.{n}"),
                "auth plugins cannot be set on a consumer group; credentials go on its consumers",
            ));
        }
        cx.owner = format!("consumer group {:?}", g.name);
        let tables = g
            .plugins
            .iter()
            .map(|(n, v)| (n.as_str(), v, format!("{at}.plugins.{n}")));
        built.insert(g.name, sorted(tables, cx)?);
    }
    let mut out = Vec::with_capacity(consumers.len());
    for (i, c) in consumers.iter().enumerate() {
        let group = match c.group {
            None => &[][..],
            Some(g) => built.get(g).map(Vec::as_slice).ok_or_else(|| {
                ConfigError::new(
                    format!("consumers[{i}].group"),
                    format!(
                        "no consumer group named {g:?} (defined: {:?})",
                        groups.iter().map(|g| g.name).collect::<Vec<_>>()
                    ),
                )
            })?,
        };
        cx.owner = format!("consumer {:?}", c.username);
        let own = sorted(
            c.plugins
                .iter()
                .filter(|(n, _)| !AUTH.contains(&n.as_str()))
                .map(|(n, v)| (n.as_str(), v, format!("consumers[{i}].plugins.{n}"))),
            cx,
        )?;
        let mut chain: Vec<(i32, FactoryRef)> = group
            .iter()
            .filter(|(_, f)| !own.iter().any(|(_, o)| o.name() == f.name()))
            .cloned()
            .collect();
        chain.extend(own);
        chain.sort_by_key(|(priority, _)| std::cmp::Reverse(*priority));
        out.push(chain.into_iter().map(|(_, f)| f).collect());
    }
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
        fleet: Vec::new(),
        owner: format!("route {name:?}"),
    };
    let out = chain(plugins, at, &mut cx)?;
    let standalone = cx.limiters.is_empty()
        && cx.groups.is_empty()
        && cx.sync_interval.is_none()
        && cx.fleet.is_empty();
    Ok(standalone.then(|| out.into()))
}

/// Builds every plugin factory and the consumer table from the config's raw tables.
pub fn build(
    global: &BTreeMap<String, toml::Value>,
    routes: &[(&str, &BTreeMap<String, toml::Value>)],
    raw_consumers: &[RawConsumerRef<'_>],
    groups: &[RawGroupRef<'_>],
    upstreams: &HashMap<String, usize>,
) -> Result<PluginSet, ConfigError> {
    let consumers = Arc::new(self::consumers(raw_consumers)?);
    let mut cx = BuildCx {
        upstreams,
        consumers: consumers.clone(),
        limiters: Vec::new(),
        groups: HashMap::new(),
        sync_interval: None,
        fleet: Vec::new(),
        owner: "global_plugins".into(),
    };
    let global = chain(global, "global_plugins", &mut cx)?;
    let mut per_route = Vec::with_capacity(routes.len());
    for (i, (name, r)) in routes.iter().enumerate() {
        cx.owner = format!("route {name:?}");
        per_route.push(chain(r, &format!("routes[{i}].plugins"), &mut cx)?.into());
    }
    let consumer_chains = consumer_chains(raw_consumers, groups, &mut cx)?;
    let mut fleet = vec![None; cx.limiters.len()];
    for (id, spec) in cx.fleet {
        if let Some(slot) = fleet.get_mut(id as usize) {
            *slot = Some(spec);
        }
    }
    let mut set = PluginSet {
        global,
        routes: per_route.into_iter().collect(),
        consumer_chains: consumer_chains.into(),
        consumers,
        limiters: cx.limiters,
        fleet,
        ..PluginSet::default()
    };
    if let Some(d) = cx.sync_interval {
        set.sync_interval = d;
    }
    Ok(set)
}

/// The consumer table from the config's `[[consumers]]`: each credential is parsed by its auth
/// plugin, and names and credentials must be unique. Other plugins are the consumer's policy
/// (`consumer_chains`).
pub fn consumers(raw: &[RawConsumerRef<'_>]) -> Result<Consumers, ConfigError> {
    let mut c = Consumers::default();
    let mut names = HashMap::new();
    for (i, r) in raw.iter().enumerate() {
        let at = format!("consumers[{i}]");
        if r.username.is_empty()
            || !r
                .username
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(ConfigError::new(
                format!("{at}.username"),
                format!(
                    "{:?} must be non-empty letters, digits, '_', '-' or '.'",
                    r.username
                ),
            ));
        }
        if names.insert(r.username.to_string(), i).is_some() {
            return Err(ConfigError::new(
                format!("{at}.username"),
                format!(
                    "duplicate consumer {:?}; usernames must be unique",
                    r.username
                ),
            ));
        }
        c.list.push(Consumer {
            username: r.username.to_string(),
            group: r.group.map(str::to_string),
            key_hash: super::util::consumer_key_hash(r.username),
        });
        for (name, v) in r.plugins {
            let path = format!("{at}.plugins.{name}");
            match name.as_str() {
                "key-auth" => {
                    let key = super::key_auth::consumer_key(v, &path)?;
                    if c.keys.insert(key, i).is_some() {
                        return Err(ConfigError::new(
                            format!("{path}.key"),
                            "another consumer already uses this key; keys must be unique",
                        ));
                    }
                }
                "basic-auth" => {
                    let (user, pass) = super::basic_auth::consumer_cred(v, &path)?;
                    if c.basic.insert(user, (pass, i)).is_some() {
                        return Err(ConfigError::new(
                            format!("{path}.username"),
                            "another consumer already uses this username",
                        ));
                    }
                }
                "jwt-auth" => {
                    let (key, cred) = super::jwt_auth::consumer_cred(v, &path)?;
                    if c.jwt.insert(key, (cred, i)).is_some() {
                        return Err(ConfigError::new(
                            format!("{path}.key"),
                            "another consumer already uses this key",
                        ));
                    }
                }
                "openid-connect" => {
                    return Err(ConfigError::new(
                        path,
                        "openid-connect is configured on routes; its `consumer_by` names consumers",
                    ))
                }
                // Policy plugins (limit-count, ...): built with the consumer chains.
                _ => {}
            }
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::super::phase;
    use super::super::testkit::{self, Setup, MINIMAL};
    use super::*;

    /// (name, priority) rows of README's plugin table, in table order.
    fn readme_table() -> Vec<(String, i32)> {
        let readme = include_str!("../../README.md");
        let mut rows = readme
            .lines()
            .skip_while(|l| !l.starts_with("| plugin | priority |"))
            .skip(2);
        let mut out = Vec::new();
        for line in rows.by_ref().take_while(|l| l.starts_with('|')) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let priority = cells[2]
                .parse()
                .unwrap_or_else(|_| panic!("README row {line:?}: priority is not a number"));
            out.push((cells[1].to_string(), priority));
        }
        out
    }

    #[test]
    fn readme_table_lists_exactly_the_registry() {
        let registry: Vec<(String, i32)> = PLUGINS
            .iter()
            .map(|s| (s.name.to_string(), s.priority))
            .collect();
        assert_eq!(readme_table(), registry);
        // Prose that names a priority must agree too, e.g. "`proxy-cache` (priority 1085)".
        let readme = include_str!("../../README.md");
        for s in PLUGINS {
            let at = format!("`{}` (priority ", s.name);
            for (i, _) in readme.match_indices(&at) {
                let rest = &readme[i + at.len()..];
                let n = &rest[..rest.find(')').unwrap_or(0)];
                assert_eq!(n, s.priority.to_string(), "README: {at}{n})");
            }
        }
    }

    #[test]
    fn registry_is_in_run_order_with_unique_names() {
        for w in PLUGINS.windows(2) {
            assert!(
                w[0].priority > w[1].priority,
                "{} before {}",
                w[0].name,
                w[1].name
            );
        }
        let minimal: Vec<&str> = MINIMAL.iter().map(|(n, _)| *n).collect();
        let names: Vec<&str> = PLUGINS.iter().map(|s| s.name).collect();
        assert_eq!(minimal, names, "testkit::MINIMAL covers every plugin");
        for s in PLUGINS {
            assert!(s.phases != 0 && s.phases & !phase::ALL == 0, "{}", s.name);
        }
    }

    /// Factories and instances answer from their own SPEC; the chain keeps its mask.
    #[test]
    fn every_plugin_reports_its_spec() {
        for (spec, (name, body)) in PLUGINS.iter().zip(MINIMAL) {
            let gw = testkit::gateway(&format!("[{name}]\n{body}"));
            let f = &gw.set.routes.get(testkit::ROUTE).unwrap()[0];
            assert_eq!((f.name(), f.priority()), (spec.name, spec.priority));
            let links = gw.links();
            assert_eq!(links.len(), 1);
            let (mask, p) = &links[0];
            assert_eq!(p.name(), spec.name);
            assert_eq!(p.phases(), spec.phases, "{name}: instance phases");
            assert_eq!(*mask, spec.phases, "{name}: chain mask");
        }
    }

    #[test]
    fn chain_runs_global_first_then_by_spec_priority() {
        let gw = Setup::route(
            "[tcp-logger]\nhost = \"127.0.0.1\"\nport = 9\n\
             [limit-count]\ncount = 1\ntime_window = 1\n\
             [key-auth]\n\
             [request-id]\n",
        )
        .global("[response-rewrite]\n[cors]\n")
        .build()
        .unwrap();
        let order: Vec<&str> = gw.links().iter().map(|(_, p)| p.name()).collect();
        assert_eq!(
            order,
            [
                "cors",
                "response-rewrite",
                "request-id",
                "key-auth",
                "limit-count",
                "tcp-logger"
            ]
        );
    }

    #[test]
    fn unknown_plugin_and_non_table_are_refused_with_their_path() {
        let e = testkit::config_error("[no-such-plugin]\n");
        assert_eq!(e.path, "routes[0].plugins.no-such-plugin");
        assert!(e.message.contains("key-auth"), "{}", e.message);
        let e = testkit::config_error("key-auth = 1\n");
        assert_eq!(e.path, "routes[0].plugins.key-auth");
    }
}
