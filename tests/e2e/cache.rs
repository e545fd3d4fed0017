//! proxy-cache through the real server, part 1: storing and freshness rules (each
//! Cache-Control directive, Expires/Age/Date, heuristics, Authorization, Set-Cookie, Vary),
//! HEAD, conditional and Range requests from the cache, bypass/no_cache, large bodies.

use crate::harness::*;

/// One gateway with proxy-cache (plus `extra` keys) on a catch-all route to `o`: two shards
/// (`RINGWAY_TEST_CACHE_WORKERS` to change), each request on a new connection, so requests land
/// on the key's owner and on the other shard alike.
pub(crate) fn gw(o: &Origin, extra: &str) -> Gateway {
    gw_at(o.addr, extra)
}

/// `gw` for an origin at `addr` (a raw one, say).
pub(crate) fn gw_at(addr: std::net::SocketAddr, extra: &str) -> Gateway {
    let cfg = format!(
        "{}{}{}",
        server(&[("workers", &cache_workers(2))]),
        upstream("backend", &[addr], ""),
        route(
            "c",
            &["/*"],
            "backend",
            &format!("[routes.plugins.proxy-cache]\n{extra}\n")
        )
    );
    Gateway::start(&cfg)
}

fn get(gw: &Gateway, path: &str, extra: &str) -> Response {
    gw.client()
        .request(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n"))
}

fn status(r: &Response) -> &str {
    r.header("X-Cache-Status").unwrap_or("-")
}

/// Origin answering `path -> (headers, body)`; counts requests per path via `o.requests()`.
fn origin(f: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> Origin {
    Origin::start("o", move |r| f(r).into())
}

fn hits(o: &Origin, path: &str) -> usize {
    o.requests().iter().filter(|r| r.path() == path).count()
}

#[test]
fn miss_then_hit_with_age_and_head_from_cache() {
    let o = origin(|r| {
        Resp::text(200, format!("body of {}", r.target)).header("Cache-Control", "max-age=60")
    });
    let g = gw(&o, "");
    let r = get(&g, "/a", "");
    assert_eq!((r.status, status(&r)), (200, "MISS"));
    let r = get(&g, "/a", "");
    assert_eq!((r.status, status(&r)), (200, "HIT"));
    assert_eq!(r.body_str(), "body of /a");
    let age: u64 = r.header("Age").expect("Age on a hit").parse().unwrap();
    assert!(age <= 2, "age {age}");
    assert_eq!(r.header("Cache-Control"), Some("max-age=60"));
    // HEAD is answered from the GET's entry: same length, no body.
    let mut c = g.client();
    c.send("HEAD /a HTTP/1.1\r\nHost: t\r\n\r\n");
    let h = c.try_read_response_ext(true).unwrap();
    assert_eq!((h.status, status(&h)), (200, "HIT"));
    assert_eq!(h.header("Content-Length"), Some("10"));
    assert!(h.body.is_empty());
    // Another query string is another key.
    assert_eq!(status(&get(&g, "/a?x=1", "")), "MISS");
    assert_eq!(hits(&o, "/a"), 2);
}

#[test]
fn no_store_and_private_are_never_stored() {
    let o = origin(|r| {
        let cc = match r.path() {
            "/ns" => "no-store, max-age=60",
            _ => "private, max-age=60",
        };
        Resp::text(200, "x").header("Cache-Control", cc)
    });
    let g = gw(&o, "");
    for p in ["/ns", "/pv"] {
        for _ in 0..2 {
            assert_eq!(status(&get(&g, p, "")), "MISS");
        }
        assert_eq!(hits(&o, p), 2, "{p}");
    }
    // A client's no-store keeps the response out of the cache too.
    let o2 = origin(|_| Resp::text(200, "y").header("Cache-Control", "max-age=60"));
    let g2 = gw(&o2, "");
    get(&g2, "/c", "Cache-Control: no-store\r\n");
    assert_eq!(status(&get(&g2, "/c", "")), "MISS");
}

#[test]
fn no_cache_response_is_stored_but_revalidated_every_time() {
    let o = origin(|r| {
        if r.header("If-None-Match") == Some("\"v1\"") {
            Resp::new(304)
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "no-cache")
        } else {
            Resp::text(200, "v1")
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "no-cache")
        }
    });
    let g = gw(&o, "");
    assert_eq!(status(&get(&g, "/n", "")), "MISS");
    for _ in 0..2 {
        let r = get(&g, "/n", "");
        assert_eq!(
            (r.status, status(&r), r.body_str().as_str()),
            (200, "REVALIDATED", "v1")
        );
    }
    let reqs = o.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[2].header("If-None-Match"), Some("\"v1\""));
}

