//! API documentation on the admin listener: `/apis/` (a plain HTML index: APIs, versions,
//! deprecation, links; no external assets) and `/apis/<name>/<version>/openapi.json` (the
//! document as the gateway exposes it). Reads the running generation; changes nothing.

use serde_json::{json, Value};

use super::http::{Request, Response};
use crate::built::Built;
use crate::config::apis::{http_date, ApiConfig, VersionBy};

/// Answers a GET under `/apis`.
pub fn handle(built: &Built, r: &Request) -> Response {
    let rest = r.path.trim_start_matches("/apis").trim_matches('/');
    if rest.is_empty() {
        return Response::text(200, "text/html; charset=utf-8", index(built));
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let (name, version) = match parts.as_slice() {
        [name, version, "openapi.json"] => (*name, *version),
        _ => return Response::error(404, format!("no such page: {}; see /apis/", r.path)),
    };
    let found = built.cfg.apis.iter().zip(built.apis.iter()).find(|(a, _)| {
        a.name == name
            && (a.version.as_deref() == Some(version) || (version == "default" && a.default))
    });
    match found {
        Some((a, b)) => Response::json(200, &exposed(a, &b.doc.root)),
        None => Response::error(
            404,
            format!("no API {name:?} version {version:?}; see /apis/"),
        ),
    }
}

/// The URL prefix requests for `a` take (base path, and the version segment by path).
fn prefix(a: &ApiConfig) -> String {
    match (&a.version_by, &a.version) {
        (VersionBy::Path, Some(v)) => format!("{}/{v}", a.base_path),
        _ => a.base_path.clone(),
    }
}

/// The document with `servers` set to where the gateway serves it, and the security its
/// `[apis.plugins]` enforce declared.
fn exposed(a: &ApiConfig, root: &Value) -> Value {
    let mut doc = root.clone();
    let base = prefix(a);
    let servers: Vec<Value> = if a.hosts.is_empty() {
        vec![json!({ "url": if base.is_empty() { "/".to_string() } else { base.clone() } })]
    } else {
        a.hosts
            .iter()
            .map(|h| json!({ "url": format!("//{}{base}", h.trim_start_matches("*.")) }))
            .collect()
    };
    doc["servers"] = Value::Array(servers);
    let mut schemes = serde_json::Map::new();
    if let Some(k) = a.plugins.get("key-auth") {
        let header = k.get("header").and_then(|v| v.as_str()).unwrap_or("apikey");
        schemes.insert(
            "ringway-key-auth".into(),
            json!({"type": "apiKey", "in": "header", "name": header}),
        );
    }
    if a.plugins.contains_key("basic-auth") {
        schemes.insert(
            "ringway-basic-auth".into(),
            json!({"type": "http", "scheme": "basic"}),
        );
    }
    if a.plugins.contains_key("jwt-auth") {
        schemes.insert(
            "ringway-jwt-auth".into(),
            json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}),
        );
    }
    if !schemes.is_empty() {
        let security: Vec<Value> = schemes.keys().map(|k| json!({ k.as_str(): [] })).collect();
        if !doc["components"].is_object() {
            doc["components"] = json!({});
        }
        let comp = &mut doc["components"];
        if !comp["securitySchemes"].is_object() {
            comp["securitySchemes"] = json!({});
        }
        for (k, v) in schemes {
            comp["securitySchemes"][k] = v;
        }
        doc["security"] = Value::Array(security);
    }
    doc
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn index(built: &Built) -> String {
    let mut rows = String::new();
    for (a, b) in built.cfg.apis.iter().zip(built.apis.iter()) {
        let version = a.version.as_deref().unwrap_or("default");
        let mut state = Vec::new();
        if a.default {
            state.push("default".to_string());
        }
        if let Some(t) = a.deprecated {
            state.push(if t == 0 {
                "deprecated".to_string()
            } else {
                format!("deprecated since {}", http_date(t))
            });
        }
        if let Some(t) = a.sunset {
            state.push(format!("sunset {}", http_date(t)));
        }
        let title = b.doc.root["info"]["title"].as_str().unwrap_or("");
        let href = format!("/apis/{}/{}/openapi.json", a.name, version);
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><a href=\"{}\">openapi.json</a></td></tr>\n",
            esc(&a.name),
            esc(version),
            esc(title),
            esc(&prefix(a)),
            b.doc.ops.len(),
            esc(&state.join(", ")),
            esc(&href)
        ));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ringway APIs</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}</style>\
         </head><body>\n<h1>APIs</h1>\n<table>\n<tr><th>API</th><th>version</th><th>title</th><th>path</th><th>operations</th><th>state</th><th>document</th></tr>\n{rows}</table>\n</body></html>\n"
    )
}
