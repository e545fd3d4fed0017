//! Request parameter text (percent-encoded, styled per OpenAPI `style`/`explode`) turned into
//! the JSON value its schema checks. Owns no schema logic.

use serde_json::{Map, Number, Value};

use super::inputs::{Scalar, Shape, Style};

/// Percent-decodes `raw` (and `+` as a space in form data); `None` when the result is not UTF-8.
pub fn decode(raw: &[u8], plus_space: bool) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if plus_space && b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The query string's `name=value` pairs, decoded (pairs that are not UTF-8 are kept as the
/// replacement text so a schema still sees something).
pub fn query_pairs(query: &[u8]) -> Vec<(String, String)> {
    query
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = match p.iter().position(|&b| b == b'=') {
                Some(i) => (&p[..i], &p[i + 1..]),
                None => (p, &p[p.len()..]),
            };
            let d = |x: &[u8]| decode(x, true).unwrap_or_else(|| String::from_utf8_lossy(x).into());
            (d(k), d(v))
        })
        .collect()
}

/// One scalar's text as the JSON its schema expects: numbers and booleans when the text is one,
/// the string otherwise (so the schema reports the wrong type).
pub fn scalar(kind: Scalar, text: &str) -> Value {
    match kind {
        Scalar::Integer => text
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| text.parse::<u64>().map(Value::from))
            .unwrap_or_else(|_| Value::String(text.into())),
        Scalar::Number => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(Number::from_f64)
            .map_or_else(|| Value::String(text.into()), Value::Number),
        Scalar::Boolean => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(text.into()),
        },
        Scalar::String => Value::String(text.into()),
    }
}

/// The value of a parameter that arrived as `values` (one per occurrence; query parameters may
/// repeat), per its shape and style.
pub fn value(shape: Shape, style: Style, explode: bool, values: &[String]) -> Value {
    let first = values.first().map_or("", String::as_str);
    match shape {
        Shape::Array(item) => {
            let parts: Vec<&str> = if explode && style == Style::Form {
                values.iter().map(String::as_str).collect()
            } else {
                let sep = match style {
                    Style::SpaceDelimited => ' ',
                    Style::PipeDelimited => '|',
                    _ => ',',
                };
                if first.is_empty() {
                    Vec::new()
                } else {
                    first.split(sep).collect()
                }
            };
            Value::Array(parts.into_iter().map(|p| scalar(item, p)).collect())
        }
        Shape::Object => {
            // `a,1,b,2` (simple / form without explode); exploded forms arrive as pairs
            // already (see `object_from_pairs`).
            let mut m = Map::new();
            let mut it = first.split(',');
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                m.insert(k.to_string(), Value::String(v.to_string()));
            }
            Value::Object(m)
        }
        Shape::Integer => scalar(Scalar::Integer, first),
        Shape::Number => scalar(Scalar::Number, first),
        Shape::Boolean => scalar(Scalar::Boolean, first),
        Shape::String | Shape::Any => Value::String(first.to_string()),
    }
}

/// `name[prop]=v` pairs (deepObject) as an object of strings; `None` when there are none.
pub fn deep_object(name: &str, pairs: &[(String, String)]) -> Option<Value> {
    let mut m = Map::new();
    for (k, v) in pairs {
        if let Some(prop) = k
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('['))
            .and_then(|r| r.strip_suffix(']'))
        {
            m.insert(prop.to_string(), Value::String(v.clone()));
        }
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

/// A path parameter's text without its style's prefix (`.x` for label, `;id=x` for matrix).
pub fn unstyle<'a>(style: Style, name: &str, text: &'a str) -> &'a str {
    match style {
        Style::Label => text.strip_prefix('.').unwrap_or(text),
        Style::Matrix => text
            .strip_prefix(';')
            .and_then(|t| t.strip_prefix(name))
            .and_then(|t| t.strip_prefix('='))
            .unwrap_or(text),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_and_styles() {
        assert_eq!(decode(b"a%20b+c", true).as_deref(), Some("a b c"));
        assert_eq!(decode(b"a%2", false).as_deref(), Some("a%2"));
        assert_eq!(decode(b"%ff", false), None);
        let q = query_pairs(b"id=1&id=2&tags=a,b&x");
        assert_eq!(q[3], ("x".into(), String::new()));
        let ints = Shape::Array(Scalar::Integer);
        let v = value(ints, Style::Form, true, &["1".into(), "2".into()]);
        assert_eq!(v, serde_json::json!([1, 2]));
        let v = value(ints, Style::Form, false, &["1,x".into()]);
        assert_eq!(v, serde_json::json!([1, "x"]));
        let v = value(ints, Style::PipeDelimited, false, &["3|4".into()]);
        assert_eq!(v, serde_json::json!([3, 4]));
        assert_eq!(
            value(Shape::Integer, Style::Simple, false, &["12".into()]),
            12
        );
        assert_eq!(
            value(Shape::Integer, Style::Simple, false, &["1x".into()]),
            "1x"
        );
        let pairs = vec![("f[a]".to_string(), "1".to_string())];
        assert_eq!(
            deep_object("f", &pairs),
            Some(serde_json::json!({"a": "1"}))
        );
        assert_eq!(unstyle(Style::Matrix, "id", ";id=5"), "5");
    }
}
