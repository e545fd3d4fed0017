//! Unit tests for head parsing and framing validation (kept apart so parse.rs stays one thing).
//! Pure: no sockets.

use super::*;
use crate::error::UpstreamError;

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 8192,
    max_request_line_bytes: 1024,
};

fn parse(raw: &str) -> Result<RequestHead, ClientError> {
    let mut h = RequestHead::default();
    match h.parse(raw.as_bytes(), &LIMITS)? {
        Status::Complete(_) => Ok(h),
        Status::Partial => panic!("partial: {raw:?}"),
    }
}

#[test]
fn simple_get() {
    let h = parse("GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com\r\nX-A: b\r\n\r\n").unwrap();
    assert_eq!(h.method, Method::Get);
    assert_eq!(h.path(), b"/a/b");
    assert_eq!(h.query(), b"x=1");
    assert_eq!(h.path_and_query(), b"/a/b?x=1");
    assert_eq!(h.host(), b"Example.com");
    assert_eq!(h.header("x-a"), Some(&b"b"[..]));
    assert_eq!(h.body, BodyKind::Empty);
    assert!(h.keep_alive);
}

#[test]
fn absolute_form_overrides_host() {
    let h = parse("GET http://a.test:8080/p?q HTTP/1.1\r\nHost: b.test\r\n\r\n").unwrap();
    assert_eq!(h.host(), b"a.test:8080");
    assert_eq!(h.path(), b"/p");
    assert_eq!(h.query(), b"q");
}

#[test]
fn framing_refusals() {
    let bad = [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET foo HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for raw in bad {
        let e = parse(raw).expect_err(raw);
        assert!(
            matches!(e, ClientError::BadRequest(_)),
            "{raw:?} gave {e:?}"
        );
    }
    let e = parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: br0tli\r\n\r\n").unwrap_err();
    assert!(matches!(e, ClientError::NotImplemented(_)));
}

#[test]
fn lengths_and_chunked() {
    let h = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n").unwrap();
    assert_eq!(h.body, BodyKind::Length(10));
    let h = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7, 7\r\n\r\n").unwrap();
    assert_eq!(h.body, BodyKind::Length(7));
    let h = parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
    assert_eq!(h.body, BodyKind::Chunked);
}

#[test]
fn keep_alive_rules() {
    assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
    assert!(
        parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .keep_alive
    );
    let h = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Foo\r\n\r\n").unwrap();
    assert!(!h.keep_alive);
    assert!(h.listed_in_connection(b"x-foo"));
}

#[test]
fn websocket_upgrade() {
    let h =
        parse("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .unwrap();
    assert!(h.websocket);
}

#[test]
fn limits() {
    let mut h = RequestHead::default();
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(2000));
    assert_eq!(
        h.parse(long.as_bytes(), &LIMITS),
        Err(ClientError::UriTooLong)
    );
    let partial_long = format!("GET /{}", "a".repeat(2000));
    assert_eq!(
        h.parse(partial_long.as_bytes(), &LIMITS),
        Err(ClientError::UriTooLong)
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "b".repeat(9000)
    );
    assert_eq!(
        h.parse(big.as_bytes(), &LIMITS),
        Err(ClientError::HeaderTooLarge)
    );
    assert_eq!(
        h.parse(b"GET / HTTP/1.1\r\nHost: a\r\n", &LIMITS),
        Ok(Status::Partial)
    );
}

#[test]
fn expect() {
    let h =
        parse("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
            .unwrap();
    assert!(h.expect_continue);
    assert_eq!(
        parse("GET / HTTP/1.1\r\nHost: a\r\nExpect: tea\r\n\r\n").unwrap_err(),
        ClientError::ExpectationFailed
    );
}

fn resp(raw: &str, m: Method) -> Result<ResponseHead, UpstreamError> {
    let mut h = ResponseHead::default();
    match h.parse(raw.as_bytes(), m, 8192)? {
        Status::Complete(_) => Ok(h),
        Status::Partial => panic!("partial"),
    }
}

#[test]
fn responses() {
    let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", Method::Get).unwrap();
    assert_eq!(r.body, BodyKind::Length(3));
    assert!(r.keep_alive);
    let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", Method::Head).unwrap();
    assert_eq!(r.body, BodyKind::Empty);
    let r = resp("HTTP/1.1 200 OK\r\n\r\n", Method::Get).unwrap();
    assert_eq!(r.body, BodyKind::UntilClose);
    assert!(!r.keep_alive);
    let r = resp(
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        Method::Get,
    )
    .unwrap();
    assert_eq!(r.body, BodyKind::Empty);
    assert!(resp(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        Method::Get
    )
    .is_err());
    assert!(resp("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", Method::Get).is_err());
    assert!(resp("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", Method::Get).is_err());
}

/// The request-line limit (414) at its boundary, for complete, partial and malformed heads,
/// against the plain rule: no LF within the first `max + 2` bytes and more than `max + 1` bytes.
#[test]
fn request_line_limit_boundary() {
    let max = LIMITS.max_request_line_bytes;
    let old_rule = |input: &[u8]| {
        let w = &input[..input.len().min(max + 2)];
        !w.contains(&b'\n') && input.len() > max + 1
    };
    for len in max - 20..max + 5 {
        let target = format!("/{}", "a".repeat(len - "GET / HTTP/1.1".len() + 1));
        for head in [
            format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n"),
            format!("GET {target} HTTP/1.1\nHost: a\n\n"),
            format!("GET {target} HTTP/1.1\r\nHost: a\r\n"),
            format!("GET {target} HTTP/1.1"),
            format!("GET {target} HTTP/9.9\r\nHost: a\r\n\r\n"),
        ] {
            let mut h = RequestHead::default();
            let got = h.parse(head.as_bytes(), &LIMITS);
            assert_eq!(
                got == Err(ClientError::UriTooLong),
                old_rule(head.as_bytes()),
                "line of {len} bytes: {:?} -> {got:?}",
                &head[head.len().saturating_sub(30)..]
            );
        }
    }
}
