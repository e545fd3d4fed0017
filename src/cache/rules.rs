//! RFC 9111 rules as pure functions: Cache-Control parsing, storability for a shared cache,
//! freshness lifetime, age, and HTTP-date parsing. No I/O, no clock: times are passed in.

/// Parsed `Cache-Control` (response or request). Seconds; `None` when absent or malformed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    /// Unqualified `no-cache`. The qualified form (`no-cache="Set-Cookie"`) is treated the same,
    /// which RFC 9111 5.2.2.4 allows (it is stricter).
    pub no_cache: bool,
    /// `private`, qualified or not: a shared cache never stores it.
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// Request only.
    pub only_if_cached: bool,
    /// Request only: `max-stale` (a bare one accepts any staleness: `u64::MAX`).
    pub max_stale: Option<u64>,
    /// Request only.
    pub min_fresh: Option<u64>,
}

impl CacheControl {
    /// Folds every `Cache-Control` field value given (they combine as one list).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> CacheControl {
        let mut cc = CacheControl::default();
        for v in values {
            for d in split_list(v) {
                let (name, raw) = match d.iter().position(|&b| b == b'=') {
                    Some(i) => (trim(&d[..i]), Some(trim(&d[i + 1..]))),
                    None => (d, None),
                };
                let arg = raw.map(unquote);
                let secs = || arg.and_then(parse_secs);
                // max-age and s-maxage take the token form only (RFC 9111 5.2.2.1: senders
                // must not quote it); a quoted, non-numeric or missing value is invalid, and so
                // is a directive given twice: the response is then stale (RFC 9111 4.2.1).
                let age = |old: Option<u64>| match (old, raw.and_then(parse_secs)) {
                    (None, Some(v)) => Some(v),
                    _ => Some(0),
                };
                match name.to_ascii_lowercase().as_slice() {
                    b"max-age" => cc.max_age = age(cc.max_age),
                    b"s-maxage" => cc.s_maxage = age(cc.s_maxage),
                    b"no-store" => cc.no_store = true,
                    b"no-cache" => cc.no_cache = true,
                    b"private" => cc.private = true,
                    b"public" => cc.public = true,
                    b"must-revalidate" => cc.must_revalidate = true,
                    b"proxy-revalidate" => cc.proxy_revalidate = true,
                    b"stale-while-revalidate" => cc.stale_while_revalidate = secs(),
                    b"stale-if-error" => cc.stale_if_error = secs(),
                    b"only-if-cached" => cc.only_if_cached = true,
                    b"max-stale" => {
                        cc.max_stale = match raw {
                            None => Some(u64::MAX),
                            Some(_) => secs().or(cc.max_stale),
                        }
                    }
                    b"min-fresh" => cc.min_fresh = secs().or(cc.min_fresh),
                    _ => {}
                }
            }
        }
        cc
    }

    /// A targeted field (RFC 9213, e.g. `CDN-Cache-Control`): a Structured Fields Dictionary
    /// (RFC 8941) whose members are the Cache-Control directives. `None` when the field is absent,
    /// empty or not a valid Dictionary: the cache then falls back to `Cache-Control`. A member
    /// given twice takes its last value (a Dictionary's rule); a directive whose value has the
    /// wrong type (`max-age="60"`, `max-age=1.5`) is ignored.
    pub fn parse_targeted<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<CacheControl> {
        let mut cc = CacheControl::default();
        let mut any = false;
        for v in values {
            for member in split_list(v) {
                let (name, value) = sf_member(member)?;
                any = true;
                let int = value.and_then(sf_integer);
                let flag = value.map_or(true, |v| v == b"?1");
                match name {
                    b"max-age" => cc.max_age = int.or(cc.max_age),
                    b"s-maxage" => cc.s_maxage = int.or(cc.s_maxage),
                    b"stale-while-revalidate" => {
                        cc.stale_while_revalidate = int.or(cc.stale_while_revalidate)
                    }
                    b"stale-if-error" => cc.stale_if_error = int.or(cc.stale_if_error),
                    b"no-store" => cc.no_store = flag,
                    b"no-cache" => {
                        cc.no_cache = flag || value.is_some_and(|v| v.starts_with(b"\""))
                    }
                    b"private" => cc.private = flag || value.is_some_and(|v| v.starts_with(b"\"")),
                    b"public" => cc.public = flag,
                    b"must-revalidate" => cc.must_revalidate = flag,
                    b"proxy-revalidate" => cc.proxy_revalidate = flag,
                    _ => {}
                }
            }
        }
        any.then_some(cc)
    }

    /// Serving stale is forbidden (must-revalidate, proxy-revalidate, and s-maxage which
    /// implies proxy-revalidate for a shared cache, RFC 9111 5.2.2.10).
    pub fn no_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

