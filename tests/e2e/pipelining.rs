//! HTTP/1.1 pipelining: responses in request order.
use crate::harness::*;
use std::time::Duration;

#[test]
fn ten_pipelined_gets_answered_in_order() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    let mut all = String::new();
    for i in 0..10 {
        all.push_str(&get_req(&format!("/pipe/{i}"), "example.com"));
    }
    c.send(all.as_bytes()); // one write
    for i in 0..10 {
        let r = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("pipelined response #{i} missing: {e}"));
        assert_eq!(r.status, 200, "pipelined response #{i}: {}", r.raw_head);
        assert_eq!(
            r.body_str(),
            format!("/pipe/{i}"),
            "pipelined responses out of order at #{i}"
        );
    }
    assert_eq!(origin.request_count(), 10);
    // connection still usable afterwards
    let r = c.get("/after");
    assert_eq!(r.body_str(), "/after");
}

#[test]
fn pipelined_requests_with_varying_origin_delays_stay_in_order() {
    // The first request is the slowest: a gateway that answers in completion
    // order instead of request order would reorder.
    let origin = Origin::start("o", |r| {
        let i: u64 = r
            .path()
            .rsplit('/')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Resp::text(200, &r.target)
            .delay(Duration::from_millis((9 - i.min(9)) * 15))
            .into()
    });
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    let mut all = String::new();
    for i in 0..10 {
        all.push_str(&get_req(&format!("/slow/{i}"), "example.com"));
    }
    c.send(all.as_bytes());
    for i in 0..10 {
        let r = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("pipelined response #{i} missing: {e}"));
        assert_eq!(
            r.body_str(),
            format!("/slow/{i}"),
            "pipelined responses out of order at #{i}"
        );
    }
}

#[test]
fn pipelined_posts_with_bodies_in_one_write() {
    let origin = Origin::start("o", |r| {
        let mut b = r.target.clone().into_bytes();
        b.push(b':');
        b.extend_from_slice(&r.body);
        Resp::text(200, b).into()
    });
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    let mut all = Vec::new();
    for i in 0..10 {
        if i % 3 == 0 {
            all.extend_from_slice(get_req(&format!("/m/{i}"), "example.com").as_bytes());
        } else if i % 3 == 1 {
            let body = format!("payload-{i}");
            all.extend_from_slice(
                format!(
                    "POST /m/{i} HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        } else {
            let body = format!("chunky-{i}");
            all.extend_from_slice(
                format!(
                    "POST /m/{i} HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
        }
    }
    c.send(&all);
    for i in 0..10 {
        let r = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("pipelined response #{i} missing: {e}"));
        let expect = match i % 3 {
            0 => format!("/m/{i}:"),
            1 => format!("/m/{i}:payload-{i}"),
            _ => format!("/m/{i}:chunky-{i}"),
        };
        assert_eq!(r.status, 200, "#{i}: {}", r.raw_head);
        assert_eq!(r.body_str(), expect, "pipelined response #{i}");
    }
}

#[test]
fn large_pipelined_batch_larger_than_a_read_buffer() {
    // 400 requests (~40 KB) in one write: the gateway has to read them in
    // several reads, with request heads cut at read boundaries.
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    let mut all = String::new();
    for i in 0..400 {
        all.push_str(&format!(
            "GET /batch/{i:04} HTTP/1.1\r\nHost: example.com\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(40)
        ));
    }
    let mut w = c.stream.try_clone().expect("clone stream");
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        w.write_all(all.as_bytes()).map_err(|e| e.to_string())
    });
    for i in 0..400 {
        let r = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("pipelined response #{i} of 400 missing: {e}"));
        assert_eq!(
            (r.status, r.body_str()),
            (200, format!("/batch/{i:04}")),
            "pipelined response #{i} of 400 (origin saw {} requests)",
            origin.request_count()
        );
    }
    writer.join().expect("writer").expect("write batch");
}
