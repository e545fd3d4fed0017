//! The start-up document from etcd: the file's objects overlaid by etcd's, built, with what
//! does not build taken out and named (start-up and `ringway check`). No etcd I/O; shards unseen.

use std::collections::BTreeMap;

use serde_json::Value;

use super::sync::Sets;
use crate::admin::document::{Document, Kind, KINDS};

/// Builds the start-up document: the file's objects overlaid by etcd's; an object the build
/// refuses is taken out (the file's object, if any, stays) and named in the log, and the
/// build is tried again. Returns the refused objects (retried by the watch later: a route may
/// name an upstream that arrives after it).
#[allow(clippy::type_complexity)]
pub fn startup_build(
    doc: &mut Document,
    etcd: BTreeMap<(Kind, String), Value>,
    file_sets: &Sets,
    rev: i64,
) -> Result<(crate::built::Built, BTreeMap<(Kind, String), Option<Value>>), String> {
    for ((kind, id), v) in &etcd {
        doc.sets
            .entry(kind.seg())
            .or_default()
            .insert(id.clone(), v.clone());
    }
    let mut refused = BTreeMap::new();
    loop {
        let e = match doc.build() {
            Ok(b) => return Ok((b, refused)),
            Err(e) => e,
        };
        let culprits = locate(doc, &e, &etcd);
        if culprits.is_empty() {
            return Err(format!(
                "the configuration from etcd (revision {rev}) does not build: {e}"
            ));
        }
        for (kind, id) in culprits {
            log::warn!(
                "etcd: refused {}/{id} at revision {rev}: {e}; the rest of the configuration keeps serving",
                kind.seg()
            );
            refused.insert((kind, id.clone()), etcd.get(&(kind, id.clone())).cloned());
            let set = doc.sets.entry(kind.seg()).or_default();
            match file_sets.get(kind.seg()).and_then(|s| s.get(&id)) {
                Some(v) if etcd.get(&(kind, id.clone())) != Some(v) => set.insert(id, v.clone()),
                _ => set.remove(&id),
            };
        }
    }
}

/// The etcd objects a build error points at: `routes/<id>...` (the longest id that fits), or
/// for `global_plugins.<name>` every global rule from etcd that sets that plugin.
fn locate(
    doc: &Document,
    e: &crate::config::ConfigError,
    etcd: &BTreeMap<(Kind, String), Value>,
) -> Vec<(Kind, String)> {
    if let Some(rest) = e.path.strip_prefix("global_plugins.") {
        let name = rest.split(['.', '[']).next().unwrap_or("");
        return etcd
            .iter()
            .filter(|((k, _), v)| *k == Kind::GlobalRules && v["plugins"].get(name).is_some())
            .map(|(k, _)| k.clone())
            .collect();
    }
    for kind in KINDS {
        let Some(rest) = e
            .path
            .strip_prefix(kind.seg())
            .and_then(|r| r.strip_prefix('/'))
        else {
            continue;
        };
        let best = doc.sets[kind.seg()]
            .keys()
            .filter(|id| {
                rest.strip_prefix(id.as_str())
                    .is_some_and(|t| t.is_empty() || t.starts_with(['.', '[']))
            })
            .max_by_key(|id| id.len());
        if let Some(id) = best {
            if etcd.contains_key(&(kind, id.clone())) {
                return vec![(kind, id.clone())];
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn start_up_takes_out_what_does_not_build_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("ringway-etcd-sync-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("gw.toml");
        std::fs::write(
            &src,
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\n[[upstreams]]\nname = \"f\"\nnodes = [{ addr = \"127.0.0.1:9\" }]\n[[routes]]\nname = \"file\"\npaths = [\"/file\"]\nupstream = \"f\"\n",
        )
        .unwrap();
        let mut doc = Document::open(&src, None).unwrap();
        let file_sets = doc.sets.clone();
        let mut etcd = BTreeMap::new();
        let obj = |v: Value| v;
        etcd.insert(
            (Kind::Upstreams, "u".to_string()),
            obj(json!({"name": "u", "nodes": [{"addr": "127.0.0.1:9"}]})),
        );
        etcd.insert(
            (Kind::Routes, "good".to_string()),
            obj(json!({"name": "good", "paths": ["/g"], "upstream": "u"})),
        );
        etcd.insert(
            (Kind::Routes, "bad.v1".to_string()),
            obj(json!({"name": "bad.v1", "paths": ["/b"], "upstream": "missing"})),
        );
        // etcd's object replaces the file's of the same id; when refused, the file's stays.
        etcd.insert(
            (Kind::Routes, "file".to_string()),
            obj(json!({"name": "file", "paths": ["/f2"], "upstream": "nope"})),
        );
        let (built, refused) = startup_build(&mut doc, etcd, &file_sets, 7).unwrap();
        let names: Vec<_> = refused
            .keys()
            .map(|(k, id)| format!("{}/{id}", k.seg()))
            .collect();
        assert_eq!(names, ["routes/bad.v1", "routes/file"]);
        assert_eq!(built.cfg.routes.len(), 2);
        assert!(built.cfg.routes.id("good").is_some());
        assert_eq!(doc.sets["routes"]["file"]["paths"], json!(["/file"]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
