//! Route pattern parsing/validation (hosts, paths, condition tokens) and request-side byte helpers.
//! Owns only pure parsing; must not touch the trie, request I/O or config loading.

use std::cmp::Reverse;

/// Longest host name we index (DNS allows 253); longer request hosts only match any-host routes.
pub(super) const MAX_HOST: usize = 255;
/// Bounds trie depth, and with it the recursion depth of a lookup.
pub(super) const MAX_SEGMENTS: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostPattern {
    Any,
    Exact(Box<[u8]>),
    /// Suffix after "*.": matches any strict subdomain of it, at any depth.
    Wildcard(Box<[u8]>),
}

impl HostPattern {
    /// Smaller sorts first: exact > longer wildcard suffix > shorter > any host.
    pub(super) fn specificity(&self) -> (u8, Reverse<usize>) {
        match self {
            HostPattern::Exact(_) => (0, Reverse(0)),
            HostPattern::Wildcard(s) => (1, Reverse(s.len())),
            HostPattern::Any => (2, Reverse(0)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Static(Box<[u8]>),
    Param(Box<str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PathPattern {
    pub(super) segs: Vec<Seg>,
    /// Pattern ends in "/*": `segs` are the prefix, the rest of the path is free.
    pub(super) wildcard: bool,
}

impl PathPattern {
    /// "/*" — what a route with no paths matches.
    pub(super) fn any() -> PathPattern {
        PathPattern {
            segs: Vec::new(),
            wildcard: true,
        }
    }

    /// Smaller sorts first: exact > params (more static segments first) > prefix (longer
    /// first) > "/*".
    pub(super) fn specificity(&self) -> (u8, Reverse<usize>, Reverse<usize>) {
        let statics = self
            .segs
            .iter()
            .filter(|s| matches!(s, Seg::Static(_)))
            .count();
        let total = self.segs.len();
        match (self.wildcard, statics == total) {
            (false, true) => (0, Reverse(0), Reverse(0)),
            (false, false) => (1, Reverse(statics), Reverse(total)),
            (true, _) => (2, Reverse(total), Reverse(statics)),
        }
    }
}

pub(super) fn parse_host(i: usize, raw: &str) -> Result<HostPattern, String> {
    let err = |msg: &str| Err(format!("hosts[{i}] {raw:?}: {msg}"));
    if raw == "*" {
        return Ok(HostPattern::Any);
    }
    let lower = raw.to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    // A trailing dot is the same (fully qualified) name; requests get the same treatment.
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return err("empty host name");
    }
    if name.contains('*') {
        return err("'*' only allowed as a leading \"*.\" label");
    }
    if name.len() > MAX_HOST {
        return err("host name too long");
    }
    if name
        .bytes()
        .any(|b| b <= b' ' || b >= 0x7f || b == b'/' || b == b'?' || b == b'#')
    {
        return err("invalid character in host name");
    }
    if name.contains(':') && !name.starts_with('[') {
        return err("must not include a port");
    }
    let name: Box<[u8]> = name.as_bytes().into();
    Ok(if wild {
        HostPattern::Wildcard(name)
    } else {
        HostPattern::Exact(name)
    })
}

pub(super) fn parse_path(i: usize, raw: &str) -> Result<PathPattern, String> {
    let err = |msg: &str| Err(format!("paths[{i}] {raw:?}: {msg}"));
    let Some(body) = raw.strip_prefix('/') else {
        return err("must start with '/'");
    };
    if body.contains(['?', '#']) {
        return err("must not contain a query or fragment");
    }
    let parts: Vec<&str> = body.split('/').collect();
    if parts.len() > MAX_SEGMENTS {
        return err("too many segments");
    }
    let mut segs = Vec::with_capacity(parts.len());
    let mut wildcard = false;
    for (k, part) in parts.iter().enumerate() {
        if *part == "*" {
            if k + 1 != parts.len() {
                return err("'*' only allowed as the last segment");
            }
            wildcard = true;
        } else if part.contains('*') {
            return err("'*' must be a whole segment");
        } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if name.is_empty() {
                return err("empty {} parameter name");
            }
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return err(&format!("invalid parameter name {{{name}}}"));
            }
            if segs
                .iter()
                .any(|s| matches!(s, Seg::Param(n) if &**n == name))
            {
                return err(&format!("duplicate parameter name {{{name}}}"));
            }
            segs.push(Seg::Param(name.into()));
        } else if part.contains(['{', '}']) {
            return err("'{name}' must be a whole segment");
        } else {
            segs.push(Seg::Static(part.as_bytes().into()));
        }
    }
    Ok(PathPattern { segs, wildcard })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// HTTP methods are case-sensitive tokens; config spellings are uppercased for convenience.
pub(super) fn parse_method(i: usize, raw: &str) -> Result<Box<[u8]>, String> {
    if raw.is_empty() || !raw.bytes().all(is_tchar) {
        return Err(format!("methods[{i}] {raw:?}: not a valid method token"));
    }
    Ok(raw.to_ascii_uppercase().into_bytes().into())
}

pub(super) fn parse_header_name(i: usize, raw: &str) -> Result<Box<str>, String> {
    if raw.is_empty() || !raw.bytes().all(is_tchar) {
        return Err(format!("headers[{i}] {raw:?}: not a valid header name"));
    }
    Ok(raw.to_ascii_lowercase().into())
}

pub(super) fn parse_arg_name(i: usize, raw: &str) -> Result<Box<[u8]>, String> {
    if raw.is_empty() || raw.contains(['&', '=', '#']) {
        return Err(format!(
            "args[{i}] {raw:?}: not a valid query argument name"
        ));
    }
    Ok(raw.as_bytes().into())
}

/// Strips the port and a trailing dot and lowercases into `buf`, so host lookups never
/// allocate. None when the host cannot equal any indexed host name (empty or too long).
pub(super) fn normalize_host<'b>(host: &[u8], buf: &'b mut [u8; MAX_HOST]) -> Option<&'b [u8]> {
    let name = if host.first() == Some(&b'[') {
        match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.iter().position(|&b| b == b':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > MAX_HOST {
        return None;
    }
    let out = &mut buf[..name.len()];
    out.copy_from_slice(name);
    out.make_ascii_lowercase();
    Some(out)
}

/// First occurrence of `name` in a raw query string; a bare "name" yields an empty value.
/// Bytes are compared as sent (no percent-decoding), matching how paths are matched.
pub(super) fn query_arg<'q>(query: &'q [u8], name: &[u8]) -> Option<&'q [u8]> {
    let query = query.strip_prefix(b"?").unwrap_or(query);
    query.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        (k == name).then_some(v)
    })
}

