//! HTTP/1.1 framing for the client and `serve`: heads (a one-pass scan, httparse for anything
//! unusual) and incremental bodies (Content-Length, chunked, until close). Must not do IO.

const MAX_HEADERS: usize = 64;

/// How much body follows a head, and where we are in it. Consumption is incremental so a
/// body split across many reads is never rescanned from the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    phase: Phase,
    remaining: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Size,
    Data,
    DataEnd,
    Trailer,
}

impl Body {
    fn chunked() -> Body {
        Body::Chunked(Chunked {
            phase: Phase::Size,
            remaining: 0,
        })
    }

    /// Eats body bytes at the front of `buf`. Returns how many were used and whether the body
    /// is complete; callers advance their buffer by the first value and read more if not done.
    pub fn consume(&mut self, buf: &[u8]) -> Result<(usize, bool), &'static str> {
        match self {
            Body::None => Ok((0, true)),
            Body::Length(left) => {
                let take = (*left).min(buf.len() as u64);
                *left -= take;
                Ok((take as usize, *left == 0))
            }
            Body::UntilClose => Ok((buf.len(), false)),
            Body::Chunked(c) => c.consume(buf),
        }
    }
}

impl Chunked {
    fn consume(&mut self, buf: &[u8]) -> Result<(usize, bool), &'static str> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match self.phase {
                Phase::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        pos += used;
                        self.remaining = size;
                        self.phase = if size == 0 {
                            Phase::Trailer
                        } else {
                            Phase::Data
                        };
                    }
                    Ok(httparse::Status::Partial) => return Ok((pos, false)),
                    Err(_) => return Err("bad chunk size"),
                },
                Phase::Data => {
                    let take = self.remaining.min(rest.len() as u64);
                    pos += take as usize;
                    self.remaining -= take;
                    if self.remaining > 0 {
                        return Ok((pos, false));
                    }
                    self.phase = Phase::DataEnd;
                }
                Phase::DataEnd => {
                    if rest.len() < 2 {
                        return Ok((pos, false));
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err("missing CRLF after chunk");
                    }
                    pos += 2;
                    self.phase = Phase::Size;
                }
                Phase::Trailer => {
                    let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                        return Ok((pos, false));
                    };
                    pos += eol + 2;
                    if eol == 0 {
                        return Ok((pos, true));
                    }
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub head_len: usize,
    pub body: Body,
    /// The server will close after this response, so the connection must not be reused.
    pub close: bool,
}

/// `Ok(None)` means the head is not complete yet. `head_request` matters because a response
/// to HEAD carries Content-Length without a body. A plain head (CRLF lines, token names, no
/// folding) is read by a single line scan; anything else goes through httparse, which decides.
pub fn parse_response_head(
    buf: &[u8],
    head_request: bool,
) -> Result<Option<ResponseHead>, &'static str> {
    match fast_head(buf) {
        Fast::Head(status, version, head_len, framing) => Ok(Some(frame_response(
            status,
            version,
            head_len,
            &framing,
            head_request,
        ))),
        Fast::Partial => Ok(None),
        Fast::Unusual => parse_response_head_strict(buf, head_request),
    }
}

enum Fast {
    Head(u16, u8, usize, Framing),
    Partial,
    Unusual,
}

/// Header-name bytes (RFC 9110 tchar).
const fn token_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    t
}
static TOKEN: [bool; 256] = token_table();

