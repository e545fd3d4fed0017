//! proxy-rewrite and traffic-split through the real server: what the origins receive, weighted
//! splits with smooth round-robin, var matching, and config errors naming route and plugin.

use crate::harness::*;

#[test]
fn proxy_rewrite_uri_regex_host_and_headers() {
    let o = Origin::echo_target("o");
    let cfg = format!(
        "{}{}{}{}",
        server(&[]),
        upstream("backend", &[o.addr], ""),
        route("fixed", &["/fixed/*"], "backend", "[routes.plugins.proxy-rewrite]\nuri = \"/new/place\"\nhost = \"upstream.internal\"\n"),
        route(
            "re",
            &["/api/*"],
            "backend",
            "[routes.plugins.proxy-rewrite]\nregex_uri = [\"^/api/v(\\\\d+)/(.*)\", \"/$2/version$1x\"]\n[routes.plugins.proxy-rewrite.headers.set]\nX-Api = \"on\"\nX-Client = \"$remote_addr\"\n[routes.plugins.proxy-rewrite.headers.add]\nX-Extra = \"e\"\n[routes.plugins.proxy-rewrite.headers]\nremove = [\"X-Secret\"]\n"
        ),
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    let r = get_with(&mut c, "/fixed/a?q=1", "");
    assert_eq!(r.status, 200);
    // The original query follows a rewritten uri without one, as in APISIX.
    assert_eq!(r.body_str(), "/new/place?q=1");
    let req = o.last_request();
    assert_eq!(req.header("Host"), Some("upstream.internal"));

    let r = get_with(
        &mut c,
        "/api/v2/users/7?x=y",
        "X-Secret: s\r\nX-Api: client\r\nX-Extra: mine\r\n",
    );
    assert_eq!(
        r.body_str(),
        "/users/7/version2x?x=y",
        "$1 followed by text"
    );
    let req = o.last_request();
    assert_eq!(
        req.header_all("X-Api"),
        vec!["on"],
        "set replaces the client's"
    );
    assert_eq!(req.header("X-Client"), Some("127.0.0.1"));
    assert_eq!(
        req.header_all("X-Extra"),
        vec!["mine", "e"],
        "add keeps the client's"
    );
    assert!(!req.has_header("X-Secret"));
    assert_eq!(
        req.header("Host"),
        Some("t"),
        "host untouched without host ="
    );
    // No match: the uri is sent as it came.
    let r = get_with(&mut c, "/api/other", "");
    assert_eq!(r.body_str(), "/api/other");
}

#[test]
fn proxy_rewrite_config_errors() {
    let o = Origin::named("o");
    let base = |p: &str| {
        format!(
            "{}{}{}",
            server(&[]),
            upstream("backend", &[o.addr], ""),
            route(
                "r",
                &["/*"],
                "backend",
                &format!("[routes.plugins.proxy-rewrite]\n{p}")
            )
        )
    };
    assert_config_rejected(
        &base("regex_uri = [\"^/(\"  , \"/x\"]\n"),
        &["routes[0].plugins.proxy-rewrite.regex_uri[0]", "bad regex"],
    );
    assert_config_rejected(
        &base("regex_uri = [\"^/a\"]\n"),
        &["regex_uri", "[regex, replacement]"],
    );
    assert_config_rejected(&base("uri = \"no-slash\"\n"), &["proxy-rewrite.uri"]);
    assert_config_rejected(
        &base(""),
        &["routes[0].plugins.proxy-rewrite", "nothing to rewrite"],
    );
    assert_config_rejected(
        &base("[routes.plugins.proxy-rewrite.headers.set]\n\"bad name\" = \"v\"\n"),
        &["proxy-rewrite.headers"],
    );
    for m in ["get", "HEAD", "CONNECT", "FETCH", ""] {
        assert_config_rejected(
            &base(&format!("method = {m:?}\n")),
            &["routes[0].plugins.proxy-rewrite.method", "expected one of"],
        );
    }
}

#[test]
fn proxy_rewrite_method() {
    let o = Origin::start("o", |r| {
        Resp::text(200, format!("{} {} {}", r.method, r.target, r.body.len())).into()
    });
    let cfg = format!(
        "{}{}{}{}",
        server(&[]),
        upstream("backend", &[o.addr], ""),
        route(
            "post",
            &["/post/*"],
            "backend",
            "[routes.plugins.proxy-rewrite]\nmethod = \"POST\"\n"
        ),
        route(
            "dav",
            &["/dav/*"],
            "backend",
            "[routes.plugins.proxy-rewrite]\nmethod = \"PROPFIND\"\nuri = \"/props\"\n"
        ),
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    let r = get_with(&mut c, "/post/a?q=1", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "POST /post/a?q=1 0");
    // The body and its framing go along with the new method.
    let r = c.request("PUT /post/b HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(r.body_str(), "POST /post/b 3");
    let r = get_with(&mut c, "/dav/x", "");
    assert_eq!(r.body_str(), "PROPFIND /props 0");
    // HEAD stays HEAD (its client expects no body), and the connection stays in step.
    c.send("HEAD /post/c HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.try_read_response_ext(true).expect("HEAD response");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(o.last_request().method, "HEAD");
    assert_eq!(get_with(&mut c, "/post/d", "").body_str(), "POST /post/d 0");
}

fn split_config(stable: &Origin, canary: &Origin, plugin: &str) -> String {
    format!(
        "{}{}{}{}",
        server(&[]),
        upstream("stable", &[stable.addr], ""),
        upstream("canary", &[canary.addr], ""),
        route("r", &["/*"], "stable", plugin)
    )
}

#[test]
fn traffic_split_weighted_one_to_nine_smoothly() {
    let stable = Origin::named("stable");
    let canary = Origin::named("canary");
    let cfg = split_config(
        &stable,
        &canary,
        "[[routes.plugins.traffic-split.rules]]\nweighted_upstreams = [{ upstream = \"canary\", weight = 1 }, { weight = 9 }]\n",
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    let bodies: Vec<String> = (0..100)
        .map(|_| get_with(&mut c, "/x", "").body_str())
        .collect();
    let n = bodies.iter().filter(|b| *b == "canary").count();
    assert_eq!(n, 10, "exactly 1 in 10 with smooth WRR on one shard");
    assert!(
        bodies
            .windows(2)
            .all(|w| !(w[0] == "canary" && w[1] == "canary")),
        "spread out: {bodies:?}"
    );
    assert_eq!(stable.request_count(), 90);
}

#[test]
fn traffic_split_by_header_and_arg_match() {
    let stable = Origin::named("stable");
    let canary = Origin::named("canary");
    let cfg = split_config(
        &stable,
        &canary,
        "[[routes.plugins.traffic-split.rules]]\nmatch = [{ vars = [[\"http_x_canary\", \"==\", \"1\"]] }, { vars = [[\"arg_v\", \"~~\", \"^2\\\\.\"], [\"arg_beta\", \"==\", \"yes\"]] }]\nweighted_upstreams = [{ upstream = \"canary\" }]\n",
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    assert_eq!(
        get_with(&mut c, "/x", "X-Canary: 1\r\n").body_str(),
        "canary"
    );
    assert_eq!(
        get_with(&mut c, "/x", "X-Canary: 0\r\n").body_str(),
        "stable"
    );
    assert_eq!(get_with(&mut c, "/x", "").body_str(), "stable");
    // Second match entry: both of its conditions must hold.
    assert_eq!(
        get_with(&mut c, "/x?v=2.1&beta=yes", "").body_str(),
        "canary"
    );
    assert_eq!(get_with(&mut c, "/x?v=2.1", "").body_str(), "stable");
    assert_eq!(
        get_with(&mut c, "/x?v=1.9&beta=yes", "").body_str(),
        "stable"
    );
    assert_eq!(canary.request_count(), 2);
    assert_eq!(stable.request_count(), 4);
}

#[test]
fn traffic_split_config_errors() {
    let stable = Origin::named("stable");
    let canary = Origin::named("canary");
    let base = |rule: &str| {
        split_config(
            &stable,
            &canary,
            &format!("[[routes.plugins.traffic-split.rules]]\n{rule}"),
        )
    };
    assert_config_rejected(
        &base("weighted_upstreams = [{ upstream = \"nope\", weight = 1 }]\n"),
        &[
            "routes[0].plugins.traffic-split.rules[0].weighted_upstreams[0].upstream",
            "unknown upstream \"nope\"",
            "canary",
        ],
    );
    assert_config_rejected(
        &base("match = [{ vars = [[\"bogus_var\", \"==\", \"1\"]] }]\nweighted_upstreams = [{ weight = 1 }]\n"),
        &["rules[0].match[0].vars[0]", "unknown variable"],
    );
    assert_config_rejected(
        &base("match = [{ vars = [[\"http_x\", \"=~\", \"1\"]] }]\nweighted_upstreams = [{ weight = 1 }]\n"),
        &["unknown operator"],
    );
    assert_config_rejected(
        &base("weighted_upstreams = [{ weight = 0 }]\n"),
        &["all weights are 0"],
    );
}
