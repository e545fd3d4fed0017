//! Owns what both ends need about HTTP/1.1 bytes: header lookup and parsing, the deterministic body
//! pattern with its FNV hash, HTTP dates. Must not open sockets or keep state.

use std::time::{SystemTime, UNIX_EPOCH};

/// Deterministic body byte at offset `i`.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

pub fn pattern_fill(offset: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + k as u64);
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf29ce484222325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        for &b in data {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        self.0 = h;
    }
    pub fn of(data: &[u8]) -> u64 {
        let mut f = Fnv::default();
        f.update(data);
        f.0
    }
}

pub(super) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub(super) fn find_headers<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

pub(super) fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(super) fn parse_header_lines(lines: &[&str]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| match l.find(':') {
            Some(i) => (l[..i].to_string(), l[i + 1..].trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// True if the comma-separated `Transfer-Encoding` values end with `chunked`.
pub(super) fn te_is_chunked(headers: &[(String, String)]) -> bool {
    let all: Vec<String> = find_headers(headers, "transfer-encoding")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    all.last().map(|s| s == "chunked").unwrap_or(false)
}

/// The IMF-fixdate `offset` seconds from now, formatted by ringway's own cache code (the one
/// `ringway::` path the e2e tests use besides `props`).
pub fn http_date(offset: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    ringway::cache::rules::format_http_date((now + offset) as u64)
}
