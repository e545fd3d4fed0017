//! The admin REST API (APISIX-like): routes, upstreams, consumers, consumer groups and global rules under
//! `/apisix/admin/`, with key auth, a viewer key and a client allow-list. A change to one route
//! is validated and applied as that route alone; any other change is validated as a whole
//! config. Either way it reaches all shards through the plane, then is persisted.

use serde_json::{json, Value};

use super::document::{merge_patch, Document, Kind};
use super::http::{Request, Response};
use super::Ops;
use crate::config::ops::AdminConfig;
use crate::runtime::plane::Plane;

pub const OPENAPI: &str = include_str!("../../config/admin-openapi.json");

pub struct Keys {
    pub admin: String,
    pub viewer: Option<String>,
}

pub fn handle(ops: &Ops, cfg: &AdminConfig, keys: &Keys, r: &Request) -> Response {
    let plane = &*ops.plane;
    if !cfg.allows(r.peer.ip()) {
        return Response::error(403, format!("client {} is not in admin.allow", r.peer.ip()));
    }
    if r.path == "/openapi.json" && r.method == "GET" {
        return Response::text(200, "application/json", OPENAPI);
    }
    let read_only = match r.header("x-api-key") {
        Some(k) if k == keys.admin => false,
        Some(k) if keys.viewer.as_deref() == Some(k) => true,
        _ => return Response::error(401, "missing or wrong X-API-KEY"),
    };
    if read_only && r.method != "GET" {
        return Response::error(403, "the viewer key is read-only");
    }
    let Some(rest) = r.path.strip_prefix("/apisix/admin/") else {
        return Response::error(404, format!("no such endpoint: {}", r.path));
    };
    let (seg, id) = match rest.split_once('/') {
        Some((s, id)) if !id.is_empty() && !id.contains('/') => (s, Some(id)),
        Some((s, "")) => (s, None),
        Some(_) => return Response::error(404, format!("no such endpoint: {}", r.path)),
        None => (rest, None),
    };
    if seg == "cache" && id == Some("purge") {
        return super::purge::handle(plane, r);
    }
    if seg == "status" && id.is_none() && r.method == "GET" {
        return Response::json(200, &json!({ "config_generation": plane.generation() }));
    }
    let Some(kind) = Kind::parse(seg) else {
        return Response::error(
            404,
            format!(
                "unknown resource {seg:?}; expected routes, upstreams, consumers, consumer_groups or global_rules"
            ),
        );
    };
    let mut guard = ops.store.lock().unwrap_or_else(|e| e.into_inner());
    let Some(store) = guard.as_mut() else {
        return Response::error(
            503,
            "admin store unavailable (config not loaded from a file)",
        );
    };
    match (r.method.as_str(), id) {
        ("GET", None) => {
            let list: Vec<Value> = store.sets[kind.seg()]
                .iter()
                .map(|(id, v)| item(kind, id, v))
                .collect();
            Response::json(200, &json!({ "total": list.len(), "list": list }))
        }
        ("GET", Some(id)) => match store.sets[kind.seg()].get(id) {
            Some(v) => Response::json(200, &item(kind, id, v)),
            None => not_found(kind, id),
        },
        ("PUT", Some(id)) => match body(r) {
            Ok(v) => change(plane, store, kind, id.to_string(), Some(v)),
            Err(e) => e,
        },
        ("POST", None) => match body(r) {
            Ok(v) => {
                let id = new_id(store, kind);
                change(plane, store, kind, id, Some(v))
            }
            Err(e) => e,
        },
        ("PATCH", Some(id)) => {
            let Some(mut cur) = store.sets[kind.seg()].get(id).cloned() else {
                return not_found(kind, id);
            };
            match body(r) {
                Ok(p) => {
                    merge_patch(&mut cur, &p);
                    change(plane, store, kind, id.to_string(), Some(cur))
                }
                Err(e) => e,
            }
        }
        ("DELETE", Some(id)) => {
            if !store.sets[kind.seg()].contains_key(id) {
                return not_found(kind, id);
            }
            let refs = store.references(kind, id);
            if !refs.is_empty() && r.arg("force") != Some("true") {
                return Response::error(
                    400,
                    format!("{}/{id} is still referenced by {refs:?}; delete those first or add ?force=true (which deletes them too)", kind.seg()),
                );
            }
            for rf in &refs {
                if let Some((seg, rid)) = rf.split_once('/') {
                    store.sets.get_mut(seg).map(|s| s.remove(rid));
                }
            }
            change(plane, store, kind, id.to_string(), None)
        }
        (m, _) => Response::error(405, format!("{m} not allowed here")),
    }
}

/// Why a change was not applied: the document refused it, or the shards did (a swap aborted
/// because some shard failed or timed out preparing it; see `Plane::apply`).
enum Refused {
    Invalid(crate::config::ConfigError),
    Aborted(String),
}

/// One route put or removed without a full rebuild: only that route is validated, the router
/// and shards update that route only, and the state file gets one journal line. `Ok(None)`
/// when the change needs the full path (see `built::with_route`).
fn route_change(
    plane: &Plane,
    store: &mut Document,
    id: &str,
    obj: Option<Value>,
) -> Result<Option<(u64, std::time::Duration)>, Refused> {
    let cur = plane.config();
    let Some(order) = route_order(store, &cur, id) else {
        return Ok(None);
    };
    let built = crate::built::with_route(&cur, id, obj.clone(), order).map_err(Refused::Invalid)?;
    let Some((cfg, slot)) = built else {
        return Ok(None);
    };
    let done = plane.apply_route(cfg, slot).map_err(Refused::Aborted)?;
    if let Err(e) = store.persist_change(Kind::Routes, id, obj.as_ref()) {
        log::error!(
            "admin: applied generation {} but could not persist it: {e}",
            done.0
        );
    }
    Ok(Some(done))
}

