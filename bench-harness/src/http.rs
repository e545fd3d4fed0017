//! HTTP/1.1 message framing shared by the client and `serve`: head parsing via httparse and
//! incremental body consumption (Content-Length, chunked, read-until-close). Must not do IO.

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
/// to HEAD carries Content-Length without a body.
pub fn parse_response_head(
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
    let status = resp.code.unwrap_or(0);
    let framing = Framing::scan(resp.headers)?;
    let mut close = framing.close || resp.version == Some(0) && !framing.keep_alive;
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
    Ok(Some(ResponseHead {
        status,
        head_len,
        body,
        close,
    }))
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

struct Framing {
    length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

impl Framing {
    fn scan(headers: &[httparse::Header<'_>]) -> Result<Framing, &'static str> {
        let mut f = Framing {
            length: None,
            chunked: false,
            close: false,
            keep_alive: false,
        };
        for h in headers {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value).map_err(|_| "bad content-length")?;
                f.length = Some(v.trim().parse().map_err(|_| "bad content-length")?);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                f.chunked = last_token(h.value).eq_ignore_ascii_case(b"chunked");
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    f.close |= token.eq_ignore_ascii_case(b"close");
                    f.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
        }
        Ok(f)
    }
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
