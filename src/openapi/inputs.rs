//! An operation's declared inputs: parameter objects (location, style, the shape their text
//! is read into) and request-body objects, read and checked. Compiles no schema, reads no request.

use serde_json::Value;

use super::pointer::{escape, resolve, DocError};

/// Where a parameter travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamIn {
    Path,
    Query,
    Header,
    Cookie,
}

impl ParamIn {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamIn::Path => "path",
            ParamIn::Query => "query",
            ParamIn::Header => "header",
            ParamIn::Cookie => "cookie",
        }
    }
}

/// How a parameter's text is turned into the JSON value its schema checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    String,
    Integer,
    Number,
    Boolean,
    /// An array of the given item shape.
    Array(Scalar),
    Object,
    /// No `type`: the text is checked as a string.
    Any,
}

/// Item shapes of array parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    String,
    Integer,
    Number,
    Boolean,
}

/// Serialisation style (OpenAPI `style`), resolved to its default per location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Simple,
    Label,
    Matrix,
    Form,
    SpaceDelimited,
    PipeDelimited,
    DeepObject,
}

/// One parameter of an operation (path-level ones merged in, operation's win).
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub at: ParamIn,
    pub required: bool,
    pub style: Style,
    pub explode: bool,
    /// Pointer to the schema in the document (`None`: any value).
    pub schema: Option<String>,
    pub shape: Shape,
    /// Where the parameter object is (after `$ref`), for messages.
    pub pointer: String,
}

/// An operation's request body.
#[derive(Debug, Clone)]
pub struct Body {
    pub required: bool,
    /// Media type (lowercase, as written: `application/json`, `application/*+json`, ...) ->
    /// pointer to its schema.
    pub media: Vec<(String, Option<String>)>,
    pub pointer: String,
}

pub(super) fn params(root: &Value, list: &Value, at: &str) -> Result<Vec<Param>, DocError> {
    let Some(list) = list.as_array() else {
        return Err(DocError::new(at, "expected an array"));
    };
    let mut out: Vec<Param> = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let p = param(root, p, &format!("{at}/{i}"))?;
        if out.iter().any(|q| q.name == p.name && q.at == p.at) {
            return Err(DocError::new(
                &p.pointer,
                format!("duplicate {} parameter {:?}", p.at.as_str(), p.name),
            ));
        }
        out.push(p);
    }
    Ok(out)
}

fn param(root: &Value, v: &Value, at: &str) -> Result<Param, DocError> {
    let (v, at) = resolve(root, v, at)?;
    let Some(o) = v.as_object() else {
        return Err(DocError::new(at, "a parameter must be an object"));
    };
    let name = match o.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(DocError::new(at, "\"name\" must be a non-empty string")),
    };
    let loc = match o.get("in").and_then(Value::as_str) {
        Some("path") => ParamIn::Path,
        Some("query") => ParamIn::Query,
        Some("header") => ParamIn::Header,
        Some("cookie") => ParamIn::Cookie,
        other => {
            return Err(DocError::new(
                at,
                format!(
                    "\"in\" must be \"path\", \"query\", \"header\" or \"cookie\", got {}",
                    other.map_or("nothing".to_string(), |s| format!("{s:?}"))
                ),
            ))
        }
    };
    let required = match o.get("required") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(DocError::new(
                format!("{at}/required"),
                "expected a boolean",
            ))
        }
    };
    if loc == ParamIn::Path && !required {
        return Err(DocError::new(
            format!("{at}/required"),
            format!("path parameter {name:?} must have \"required\": true"),
        ));
    }
    let style = match o.get("style").and_then(Value::as_str) {
        None => match loc {
            ParamIn::Path | ParamIn::Header => Style::Simple,
            ParamIn::Query | ParamIn::Cookie => Style::Form,
        },
        Some("simple") => Style::Simple,
        Some("label") => Style::Label,
        Some("matrix") => Style::Matrix,
        Some("form") => Style::Form,
        Some("spaceDelimited") => Style::SpaceDelimited,
        Some("pipeDelimited") => Style::PipeDelimited,
        Some("deepObject") => Style::DeepObject,
        Some(s) => {
            return Err(DocError::new(
                format!("{at}/style"),
                format!("unknown style {s:?}"),
            ))
        }
    };
    let explode = match o.get("explode") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(DocError::new(format!("{at}/explode"), "expected a boolean")),
        None => style == Style::Form,
    };
    // `schema`, or `content` with one media type holding the schema.
    let schema_at = if o.contains_key("schema") {
        Some(format!("{at}/schema"))
    } else if let Some(Value::Object(c)) = o.get("content") {
        c.iter()
            .next()
            .filter(|(_, m)| m.get("schema").is_some())
            .map(|(k, _)| format!("{at}/content/{}/schema", escape(k)))
    } else {
        None
    };
    let shape = match &schema_at {
        Some(p) => {
            let s = root
                .pointer(&p[1..])
                .ok_or_else(|| DocError::new(p, "missing schema"))?;
            shape_of(root, s, p)?
        }
        None => Shape::Any,
    };
    Ok(Param {
        name,
        at: loc,
        required,
        style,
        explode,
        schema: schema_at,
        shape,
        pointer: at,
    })
}