/// Where route `id` goes among routes of equal precedence: a full build from the store ranks
/// them in id (= name) order, so a replaced route keeps its order and a new one gets an order
/// between its neighbours by name. `None` when that is not possible without renumbering.
fn route_order(store: &Document, built: &crate::built::Built, id: &str) -> Option<u64> {
    use std::ops::Bound::{Excluded, Unbounded};
    let (cfg, router) = (&built.cfg, &built.router);
    if !cfg.routes.name_ordered() {
        return None;
    }
    let order_of = |name: &str| router.order(cfg.routes.id(name)?);
    if let Some(slot) = cfg.routes.id(id) {
        return router.order(slot);
    }
    let set = &store.sets[Kind::Routes.seg()];
    let lo = match set.range::<str, _>((Unbounded, Excluded(id))).next_back() {
        Some((name, _)) => order_of(name)?,
        None => 0,
    };
    let hi = match set.range::<str, _>((Excluded(id), Unbounded)).next() {
        Some((name, _)) => order_of(name)?,
        None => lo.saturating_add(2 * crate::route::ORDER_STEP),
    };
    (hi > lo + 1 && hi <= crate::route::ORDER_MAX).then(|| lo + (hi - lo) / 2)
}

fn item(kind: Kind, id: &str, v: &Value) -> Value {
    json!({ "key": format!("/apisix/{}/{id}", kind.seg()), "value": v })
}

fn not_found(kind: Kind, id: &str) -> Response {
    Response::error(404, format!("{}/{id} not found", kind.seg()))
}

fn body(r: &Request) -> Result<Value, Response> {
    match serde_json::from_slice::<Value>(&r.body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Response::error(400, "body: expected a JSON object")),
        Err(e) => Err(Response::error(400, format!("body: invalid JSON: {e}"))),
    }
}

fn new_id(store: &Document, kind: Kind) -> String {
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut n = base;
    while store.sets[kind.seg()].contains_key(&n.to_string()) {
        n += 1;
    }
    n.to_string()
}

/// Puts (or, with `None`, deletes) one object, validates the whole document, applies it to
/// every shard and persists. On any error nothing changes.
fn change(
    plane: &Plane,
    store: &mut Document,
    kind: Kind,
    id: String,
    obj: Option<Value>,
) -> Response {
    let field = kind.id_field();
    let obj = obj.map(|mut v| {
        if let Some(m) = v.as_object_mut() {
            m.insert(field.into(), Value::String(id.clone()));
        }
        v
    });
    let set = store
        .sets
        .get_mut(kind.seg())
        .expect("every kind has a set");
    let before = match &obj {
        Some(v) => set.insert(id.clone(), v.clone()),
        None => set.remove(&id),
    };
    let restore = |store: &mut Document| {
        let set = store
            .sets
            .get_mut(kind.seg())
            .expect("every kind has a set");
        match &before {
            Some(b) => set.insert(id.clone(), b.clone()),
            None => set.remove(&id),
        };
    };
    if let Some(v) = &obj {
        if kind == Kind::GlobalRules && !v.get("plugins").is_some_and(Value::is_object) {
            restore(store);
            return Response::error(
                400,
                format!("global_rules/{id}.plugins: expected an object of plugin configs"),
            );
        }
    }
    let applied = match kind {
        Kind::Routes => route_change(plane, store, &id, obj.clone()),
        _ => Ok(None),
    };
    let applied = match applied {
        Ok(Some((g, t))) => Ok((g, t, "one route")),
        Ok(None) => match store.build() {
            Ok(cfg) => match plane.apply(super::with_source(cfg, plane)) {
                Ok((g, t)) => {
                    if let Err(e) = store.persist() {
                        log::error!("admin: applied generation {g} but could not persist it: {e}");
                    }
                    Ok((g, t, "full rebuild"))
                }
                Err(e) => Err(Refused::Aborted(e)),
            },
            Err(e) => Err(Refused::Invalid(e)),
        },
        Err(e) => Err(e),
    };
    let (generation, took, how) = match applied {
        Ok(done) => done,
        Err(Refused::Invalid(e)) => {
            restore(store);
            plane.note_failure();
            return Response::error(400, e.to_string());
        }
        Err(Refused::Aborted(e)) => {
            // Counted and logged by the plane; nothing was persisted.
            restore(store);
            let keep = plane.generation();
            return Response::error(
                503,
                format!(
                    "{e}; the change was not applied: config generation {keep} \
                     keeps running on every shard"
                ),
            );
        }
    };
    log::info!(
        "admin: {} {}/{id}: generation {generation} applied in {took:?} ({how})",
        if obj.is_some() { "put" } else { "deleted" },
        kind.seg()
    );
    let status = match (&obj, &before) {
        (Some(_), None) => 201,
        _ => 200,
    };
    let mut out = match &obj {
        Some(v) => item(kind, &id, v),
        None => json!({ "key": format!("/apisix/{}/{id}", kind.seg()), "deleted": "1" }),
    };
    out["config_generation"] = json!(generation);
    Response::json(status, &out)
}