/// One Dictionary member (`key` or `key=value`, parameters dropped) if it is well formed:
/// an sf-key, and a bare item that is an integer, decimal, string, token or boolean.
fn sf_member(m: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let mut quoted = false;
    let end = m
        .iter()
        .position(|&b| {
            quoted ^= b == b'"';
            b == b';' && !quoted
        })
        .unwrap_or(m.len());
    let m = trim(&m[..end]);
    let (key, value) = match m.iter().position(|&b| b == b'=') {
        Some(i) => (&m[..i], Some(&m[i + 1..])),
        None => (m, None),
    };
    let key_ok = matches!(key.first(), Some(b'a'..=b'z' | b'*'))
        && key
            .iter()
            .all(|&b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*'));
    let value_ok = value.map_or(true, |v| match v {
        [b'"', inner @ .., b'"'] => inner.iter().all(|&b| (0x20..0x7f).contains(&b)),
        b"?0" | b"?1" => true,
        [b'-' | b'0'..=b'9', ..] => {
            let digits = v.strip_prefix(b"-").unwrap_or(v);
            !digits.is_empty() && digits.iter().all(|&b| b.is_ascii_digit() || b == b'.')
        }
        [b'a'..=b'z' | b'A'..=b'Z' | b'*', rest @ ..] => rest
            .iter()
            .all(|&b| b.is_ascii_graphic() && !b"\"(),;<=>?@[\\]{}".contains(&b)),
        _ => false,
    });
    (key_ok && value_ok).then_some((key, value))
}

/// A non-negative sf-integer (at most 15 digits); anything else is not one.
fn sf_integer(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 15 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn parse_secs(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Too large a value is taken as "very large" (RFC 9111 1.2.2), not as an error.
    Some(
        std::str::from_utf8(v)
            .ok()?
            .parse::<u64>()
            .unwrap_or(u64::from(u32::MAX)),
    )
}

/// Comma-separated list elements, trimmed, empty ones dropped (quoted commas kept together).
pub fn split_list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, &b) in v.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                parts.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&v[start..]);
    parts.into_iter().map(trim).filter(|p| !p.is_empty())
}

pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn unquote(s: &[u8]) -> &[u8] {
    match s {
        [b'"', inner @ .., b'"'] => inner,
        _ => s,
    }
}

/// Statuses a cache may give heuristic freshness to (RFC 9110 15.1).
pub fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The freshness-relevant facts of a response, all times in unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub cc: CacheControl,
    pub date: Option<u64>,
    /// `Expires`; an invalid value (e.g. "0") counts as already expired.
    pub expires: Option<Option<u64>>,
    pub last_modified: Option<u64>,
    pub age: Option<u64>,
}

