//! Reading an OpenAPI document: JSON or YAML text -> `Document` with its operations listed and
//! checked (path templates, operation ids; inputs.rs reads parameters and bodies). Errors carry
//! the JSON pointer of the offending node (`#/paths/~1pets/get: ...`). Compiles no schema.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::inputs::{body, params, Body, Param, ParamIn};
use super::pointer::{escape, resolve, DocError};

/// Which JSON Schema dialect the document's schemas are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAPI 3.0's schema object (draft 4/5 based, `nullable`, boolean `exclusiveMinimum`).
    V30,
    /// OpenAPI 3.1: JSON Schema 2020-12.
    V31,
}

/// A path template segment: literal text and `{name}` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Lit(String),
    Var(String),
}

/// One operation: a method on a path.
#[derive(Debug, Clone)]
pub struct Op {
    /// Uppercase.
    pub method: &'static str,
    /// The path template as written (`/pets/{petId}`).
    pub path: String,
    /// The operation object's pointer (`#/paths/~1pets~1{petId}/get`).
    pub pointer: String,
    /// `operationId`, or `METHOD /path` when it has none.
    pub name: String,
    pub operation_id: Option<String>,
    /// The path in ringway's route syntax: every templated segment becomes one `{param}`.
    pub route_path: String,
    /// The template's segments after the leading '/'.
    pub segments: Vec<Vec<Piece>>,
    pub params: Vec<Param>,
    pub body: Option<Body>,
    /// `x-ringway-plugins`: plugin name -> its table, as JSON.
    pub plugins: BTreeMap<String, Value>,
    pub deprecated: bool,
}

/// A parsed, checked document.
#[derive(Debug, Clone)]
pub struct Document {
    pub dialect: Dialect,
    pub root: Arc<Value>,
    pub ops: Vec<Op>,
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Parses JSON (text starting with `{`) or YAML, and checks it as an OpenAPI 3.0/3.1 document.
pub fn parse(text: &str) -> Result<Document, DocError> {
    let root = parse_value(text)?;
    from_value(root)
}

/// The document's text as a JSON value (YAML read with string keys).
pub fn parse_value(text: &str) -> Result<Value, DocError> {
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if t.starts_with('{') {
        serde_json::from_str(t).map_err(|e| DocError::new("#", format!("invalid JSON: {e}")))
    } else {
        super::yaml::parse(t).map_err(|e| DocError::new("#", format!("invalid YAML: {e}")))
    }
}

/// Checks a document already read into JSON.
pub fn from_value(root: Value) -> Result<Document, DocError> {
    let Some(obj) = root.as_object() else {
        return Err(DocError::new("#", "an OpenAPI document must be an object"));
    };
    let dialect = match obj.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.0.") || v == "3.0" => Dialect::V30,
        Some(v) if v.starts_with("3.1.") || v == "3.1" => Dialect::V31,
        Some(v) => {
            return Err(DocError::new(
                "#/openapi",
                format!("unsupported version {v:?}; expected 3.0.x or 3.1.x"),
            ))
        }
        None if obj.contains_key("swagger") => {
            return Err(DocError::new(
                "#/swagger",
                "Swagger 2.0 is not supported; convert the document to OpenAPI 3",
            ))
        }
        None => {
            return Err(DocError::new(
                "#",
                "missing \"openapi\": expected an OpenAPI 3.0 or 3.1 document",
            ))
        }
    };
    let mut ops = Vec::new();
    match obj.get("paths") {
        None if dialect == Dialect::V31 => {}
        None => return Err(DocError::new("#", "missing \"paths\"")),
        Some(Value::Object(paths)) => {
            for (path, item) in paths {
                let at = format!("#/paths/{}", escape(path));
                operations(&root, path, item, &at, &mut ops)?;
            }
        }
        Some(_) => return Err(DocError::new("#/paths", "expected an object")),
    }
    let mut ids: BTreeMap<&str, &str> = BTreeMap::new();
    for op in &ops {
        if let Some(id) = &op.operation_id {
            if let Some(first) = ids.insert(id, &op.pointer) {
                return Err(DocError::new(
                    format!("{}/operationId", op.pointer),
                    format!("duplicate operationId {id:?} (first at {first})"),
                ));
            }
        }
    }
    Ok(Document {
        dialect,
        root: Arc::new(root),
        ops,
    })
}

