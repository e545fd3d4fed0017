//! A stored response and the decision to store one: which responses a shared cache may keep
//! (RFC 9111 3), what is kept of their headers, and their freshness, age and stale windows.

use bytes::Bytes;

use super::rules::{self, CacheControl, Facts};
use crate::http::parse::{RequestHead, ResponseHead};

/// Where a partial entry's body (`partial.rs`) lies in the whole representation of `total` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub total: u64,
}

/// One stored response (one Vary variant). Times are unix milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Entry {
    pub status: u16,
    /// Stored headers: hop-by-hop, Content-Length, Age and Set-Cookie removed.
    pub headers: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
    /// The request's value of each header the response's `Vary` names (lowercase names).
    pub vary: Vec<(Box<str>, Option<Bytes>)>,
    /// When the response was received.
    pub stored_ms: u64,
    pub initial_age_ms: u64,
    pub lifetime_ms: u64,
    pub swr_ms: u64,
    pub sie_ms: u64,
    /// `no-cache`: stored, but revalidated before every use.
    pub no_cache: bool,
    /// must-revalidate / proxy-revalidate / s-maxage: never served stale.
    pub no_stale: bool,
    /// public / s-maxage / must-revalidate: may answer requests carrying Authorization.
    pub auth_ok: bool,
    /// A partial entry (`partial.rs`): never served, only completed by later ranges.
    pub partial: Option<Span>,
}

/// What the route's configuration says about storing.
pub struct Policy<'a> {
    pub statuses: &'a [u16],
    /// `cache_ttl`: heuristic lifetime (seconds) where the RFC allows one.
    pub default_ttl: Option<u64>,
    /// Store responses with `Set-Cookie` (the cookie itself is never stored).
    pub set_cookie: bool,
    /// The X-Cache-Status header name, never stored.
    pub status_header: &'a str,
    /// `mode = "rfc9111"`: any final status with explicit freshness (or a heuristically
    /// cacheable one) may be stored, and so may responses with `Set-Cookie`.
    pub rfc: bool,
    /// Targeted fields (RFC 9213), lowercase, first present wins over `Cache-Control`.
    pub targeted: &'a [String],
}

fn skip_stored(name: &[u8], status_header: &str) -> bool {
    const SKIP: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"content-length",
        b"age",
        b"set-cookie",
    ];
    SKIP.iter().any(|s| s.eq_ignore_ascii_case(name))
        || name.eq_ignore_ascii_case(status_header.as_bytes())
}

fn all<'a>(h: &'a [(Bytes, Bytes)], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    h.iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| &v[..])
}

fn first<'a>(h: &'a [(Bytes, Bytes)], name: &str) -> Option<&'a [u8]> {
    h.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| &v[..])
}

/// Request value of a Vary-selected header, normalised for comparison.
pub fn vary_value(req: &RequestHead, name: &str) -> Option<Bytes> {
    req.header(name)
        .map(|v| Bytes::copy_from_slice(rules::trim(v)))
}