/// The first non-null `type` of a schema (after `$ref`s and an `allOf`/`oneOf`/`anyOf` whose
/// first branch has one).
fn first_type(root: &Value, s: &Value, at: &str) -> Result<Option<String>, DocError> {
    let (s, at) = resolve(root, s, at)?;
    match s.get("type") {
        Some(Value::String(t)) => return Ok(Some(t.clone())),
        Some(Value::Array(ts)) => {
            return Ok(ts
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .map(str::to_string))
        }
        _ => {}
    }
    for k in ["allOf", "oneOf", "anyOf"] {
        if let Some(Value::Array(b)) = s.get(k) {
            if let Some(first) = b.first() {
                return first_type(root, first, &format!("{at}/{k}/0"));
            }
        }
    }
    Ok(None)
}

/// How a parameter with schema `s` is read from text.
pub fn shape_of(root: &Value, s: &Value, at: &str) -> Result<Shape, DocError> {
    let scalar = |t: Option<&str>| match t {
        Some("integer") => Scalar::Integer,
        Some("number") => Scalar::Number,
        Some("boolean") => Scalar::Boolean,
        _ => Scalar::String,
    };
    Ok(match first_type(root, s, at)?.as_deref() {
        Some("string") => Shape::String,
        Some("integer") => Shape::Integer,
        Some("number") => Shape::Number,
        Some("boolean") => Shape::Boolean,
        Some("object") => Shape::Object,
        Some("array") => {
            let (s, at) = resolve(root, s, at)?;
            let item = match s.get("items") {
                Some(i) => first_type(root, i, &format!("{at}/items"))?,
                None => None,
            };
            Shape::Array(scalar(item.as_deref()))
        }
        _ => Shape::Any,
    })
}

pub(super) fn body(root: &Value, v: &Value, at: &str) -> Result<Body, DocError> {
    let (v, at) = resolve(root, v, at)?;
    let Some(o) = v.as_object() else {
        return Err(DocError::new(at, "a request body must be an object"));
    };
    let required = o.get("required") == Some(&Value::Bool(true));
    let mut media = Vec::new();
    match o.get("content") {
        Some(Value::Object(c)) => {
            for (k, m) in c {
                let m_at = format!("{at}/content/{}", escape(k));
                if !m.is_object() {
                    return Err(DocError::new(m_at, "a media type must be an object"));
                }
                let schema = m.get("schema").map(|_| format!("{m_at}/schema"));
                media.push((k.to_ascii_lowercase(), schema));
            }
        }
        _ => {
            return Err(DocError::new(
                format!("{at}/content"),
                "a request body needs \"content\" (media type -> schema)",
            ))
        }
    }
    Ok(Body {
        required,
        media,
        pointer: at,
    })
}
