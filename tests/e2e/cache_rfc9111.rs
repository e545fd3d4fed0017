//! proxy-cache's `mode = "rfc9111"` and the RFC rules both modes follow, through the real server
//! (2 shards, so most keys are asked across shards) and a counting origin: statuses stored by
//! explicit freshness, client request directives, Set-Cookie, CDN-Cache-Control (RFC 9213),
//! invalidation of Location/Content-Location, HEAD updating a stored GET, conditionals.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::cache::{gw, gw_at};
use crate::harness::*;

fn rfc(o: &Origin) -> Gateway {
    gw(o, "mode = \"rfc9111\"")
}

fn req(g: &Gateway, method: &str, path: &str, extra: &str) -> Response {
    let mut c = g.client();
    c.send(format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n"
    ));
    c.try_read_response_ext(method == "HEAD")
        .expect("a response")
}

fn get(g: &Gateway, path: &str, extra: &str) -> Response {
    req(g, "GET", path, extra)
}

fn status(r: &Response) -> String {
    r.header("X-Cache-Status").unwrap_or("-").to_string()
}

#[test]
fn any_status_with_explicit_freshness_is_stored_heuristics_only_where_allowed() {
    // /STATUS/how: explicit freshness (max-age, Expires) or only a Last-Modified (heuristic).
    let o = Origin::start("o", |r| {
        let mut p = r.path()[1..].split('/');
        let code: u16 = p.next().and_then(|s| s.parse().ok()).unwrap_or(200);
        let r = Resp::text(code, "x");
        match p.next() {
            Some("max-age") => r.header("Cache-Control", "max-age=100"),
            Some("expires") => r.header("Expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
            _ => r.header("Last-Modified", "Thu, 01 Jan 2015 00:00:00 GMT"),
        }
        .into()
    });
    let g = rfc(&o);
    let cases = [
        ("/302/max-age", "HIT"),
        ("/500/max-age", "HIT"),
        ("/201/expires", "HIT"),
        ("/403/max-age", "HIT"),
        ("/200/heuristic", "HIT"),
        ("/404/heuristic", "HIT"),
        ("/302/heuristic", "MISS"),
        ("/500/heuristic", "MISS"),
    ];
    for (path, want) in cases {
        assert_eq!(status(&get(&g, path, "")), "MISS", "{path}");
        assert_eq!(status(&get(&g, path, "")), want, "{path}");
    }
    assert_eq!(o.request_count(), 2 * 8 - 6);
    // The default mode keeps cache_http_status ([200, 301, 404]).
    let o2 = Origin::start("o2", |_| {
        Resp::text(302, "x")
            .header("Cache-Control", "max-age=100")
            .into()
    });
    let g2 = gw(&o2, "");
    get(&g2, "/a", "");
    assert_eq!(status(&get(&g2, "/a", "")), "MISS");
}

/// The request's query, `%20` and `%22` decoded.
fn query(r: &Req) -> Option<String> {
    let q = r.target.split_once('?')?.1;
    Some(q.replace("%20", " ").replace("%22", "\""))
}

/// An origin whose response says `Cache-Control: <path's query>` and counts requests.
fn cc_origin() -> Origin {
    Origin::start("o", |r| {
        let cc = query(r).unwrap_or_else(|| "max-age=100".into());
        Resp::text(200, "body")
            .header("Cache-Control", &cc)
            .header("ETag", "\"v1\"")
            .into()
    })
}

#[test]
fn request_max_age_min_fresh_and_no_cache_send_the_request_on() {
    let o = cc_origin();
    let g = rfc(&o);
    get(&g, "/a", "");
    let cases = [
        ("Cache-Control: max-age=60", "HIT"),
        ("Cache-Control: max-age=0", "EXPIRED"), // always goes to the origin
        ("Cache-Control: min-fresh=50", "HIT"),
        ("Cache-Control: min-fresh=500", "EXPIRED"), // not fresh for 500 more seconds
        ("Cache-Control: no-cache", "EXPIRED"),
        ("Pragma: no-cache", "EXPIRED"),
        // Pragma counts only without Cache-Control.
        ("Pragma: no-cache\r\nCache-Control: max-age=60", "HIT"),
    ];
    for (h, want) in cases {
        assert_eq!(status(&get(&g, "/a", &format!("{h}\r\n"))), want, "{h}");
    }
    assert_eq!(o.request_count(), 5);
    // The default mode ignores the client's max-age (as APISIX does).
    let o2 = cc_origin();
    let g2 = gw(&o2, "");
    get(&g2, "/a", "");
    assert_eq!(
        status(&get(&g2, "/a", "Cache-Control: max-age=0\r\n")),
        "HIT"
    );
}

#[test]
fn max_stale_serves_stale_unless_the_response_forbids_it() {
    let o = cc_origin();
    let g = rfc(&o);
    // Stale at once (max-age=0), no validator to revalidate with? It has an ETag: stored.
    get(&g, "/s?max-age=0", "");
    assert_eq!(
        status(&get(&g, "/s?max-age=0", "Cache-Control: max-stale\r\n")),
        "STALE"
    );
    assert_eq!(
        status(&get(
            &g,
            "/s?max-age=0",
            "Cache-Control: max-stale=3600\r\n"
        )),
        "STALE"
    );
    get(&g, "/m?max-age=0,%20must-revalidate", "");
    assert_ne!(
        status(&get(
            &g,
            "/m?max-age=0,%20must-revalidate",
            "Cache-Control: max-stale\r\n"
        )),
        "STALE",
        "must-revalidate forbids serving stale"
    );
    assert_eq!(o.request_count(), 3);
}

#[test]
fn only_if_cached_answers_504_when_nothing_usable_is_stored() {
    let o = cc_origin();
    let g = rfc(&o);
    let r = get(&g, "/none", "Cache-Control: only-if-cached\r\n");
    assert_eq!(r.status, 504);
    get(&g, "/fresh", "");
    get(&g, "/stale?max-age=0", "");
    let hit = get(&g, "/fresh", "Cache-Control: only-if-cached\r\n");
    assert_eq!((hit.status, status(&hit)), (200, "HIT".to_string()));
    assert_eq!(hit.body_str(), "body");
    let stale = get(&g, "/stale?max-age=0", "Cache-Control: only-if-cached\r\n");
    assert_eq!(stale.status, 504, "stale is not usable without max-stale");
    let ok = get(
        &g,
        "/stale?max-age=0",
        "Cache-Control: only-if-cached, max-stale\r\n",
    );
    assert_eq!((ok.status, status(&ok)), (200, "STALE".to_string()));
    assert_eq!(
        o.request_count(),
        2,
        "only-if-cached never reaches the origin"
    );
}

#[test]
fn set_cookie_responses_are_stored_without_their_cookie() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let o = Origin::start("o", move |_| {
        let i = n2.fetch_add(1, Ordering::SeqCst);
        Resp::text(200, "x")
            .header("Cache-Control", "max-age=100")
            .header("Set-Cookie", &format!("s={i}"))
            .into()
    });
    let g = rfc(&o);
    let first = get(&g, "/c", "");
    assert_eq!(
        first.header("Set-Cookie"),
        Some("s=0"),
        "the response that carried it"
    );
    for _ in 0..3 {
        let r = get(&g, "/c", "");
        assert_eq!(status(&r), "HIT");
        assert_eq!(
            r.header("Set-Cookie"),
            None,
            "never replayed from the cache"
        );
    }
    assert_eq!(o.request_count(), 1);
    // Default mode: not stored (cache_set_cookie = false).
    let o2 = Origin::start("o2", |_| {
        Resp::text(200, "x")
            .header("Cache-Control", "max-age=100")
            .header("Set-Cookie", "s=1")
            .into()
    });
    let g2 = gw(&o2, "");
    get(&g2, "/c", "");
    assert_eq!(status(&get(&g2, "/c", "")), "MISS");
}