#[test]
fn s_maxage_max_age_expires_precedence() {
    let past = http_date(-3600);
    let future = http_date(3600);
    let now = http_date(0);
    let o = origin(move |r| {
        let resp = Resp::text(200, "x").header("Date", &now);
        match r.path() {
            "/s" => resp.header("Cache-Control", "max-age=0, s-maxage=60"),
            "/m" => resp
                .header("Cache-Control", "max-age=60")
                .header("Expires", &past),
            "/e" => resp.header("Expires", &future),
            "/e0" => resp.header("Expires", "0"),
            "/m0" => resp.header("Cache-Control", "s-maxage=0, max-age=60"),
            _ => resp,
        }
    });
    let g = gw(&o, "");
    for (p, second) in [
        ("/s", "HIT"),
        ("/m", "HIT"),
        ("/e", "HIT"),
        ("/e0", "MISS"),
        ("/m0", "MISS"),
    ] {
        assert_eq!(status(&get(&g, p, "")), "MISS", "{p}");
        assert_eq!(status(&get(&g, p, "")), second, "{p}");
    }
}

#[test]
fn age_and_date_from_the_origin_count() {
    let o = origin(|r| match r.path() {
        "/old" => Resp::text(200, "x")
            .header("Cache-Control", "max-age=10")
            .header("Age", "10"),
        "/aged" => Resp::text(200, "x")
            .header("Cache-Control", "max-age=60")
            .header("Age", "30"),
        // Generated 100 s ago according to its Date: apparent age 100 > max-age.
        _ => Resp::text(200, "x")
            .header("Cache-Control", "max-age=50")
            .header("Date", &http_date(-100)),
    });
    let g = gw(&o, "");
    get(&g, "/old", "");
    assert_eq!(status(&get(&g, "/old", "")), "EXPIRED");
    get(&g, "/aged", "");
    let r = get(&g, "/aged", "");
    assert_eq!(status(&r), "HIT");
    let age: u64 = r.header("Age").unwrap().parse().unwrap();
    assert!(
        (30..=32).contains(&age),
        "Age continues from the origin's: {age}"
    );
    get(&g, "/dated", "");
    assert_eq!(status(&get(&g, "/dated", "")), "EXPIRED");
}

#[test]
fn heuristic_freshness_only_where_the_rfc_allows() {
    let lm = http_date(-100_000);
    let o = origin(move |r| match r.path() {
        "/plain" => Resp::text(200, "x"),
        "/302" => Resp::new(302).header("Location", "/x"),
        "/lm" => Resp::text(200, "x").header("Last-Modified", &lm),
        _ => Resp::text(500, "x"),
    });
    // Without cache_ttl: only the Last-Modified heuristic (10% of its age) applies.
    let g = gw(&o, "cache_http_status = [200, 302]");
    for (p, second) in [("/plain", "MISS"), ("/302", "MISS"), ("/lm", "HIT")] {
        get(&g, p, "");
        assert_eq!(status(&get(&g, p, "")), second, "{p}");
    }
    // cache_ttl is the operator's heuristic: for 200, never for 302 (not heuristically cacheable).
    let g = gw(&o, "cache_http_status = [200, 302]\ncache_ttl = 60");
    for (p, second) in [("/plain", "HIT"), ("/302", "MISS")] {
        get(&g, p, "");
        assert_eq!(status(&get(&g, p, "")), second, "{p}");
    }
}

#[test]
fn authorization_requests_need_public_or_s_maxage() {
    let o = origin(|r| match r.path() {
        "/pub" => Resp::text(200, "pub").header("Cache-Control", "public, max-age=60"),
        "/sm" => Resp::text(200, "sm").header("Cache-Control", "s-maxage=60"),
        _ => Resp::text(
            200,
            format!("for {}", r.header("Authorization").unwrap_or("anon")),
        )
        .header("Cache-Control", "max-age=60"),
    });
    let g = gw(&o, "");
    let alice = "Authorization: Bearer alice\r\n";
    let bob = "Authorization: Bearer bob\r\n";
    assert_eq!(get(&g, "/me", alice).body_str(), "for Bearer alice");
    let r = get(&g, "/me", bob);
    assert_eq!(
        (status(&r), r.body_str().as_str()),
        ("MISS", "for Bearer bob")
    );
    assert_eq!(hits(&o, "/me"), 2);
    // An anonymous request stores it; an authorized one is still not served that entry.
    get(&g, "/me", "");
    assert_eq!(get(&g, "/me", "").body_str(), "for anon");
    let r = get(&g, "/me", alice);
    assert_eq!(
        (status(&r), r.body_str().as_str()),
        ("BYPASS", "for Bearer alice")
    );
    for p in ["/pub", "/sm"] {
        get(&g, p, alice);
        assert_eq!(status(&get(&g, p, bob)), "HIT", "{p}");
    }
}

