//! The crate's layering, written once, and the test that holds the code to it: it reads every
//! `crate::`/`super::` path in src/ and fails on an upward import or an import cycle.
//!
//! Layers, top to bottom (README "Layout" shows the same table). A module may import modules of
//! its own layer or any layer below, never above; imports within one layer must not form a
//! cycle, and neither may the files inside one module (`mod.rs` aside, which declares them).
//!
//! | layer | modules | what lives there |
//! |---|---|---|
//! | start-up | main, server, admin, active_health, demo, fleet, etcd, upgrade, nofile, ocsp | wiring, signals, the admin/status/health/fleet (limits, cache tier)/etcd threads, the demo upstream, binary upgrades, the open-files limit, the OCSP stapling thread |
//! | runtime | runtime | shard threads, control channels, the node's mesh, the plane (two-step swaps), drain |
//! | proxy | proxy | the per-connection phase driver and a shard's per-generation state |
//! | build | built | config data -> router + plugin factories |
//! | plugin/cache/limit | plugin, cache, limit | the Plugin trait and plugins; the node-wide cache; limiter state machines |
//! | upstream/route | upstream, route | balancers, passive health, pools; the compiled router |
//! | http/net/config | http, net, config, accesslog, metrics, openapi | wire format; sockets, TLS, rings, the shards' RESP/Redis client; validated config data; log and metric sinks; OpenAPI documents and their validators |
//! | leaves | error, util, local | errors, units, copy-on-write containers, hashers, the cross-core mesh; per-shard deadlines and signals |

