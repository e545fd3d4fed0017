//! The admin API's document: the config file's content as JSON, with the collections the admin
//! API edits (routes, upstreams, consumers, global rules, apis) overlaid from the state file. Builds a config
//! generation (validated, then built) from it and persists the collections. No I/O besides the state file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::built::Built;
use crate::config::ConfigError;

/// An admin collection: its URL segment, its key in the document, and the field holding the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Routes,
    Upstreams,
    Consumers,
    GlobalRules,
    /// `[[apis]]`: an API with its OpenAPI document inline (`document`) or as a file (`spec`).
    Apis,
}

impl Kind {
    pub fn parse(seg: &str) -> Option<Kind> {
        Some(match seg {
            "routes" => Kind::Routes,
            "upstreams" => Kind::Upstreams,
            "consumers" => Kind::Consumers,
            "global_rules" => Kind::GlobalRules,
            "apis" => Kind::Apis,
            _ => return None,
        })
    }

    pub fn seg(self) -> &'static str {
        match self {
            Kind::Routes => "routes",
            Kind::Upstreams => "upstreams",
            Kind::Consumers => "consumers",
            Kind::GlobalRules => "global_rules",
            Kind::Apis => "apis",
        }
    }

    /// The field that names an object (its id in the URL).
    pub fn id_field(self) -> &'static str {
        match self {
            Kind::Routes | Kind::Upstreams | Kind::Apis => "name",
            Kind::Consumers => "username",
            Kind::GlobalRules => "id",
        }
    }
}

pub const KINDS: [Kind; 5] = [
    Kind::Routes,
    Kind::Upstreams,
    Kind::Consumers,
    Kind::GlobalRules,
    Kind::Apis,
];

pub struct Document {
    /// The config file as JSON, minus the collections (kept in `sets`).
    base: Value,
    /// Per kind: id -> object (with its id field set).
    pub sets: BTreeMap<&'static str, BTreeMap<String, Value>>,
    dir: PathBuf,
    pub state_file: Option<PathBuf>,
    /// Changes appended since the state file was last written whole.
    journaled: usize,
}

fn read_toml(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError::new("", e.to_string()))
}