#[test]
fn set_cookie_responses_are_not_stored_unless_allowed_and_never_with_the_cookie() {
    let o = origin(|_| {
        Resp::text(200, "c")
            .header("Cache-Control", "max-age=60")
            .header("Set-Cookie", "sid=secret")
    });
    let g = gw(&o, "");
    get(&g, "/k", "");
    assert_eq!(status(&get(&g, "/k", "")), "MISS");
    let g = gw(&o, "cache_set_cookie = true");
    let r = get(&g, "/k2", "");
    assert_eq!(
        r.header("Set-Cookie"),
        Some("sid=secret"),
        "the fetching client gets it"
    );
    let r = get(&g, "/k2", "");
    assert_eq!(status(&r), "HIT");
    assert!(
        !r.has_header("Set-Cookie"),
        "a cookie is never served to others"
    );
}

#[test]
fn vary_keeps_variants_and_vary_star_is_never_served() {
    let o = origin(|r| {
        let lang = r.header("Accept-Language").unwrap_or("none").to_string();
        let vary = if r.path() == "/star" {
            "*"
        } else {
            "Accept-Language"
        };
        Resp::text(200, lang)
            .header("Cache-Control", "max-age=60")
            .header("Vary", vary)
    });
    let g = gw(&o, "");
    let en = "Accept-Language: en\r\n";
    let fr = "Accept-Language: fr\r\n";
    assert_eq!(status(&get(&g, "/v", en)), "MISS");
    assert_eq!(status(&get(&g, "/v", fr)), "MISS");
    let r = get(&g, "/v", en);
    assert_eq!((status(&r), r.body_str().as_str()), ("HIT", "en"));
    let r = get(&g, "/v", fr);
    assert_eq!((status(&r), r.body_str().as_str()), ("HIT", "fr"));
    assert_eq!(status(&get(&g, "/v", "")), "MISS");
    for _ in 0..2 {
        assert_eq!(status(&get(&g, "/star", en)), "MISS");
    }
}

