//! A config's route table (route configs by id, ids by name), the route match data, and the
//! one-route change: validate one route into a copy of a config that shares everything else.

use std::collections::HashMap;
use std::sync::Arc;

use super::raw::RawRoute;
use super::{Config, ConfigError, RouteConfig};
use crate::util::cow::{CowMap, CowVec};

/// A validated route as the config layer hands it over. Route id = index in the spec slice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSpec {
    /// Empty = any host. "api.example.com" exact, "*.example.com" any strict subdomain
    /// (any depth, not example.com itself). Case-insensitive.
    pub hosts: Vec<String>,
    /// "/exact", "/users/{id}" ({param} = one non-empty segment), "/api/*" (matches "/api/"
    /// and below, not "/api"), "/*". Empty = any path.
    pub paths: Vec<String>,
    /// Empty = any method.
    pub methods: Vec<String>,
    /// All must hold. Names are case-insensitive.
    pub headers: Vec<Cond>,
    /// Query-string arguments; all must hold. Raw (not percent-decoded) comparison.
    pub args: Vec<Cond>,
    /// Higher wins, before any specificity rule.
    pub priority: i32,
}

/// `value` None = present (any value, even empty); Some = exact equality of the first occurrence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cond {
    pub name: String,
    pub value: Option<String>,
}

/// Route configs by route id (the ids the router returns). Ids of removed routes stay empty.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    slots: CowVec<Option<Arc<RouteConfig>>>,
    by_name: CowMap<usize>,
    live: usize,
    /// Ties between routes are broken in name order (the admin API is on: see `validate`), so
    /// a one-route change can place a route by name and rank ties as a full rebuild would.
    name_ordered: bool,
}

impl RouteTable {
    pub(super) fn new(routes: Vec<RouteConfig>, name_ordered: bool) -> RouteTable {
        let mut t = RouteTable {
            name_ordered,
            ..RouteTable::default()
        };
        for (i, r) in routes.into_iter().enumerate() {
            t.set(i, Some(r));
        }
        t
    }

    #[inline]
    pub fn get(&self, id: usize) -> Option<&RouteConfig> {
        self.slots.get(id)?.as_deref()
    }

    pub fn name_ordered(&self) -> bool {
        self.name_ordered
    }

    /// The id of the route named `name`.
    pub fn id(&self, name: &str) -> Option<usize> {
        self.by_name.get(name.as_bytes()).copied()
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Every route, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &RouteConfig> + '_ {
        self.slots.iter().flatten().map(|r| &**r)
    }

    /// Every id up to the highest in use, with its route if it has one.
    pub fn by_id(&self) -> impl Iterator<Item = Option<&RouteConfig>> + '_ {
        self.slots.iter().map(|r| r.as_deref())
    }

    fn set(&mut self, id: usize, r: Option<RouteConfig>) {
        if let Some(old) = self.get(id) {
            let name = old.name.clone();
            self.by_name.remove(name.as_bytes());
            self.live -= 1;
        }
        if let Some(r) = &r {
            self.by_name.insert(r.name.as_bytes().into(), id);
            self.live += 1;
        }
        self.slots.put(id, r.map(Arc::new));
    }
}

/// A copy of `cur` with route `name` put (`Some(route JSON)`) or removed, sharing everything
/// else with `cur` copy-on-write. Returns the new config and the route's id, or `Ok(None)` when
/// there is no such route to remove. Errors name `routes/<name>.<key>`. The build step
/// (`crate::build::with_route`) then updates the router and the route's plugin chain.
pub fn with_route(
    cur: &Config,
    name: &str,
    raw: Option<serde_json::Value>,
) -> Result<Option<(Config, usize)>, ConfigError> {
    let at = format!("routes/{name}");
    let mut next = cur.clone();
    let Some(raw) = raw else {
        let Some(id) = cur.routes.id(name) else {
            return Ok(None);
        };
        next.routes.set(id, None);
        return Ok(Some((next, id)));
    };
    let r: RawRoute = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            at.clone()
        } else {
            format!("{at}.{path}")
        };
        ConfigError::new(path, e.into_inner().to_string())
    })?;
    if r.name != name {
        return Err(ConfigError::new(
            format!("{at}.name"),
            format!("{:?} differs from the route's id {name:?}", r.name),
        ));
    }
    let upstreams: HashMap<String, usize> = cur
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| (u.name.clone(), i))
        .collect();
    let relocate = |mut e: ConfigError| {
        if let Some(rest) = e.path.strip_prefix("routes[0]") {
            e.path = format!("{at}{rest}");
        }
        e
    };
    let rc = super::validate::route(0, &r, &upstreams).map_err(relocate)?;
    let id = cur.routes.id(name).unwrap_or(cur.routes.slots.len());
    next.routes.set(id, Some(rc));
    Ok(Some((next, id)))
}
