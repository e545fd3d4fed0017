//! Request validators compiled from a document, once per config generation: per operation, a
//! JSON Schema validator for every parameter and request-body media type (draft 4 with OpenAPI
//! 3.0's `nullable` for 3.0 documents, 2020-12 for 3.1), and the checks a request runs through.

use std::sync::Arc;

use jsonschema::{Draft, Registry, Validator};
use serde_json::{json, Map, Value};

use super::doc::{Dialect, Document, Op, Piece};
use super::inputs::{Param, ParamIn, Shape, Style};
use super::params;
use super::pointer::DocError;

/// The base URI the document is registered under, so `$ref`s resolve inside it.
const BASE: &str = "urn:ringway:openapi";

/// How deep the 3.0 -> draft 4 rewrite walks (deeper nodes are left as written).
const MAX_DEPTH: usize = 256;

/// One request check that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `path`, `query`, `header`, `cookie` or `body`.
    pub at: &'static str,
    /// The parameter's name (`None` for the body).
    pub name: Option<String>,
    /// JSON pointer into the parameter's value or the body ("" = the value itself).
    pub pointer: String,
    pub detail: String,
    /// The body's media type is not one the operation takes (answered 415, not 400).
    pub media_type: bool,
}

impl Failure {
    fn new(at: &'static str, name: Option<&str>, pointer: String, detail: String) -> Failure {
        Failure {
            at,
            name: name.map(str::to_string),
            pointer,
            detail,
            media_type: false,
        }
    }
}

struct ParamCheck {
    p: Param,
    schema: Option<Validator>,
}

enum MediaKind {
    Json,
    Form(Map<String, Value>),
    /// Not parsed (multipart, binary, text): only presence is checked.
    Other,
}

struct MediaCheck {
    /// Lowercase media type as written in the document (may be `*/*`, `application/*`).
    range: String,
    kind: MediaKind,
    schema: Option<Validator>,
}

struct BodyCheck {
    required: bool,
    media: Vec<MediaCheck>,
}

/// One operation's compiled checks.
pub struct Operation {
    pub name: String,
    segments: Vec<Vec<Piece>>,
    params: Vec<ParamCheck>,
    body: Option<BodyCheck>,
}

impl std::fmt::Debug for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operation")
            .field("name", &self.name)
            .finish()
    }
}

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

/// What a request offers the head checks: the path, the raw query, and a header lookup by
/// lowercase name.
pub struct RequestParts<'a> {
    pub path: &'a [u8],
    pub query: &'a [u8],
    pub header: &'a dyn Fn(&str) -> Option<&'a [u8]>,
}

impl Operation {
    /// The operation takes a body the gateway has to read to check (JSON or form with a schema,
    /// or a required one).
    pub fn wants_body(&self) -> bool {
        self.body
            .as_ref()
            .is_some_and(|b| b.required || b.media.iter().any(|m| m.schema.is_some()))
    }

    /// Checks path, query, header and cookie parameters; failures are appended to `out`.
    pub fn check_head(&self, req: &RequestParts<'_>, out: &mut Vec<Failure>) {
        if self.params.is_empty() {
            return;
        }
        let mut query: Option<Vec<(String, String)>> = None;
        for c in &self.params {
            let p = &c.p;
            let value: Option<Value> = match p.at {
                ParamIn::Path => self.path_param(req.path, &p.name).map(|t| {
                    let t = params::unstyle(p.style, &p.name, &t).to_string();
                    params::value(p.shape, p.style, false, &[t])
                }),
                ParamIn::Query => {
                    let pairs = query.get_or_insert_with(|| params::query_pairs(req.query));
                    if p.style == Style::DeepObject || (p.shape == Shape::Object && p.explode) {
                        if p.style == Style::DeepObject {
                            params::deep_object(&p.name, pairs)
                        } else {
                            None
                        }
                    } else {
                        let vals: Vec<String> = pairs
                            .iter()
                            .filter(|(k, _)| *k == p.name)
                            .map(|(_, v)| v.clone())
                            .collect();
                        (!vals.is_empty())
                            .then(|| params::value(p.shape, p.style, p.explode, &vals))
                    }
                }
                ParamIn::Header => {
                    let lower = p.name.to_ascii_lowercase();
                    // OpenAPI: these three are described elsewhere and ignored as parameters.
                    if matches!(lower.as_str(), "accept" | "content-type" | "authorization") {
                        continue;
                    }
                    (req.header)(&lower).map(|v| {
                        let t = String::from_utf8_lossy(v).trim().to_string();
                        params::value(p.shape, Style::Simple, p.explode, &[t])
                    })
                }
                ParamIn::Cookie => (req.header)("cookie").and_then(|c| {
                    String::from_utf8_lossy(c)
                        .split(';')
                        .filter_map(|kv| kv.trim().split_once('='))
                        .find(|(k, _)| *k == p.name)
                        .map(|(_, v)| params::value(p.shape, Style::Form, false, &[v.to_string()]))
                }),
            };
            let at = p.at.as_str();
            let Some(value) = value else {
                if p.required {
                    out.push(Failure::new(
                        at,
                        Some(&p.name),
                        String::new(),
                        format!("required {at} parameter {:?} is missing", p.name),
                    ));
                }
                continue;
            };
            if let Some(v) = &c.schema {
                for e in v.iter_errors(&value) {
                    out.push(Failure::new(
                        at,
                        Some(&p.name),
                        e.instance_path().as_str().to_string(),
                        e.to_string(),
                    ));
                }
            }
        }
    }