/// Freshness lifetime in seconds for a shared cache (RFC 9111 4.2.1), or `None` when the
/// response has no explicit expiry and no heuristic applies. `default_ttl` is the operator's
/// heuristic (`cache_ttl`), used only where the RFC allows a heuristic.
pub fn lifetime(f: &Facts, status: u16, default_ttl: Option<u64>) -> Option<u64> {
    if let Some(s) = f.cc.s_maxage {
        return Some(s);
    }
    if let Some(m) = f.cc.max_age {
        return Some(m);
    }
    if let Some(exp) = f.expires {
        return Some(match (exp, f.date) {
            (Some(e), Some(d)) => e.saturating_sub(d),
            // No Date: the cache's receipt time stands in (set by the caller as `date`).
            (Some(_), None) | (None, _) => 0,
        });
    }
    if !(heuristically_cacheable(status) || f.cc.public) {
        return None;
    }
    if let Some(t) = default_ttl {
        return Some(t);
    }
    // The customary 10% of the time since Last-Modified (RFC 9111 4.2.2), capped at a day.
    match (f.date, f.last_modified) {
        (Some(d), Some(lm)) if d > lm => Some(((d - lm) / 10).min(86_400)),
        _ => None,
    }
}

/// Age in milliseconds of a stored response at receipt (RFC 9111 4.2.3), given request and
/// response times in milliseconds. `Date` has whole seconds, so the apparent age takes the end
/// of its second (never ages a response by truncation alone).
pub fn initial_age(f: &Facts, request_ms: u64, response_ms: u64) -> u64 {
    let apparent = f
        .date
        .map_or(0, |d| response_ms.saturating_sub(d * 1000 + 999));
    let corrected_age = f.age.unwrap_or(0) * 1000 + response_ms.saturating_sub(request_ms);
    apparent.max(corrected_age)
}

// ---- HTTP dates -------------------------------------------------------------------------------

const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
const LONG_DAYS: [&[u8]; 7] = [
    b"Monday",
    b"Tuesday",
    b"Wednesday",
    b"Thursday",
    b"Friday",
    b"Saturday",
    b"Sunday",
];

/// Exactly `n` ASCII digits.
fn digits(s: &[u8], n: usize) -> Option<u32> {
    if s.len() != n || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u32, |a, &b| a * 10 + u32::from(b - b'0')))
}

/// `HH:MM:SS`.
fn time_of_day(t: &[u8]) -> Option<(u32, u32, u32)> {
    match t {
        [h1, h2, b':', m1, m2, b':', s1, s2] => Some((
            digits(&[*h1, *h2], 2)?,
            digits(&[*m1, *m2], 2)?,
            digits(&[*s1, *s2], 2)?,
        )),
        _ => None,
    }
}

fn month(m: &[u8]) -> Option<u32> {
    // Case-sensitive, as the grammar's literals are (RFC 9110 5.6.7).
    MONTHS.iter().position(|x| *x == m).map(|i| i as u32 + 1)
}

/// Parses an HTTP-date (RFC 9110 5.6.7) to unix seconds: IMF-fixdate, or the obsolete RFC 850
/// and asctime forms, exactly as the grammar writes them (case, commas, single spaces, a
/// two-digit year only in the RFC 850 form); anything else is not a date.
pub fn parse_http_date(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    let (day, mon, year, time) = if v.len() == 29 && v[3] == b',' {
        // Sun, 06 Nov 1994 08:49:37 GMT
        if !DAYS.contains(&&v[..3]) || &v[4..5] != b" " || &v[25..] != b" GMT" {
            return None;
        }
        let (d, m, y, t) = (&v[5..7], &v[8..11], &v[12..16], &v[17..25]);
        if v[7] != b' ' || v[11] != b' ' || v[16] != b' ' {
            return None;
        }
        (digits(d, 2)?, month(m)?, digits(y, 4)?, time_of_day(t)?)
    } else if let Some(comma) = v.iter().position(|&b| b == b',').filter(|&i| i > 3) {
        // Sunday, 06-Nov-94 08:49:37 GMT
        let rest = &v[comma..];
        if !LONG_DAYS.contains(&&v[..comma]) || rest.len() != 24 || &rest[..2] != b", " {
            return None;
        }
        let (d, m, y, t) = (&rest[2..4], &rest[5..8], &rest[9..11], &rest[12..20]);
        if rest[4] != b'-' || rest[8] != b'-' || rest[11] != b' ' || &rest[20..] != b" GMT" {
            return None;
        }
        // Two-digit years: the most recent past year with those digits (RFC 9110 5.6.7), taken
        // here as 1970-2069.
        let y = digits(y, 2)?;
        let y = if y < 70 { 2000 + y } else { 1900 + y };
        (digits(d, 2)?, month(m)?, y, time_of_day(t)?)
    } else if v.len() == 24 {
        // Sun Nov  6 08:49:37 1994
        let (m, d, t, y) = (&v[4..7], &v[8..10], &v[11..19], &v[20..]);
        if !DAYS.contains(&&v[..3])
            || v[3] != b' '
            || v[7] != b' '
            || v[10] != b' '
            || v[19] != b' '
        {
            return None;
        }
        let d = match d {
            [b' ', x] => digits(&[*x], 1)?,
            _ => digits(d, 2)?,
        };
        (d, month(m)?, digits(y, 4)?, time_of_day(t)?)
    } else {
        return None;
    };
    let (h, mi, s) = time;
    if !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(i64::from(year), mon, day);
    u64::try_from(days * 86_400 + i64::from(h * 3600 + mi * 60 + s)).ok()
}