#[test]
fn statuses_methods_and_unsafe_method_invalidation() {
    let o = origin(|r| match (r.method.as_str(), r.path()) {
        ("POST", _) => Resp::text(201, "made"),
        (_, "/404") => Resp::text(404, "nf").header("Cache-Control", "max-age=60"),
        (_, "/500") => Resp::text(500, "err").header("Cache-Control", "max-age=60"),
        _ => Resp::text(200, "x").header("Cache-Control", "max-age=60"),
    });
    let g = gw(&o, "");
    get(&g, "/404", "");
    assert_eq!(status(&get(&g, "/404", "")), "HIT");
    get(&g, "/500", "");
    assert_eq!(status(&get(&g, "/500", "")), "MISS");
    get(&g, "/doc", "");
    assert_eq!(status(&get(&g, "/doc", "")), "HIT");
    let r = g
        .client()
        .request("POST /doc HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(r.status, 201);
    assert_eq!(
        status(&get(&g, "/doc", "")),
        "MISS",
        "POST invalidated the entry"
    );
    // cache_method = ["GET"]: HEAD goes to the origin.
    let g = gw(&o, "cache_method = [\"GET\"]");
    get(&g, "/h", "");
    let mut c = g.client();
    c.send("HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n");
    let h = c.try_read_response_ext(true).unwrap();
    assert_eq!(status(&h), "-");
}

#[test]
fn large_bodies_stream_through_uncached() {
    let o = origin(|r| {
        let n = if r.path() == "/small" { 1000 } else { 300_000 };
        let resp = Resp::new(200)
            .pattern(n)
            .header("Cache-Control", "max-age=60");
        if r.path() == "/chunked" {
            resp.chunked(8192)
        } else {
            resp
        }
    });
    let g = gw(&o, "max_body_bytes = 65536");
    for p in ["/big", "/chunked"] {
        for _ in 0..2 {
            let r = get(&g, p, "");
            assert_eq!((r.status, status(&r)), (200, "MISS"), "{p}");
            assert_eq!(r.body.len(), 300_000);
            let mut want = vec![0u8; 300_000];
            pattern_fill(0, &mut want);
            assert!(r.body == want, "{p}: body intact");
        }
        assert_eq!(hits(&o, p), 2, "{p}");
    }
    get(&g, "/small", "");
    assert_eq!(status(&get(&g, "/small", "")), "HIT");
}

#[test]
fn bypass_no_cache_conditions_and_hidden_headers() {
    let o = origin(|_| {
        Resp::text(200, "x")
            .header("Cache-Control", "max-age=60")
            .header("Expires", &http_date(60))
    });
    let g = gw(
        &o,
        "bypass = [\"arg:nocache\"]\nno_cache = [\"header:X-No-Store\"]\nhide_cache_headers = true\ncache_status_header = \"X-Ringway-Cache\"",
    );
    let r = get(&g, "/b", "X-No-Store: 1\r\n");
    assert_eq!(r.header("X-Ringway-Cache"), Some("MISS"));
    assert_eq!(
        get(&g, "/b", "").header("X-Ringway-Cache"),
        Some("MISS"),
        "not stored"
    );
    let r = get(&g, "/b", "");
    assert_eq!(r.header("X-Ringway-Cache"), Some("HIT"));
    assert!(
        !r.has_header("Cache-Control")
            && !r.has_header("Expires")
            && !r.has_header("X-Cache-Status")
    );
    assert_eq!(
        get(&g, "/b?nocache=1", "").header("X-Ringway-Cache"),
        Some("BYPASS")
    );
    assert_eq!(
        get(&g, "/b?nocache=0", "").header("X-Ringway-Cache"),
        Some("MISS"),
        "\"0\" is off"
    );
}

#[test]
fn client_no_cache_ignored_by_default_honored_when_configured() {
    let o = origin(|_| Resp::text(200, "x").header("Cache-Control", "max-age=60"));
    let g = gw(&o, "");
    get(&g, "/n", "");
    assert_eq!(status(&get(&g, "/n", "Cache-Control: no-cache\r\n")), "HIT");
    assert_eq!(status(&get(&g, "/n", "Pragma: no-cache\r\n")), "HIT");
    let g = gw(&o, "client_no_cache = \"honor\"");
    get(&g, "/n", "");
    assert_eq!(
        status(&get(&g, "/n", "Cache-Control: no-cache\r\n")),
        "EXPIRED"
    );
    assert_eq!(
        status(&get(&g, "/n", "Cache-Control: max-age=0\r\n")),
        "EXPIRED"
    );
    assert_eq!(status(&get(&g, "/n", "")), "HIT");
}

#[test]
fn conditional_requests_get_304_from_a_fresh_entry() {
    let lm = http_date(-1000);
    let o = origin(move |_| {
        Resp::text(200, "body")
            .header("Cache-Control", "max-age=60")
            .header("ETag", "\"e1\"")
            .header("Last-Modified", &lm)
    });
    let g = gw(&o, "");
    get(&g, "/c", "");
    let r = get(&g, "/c", "If-None-Match: \"zz\", W/\"e1\"\r\n");
    assert_eq!((r.status, status(&r)), (304, "HIT"));
    assert!(r.body.is_empty());
    assert_eq!(r.header("ETag"), Some("\"e1\""));
    assert_eq!(get(&g, "/c", "If-None-Match: \"other\"\r\n").status, 200);
    assert_eq!(
        get(
            &g,
            "/c",
            &format!("If-Modified-Since: {}\r\n", http_date(0))
        )
        .status,
        304
    );
    assert_eq!(
        get(
            &g,
            "/c",
            &format!("If-Modified-Since: {}\r\n", http_date(-5000))
        )
        .status,
        200
    );
    // The conditional of the first (storing) client is not passed on, so the origin's full
    // answer can be stored.
    get(&g, "/c2", "If-None-Match: \"e1\"\r\n");
    assert!(!o.last_request().has_header("If-None-Match"));
    assert_eq!(status(&get(&g, "/c2", "")), "HIT");
}

#[test]
fn range_requests_are_served_from_a_cached_full_response() {
    let o = origin(|_| {
        Resp::text(200, "0123456789")
            .header("Cache-Control", "max-age=60")
            .header("ETag", "\"r\"")
    });
    let g = gw(&o, "");
    get(&g, "/r", "");
    let r = get(&g, "/r", "Range: bytes=2-5\r\n");
    assert_eq!(
        (r.status, status(&r), r.body_str().as_str()),
        (206, "HIT", "2345")
    );
    assert_eq!(r.header("Content-Range"), Some("bytes 2-5/10"));
    assert_eq!(get(&g, "/r", "Range: bytes=-3\r\n").body_str(), "789");
    assert_eq!(get(&g, "/r", "Range: bytes=7-\r\n").body_str(), "789");
    let r = get(&g, "/r", "Range: bytes=20-30\r\n");
    assert_eq!(
        (r.status, r.header("Content-Range")),
        (416, Some("bytes */10"))
    );
    assert_eq!(
        get(&g, "/r", "Range: bytes=0-1\r\nIf-Range: \"old\"\r\n").status,
        200
    );
    assert_eq!(
        get(&g, "/r", "Range: bytes=0-1\r\nIf-Range: \"r\"\r\n").status,
        206
    );
    assert_eq!(hits(&o, "/r"), 1);
}