impl Document {
    /// The config file plus the state file (if the admin API has written one).
    pub fn open(source: &Path, state_file: Option<PathBuf>) -> Result<Document, ConfigError> {
        let mut base = read_toml(source)?;
        let dir = source
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let mut sets = BTreeMap::new();
        let obj = base
            .as_object_mut()
            .ok_or_else(|| ConfigError::new("", "not a table"))?;
        for k in KINDS {
            let mut set = BTreeMap::new();
            match k {
                Kind::GlobalRules => {
                    if let Some(Value::Object(p)) = obj.remove("global_plugins") {
                        if !p.is_empty() {
                            set.insert(
                                "default".to_string(),
                                serde_json::json!({"id": "default", "plugins": p}),
                            );
                        }
                    }
                }
                _ => {
                    if let Some(Value::Array(list)) = obj.remove(k.seg()) {
                        for v in list {
                            let id = v
                                .get(k.id_field())
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string();
                            set.insert(id, v);
                        }
                    }
                }
            }
            sets.insert(k.seg(), set);
        }
        let mut store = Document {
            base,
            sets,
            dir,
            state_file,
            journaled: 0,
        };
        if let Some(p) = &store.state_file {
            if p.exists() {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ConfigError::new("", format!("cannot read {}: {e}", p.display()))
                })?;
                let state: Map<String, Value> = serde_json::from_str(&text)
                    .map_err(|e| ConfigError::new("", format!("{}: {e}", p.display())))?;
                for k in KINDS {
                    if let Some(Value::Object(m)) = state.get(k.seg()) {
                        store.sets.insert(k.seg(), m.clone().into_iter().collect());
                    }
                }
            }
        }
        store.replay_journal();
        Ok(store)
    }

    /// Applies the changes journaled after the state file was written (or, before there is
    /// one, on top of the config file's collections). A torn last line (a crash mid-append)
    /// ends the replay: that change was never acknowledged.
    fn replay_journal(&mut self) {
        let Some(j) = self.state_file.as_deref().map(journal_file) else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(&j) else {
            return;
        };
        for line in text.split_inclusive('\n') {
            let entry = serde_json::from_str::<Value>(line)
                .ok()
                .filter(|_| line.ends_with('\n'));
            let parsed = entry.as_ref().and_then(|e| {
                let kind = KINDS
                    .into_iter()
                    .find(|k| Some(k.seg()) == e["kind"].as_str())?;
                Some((kind, e["id"].as_str()?, &e["value"]))
            });
            let Some((kind, id, value)) = parsed else {
                log::warn!(
                    "admin state journal {}: stopping at a torn or unreadable entry",
                    j.display()
                );
                break;
            };
            let set = self.sets.entry(kind.seg()).or_default();
            match value {
                Value::Null => set.remove(id),
                v => set.insert(id.to_string(), v.clone()),
            };
            self.journaled += 1;
        }
    }

    /// Records one change (`None` = deleted) by appending a line to the journal beside the
    /// state file: the cost of a change, not of the whole state. Every `COMPACT_AFTER` changes
    /// the whole state is written instead (and the journal cleared).
    pub fn persist_change(
        &mut self,
        kind: Kind,
        id: &str,
        obj: Option<&Value>,
    ) -> Result<(), String> {
        use std::io::Write;
        let Some(p) = &self.state_file else {
            return Ok(());
        };
        if self.journaled >= COMPACT_AFTER {
            return self.persist();
        }
        let j = journal_file(p);
        let mut line = serde_json::to_vec(&serde_json::json!({
            "kind": kind.seg(),
            "id": id,
            "value": obj.unwrap_or(&Value::Null),
        }))
        .map_err(|e| e.to_string())?;
        line.push(b'\n');
        // One write of a whole line in append mode; a crash can only tear the last line.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&j)
            .and_then(|mut f| f.write_all(&line))
            .map_err(|e| format!("cannot append to {}: {e}", j.display()))?;
        self.journaled += 1;
        Ok(())
    }

    /// The whole document in the config file's shape.
    pub fn document(&self) -> Value {
        let mut doc = self.base.clone();
        if let Some(obj) = doc.as_object_mut() {
            for k in [Kind::Routes, Kind::Upstreams, Kind::Consumers, Kind::Apis] {
                obj.insert(
                    k.seg().into(),
                    Value::Array(self.sets[k.seg()].values().cloned().collect()),
                );
            }
            let mut global = Map::new();
            for rule in self.sets["global_rules"].values() {
                if let Some(Value::Object(p)) = rule.get("plugins") {
                    for (n, v) in p {
                        global.insert(n.clone(), v.clone());
                    }
                }
            }
            obj.insert("global_plugins".into(), Value::Object(global));
        }
        doc
    }

    /// Validates and compiles the document; errors name `kind/id.field` where they can.
    pub fn build(&self) -> Result<Built, ConfigError> {
        crate::config::from_json_in(self.document(), &self.dir)
            .and_then(crate::built::build)
            .map_err(|e| self.locate(e))
    }

    /// `routes[3].upstream` -> `routes/<id>.upstream`: the admin user knows ids, not positions.
    fn locate(&self, mut e: ConfigError) -> ConfigError {
        for k in [Kind::Routes, Kind::Upstreams, Kind::Consumers, Kind::Apis] {
            let prefix = format!("{}[", k.seg());
            if let Some(rest) = e.path.strip_prefix(&prefix) {
                if let Some((idx, tail)) = rest.split_once(']') {
                    if let Some(id) = idx
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| self.sets[k.seg()].keys().nth(i))
                    {
                        e.path = format!("{}/{id}{tail}", k.seg());
                    }
                }
            }
        }
        e
    }

    /// Writes the collections to the state file (atomically: temp file, then rename).
    pub fn persist(&mut self) -> Result<(), String> {
        let Some(p) = &self.state_file else {
            return Ok(());
        };
        let mut state = Map::new();
        for k in KINDS {
            state.insert(
                k.seg().into(),
                Value::Object(self.sets[k.seg()].clone().into_iter().collect()),
            );
        }
        let tmp = p.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&Value::Object(state)).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, p).map_err(|e| format!("cannot rename to {}: {e}", p.display()))?;
        // The state file now holds every journaled change; replaying them again would be
        // harmless (puts and deletes by id), but there is no need.
        let j = journal_file(p);
        match std::fs::remove_file(&j) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot remove {}: {e}", j.display()))
            }
            _ => {}
        }
        self.journaled = 0;
        Ok(())
    }

    /// Who refers to `kind/id` (only routes refer to upstreams by name).
    pub fn references(&self, kind: Kind, id: &str) -> Vec<String> {
        if kind != Kind::Upstreams {
            return Vec::new();
        }
        ["routes", "apis"]
            .into_iter()
            .flat_map(|k| {
                self.sets[k]
                    .iter()
                    .filter(|(_, r)| r.get("upstream").and_then(Value::as_str) == Some(id))
                    .map(move |(rid, _)| format!("{k}/{rid}"))
            })
            .collect()
    }
}

