//! Compiling a document's validators, once per config generation: per operation, a JSON Schema
//! validator for every parameter and request-body media type (draft 4 with OpenAPI 3.0's
//! `nullable` for 3.0 documents, 2020-12 for 3.1). Runs no request check (check.rs does).

use std::sync::Arc;

use jsonschema::{Draft, Registry, Validator};
use serde_json::{json, Map, Value};

use super::check::{BodyCheck, MediaCheck, MediaKind, Operation, ParamCheck};
use super::doc::{Dialect, Document, Op};
use super::inputs::Shape;
use super::pointer::DocError;

/// The base URI the document is registered under, so `$ref`s resolve inside it.
const BASE: &str = "urn:ringway:openapi";

/// How deep the 3.0 -> draft 4 rewrite walks (deeper nodes are left as written).
const MAX_DEPTH: usize = 256;

/// Every operation of a document, compiled, in `Document::ops` order.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub ops: Vec<Arc<Operation>>,
}

/// Compiles the validators of every operation of `doc` (routed under any static prefix).
pub fn compile(doc: &Document) -> Result<Compiled, DocError> {
    let (draft, root) = match doc.dialect {
        Dialect::V30 => {
            let mut r = (*doc.root).clone();
            openapi30_to_draft4(&mut r, 0);
            (Draft::Draft4, r)
        }
        Dialect::V31 => (Draft::Draft202012, (*doc.root).clone()),
    };
    let registry = Registry::new()
        .draft(draft)
        .add(BASE, root)
        .and_then(|b| b.prepare())
        .map_err(|e| DocError::new("#", format!("cannot index the document's schemas: {e}")))?;
    let mut ops = Vec::with_capacity(doc.ops.len());
    for op in &doc.ops {
        ops.push(Arc::new(operation(doc, op, draft, &registry)?));
    }
    Ok(Compiled { ops })
}

fn validator(reg: &Registry<'_>, draft: Draft, ptr: &str) -> Result<Validator, DocError> {
    let target = format!("{BASE}{}", fragment(ptr));
    jsonschema::options()
        .with_draft(draft)
        .with_registry(reg)
        .build(&json!({ "$ref": target }))
        .map_err(|e| DocError::new(ptr, format!("invalid schema: {e}")))
}

/// A document pointer (`#/paths/~1pets/...`) as a URI fragment: bytes outside the fragment
/// characters percent-encoded.
fn fragment(ptr: &str) -> String {
    let mut out = String::with_capacity(ptr.len());
    for b in ptr.bytes() {
        if b.is_ascii_alphanumeric() || b"#/~-._!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn operation(
    doc: &Document,
    op: &Op,
    draft: Draft,
    reg: &Registry<'_>,
) -> Result<Operation, DocError> {
    let mut params = Vec::with_capacity(op.params.len());
    for p in &op.params {
        let schema = match &p.schema {
            Some(ptr) => Some(validator(reg, draft, ptr)?),
            None => None,
        };
        params.push(ParamCheck {
            p: p.clone(),
            schema,
        });
    }
    let body = match &op.body {
        None => None,
        Some(b) => {
            let mut media = Vec::with_capacity(b.media.len());
            for (range, ptr) in &b.media {
                let essence = range.split(';').next().unwrap_or("").trim().to_string();
                let kind = if essence == "application/json" || essence.ends_with("+json") {
                    MediaKind::Json
                } else if essence == "application/x-www-form-urlencoded" {
                    MediaKind::Form(form_shapes(doc, ptr.as_deref())?)
                } else {
                    MediaKind::Other
                };
                let schema = match (ptr, &kind) {
                    (Some(ptr), MediaKind::Json | MediaKind::Form(_)) => {
                        Some(validator(reg, draft, ptr)?)
                    }
                    _ => None,
                };
                media.push(MediaCheck {
                    range: essence,
                    kind,
                    schema,
                });
            }
            Some(BodyCheck {
                required: b.required,
                media,
            })
        }
    };
    Ok(Operation {
        name: op.name.clone(),
        segments: op.segments.clone(),
        params,
        body,
    })
}

/// For a form body: property name -> the shape its text is read as (as JSON: a string).
fn form_shapes(doc: &Document, ptr: Option<&str>) -> Result<Map<String, Value>, DocError> {
    let mut out = Map::new();
    let Some(ptr) = ptr else { return Ok(out) };
    let Some(s) = doc.root.pointer(&ptr[1..]) else {
        return Ok(out);
    };
    let (s, at) = super::pointer::resolve(&doc.root, s, ptr)?;
    if let Some(Value::Object(props)) = s.get("properties") {
        for (k, v) in props {
            let p_at = format!("{at}/properties/{}", super::pointer::escape(k));
            let shape = super::inputs::shape_of(&doc.root, v, &p_at)?;
            out.insert(k.clone(), Value::String(shape_name(shape).into()));
        }
    }
    Ok(out)
}

fn shape_name(s: Shape) -> &'static str {
    match s {
        Shape::Integer => "integer",
        Shape::Number => "number",
        Shape::Boolean => "boolean",
        Shape::Array(_) => "array",
        _ => "string",
    }
}

/// OpenAPI 3.0 schema objects as draft 4: `nullable: true` admits null, and a required
/// `readOnly` property is not required of a request.
fn openapi30_to_draft4(v: &mut Value, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match v {
        Value::Array(a) => a.iter_mut().for_each(|x| openapi30_to_draft4(x, depth + 1)),
        Value::Object(o) => {
            for (_, x) in o.iter_mut() {
                openapi30_to_draft4(x, depth + 1);
            }
            let read_only: Vec<String> = match o.get("properties") {
                Some(Value::Object(p)) => p
                    .iter()
                    .filter(|(_, s)| s.get("readOnly") == Some(&Value::Bool(true)))
                    .map(|(k, _)| k.clone())
                    .collect(),
                _ => Vec::new(),
            };
            if !read_only.is_empty() {
                if let Some(Value::Array(req)) = o.get_mut("required") {
                    req.retain(|r| !r.as_str().is_some_and(|r| read_only.iter().any(|x| x == r)));
                }
            }
            if o.get("nullable") != Some(&Value::Bool(true)) {
                return;
            }
            if let Some(r) = o.remove("$ref") {
                // Draft 4 ignores a $ref's siblings: nullable wraps it instead.
                o.insert("anyOf".into(), json!([{ "$ref": r }, { "type": "null" }]));
                return;
            }
            match o.get_mut("type") {
                Some(Value::String(t)) => {
                    let t = std::mem::take(t);
                    o.insert("type".into(), json!([t, "null"]));
                }
                Some(Value::Array(ts)) if !ts.iter().any(|t| t == "null") => {
                    ts.push(Value::from("null"));
                }
                _ => {}
            }
            if let Some(Value::Array(e)) = o.get_mut("enum") {
                if !e.contains(&Value::Null) {
                    e.push(Value::Null);
                }
            }
        }
        _ => {}
    }
}