fn fast_head(buf: &[u8]) -> Fast {
    // "HTTP/1.x 200 " at least; shorter is either partial or not worth a fast path.
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        return if buf.len() < 8192 {
            Fast::Partial
        } else {
            Fast::Unusual
        };
    };
    let line = &buf[..nl];
    if line.len() < 13
        || &line[..7] != b"HTTP/1."
        || !matches!(line[7], b'0' | b'1')
        || line[8] != b' '
        || !line[9..12].iter().all(u8::is_ascii_digit)
        || !matches!(line[12], b' ' | b'\r')
        || line[line.len() - 1] != b'\r'
    {
        return Fast::Unusual;
    }
    let status = line[9..12]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let version = line[7] - b'0';
    let mut framing = Framing::default();
    let mut pos = nl + 1;
    for _ in 0..=MAX_HEADERS {
        let rest = &buf[pos..];
        let Some(nl) = memchr::memchr(b'\n', rest) else {
            return Fast::Partial;
        };
        if nl == 0 || rest[nl - 1] != b'\r' {
            return Fast::Unusual;
        }
        let line = &rest[..nl - 1];
        pos += nl + 1;
        if line.is_empty() {
            return Fast::Head(status, version, pos, framing);
        }
        // The name runs to the first non-token byte, which must be the colon.
        let colon = line
            .iter()
            .position(|&b| !TOKEN[usize::from(b)])
            .unwrap_or(line.len());
        if colon == 0 || line.get(colon) != Some(&b':') {
            return Fast::Unusual;
        }
        let name = &line[..colon];
        if framing.add(name, &line[colon + 1..]).is_err() {
            return Fast::Unusual;
        }
    }
    // More headers than httparse takes: let it give the error.
    Fast::Unusual
}

/// The httparse path: every head the fast scan does not take, and the reference it is tested
/// against.
pub fn parse_response_head_strict(
    buf: &[u8],
    head_request: bool,
) -> Result<Option<ResponseHead>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed response head"),
    };
    let framing = Framing::scan(resp.headers)?;
    Ok(Some(frame_response(
        resp.code.unwrap_or(0),
        resp.version.unwrap_or(1),
        head_len,
        &framing,
        head_request,
    )))
}

fn frame_response(
    status: u16,
    version: u8,
    head_len: usize,
    framing: &Framing,
    head_request: bool,
) -> ResponseHead {
    let mut close = framing.close || version == 0 && !framing.keep_alive;
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        Body::None
    } else if framing.chunked {
        Body::chunked()
    } else if let Some(n) = framing.length {
        Body::Length(n)
    } else {
        close = true;
        Body::UntilClose
    };
    ResponseHead {
        status,
        head_len,
        body,
        close,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub head_len: usize,
    pub body: Body,
    pub close: bool,
    pub is_head: bool,
    /// Matches the path `serve` answers with its request counter.
    pub path_is_count: bool,
}

pub fn parse_request_head(buf: &[u8]) -> Result<Option<RequestHead>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed request head"),
    };
    let framing = Framing::scan(req.headers)?;
    let body = if framing.chunked {
        Body::chunked()
    } else {
        match framing.length {
            Some(n) if n > 0 => Body::Length(n),
            _ => Body::None,
        }
    };
    Ok(Some(RequestHead {
        head_len,
        body,
        close: framing.close || req.version == Some(0) && !framing.keep_alive,
        is_head: req.method == Some("HEAD"),
        path_is_count: req.path == Some("/__count"),
    }))
}