/// Journal entries after which a change rewrites the whole state file (and clears the journal).
const COMPACT_AFTER: usize = 4096;

/// The journal of changes since the state file was written: `<state file>.journal`.
pub fn journal_file(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".journal");
    state.with_file_name(name)
}

/// The state file's default place: beside the config file.
pub fn default_state_file(source: &Path) -> PathBuf {
    let mut name = source.file_name().unwrap_or_default().to_os_string();
    name.push(".state.json");
    source.with_file_name(name)
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn setup(tag: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("ringway-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("gw.toml");
        std::fs::write(
            &src,
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[[upstreams]]\nname = \"a\"\nnodes = [{ addr = \"127.0.0.1:9\" }]\n[[routes]]\nname = \"r1\"\npaths = [\"/1\"]\nupstream = \"a\"\n",
        )
        .unwrap();
        let state = default_state_file(&src);
        (src, state)
    }

    fn route_ids(s: &Document) -> Vec<&str> {
        s.sets["routes"].keys().map(String::as_str).collect()
    }

    #[test]
    fn journal_replays_and_a_torn_tail_is_dropped() {
        let (src, state) = setup("journal");
        let mut s = Document::open(&src, Some(state.clone())).unwrap();
        let r2 = json!({"name": "r2", "paths": ["/2"], "upstream": "a"});
        s.sets
            .get_mut("routes")
            .unwrap()
            .insert("r2".into(), r2.clone());
        s.persist_change(Kind::Routes, "r2", Some(&r2)).unwrap();
        s.sets.get_mut("routes").unwrap().remove("r1");
        s.persist_change(Kind::Routes, "r1", None).unwrap();
        assert!(
            !state.exists(),
            "no whole-state write for a one-route change"
        );
        let j = journal_file(&state);
        // A crash mid-append leaves a line without its newline: it was never acknowledged.
        let mut text = std::fs::read_to_string(&j).unwrap();
        text.push_str(r#"{"kind":"routes","id":"r3","value":{"na"#);
        std::fs::write(&j, text).unwrap();
        let back = Document::open(&src, Some(state.clone())).unwrap();
        assert_eq!(route_ids(&back), ["r2"]);
        assert!(back.build().is_ok());

        // A whole write folds the journal in and removes it.
        let mut back = back;
        back.persist().unwrap();
        assert!(state.exists() && !j.exists());
        assert_eq!(
            route_ids(&Document::open(&src, Some(state)).unwrap()),
            ["r2"]
        );
        let _ = std::fs::remove_dir_all(src.parent().unwrap());
    }
}