    /// The text of path parameter `name` in `path` (percent-decoded).
    fn path_param(&self, path: &[u8], name: &str) -> Option<String> {
        // The template is the path's tail: what precedes it (base path, a version segment, or
        // nothing for a default version) is a static prefix the route already matched.
        let all: Vec<&[u8]> = path.strip_prefix(b"/")?.split(|&b| b == b'/').collect();
        let segs = all
            .get(all.len().checked_sub(self.segments.len())?..)?
            .iter()
            .copied();
        for (pieces, seg) in self.segments.iter().zip(segs) {
            if !pieces
                .iter()
                .any(|p| matches!(p, Piece::Var(v) if v == name))
            {
                continue;
            }
            let seg = params::decode(seg, false)?;
            let mut rest = seg.as_str();
            let mut it = pieces.iter().peekable();
            while let Some(p) = it.next() {
                match p {
                    Piece::Lit(l) => rest = rest.strip_prefix(l.as_str())?,
                    Piece::Var(v) => {
                        let end = match it.peek() {
                            Some(Piece::Lit(next)) => rest.find(next.as_str())?,
                            _ => rest.len(),
                        };
                        if v == name {
                            return Some(rest[..end].to_string());
                        }
                        rest = &rest[end..];
                    }
                }
            }
        }
        None
    }

    /// Checks a request body read whole (`body` empty when the request had none).
    pub fn check_body(&self, content_type: Option<&[u8]>, body: &[u8], out: &mut Vec<Failure>) {
        let Some(b) = &self.body else { return };
        if body.is_empty() && content_type.is_none() {
            if b.required {
                out.push(Failure::new(
                    "body",
                    None,
                    String::new(),
                    "a request body is required".into(),
                ));
            }
            return;
        }
        let ct = content_type
            .map(|c| String::from_utf8_lossy(c).to_ascii_lowercase())
            .unwrap_or_default();
        let essence = ct.split(';').next().unwrap_or("").trim();
        let Some(m) = media_for(&b.media, essence) else {
            let offered: Vec<&str> = b.media.iter().map(|m| m.range.as_str()).collect();
            let mut f = Failure::new(
                "body",
                None,
                String::new(),
                format!("media type {essence:?} is not one of {offered:?}"),
            );
            f.media_type = true;
            out.push(f);
            return;
        };
        let value = match &m.kind {
            MediaKind::Other => return,
            MediaKind::Json => match serde_json::from_slice::<Value>(body) {
                Ok(v) => v,
                Err(e) => {
                    out.push(Failure::new(
                        "body",
                        None,
                        String::new(),
                        format!("not JSON: {e}"),
                    ));
                    return;
                }
            },
            MediaKind::Form(shapes) => form_value(body, shapes),
        };
        if let Some(v) = &m.schema {
            for e in v.iter_errors(&value) {
                out.push(Failure::new(
                    "body",
                    None,
                    e.instance_path().as_str().to_string(),
                    e.to_string(),
                ));
            }
        }
    }
}

