//! openid-connect through the real server against a real OpenID provider (npm oidc-provider,
//! harness/oidc.rs): JWT access tokens of each algorithm, expiry, audience, scopes, key rotation
//! with unknown kids, opaque tokens via introspection (concurrent calls: a held one delays only its
//! own request), and the provider going away mid-test.

use std::time::Duration;

use base64::Engine;

use crate::harness::oidc::{Oidc, API, OPAQUE, OTHER};
use crate::harness::*;

fn gateway(origin: &Origin, idp: &Oidc, extra: &str) -> Gateway {
    let plugin = format!(
        "[routes.plugins.openid-connect]\n\
         discovery = \"{}\"\n\
         client_id = \"gw\"\n\
         client_secret = \"gw-secret\"\n\
         audience = \"{API}\"\n\
         {extra}",
        idp.discovery()
    );
    let cfg = format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n{}{}\
         [[consumers]]\nusername = \"gw-es\"\n[consumers.plugins.key-auth]\nkey = \"unused\"\n",
        server(&[]),
        upstream("backend", &[origin.addr], ""),
        route("api", &["/*"], "backend", &plugin),
    );
    Gateway::start(&cfg)
}

fn call(c: &mut Client, tok: &str) -> Response {
    get_with(c, "/x", &format!("Authorization: Bearer {tok}\r\n"))
}

fn assert_invalid(r: &Response) {
    assert_eq!(r.status, 401, "{}", r.body_str());
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("Bearer realm=\"ringway\", error=\"invalid_token\"")
    );
    assert_eq!(
        r.json()["message"],
        "invalid_token",
        "no detail for the client"
    );
}

/// A token whose header names a kid the provider never published, signed with nothing valid.
fn forged(kid: &str) -> String {
    let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        b(&format!("{{\"alg\":\"RS256\",\"kid\":\"{kid}\"}}")),
        b(&format!(
            "{{\"iss\":\"x\",\"aud\":\"{API}\",\"exp\":9999999999}}"
        )),
        b("not a signature")
    )
}

#[test]
fn jwt_access_tokens_of_each_algorithm_pass_and_the_identity_reaches_the_upstream() {
    let idp = Oidc::start();
    let o = Origin::named("o");
    let gw = gateway(
        &o,
        &idp,
        "consumer_by = \"client_id\"\nclaims_to_headers = { sub = \"X-User\", scope = \"X-Scope\" }\n",
    );
    let mut c = gw.client();
    for client in ["gw", "gw-ps", "gw-es", "gw-ed"] {
        let tok = idp.token(client, "read", API);
        let r = call(&mut c, &tok);
        assert_eq!(r.status, 200, "{client}: {}", r.body_str());
        let req = o.last_request();
        assert_eq!(req.header("X-User"), Some(client));
        assert_eq!(req.header("X-Scope"), Some("read"));
        assert_eq!(req.header("X-Access-Token"), Some(tok.as_str()));
        let info = base64::engine::general_purpose::STANDARD
            .decode(req.header("X-Userinfo").expect("X-Userinfo"))
            .expect("base64");
        let claims: serde_json::Value = serde_json::from_slice(&info).expect("claims JSON");
        assert_eq!(claims["aud"], API);
        assert_eq!(claims["iss"], idp.issuer());
        // Only gw-es is a consumer; a client cannot claim to be one by header.
        let consumer = (client == "gw-es").then_some(client);
        assert_eq!(req.header("X-Consumer-Username"), consumer, "{client}");
    }
    let seen = o.request_count();

    // No token, another scheme: the bare challenge (RFC 6750 3.1: no error code).
    let r = get_with(&mut c, "/x", "");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("Bearer realm=\"ringway\"")
    );
    assert_eq!(
        get_with(&mut c, "/x", "Authorization: Basic Z3c6Z3c=\r\n").status,
        401
    );
    // Malformed, tampered, forged: invalid_token and nothing more.
    let tok = idp.token("gw", "read", API);
    let mut parts: Vec<&str> = tok.split('.').collect();
    let other = idp.token("gw", "read write", API);
    parts[1] = other.split('.').nth(1).unwrap();
    let tampered = parts.join(".");
    for bad in ["x", "a.b.c", &tampered, &format!("{tok}x")] {
        assert_invalid(&call(&mut c, bad));
    }
    assert_eq!(
        o.request_count(),
        seen,
        "nothing refused reached the upstream"
    );
}

#[test]
fn expired_wrong_audience_and_missing_scope_are_refused_per_rfc_6750() {
    // A 2 s token and a 3.1 s sleep: keep the CPU at hand.
    let _cpu = cpu_lock();
    let idp = Oidc::start();
    let o = Origin::named("o");
    let gw = gateway(&o, &idp, "required_scopes = [\"write\"]\n");
    let mut c = gw.client();

    let r = call(&mut c, &idp.token("gw", "read", API));
    assert_eq!(r.status, 403, "{}", r.body_str());
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("Bearer realm=\"ringway\", error=\"insufficient_scope\", scope=\"write\"")
    );
    assert_eq!(
        call(&mut c, &idp.token("gw", "read write", API)).status,
        200
    );
    assert_invalid(&call(&mut c, &idp.token("gw", "write", OTHER)));

    // Lives 2 s: admitted (and cached as verified), then refused once expired.
    let short = idp.token("short", "write", API);
    assert_eq!(call(&mut c, &short).status, 200);
    assert_eq!(call(&mut c, &short).status, 200, "reused while valid");
    std::thread::sleep(Duration::from_millis(3100));
    assert_invalid(&call(&mut c, &short));
    assert_eq!(o.request_count(), 3);
}

