//! Route matching and precedence.
use crate::harness::*;
use std::net::SocketAddr;

/// Origins "a", "b", "c" behind upstreams "ua", "ub", "uc"; `routes` is raw TOML.
struct Setup {
    _origins: Vec<Origin>,
    gw: Gateway,
}

fn setup(routes: &str) -> Setup {
    let origins: Vec<Origin> = ["a", "b", "c"].iter().map(|n| Origin::named(n)).collect();
    let ups: String = origins
        .iter()
        .map(|o| upstream(&format!("u{}", o.name()), &[o.addr], ""))
        .collect();
    let gw = Gateway::start(&format!("{}{}{}", server(&[]), ups, routes));
    Setup {
        _origins: origins,
        gw,
    }
}

fn hit(addr: SocketAddr, method: &str, target: &str, host: &str, extra: &str) -> Response {
    let body = if method == "POST" || method == "PUT" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    one_shot(
        addr,
        format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}{body}\r\n"),
    )
}

fn who(addr: SocketAddr, target: &str) -> String {
    let r = hit(addr, "GET", target, "example.com", "");
    if r.status == 404 {
        return "404".into();
    }
    assert_eq!(r.status, 200, "GET {target}: {}", r.raw_head);
    r.body_str()
}

#[test]
fn priority_wins() {
    let s = setup(&format!(
        "{}{}",
        route("exact", &["/exact"], "ua", "priority = 0"),
        route("catchall", &["/*"], "ub", "priority = 10")
    ));
    assert_eq!(
        who(s.gw.addr, "/exact"),
        "b",
        "higher priority catch-all must win over exact path"
    );
    assert_eq!(who(s.gw.addr, "/other"), "b");
}

#[test]
fn exact_path_beats_prefix() {
    let s = setup(&format!(
        "{}{}",
        route("prefix", &["/foo/*"], "ua", ""),
        route("exact", &["/foo/bar"], "ub", "")
    ));
    assert_eq!(
        who(s.gw.addr, "/foo/bar"),
        "b",
        "exact /foo/bar must beat prefix /foo/*"
    );
    assert_eq!(who(s.gw.addr, "/foo/baz"), "a");
    assert_eq!(
        who(s.gw.addr, "/foo/bar?q=1"),
        "b",
        "query string must not affect path matching"
    );
}

#[test]
fn longer_prefix_beats_shorter() {
    let s = setup(&format!(
        "{}{}{}",
        route("short", &["/api/*"], "ua", ""),
        route("long", &["/api/v1/*"], "ub", ""),
        route("root", &["/*"], "uc", "")
    ));
    assert_eq!(who(s.gw.addr, "/api/v1/users"), "b");
    assert_eq!(who(s.gw.addr, "/api/v2/users"), "a");
    assert_eq!(who(s.gw.addr, "/elsewhere"), "c");
}

#[test]
fn host_exact_beats_wildcard_beats_none() {
    let s = setup(&format!(
        "{}{}{}",
        route("none", &["/*"], "uc", ""),
        route("wild", &["/*"], "ub", "hosts = [\"*.example.com\"]"),
        route("exact", &["/*"], "ua", "hosts = [\"api.example.com\"]")
    ));
    let body = |host: &str| {
        let r = hit(s.gw.addr, "GET", "/", host, "");
        assert_eq!(r.status, 200, "Host {host}: {}", r.raw_head);
        r.body_str()
    };
    assert_eq!(body("api.example.com"), "a", "exact host");
    assert_eq!(body("www.example.com"), "b", "wildcard host");
    assert_eq!(body("other.org"), "c", "no host condition");
    assert_eq!(
        body("API.Example.COM"),
        "a",
        "host matching is case-insensitive"
    );
    assert_eq!(
        body("api.example.com:8080"),
        "a",
        "port in Host must be ignored for matching"
    );
}