#[test]
fn authorization_rules_hold_in_rfc9111_mode() {
    let o = Origin::start("o", |r| {
        let cc = if r.path() == "/pub" {
            "public, max-age=100"
        } else {
            "max-age=100"
        };
        Resp::text(200, "x").header("Cache-Control", cc).into()
    });
    let g = rfc(&o);
    let auth = "Authorization: Bearer x\r\n";
    get(&g, "/priv", auth);
    assert_eq!(
        status(&get(&g, "/priv", auth)),
        "MISS",
        "not shared without public"
    );
    get(&g, "/pub", auth);
    assert_eq!(status(&get(&g, "/pub", auth)), "HIT");
}

#[test]
fn cdn_cache_control_takes_precedence_and_is_not_forwarded() {
    // /path?CDN-CC value; Cache-Control says no-store, Expires is in the past.
    let o = Origin::start("o", |r| {
        let cdn = query(r).unwrap_or_default();
        let mut resp = Resp::text(200, "x")
            .header("Cache-Control", "no-store")
            .header("Expires", "Thu, 01 Jan 2015 00:00:00 GMT");
        if !cdn.is_empty() {
            resp = resp.header("CDN-Cache-Control", &cdn);
        }
        resp.into()
    });
    for plugin in ["", "mode = \"rfc9111\""] {
        let g = gw(&o, plugin);
        let cases = [
            ("/a?max-age=100", "HIT"),
            ("/b?max-age=%22100%22", "MISS"), // a string is not an integer; nothing else applies
            ("/c?Max-Age=100", "MISS"),       // not a Dictionary: Cache-Control's no-store rules
            ("/d?max-age=100,%20no-store", "MISS"),
            ("/e?max-age=0,%20max-age=100", "HIT"), // a Dictionary's last member wins
            ("/f", "MISS"),
        ];
        for (path, want) in cases {
            let first = get(&g, path, "");
            assert!(!first.has_header("CDN-Cache-Control"), "{plugin} {path}");
            assert_eq!(first.header("Cache-Control"), Some("no-store"));
            let r = get(&g, path, "");
            assert_eq!(status(&r), want, "{plugin} {path}");
            assert!(!r.has_header("CDN-Cache-Control"), "{plugin} {path}");
        }
    }
    // Another target list: CDN-Cache-Control is then an ordinary field.
    let g = gw(&o, "targeted_cache_control = [\"Ringway-Cache-Control\"]");
    let r = get(&g, "/x?max-age=100", "");
    assert_eq!(r.header("CDN-Cache-Control"), Some("max-age=100"));
    assert_eq!(status(&get(&g, "/x?max-age=100", "")), "MISS");
}