impl Entry {
    /// Bytes charged against the budget (besides the key and a fixed overhead).
    pub fn size(&self) -> usize {
        let h: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 32)
            .sum();
        let v: usize = self
            .vary
            .iter()
            .map(|(n, v)| n.len() + v.as_ref().map_or(0, Bytes::len) + 32)
            .sum();
        h + v + self.body.len()
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        first(&self.headers, name)
    }

    pub fn same_variant(&self, other: &Entry) -> bool {
        self.vary == other.vary
    }

    /// This variant was selected by the same header values `req` carries.
    pub fn matches(&self, req: &RequestHead) -> bool {
        self.vary
            .iter()
            .all(|(n, v)| req.header(n).map(rules::trim) == v.as_deref())
    }

    /// `Surrogate-Key` (space-separated tags) lists `tag`.
    pub fn has_tag(&self, tag: &[u8]) -> bool {
        all(&self.headers, "surrogate-key").any(|v| v.split(|&b| b == b' ').any(|t| t == tag))
    }

    pub fn age_ms(&self, now_ms: u64) -> u64 {
        self.initial_age_ms + now_ms.saturating_sub(self.stored_ms)
    }

    /// Age header value.
    pub fn age_secs(&self, now_ms: u64) -> u64 {
        self.age_ms(now_ms) / 1000
    }

    pub fn is_fresh(&self, now_ms: u64) -> bool {
        !self.no_cache && self.age_ms(now_ms) < self.lifetime_ms
    }

    /// May be served stale while a background refresh runs.
    pub fn in_swr(&self, now_ms: u64) -> bool {
        !self.no_cache && !self.no_stale && self.age_ms(now_ms) < self.lifetime_ms + self.swr_ms
    }

    /// May be served stale because the origin failed.
    pub fn in_sie(&self, now_ms: u64) -> bool {
        !self.no_cache && !self.no_stale && self.age_ms(now_ms) < self.lifetime_ms + self.sie_ms
    }

    pub fn has_validator(&self) -> bool {
        self.header("etag").is_some() || self.header("last-modified").is_some()
    }

    /// Of no further use: stale past every window and nothing to revalidate with.
    pub fn is_dead(&self, now_ms: u64) -> bool {
        !self.has_validator()
            && self.age_ms(now_ms) >= self.lifetime_ms + self.swr_ms.max(self.sie_ms)
    }

    /// Builds an entry (without body) from an upstream response, or `None` when a shared
    /// cache must not store it. `req_ms`/`now_ms`: when the request went out / the head came.
    pub fn from_response(
        resp: &ResponseHead,
        req: &RequestHead,
        p: &Policy<'_>,
        req_ms: u64,
        now_ms: u64,
    ) -> Option<Entry> {
        let status_ok = if p.rfc {
            // Final and complete: a 304 or 206 is not a response that can be reused as such.
            (200..600).contains(&resp.status) && !matches!(resp.status, 206 | 304)
        } else {
            p.statuses.contains(&resp.status)
        };
        if !status_ok {
            return None;
        }
        Entry::from_any_response(resp, req, p, (req_ms, now_ms))
    }

    /// `from_response` without its status rule (a 206 kept by `partial.rs`).
    pub(super) fn from_any_response(
        resp: &ResponseHead,
        req: &RequestHead,
        p: &Policy<'_>,
        (req_ms, now_ms): (u64, u64),
    ) -> Option<Entry> {
        if resp.header("set-cookie").is_some() && !p.set_cookie && !p.rfc {
            return None;
        }
        let mut headers = Vec::with_capacity(resp.headers.len());
        let mut vary_names: Vec<Box<str>> = Vec::new();
        for h in &resp.headers {
            let (n, v) = (resp.name(h), resp.value(h));
            if n.eq_ignore_ascii_case(b"vary") {
                for name in rules::split_list(v) {
                    if name == b"*" {
                        // Vary: * never matches a later request (RFC 9111 4.1): do not store.
                        return None;
                    }
                    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                    if !vary_names.iter().any(|x| **x == *name) {
                        vary_names.push(name.into());
                    }
                }
            }
            if skip_stored(n, p.status_header) || resp.listed_in_connection(n) {
                continue;
            }
            headers.push((Bytes::copy_from_slice(n), Bytes::copy_from_slice(v)));
        }
        let vary = vary_names
            .into_iter()
            .map(|n| {
                let v = vary_value(req, &n);
                (n, v)
            })
            .collect();
        let mut e = Entry {
            status: resp.status,
            headers,
            vary,
            ..Entry::default()
        };
        let age = resp.header("age").and_then(rules::delta_seconds);
        if !e.set_freshness(
            p,
            age,
            req_ms,
            now_ms,
            req.header("authorization").is_some(),
        ) {
            return None;
        }
        Some(e)
    }

    /// The entry after a 304 from the origin: its header fields replace the stored ones of
    /// the same names (RFC 9111 4.3.4), and freshness starts over.
    pub fn refreshed(
        &self,
        resp: &ResponseHead,
        p: &Policy<'_>,
        req_ms: u64,
        now_ms: u64,
    ) -> Option<Entry> {
        let mut e = self.clone();
        // Not updated (RFC 9111 3.2): what is never stored, what the connection named, and
        // what describes the stored body itself (its length, range and coding).
        let fresh: Vec<(Bytes, Bytes)> = resp
            .headers
            .iter()
            .filter(|h| {
                let n = resp.name(h);
                !skip_stored(n, p.status_header)
                    && !resp.listed_in_connection(n)
                    && !n.eq_ignore_ascii_case(b"content-range")
                    && !n.eq_ignore_ascii_case(b"content-encoding")
            })
            .map(|h| {
                (
                    Bytes::copy_from_slice(resp.name(h)),
                    Bytes::copy_from_slice(resp.value(h)),
                )
            })
            .collect();
        e.headers
            .retain(|(n, _)| !fresh.iter().any(|(f, _)| f.eq_ignore_ascii_case(n)));
        e.headers.extend(fresh);
        let age = resp.header("age").and_then(rules::delta_seconds);
        e.set_freshness(p, age, req_ms, now_ms, false).then_some(e)
    }

    /// Computes lifetime, age and stale windows from the stored headers; false if the
    /// response must not be stored (no-store, private, Authorization rule, nothing to reuse).
    fn set_freshness(
        &mut self,
        p: &Policy<'_>,
        age: Option<u64>,
        req_ms: u64,
        now_ms: u64,
        authorized: bool,
    ) -> bool {
        // A targeted field (RFC 9213) replaces Cache-Control and Expires when it is valid.
        let targeted = p
            .targeted
            .iter()
            .find_map(|n| CacheControl::parse_targeted(all(&self.headers, n)));
        let use_expires = targeted.is_none();
        let cc =
            targeted.unwrap_or_else(|| CacheControl::parse(all(&self.headers, "cache-control")));
        if cc.no_store || cc.private {
            return false;
        }
        if authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
            return false;
        }
        let now_s = now_ms / 1000;
        let facts = Facts {
            date: Some(
                self.header("date")
                    .and_then(rules::parse_http_date)
                    .unwrap_or(now_s),
            ),
            expires: self
                .header("expires")
                .filter(|_| use_expires)
                .map(rules::parse_http_date),
            last_modified: self
                .header("last-modified")
                .and_then(rules::parse_http_date),
            age,
            cc: cc.clone(),
        };
        let explicit = cc.max_age.is_some() || cc.s_maxage.is_some() || facts.expires.is_some();
        if p.rfc && !explicit && !cc.public && !rules::heuristically_cacheable(self.status) {
            // RFC 9111 3: nothing says it may be reused.
            return false;
        }
        let lifetime = rules::lifetime(&facts, self.status, p.default_ttl);
        // Already stale, nothing to revalidate with and no stale window: of no use stored.
        let windows = cc.stale_if_error.unwrap_or(0) + cc.stale_while_revalidate.unwrap_or(0);
        if lifetime.unwrap_or(0) == 0 && !self.has_validator() && windows == 0 {
            return false;
        }
        self.lifetime_ms = lifetime.unwrap_or(0).saturating_mul(1000);
        self.initial_age_ms = rules::initial_age(&facts, req_ms, now_ms);
        self.stored_ms = now_ms;
        self.swr_ms = cc.stale_while_revalidate.unwrap_or(0).saturating_mul(1000);
        self.sie_ms = cc.stale_if_error.unwrap_or(0).saturating_mul(1000);
        self.no_cache = cc.no_cache;
        self.no_stale = cc.no_stale();
        self.auth_ok = cc.public || cc.s_maxage.is_some() || cc.must_revalidate;
        true
    }
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    // Digits only: "+5", "-1", "5.0" are not ages (nor range positions).
    let v = rules::trim(v);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Whether a client's conditional request is satisfied by `e` (answer 304), RFC 9110 13.2.2:
