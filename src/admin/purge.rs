//! `POST /apisix/admin/cache/purge`: removes a cached URL, URL prefix or Surrogate-Key tag from
//! every proxy-cache on every shard, via the shards' control channels; touches no config.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http::{Request, Response};
use crate::cache::admin::{AdminAck, AdminTarget};
use crate::runtime::control::Control;
use crate::runtime::plane::Plane;

/// A purge wakes each shard (see `ShardLink`); a busy shard gets this long to answer.
const WAIT: Duration = Duration::from_secs(2);

pub fn handle(plane: &Plane, r: &Request) -> Response {
    if r.method != "POST" {
        return Response::error(405, format!("{} not allowed here; use POST", r.method));
    }
    let target = match parse(&r.body) {
        Ok(t) => t,
        Err(e) => return Response::error(400, e),
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let asked = plane.send_all(|| Control::CachePurge {
        target: target.clone(),
        ack: tx.clone(),
    });
    let deadline = Instant::now() + WAIT;
    let mut acks: Vec<AdminAck> = Vec::with_capacity(asked);
    while acks.len() < asked {
        match rx.recv_deadline(deadline) {
            Ok(a) => acks.push(a),
            Err(_) => break,
        }
    }
    acks.sort_by_key(|a| a.shard);
    let removed: usize = acks.iter().map(|a| a.removed).sum();
    let caches = acks.iter().map(|a| a.caches).max().unwrap_or(0);
    let skipped = acks.iter().map(|a| a.skipped).max().unwrap_or(0);
    let out = json!({
        "removed": removed,
        "shards_answered": acks.len(),
        "shards": plane.shards(),
        "caches": caches,
        "caches_skipped": skipped,
        "per_shard": acks.iter().map(|a| json!({"shard": a.shard, "removed": a.removed}))
            .collect::<Vec<_>>(),
    });
    Response::json(if removed > 0 { 200 } else { 404 }, &out)
}

/// `{"url": "http://host/path?q"}`, `{"host": "h", "uri": "/path?q"}`,
/// `{"host": "h", "prefix": "/p/"}` or `{"tag": "t"}`.
fn parse(body: &[u8]) -> Result<AdminTarget, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body: invalid JSON: {e}"))?;
    let Some(o) = v.as_object() else {
        return Err("body: expected a JSON object".into());
    };
    let s = |k: &str| -> Result<Option<String>, String> {
        match o.get(k) {
            None => Ok(None),
            Some(Value::String(x)) if !x.is_empty() => Ok(Some(x.clone())),
            Some(_) => Err(format!("{k}: expected a non-empty string")),
        }
    };
    if let Some(k) = o
        .keys()
        .find(|k| !["url", "host", "uri", "prefix", "tag"].contains(&k.as_str()))
    {
        return Err(format!(
            "{k}: unknown field; expected url, host with uri or prefix, or tag"
        ));
    }
    let (url, host, uri, prefix, tag) = (s("url")?, s("host")?, s("uri")?, s("prefix")?, s("tag")?);
    let starts = |k: &str, p: &str| -> Result<(), String> {
        if p.starts_with('/') {
            Ok(())
        } else {
            Err(format!("{k}: must start with '/'"))
        }
    };
    match (url, host, uri, prefix, tag) {
        (Some(u), None, None, None, None) => {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
                .ok_or("url: expected http://host/path")?;
            let (host, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if host.is_empty() {
                return Err("url: no host".into());
            }
            Ok(AdminTarget::Url {
                host: host.into(),
                uri: path.into(),
            })
        }
        (None, Some(host), Some(uri), None, None) => {
            starts("uri", &uri)?;
            Ok(AdminTarget::Url { host, uri })
        }
        (None, Some(host), None, Some(prefix), None) => {
            starts("prefix", &prefix)?;
            Ok(AdminTarget::Prefix { host, prefix })
        }
        (None, None, None, None, Some(t)) => Ok(AdminTarget::Tag(t)),
        _ => Err("expected exactly one of: url; host with uri; host with prefix; tag".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let ok = |b: &str| parse(b.as_bytes()).map(|t| format!("{t:?}"));
        assert_eq!(
            ok(r#"{"url":"http://Ex.com:8080/a?b"}"#).unwrap(),
            r#"Url { host: "Ex.com:8080", uri: "/a?b" }"#
        );
        assert_eq!(
            ok(r#"{"url":"http://ex.com"}"#).unwrap(),
            r#"Url { host: "ex.com", uri: "/" }"#
        );
        assert!(ok(r#"{"host":"h","prefix":"/p/"}"#)
            .unwrap()
            .starts_with("Prefix"));
        assert!(ok(r#"{"tag":"g"}"#).unwrap().starts_with("Tag"));
        for bad in [
            "{}",
            "[]",
            "nope",
            r#"{"url":"ftp://x/"}"#,
            r#"{"url":"http:///a"}"#,
            r#"{"host":"h"}"#,
            r#"{"host":"h","uri":"a"}"#,
            r#"{"tag":"g","url":"http://h/"}"#,
            r#"{"tag":""}"#,
            r#"{"tag":1}"#,
            r#"{"tags":"g"}"#,
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
    }
}
