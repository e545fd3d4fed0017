//! Request head parsing (httparse) and validation; the head types and framing rules it shares
//! with responses live in head.rs. Records byte offsets into a reusable buffer; never allocates per header once warm, never does I/O.

use std::mem::MaybeUninit;

use bytes::BytesMut;

use crate::error::ClientError;

use super::head::{
    connection_tokens, first_header, listed, span_of, transfer_coding, trim, CodingError, ConnInfo,
};
pub use super::head::{
    parse_content_length, BodyKind, HeadLimits, HeadStorage, HeaderPos, Method, Span, Status,
    MAX_HEADERS,
};
pub use super::response_head::ResponseHead;

/// A parsed request head. Reused across requests on a connection: `clear` keeps capacity.
#[derive(Debug)]
pub struct RequestHead {
    /// The head's bytes; every `Span` indexes into this.
    pub buf: BytesMut,
    pub method: Method,
    method_span: Span,
    target: Span,
    path: Span,
    query: Option<Span>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<HeaderPos>,
    host: Option<Span>,
    pub body: BodyKind,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Upgrade: websocket` with `Connection: upgrade`.
    pub websocket: bool,
    /// Header names listed in `Connection` (hop-by-hop by declaration).
    pub conn_tokens: Vec<Span>,
}

impl Default for RequestHead {
    fn default() -> Self {
        RequestHead {
            // No storage until the first parse or `restore` (idle connections hold none).
            buf: BytesMut::new(),
            method: Method::Get,
            method_span: (0, 0),
            target: (0, 0),
            path: (0, 0),
            query: None,
            version: 1,
            headers: Vec::new(),
            host: None,
            body: BodyKind::Empty,
            keep_alive: true,
            expect_continue: false,
            websocket: false,
            conn_tokens: Vec::new(),
        }
    }
}

impl RequestHead {
    #[inline]
    pub fn slice(&self, s: Span) -> &[u8] {
        &self.buf[s.0 as usize..s.1 as usize]
    }
    pub fn method_bytes(&self) -> &[u8] {
        self.slice(self.method_span)
    }
    /// The request target as sent (origin-form, or absolute-form).
    pub fn target(&self) -> &[u8] {
        self.slice(self.target)
    }
    /// Path without the query; "/" for an absolute-form target with no path.
    pub fn path(&self) -> &[u8] {
        if self.path.0 == self.path.1 {
            b"/"
        } else {
            self.slice(self.path)
        }
    }
    pub fn query(&self) -> &[u8] {
        self.query.map_or(&[][..], |q| self.slice(q))
    }
    /// Path plus `?query`, as forwarded upstream.
    pub fn path_and_query(&self) -> &[u8] {
        if self.path.0 == self.path.1 {
            return b"/";
        }
        let end = self.query.map_or(self.path.1, |q| q.1);
        &self.buf[self.path.0 as usize..end as usize]
    }
    pub fn host(&self) -> &[u8] {
        self.host.map_or(&[][..], |h| self.slice(h))
    }
    pub fn name(&self, h: &HeaderPos) -> &[u8] {
        self.slice(h.name)
    }
    pub fn value(&self, h: &HeaderPos) -> &[u8] {
        self.slice(h.value)
    }
    /// First header with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        first_header(&self.buf, &self.headers, name.as_bytes())
    }
    /// True if `name` was listed in the Connection header.
    pub fn listed_in_connection(&self, name: &[u8]) -> bool {
        listed(&self.buf, &self.conn_tokens, name)
    }

    /// Moves the head's storage out (cleared) while the connection is idle; until `restore`
    /// the head reads as an empty `GET /` and a `parse` would allocate.
    pub fn release(&mut self) -> HeadStorage {
        self.reset();
        self.method = Method::Get;
        self.method_span = (0, 0);
        self.target = (0, 0);
        self.path = (0, 0);
        HeadStorage::take(&mut self.buf, &mut self.headers)
    }

    pub fn restore(&mut self, s: HeadStorage) {
        (self.buf, self.headers) = (s.buf, s.headers);
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.headers.clear();
        self.conn_tokens.clear();
        self.host = None;
        self.query = None;
        self.body = BodyKind::Empty;
        self.expect_continue = false;
        self.websocket = false;
    }

    /// Parses and validates a request head at the start of `input`. On `Complete(n)` the head
    /// (the first `n` bytes) has been copied into `self.buf` and the caller should drop them from `input`.
    pub fn parse(&mut self, input: &[u8], limits: &HeadLimits) -> Result<Status, ClientError> {
        let mut raw: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
            [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, input, &mut raw);
        // The request line's limit is checked before the whole head's (and before httparse's
        // verdict) so an over-long URI gets 414 rather than 431 or 400. A complete head has
        // its line's end just after the target, so only those few bytes are scanned.
        let line_from = match (&parsed, req.path) {
            (Ok(httparse::Status::Complete(_)), Some(t)) => span_of(input, t.as_bytes()).1 as usize,
            _ => 0,
        };
        if line_too_long(input, line_from, limits.max_request_line_bytes) {
            return Err(ClientError::UriTooLong);
        }
        let n = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if input.len() > limits.max_header_bytes {
                    return Err(ClientError::HeaderTooLarge);
                }
                return Ok(Status::Partial);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(ClientError::HeaderTooLarge),
            Err(httparse::Error::HeaderName) => {
                return Err(ClientError::BadRequest("invalid header name"))
            }
            Err(httparse::Error::HeaderValue) => {
                return Err(ClientError::BadRequest("invalid header value"))
            }
            Err(httparse::Error::Version) => {
                return Err(ClientError::BadRequest("unsupported HTTP version"))
            }
            Err(httparse::Error::Token) => return Err(ClientError::BadRequest("invalid method")),
            Err(_) => return Err(ClientError::BadRequest("malformed request line")),
        };
        if n > limits.max_header_bytes {
            return Err(ClientError::HeaderTooLarge);
        }
        self.reset();
        self.buf.extend_from_slice(&input[..n]);
        let base = &input[..n];
        let method = req.method.unwrap_or("");
        let target = req.path.unwrap_or("");
        self.method = Method::from_bytes(method.as_bytes());
        self.method_span = span_of(base, method.as_bytes());
        self.target = span_of(base, target.as_bytes());
        self.version = req.version.unwrap_or(1);
        self.split_target(base)?;

        let mut lengths: Option<u64> = None;
        let mut chunked = false;
        let mut has_te = false;
        let mut hosts = 0usize;
        let mut conn = ConnInfo::default();
        let mut upgrade_websocket = false;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            let value = h.value;
            let pos = HeaderPos {
                name: span_of(base, name),
                value: span_of(base, value),
            };
            match name.len() {
                4 if name.eq_ignore_ascii_case(b"host") => {
                    hosts += 1;
                    if !valid_host(value) {
                        return Err(ClientError::BadRequest("invalid Host header"));
                    }
                    // An absolute-form target's authority wins over Host (RFC 9112 3.2.2).
                    if self.host.is_none() {
                        self.host = Some(pos.value);
                    }
                }
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    let n = parse_content_length(value)
                        .ok_or(ClientError::BadRequest("invalid Content-Length"))?;
                    if lengths.is_some_and(|l| l != n) {
                        return Err(ClientError::BadRequest("conflicting Content-Length"));
                    }
                    lengths = Some(n);
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                    has_te = true;
                    chunked = transfer_coding(value, chunked).map_err(|e| match e {
                        CodingError::Unknown => {
                            ClientError::NotImplemented("unsupported transfer coding")
                        }
                        CodingError::Invalid => {
                            ClientError::BadRequest("invalid Transfer-Encoding")
                        }
                    })?;
                }
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    connection_tokens(base, value, &mut conn, &mut self.conn_tokens);
                }
                6 if name.eq_ignore_ascii_case(b"expect") => {
                    if value.eq_ignore_ascii_case(b"100-continue") {
                        self.expect_continue = true;
                    } else {
                        return Err(ClientError::ExpectationFailed);
                    }
                }
                7 if name.eq_ignore_ascii_case(b"upgrade") => {
                    upgrade_websocket = value
                        .split(|&b| b == b',')
                        .any(|t| trim(t).eq_ignore_ascii_case(b"websocket"));
                }
                _ => {}
            }
            self.headers.push(pos);
        }
        if hosts > 1 {
            return Err(ClientError::BadRequest("multiple Host headers"));
        }
        if hosts == 0 && self.version == 1 && self.host.is_none() {
            return Err(ClientError::BadRequest("missing Host header"));
        }
        if has_te {
            if lengths.is_some() {
                return Err(ClientError::BadRequest(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            if self.version == 0 {
                return Err(ClientError::BadRequest("Transfer-Encoding in HTTP/1.0"));
            }
            if !chunked {
                return Err(ClientError::BadRequest(
                    "final transfer coding is not chunked",
                ));
            }
            self.body = BodyKind::Chunked;
        } else {
            self.body = match lengths {
                Some(0) | None => BodyKind::Empty,
                Some(n) => BodyKind::Length(n),
            };
        }
        if self.method == Method::Connect {
            return Err(ClientError::NotImplemented("CONNECT is not supported"));
        }
        self.keep_alive = if self.version == 1 {
            !conn.close
        } else {
            conn.keep_alive && !conn.close
        };
        self.websocket = conn.upgrade && upgrade_websocket && self.method == Method::Get;
        Ok(Status::Complete(n))
    }

    fn split_target(&mut self, base: &[u8]) -> Result<(), ClientError> {
        let (t0, t1) = self.target;
        let t = &base[t0 as usize..t1 as usize];
        let mut path_start = t0;
        if t.first() != Some(&b'/') {
            if t == b"*" && self.method == Method::Options {
                self.path = self.target;
                return Ok(());
            }
            let rest = strip_scheme(t).ok_or(ClientError::BadRequest("invalid request target"))?;
            let auth_start = t0 + (t.len() - rest.len()) as u32;
            let auth_len = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            let authority = &rest[..auth_len];
            if authority.is_empty() || !valid_host(authority) {
                return Err(ClientError::BadRequest("invalid request target"));
            }
            self.host = Some((auth_start, auth_start + auth_len as u32));
            path_start = auth_start + auth_len as u32;
        }
        let rest = &base[path_start as usize..t1 as usize];
        match rest.iter().position(|&b| b == b'?') {
            Some(q) => {
                let q = path_start + q as u32;
                self.path = (path_start, q);
                self.query = Some((q + 1, t1));
            }
            None => self.path = (path_start, t1),
        }
        Ok(())
    }
}

fn strip_scheme(t: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if t.len() > scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&t[scheme.len()..]);
        }
    }
    None
}

/// The request line (up to its LF, searched from `from`, a point before it) is longer than
/// `max` bytes plus its line ending, or no LF came within that many bytes.
#[allow(clippy::manual_contains)] // measured: see the comment inside
fn line_too_long(input: &[u8], from: usize, max: usize) -> bool {
    let end = input.len().min(max + 2);
    // A byte loop, not `contains` (memchr): the LF is a few bytes in, and memchr's setup for a
    // window of up to `max` bytes cost more than the loop (callgrind: ~100 vs ~30 Ir).
    if from < end && input[from..end].iter().any(|&b| b == b'\n') {
        return false;
    }
    input.len() > max + 1
}

/// Host header or authority: reg-name / IPv4 / [IPv6] with optional port. Anything else could
/// be used to confuse routing or the upstream, so it is refused.
fn valid_host(v: &[u8]) -> bool {
    // One table load per byte instead of five range/equality tests (callgrind: 47 -> ~20 Ir).
    v.iter().all(|&b| HOST_BYTE[usize::from(b)])
}

const HOST_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'.' | b'-' | b'_' | b':' | b'[' | b']' | b'%');
        b += 1;
    }
    t
};

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
