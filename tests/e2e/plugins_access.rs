//! ip-restriction, cors and request-id through the real server: status codes, headers on
//! the wire, what reaches the origin, and config errors naming route and plugin.

use std::collections::HashSet;

use crate::harness::*;

#[test]
fn ip_restriction_whitelist_and_blacklist_ipv4() {
    let o = Origin::named("o");
    let cfg = format!(
        "{}{}{}{}{}",
        server(&[]),
        upstream("backend", &[o.addr], ""),
        route(
            "allow",
            &["/allow"],
            "backend",
            "[routes.plugins.ip-restriction]\nwhitelist = [\"10.0.0.0/8\", \"127.0.0.0/24\"]\n"
        ),
        route(
            "deny",
            &["/deny"],
            "backend",
            "[routes.plugins.ip-restriction]\nblacklist = [\"127.0.0.1\"]\nmessage = \"go away\"\n"
        ),
        route(
            "other",
            &["/other"],
            "backend",
            "[routes.plugins.ip-restriction]\nwhitelist = [\"192.168.0.0/16\", \"::1\"]\n"
        ),
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    assert_eq!(get_with(&mut c, "/allow", "").status, 200);
    let r = get_with(&mut c, "/deny", "");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["message"], "go away");
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let r = get_with(&mut c, "/other", "");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["message"], "Your IP address is not allowed");
    // X-Forwarded-For is not trusted: the socket's address decides.
    assert_eq!(
        get_with(&mut c, "/other", "X-Forwarded-For: 192.168.1.1\r\n").status,
        403
    );
    assert_eq!(
        o.request_count(),
        1,
        "denied requests never reach the upstream"
    );
    // The connection stays usable after a 403.
    assert_eq!(get_with(&mut c, "/allow", "").status, 200);
}

