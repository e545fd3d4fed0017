//! Helpers shared by plugins: typed config parsing with key-path errors, limit keys,
//! query/cookie lookup. Pure functions; no shard state.

use std::net::IpAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use super::consumer::Consumers;
use super::ctx::Ctx;
use crate::error::ConfigError;
use crate::http::parse::RequestHead;

/// Deserialises a plugin's table; errors carry `path` plus the inner key, e.g.
/// `routes[0].plugins.limit-count.count: invalid type: ...`.
pub fn parse<T: DeserializeOwned>(v: &toml::Value, path: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let inner = e.path().to_string();
        let at = if inner == "." || inner.is_empty() {
            path.to_string()
        } else {
            format!("{path}.{inner}")
        };
        ConfigError::new(at, e.into_inner().message().to_string())
    })
}

pub fn err(path: &str, key: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::new(format!("{path}.{key}"), msg)
}

/// A positive integer check with the message the docs promise.
pub fn positive(path: &str, key: &str, v: i64) -> Result<u64, ConfigError> {
    if v > 0 {
        Ok(v as u64)
    } else {
        Err(err(
            path,
            key,
            format!("expected a positive integer, got {v}"),
        ))
    }
}

/// `"10ms"`, `"2s"` or a number of seconds (fractions allowed).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum RawDur {
    Secs(f64),
    Text(String),
}

pub fn duration(path: &str, key: &str, v: &RawDur) -> Result<Duration, ConfigError> {
    match v {
        RawDur::Secs(s) if s.is_finite() && *s >= 0.0 => Ok(Duration::from_secs_f64(*s)),
        RawDur::Text(t) => crate::util::units::parse_duration(t).ok_or_else(|| {
            err(
                path,
                key,
                format!("{t:?} is not a duration; write e.g. \"20ms\" or \"1s\""),
            )
        }),
        RawDur::Secs(s) => Err(err(
            path,
            key,
            format!("expected a non-negative duration, got {s}"),
        )),
    }
}

/// One part of a rate-limit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKeyPart {
    RemoteAddr,
    Consumer,
    Route,
    Header(String),
    Arg(String),
    Cookie(String),
    Constant(String),
}

/// `"remote_addr"`, `"consumer"` (`consumer_name`), `"route"`, `"server_addr"`,
/// `"header:X-Tenant"` (or `"http_x_tenant"`), `"arg:name"`, `"cookie:name"`, or several
/// joined with `" "` / `"+"` for a combination.
pub fn key_parts(path: &str, text: &str) -> Result<Vec<LimitKeyPart>, ConfigError> {
    let mut parts = Vec::new();
    for p in text.split([' ', '+']).filter(|p| !p.is_empty()) {
        let p = p.trim_start_matches('$');
        let part = match p {
            "remote_addr" => LimitKeyPart::RemoteAddr,
            "consumer" | "consumer_name" => LimitKeyPart::Consumer,
            "route" | "route_id" | "route_name" => LimitKeyPart::Route,
            "server_addr" | "constant" => LimitKeyPart::Constant(String::new()),
            _ => match p.split_once(':') {
                Some(("header", h)) if !h.is_empty() => LimitKeyPart::Header(h.to_ascii_lowercase()),
                Some(("arg", a)) if !a.is_empty() => LimitKeyPart::Arg(a.to_string()),
                Some(("cookie", c)) if !c.is_empty() => LimitKeyPart::Cookie(c.to_string()),
                _ => match p.strip_prefix("http_") {
                    Some(h) if !h.is_empty() => LimitKeyPart::Header(h.replace('_', "-")),
                    _ => match p.strip_prefix("arg_") {
                        Some(a) if !a.is_empty() => LimitKeyPart::Arg(a.to_string()),
                        _ => {
                            return Err(ConfigError::new(
                                path,
                                format!("unknown key part {p:?}; expected remote_addr, consumer, route, header:NAME, arg:NAME, cookie:NAME (combine with spaces)"),
                            ))
                        }
                    },
                },
            },
        };
        parts.push(part);
    }
    if parts.is_empty() {
        return Err(ConfigError::new(
            path,
            "must name at least one key part, e.g. \"remote_addr\"",
        ));
    }
    Ok(parts)
}

/// Hashes the request's key; a missing part hashes as empty (APISIX falls back to remote_addr
/// for a missing variable; ringway does the same for a key made of one absent part).
pub fn key_hash(parts: &[LimitKeyPart], req: &RequestHead, cx: &Ctx, consumers: &Consumers) -> u64 {
    if let ([LimitKeyPart::Consumer], Some(c)) =
        (parts, cx.consumer.and_then(|i| consumers.list.get(i)))
    {
        return c.key_hash;
    }
    key_hash_of(parts, req, cx, consumers.name(cx.consumer))
}

