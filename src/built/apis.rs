//! `[[apis]]` in the build step: each API's OpenAPI document parsed, its validators compiled,
//! and its operations added to the route table (plus one 405 route per described path), with
//! the internal plugins those routes carry. Runs at load; errors name `apis[i]` and the pointer.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::apis::{http_date, ApiConfig, Validate, VersionBy};
use crate::config::{Cond, Config, ConfigError, PassHost, RouteConfig, RouteSpec};
use crate::openapi::{self, Compiled, Document};
use crate::plugin::chain::FactoryRef;
use crate::plugin::openapi::{
    Deprecation, MethodNotAllowed, Mode, NotDescribed, Notice, Validation,
};
use crate::plugin::PluginSet;

/// A route made from an API, and the internal plugin it gets on top of its tables.
pub struct Generated {
    pub route: usize,
    /// Index into `Config::apis`.
    pub api: usize,
    /// The operation's name, or `405 /path`.
    pub what: String,
    pub extra: Vec<FactoryRef>,
}

/// One API's document as built (kept by `Built` for the admin listener's documentation).
#[derive(Debug)]
pub struct BuiltApi {
    pub doc: Arc<Document>,
    /// The names of the routes made from it (its per-API series sum theirs).
    pub routes: Arc<[Box<str>]>,
    /// Its validators (`validate` not off); held so the next generation can reuse them.
    pub compiled: Option<Arc<Compiled>>,
}

/// An API's document parsed and its routes made, before they join a config.
pub struct Expanded {
    pub doc: Arc<Document>,
    pub compiled: Option<Arc<Compiled>>,
    pub routes: Vec<(RouteConfig, Vec<FactoryRef>, String)>,
}

/// Where an API's routes sit: the path prefixes (base path, version segment) and the header
/// or media-type condition that picks the version.
struct Placement {
    prefixes: Vec<String>,
    conds: Vec<Cond>,
    media: Option<String>,
}

fn placement(a: &ApiConfig) -> Placement {
    let v = a.version.clone().unwrap_or_default();
    match &a.version_by {
        VersionBy::Label => Placement {
            prefixes: vec![a.base_path.clone()],
            conds: Vec::new(),
            media: None,
        },
        VersionBy::Path => {
            let mut prefixes = vec![format!("{}/{v}", a.base_path)];
            if a.default {
                prefixes.push(a.base_path.clone());
            }
            Placement {
                prefixes,
                conds: Vec::new(),
                media: None,
            }
        }
        VersionBy::Header(h) => Placement {
            prefixes: vec![a.base_path.clone()],
            conds: if a.default {
                Vec::new()
            } else {
                vec![Cond {
                    name: h.clone(),
                    value: Some(v),
                }]
            },
            media: None,
        },
        VersionBy::MediaType => Placement {
            prefixes: vec![a.base_path.clone()],
            conds: Vec::new(),
            media: (!a.default).then_some(v),
        },
    }
}