#[test]
fn unsafe_requests_invalidate_same_origin_location_and_content_location() {
    let o = Origin::start("o", |r| {
        if r.method == "POST" {
            return Resp::new(201)
                .header("Location", "http://t/loc")
                .header("Content-Location", "/cl?x=1")
                .into();
        }
        if r.method == "PUT" {
            return Resp::new(204)
                .header("Location", "http://elsewhere/loc")
                .into();
        }
        Resp::text(200, "x")
            .header("Cache-Control", "max-age=100")
            .into()
    });
    let g = gw(&o, "");
    let paths = ["/target", "/loc", "/cl?x=1", "/other"];
    for p in paths {
        get(&g, p, "");
        assert_eq!(status(&get(&g, p, "")), "HIT", "{p}");
    }
    let r = req(&g, "POST", "/target", "Content-Length: 0\r\n");
    assert_eq!(r.status, 201);
    for p in &paths[..3] {
        // Invalidations do not wait: they are visible once the owner's shard has run.
        assert!(
            wait_until(std::time::Duration::from_secs(5), || status(&get(
                &g, p, ""
            )) != "HIT"),
            "{p} invalidated"
        );
    }
    // A PUT whose Location is on another origin: its own URI goes, /loc (stored again above)
    // stays.
    req(&g, "PUT", "/other", "Content-Length: 0\r\n");
    assert!(
        wait_until(std::time::Duration::from_secs(5), || status(&get(
            &g, "/other", ""
        )) != "HIT"),
        "the request's own URI is invalidated"
    );
    assert_eq!(status(&get(&g, "/loc", "")), "HIT");
}

#[test]
fn a_304_updates_stored_headers_but_not_the_ones_rfc9111_excludes() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let o = Origin::start("o", move |r| {
        let i = n2.fetch_add(1, Ordering::SeqCst);
        if r.header("If-None-Match") == Some("\"v1\"") {
            return Resp::new(304)
                .header("Cache-Control", "max-age=100")
                .header("ETag", "\"v1\"")
                .header("X-Version", &format!("{i}"))
                .header("Content-Encoding", "gzip")
                .header("Content-Range", "bytes 0-1/4")
                .into();
        }
        Resp::text(200, "body")
            .header("Cache-Control", "max-age=0")
            .header("ETag", "\"v1\"")
            .header("X-Version", "0")
            .into()
    });
    let g = gw(&o, "mode = \"rfc9111\"");
    get(&g, "/r", "");
    let r = get(&g, "/r", "");
    assert_eq!(status(&r), "REVALIDATED");
    let r = get(&g, "/r", "");
    assert_eq!(status(&r), "HIT");
    assert_eq!(r.header("X-Version"), Some("1"), "updated by the 304");
    assert_eq!(
        r.header("Content-Encoding"),
        None,
        "describes the stored body: kept"
    );
    assert_eq!(r.header("Content-Range"), None);
    assert_eq!(r.body_str(), "body");
}

#[test]
fn a_head_response_updates_the_stored_get_or_retires_it() {
    // The origin answers HEAD with fresh headers; ?changed gives another ETag.
    let o = Origin::start("o", |r| {
        let changed = r.path().contains("changed");
        if r.method == "HEAD" {
            return Resp::text(200, "body")
                .header("Cache-Control", "max-age=100")
                .header("ETag", if changed { "\"v2\"" } else { "\"v1\"" })
                .header("X-From", "head")
                .into();
        }
        Resp::text(200, "body")
            .header("Cache-Control", "max-age=0")
            .header("ETag", "\"v1\"")
            .header("X-From", "get")
            .into()
    });
    let g = rfc(&o);
    for path in ["/same", "/changed"] {
        get(&g, path, "");
        let h = req(&g, "HEAD", path, "");
        assert_eq!(h.status, 200);
    }
    let r = get(&g, "/same", "");
    assert_eq!(status(&r), "HIT", "the HEAD refreshed the stored GET");
    assert_eq!(r.header("X-From"), Some("head"));
    assert_eq!(r.body_str(), "body");
    let before = o.request_count();
    let r = get(&g, "/changed", "");
    assert_eq!(
        status(&r),
        "MISS",
        "a different ETag retires the stored GET"
    );
    assert_eq!(o.request_count(), before + 1);
}

