//! Request-smuggling defences and size limits: ambiguous or malformed framing
//! is rejected with 400 (501 for unknown transfer-codings) and the connection
//! closed, without the origin seeing the request.
use crate::harness::*;
use std::time::Duration;

/// Send `raw` to a fresh gateway; expect one of `statuses`, a close, and an
/// origin that received no bytes at all.
fn assert_rejected_before_origin(raw: &[u8], statuses: &[u16], what: &str) {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    c.send(raw);
    let r = c.try_read_response().unwrap_or_else(|e| {
        panic!(
            "{what}: expected {statuses:?}, got no response ({e}).\nrequest bytes: {:?}",
            String::from_utf8_lossy(raw)
        )
    });
    assert!(
        statuses.contains(&r.status),
        "{what}: expected {statuses:?}, got {}.\nrequest bytes: {:?}\nresponse head:\n{}body: {:?}",
        r.status,
        String::from_utf8_lossy(raw),
        r.raw_head,
        r.body_str()
    );
    r.assert_gateway_error(r.status);
    c.wait_closed(Duration::from_secs(3)).unwrap_or_else(|e| {
        panic!(
            "{what}: gateway must close the connection after a {} for bad framing: {e}",
            r.status
        )
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        origin.bytes_in(),
        0,
        "{what}: origin must see nothing, but received: {:?}",
        origin
            .requests()
            .iter()
            .map(|r| r.head_str())
            .collect::<Vec<_>>()
    );
}

/// For errors only detectable inside the body (chunk sizes) a streaming gateway
/// may already have forwarded the head; the origin must still never receive a
/// complete request.
fn assert_rejected_no_complete_request(raw: &[u8], statuses: &[u16], what: &str) {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    c.send(raw);
    let r = c.try_read_response().unwrap_or_else(|e| {
        panic!(
            "{what}: expected {statuses:?}, got no response ({e}).\nrequest bytes: {:?}",
            String::from_utf8_lossy(raw)
        )
    });
    assert!(
        statuses.contains(&r.status),
        "{what}: expected {statuses:?}, got {}.\nrequest bytes: {:?}\nresponse head:\n{}",
        r.status,
        String::from_utf8_lossy(raw),
        r.raw_head
    );
    c.wait_closed(Duration::from_secs(3)).unwrap_or_else(|e| {
        panic!(
            "{what}: gateway must close the connection after {}: {e}",
            r.status
        )
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        origin.request_count(),
        0,
        "{what}: origin received a complete request"
    );
}

const H: &str = "POST / HTTP/1.1\r\nHost: example.com\r\n";

#[test]
fn content_length_and_transfer_encoding_together() {
    let raw = format!(
        "{H}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    assert_rejected_before_origin(raw.as_bytes(), &[400], "CL + TE");
}

#[test]
fn transfer_encoding_then_content_length() {
    let raw = format!("{H}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n");
    assert_rejected_before_origin(raw.as_bytes(), &[400], "TE + CL");
}

#[test]
fn two_differing_content_lengths() {
    let raw = format!("{H}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!");
    assert_rejected_before_origin(raw.as_bytes(), &[400], "two differing Content-Length");
}

#[test]
fn content_length_list_with_differing_values() {
    let raw = format!("{H}Content-Length: 5, 6\r\n\r\nhello!");
    assert_rejected_before_origin(raw.as_bytes(), &[400], "Content-Length: 5, 6");
}

#[test]
fn content_length_plus_sign() {
    let raw = format!("{H}Content-Length: +5\r\n\r\nhello");
    assert_rejected_before_origin(raw.as_bytes(), &[400], "Content-Length: +5");
}

#[test]
fn content_length_with_inner_space() {
    let raw = format!("{H}Content-Length: 5 5\r\n\r\nhello");
    assert_rejected_before_origin(raw.as_bytes(), &[400], "Content-Length: 5 5");
}

#[test]
fn content_length_not_a_number() {
    let raw = format!("{H}Content-Length: abc\r\n\r\nhello");
    assert_rejected_before_origin(raw.as_bytes(), &[400], "Content-Length: abc");
}

#[test]
fn content_length_negative() {
    let raw = format!("{H}Content-Length: -1\r\n\r\nhello");
    assert_rejected_before_origin(raw.as_bytes(), &[400], "Content-Length: -1");
}

#[test]
fn content_length_overflowing_u64() {
    let raw = format!("{H}Content-Length: 99999999999999999999999\r\n\r\nhello");
    assert_rejected_before_origin(
        raw.as_bytes(),
        &[400, 413],
        "Content-Length overflowing u64",
    );
}

#[test]
fn transfer_encoding_gzip_alone() {
    let raw = format!("{H}Transfer-Encoding: gzip\r\n\r\nhello");
    assert_rejected_before_origin(raw.as_bytes(), &[400, 501], "Transfer-Encoding: gzip");
}

#[test]
fn transfer_encoding_chunked_then_gzip() {
    let raw = format!("{H}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n");
    assert_rejected_before_origin(
        raw.as_bytes(),
        &[400, 501],
        "Transfer-Encoding: chunked, gzip",
    );
}

#[test]
fn transfer_encoding_chunked_twice_in_separate_headers_then_gzip() {
    let raw = format!("{H}Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n");
    assert_rejected_before_origin(raw.as_bytes(), &[400, 501], "TE chunked + TE gzip headers");
}

#[test]
fn transfer_encoding_identity() {
    let raw = format!("{H}Transfer-Encoding: identity\r\n\r\nhello");
    assert_rejected_before_origin(raw.as_bytes(), &[400, 501], "Transfer-Encoding: identity");
}

#[test]
fn transfer_encoding_obfuscated_chunked() {
    let raw = format!("{H}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n");
    assert_rejected_before_origin(raw.as_bytes(), &[400, 501], "Transfer-Encoding: xchunked");
}

#[test]
fn transfer_encoding_on_http10() {
    // RFC 9112 6.1: TE in an HTTP/1.0 request must be treated as faulty framing.
    let raw = "POST / HTTP/1.0\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_rejected_before_origin(raw.as_bytes(), &[400], "Transfer-Encoding on HTTP/1.0");
}

#[test]
fn malformed_chunk_size_letters() {
    let raw = format!("{H}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n");
    assert_rejected_no_complete_request(raw.as_bytes(), &[400], "chunk size `zz`");
}

#[test]
fn malformed_chunk_size_overflow() {
    let raw =
        format!("{H}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nhello\r\n0\r\n\r\n");
    assert_rejected_no_complete_request(raw.as_bytes(), &[400, 413], "chunk size overflow");
}

#[test]
fn chunk_data_without_crlf() {
    let raw = format!("{H}Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n");
    assert_rejected_no_complete_request(raw.as_bytes(), &[400], "chunk data not followed by CRLF");
}

#[test]
fn obs_fold_header_line() {
    let raw = "GET / HTTP/1.1\r\nHost: example.com\r\nX-Folded: a\r\n b\r\n\r\n";
    assert_rejected_before_origin(raw.as_bytes(), &[400], "obs-fold");
}

#[test]
fn space_before_colon() {
    let raw = "GET / HTTP/1.1\r\nHost : example.com\r\n\r\n";
    assert_rejected_before_origin(raw.as_bytes(), &[400], "`Host : x`");
}

#[test]
fn space_before_colon_on_transfer_encoding() {
    let raw = format!("{H}Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello");
    assert_rejected_before_origin(raw.as_bytes(), &[400], "`Transfer-Encoding : chunked`");
}

#[test]
fn nul_in_header_value() {
    let raw = b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Evil: a\0b\r\n\r\n";
    assert_rejected_before_origin(raw, &[400], "NUL in header value");
}

#[test]
fn bare_cr_in_header_value() {
    let raw = b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Evil: a\rb\r\n\r\n";
    assert_rejected_before_origin(raw, &[400], "bare CR in header value");
}

#[test]
fn missing_host_on_http11() {
    let raw = "GET / HTTP/1.1\r\nX-A: b\r\n\r\n";
    assert_rejected_before_origin(raw.as_bytes(), &[400], "missing Host on HTTP/1.1");
}

#[test]
fn two_host_headers() {
    let raw = "GET / HTTP/1.1\r\nHost: example.com\r\nHost: evil.com\r\n\r\n";
    assert_rejected_before_origin(raw.as_bytes(), &[400], "two Host headers");
}

#[test]
fn garbage_request_line() {
    let raw = "THIS IS NOT HTTP\r\n\r\n";
    assert_rejected_before_origin(raw.as_bytes(), &[400], "garbage request line");
}

#[test]
fn head_larger_than_max_header_bytes_is_431() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(
        origin.addr,
        &[
            ("max_header_bytes", "1024"),
            ("max_request_line_bytes", "512"),
        ],
    ));
    let mut c = gw.client();
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    c.send(raw);
    let r = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("2 KiB head with max_header_bytes=1024: expected 431, got {e}"));
    r.assert_gateway_error(431);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        origin.bytes_in(),
        0,
        "origin must not see an oversized head"
    );
    // a head just under the limit is fine
    let mut c2 = gw.client();
    let r2 = c2.request(format!(
        "GET /ok HTTP/1.1\r\nHost: example.com\r\nX-Small: {}\r\n\r\n",
        "a".repeat(500)
    ));
    assert_eq!(
        r2.status, 200,
        "a 0.5 KiB head must pass with max_header_bytes=1024: {}",
        r2.raw_head
    );
}