/// The Deprecation / Sunset / Link headers of a deprecated or sunsetting API: set first thing
/// (so the gateway's own answers carry them too) and again last in the response phase.
fn deprecation(a: &ApiConfig, successor: Option<&str>) -> Vec<FactoryRef> {
    let mut headers = Vec::new();
    if let Some(t) = a.deprecated {
        headers.push(("Deprecation", format!("@{t}")));
    }
    if let Some(t) = a.sunset {
        headers.push(("Sunset", http_date(t)));
    }
    if headers.is_empty() {
        return Vec::new();
    }
    if let Some(s) = a.successor.as_deref().or(successor) {
        headers.push(("Link", format!("<{s}>; rel=\"successor-version\"")));
    }
    let headers: Arc<[(&'static str, String)]> = headers.into();
    vec![
        Arc::new(Notice {
            headers: headers.clone(),
        }),
        Arc::new(Deprecation {
            api: a.id().into(),
            headers,
        }),
    ]
}

/// Parses `a`'s document (error paths `apis[i].spec: #/...`) and makes its routes;
/// `successor` is the default Link target of a deprecated version.
pub fn expand_one(
    i: usize,
    a: &ApiConfig,
    successor: Option<&str>,
) -> Result<Expanded, ConfigError> {
    let place = placement(a);
    let notice = deprecation(a, successor);
    let at = format!("apis[{i}].spec");
    // An unchanged document keeps the previous generation's parse and validators.
    let (doc, compiled) = super::reuse::load(&a.text, a.validate != Validate::Off)
        .map_err(|e| ConfigError::new(&at, e.to_string()))?;
    let api_name: Arc<str> = a.id().into();
    let mode = if a.validate == Validate::Monitor {
        Mode::Monitor
    } else {
        Mode::Enforce
    };
    let mut routes = Vec::with_capacity(doc.ops.len() + doc.ops.len() / 2);
    // Per route path (as the router sees it: parameter names do not matter), its methods.
    let mut by_path: BTreeMap<String, (String, Vec<&'static str>)> = BTreeMap::new();
    for (k, op) in doc.ops.iter().enumerate() {
        let paths: Vec<String> = place
            .prefixes
            .iter()
            .map(|p| format!("{p}{}", op.route_path))
            .collect();
        let path = paths[0].clone();
        let mut plugins = a.plugins.clone();
        for (name, v) in &op.plugins {
            let t = toml::Value::try_from(v).map_err(|e| {
                ConfigError::new(
                    &at,
                    format!(
                        "{}/x-ringway-plugins/{}: {e}",
                        op.pointer,
                        openapi::pointer::escape(name)
                    ),
                )
            })?;
            plugins.insert(name.clone(), t);
        }
        let mut extra: Vec<FactoryRef> = notice.to_vec();
        if let Some(c) = &compiled {
            extra.push(Arc::new(Validation {
                api: api_name.clone(),
                op: c.ops[k].clone(),
                mode,
                max_body: a.max_body_bytes,
            }));
        }
        let e = by_path
            .entry(shape_key(&path))
            .or_insert_with(|| (op.route_path.clone(), Vec::new()));
        if !e.1.contains(&op.method) {
            e.1.push(op.method);
        }
        let name = format!("{api_name}.{}", op.name);
        let methods = vec![op.method.to_string()];
        routes.push((
            route(a, &place, name, paths, methods, plugins),
            extra,
            op.name.clone(),
        ));
    }
    // A route the gateway answers itself (405, 404), with the version's notice.
    let mut answer = |paths: Vec<String>, what: String, by: FactoryRef| {
        let mut extra: Vec<FactoryRef> = vec![by];
        extra.extend(notice.iter().cloned());
        let name = format!("{api_name}: {what}");
        routes.push((
            route(a, &place, name, paths, Vec::new(), a.plugins.clone()),
            extra,
            what,
        ));
    };
    for (_, (tail, methods)) in by_path {
        let allow: Arc<str> = methods.join(", ").into();
        let paths: Vec<String> = place
            .prefixes
            .iter()
            .map(|p| format!("{p}{tail}"))
            .collect();
        let what = format!("405 {}", paths[0]);
        answer(paths, what, Arc::new(MethodNotAllowed { allow }));
    }
    if !notice.is_empty() {
        // The rest of a deprecated version's prefix: 404 with the notice (an empty prefix is
        // left to the gateway's plain 404: it would catch other routes' misses).
        let paths: Vec<String> = place
            .prefixes
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| format!("{p}/*"))
            .collect();
        if let Some(first) = paths.first() {
            let what = format!("404 {first}");
            answer(paths, what, Arc::new(NotDescribed));
        }
    }
    Ok(Expanded {
        doc,
        compiled,
        routes,
    })
}

fn route(
    a: &ApiConfig,
    place: &Placement,
    name: String,
    paths: Vec<String>,
    methods: Vec<String>,
    plugins: BTreeMap<String, toml::Value>,
) -> RouteConfig {
    RouteConfig {
        name,
        upstream: a.upstream,
        strip_prefix: None,
        pass_host: PassHost::Pass,
        websocket: false,
        hsts: None,
        spec: RouteSpec {
            hosts: a.hosts.clone(),
            paths,
            methods,
            headers: place.conds.clone(),
            media_version: place.media.clone(),
            ..RouteSpec::default()
        },
        plugins,
    }
}

/// `/pets/{petId}` -> `/pets/{}`: paths the router cannot tell apart share a 405 route.
fn shape_key(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// Adds every API's routes to `cfg.routes`; what the plugin step must add to them.
pub fn expand(cfg: &mut Config) -> Result<(Vec<Generated>, Vec<BuiltApi>), ConfigError> {
    let mut out = Vec::new();
    let mut built = Vec::with_capacity(cfg.apis.len());
    let apis = cfg.apis.clone();
    for (i, a) in apis.iter().enumerate() {
        // A deprecated path-versioned API points at the first undeprecated version of its name.
        let successor = (a.version_by == VersionBy::Path)
            .then(|| {
                apis.iter().find(|b| {
                    b.name == a.name
                        && b.version != a.version
                        && b.deprecated.is_none()
                        && b.sunset.is_none()
                })
            })
            .flatten()
            .map(|b| format!("{}/{}", b.base_path, b.version.as_deref().unwrap_or("")));
        let e = expand_one(i, a, successor.as_deref())?;
        let names: Arc<[Box<str>]> = e.routes.iter().map(|r| r.0.name.as_str().into()).collect();
        for (rc, extra, what) in e.routes {
            let id = cfg.routes.push(rc).map_err(|m| {
                ConfigError::new(format!("apis[{i}]"), format!("operation {what:?}: {m}"))
            })?;
            out.push(Generated {
                route: id,
                api: i,
                what,
                extra,
            });
        }
        built.push(BuiltApi {
            doc: e.doc,
            routes: names,
            compiled: e.compiled,
        });
    }
    Ok((out, built))
}

/// A plugin error on a generated route, named by its API and operation.
pub fn relocate(mut e: ConfigError, gen: &[Generated]) -> ConfigError {
    for g in gen {
        let head = format!("routes[{}]", g.route);
        if let Some(rest) = e.path.strip_prefix(&head) {
            e.path = format!("apis[{}] (operation {:?}){rest}", g.api, g.what);
            break;
        }
    }
    e
}

/// Puts each generated route's internal plugins into its chain, in priority order.
pub fn attach(set: &mut PluginSet, gen: &[Generated]) {
    for g in gen {
        if g.extra.is_empty() {
            continue;
        }
        let mut chain: Vec<FactoryRef> = set
            .routes
            .get(g.route)
            .map_or_else(Vec::new, |c| c.to_vec());
        chain.extend(g.extra.iter().cloned());
        chain.sort_by_key(|f| std::cmp::Reverse(f.priority()));
        set.routes.put(g.route, chain.into());
    }
}

/// `ringway openapi routes`: the routes a document becomes, as `[[routes]]` TOML for review
/// (what `[[apis]]` would add; the 405 routes and validation plugins are noted, not listed).
pub fn routes_toml(
    text: &str,
    name: &str,
    base_path: &str,
    upstream: &str,
) -> Result<String, String> {
    let doc = openapi::parse(text).map_err(|e| e.to_string())?;
    let base = base_path.trim_end_matches('/');
    let mut routes = Vec::with_capacity(doc.ops.len());
    for op in &doc.ops {
        let mut t = toml::map::Map::new();
        t.insert("name".into(), format!("{name}.{}", op.name).into());
        t.insert(
            "paths".into(),
            toml::Value::Array(vec![format!("{base}{}", op.route_path).into()]),
        );
        t.insert("methods".into(), toml::Value::Array(vec![op.method.into()]));
        t.insert("upstream".into(), upstream.into());
        if !op.plugins.is_empty() {
            let mut p = toml::map::Map::new();
            for (k, v) in &op.plugins {
                let v = toml::Value::try_from(v)
                    .map_err(|e| format!("{}/x-ringway-plugins/{}: {e}", op.pointer, k))?;
                p.insert(k.clone(), v);
            }
            t.insert("plugins".into(), toml::Value::Table(p));
        }
        routes.push(toml::Value::Table(t));
    }
    let mut root = toml::map::Map::new();
    root.insert("routes".into(), toml::Value::Array(routes));
    let body = toml::to_string(&toml::Value::Table(root)).map_err(|e| e.to_string())?;
    Ok(format!(
        "# {} operations of an OpenAPI {} document. As [[apis]], each also gets request\n# validation, and each described path a 405 route answering with Allow.\n{body}",
        doc.ops.len(),
        match doc.dialect {
            openapi::Dialect::V30 => "3.0",
            openapi::Dialect::V31 => "3.1",
        }
    ))
}
