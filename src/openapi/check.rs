//! The checks a request runs through against its operation's compiled validators (path, query,
//! header, cookie, body). Per request: allocates only when a request is invalid; compiles nothing.

use jsonschema::Validator;
use serde_json::{Map, Value};

use super::doc::Piece;
use super::inputs::{Param, ParamIn, Shape, Style};
use super::params;

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

pub(super) struct ParamCheck {
    pub(super) p: Param,
    pub(super) schema: Option<Validator>,
}

pub(super) enum MediaKind {
    Json,
    Form(Map<String, Value>),
    /// Not parsed (multipart, binary, text): only presence is checked.
    Other,
}

pub(super) struct MediaCheck {
    /// Lowercase media type as written in the document (may be `*/*`, `application/*`).
    pub(super) range: String,
    pub(super) kind: MediaKind,
    pub(super) schema: Option<Validator>,
}

pub(super) struct BodyCheck {
    pub(super) required: bool,
    pub(super) media: Vec<MediaCheck>,
}

/// One operation's compiled checks.
pub struct Operation {
    pub name: String,
    pub(super) segments: Vec<Vec<Piece>>,
    pub(super) params: Vec<ParamCheck>,
    pub(super) body: Option<BodyCheck>,
}

impl std::fmt::Debug for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operation")
            .field("name", &self.name)
            .finish()
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
    use std::sync::Arc;

    use super::super::compile::compile;
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
