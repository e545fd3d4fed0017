//! Authentication plugins and consumers through the real server: key-auth, basic-auth,
//! jwt-auth (tokens made with jsonwebtoken), consumer visible to limits and upstream,
//! global versus per-route plugins, config errors naming route and plugin.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::harness::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const CONSUMERS: &str = r#"
[[consumers]]
username = "alice"
[consumers.plugins.key-auth]
key = "alice-secret"
[consumers.plugins.basic-auth]
username = "alice"
password = "wonderland"
[consumers.plugins.jwt-auth]
key = "alice-jwt"
secret = "alice-hmac-secret"

[[consumers]]
username = "bob"
[consumers.plugins.key-auth]
key = "bob-secret"
[consumers.plugins.jwt-auth]
key = "bob-jwt"
secret = "bob-hmac-secret"
algorithm = "HS512"
"#;

fn gateway(origin: &Origin, routes: &str) -> Gateway {
    let cfg = format!(
        "{}{}{routes}{CONSUMERS}",
        server(&[]),
        upstream("backend", &[origin.addr], ""),
    );
    Gateway::start(&cfg)
}

#[test]
fn key_auth_header_query_and_consumer_to_upstream() {
    let o = Origin::named("o");
    let gw = gateway(
        &o,
        &route("api", &["/api/*"], "backend", "[routes.plugins.key-auth]\n"),
    );
    let mut c = gw.client();
    let r = get_with(&mut c, "/api/x", "");
    assert_eq!(r.status, 401);
    assert!(r.header("WWW-Authenticate").is_some());
    assert_eq!(r.json()["message"], "Missing API key in request");
    let r = get_with(&mut c, "/api/x", "apikey: wrong\r\n");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "Invalid API key in request");
    assert_eq!(o.request_count(), 0);

    assert_eq!(
        get_with(&mut c, "/api/x", "apikey: alice-secret\r\n").status,
        200
    );
    let req = o.last_request();
    assert_eq!(req.header("X-Consumer-Username"), Some("alice"));
    assert_eq!(
        req.header("apikey"),
        Some("alice-secret"),
        "kept without hide_credentials"
    );

    // Query form; a client cannot forge the consumer header.
    let r = get_with(
        &mut c,
        "/api/y?apikey=bob-secret",
        "X-Consumer-Username: mallory\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        o.last_request().header_all("X-Consumer-Username"),
        vec!["bob"]
    );
}

#[test]
fn key_auth_hide_credentials_and_custom_header() {
    let o = Origin::echo_target("o");
    let gw = gateway(
        &o,
        &route(
            "api",
            &["/*"],
            "backend",
            "[routes.plugins.key-auth]\nheader = \"X-Key\"\nquery = \"k\"\nhide_credentials = true\n",
        ),
    );
    let mut c = gw.client();
    assert_eq!(
        get_with(&mut c, "/a", "apikey: alice-secret\r\n").status,
        401
    );
    assert_eq!(
        get_with(&mut c, "/a", "X-Key: alice-secret\r\n").status,
        200
    );
    assert!(
        !o.last_request().has_header("X-Key"),
        "header hidden from upstream"
    );
    let r = get_with(&mut c, "/a?x=1&k=alice-secret&y=2", "");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body_str(),
        "/a?x=1&y=2",
        "query credential hidden from upstream"
    );
}