#[test]
fn methods_filter() {
    let s = setup(&route("get-only", &["/m"], "ua", "methods = [\"GET\"]"));
    assert_eq!(hit(s.gw.addr, "GET", "/m", "example.com", "").status, 200);
    let r = hit(s.gw.addr, "POST", "/m", "example.com", "");
    r.assert_gateway_error(404);
}

#[test]
fn header_conditions() {
    let s = setup(&format!(
        "{}{}{}",
        route(
            "canary",
            &["/*"],
            "ua",
            "priority = 2\nheaders = [{ name = \"X-Canary\", value = \"1\" }]"
        ),
        route(
            "debug",
            &["/*"],
            "uc",
            "priority = 1\nheaders = [{ name = \"X-Debug\" }]"
        ),
        route("main", &["/*"], "ub", "")
    ));
    let body = |extra: &str| hit(s.gw.addr, "GET", "/", "example.com", extra).body_str();
    assert_eq!(body("X-Canary: 1\r\n"), "a", "header value condition");
    assert_eq!(
        body("x-canary: 1\r\n"),
        "a",
        "header names are case-insensitive"
    );
    assert_eq!(
        body("X-Canary: 2\r\n"),
        "b",
        "wrong header value must not match"
    );
    assert_eq!(body(""), "b");
    assert_eq!(
        body("X-Debug: anything\r\n"),
        "c",
        "presence-only header condition"
    );
}

#[test]
fn args_conditions() {
    let s = setup(&format!(
        "{}{}",
        route(
            "v2",
            &["/*"],
            "ua",
            "priority = 1\nargs = [{ name = \"v\", value = \"2\" }]"
        ),
        route("main", &["/*"], "ub", "")
    ));
    assert_eq!(who(s.gw.addr, "/x?v=2"), "a");
    assert_eq!(who(s.gw.addr, "/x?a=1&v=2"), "a");
    assert_eq!(who(s.gw.addr, "/x?v=3"), "b");
    assert_eq!(who(s.gw.addr, "/x"), "b");
}

#[test]
fn param_routes() {
    let s = setup(&route("user", &["/users/{id}"], "ua", ""));
    assert_eq!(who(s.gw.addr, "/users/42"), "a");
    assert_eq!(who(s.gw.addr, "/users/abc?x=1"), "a");
    assert_eq!(
        who(s.gw.addr, "/users/42/posts"),
        "404",
        "{{id}} matches one segment only"
    );
    assert_eq!(who(s.gw.addr, "/users"), "404");
    assert_eq!(who(s.gw.addr, "/people/42"), "404");
}

#[test]
fn exact_beats_param_beats_prefix() {
    let s = setup(&format!(
        "{}{}{}",
        route("prefix", &["/users/*"], "uc", ""),
        route("param", &["/users/{id}"], "ub", ""),
        route("exact", &["/users/me"], "ua", "")
    ));
    assert_eq!(who(s.gw.addr, "/users/me"), "a");
    assert_eq!(who(s.gw.addr, "/users/7"), "b");
    assert_eq!(who(s.gw.addr, "/users/7/x"), "c");
}

#[test]
fn no_match_is_404_json() {
    let s = setup(&route("only", &["/only"], "ua", ""));
    let r = hit(s.gw.addr, "GET", "/nothing/here", "example.com", "");
    r.assert_gateway_error(404);
    // the connection stays usable after a gateway 404
    let mut c = s.gw.client();
    let r1 = c.get("/nope");
    r1.assert_gateway_error(404);
    if !r1.connection_close() {
        assert_eq!(c.get("/only").status, 200, "keep-alive after 404");
    }
}

#[test]
fn multiple_paths_on_one_route() {
    let s = setup(&route("multi", &["/one", "/two/*"], "ua", ""));
    assert_eq!(who(s.gw.addr, "/one"), "a");
    assert_eq!(who(s.gw.addr, "/two/x"), "a");
    assert_eq!(who(s.gw.addr, "/three"), "404");
}
