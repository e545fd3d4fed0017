//! Header handling: hop-by-hop stripping, X-Forwarded-*, Host, strip_prefix.
use crate::harness::*;

fn lower_names(h: &[(String, String)]) -> Vec<String> {
    h.iter().map(|(k, _)| k.to_ascii_lowercase()).collect()
}

#[test]
fn hop_by_hop_stripped_toward_origin() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let raw = "GET /h HTTP/1.1\r\nHost: example.com\r\n\
               Connection: keep-alive, X-Foo\r\nX-Foo: secret\r\nKeep-Alive: timeout=5\r\n\
               TE: trailers\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\
               X-Keep: yes\r\n\r\n";
    let r = one_shot(gw.addr, raw);
    assert_eq!(r.status, 200, "{}", r.raw_head);
    let req = origin.last_request();
    let names = lower_names(&req.headers);
    for banned in ["x-foo", "keep-alive", "te", "proxy-connection", "upgrade"] {
        assert!(
            !names.contains(&banned.to_string()),
            "hop-by-hop header `{banned}` reached the origin; origin head:\n{}",
            req.head_str()
        );
    }
    for v in req.header_all("connection") {
        let v = v.to_ascii_lowercase();
        assert!(
            !v.contains("x-foo") && !v.contains("upgrade"),
            "client's Connection tokens were forwarded: `Connection: {v}`; origin head:\n{}",
            req.head_str()
        );
    }
    assert_eq!(
        req.header("x-keep"),
        Some("yes"),
        "end-to-end header X-Keep lost; origin head:\n{}",
        req.head_str()
    );
}

#[test]
fn hop_by_hop_stripped_toward_client() {
    let origin = Origin::start("o", |_| {
        Resp::text(200, "ok")
            .header("Connection", "X-Bar")
            .header("X-Bar", "1")
            .header("Keep-Alive", "timeout=5")
            .header("Proxy-Connection", "keep-alive")
            .header("Upgrade", "foo")
            .header("X-Keep", "yes")
            .into()
    });
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    let r = c.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "ok");
    let names = lower_names(&r.headers);
    for banned in ["x-bar", "keep-alive", "proxy-connection", "upgrade"] {
        assert!(
            !names.contains(&banned.to_string()),
            "hop-by-hop header `{banned}` from the origin reached the client:\n{}",
            r.raw_head
        );
    }
    for v in r.header_all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-bar"),
            "origin's Connection tokens forwarded: {v}"
        );
    }
    assert_eq!(
        r.header("x-keep"),
        Some("yes"),
        "end-to-end response header lost:\n{}",
        r.raw_head
    );
    // connection still usable
    assert_eq!(c.get("/").status, 200);
}

#[test]
fn x_forwarded_for_appended() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    one_shot(
        gw.addr,
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    );
    let req = origin.last_request();
    let xff = req.header_all("x-forwarded-for").join(", ");
    assert_eq!(
        xff,
        "1.2.3.4, 127.0.0.1",
        "X-Forwarded-For; origin head:\n{}",
        req.head_str()
    );
}

#[test]
fn x_forwarded_headers_set() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    one_shot(gw.addr, "GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    let req = origin.last_request();
    let h = req.head_str();
    assert_eq!(
        req.header_all("x-forwarded-for"),
        vec!["127.0.0.1"],
        "X-Forwarded-For; origin head:\n{h}"
    );
    assert_eq!(
        req.header_all("x-forwarded-proto"),
        vec!["http"],
        "X-Forwarded-Proto; origin head:\n{h}"
    );
    assert_eq!(
        req.header_all("x-forwarded-host"),
        vec!["api.example.com"],
        "X-Forwarded-Host; origin head:\n{h}"
    );
    assert_eq!(
        req.header_all("x-real-ip"),
        vec!["127.0.0.1"],
        "X-Real-IP; origin head:\n{h}"
    );
}

