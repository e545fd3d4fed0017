//! Chunked bodies, read-until-close responses, 100-continue, bodiless responses.
use crate::harness::*;
use std::time::Duration;

fn chunk_encode(data: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut off = 0;
    let mut k = 0;
    while off < data.len() {
        let n = sizes[k % sizes.len()].min(data.len() - off);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&data[off..off + n]);
        out.extend_from_slice(b"\r\n");
        off += n;
        k += 1;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn chunked_request_body_reaches_origin_intact() {
    let origin = Origin::echo_body("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let body: Vec<u8> = (0..100_000u64).map(pattern_byte).collect();
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    req.extend_from_slice(&chunk_encode(&body, &[1, 7, 4096, 65536, 333]));
    let mut c = gw.client();
    let r = c.request(&req);
    assert_eq!(r.status, 200, "{}", r.raw_head);
    let got = origin.last_request();
    assert_eq!(
        got.body_len,
        body.len() as u64,
        "origin got a body of the wrong length"
    );
    assert!(got.body == body, "origin got different body bytes");
    assert!(r.body == body, "echoed body differs from what was sent");
    // keep-alive still works after a chunked request
    let r2 = c.request("POST /again HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(r2.body_str(), "abc");
}

#[test]
fn chunked_request_with_extensions_and_trailers() {
    let origin = Origin::echo_body("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let req = "POST /t HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n\
               5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n";
    let mut c = gw.client();
    let r = c.request(req);
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(origin.last_request().body, b"hello world");
    assert_eq!(r.body_str(), "hello world");
    let r2 = c.get("/next");
    assert_eq!(
        r2.status, 200,
        "next request after trailers: {}",
        r2.raw_head
    );
}

#[test]
fn chunked_request_sent_slowly_in_pieces() {
    let origin = Origin::echo_body("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    c.send("POST /slow HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n");
    for piece in ["4\r\nab", "cd\r", "\n3\r\nefg\r\n", "0\r\n", "\r\n"] {
        std::thread::sleep(Duration::from_millis(30));
        c.send(piece);
    }
    let r = c.read_final_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "abcdefg");
    assert_eq!(origin.last_request().body, b"abcdefg");
}

#[test]
fn chunked_response_relayed_intact() {
    let origin = Origin::start("o", |_| Resp::new(200).pattern(200_000).chunked(777).into());
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    for _ in 0..2 {
        let r = c.get("/chunked");
        assert_eq!(r.status, 200, "{}", r.raw_head);
        assert_eq!(
            r.body.len(),
            200_000,
            "chunked response body length (framing {})",
            r.framing
        );
        assert!(
            r.body
                .iter()
                .enumerate()
                .all(|(i, &b)| b == pattern_byte(i as u64)),
            "chunked response body corrupted"
        );
    }
}

#[test]
fn read_until_close_upstream_response_reaches_client() {
    let origin = Origin::start("o", |_| {
        Resp::new(200).pattern(300_000).until_close().into()
    });
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    let r = c.get("/eof");
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(
        r.body.len(),
        300_000,
        "close-delimited body length (client framing {})",
        r.framing
    );
    assert!(
        r.body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(i as u64)),
        "close-delimited body corrupted"
    );
    // If the gateway re-framed the body (chunked / length) it may keep the
    // connection; then the next request must work.
    if r.framing != "close" && !r.connection_close() {
        let r2 = c.get("/eof2");
        assert_eq!(r2.status, 200);
        assert_eq!(r2.body.len(), 300_000);
    }
}

#[test]
fn expect_100_continue_gets_interim_response_before_body() {
    let origin = Origin::echo_body("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    c.send("POST /e HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    c.set_read_timeout(Duration::from_secs(5));
    let first = c.try_read_response().unwrap_or_else(|e| {
        panic!("sent `Expect: 100-continue` and withheld the body: no `100 Continue` (or final response) within 5s: {e}")
    });
    if first.status == 100 {
        c.send("hello");
        let r = c.read_final_response();
        assert_eq!(r.status, 200, "{}", r.raw_head);
        assert_eq!(r.body_str(), "hello");
        assert_eq!(origin.last_request().body, b"hello");
    } else {
        // A final response without the body is only acceptable as a refusal;
        // a 2xx would mean the request was forwarded without its body.
        assert!(
            first.status >= 400,
            "got a final {} instead of 100 Continue before sending the body: {}",
            first.status,
            first.raw_head
        );
    }
}

fn bodiless_then_next(method: &str, status: u16) {
    let origin = Origin::start("o", move |r| {
        if r.path() == "/next" {
            Resp::text(200, "next-body").into()
        } else {
            // Origin writes CL 11 for HEAD (but no body), no body for 204/304.
            Resp::text(status, "hello world")
                .header("ETag", "\"x\"")
                .into()
        }
    });
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    c.send(format!(
        "{method} /thing HTTP/1.1\r\nHost: example.com\r\n\r\n"
    ));
    let r = if method == "HEAD" {
        c.read_response_to_head()
    } else {
        c.read_response()
    };
    assert_eq!(r.status, status, "{}", r.raw_head);
    if method == "HEAD" {
        if let Some(cl) = r.header("content-length") {
            assert_eq!(
                cl, "11",
                "HEAD response Content-Length should be the GET one"
            );
        }
    }
    // Next response must start right away: no stray body bytes in between.
    let r2 = c.get("/next");
    assert_eq!(
        r2.status, 200,
        "request after {method}->{status} on the same connection broke (stray body bytes?): {}",
        r2.raw_head
    );
    assert_eq!(r2.body_str(), "next-body");
    assert!(
        c.leftover().is_empty(),
        "stray bytes after responses: {:?}",
        String::from_utf8_lossy(c.leftover())
    );
}

#[test]
fn head_response_has_no_body() {
    bodiless_then_next("HEAD", 200);
}

#[test]
fn status_204_has_no_body() {
    bodiless_then_next("GET", 204);
}

#[test]
fn status_304_has_no_body() {
    bodiless_then_next("GET", 304);
}

#[test]
fn head_response_with_chunked_header_has_no_body() {
    let origin = Origin::start("o", |r| {
        if r.path() == "/next" {
            Resp::text(200, "next-body").into()
        } else {
            Resp::new(200).body("abcdef").chunked(2).into()
        }
    });
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    c.send("HEAD /x HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let r = c.read_response_to_head();
    assert_eq!(r.status, 200);
    let r2 = c.get("/next");
    assert_eq!(
        r2.status, 200,
        "request after HEAD (chunked origin) broke: {}",
        r2.raw_head
    );
    assert_eq!(r2.body_str(), "next-body");
}

#[test]
fn empty_body_response_stays_framed() {
    // Origin answers `Content-Length: 0`; the client must get a framed empty
    // response (Content-Length: 0 or an empty chunked body), not an unframed
    // head that means "read until close".
    let origin = Origin::start("o", |r| {
        if r.path() == "/empty" {
            Resp::text(200, "").into()
        } else {
            Resp::text(200, "full").into()
        }
    });
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    c.set_read_timeout(Duration::from_secs(3));
    c.send(get_req("/empty", "example.com"));
    let head = c
        .read_head()
        .unwrap_or_else(|e| panic!("no response head for a Content-Length: 0 response: {e}"));
    assert_eq!(head.status, 200);
    let framed = head
        .header("content-length")
        .map(|v| v.trim() == "0")
        .unwrap_or(false)
        || head
            .header("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
    assert!(
        framed || head.connection_close(),
        "upstream `Content-Length: 0` relayed without any framing on a keep-alive connection:\n{:?}",
        head.raw_head
    );
}

#[test]
fn empty_body_response_then_next_request() {
    let origin = Origin::start("o", |r| {
        if r.path() == "/empty" {
            Resp::text(200, "").into()
        } else {
            Resp::text(200, "full").into()
        }
    });
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    c.set_read_timeout(Duration::from_secs(3));
    let r = c.request(get_req("/empty", "example.com"));
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r2 = c.get("/full");
    assert_eq!(
        r2.body_str(),
        "full",
        "request after an empty-body response"
    );
}