#[test]
fn conditional_requests_are_answered_from_fresh_entries() {
    let o = Origin::start("o", |r| {
        let tag = if r.path() == "/weak" {
            "W/\"w1\""
        } else {
            "\"s1\""
        };
        Resp::text(200, "body")
            .header("Cache-Control", "max-age=100")
            .header("ETag", tag)
            .header("Last-Modified", "Thu, 01 Jan 2015 00:00:00 GMT")
            .header("Content-Type", "text/plain")
            .into()
    });
    let g = gw(&o, "");
    get(&g, "/strong", "");
    get(&g, "/weak", "");
    let cases = [
        ("/strong", "If-None-Match: \"s1\"\r\n", 304),
        ("/strong", "If-None-Match: W/\"s1\"\r\n", 304), // weak comparison
        ("/weak", "If-None-Match: \"w1\"\r\n", 304),
        ("/strong", "If-None-Match: \"x\", \"s1\"\r\n", 304),
        ("/strong", "If-None-Match: *\r\n", 304),
        ("/strong", "If-None-Match: \"x\"\r\n", 200),
        // If-None-Match wins over If-Modified-Since, either way.
        (
            "/strong",
            "If-None-Match: \"x\"\r\nIf-Modified-Since: Fri, 01 Jan 2016 00:00:00 GMT\r\n",
            200,
        ),
        (
            "/strong",
            "If-None-Match: \"s1\"\r\nIf-Modified-Since: Wed, 01 Jan 2014 00:00:00 GMT\r\n",
            304,
        ),
        (
            "/strong",
            "If-Modified-Since: Fri, 01 Jan 2016 00:00:00 GMT\r\n",
            304,
        ),
        (
            "/strong",
            "If-Modified-Since: Wed, 01 Jan 2014 00:00:00 GMT\r\n",
            200,
        ),
        ("/strong", "If-Modified-Since: yesterday\r\n", 200),
    ];
    for (path, h, want) in cases {
        let r = get(&g, path, h);
        assert_eq!(r.status, want, "{path} {h:?}");
        assert_eq!(status(&r), "HIT");
        if want == 304 {
            // The fields a 200 would have carried that guide caches, not the metadata of a
            // body it does not have (RFC 9110 15.4.5).
            assert!(r.body.is_empty());
            assert!(
                r.has_header("ETag") && r.has_header("Cache-Control"),
                "{h:?}"
            );
            assert!(!r.has_header("Content-Type"), "{h:?}");
        }
    }
    assert_eq!(o.request_count(), 2);
}

#[test]
fn early_hints_reach_http11_clients_and_are_never_stored() {
    use std::io::Write;
    let o = RawOrigin::start(|_, s| {
        s.write_all(
            b"HTTP/1.1 102 Processing\r\n\r\n\
              HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n\
              HTTP/1.1 100 Continue\r\n\r\n\
              HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok",
        )
        .is_ok()
    });
    let g = gw_at(o.addr, "mode = \"rfc9111\"");
    let mut c = g.client();
    c.send("GET /e HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut statuses = Vec::new();
    let last = loop {
        let r = c.try_read_response_ext(false).expect("a response");
        statuses.push(r.status);
        if r.status >= 200 {
            break r;
        }
        if r.status == 103 {
            assert_eq!(r.header("Link"), Some("</a.css>; rel=preload"));
            assert!(
                !r.has_header("X-Hop"),
                "Connection-listed fields stay behind"
            );
        }
    };
    assert_eq!(
        statuses,
        [102, 103, 200],
        "100 Continue is the gateway's own business"
    );
    assert_eq!(
        (status(&last), last.body_str()),
        ("MISS".into(), "ok".into())
    );
    // From the cache: the final response only.
    let mut c = g.client();
    c.send("GET /e HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.try_read_response_ext(false).expect("a response");
    assert_eq!((r.status, status(&r)), (200, "HIT".into()));
    // An HTTP/1.0 client gets no interim responses.
    let mut c = g.client();
    c.send("GET /f HTTP/1.0\r\nHost: t\r\n\r\n");
    let r = c.try_read_response_ext(false).expect("a response");
    assert_eq!((r.status, r.body_str()), (200, "ok".into()));
}
