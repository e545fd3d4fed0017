//! Invalidation by unsafe methods (RFC 9111 4.4): which cache targets a successful POST, PUT,
//! DELETE or PATCH removes besides its own key: the same-origin `Location` and
//! `Content-Location` URIs. Pure (no store access); the caller sends the removals to owners.

use super::admin::{target_for, AdminTarget};
use super::{CacheKeyPart, Target};

/// The path-and-query a `Location`/`Content-Location` value names on the request's origin
/// (`host` as the client sent it, `req_path` the request's path for relative references), or
/// `None` for another origin or a reference it cannot resolve safely (dot segments).
pub fn same_origin_uri(value: &[u8], host: &[u8], req_path: &[u8]) -> Option<String> {
    let v = std::str::from_utf8(super::rules::trim(value)).ok()?;
    let v = v.split('#').next().unwrap_or(v);
    if v.bytes().any(|b| b <= b' ' || b == 0x7f) {
        // Not a URI reference.
        return None;
    }
    let lower = v.get(..8).unwrap_or(v).to_ascii_lowercase();
    let rest = if let Some(r) = v.strip_prefix("//") {
        Some(r)
    } else if lower.starts_with("http://") {
        Some(&v[7..])
    } else if lower.starts_with("https://") {
        Some(&v[8..])
    } else {
        None
    };
    let uri = match rest {
        Some(r) => {
            let end = r.find(['/', '?']).unwrap_or(r.len());
            if !r.as_bytes()[..end].eq_ignore_ascii_case(host) {
                return None;
            }
            match &r[end..] {
                "" => "/".to_string(),
                p if p.starts_with('?') => format!("/{p}"),
                p => p.to_string(),
            }
        }
        None if v.starts_with('/') => v.to_string(),
        None if v.is_empty() || v.contains(':') => return None,
        None => {
            // A relative path: resolved against the request path's directory.
            let base = std::str::from_utf8(req_path).ok()?;
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{}{v}", if dir.is_empty() { "/" } else { dir })
        }
    };
    let path = uri.split('?').next().unwrap_or(&uri);
    if path.split('/').any(|s| s == "." || s == "..") {
        return None;
    }
    Some(uri)
}

/// The cache targets of those URIs under a cache's `cache_key`: a key, or a prefix when parts
/// after the URI (a header, a cookie) split the URL into several keys; none when the key needs
/// request parts a URI alone does not give.
pub fn targets<'a>(
    parts: &[CacheKeyPart],
    host: &[u8],
    uris: impl IntoIterator<Item = &'a str>,
) -> Vec<Target> {
    let host = String::from_utf8_lossy(host).into_owned();
    uris.into_iter()
        .filter_map(|uri| {
            target_for(
                parts,
                &AdminTarget::Url {
                    host: host.clone(),
                    uri: uri.to_string(),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_references() {
        let f = |v: &str| same_origin_uri(v.as_bytes(), b"Shop.example:8080", b"/a/b");
        assert_eq!(f("/x?y=1").as_deref(), Some("/x?y=1"));
        assert_eq!(f("http://shop.example:8080/x").as_deref(), Some("/x"));
        assert_eq!(f("HTTPS://Shop.Example:8080").as_deref(), Some("/"));
        assert_eq!(f("//shop.example:8080/z#frag").as_deref(), Some("/z"));
        assert_eq!(f("c?d").as_deref(), Some("/a/c?d"));
        assert_eq!(f("http://other.example/x"), None);
        assert_eq!(
            f("http://shop.example/x"),
            None,
            "another port is another origin"
        );
        assert_eq!(f("../x"), None);
        assert_eq!(f("mailto:a@b"), None);
    }
}
