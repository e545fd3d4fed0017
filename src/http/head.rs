//! What request and response heads share: the head types (spans, method, framing, storage) and
//! the framing rules (Content-Length, Transfer-Encoding, Connection tokens). Bytes only, no I/O.

use bytes::BytesMut;

/// Most heads have far fewer; more is refused as "header too large".
pub const MAX_HEADERS: usize = 128;

/// A byte range into the head buffer.
pub type Span = (u32, u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Trace,
    Connect,
    Other,
}

impl Method {
    pub fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"PATCH" => Method::Patch,
            b"TRACE" => Method::Trace,
            b"CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }

    /// RFC 9110 9.2.2: safe to repeat, so a retry after the request was sent is allowed.
    pub fn idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    Empty,
    Length(u64),
    Chunked,
    /// Response only: the body runs until the upstream closes.
    UntilClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderPos {
    pub name: Span,
    pub value: Span,
}

/// Outcome of feeding bytes to a head parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The head is this many bytes long.
    Complete(usize),
    Partial,
}

/// Size limits applied while the head is still arriving.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub max_header_bytes: usize,
    pub max_request_line_bytes: usize,
}

/// Connection-header facts shared by requests and responses.
#[derive(Debug, Default)]
pub(super) struct ConnInfo {
    pub(super) close: bool,
    pub(super) keep_alive: bool,
    pub(super) upgrade: bool,
}

/// A head's bytes and header slots, kept apart from the head while its connection is idle.
#[derive(Debug)]
pub struct HeadStorage {
    pub(super) buf: BytesMut,
    pub(super) headers: Vec<HeaderPos>,
}

impl HeadStorage {
    /// Enough for most heads without growing.
    pub fn new() -> HeadStorage {
        HeadStorage {
            buf: BytesMut::with_capacity(1024),
            headers: Vec::with_capacity(32),
        }
    }

    pub(super) fn take(buf: &mut BytesMut, headers: &mut Vec<HeaderPos>) -> HeadStorage {
        buf.clear();
        headers.clear();
        HeadStorage {
            buf: std::mem::take(buf),
            headers: std::mem::take(headers),
        }
    }
}

impl Default for HeadStorage {
    fn default() -> Self {
        HeadStorage::new()
    }
}

#[inline]
pub(super) fn span_of(base: &[u8], part: &[u8]) -> Span {
    // Both slices come from the same buffer, so the address difference is the offset.
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    (start as u32, (start + part.len()) as u32)
}

#[inline]
pub(super) fn at(buf: &[u8], s: Span) -> &[u8] {
    &buf[s.0 as usize..s.1 as usize]
}

/// First header named `name` (ASCII case-insensitive); shared by request and response heads.
pub(super) fn first_header<'a>(
    buf: &'a [u8],
    headers: &[HeaderPos],
    name: &[u8],
) -> Option<&'a [u8]> {
    // Lengths from the spans first: most names differ in length. Then an exact compare, the
    // usual case, before the byte-by-byte case fold (callgrind: ~13 Ir per byte).
    headers
        .iter()
        .find(|h| {
            h.name.1.wrapping_sub(h.name.0) as usize == name.len() && {
                let n = at(buf, h.name);
                n == name || n.eq_ignore_ascii_case(name)
            }
        })
        .map(|h| at(buf, h.value))
}

/// Whether `name` is one of the Connection header's tokens.
pub(super) fn listed(buf: &[u8], tokens: &[Span], name: &[u8]) -> bool {
    tokens
        .iter()
        .any(|t| at(buf, *t).eq_ignore_ascii_case(name))
}

/// `1*DIGIT`, or a comma list of identical such values (RFC 9112 6.3 allows collapsing them).
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    let mut result: Option<u64> = None;
    for part in v.split(|&b| b == b',') {
        let part = trim(part);
        if part.is_empty() || part.len() > 18 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part
            .iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
        if result.is_some_and(|r| r != n) {
            return None;
        }
        result = Some(n);
    }
    result
}

pub(super) enum CodingError {
    Unknown,
    Invalid,
}

/// Folds one Transfer-Encoding header value into the running "is chunked last" state.
/// Only a single `chunked` is accepted: other codings would have to be decoded to re-frame.
pub(super) fn transfer_coding(v: &[u8], mut chunked: bool) -> Result<bool, CodingError> {
    for part in v.split(|&b| b == b',') {
        let coding = trim(part);
        if coding.is_empty() {
            return Err(CodingError::Invalid);
        }
        if chunked {
            // Anything after chunked (including a second chunked) is ambiguous framing.
            return Err(CodingError::Invalid);
        }
        if coding.eq_ignore_ascii_case(b"chunked") {
            chunked = true;
        } else if [
            &b"gzip"[..],
            b"x-gzip",
            b"deflate",
            b"compress",
            b"x-compress",
            b"identity",
        ]
        .iter()
        .any(|c| coding.eq_ignore_ascii_case(c))
        {
            // Known codings we do not decode: refused as a framing we cannot re-frame.
            return Err(CodingError::Invalid);
        } else {
            return Err(CodingError::Unknown);
        }
    }
    Ok(chunked)
}

pub(super) fn connection_tokens(
    base: &[u8],
    v: &[u8],
    conn: &mut ConnInfo,
    tokens: &mut Vec<Span>,
) {
    for part in v.split(|&b| b == b',') {
        let t = trim(part);
        if t.is_empty() {
            continue;
        }
        if t.eq_ignore_ascii_case(b"close") {
            conn.close = true;
        } else if t.eq_ignore_ascii_case(b"keep-alive") {
            conn.keep_alive = true;
        } else {
            if t.eq_ignore_ascii_case(b"upgrade") {
                conn.upgrade = true;
            }
            tokens.push(span_of(base, t));
        }
    }
}

#[inline]
pub(super) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}