#[test]
fn x_real_ip_not_spoofable() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    one_shot(
        gw.addr,
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Real-IP: 9.9.9.9\r\n\r\n",
    );
    let req = origin.last_request();
    assert_eq!(
        req.header_all("x-real-ip"),
        vec!["127.0.0.1"],
        "X-Real-IP must be the client address; origin head:\n{}",
        req.head_str()
    );
}

#[test]
fn host_passed_through_by_default() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    one_shot(
        gw.addr,
        "GET / HTTP/1.1\r\nHost: api.example.com:8443\r\n\r\n",
    );
    let req = origin.last_request();
    assert_eq!(
        req.header_all("host"),
        vec!["api.example.com:8443"],
        "origin head:\n{}",
        req.head_str()
    );
}

fn host_mode_config(origin: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "{}{}{}",
        server(&[]),
        upstream("backend", &[origin], ""),
        route("r", &["/*"], "backend", extra)
    )
}

#[test]
fn pass_host_node_uses_node_address() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&host_mode_config(origin.addr, "pass_host = \"node\""));
    one_shot(gw.addr, "GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    let req = origin.last_request();
    assert_eq!(
        req.header_all("host"),
        vec![origin.addr.to_string().as_str()],
        "pass_host = node; origin head:\n{}",
        req.head_str()
    );
}

#[test]
fn pass_host_rewrite_uses_upstream_host() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&host_mode_config(
        origin.addr,
        "pass_host = \"rewrite\"\nupstream_host = \"internal.example\"",
    ));
    one_shot(gw.addr, "GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    let req = origin.last_request();
    assert_eq!(
        req.header_all("host"),
        vec!["internal.example"],
        "pass_host = rewrite; origin head:\n{}",
        req.head_str()
    );
    assert_eq!(
        req.header_all("x-forwarded-host"),
        vec!["api.example.com"],
        "X-Forwarded-Host must keep the client's Host; origin head:\n{}",
        req.head_str()
    );
}

#[test]
fn strip_prefix_removes_prefix_and_keeps_query() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        server(&[]),
        upstream("backend", &[origin.addr], ""),
        route("api", &["/api/*"], "backend", "strip_prefix = \"/api\"")
    ));
    let r = one_shot(gw.addr, get_req("/api/users/1?x=1&y=2", "example.com"));
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(
        origin.last_request().target,
        "/users/1?x=1&y=2",
        "strip_prefix result at the origin"
    );
}

#[test]
fn method_body_and_repeated_headers_preserved() {
    let origin = Origin::echo_body("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let raw = "PUT /thing?a=b HTTP/1.1\r\nHost: example.com\r\nX-Multi: one\r\nX-Multi: two\r\n\
               Content-Type: text/plain\r\nContent-Length: 7\r\n\r\npayload";
    let r = one_shot(gw.addr, raw);
    assert_eq!(r.body_str(), "payload");
    let req = origin.last_request();
    assert_eq!(req.method, "PUT");
    assert_eq!(req.target, "/thing?a=b");
    assert_eq!(
        req.header_all("x-multi").join(","),
        "one,two",
        "origin head:\n{}",
        req.head_str()
    );
    assert_eq!(req.header("content-type"), Some("text/plain"));
}

#[test]
fn response_status_and_headers_relayed() {
    let origin = Origin::start("o", |_| {
        Resp::text(201, "made")
            .header("Set-Cookie", "a=1")
            .header("Set-Cookie", "b=2")
            .header("X-Custom", "v")
            .into()
    });
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let r = one_shot(gw.addr, get_req("/", "example.com"));
    assert_eq!(r.status, 201);
    assert_eq!(r.body_str(), "made");
    assert_eq!(
        r.header_all("set-cookie"),
        vec!["a=1", "b=2"],
        "Set-Cookie must not be merged:\n{}",
        r.raw_head
    );
    assert_eq!(r.header("x-custom"), Some("v"));
}
