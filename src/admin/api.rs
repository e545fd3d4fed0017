//! The admin REST API (APISIX-like): routes, upstreams, consumers, global rules and apis under
//! `/apisix/admin/`, with key auth, a viewer key and a client allow-list. A change to one route
//! is validated and applied as that route alone; any other change is validated as a whole
//! config. Either way it reaches all shards through the plane, then is persisted.

use serde_json::{json, Value};

use super::change::Refused;
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
    // API documentation: readable by anyone the allow-list lets in, like the admin's own.
    if r.method == "GET" && (r.path == "/apis" || r.path.starts_with("/apis/")) {
        return super::docs::handle(&plane.config(), r);
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
                "unknown resource {seg:?}; expected routes, upstreams, consumers, global_rules or apis"
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
    let todo = match (r.method.as_str(), id) {
        ("GET", None) => {
            let list: Vec<Value> = store.sets[kind.seg()]
                .iter()
                .map(|(id, v)| revised(ops, item(kind, id, v), kind, id))
                .collect();
            return Response::json(200, &json!({ "total": list.len(), "list": list }));
        }
        ("GET", Some(id)) => {
            return match store.sets[kind.seg()].get(id) {
                Some(v) => Response::json(200, &revised(ops, item(kind, id, v), kind, id)),
                None => not_found(kind, id),
            }
        }
        ("PUT", Some(id)) => match body(r) {
            Ok(v) => (id.to_string(), Some(v), Vec::new()),
            Err(e) => return e,
        },
        ("POST", None) => match body(r) {
            Ok(v) => (new_id(store, kind), Some(v), Vec::new()),
            Err(e) => return e,
        },
        ("PATCH", Some(id)) => {
            let Some(mut cur) = store.sets[kind.seg()].get(id).cloned() else {
                return not_found(kind, id);
            };
            match body(r) {
                Ok(p) => {
                    merge_patch(&mut cur, &p);
                    (id.to_string(), Some(cur), Vec::new())
                }
                Err(e) => return e,
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
            let also: Vec<String> = refs
                .iter()
                .filter_map(|rf| rf.strip_prefix("routes/").map(String::from))
                .collect();
            (id.to_string(), None, also)
        }
        (m, _) => return Response::error(405, format!("{m} not allowed here")),
    };
    let (id, obj, also) = todo;
    match ops.remote.get() {
        None => {
            for rid in &also {
                store.sets.get_mut("routes").map(|s| s.remove(rid));
            }
            change(plane, store, kind, id, obj)
        }
        Some(remote) => {
            let obj = super::change::with_id(kind, &id, obj);
            if let Some(v) = &obj {
                if let Err(e) = super::change::check_one(plane, store, kind, &id, Some(v.clone())) {
                    return Response::error(400, e.to_string());
                }
            }
            let before = store.sets[kind.seg()].contains_key(&id);
            let expected = match r.arg("mod_revision").map(str::parse::<i64>) {
                None => None,
                Some(Ok(n)) if n >= 0 => Some(n),
                Some(_) => return Response::error(400, "mod_revision: expected a revision number"),
            };
            // The etcd thread applies the write from its watch under this lock.
            drop(guard);
            remote_change(&**remote, plane, (kind, id, obj), also, before, expected)
        }
    }
}

/// A change when etcd is the source: written there (compare-and-swap on each object's mod
/// revision), answered once committed; this node applies it from its watch like every other.
fn remote_change(
    remote: &dyn super::Remote,
    plane: &Plane,
    (kind, id, obj): (Kind, String, Option<Value>),
    also: Vec<String>,
    existed: bool,
    expected: Option<i64>,
) -> Response {
    let mut changes = vec![(kind, id.clone(), obj.clone())];
    changes.extend(also.into_iter().map(|rid| (Kind::Routes, rid, None)));
    let (rev, applied) = match remote.write(changes, expected) {
        Ok(done) => done,
        Err(super::RemoteError::Conflict(e)) => return Response::error(409, e),
        Err(super::RemoteError::Unavailable(e)) => return Response::error(503, e),
    };
    log::info!(
        "admin: {} {}/{id}: committed to etcd at revision {rev}{}",
        if obj.is_some() { "put" } else { "deleted" },
        kind.seg(),
        if applied {
            ", applied"
        } else {
            ", not applied here yet"
        }
    );
    let status = if obj.is_some() && !existed { 201 } else { 200 };
    let mut out = match &obj {
        Some(v) => item(kind, &id, v),
        None => json!({ "key": format!("/apisix/{}/{id}", kind.seg()), "deleted": "1" }),
    };
    out["revision"] = json!(rev);
    out["applied"] = json!(applied);
    out["config_generation"] = json!(plane.generation());
    Response::json(status, &out)
}

/// With etcd as the source, an object carries its mod revision (APISIX's `modifiedIndex`), the
/// `?mod_revision=` a client sends back to change it only if nobody else did meanwhile.
fn revised(ops: &Ops, mut v: Value, kind: Kind, id: &str) -> Value {
    if let Some(remote) = ops.remote.get() {
        v["modifiedIndex"] = json!(remote.mod_revision(kind, id));
    }
    v
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
    let obj = super::change::with_id(kind, &id, obj);
    let done = match super::change::apply_one(plane, store, kind, &id, obj.clone()) {
        Ok(done) => done,
        Err(Refused::Invalid(e)) => return Response::error(400, e.to_string()),
        Err(Refused::Aborted(e)) => {
            // Counted and logged by the plane; nothing was persisted.
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
        "admin: {} {}/{id}: generation {} applied in {:?} ({})",
        if obj.is_some() { "put" } else { "deleted" },
        kind.seg(),
        done.generation,
        done.took,
        done.how
    );
    let status = match (&obj, &done.before) {
        (Some(_), None) => 201,
        _ => 200,
    };
    let mut out = match &obj {
        Some(v) => item(kind, &id, v),
        None => json!({ "key": format!("/apisix/{}/{id}", kind.seg()), "deleted": "1" }),
    };
    out["config_generation"] = json!(done.generation);
    Response::json(status, &out)
}