/// Whether a media-type header (`Accept`'s list or one `Content-Type`) names version `want`:
/// a `version=` parameter, or the last dotted part of a vendor subtype before its `+suffix`
/// (`application/vnd.acme.v2+json`). Case-insensitive; `v2` and `2` are the same version.
pub(super) fn names_version(header: &[u8], want: &[u8]) -> bool {
    fn bare(v: &[u8]) -> &[u8] {
        match v {
            [b'v' | b'V', d, ..] if d.is_ascii_digit() => &v[1..],
            _ => v,
        }
    }
    let same = |got: &[u8]| {
        let got = got.trim_ascii();
        let got = got
            .strip_prefix(b"\"")
            .and_then(|g| g.strip_suffix(b"\""))
            .unwrap_or(got);
        !got.is_empty() && bare(got).eq_ignore_ascii_case(bare(want))
    };
    header.split(|&b| b == b',').any(|range| {
        let mut parts = range.split(|&b| b == b';');
        let mime = parts.next().unwrap_or_default().trim_ascii();
        let subtype = mime.splitn(2, |&b| b == b'/').nth(1).unwrap_or_default();
        let vendor = subtype.len() > 4 && subtype[..4].eq_ignore_ascii_case(b"vnd.");
        let tree = subtype.split(|&b| b == b'+').next().unwrap_or_default();
        (vendor && tree.rsplit(|&b| b == b'.').next().is_some_and(same))
            || parts.any(|p| {
                let mut kv = p.splitn(2, |&b| b == b'=');
                let k = kv.next().unwrap_or_default().trim_ascii();
                k.eq_ignore_ascii_case(b"version") && kv.next().is_some_and(same)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_err(p: &str) -> String {
        parse_path(1, p).expect_err("should be rejected")
    }

    #[test]
    fn path_kinds() {
        let p = parse_path(0, "/users/{id}/posts").expect("valid");
        assert!(!p.wildcard);
        assert_eq!(p.segs[1], Seg::Param("id".into()));
        let p = parse_path(0, "/api/*").expect("valid");
        assert!(p.wildcard);
        assert_eq!(p.segs, vec![Seg::Static(b"api".as_slice().into())]);
        assert_eq!(parse_path(0, "/*").expect("valid"), PathPattern::any());
        let root = parse_path(0, "/").expect("valid");
        assert_eq!(root.segs, vec![Seg::Static(b"".as_slice().into())]);
    }

    #[test]
    fn path_errors_name_the_problem() {
        assert_eq!(path_err("api"), r#"paths[1] "api": must start with '/'"#);
        assert!(path_err("/a/*/b").contains("'*' only allowed as the last segment"));
        assert!(path_err("/a*").contains("'*' must be a whole segment"));
        assert!(path_err("/a/{}").contains("empty {}"));
        assert!(path_err("/a/{id}/{id}").contains("duplicate parameter name {id}"));
        assert!(path_err("/a/x{id}").contains("whole segment"));
        assert!(path_err("/a/{i d}").contains("invalid parameter name"));
        assert!(path_err("/a?x=1").contains("query"));
        assert!(path_err(&"/a".repeat(300)).contains("too many segments"));
    }

    #[test]
    fn specificity_order() {
        let spec = |p: &str| parse_path(0, p).expect("valid").specificity();
        assert!(spec("/a/b") < spec("/a/{x}"));
        assert!(spec("/a/{x}/c") < spec("/a/{x}/{y}"));
        assert!(spec("/{x}/{y}") < spec("/a/b/*"));
        assert!(spec("/a/b/*") < spec("/a/*"));
        assert!(spec("/a/*") < spec("/*"));
    }

    #[test]
    fn hosts() {
        let exact = |h: &str| HostPattern::Exact(h.as_bytes().into());
        assert_eq!(
            parse_host(0, "API.Example.com"),
            Ok(exact("api.example.com"))
        );
        assert_eq!(parse_host(0, "example.com."), Ok(exact("example.com")));
        assert_eq!(
            parse_host(0, "*.Example.com"),
            Ok(HostPattern::Wildcard(b"example.com".as_slice().into()))
        );
        assert_eq!(parse_host(0, "*"), Ok(HostPattern::Any));
        for bad in ["", "*.", "a.*.com", "*example.com", "a b", "a.com:80"] {
            assert!(parse_host(2, bad).is_err(), "{bad}");
        }
        assert!(parse_host(2, "a.*.com")
            .expect_err("bad")
            .starts_with(r#"hosts[2] "a.*.com": "#));
    }

    #[test]
    fn tokens() {
        assert_eq!(parse_method(0, "get").as_deref(), Ok(b"GET".as_slice()));
        assert!(parse_method(0, "GE T").is_err());
        assert!(parse_method(0, "").is_err());
        assert_eq!(parse_header_name(0, "X-Env").as_deref(), Ok("x-env"));
        assert!(parse_header_name(0, "x env").is_err());
        assert!(parse_arg_name(0, "").is_err());
        assert!(parse_arg_name(0, "a=b").is_err());
    }

    #[test]
    fn normalize() {
        let mut buf = [0u8; MAX_HOST];
        let n = |h: &[u8], buf: &mut [u8; MAX_HOST]| normalize_host(h, buf).map(|s| s.to_vec());
        assert_eq!(
            n(b"API.example.COM:8080", &mut buf),
            Some(b"api.example.com".to_vec())
        );
        assert_eq!(n(b"example.com.", &mut buf), Some(b"example.com".to_vec()));
        assert_eq!(n(b"[::1]:443", &mut buf), Some(b"[::1]".to_vec()));
        assert_eq!(n(b"[::1", &mut buf), Some(b"[::1".to_vec()));
        assert_eq!(n(b"", &mut buf), None);
        assert_eq!(n(b":80", &mut buf), None);
        assert_eq!(n(&[b'a'; 300], &mut buf), None);
    }

    #[test]
    fn query_args() {
        let q = b"a=1&b&c=&a=2&d=x=y";
        assert_eq!(query_arg(q, b"a"), Some(b"1".as_slice()));
        assert_eq!(query_arg(q, b"b"), Some(b"".as_slice()));
        assert_eq!(query_arg(q, b"c"), Some(b"".as_slice()));
        assert_eq!(query_arg(q, b"d"), Some(b"x=y".as_slice()));
        assert_eq!(query_arg(q, b"e"), None);
        assert_eq!(query_arg(b"?x=1", b"x"), Some(b"1".as_slice()));
        assert_eq!(query_arg(b"", b"x"), None);
    }

    #[test]
    fn media_versions() {
        let yes = |h: &str, v: &str| names_version(h.as_bytes(), v.as_bytes());
        assert!(yes("application/vnd.acme.v2+json", "v2"));
        assert!(yes("application/vnd.acme.v2+json", "2"));
        assert!(yes("application/vnd.github.V3", "v3"));
        assert!(yes("text/html, application/json; version=2; q=0.9", "v2"));
        assert!(yes("application/json;Version=\"2.1\"", "2.1"));
        assert!(!yes("application/vnd.acme.v2+json", "v1"));
        assert!(!yes("application/json", "v1"));
        assert!(!yes("application/json; version=", "v1"));
        assert!(!yes("application/v2+json", "v2"));
        assert!(!yes("", "1"));
        assert!(!yes("application/vnd.", "v1"));
    }
}