#[derive(Default)]
struct Framing {
    length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

impl Framing {
    fn scan(headers: &[httparse::Header<'_>]) -> Result<Framing, &'static str> {
        let mut f = Framing::default();
        for h in headers {
            f.add(h.name.as_bytes(), h.value)?;
        }
        Ok(f)
    }

    /// Takes one header; the length check first keeps the common headers at one compare.
    fn add(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        match name.len() {
            14 if name_is(name, b"content-length") => {
                let v = value.trim_ascii();
                if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                    return Err("bad content-length");
                }
                let n = v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                self.length = Some(n);
            }
            17 if name_is(name, b"transfer-encoding") => {
                self.chunked = last_token(value).eq_ignore_ascii_case(b"chunked");
            }
            10 if name_is(name, b"connection") => {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    self.close |= token.eq_ignore_ascii_case(b"close");
                    self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Case-insensitive match of a token `name` against a lowercase name of letters and `-`:
/// setting bit 0x20 lowercases a letter and maps no other token byte onto a letter or `-`.
fn name_is(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len()
        && name
            .iter()
            .zip(lower)
            .fold(0u8, |acc, (a, b)| acc | ((a | 0x20) ^ b))
            == 0
}

fn last_token(v: &[u8]) -> &[u8] {
    v.rsplit(|&b| b == b',').next().unwrap_or(v).trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(mut body: Body, pieces: &[&[u8]]) -> Result<(usize, bool), &'static str> {
        let mut pending: Vec<u8> = Vec::new();
        let mut used_total = 0;
        for p in pieces {
            pending.extend_from_slice(p);
            let (used, done) = body.consume(&pending)?;
            used_total += used;
            pending.drain(..used);
            if done {
                return Ok((used_total, true));
            }
        }
        Ok((used_total, false))
    }

    #[test]
    fn content_length_response() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let head = parse_response_head(raw, false)
            .expect("parse")
            .expect("complete");
        assert_eq!((head.status, head.close), (200, false));
        assert_eq!(drain(head.body, &[&raw[head.head_len..]]), Ok((5, true)));
        assert_eq!(parse_response_head(&raw[..10], false), Ok(None));
    }

    #[test]
    fn chunked_split_anywhere() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
        for cut in 0..body.len() {
            let got = drain(Body::chunked(), &[&body[..cut], &body[cut..]]);
            assert_eq!(got, Ok((body.len(), true)), "cut at {cut}");
        }
        assert!(Body::chunked().consume(b"zz\r\n").is_err());
    }

    #[test]
    fn close_and_head_rules() {
        let raw = b"HTTP/1.0 200 OK\r\n\r\nabc";
        let head = parse_response_head(raw, false)
            .expect("parse")
            .expect("complete");
        assert_eq!((head.body, head.close), (Body::UntilClose, true));
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\n";
        let head = parse_response_head(raw, true)
            .expect("parse")
            .expect("complete");
        assert_eq!((head.body, head.close), (Body::None, true));
    }

    const HEADS: [&[u8]; 6] = [
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 22:32:17 GMT\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nCONTENT-LENGTH:7\r\nconnection: Keep-Alive\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 503 \r\nconnection: close\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nX-A: \tv\r\n\r\n",
    ];

    /// The fast scan and httparse give the same answer on every prefix of well-formed heads.
    #[test]
    fn fast_head_matches_httparse() {
        for raw in HEADS {
            for head_req in [false, true] {
                for cut in 0..=raw.len() {
                    assert_eq!(
                        parse_response_head(&raw[..cut], head_req),
                        parse_response_head_strict(&raw[..cut], head_req),
                        "{:?} cut at {cut}",
                        String::from_utf8_lossy(raw)
                    );
                }
            }
        }
    }

    /// Mutated heads never panic, and a head the fast scan accepts is one httparse either
    /// accepts identically or rejects (the scan does not check value and reason bytes).
    #[test]
    fn fast_head_never_disagrees_on_mutations() {
        let mut rng = crate::scenario::Rng::new(21);
        for i in 0..40_000 {
            let mut raw = HEADS[i % HEADS.len()].to_vec();
            for _ in 0..1 + rng.next() % 3 {
                let at = (rng.next() % raw.len() as u64) as usize;
                let byte = b"\r\n: \t0aZ-\x00\x7f\xff"[(rng.next() % 12) as usize];
                match rng.next() % 3 {
                    0 => raw[at] = byte,
                    1 => raw.insert(at, byte),
                    _ => {
                        raw.remove(at);
                    }
                }
            }
            let fast = parse_response_head(&raw, false);
            let strict = parse_response_head_strict(&raw, false);
            if let (Ok(Some(f)), Ok(Some(s))) = (&fast, &strict) {
                assert_eq!(f, s, "{:?}", String::from_utf8_lossy(&raw));
            }
            if strict.is_err() {
                continue;
            }
            assert!(
                fast.is_ok(),
                "fast rejected what httparse took: {:?}",
                String::from_utf8_lossy(&raw)
            );
        }
    }

    #[test]
    fn request_heads() {
        let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let head = parse_request_head(raw).expect("parse").expect("complete");
        assert_eq!((head.body, head.close), (Body::Length(3), false));
        let raw = b"GET /__count HTTP/1.0\r\n\r\n";
        let head = parse_request_head(raw).expect("parse").expect("complete");
        assert!(head.close && head.path_is_count);
    }
}