#[test]
fn ip_restriction_ipv6_cidrs() {
    let o = Origin::named("o");
    let cfg = format!(
        "{}{}{}{}",
        server(&[("listen", r#"["[::1]:0"]"#)]),
        upstream("backend", &[o.addr], ""),
        route(
            "v6",
            &["/v6"],
            "backend",
            "[routes.plugins.ip-restriction]\nwhitelist = [\"::1/128\"]\n"
        ),
        route(
            "v6deny",
            &["/v6deny"],
            "backend",
            "[routes.plugins.ip-restriction]\nblacklist = [\"::/96\", \"2001:db8::/32\"]\n"
        ),
    );
    let gw = Gateway::start(&cfg);
    assert!(gw.addr.is_ipv6(), "listening on {}", gw.addr);
    let mut c = gw.client();
    assert_eq!(get_with(&mut c, "/v6", "").status, 200);
    assert_eq!(
        get_with(&mut c, "/v6deny", "").status,
        403,
        "::1 is inside ::/96"
    );
    assert_eq!(o.request_count(), 1);
}

#[test]
fn ip_restriction_config_errors() {
    let o = Origin::named("o");
    let base = |p: &str| one_route(&o, &[], &format!("[routes.plugins.ip-restriction]\n{p}"));
    assert_config_rejected(
        &base("whitelist = [\"10.0.0.300/8\"]\n"),
        &["routes[0].plugins.ip-restriction.whitelist[0]", "not an IP"],
    );
    assert_config_rejected(
        &base("whitelist = [\"::1\"]\nblacklist = [\"::2\"]\n"),
        &["routes[0].plugins.ip-restriction", "exactly one"],
    );
    assert_config_rejected(&base(""), &["exactly one"]);
    assert_config_rejected(&base("blacklist = []\n"), &["blacklist", "at least one"]);
}

const PREFLIGHT: &str = "OPTIONS /api HTTP/1.1\r\nHost: t\r\nOrigin: https://a.example\r\nAccess-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: X-Token\r\n\r\n";

#[test]
fn cors_preflight_answered_at_gateway_and_headers_on_actual_requests() {
    let o = Origin::named("o");
    let cfg = one_route(
        &o,
        &[],
        "[routes.plugins.cors]\nallow_origins = \"https://a.example,https://b.example\"\nallow_methods = \"GET,PUT\"\nallow_headers = \"X-Token\"\nexpose_headers = \"X-Trace\"\nmax_age = 600\nallow_credential = true\n",
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    let r = c.request(PREFLIGHT);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("https://a.example")
    );
    assert_eq!(r.header("Access-Control-Allow-Methods"), Some("GET,PUT"));
    assert_eq!(r.header("Access-Control-Allow-Headers"), Some("X-Token"));
    assert_eq!(r.header("Access-Control-Max-Age"), Some("600"));
    assert_eq!(r.header("Access-Control-Allow-Credentials"), Some("true"));
    assert_eq!(r.header("Vary"), Some("Origin"));
    assert_eq!(
        o.request_count(),
        0,
        "a preflight never reaches the upstream"
    );

    let r = get_with(&mut c, "/api", "Origin: https://b.example\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "o");
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("https://b.example")
    );
    assert_eq!(r.header("Access-Control-Expose-Headers"), Some("X-Trace"));
    assert_eq!(r.header("Access-Control-Allow-Credentials"), Some("true"));

    // An origin not listed gets no CORS headers (the browser then blocks it).
    let r = get_with(&mut c, "/api", "Origin: https://evil.example\r\n");
    assert_eq!(r.status, 200);
    assert!(
        !r.has_header("Access-Control-Allow-Origin"),
        "{}",
        r.raw_head
    );
    // A plain OPTIONS (no Access-Control-Request-Method) is the upstream's business.
    let r = c.request("OPTIONS /api HTTP/1.1\r\nHost: t\r\nOrigin: https://a.example\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(o.request_count(), 3);
}

#[test]
fn cors_wildcard_regex_and_headers_on_plugin_replies() {
    let o = Origin::named("o");
    let cfg = format!(
        "{}{}{}{}{}",
        server(&[]),
        upstream("backend", &[o.addr], ""),
        route("star", &["/star"], "backend", "[routes.plugins.cors]\n"),
        route(
            "re",
            &["/re"],
            "backend",
            "[routes.plugins.cors]\nallow_origins_by_regex = [\"^https://.*\\\\.test\\\\.com$\"]\n"
        ),
        route(
            "auth",
            &["/auth"],
            "backend",
            "[routes.plugins.cors]\n[routes.plugins.key-auth]\n"
        ),
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    let r = get_with(&mut c, "/star", "Origin: https://x.example\r\n");
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(
        r.header("Access-Control-Allow-Methods"),
        Some("GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE")
    );
    assert_eq!(
        r.header("Access-Control-Max-Age"),
        Some("5"),
        "APISIX's default"
    );
    assert!(!r.has_header("Access-Control-Allow-Credentials"));
    let r = get_with(&mut c, "/re", "Origin: https://api.test.com\r\n");
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("https://api.test.com")
    );
    let r = get_with(&mut c, "/re", "Origin: https://api.test.com.evil\r\n");
    assert!(!r.has_header("Access-Control-Allow-Origin"));
    // cors runs before key-auth: the 401 carries the CORS headers so a browser can read it.
    let r = get_with(&mut c, "/auth", "Origin: https://x.example\r\n");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
    // ...and the preflight needs no key at all.
    let r = c.request(PREFLIGHT.replace("/api", "/auth"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
}

#[test]
fn cors_config_errors() {
    let o = Origin::named("o");
    let base = |p: &str| one_route(&o, &[], &format!("[routes.plugins.cors]\n{p}"));
    assert_config_rejected(
        &base("allow_credential = true\n"),
        &["routes[0].plugins.cors.allow_origins", "allow_credential"],
    );
    assert_config_rejected(
        &base("allow_credential = true\nallow_origins = \"https://a\"\nallow_methods = \"GET\"\n"),
        &["routes[0].plugins.cors.allow_headers"],
    );
    assert_config_rejected(
        &base("allow_origins_by_regex = [\"(\"]\n"),
        &["allow_origins_by_regex[0]", "bad regex"],
    );
    assert_config_rejected(
        &base("allow_origin = \"*\"\n"),
        &["routes[0].plugins.cors", "allow_origin"],
    );
    // Everything listed: accepted.
    let ok = check_config(&base("allow_credential = true\nallow_origins = \"https://a\"\nallow_methods = \"GET\"\nallow_headers = \"X-A\"\n"));
    assert!(ok.status.success(), "{}", ok.all());
}

#[test]
fn request_id_generated_propagated_and_replaced_when_invalid() {
    let o = Origin::named("o");
    let cfg = format!(
        "{}{}{}{}",
        server(&[]),
        upstream("backend", &[o.addr], ""),
        route("id", &["/id"], "backend", "[routes.plugins.request-id]\n"),
        route("quiet", &["/quiet"], "backend", "[routes.plugins.request-id]\nheader_name = \"X-Trace-Id\"\ninclude_in_response = false\n[routes.plugins.key-auth]\n"),
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    let mut seen = HashSet::new();
    for i in 0..50 {
        let r = get_with(&mut c, "/id", "");
        assert_eq!(r.status, 200);
        let id = r
            .header("X-Request-Id")
            .expect("id in response")
            .to_string();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(&id[14..15], "4", "uuid v4: {id}");
        assert!(seen.insert(id.clone()), "duplicate id {id}");
        assert_eq!(
            o.requests()[i].header("X-Request-Id"),
            Some(id.as_str()),
            "same id upstream"
        );
    }
    // A valid incoming id is kept, upstream and in the response.
    let r = get_with(&mut c, "/id", "X-Request-Id: abc-123\r\n");
    assert_eq!(r.header("X-Request-Id"), Some("abc-123"));
    assert_eq!(o.last_request().header_all("X-Request-Id"), vec!["abc-123"]);
    // An invalid one (too long) is replaced, not forwarded beside ours.
    let long = "x".repeat(200);
    let r = get_with(&mut c, "/id", &format!("X-Request-Id: {long}\r\n"));
    let id = r.header("X-Request-Id").unwrap().to_string();
    assert_eq!(id.len(), 36);
    assert_eq!(
        o.last_request().header_all("X-Request-Id"),
        vec![id.as_str()]
    );
    // Custom header, not in the response; the key-auth 401 carries no id either.
    let r = get_with(&mut c, "/quiet", "");
    assert_eq!(r.status, 401);
    assert!(!r.has_header("X-Trace-Id"));
}

#[test]
fn request_id_on_plugin_replies_and_config_errors() {
    let o = Origin::named("o");
    let cfg = one_route(
        &o,
        &[],
        "[routes.plugins.request-id]\n[routes.plugins.key-auth]\n",
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    let r = get_with(&mut c, "/x", "");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("X-Request-Id").map(str::len),
        Some(36),
        "{}",
        r.raw_head
    );
    let base = |p: &str| one_route(&o, &[], &format!("[routes.plugins.request-id]\n{p}"));
    assert_config_rejected(
        &base("algorithm = \"snowflake\"\n"),
        &["routes[0].plugins.request-id.algorithm", "uuid"],
    );
    assert_config_rejected(
        &base("header_name = \"bad name\"\n"),
        &["routes[0].plugins.request-id.header_name"],
    );
}
