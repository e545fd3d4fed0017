//! etcd keys and values as ringway reads them: `<prefix>/<kind>/<id>` -> (kind, id), and a
//! value -> the admin API's JSON object with its id field set. Pure parsing of outside bytes
//! (fuzzed in tests/fuzz); no etcd client, no config building.

use serde_json::Value;

use crate::admin::document::{Kind, KINDS};

/// Longest id accepted in a key (APISIX's ids are short; this bounds log lines and file names).
pub const MAX_ID: usize = 256;

/// The key of `kind/id` under `prefix` (which has no trailing slash).
pub fn key(prefix: &str, kind: Kind, id: &str) -> String {
    format!("{prefix}/{}/{id}", kind.seg())
}

/// The range end that covers every key under `prefix/` (etcd's "prefix + 1" rule).
pub fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = format!("{prefix}/").into_bytes();
    // The last byte is '/', which is below 0xff: incrementing it cannot overflow.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// `<prefix>/<kind>/<id>` -> (kind, id). Errors say what is wrong with the key.
pub fn parse_key(prefix: &str, key: &[u8]) -> Result<(Kind, String), String> {
    let text = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
    let rest = text
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| format!("key {text:?} is not under {prefix}/"))?;
    let (seg, id) = rest.split_once('/').ok_or_else(|| {
        let kinds: Vec<&str> = KINDS.iter().map(|k| k.seg()).collect();
        format!("key {text:?}: expected {prefix}/<{}>/<id>", kinds.join("|"))
    })?;
    let kind = Kind::parse(seg).ok_or_else(|| {
        let known: Vec<&str> = KINDS.iter().map(|k| k.seg()).collect();
        format!("key {text:?}: unknown kind {seg:?}; expected one of {known:?}")
    })?;
    if id.is_empty() || id.len() > MAX_ID || id.contains('/') || id.chars().any(char::is_control) {
        return Err(format!(
            "key {text:?}: the id must be 1 to {MAX_ID} characters without '/' or control characters"
        ));
    }
    Ok((kind, id.to_string()))
}

/// A value -> the object the admin API would hold for `kind/id`: a JSON object whose id field
/// (`name`, `username` or `id`) is set to `id`; a different id inside the value is an error.
pub fn parse_value(kind: Kind, id: &str, value: &[u8]) -> Result<Value, String> {
    let at = format!("{}/{id}", kind.seg());
    let mut v: Value =
        serde_json::from_slice(value).map_err(|e| format!("{at}: invalid JSON: {e}"))?;
    let Some(obj) = v.as_object_mut() else {
        return Err(format!("{at}: expected a JSON object"));
    };
    let field = kind.id_field();
    match obj.get(field) {
        None => {
            obj.insert(field.into(), Value::String(id.to_string()));
        }
        Some(Value::String(s)) if s == id => {}
        Some(other) => {
            return Err(format!(
                "{at}.{field}: {other} differs from the key's id {id:?}"
            ))
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_ones_say_why() {
        let k = key("/rw", Kind::Routes, "r1");
        assert_eq!(
            parse_key("/rw", k.as_bytes()).unwrap(),
            (Kind::Routes, "r1".into())
        );
        assert_eq!(
            parse_key("/rw", b"/rw/global_rules/g").unwrap(),
            (Kind::GlobalRules, "g".into())
        );
        for (bad, why) in [
            (&b"/other/routes/x"[..], "not under"),
            (b"/rw/routes", "expected"),
            (b"/rw/plugins/x", "unknown kind"),
            (b"/rw/routes/", "the id must"),
            (b"/rw/routes/a/b", "the id must"),
            (b"/rw/routes/\xff", "UTF-8"),
        ] {
            let e = parse_key("/rw", bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert_eq!(range_end("/rw"), b"/rw0");
    }

    #[test]
    fn values_get_their_id_and_a_different_id_is_refused() {
        let v = parse_value(Kind::Routes, "r1", br#"{"paths":["/"],"upstream":"u"}"#).unwrap();
        assert_eq!(v["name"], "r1");
        assert!(parse_value(Kind::Routes, "r1", br#"{"name":"r1"}"#).is_ok());
        let e = parse_value(Kind::Routes, "r1", br#"{"name":"r2"}"#).unwrap_err();
        assert!(e.contains("routes/r1.name"), "{e}");
        assert!(parse_value(Kind::Consumers, "c", b"[1]")
            .unwrap_err()
            .contains("object"));
        assert!(parse_value(Kind::Upstreams, "u", b"{")
            .unwrap_err()
            .contains("invalid JSON"));
    }
}