/// A delta-seconds value (RFC 9111 1.2.2): digits only, no sign, no fraction; too large a
/// value counts as very large.
pub fn delta_seconds(v: &[u8]) -> Option<u64> {
    parse_secs(trim(v))
}

/// Formats unix seconds as an IMF-fixdate.
pub fn format_http_date(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    // civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    format!(
        "{wd}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        std::str::from_utf8(MONTHS[(m - 1) as usize]).unwrap_or("Jan"),
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Weak comparison of one entity tag against an `If-None-Match` list (RFC 9110 13.1.2).
pub fn etag_matches(list: &[u8], etag: &[u8]) -> bool {
    let strip = |t: &[u8]| -> Vec<u8> { t.strip_prefix(b"W/").unwrap_or(t).to_vec() };
    let mine = strip(trim(etag));
    split_list(list).any(|t| t == b"*" || strip(t) == mine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives() {
        let cc = CacheControl::parse([
            &b"public, max-age=060, s-maxage=\"30\""[..],
            b"stale-while-revalidate=5,stale-if-error=10, must-revalidate",
        ]);
        assert_eq!(cc.max_age, Some(60), "leading zeros are valid");
        assert_eq!(cc.s_maxage, Some(0), "a quoted s-maxage is invalid: stale");
        assert!(cc.public && cc.must_revalidate && cc.no_stale());
        assert_eq!(cc.stale_while_revalidate, Some(5));
        assert_eq!(cc.stale_if_error, Some(10));
        let cc = CacheControl::parse([&b"private=\"x, y\", no-cache, max-age=abc"[..]]);
        assert!(cc.private && cc.no_cache);
        assert_eq!(cc.max_age, Some(0), "malformed max-age is stale");
        let cc = CacheControl::parse([&b"max-age=60"[..], b"max-age=60"]);
        assert_eq!(
            cc.max_age,
            Some(0),
            "a directive given twice is invalid: stale"
        );
    }

    #[test]
    fn lifetime_precedence_and_heuristics() {
        let mut f = Facts {
            date: Some(1000),
            expires: Some(Some(1100)),
            ..Facts::default()
        };
        assert_eq!(lifetime(&f, 200, None), Some(100));
        f.cc.max_age = Some(7);
        assert_eq!(lifetime(&f, 200, None), Some(7));
        f.cc.s_maxage = Some(3);
        assert_eq!(lifetime(&f, 200, None), Some(3));
        let g = Facts {
            expires: Some(None),
            ..Facts::default()
        };
        assert_eq!(
            lifetime(&g, 200, Some(99)),
            Some(0),
            "Expires: 0 is expired"
        );
        let h = Facts {
            date: Some(10_000),
            last_modified: Some(9_000),
            ..Facts::default()
        };
        assert_eq!(lifetime(&h, 200, None), Some(100));
        assert_eq!(lifetime(&h, 200, Some(5)), Some(5));
        assert_eq!(lifetime(&h, 302, Some(5)), None, "302 is not heuristic");
        assert_eq!(lifetime(&Facts::default(), 200, None), None);
    }

    #[test]
    fn ages() {
        let f = Facts {
            date: Some(100),
            age: Some(5),
            ..Facts::default()
        };
        assert_eq!(initial_age(&f, 110_000, 112_500), 11_501);
        assert_eq!(initial_age(&f, 100_000, 100_200), 5_200);
    }

    #[test]
    fn http_dates_round_trip() {
        let t = parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(t, Some(784_111_777));
        assert_eq!(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), t);
        assert_eq!(parse_http_date(b"Sun Nov  6 08:49:37 1994"), t);
        assert_eq!(
            format_http_date(784_111_777),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(parse_http_date(b"0"), None);
        assert_eq!(parse_http_date(b"Mon, 32 Jan 2024 00:00:00 GMT"), None);
        for bad in [
            &b"sun, 06 Nov 1994 08:49:37 GMT"[..], // wrong case
            b"Sun, 06 nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37 gmt",
            b"Sun 06 Nov 1994 08:49:37 GMT",   // missing comma
            b"Sun,  06 Nov 1994 08:49:37 GMT", // extra space
            b"Sun, 06 Nov  1994 08:49:37 GMT",
            b"Sun, 06 Nov 94 08:49:37 GMT", // two-digit year where four are required
            b"Sun, 6 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 8:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sunday, 06-Nov-1994 08:49:37 GMT",
            b"Sunday 06-Nov-94 08:49:37 GMT",
            b"Sun Nov 6 08:49:37 1994",
            b"Sun Nov  6 08:49:37 94",
        ] {
            assert_eq!(
                parse_http_date(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(delta_seconds(b"007"), Some(7));
        for bad in [&b"+5"[..], b"-1", b"5.0", b"", b"5 6", b"0x10"] {
            assert_eq!(delta_seconds(bad), None);
        }
        for t in [0u64, 951_782_400, 1_709_251_199, 4_102_444_800] {
            assert_eq!(parse_http_date(format_http_date(t).as_bytes()), Some(t));
        }
    }

    #[test]
    fn request_directives_and_targeted_fields() {
        let cc = CacheControl::parse([&b"max-stale, min-fresh=5, only-if-cached"[..]]);
        assert_eq!(cc.max_stale, Some(u64::MAX));
        assert_eq!(cc.min_fresh, Some(5));
        assert!(cc.only_if_cached);
        assert_eq!(
            CacheControl::parse([&b"max-stale=9"[..]]).max_stale,
            Some(9)
        );
        let t = CacheControl::parse_targeted([&b"max-age=60, no-store=?0, max-age=30"[..]]);
        let t = t.expect("valid dictionary");
        assert_eq!(t.max_age, Some(30), "the last member wins");
        assert!(!t.no_store);
        let t = CacheControl::parse_targeted([&b"max-age=\"60\", public"[..]]).expect("valid");
        assert_eq!(t.max_age, None, "a string is not an integer: ignored");
        assert!(t.public);
        for bad in [&b"Max-Age=60"[..], b"max-age=", b"max-age=60 x", b"=5"] {
            assert!(CacheControl::parse_targeted([bad]).is_none(), "{bad:?}");
        }
        assert!(CacheControl::parse_targeted([&b""[..]]).is_none());
        assert!(CacheControl::parse_targeted([&b"max-age=5;a=1, private"[..]]).is_some());
    }

    #[test]
    fn etags() {
        assert!(etag_matches(b"\"a\", W/\"b\"", b"\"b\""));
        assert!(etag_matches(b"*", b"\"z\""));
        assert!(!etag_matches(b"\"a\"", b"\"b\""));
    }
}