#[test]
fn head_with_many_small_headers_over_limit_is_431() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(
        origin.addr,
        &[
            ("max_header_bytes", "1024"),
            ("max_request_line_bytes", "512"),
        ],
    ));
    let mut raw = String::from("GET / HTTP/1.1\r\nHost: example.com\r\n");
    for i in 0..100 {
        raw.push_str(&format!("X-H{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    let r = one_shot(gw.addr, raw);
    r.assert_gateway_error(431);
    assert_eq!(origin.bytes_in(), 0);
}

#[test]
fn request_line_larger_than_limit_is_414() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(
        origin.addr,
        &[("max_request_line_bytes", "256")],
    ));
    let raw = format!(
        "GET /{} HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "p".repeat(1000)
    );
    let r = one_shot(gw.addr, raw);
    r.assert_gateway_error(414);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        origin.bytes_in(),
        0,
        "origin must not see an oversized request line"
    );
    let r2 = one_shot(
        gw.addr,
        format!(
            "GET /{} HTTP/1.1\r\nHost: example.com\r\n\r\n",
            "p".repeat(100)
        ),
    );
    assert_eq!(
        r2.status, 200,
        "request line under the limit must pass: {}",
        r2.raw_head
    );
}

#[test]
fn body_larger_than_max_body_bytes_is_413() {
    let origin = Origin::echo_body("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[("max_body_bytes", "100")]));
    let raw = format!(
        "POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1000\r\n\r\n{}",
        "b".repeat(1000)
    );
    let r = one_shot(gw.addr, raw);
    r.assert_gateway_error(413);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        origin.bytes_in(),
        0,
        "origin must not see a request whose Content-Length exceeds max_body_bytes"
    );
    let r2 = one_shot(
        gw.addr,
        format!(
            "POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100\r\n\r\n{}",
            "b".repeat(100)
        ),
    );
    assert_eq!(
        r2.status, 200,
        "body of exactly max_body_bytes must pass: {}",
        r2.raw_head
    );
}