/// If-None-Match (weak comparison, a list, `*` for any stored representation) wins over
/// If-Modified-Since, which compares with Last-Modified, else the stored Date, else the time
/// the response was received (RFC 9111 4.3.2); an invalid date is ignored.
pub fn not_modified(req: &RequestHead, e: &Entry) -> bool {
    if let Some(inm) = req.header("if-none-match") {
        if rules::split_list(inm).any(|t| t == b"*") {
            return true;
        }
        return e
            .header("etag")
            .is_some_and(|t| rules::etag_matches(inm, t));
    }
    let Some(since) = req
        .header("if-modified-since")
        .and_then(rules::parse_http_date)
    else {
        return false;
    };
    let modified = e
        .header("last-modified")
        .or_else(|| e.header("date"))
        .and_then(rules::parse_http_date)
        .unwrap_or(e.stored_ms / 1000);
    modified <= since
}

/// What a `200` to a `HEAD` does to the stored `GET` response (RFC 9111 4.3.5): if it agrees
/// with the stored one (same strong or weak ETag and Last-Modified when either has them, and
/// a Content-Length equal to the stored body's), its headers update the entry as a 304's
/// would (`Some(updated)`, or `Some(None)` if the update forbids storing); otherwise the
/// stored response is out of date and must go (`None`).
pub fn head_update(
    e: &Entry,
    resp: &ResponseHead,
    p: &Policy<'_>,
    req_ms: u64,
    now_ms: u64,
) -> Option<Option<Entry>> {
    let same = |name: &str| match (resp.header(name), e.header(name)) {
        (Some(a), Some(b)) => rules::trim(a) == rules::trim(b),
        (None, None) => true,
        _ => false,
    };
    let length_ok = match resp.header("content-length") {
        Some(l) => rules::delta_seconds(l) == Some(e.body.len() as u64),
        None => true,
    };
    (same("etag") && same("last-modified") && length_ok)
        .then(|| e.refreshed(resp, p, req_ms, now_ms))
}

/// A single satisfiable `Range: bytes=` range over `len` bytes, as `start..end`.
/// `Ok(None)`: no usable Range (absent, multi-range, or If-Range mismatch): send it all.
/// `Err(())`: unsatisfiable (416).
#[allow(clippy::result_unit_err)]
pub fn range(req: &RequestHead, e: &Entry, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(r) = req.header("range") else {
        return Ok(None);
    };
    if let Some(ir) = req.header("if-range") {
        // Strong comparison with the ETag, or an exact Last-Modified date.
        let ok = match e.header("etag") {
            Some(t) if ir.starts_with(b"\"") => !t.starts_with(b"W/") && rules::trim(ir) == t,
            _ => e
                .header("last-modified")
                .is_some_and(|lm| rules::trim(ir) == lm),
        };
        if !ok {
            return Ok(None);
        }
    }
    let Some(spec) = rules::trim(r).strip_prefix(b"bytes=") else {
        return Ok(None);
    };
    if spec.contains(&b',') {
        return Ok(None);
    }
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return Ok(None);
    };
    let (a, b) = (rules::trim(&spec[..dash]), rules::trim(&spec[dash + 1..]));
    let (start, end) = match (parse_u64(a), parse_u64(b)) {
        (Some(s), Some(e)) if s <= e => (s, (e + 1).min(len)),
        (Some(s), None) if b.is_empty() => (s, len),
        (None, Some(n)) if a.is_empty() && n > 0 => (len.saturating_sub(n), len),
        _ => return Ok(None),
    };
    if start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}