#[test]
fn basic_auth() {
    let o = Origin::named("o");
    let gw = gateway(
        &o,
        &route("b", &["/*"], "backend", "[routes.plugins.basic-auth]\n"),
    );
    let mut c = gw.client();
    let r = get_with(&mut c, "/", "");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("WWW-Authenticate"), Some("Basic realm='.'"));
    // base64("alice:wrong"), base64("alice:wonderland")
    assert_eq!(
        get_with(&mut c, "/", "Authorization: Basic YWxpY2U6d3Jvbmc=\r\n").status,
        401
    );
    let r = get_with(
        &mut c,
        "/",
        "Authorization: Basic YWxpY2U6d29uZGVybGFuZA==\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        o.last_request().header("X-Consumer-Username"),
        Some("alice")
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(alg: Algorithm, key: &str, secret: &str, exp: i64) -> String {
    let claims = serde_json::json!({ "key": key, "exp": now() as i64 + exp });
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[test]
fn jwt_auth_header_query_cookie_and_expiry() {
    let o = Origin::named("o");
    let gw = gateway(
        &o,
        &route("j", &["/*"], "backend", "[routes.plugins.jwt-auth]\n"),
    );
    let mut c = gw.client();
    let r = get_with(&mut c, "/", "");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "Missing JWT token in request");
    assert!(r.header("WWW-Authenticate").is_some());

    let good = token(Algorithm::HS256, "alice-jwt", "alice-hmac-secret", 60);
    let r = get_with(&mut c, "/", &format!("Authorization: Bearer {good}\r\n"));
    assert_eq!(r.status, 200);
    assert_eq!(
        o.last_request().header("X-Consumer-Username"),
        Some("alice")
    );
    assert_eq!(get_with(&mut c, &format!("/?jwt={good}"), "").status, 200);
    assert_eq!(
        get_with(&mut c, "/", &format!("Cookie: a=1; jwt={good}\r\n")).status,
        200
    );

    let bob = token(Algorithm::HS512, "bob-jwt", "bob-hmac-secret", 60);
    assert_eq!(
        get_with(&mut c, "/", &format!("Authorization: {bob}\r\n")).status,
        200
    );
    assert_eq!(o.last_request().header("X-Consumer-Username"), Some("bob"));

    let forged = token(Algorithm::HS256, "alice-jwt", "not-the-secret", 60);
    assert_eq!(
        get_with(&mut c, "/", &format!("Authorization: Bearer {forged}\r\n")).status,
        401
    );
    let expired = token(Algorithm::HS256, "alice-jwt", "alice-hmac-secret", -120);
    let r = get_with(&mut c, "/", &format!("Authorization: Bearer {expired}\r\n"));
    assert_eq!(r.status, 401);
    assert!(r.json()["message"].as_str().unwrap().contains("expired"));
    // Expired 2 s ago: inside the default 5 s leeway.
    let just = token(Algorithm::HS256, "alice-jwt", "alice-hmac-secret", -2);
    assert_eq!(
        get_with(&mut c, "/", &format!("Authorization: Bearer {just}\r\n")).status,
        200
    );
    let unknown = token(Algorithm::HS256, "nobody", "x", 60);
    assert_eq!(
        get_with(&mut c, "/", &format!("Authorization: Bearer {unknown}\r\n")).status,
        401
    );
    // Alg confusion: an HS384 token for an HS256 consumer is refused.
    let wrong_alg = token(Algorithm::HS384, "alice-jwt", "alice-hmac-secret", 60);
    assert_eq!(
        get_with(
            &mut c,
            "/",
            &format!("Authorization: Bearer {wrong_alg}\r\n")
        )
        .status,
        401
    );
}

#[test]
fn consumer_is_the_rate_limit_key() {
    let o = Origin::named("o");
    let gw = gateway(
        &o,
        &route(
            "api",
            &["/*"],
            "backend",
            "[routes.plugins.key-auth]\n[routes.plugins.limit-count]\ncount = 2\ntime_window = 60\nkey = \"consumer\"\n",
        ),
    );
    let mut c = gw.client();
    // key-auth (2500) runs before limit-count (1002): the consumer is known to the limit.
    for _ in 0..2 {
        assert_eq!(
            get_with(&mut c, "/", "apikey: alice-secret\r\n").status,
            200
        );
    }
    assert_eq!(
        get_with(&mut c, "/", "apikey: alice-secret\r\n").status,
        503
    );
    assert_eq!(
        get_with(&mut c, "/", "apikey: bob-secret\r\n").status,
        200,
        "bob has his own count"
    );
    // Unauthenticated requests are refused before they count against anyone.
    assert_eq!(get_with(&mut c, "/", "").status, 401);
}

#[test]
fn global_plugins_apply_to_every_route_and_run_before_route_plugins() {
    let o = Origin::named("o");
    let routes = format!(
        "{}{}[global_plugins.key-auth]\n",
        route("a", &["/a"], "backend", ""),
        route(
            "b",
            &["/b"],
            "backend",
            "[routes.plugins.response-rewrite]\nheaders.set = { X-Who = \"$consumer_name\" }\n",
        ),
    );
    let gw = gateway(&o, &routes);
    let mut c = gw.client();
    assert_eq!(get_with(&mut c, "/a", "").status, 401);
    assert_eq!(get_with(&mut c, "/b", "").status, 401);
    assert_eq!(get_with(&mut c, "/a", "apikey: bob-secret\r\n").status, 200);
    let r = get_with(&mut c, "/b", "apikey: bob-secret\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("X-Who"),
        Some("bob"),
        "route plugin sees the global plugin's consumer"
    );
}

#[test]
fn plugin_config_errors_name_route_and_plugin() {
    let o = Origin::named("o");
    let base = format!("{}{}", server(&[]), upstream("backend", &[o.addr], ""));
    let cases = [
        (
            route("api", &["/*"], "backend", "[routes.plugins.limit-count]\ncount = 0\ntime_window = 60\n"),
            "routes[0].plugins.limit-count.count: expected a positive integer",
        ),
        (
            route("api", &["/*"], "backend", "[routes.plugins.limit-count]\ncount = 1\ntime_window = 1\ncolour = 1\n"),
            "routes[0].plugins.limit-count",
        ),
        (
            route("api", &["/*"], "backend", "[routes.plugins.no-such-plugin]\n"),
            "routes[0].plugins.no-such-plugin: unknown plugin",
        ),
        (
            route("api", &["/*"], "backend", "[routes.plugins.limit-count]\ncount = 1\ntime_window = 1\nkey = \"bogus\"\n"),
            "routes[0].plugins.limit-count.key",
        ),
        (
            "[[consumers]]\nusername = \"x\"\n[consumers.plugins.jwt-auth]\nkey = \"k\"\nalgorithm = \"RS256\"\n".to_string(),
            "consumers[0].plugins.jwt-auth.public_key",
        ),
        (
            "[[consumers]]\nusername = \"x\"\n[consumers.plugins.key-auth]\nkey = \"s\"\n[[consumers]]\nusername = \"y\"\n[consumers.plugins.key-auth]\nkey = \"s\"\n".to_string(),
            "consumers[1].plugins.key-auth.key",
        ),
    ];
    for (extra, want) in cases {
        let out = check_config(&format!("{base}{extra}"));
        assert!(!out.status.success(), "accepted: {extra}");
        assert!(out.all().contains(want), "want {want:?} in:\n{}", out.all());
    }
}

#[test]
fn rejected_request_body_is_drained_and_the_connection_kept() {
    let o = Origin::echo_body("o");
    let gw = gateway(
        &o,
        &route("api", &["/api/*"], "backend", "[routes.plugins.key-auth]\n"),
    );
    let ok = "GET /api/next HTTP/1.1\r\nHost: t\r\napikey: alice-secret\r\n\r\n";
    let mut c = gw.client();
    // Content-Length body, rejected: 401 without Connection: close, then the same
    // connection serves the next request (the body was not taken for a request head).
    let r = c.request("POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world");
    assert_eq!(r.status, 401);
    assert!(!r.connection_close(), "{}", r.raw_head);
    assert_eq!(c.request(ok).status, 200);
    // Chunked body sent in two pieces, the second after the reply.
    c.send("POST /api/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 401);
    assert!(!r.connection_close(), "{}", r.raw_head);
    c.send("6\r\n world\r\n0\r\n\r\n");
    assert_eq!(c.request(ok).status, 200);
    // Pipelined behind a rejected body in one write: both answered, in order.
    c.send(format!(
        "POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nabcd{ok}"
    ));
    assert_eq!(c.read_response().status, 401);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(
        o.request_count(),
        3,
        "only the authorised GETs went upstream"
    );
    assert!(o.requests().iter().all(|q| q.path() == "/api/next"));

    // A large body is not worth reading: the reply says close and the connection ends.
    let mut c = gw.client();
    let r = c.request("POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\nxx");
    assert_eq!(r.status, 401);
    assert!(r.connection_close(), "{}", r.raw_head);
    assert!(c.wait_closed(IO_TIMEOUT).is_ok());
    // A client waiting for 100 Continue may never send its body: close rather than guess.
    let mut c = gw.client();
    let r = c.request(
        "POST /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(r.status, 401);
    assert!(r.connection_close(), "{}", r.raw_head);
    assert!(c.wait_closed(IO_TIMEOUT).is_ok());
}