#[test]
fn chunked_body_larger_than_max_body_bytes_is_413() {
    let origin = Origin::echo_body("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[("max_body_bytes", "100")]));
    let mut raw =
        String::from("POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..10 {
        raw.push_str(&format!("64\r\n{}\r\n", "c".repeat(100)));
    }
    raw.push_str("0\r\n\r\n");
    let mut c = gw.client();
    c.send(raw);
    let r = c.try_read_response().unwrap_or_else(|e| {
        panic!("1000-byte chunked body with max_body_bytes=100: expected 413, got {e}")
    });
    assert_eq!(r.status, 413, "{}", r.raw_head);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        origin.requests().iter().all(|q| q.body_len <= 100),
        "origin received a complete body larger than max_body_bytes"
    );
}

fn upstream_bad_framing(raw_resp: &'static [u8], what: &str) {
    let origin = Origin::start("o", move |_| Reply::Raw {
        bytes: raw_resp.to_vec(),
        close: true,
    });
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let r = one_shot(gw.addr, get_req("/", "example.com"));
    assert_eq!(
        r.status,
        502,
        "{what}: upstream response with ambiguous framing must give 502, got:\n{}body: {:?}",
        r.raw_head,
        r.body_str()
    );
    r.assert_gateway_error(502);
}

