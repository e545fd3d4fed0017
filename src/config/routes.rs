//! A config's routes: the route table (route configs by id, ids by name), the match data, the
//! checks of one route, and the one-route change into a copy that shares everything else.

use std::collections::HashMap;
use std::sync::Arc;

use super::raw::RawRoute;
use super::{Config, ConfigError, PassHost, RouteConfig};
use crate::util::cow::{CowMap, CowVec};

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PURGE",
];

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
    /// A version the request's media type must name (`[[apis]]` with `version_by =
    /// "media_type"`): `application/vnd.acme.v2+json` or `...; version=2` in Accept or
    /// Content-Type. `v2` and `2` name the same version.
    pub media_version: Option<String>,
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

    /// Adds a route the build step made (an `[[apis]]` operation) after every other; its id,
    /// or the route it clashes with by name.
    pub fn push(&mut self, r: RouteConfig) -> Result<usize, String> {
        if self.id(&r.name).is_some() {
            return Err(format!("route name {:?} is already taken", r.name));
        }
        let id = self.slots.len();
        self.set(id, Some(r));
        Ok(id)
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
/// (`crate::built::with_route`) then updates the router and the route's plugin chain.
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
    let upstreams = cur.upstream_ids();
    let relocate = |mut e: ConfigError| {
        if let Some(rest) = e.path.strip_prefix("routes[0]") {
            e.path = format!("{at}{rest}");
        }
        e
    };
    let rc = route(0, &r, &upstreams).map_err(relocate)?;
    let id = cur.routes.id(name).unwrap_or(cur.routes.slots.len());
    next.routes.set(id, Some(rc));
    Ok(Some((next, id)))
}

pub(super) fn route(
    i: usize,
    r: &RawRoute,
    upstreams: &HashMap<String, usize>,
) -> Result<RouteConfig, ConfigError> {
    let at = |key: &str| format!("routes[{i}].{key}");
    let upstream = *upstreams.get(&r.upstream).ok_or_else(|| {
        let mut known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        known.sort_unstable();
        ConfigError::new(
            at("upstream"),
            format!("no upstream named {:?} (defined: {known:?})", r.upstream),
        )
    })?;
    if r.paths.is_empty() {
        return Err(ConfigError::new(
            at("paths"),
            "a route needs at least one path, e.g. paths = [\"/*\"]",
        ));
    }
    for (n, p) in r.paths.iter().enumerate() {
        if !p.starts_with('/') {
            return Err(ConfigError::new(
                at(&format!("paths[{n}]")),
                format!("{p:?} must start with '/'"),
            ));
        }
    }
    let mut methods = Vec::with_capacity(r.methods.len());
    for (n, m) in r.methods.iter().enumerate() {
        let up = m.to_ascii_uppercase();
        if !METHODS.contains(&up.as_str()) {
            return Err(ConfigError::new(
                at(&format!("methods[{n}]")),
                format!("unknown method {m:?}; expected one of {METHODS:?}"),
            ));
        }
        methods.push(up);
    }
    for (n, h) in r.hosts.iter().enumerate() {
        let body = h.strip_prefix("*.").unwrap_or(h);
        if body.is_empty()
            || body.contains('*')
            || !body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(ConfigError::new(
                at(&format!("hosts[{n}]")),
                format!("{h:?} is not a host name or a \"*.suffix\" wildcard"),
            ));
        }
    }
    let cond = |list: &[super::raw::RawCond], key: &str| -> Result<Vec<Cond>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(n, c)| {
                if c.name.is_empty() {
                    Err(ConfigError::new(
                        at(&format!("{key}[{n}].name")),
                        "must not be empty",
                    ))
                } else {
                    Ok(Cond {
                        name: c.name.clone(),
                        value: c.value.clone(),
                    })
                }
            })
            .collect()
    };
    let headers = cond(&r.headers, "headers")?;
    let args = cond(&r.args, "args")?;
    if let Some(p) = &r.strip_prefix {
        if !p.starts_with('/') || p.len() < 2 {
            return Err(ConfigError::new(
                at("strip_prefix"),
                format!("{p:?} must start with '/' and name a prefix such as \"/api\""),
            ));
        }
    }
    let pass_host = match (r.pass_host.as_deref(), &r.upstream_host) {
        (None | Some("pass"), None) => PassHost::Pass,
        (Some("node"), None) => PassHost::Node,
        (Some("rewrite"), Some(h)) if !h.is_empty() => PassHost::Rewrite(h.clone()),
        (Some("rewrite"), _) => {
            return Err(ConfigError::new(
                at("upstream_host"),
                "pass_host = \"rewrite\" needs a non-empty upstream_host",
            ))
        }
        (None | Some("pass") | Some("node"), Some(_)) => {
            return Err(ConfigError::new(
                at("upstream_host"),
                "only used with pass_host = \"rewrite\"",
            ))
        }
        (Some(other), _) => {
            return Err(ConfigError::new(
                at("pass_host"),
                format!("expected \"pass\", \"node\" or \"rewrite\", got {other:?}"),
            ))
        }
    };
    let hsts = match &r.hsts {
        None => None,
        Some(h) => Some(super::tls::hsts_value(&at("hsts"), h)?),
    };
    Ok(RouteConfig {
        name: r.name.clone(),
        upstream,
        strip_prefix: r.strip_prefix.clone(),
        pass_host,
        websocket: r.enable_websocket.unwrap_or(true),
        hsts,
        spec: RouteSpec {
            hosts: r.hosts.clone(),
            paths: r.paths.clone(),
            methods,
            headers,
            args,
            priority: r.priority,
            media_version: None,
        },
        plugins: r.plugins.clone(),
    })
}
