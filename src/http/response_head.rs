//! Upstream response head parsing: status line, headers and framing (`ResponseHead`), using the
//! shared span/framing helpers in head.rs. Byte work only; never touches sockets or requests.

use std::mem::MaybeUninit;

use bytes::BytesMut;

use super::head::{
    connection_tokens, first_header, listed, parse_content_length, span_of, transfer_coding,
    BodyKind, ConnInfo, HeadStorage, HeaderPos, Method, Span, Status, MAX_HEADERS,
};
use crate::error::UpstreamError;

/// A parsed upstream response head, reused across responses.
#[derive(Debug)]
pub struct ResponseHead {
    pub buf: BytesMut,
    pub status: u16,
    reason: Span,
    pub version: u8,
    pub headers: Vec<HeaderPos>,
    pub body: BodyKind,
    /// The upstream allows this connection to be reused.
    pub keep_alive: bool,
    pub conn_tokens: Vec<Span>,
}

impl Default for ResponseHead {
    fn default() -> Self {
        ResponseHead {
            // No storage until the first parse or `restore` (idle connections hold none).
            buf: BytesMut::new(),
            status: 0,
            reason: (0, 0),
            version: 1,
            headers: Vec::new(),
            body: BodyKind::Empty,
            keep_alive: true,
            conn_tokens: Vec::new(),
        }
    }
}

impl ResponseHead {
    #[inline]
    pub fn slice(&self, s: Span) -> &[u8] {
        &self.buf[s.0 as usize..s.1 as usize]
    }
    pub fn reason(&self) -> &[u8] {
        self.slice(self.reason)
    }
    pub fn name(&self, h: &HeaderPos) -> &[u8] {
        self.slice(h.name)
    }
    pub fn value(&self, h: &HeaderPos) -> &[u8] {
        self.slice(h.value)
    }
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        first_header(&self.buf, &self.headers, name.as_bytes())
    }
    pub fn listed_in_connection(&self, name: &[u8]) -> bool {
        listed(&self.buf, &self.conn_tokens, name)
    }

    /// Moves the head's storage out (cleared) while the connection is idle; until `restore`
    /// the head has no headers.
    pub fn release(&mut self) -> HeadStorage {
        self.conn_tokens.clear();
        self.reason = (0, 0);
        HeadStorage::take(&mut self.buf, &mut self.headers)
    }

    pub fn restore(&mut self, s: HeadStorage) {
        (self.buf, self.headers) = (s.buf, s.headers);
    }

    /// Parses an upstream response head; `request_method` decides whether a body follows.
    pub fn parse(
        &mut self,
        input: &[u8],
        request_method: Method,
        max_bytes: usize,
    ) -> Result<Status, UpstreamError> {
        let mut raw: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
            [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let n = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, input, &mut raw)
        {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if input.len() > max_bytes {
                    return Err(UpstreamError::BadResponse(
                        "upstream response header too large",
                    ));
                }
                return Ok(Status::Partial);
            }
            Err(_) => return Err(UpstreamError::BadResponse("malformed upstream response")),
        };
        if n > max_bytes {
            return Err(UpstreamError::BadResponse(
                "upstream response header too large",
            ));
        }
        self.buf.clear();
        self.headers.clear();
        self.conn_tokens.clear();
        self.buf.extend_from_slice(&input[..n]);
        let base = &input[..n];
        self.status = resp.code.unwrap_or(0);
        self.version = resp.version.unwrap_or(1);
        // httparse hands back a static "" (not a slice of `input`) when the reason is missing
        // or not UTF-8; an offset computed from that pointer would be garbage.
        self.reason = match resp.reason {
            Some(r) if !r.is_empty() => span_of(base, r.as_bytes()),
            _ => (0, 0),
        };
        if !(100..=999).contains(&self.status) {
            return Err(UpstreamError::BadResponse("invalid upstream status"));
        }
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut has_te = false;
        let mut conn = ConnInfo::default();
        let bad = UpstreamError::BadResponse("ambiguous upstream response framing");
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            let pos = HeaderPos {
                name: span_of(base, name),
                value: span_of(base, h.value),
            };
            match name.len() {
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    let n = parse_content_length(h.value).ok_or(bad)?;
                    if length.is_some_and(|l| l != n) {
                        return Err(bad);
                    }
                    length = Some(n);
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                    has_te = true;
                    chunked = transfer_coding(h.value, chunked).map_err(|_| bad)?;
                }
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    connection_tokens(base, h.value, &mut conn, &mut self.conn_tokens);
                }
                _ => {}
            }
            self.headers.push(pos);
        }
        if has_te && (length.is_some() || !chunked) {
            return Err(bad);
        }
        self.keep_alive = if self.version == 1 {
            !conn.close
        } else {
            conn.keep_alive && !conn.close
        };
        let no_body = request_method == Method::Head
            || self.status < 200
            || self.status == 204
            || self.status == 304;
        self.body = if no_body {
            BodyKind::Empty
        } else if chunked {
            BodyKind::Chunked
        } else {
            match length {
                Some(0) => BodyKind::Empty,
                Some(n) => BodyKind::Length(n),
                None => BodyKind::UntilClose,
            }
        };
        if self.body == BodyKind::UntilClose {
            self.keep_alive = false;
        }
        Ok(Status::Complete(n))
    }
}