fn operations(
    root: &Value,
    path: &str,
    item: &Value,
    at: &str,
    ops: &mut Vec<Op>,
) -> Result<(), DocError> {
    if !path.starts_with('/') {
        return Err(DocError::new(
            at,
            format!("path {path:?} must start with '/'"),
        ));
    }
    let segments = template(path).map_err(|m| DocError::new(at, m))?;
    let (item, item_at) = resolve(root, item, at)?;
    let Some(item) = item.as_object() else {
        return Err(DocError::new(item_at, "a path item must be an object"));
    };
    let shared = match item.get("parameters") {
        Some(p) => params(root, p, &format!("{item_at}/parameters"))?,
        None => Vec::new(),
    };
    for method in METHODS {
        let Some(op) = item.get(method) else { continue };
        let op_at = format!("{item_at}/{method}");
        let Some(o) = op.as_object() else {
            return Err(DocError::new(op_at, "an operation must be an object"));
        };
        let mut list = shared.clone();
        if let Some(p) = o.get("parameters") {
            for p in params(root, p, &format!("{op_at}/parameters"))? {
                list.retain(|q| !(q.name == p.name && q.at == p.at));
                list.push(p);
            }
        }
        // Every templated name must be a declared path parameter and the other way round.
        let vars: Vec<&str> = segments
            .iter()
            .flatten()
            .filter_map(|p| match p {
                Piece::Var(v) => Some(v.as_str()),
                Piece::Lit(_) => None,
            })
            .collect();
        for v in &vars {
            if !list.iter().any(|p| p.at == ParamIn::Path && p.name == *v) {
                return Err(DocError::new(
                    &op_at,
                    format!("path parameter {{{v}}} of {path:?} is not declared in \"parameters\""),
                ));
            }
        }
        if let Some(p) = list
            .iter()
            .find(|p| p.at == ParamIn::Path && !vars.contains(&p.name.as_str()))
        {
            return Err(DocError::new(
                &p.pointer,
                format!("path parameter {:?} does not appear in {path:?}", p.name),
            ));
        }
        let body = match o.get("requestBody") {
            Some(b) => Some(body(root, b, &format!("{op_at}/requestBody"))?),
            None => None,
        };
        let operation_id = match o.get("operationId") {
            None => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => {
                return Err(DocError::new(
                    format!("{op_at}/operationId"),
                    "expected a non-empty string",
                ))
            }
        };
        let plugins = match o.get("x-ringway-plugins") {
            None => BTreeMap::new(),
            Some(Value::Object(m)) => {
                let mut out = BTreeMap::new();
                for (k, v) in m {
                    if !v.is_object() {
                        return Err(DocError::new(
                            format!("{op_at}/x-ringway-plugins/{}", escape(k)),
                            "expected an object (the plugin's table)",
                        ));
                    }
                    out.insert(k.clone(), v.clone());
                }
                out
            }
            Some(_) => {
                return Err(DocError::new(
                    format!("{op_at}/x-ringway-plugins"),
                    "expected an object of plugin name -> table",
                ))
            }
        };
        let upper = method.to_ascii_uppercase();
        ops.push(Op {
            method: METHODS_UPPER[METHODS.iter().position(|m| *m == method).unwrap_or(0)],
            path: path.to_string(),
            pointer: op_at,
            name: operation_id
                .clone()
                .unwrap_or_else(|| format!("{upper} {path}")),
            operation_id,
            route_path: route_path(&segments),
            segments: segments.clone(),
            params: list,
            body,
            plugins,
            deprecated: o.get("deprecated") == Some(&Value::Bool(true)),
        });
    }
    Ok(())
}

const METHODS_UPPER: [&str; 8] = [
    "GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE",
];

/// Splits `/a/{b}.{c}` into segments of literals and variables.
pub fn template(path: &str) -> Result<Vec<Vec<Piece>>, String> {
    let mut out = Vec::new();
    for seg in path[1..].split('/') {
        let mut pieces = Vec::new();
        let mut rest = seg;
        while !rest.is_empty() {
            match rest.find('{') {
                None => {
                    if rest.contains('}') {
                        return Err(format!("unbalanced '}}' in path {path:?}"));
                    }
                    pieces.push(Piece::Lit(rest.to_string()));
                    rest = "";
                }
                Some(i) => {
                    if i > 0 {
                        if rest[..i].contains('}') {
                            return Err(format!("unbalanced '}}' in path {path:?}"));
                        }
                        pieces.push(Piece::Lit(rest[..i].to_string()));
                    }
                    let Some(j) = rest[i..].find('}') else {
                        return Err(format!("unclosed '{{' in path {path:?}"));
                    };
                    let name = &rest[i + 1..i + j];
                    if name.is_empty() || name.contains('{') {
                        return Err(format!("bad parameter name in path {path:?}"));
                    }
                    if matches!(pieces.last(), Some(Piece::Var(_))) {
                        return Err(format!(
                            "two parameters without text between them in {path:?} cannot be told apart"
                        ));
                    }
                    pieces.push(Piece::Var(name.to_string()));
                    rest = &rest[i + j + 1..];
                }
            }
        }
        out.push(pieces);
    }
    Ok(out)
}

/// ringway's route path for a template: a segment with any variable becomes one `{name}`
/// (names cleaned to route-parameter characters and made unique).
pub fn route_path(segments: &[Vec<Piece>]) -> String {
    let mut out = String::new();
    let mut used: Vec<String> = Vec::new();
    for seg in segments {
        out.push('/');
        let vars: Vec<&str> = seg
            .iter()
            .filter_map(|p| match p {
                Piece::Var(v) => Some(v.as_str()),
                Piece::Lit(_) => None,
            })
            .collect();
        if vars.is_empty() {
            for p in seg {
                if let Piece::Lit(l) = p {
                    out.push_str(l);
                }
            }
            continue;
        }
        let mut name: String = vars
            .join("_")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = name.clone();
        let mut n = 2;
        while used.contains(&name) {
            name = format!("{base}{n}");
            n += 1;
        }
        out.push('{');
        out.push_str(&name);
        out.push('}');
        used.push(name);
    }
    out
}