#[test]
fn upstream_cl_and_te_is_502() {
    upstream_bad_framing(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "upstream CL + TE",
    );
}

#[test]
fn upstream_bad_content_length_is_502() {
    upstream_bad_framing(
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello",
        "upstream CL abc",
    );
}

#[test]
fn upstream_two_content_lengths_is_502() {
    upstream_bad_framing(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello!!",
        "upstream two CL",
    );
}

#[test]
fn upstream_garbage_status_line_is_502() {
    upstream_bad_framing(b"NOT HTTP AT ALL\r\n\r\n", "upstream garbage");
}

#[test]
fn valid_request_split_at_every_byte_boundary() {
    // TCP may deliver the head in arbitrary pieces; every split must parse.
    let origin = Origin::start("o", |r| {
        Resp::text(
            200,
            format!(
                "{} {} {}",
                r.method,
                r.target,
                String::from_utf8_lossy(&r.body)
            ),
        )
        .into()
    });
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let raw = b"POST /split?q=1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\n\r\nbody";
    let mut failures = Vec::new();
    for cut in 1..raw.len() {
        let mut c = gw.client();
        c.send(&raw[..cut]);
        std::thread::sleep(Duration::from_millis(25));
        let _ = c.try_send(&raw[cut..]);
        match c.try_read_response() {
            Ok(r) if r.status == 200 && r.body_str() == "POST /split?q=1 body" => {}
            Ok(r) => failures.push(format!(
                "split after {:?}: got {} {:?}",
                String::from_utf8_lossy(&raw[..cut]),
                r.status,
                r.body_str()
            )),
            Err(e) => failures.push(format!(
                "split after {:?}: {e}",
                String::from_utf8_lossy(&raw[..cut])
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "valid request sent in two segments was mishandled:\n{}",
        failures.join("\n")
    );
}

#[test]
fn upstream_response_split_at_every_byte_boundary() {
    // The origin writes its response in two segments 25 ms apart; every split
    // point must be relayed as the same response.
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello";
    let origin = Origin::start("o", |r| {
        let cut: usize = r
            .path()
            .rsplit('/')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        Reply::Pieces {
            pieces: vec![RESP[..cut].to_vec(), RESP[cut..].to_vec()],
            gap: Duration::from_millis(25),
            close: false,
        }
    });
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut failures = Vec::new();
    let mut c = gw.client();
    for cut in 1..RESP.len() {
        c.send(get_req(&format!("/cut/{cut}"), "example.com"));
        match c.try_read_response() {
            Ok(r) if r.status == 200 && r.body_str() == "hello" && r.header("x-a") == Some("b") => {
            }
            Ok(r) => {
                failures.push(format!(
                    "upstream split after {:?}: client got {} {:?} head {:?}",
                    String::from_utf8_lossy(&RESP[..cut]),
                    r.status,
                    r.body_str(),
                    r.raw_head
                ));
                c = gw.client();
            }
            Err(e) => {
                failures.push(format!(
                    "upstream split after {:?}: {e}",
                    String::from_utf8_lossy(&RESP[..cut])
                ));
                c = gw.client();
            }
        }
    }
    assert!(
        failures.is_empty(),
        "upstream response in two segments was mishandled:\n{}",
        failures.join("\n")
    );
}