#[test]
fn a_rotated_key_is_fetched_once_and_unknown_kids_cannot_flood_the_jwks() {
    // The flood must fit in one 2 s refetch interval.
    let _cpu = cpu_lock();
    let idp = Oidc::start();
    let o = Origin::named("o");
    let gw = gateway(&o, &idp, "jwks_refetch_interval = \"2s\"\n");
    let mut c = gw.client();
    let before = idp.token("gw", "read", API);
    assert_eq!(call(&mut c, &before).status, 200);
    let fetched = idp.count("jwks");
    assert_eq!(fetched, 1, "one JWKS fetch at start");

    // A flood of unknown kids: at most one refetch per interval, all refused.
    for i in 0..50 {
        assert_invalid(&call(&mut c, &forged(&format!("nope-{i}"))));
    }
    assert!(
        idp.count("jwks") <= fetched + 1,
        "{} fetches",
        idp.count("jwks")
    );

    std::thread::sleep(Duration::from_millis(2200));
    idp.rotate();
    let after = idp.token("gw", "read", API);
    assert_ne!(
        after.split('.').next(),
        before.split('.').next(),
        "the new token names the new kid"
    );
    let r = call(&mut c, &after);
    assert_eq!(
        r.status,
        200,
        "the unknown kid made the gateway refetch: {}",
        r.body_str()
    );
    let now = idp.count("jwks");
    assert!(now <= fetched + 2, "{now} fetches");
    assert_eq!(
        call(&mut c, &before).status,
        200,
        "the old key is still published"
    );
    for _ in 0..20 {
        assert_eq!(call(&mut c, &after).status, 200);
    }
    assert_eq!(idp.count("jwks"), now, "known kids cost no fetch");
    // The gateway counts the same calls the provider saw.
    let status = crate::harness::ops::listener(&gw.stderr, "status");
    let samples = crate::harness::prometheus::scrape(status);
    let counted = |endpoint: &str| {
        crate::harness::prometheus::value(
            &samples,
            "ringway_oidc_provider_requests_total",
            &[("endpoint", endpoint), ("outcome", "ok")],
        )
    };
    assert_eq!(counted("jwks"), now as f64);
    assert_eq!(counted("discovery"), idp.count("discovery") as f64);
}

#[test]
fn opaque_tokens_are_introspected_once_and_remembered() {
    let idp = Oidc::start();
    let o = Origin::named("o");
    let gw = gateway(&o, &idp, "consumer_by = \"client_id\"\n");
    let mut c = gw.client();
    let tok = idp.token("gw-es", "read", OPAQUE);
    assert!(!tok.contains('.'), "an opaque token: {tok}");
    let r = call(&mut c, &tok);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        o.last_request().header("X-Consumer-Username"),
        Some("gw-es")
    );
    for _ in 0..20 {
        assert_eq!(call(&mut c, &tok).status, 200);
    }
    assert_eq!(idp.count("introspect"), 1, "cached after the first answer");

    // Unknown to the provider: inactive, refused, and the refusal is remembered briefly.
    let bogus = "ATEDyYBJ2w0S-CUVA8115mfNbMw0boU5YbQXrEQqCSC";
    assert_invalid(&call(&mut c, bogus));
    assert_invalid(&call(&mut c, bogus));
    assert_eq!(idp.count("introspect"), 2);
    assert_eq!(o.request_count(), 21);
}

#[test]
fn a_provider_gone_mid_test_keeps_cached_keys_and_refuses_new_opaque_tokens() {
    let mut idp = Oidc::start();
    let o = Origin::named("o");
    let gw = gateway(&o, &idp, "timeout = \"1s\"\n");
    let mut c = gw.client();
    let seen_jwt = idp.token("gw", "read", API);
    let fresh_jwt = idp.token("gw-es", "read", API);
    let seen_opaque = idp.token("gw", "read", OPAQUE);
    let fresh_opaque = idp.token("gw", "read", OPAQUE);
    assert_eq!(call(&mut c, &seen_jwt).status, 200);
    assert_eq!(call(&mut c, &seen_opaque).status, 200);

    idp.stop();
    assert_eq!(call(&mut c, &seen_jwt).status, 200, "verified before");
    assert_eq!(
        call(&mut c, &fresh_jwt).status,
        200,
        "verified with the cached keys"
    );
    assert_eq!(
        call(&mut c, &seen_opaque).status,
        200,
        "introspected before"
    );
    for _ in 0..2 {
        let r = call(&mut c, &fresh_opaque);
        assert_eq!(r.status, 503, "never admitted: {}", r.body_str());
    }
    assert_invalid(&call(&mut c, &forged("after-outage")));
    assert_eq!(o.request_count(), 5);
    assert!(
        gw.logs().contains("unreachable"),
        "the outage is logged: {}",
        gw.logs()
    );
}

#[test]
fn a_held_introspection_delays_only_its_own_request() {
    let idp = Oidc::start();
    let o = Origin::named("o");
    let gw = gateway(&o, &idp, "timeout = \"20s\"\n");
    let slow = idp.token("gw", "read", OPAQUE);
    let fast = idp.token("gw-es", "read", OPAQUE);
    let before = idp.count("introspect");
    idp.hold_next_introspection();
    let addr = gw.addr;
    let held = std::thread::spawn(move || call(&mut Client::connect(addr), &slow).status);
    assert!(
        wait_until(Duration::from_secs(20), || idp.count("introspect") > before),
        "the first introspection never reached the provider"
    );
    // The provider holds the first call until released: the second token is answered meanwhile.
    let r = call(&mut gw.client(), &fast);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert!(
        !held.is_finished(),
        "the held request cannot have been answered"
    );
    idp.release();
    assert_eq!(held.join().expect("the held request"), 200);
}
