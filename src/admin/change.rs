//! The one-object change path shared by the admin API and the etcd watch (src/etcd): put or
//! delete one object in the document, validate it, apply it to every shard (one route alone
//! when it can), persist it. Knows nothing of HTTP or etcd.

use std::time::Duration;

use serde_json::Value;

use super::document::{Document, Kind};
use crate::runtime::plane::Plane;

/// Why a change was not applied: the document refused it, or the shards did (a swap aborted
/// because some shard failed or timed out preparing it; see `Plane::apply`).
#[derive(Debug)]
pub enum Refused {
    Invalid(crate::config::ConfigError),
    Aborted(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Invalid(e) => write!(f, "{e}"),
            Refused::Aborted(e) => write!(f, "{e}"),
        }
    }
}

/// A change that every shard now runs.
pub struct Applied {
    pub generation: u64,
    pub took: Duration,
    /// "one route" or "full rebuild".
    pub how: &'static str,
    /// The object it replaced (None: it was new, or already absent).
    pub before: Option<Value>,
}

/// The object with its id field set to `id` (the URL's, or the etcd key's, id wins).
pub fn with_id(kind: Kind, id: &str, obj: Option<Value>) -> Option<Value> {
    obj.map(|mut v| {
        if let Some(m) = v.as_object_mut() {
            m.insert(kind.id_field().into(), Value::String(id.to_string()));
        }
        v
    })
}

/// Puts `obj` (with its id field already set, see `with_id`) or deletes it, validates, applies
/// and persists. On any error the document is as before.
pub fn apply_one(
    plane: &Plane,
    store: &mut Document,
    kind: Kind,
    id: &str,
    obj: Option<Value>,
) -> Result<Applied, Refused> {
    if let Some(v) = &obj {
        if !v.is_object() {
            plane.note_failure();
            return Err(Refused::Invalid(crate::config::ConfigError::new(
                format!("{}/{id}", kind.seg()),
                "expected a JSON object",
            )));
        }
        if kind == Kind::GlobalRules && !v.get("plugins").is_some_and(Value::is_object) {
            plane.note_failure();
            return Err(Refused::Invalid(crate::config::ConfigError::new(
                format!("global_rules/{id}.plugins"),
                "expected an object of plugin configs",
            )));
        }
    }
    let before = put(store, kind, id, obj.clone());
    let applied = match kind {
        Kind::Routes => route_change(plane, store, id, obj),
        _ => Ok(None),
    };
    let applied = match applied {
        Ok(Some((g, t))) => Ok((g, t, "one route")),
        Ok(None) => full(plane, store).map(|(g, t)| (g, t, "full rebuild")),
        Err(e) => Err(e),
    };
    match applied {
        Ok((generation, took, how)) => Ok(Applied {
            generation,
            took,
            how,
            before,
        }),
        Err(e) => {
            put(store, kind, id, before);
            if matches!(e, Refused::Invalid(_)) {
                plane.note_failure();
            }
            Err(e)
        }
    }
}

/// Several changes as one generation (a resync's difference): one full build, one swap, one
/// write of the state. On any error the document is as before; the caller may then apply the
/// changes one by one to find the invalid ones.
pub fn apply_many(
    plane: &Plane,
    store: &mut Document,
    changes: &[(Kind, String, Option<Value>)],
) -> Result<(u64, Duration), Refused> {
    let mut undo = Vec::with_capacity(changes.len());
    for (kind, id, obj) in changes {
        undo.push((*kind, id.clone(), put(store, *kind, id, obj.clone())));
    }
    full(plane, store).inspect_err(|_| {
        for (kind, id, before) in undo.into_iter().rev() {
            put(store, kind, &id, before);
        }
    })
}

/// Whether `obj` would be accepted, without applying it (the admin API checks before it writes
/// to etcd, so a bad object gets a 400 rather than being refused by every node).
pub fn check_one(
    plane: &Plane,
    store: &mut Document,
    kind: Kind,
    id: &str,
    obj: Option<Value>,
) -> Result<(), crate::config::ConfigError> {
    if kind == Kind::GlobalRules {
        if let Some(v) = &obj {
            if !v.get("plugins").is_some_and(Value::is_object) {
                return Err(crate::config::ConfigError::new(
                    format!("global_rules/{id}.plugins"),
                    "expected an object of plugin configs",
                ));
            }
        }
    }
    let before = put(store, kind, id, obj.clone());
    let quick = match kind {
        Kind::Routes => {
            let cur = plane.config();
            match route_order(store, &cur, id) {
                Some(order) => crate::built::with_route(&cur, id, obj, order).map(|b| b.is_some()),
                None => Ok(false),
            }
        }
        _ => Ok(false),
    };
    let out = match quick {
        Ok(true) => Ok(()),
        Ok(false) => store.build().map(|_| ()),
        Err(e) => Err(e),
    };
    put(store, kind, id, before);
    out
}

/// One route put or removed without a full rebuild: only that route is validated, the router
/// and shards update that route only, and the state file gets one journal line. `Ok(None)`
/// when the change needs the full path (see `built::with_route`).
pub(super) fn route_change(
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
pub(super) fn route_order(store: &Document, built: &crate::built::Built, id: &str) -> Option<u64> {
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

/// Sets (or removes) `kind/id` in the document; returns what was there.
fn put(store: &mut Document, kind: Kind, id: &str, obj: Option<Value>) -> Option<Value> {
    let set = store.sets.entry(kind.seg()).or_default();
    match obj {
        Some(v) => set.insert(id.to_string(), v),
        None => set.remove(id),
    }
}

fn full(plane: &Plane, store: &mut Document) -> Result<(u64, Duration), Refused> {
    let cfg = store.build().map_err(Refused::Invalid)?;
    let done = plane
        .apply(super::with_source(cfg, plane))
        .map_err(Refused::Aborted)?;
    if let Err(e) = store.persist() {
        log::error!(
            "applied generation {} but could not persist it: {e}",
            done.0
        );
    }
    Ok(done)
}