/// What `key_hash` gives a key of the one part `consumer` for this consumer.
pub fn consumer_key_hash(name: &str) -> u64 {
    let mut h = Xxh3::new();
    h.update(name.as_bytes());
    h.update(&[0xff]);
    h.digest()
}

fn key_hash_of(
    parts: &[LimitKeyPart],
    req: &RequestHead,
    cx: &Ctx,
    consumer_name: Option<&str>,
) -> u64 {
    // The key is gathered on the stack and hashed in one shot: a streaming `Xxh3` is a
    // ~600-byte state whose setup and moves showed up as memcpy in callgrind.
    let mut buf = [0u8; 256];
    let mut at = 0;
    let mut long: Option<Xxh3> = None;
    let mut put = |bytes: &[u8]| {
        if let Some(h) = long.as_mut() {
            h.update(bytes);
        } else if at + bytes.len() <= buf.len() {
            buf[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        } else {
            let mut h = Xxh3::new();
            h.update(&buf[..at]);
            h.update(bytes);
            long = Some(h);
        }
    };
    let mut any = false;
    for p in parts {
        let v: Option<&[u8]> = match p {
            LimitKeyPart::RemoteAddr => {
                put_ip(&mut put, cx.client_ip);
                any = true;
                None
            }
            LimitKeyPart::Consumer => consumer_name.map(str::as_bytes),
            LimitKeyPart::Route => {
                put(&(cx.route as u64).to_le_bytes());
                any = true;
                None
            }
            LimitKeyPart::Header(n) => req.header(n),
            LimitKeyPart::Arg(a) => query_arg(req.query(), a.as_bytes()),
            LimitKeyPart::Cookie(c) => req.header("cookie").and_then(|v| cookie(v, c.as_bytes())),
            LimitKeyPart::Constant(s) => Some(s.as_bytes()),
        };
        if let Some(v) = v {
            any = true;
            put(v);
        }
        put(&[0xff]);
    }
    if !any {
        put_ip(&mut put, cx.client_ip);
    }
    match long {
        Some(h) => h.digest(),
        None => xxh3_64(&buf[..at]),
    }
}

fn put_ip(put: &mut impl FnMut(&[u8]), ip: IpAddr) {
    match ip {
        IpAddr::V4(v) => put(&v.octets()),
        IpAddr::V6(v) => put(&v.octets()),
    }
}

pub fn query_arg<'a>(query: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    query.split(|&b| b == b'&').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
        (&pair[..eq] == name).then(|| pair.get(eq + 1..).unwrap_or_default())
    })
}

pub fn cookie<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name).then(|| &pair[eq + 1..])
    })
}

/// The query string with `name` removed (for hide_credentials).
pub fn query_without(query: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(query.len());
    for pair in query.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let eq = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
        if &pair[..eq] == name {
            continue;
        }
        if !out.is_empty() {
            out.push(b'&');
        }
        out.extend_from_slice(pair);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_specs() {
        assert_eq!(
            key_parts("k", "remote_addr").unwrap(),
            vec![LimitKeyPart::RemoteAddr]
        );
        assert_eq!(
            key_parts("k", "consumer header:X-Tenant").unwrap(),
            vec![
                LimitKeyPart::Consumer,
                LimitKeyPart::Header("x-tenant".into())
            ]
        );
        assert_eq!(
            key_parts("k", "$http_x_api").unwrap(),
            vec![LimitKeyPart::Header("x-api".into())]
        );
        assert!(key_parts("k", "bogus").is_err());
        assert!(key_parts("k", "").is_err());
    }

    #[test]
    fn consumer_key_fast_path_matches_the_general_hash() {
        let req = RequestHead::default();
        let mut cx = Ctx::new(0, IpAddr::from([127, 0, 0, 1]));
        cx.consumer = Some(0);
        let parts = [LimitKeyPart::Consumer];
        assert_eq!(
            consumer_key_hash("alice"),
            key_hash_of(&parts, &req, &cx, Some("alice"))
        );
        let long = "x".repeat(300);
        assert_eq!(
            consumer_key_hash(&long),
            key_hash_of(&parts, &req, &cx, Some(&long))
        );
    }

    #[test]
    fn query_edits() {
        assert_eq!(query_arg(b"a=1&apikey=x&b", b"apikey"), Some(&b"x"[..]));
        assert_eq!(
            query_without(b"a=1&apikey=x&b=2", b"apikey"),
            b"a=1&b=2".to_vec()
        );
        assert_eq!(cookie(b"a=1; jwt=tok", b"jwt"), Some(&b"tok"[..]));
    }
}