/// Top to bottom; see the table above.
pub const LAYERS: &[(&str, &[&str])] = &[
    (
        "start-up",
        &[
            "main",
            "server",
            "etcd",
            "admin",
            "active_health",
            "demo",
            "fleet",
            "upgrade",
            "nofile",
            "ocsp",
        ],
    ),
    ("runtime", &["runtime"]),
    ("proxy", &["proxy"]),
    ("build", &["built"]),
    ("plugin/cache/limit", &["plugin", "cache", "limit"]),
    ("upstream/route", &["upstream", "route"]),
    (
        "http/net/config",
        &["http", "net", "config", "accesslog", "metrics", "openapi"],
    ),
    ("leaves", &["error", "util", "local", "layers"]),
];

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    use super::LAYERS;

    /// One source file: its module path (`src/proxy/pump.rs` -> `["proxy", "pump"]`) and text
    /// with comments removed.
    struct File {
        rel: String,
        module: Vec<String>,
        code: String,
    }

    fn files() -> Vec<File> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).expect("src/ is readable");
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(read(&root, &p));
                }
            }
        }
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        out
    }

    fn read(root: &Path, p: &PathBuf) -> File {
        let rel = p
            .strip_prefix(root)
            .expect("under src/")
            .to_string_lossy()
            .into_owned();
        let mut module: Vec<String> = rel
            .trim_end_matches(".rs")
            .split('/')
            .map(String::from)
            .collect();
        if module.last().is_some_and(|m| m == "mod" || m == "lib") {
            module.pop();
        }
        let text = std::fs::read_to_string(p).expect("source is UTF-8");
        let code = text
            .lines()
            .map(|l| match l.trim_start() {
                t if t.starts_with("//") => "",
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        File {
            rel,
            module,
            code: strip_test_items(&blank_strings(&code)),
        }
    }

    /// Test-only files (`tests.rs`, `*_tests.rs`, `testkit.rs`): their imports are not the
    /// crate's structure, and every test helper may reach any module it tests.
    fn test_only(f: &File) -> bool {
        f.module
            .last()
            .is_some_and(|m| m == "tests" || m == "testkit" || m.ends_with("_tests"))
    }

    /// `code` without the items under `#[cfg(test)]` (a test module's block, a test-only
    /// statement): up to the item's first `;`, or through its braces when `{` comes first.
    fn strip_test_items(code: &str) -> String {
        const ATTR: &str = "#[cfg(test)]";
        let mut out = String::with_capacity(code.len());
        let mut rest = code;
        while let Some(at) = rest.find(ATTR) {
            out.push_str(&rest[..at]);
            let item = &rest[at + ATTR.len()..];
            let mut depth = 0usize;
            let mut end = item.len();
            for (i, c) in item.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth > 0 => {
                        depth -= 1;
                        if depth == 0 {
                            end = i + 1;
                            break;
                        }
                    }
                    ';' if depth == 0 => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            rest = &item[end..];
        }
        out.push_str(rest);
        out
    }

    /// `code` with the inside of every string literal blanked, so paths written in messages
    /// (or in this file's own test) are not read as imports. Knows escapes, `'"'` and `r#"…"#`.
    fn blank_strings(code: &str) -> String {
        let b = code.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i..].starts_with(b"'\"'") {
                out.extend_from_slice(b"' '");
                i += 3;
            } else if b[i..].starts_with(b"r#\"") {
                let end = code[i + 3..].find("\"#").map_or(b.len(), |e| i + 3 + e + 2);
                out.extend(std::iter::repeat_n(b' ', end - i));
                i = end;
            } else if b[i] == b'"' {
                out.push(b' ');
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                    out.push(b' ');
                }
                i += 1;
                out.push(b' ');
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Every path the code names through `crate::` or `super::` (grouped `use` lists expanded),
    /// resolved to absolute module paths.
    fn paths(f: &File) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let b = f.code.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let rest = &f.code[i..];
            let prefix_ok = i == 0
                || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b':');
            let base: Option<(usize, Vec<String>)> = if !prefix_ok {
                None
            } else if rest.starts_with("crate::") {
                Some((7, Vec::new()))
            } else if rest.starts_with("super::") {
                let mut base = f.module.clone();
                let mut n = 0;
                while f.code[i + n..].starts_with("super::") {
                    base.pop();
                    n += 7;
                }
                Some((n, base))
            } else {
                None
            };
            let Some((skip, base)) = base else {
                i += 1;
                continue;
            };
            i += skip;
            i += expand(&f.code[i..], &base, &mut out);
        }
        out
    }

    /// Reads `a::b::{c, d::e}` at the start of `s`, pushing each full path onto `out`; returns
    /// how many bytes it consumed.
    fn expand(s: &str, base: &[String], out: &mut Vec<Vec<String>>) -> usize {
        let mut path = base.to_vec();
        let mut i = 0;
        let b = s.as_bytes();
        loop {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            if i > start {
                path.push(s[start..i].to_string());
            }
            let group = if s[i..].starts_with("::{") {
                Some(3)
            } else if i == 0 && s.starts_with('{') {
                Some(1)
            } else {
                None
            };
            if let Some(skip) = group {
                i += skip;
                loop {
                    while i < b.len() && (b[i] == b' ' || b[i] == b'\n' || b[i] == b',') {
                        i += 1;
                    }
                    if i >= b.len() || b[i] == b'}' {
                        return i + 1;
                    }
                    i += expand(&s[i..], &path, out);
                }
            }
            if s[i..].starts_with("::") {
                i += 2;
                continue;
            }
            out.push(path);
            return i;
        }
    }

    fn layer_of(module: &str) -> Option<usize> {
        LAYERS.iter().position(|(_, ms)| ms.contains(&module))
    }

    fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
        fn visit(
            n: &str,
            g: &BTreeMap<String, BTreeSet<String>>,
            state: &mut BTreeMap<String, u8>,
            stack: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            state.insert(n.to_string(), 1);
            stack.push(n.to_string());
            for m in g.get(n).into_iter().flatten() {
                match state.get(m.as_str()).copied().unwrap_or(0) {
                    1 => {
                        let at = stack.iter().position(|s| s == m).unwrap_or(0);
                        let mut c = stack[at..].to_vec();
                        c.push(m.clone());
                        return Some(c);
                    }
                    0 => {
                        if let Some(c) = visit(m, g, state, stack) {
                            return Some(c);
                        }
                    }
                    _ => {}
                }
            }
            stack.pop();
            state.insert(n.to_string(), 2);
            None
        }
        let mut state = BTreeMap::new();
        for n in graph.keys() {
            if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
                if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                    return Some(c);
                }
            }
        }
        None
    }

    #[test]
    fn every_module_has_a_layer() {
        let files = files();
        assert!(files.len() > 50, "read {} files from src/", files.len());
        let missing: BTreeSet<&str> = files
            .iter()
            .filter_map(|f| f.module.first())
            .map(String::as_str)
            .filter(|m| layer_of(m).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "modules without a layer in src/layers.rs: {missing:?}"
        );
    }

    #[test]
    fn imports_only_run_downward_and_modules_form_no_cycle() {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut upward = Vec::new();
        for f in files() {
            let Some(from) = f.module.first() else {
                continue;
            };
            let Some(from_layer) = layer_of(from) else {
                continue;
            };
            for p in paths(&f) {
                let Some(to) = p.first() else { continue };
                if to == from {
                    continue;
                }
                let Some(to_layer) = layer_of(to) else {
                    continue;
                };
                if to_layer < from_layer {
                    upward.push(format!(
                        "{}: {from} ({}) imports {} ({})",
                        f.rel,
                        LAYERS[from_layer].0,
                        p.join("::"),
                        LAYERS[to_layer].0
                    ));
                }
                graph.entry(from.clone()).or_default().insert(to.clone());
            }
        }
        assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
        assert_eq!(cycle(&graph), None, "modules import each other in a circle");
    }

    #[test]
    fn files_inside_a_module_form_no_cycle() {
        let files = files();
        // Module path -> file, for every file that is not a mod.rs (those only declare and
        // re-export their children).
        let by_module: BTreeMap<Vec<String>, &File> = files
            .iter()
            .filter(|f| !f.rel.ends_with("mod.rs") && f.rel != "lib.rs" && !test_only(f))
            .map(|f| (f.module.clone(), f))
            .collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in by_module.values() {
            for p in paths(f) {
                // The longest prefix of the path that is a file.
                let target = (1..=p.len()).rev().find_map(|n| by_module.get(&p[..n]));
                if let Some(t) = target {
                    if t.rel != f.rel {
                        graph
                            .entry(f.rel.clone())
                            .or_default()
                            .insert(t.rel.clone());
                    }
                }
            }
        }
        assert_eq!(cycle(&graph), None, "files import each other in a circle");
    }

    #[test]
    fn the_reader_sees_grouped_and_relative_imports() {
        let f = File {
            rel: "proxy/pump.rs".into(),
            module: vec!["proxy".into(), "pump".into()],
            code: strip_test_items(&blank_strings(concat!(
                "use crate::{http::parse, net::io::{read_some, IoFail}};\n",
                "use super::splice::relay;\n",
                "let s = \"crate::admin::x\"; let q = '\"'; use crate::error::E;\n",
                "#[cfg(test)]\nmod tests {\n    use crate::server::run;\n}\n",
                "#[cfg(test)]\nlet x = crate::plugin::testkit::tap(a, b);\nuse crate::util::cow;",
            ))),
        };
        let got: Vec<String> = paths(&f).iter().map(|p| p.join("::")).collect();
        assert_eq!(
            got,
            [
                "http::parse",
                "net::io::read_some",
                "net::io::IoFail",
                "proxy::splice::relay",
                "error::E",
                "util::cow"
            ]
        );
    }
}