/// The most specific media range for `essence`: exact, then `type/*` and `*/*`; a JSON
/// subtype (`application/merge-patch+json`) also takes an `application/json` description.
fn media_for<'a>(media: &'a [MediaCheck], essence: &str) -> Option<&'a MediaCheck> {
    let top = essence.split('/').next().unwrap_or("");
    media
        .iter()
        .find(|m| m.range == essence)
        .or_else(|| {
            media
                .iter()
                .find(|m| m.range.strip_suffix("/*").is_some_and(|t| t == top))
        })
        .or_else(|| media.iter().find(|m| m.range == "*/*"))
        .or_else(|| {
            (essence.ends_with("+json"))
                .then(|| media.iter().find(|m| m.range == "application/json"))
                .flatten()
        })
}

/// A form body as a JSON object, each field read per its property's shape.
fn form_value(body: &[u8], shapes: &Map<String, Value>) -> Value {
    let pairs = params::query_pairs(body);
    let mut m = Map::new();
    for (k, v) in &pairs {
        let kind = shapes.get(k).and_then(Value::as_str).unwrap_or("string");
        let scalar = match kind {
            "integer" => super::inputs::Scalar::Integer,
            "number" => super::inputs::Scalar::Number,
            "boolean" => super::inputs::Scalar::Boolean,
            _ => super::inputs::Scalar::String,
        };
        if kind == "array" {
            let e = m
                .entry(k.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = e {
                a.push(Value::String(v.clone()));
            }
        } else {
            m.insert(k.clone(), params::scalar(scalar, v));
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r##"
openapi: 3.0.3
info: { title: t, version: "1" }
paths:
  /pets/{petId}:
    parameters:
      - { name: petId, in: path, required: true, schema: { type: integer, minimum: 1 } }
    post:
      operationId: updatePet
      parameters:
        - { name: tags, in: query, schema: { type: array, items: { type: string, enum: [a, b] } } }
        - { name: X-Trace, in: header, required: true, schema: { type: string, pattern: "^[0-9a-f]+$" } }
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: "#/components/schemas/Pet" }
components:
  schemas:
    Pet:
      type: object
      additionalProperties: false
      required: [name, id]
      properties:
        id: { type: integer, readOnly: true }
        name: { type: string }
        tag: { type: string, nullable: true }
"##;

    fn op() -> Arc<Operation> {
        let doc = super::super::parse(DOC).expect("doc");
        compile(&doc).expect("compile").ops[0].clone()
    }

    fn head(op: &Operation, path: &str, query: &str, trace: Option<&'static str>) -> Vec<Failure> {
        let mut out = Vec::new();
        let h = move |n: &str| {
            (n == "x-trace")
                .then_some(trace)
                .flatten()
                .map(str::as_bytes)
        };
        op.check_head(
            &RequestParts {
                path: path.as_bytes(),
                query: query.as_bytes(),
                header: &h,
            },
            &mut out,
        );
        out
    }

    #[test]
    fn parameters_by_location() {
        let op = op();
        assert!(head(&op, "/v1/pets/7", "tags=a&tags=b", Some("ab12")).is_empty());
        let f = head(&op, "/v1/pets/x", "tags=c", None);
        let at: Vec<(&str, &str, &str)> = f
            .iter()
            .map(|f| (f.at, f.name.as_deref().unwrap_or(""), f.pointer.as_str()))
            .collect();
        assert_eq!(
            at,
            [
                ("path", "petId", ""),
                ("query", "tags", "/0"),
                ("header", "X-Trace", "")
            ]
        );
        let f = head(&op, "/v1/pets/0", "", Some("xyz"));
        assert_eq!(f.len(), 2, "{f:?}");
    }

    #[test]
    fn body_with_ref_nullable_readonly_and_additional_properties() {
        let op = op();
        let json = Some(&b"application/json"[..]);
        let mut out = Vec::new();
        op.check_body(json, br#"{"name":"rex","tag":null}"#, &mut out);
        assert!(out.is_empty(), "{out:?}");
        op.check_body(json, br#"{"name":5,"extra":1}"#, &mut out);
        let ptrs: Vec<&str> = out.iter().map(|f| f.pointer.as_str()).collect();
        assert!(ptrs.contains(&"/name") && ptrs.contains(&""), "{out:?}");
        out.clear();
        op.check_body(None, b"", &mut out);
        assert_eq!(out[0].detail, "a request body is required");
        out.clear();
        op.check_body(Some(b"text/plain"), b"x", &mut out);
        assert!(out[0].media_type);
    }
}
