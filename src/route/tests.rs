//! Unit and property tests for the router (kept apart from mod.rs to keep both files short).
//! Owns test code only; must not be used by non-test code.

use super::pattern::{self, HostPattern, PathPattern, Seg};
use super::*;
use proptest::prelude::*;

#[derive(Default)]
pub(super) struct Headers(pub(super) Vec<(&'static str, &'static [u8])>);

impl RequestView for Headers {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

fn route(paths: &[&str]) -> RouteSpec {
    RouteSpec {
        paths: paths.iter().map(|p| p.to_string()).collect(),
        ..RouteSpec::default()
    }
}

fn hosted(hosts: &[&str], paths: &[&str]) -> RouteSpec {
    RouteSpec {
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ..route(paths)
    }
}

fn cond(name: &str, value: Option<&str>) -> Cond {
    Cond {
        name: name.into(),
        value: value.map(Into::into),
    }
}

fn build(specs: &[RouteSpec]) -> Router {
    Router::build(specs).expect("valid routes")
}

fn find(r: &Router, host: &str, path: &str) -> Option<usize> {
    r.find(
        host.as_bytes(),
        path.as_bytes(),
        b"",
        b"GET",
        &Headers::default(),
        &mut Params::new(),
    )
}

#[test]
fn pattern_kinds() {
    let r = build(&[
        route(&["/exact"]),
        route(&["/users/{id}/posts"]),
        route(&["/api/*"]),
        route(&["/"]),
    ]);
    assert_eq!(find(&r, "h", "/exact"), Some(0));
    assert_eq!(find(&r, "h", "/exact/"), None);
    assert_eq!(find(&r, "h", "/users/7/posts"), Some(1));
    assert_eq!(
        find(&r, "h", "/users//posts"),
        None,
        "params need a non-empty segment"
    );
    assert_eq!(find(&r, "h", "/users/7/posts/x"), None);
    assert_eq!(find(&r, "h", "/api/"), Some(2));
    assert_eq!(find(&r, "h", "/api/x/y"), Some(2));
    assert_eq!(find(&r, "h", "/api"), None);
    assert_eq!(find(&r, "h", "/apix"), None);
    assert_eq!(find(&r, "h", "/"), Some(3));
    assert_eq!(find(&r, "h", ""), None);
    assert_eq!(find(&r, "h", "*"), None);
    let any = build(&[route(&["/*"])]);
    for p in ["/", "/a", "/a/b/", "//"] {
        assert_eq!(find(&any, "h", p), Some(0), "{p}");
    }
    let no_paths = build(&[RouteSpec::default()]);
    assert_eq!(find(&no_paths, "h", "/anything"), Some(0));
}

#[test]
fn params_and_wildcard_extraction() {
    let r = build(&[
        route(&["/users/{id}/posts/{post_id}"]),
        route(&["/files/{bucket}/*"]),
    ]);
    let mut p = Params::new();
    let path = b"/users/42/posts/abc";
    let h = Headers::default();
    assert_eq!(r.find(b"h", path, b"", b"GET", &h, &mut p), Some(0));
    assert_eq!(p.len(), 2);
    assert_eq!(r.param(&p, "id", path), Some(b"42".as_slice()));
    assert_eq!(r.param(&p, "post_id", path), Some(b"abc".as_slice()));
    assert_eq!(r.param(&p, "nope", path), None);
    assert_eq!(r.param_name(&p, 1), Some("post_id"));
    assert_eq!(p.value(0, path), Some(b"42".as_slice()));
    assert_eq!(p.range(1), Some(16..19));
    assert_eq!(p.wildcard_start, None);

    let path = b"/files/b1/dir/x.txt";
    assert_eq!(r.find(b"h", path, b"", b"GET", &h, &mut p), Some(1));
    assert_eq!(r.param(&p, "bucket", path), Some(b"b1".as_slice()));
    assert_eq!(p.wildcard(path), Some(b"dir/x.txt".as_slice()));
    let start = p.wildcard_start.expect("wildcard");
    assert_eq!(
        &path[start - 1..],
        b"/dir/x.txt",
        "strip_prefix keeps the slash"
    );

    let path = b"/files/b1/";
    assert_eq!(r.find(b"h", path, b"", b"GET", &h, &mut p), Some(1));
    assert_eq!(p.wildcard(path), Some(b"".as_slice()));

    // A miss leaves nothing stale behind.
    assert_eq!(r.find(b"h", b"/zzz", b"", b"GET", &h, &mut p), None);
    assert!(p.is_empty() && p.wildcard_start.is_none());
}

#[test]
fn params_reuse_does_not_reallocate() {
    let r = build(&[route(&["/{a}/{b}/{c}"])]);
    let mut p = Params::new();
    let h = Headers::default();
    r.find(b"h", b"/1/2/3", b"", b"GET", &h, &mut p);
    let cap = p.caps.capacity();
    for _ in 0..100 {
        assert_eq!(r.find(b"h", b"/x/y/z", b"", b"GET", &h, &mut p), Some(0));
    }
    assert_eq!(p.caps.capacity(), cap);
}

#[test]
fn backtracking() {
    let r = build(&[
        route(&["/users/{id}"]),
        route(&["/users/me/*"]),
        route(&["/a/{x}/c"]),
        route(&["/a/b/d"]),
    ]);
    assert_eq!(find(&r, "h", "/users/me"), Some(0));
    assert_eq!(find(&r, "h", "/users/42"), Some(0));
    assert_eq!(find(&r, "h", "/users/me/settings"), Some(1));
    assert_eq!(
        find(&r, "h", "/a/b/c"),
        Some(2),
        "static branch dead-ends, param wins"
    );
    assert_eq!(find(&r, "h", "/a/b/d"), Some(3));
}

#[test]
fn path_precedence() {
    let r = build(&[
        route(&["/*"]),
        route(&["/a/*"]),
        route(&["/a/b/*"]),
        route(&["/a/{x}/{y}"]),
        route(&["/a/{x}/c"]),
        route(&["/a/b/c"]),
    ]);
    assert_eq!(find(&r, "h", "/a/b/c"), Some(5));
    assert_eq!(find(&r, "h", "/a/z/c"), Some(4));
    assert_eq!(find(&r, "h", "/a/z/q"), Some(3));
    assert_eq!(find(&r, "h", "/a/b/q/r"), Some(2));
    assert_eq!(find(&r, "h", "/a/z/q/r"), Some(1));
    assert_eq!(find(&r, "h", "/b"), Some(0));
}

#[test]
fn priority_beats_specificity() {
    let mut broad = hosted(&[], &["/*"]);
    broad.priority = 10;
    let r = build(&[hosted(&["api.example.com"], &["/exact"]), broad]);
    assert_eq!(find(&r, "api.example.com", "/exact"), Some(1));
    let mut low = route(&["/exact"]);
    low.priority = -1;
    let r = build(&[low, route(&["/*"])]);
    assert_eq!(find(&r, "h", "/exact"), Some(1));
}

#[test]
fn host_precedence_and_wildcards() {
    let r = build(&[
        hosted(&[], &["/"]),
        hosted(&["*.com"], &["/"]),
        hosted(&["*.example.com"], &["/"]),
        hosted(&["api.example.com"], &["/"]),
    ]);
    assert_eq!(find(&r, "api.example.com", "/"), Some(3));
    assert_eq!(find(&r, "API.Example.COM:8443", "/"), Some(3));
    assert_eq!(find(&r, "api.example.com.", "/"), Some(3));
    assert_eq!(find(&r, "web.example.com", "/"), Some(2));
    assert_eq!(find(&r, "a.b.example.com", "/"), Some(2));
    assert_eq!(
        find(&r, "example.com", "/"),
        Some(1),
        "*.example.com excludes the apex"
    );
    assert_eq!(find(&r, "other.org", "/"), Some(0));
    assert_eq!(find(&r, "", "/"), Some(0));
    let only = build(&[hosted(&["*.example.com", "example.com"], &["/"])]);
    assert_eq!(find(&only, "example.com", "/"), Some(0));
    assert_eq!(find(&only, "x.example.com", "/"), Some(0));
    assert_eq!(find(&only, "xexample.com", "/"), None);
    assert_eq!(find(&only, &"a.".repeat(200), "/"), None);
}

#[test]
fn host_beats_path_specificity() {
    let r = build(&[hosted(&[], &["/a/b"]), hosted(&["h.com"], &["/*"])]);
    assert_eq!(find(&r, "h.com", "/a/b"), Some(1));
    assert_eq!(find(&r, "x.com", "/a/b"), Some(0));
}

#[test]
fn conditions_filter_and_count() {
    let mut get = route(&["/r"]);
    get.methods = vec!["get".into(), "HEAD".into()];
    let mut hdr = route(&["/r"]);
    hdr.headers = vec![cond("X-Env", Some("canary")), cond("x-user", None)];
    let mut arg = route(&["/r"]);
    arg.args = vec![cond("v", Some("2"))];
    let r = build(&[route(&["/r"]), get, hdr, arg]);
    let run = |method: &[u8], query: &[u8], headers: Headers| {
        r.find(b"h", b"/r", query, method, &headers, &mut Params::new())
    };
    assert_eq!(run(b"POST", b"", Headers::default()), Some(0));
    assert_eq!(run(b"GET", b"", Headers::default()), Some(1));
    assert_eq!(run(b"HEAD", b"", Headers::default()), Some(1));
    let both = || Headers(vec![("x-env", b"canary"), ("x-user", b"")]);
    assert_eq!(
        run(b"POST", b"", both()),
        Some(2),
        "two conditions beat one"
    );
    assert_eq!(run(b"GET", b"", both()), Some(2));
    let wrong = Headers(vec![("x-env", b"prod"), ("x-user", b"u")]);
    assert_eq!(run(b"POST", b"", wrong), Some(0));
    assert_eq!(run(b"POST", b"a=1&v=2", Headers::default()), Some(3));
    assert_eq!(
        run(b"GET", b"v=2", Headers::default()),
        Some(1),
        "tie on count: lower id"
    );
    assert_eq!(run(b"POST", b"v=3", Headers::default()), Some(0));
    let mut present = route(&["/p"]);
    present.args = vec![cond("debug", None)];
    let r = build(&[present]);
    let h = Headers::default();
    let q = |query: &[u8]| r.find(b"h", b"/p", query, b"GET", &h, &mut Params::new());
    assert_eq!(q(b"debug"), Some(0));
    assert_eq!(q(b"x=1&debug="), Some(0));
    assert_eq!(q(b"debugx=1"), None);
}

#[test]
fn lowest_id_breaks_ties_and_multi_paths() {
    let r = build(&[route(&["/x", "/y/{id}"]), route(&["/x"])]);
    assert_eq!(find(&r, "h", "/x"), Some(0));
    assert_eq!(find(&r, "h", "/y/1"), Some(0));
    assert_eq!(r.len(), 2);
    assert!(!r.is_empty());
    assert!(Router::build(&[]).expect("empty table").is_empty());
}

#[test]
fn shareable_across_shards() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Router>();
    assert_send_sync::<Params>();
    assert_send_sync::<RouteError>();
}

#[test]
fn wildcard_length_bounds_do_not_hide_matches() {
    let r = build(&[
        hosted(&["*.b.c"], &["/1"]),
        hosted(&["*.very.long.suffix.example"], &["/2"]),
    ]);
    assert_eq!(find(&r, "a.b.c", "/1"), Some(0));
    assert_eq!(find(&r, "x.y.z.a.b.c", "/1"), Some(0));
    assert_eq!(find(&r, "q.very.long.suffix.example", "/2"), Some(1));
    assert_eq!(find(&r, "b.c", "/1"), None);
}

#[test]
fn ten_thousand_routes() {
    let mut specs = Vec::new();
    for i in 0..10_000 {
        let spec = match i % 4 {
            0 => route(&[&format!("/svc{i}/users/{{id}}")]),
            1 => hosted(&[&format!("h{i}.example.com")], &["/api/*"]),
            2 => route(&[&format!("/static/{i}")]),
            _ => hosted(
                &[&format!("*.t{i}.example.com")],
                &[&format!("/v{i}/{{x}}/*")],
            ),
        };
        specs.push(spec);
    }
    specs.push(route(&["/*"]));
    let r = build(&specs);
    let h = Headers::default();
    let mut p = Params::new();
    for i in (0..10_000).step_by(97) {
        let (host, path) = match i % 4 {
            0 => ("any".to_string(), format!("/svc{i}/users/u{i}")),
            1 => (format!("H{i}.example.com:80"), "/api/x".to_string()),
            2 => ("any".to_string(), format!("/static/{i}")),
            _ => (format!("a.t{i}.example.com"), format!("/v{i}/p/rest")),
        };
        let got = r.find(host.as_bytes(), path.as_bytes(), b"", b"GET", &h, &mut p);
        assert_eq!(got, Some(i), "{host} {path}");
        if i % 4 == 0 {
            assert_eq!(
                r.param(&p, "id", path.as_bytes()),
                Some(format!("u{i}").as_bytes())
            );
        }
    }
    assert_eq!(find(&r, "nohost", "/nothing/here"), Some(10_000));
}

#[test]
fn bad_patterns_rejected_with_messages() {
    let err = |spec: RouteSpec| {
        Router::build(&[route(&["/ok"]), spec])
            .expect_err("invalid")
            .to_string()
    };
    assert_eq!(
        err(route(&["/ok", "api"])),
        r#"route 1: paths[1] "api": must start with '/'"#
    );
    assert!(err(route(&["/a/*/b"])).contains("'*' only allowed as the last segment"));
    assert!(err(route(&["/a/{}"])).contains("empty {}"));
    assert!(err(route(&["/{id}/{id}"])).contains("duplicate parameter name {id}"));
    assert!(err(hosted(&["a.*.com"], &["/"])).contains(r#"hosts[0] "a.*.com""#));
    let mut m = route(&["/"]);
    m.methods = vec!["G T".into()];
    assert!(err(m).contains("methods[0]"));
    let mut h = route(&["/"]);
    h.headers = vec![cond("", None)];
    assert!(err(h).contains("headers[0]"));
    let mut a = route(&["/"]);
    a.args = vec![cond("", Some("1"))];
    assert!(err(a).contains("args[0]"));
    let e = Router::build(&[route(&["x"])]).expect_err("invalid");
    assert_eq!(e.route, 0);
}

/// Brute-force reference: checks every (route, host, path) and applies the precedence rules
/// directly, to validate the trie, host index and pruning.
fn reference(specs: &[RouteSpec], host: &[u8], path: &[u8], method: &[u8]) -> Option<usize> {
    let mut buf = [0u8; pattern::MAX_HOST];
    let h = pattern::normalize_host(host, &mut buf).map(|h| h.to_vec());
    let segs: Vec<&[u8]> = path.strip_prefix(b"/")?.split(|&b| b == b'/').collect();
    let mut best = None;
    for (id, s) in specs.iter().enumerate() {
        if !s.methods.is_empty() && !s.methods.iter().any(|m| m.as_bytes() == method) {
            continue;
        }
        let mut hosts: Vec<HostPattern> = s
            .hosts
            .iter()
            .enumerate()
            .map(|(i, x)| pattern::parse_host(i, x).expect("valid"))
            .collect();
        if hosts.is_empty() {
            hosts.push(HostPattern::Any);
        }
        let mut paths: Vec<PathPattern> = s
            .paths
            .iter()
            .enumerate()
            .map(|(i, x)| pattern::parse_path(i, x).expect("valid"))
            .collect();
        if paths.is_empty() {
            paths.push(PathPattern::any());
        }
        for hp in &hosts {
            let host_ok = match (hp, &h) {
                (HostPattern::Any, _) => true,
                (HostPattern::Exact(e), Some(h)) => **e == **h,
                (HostPattern::Wildcard(w), Some(h)) => {
                    h.len() > w.len() + 1 && h.ends_with(w) && h[h.len() - w.len() - 1] == b'.'
                }
                _ => false,
            };
            for pp in paths.iter().filter(|_| host_ok) {
                let len_ok = if pp.wildcard {
                    segs.len() > pp.segs.len()
                } else {
                    segs.len() == pp.segs.len()
                };
                let ok = len_ok
                    && pp.segs.iter().zip(&segs).all(|(p, s)| match p {
                        Seg::Static(x) => **x == **s,
                        Seg::Param(_) => !s.is_empty(),
                    });
                if ok {
                    let key = (
                        Reverse(s.priority),
                        hp.specificity(),
                        pp.specificity(),
                        Reverse(usize::from(!s.methods.is_empty())),
                        id,
                    );
                    if best.as_ref().map_or(true, |(k, _)| key < *k) {
                        best = Some((key, id));
                    }
                }
            }
        }
    }
    best.map(|(_, id)| id)
}

fn arb_path_pattern() -> impl Strategy<Value = String> {
    let seg = prop_oneof![Just("a"), Just("b"), Just(""), Just("{p}")];
    (proptest::collection::vec(seg, 0..4), any::<bool>()).prop_map(|(segs, wild)| {
        let mut out = String::new();
        for (k, s) in segs.iter().enumerate() {
            out.push('/');
            // Distinct names per position keep patterns valid.
            out.push_str(&s.replace("{p}", &format!("{{p{k}}}")));
        }
        if wild || out.is_empty() {
            out.push_str("/*");
        }
        out
    })
}

pub(super) fn arb_spec() -> impl Strategy<Value = RouteSpec> {
    let host = prop_oneof![
        Just("a.com"),
        Just("*.a.com"),
        Just("x.a.com"),
        Just("*.x.a.com")
    ];
    (
        proptest::collection::vec(host, 0..2),
        proptest::collection::vec(arb_path_pattern(), 0..3),
        any::<bool>(),
        0i32..2,
    )
        .prop_map(|(hosts, paths, get, priority)| RouteSpec {
            hosts: hosts.into_iter().map(String::from).collect(),
            paths,
            methods: if get { vec!["GET".into()] } else { vec![] },
            priority,
            ..RouteSpec::default()
        })
}

proptest! {
    #[test]
    fn find_agrees_with_brute_force(
        specs in proptest::collection::vec(arb_spec(), 1..12),
        host in prop_oneof![Just("a.com"), Just("x.a.com"), Just("y.x.a.com"), Just("B.A.COM:1"), Just("z.org")],
        segs in proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just(""), Just("c")], 0..5),
        get in any::<bool>(),
    ) {
        let router = Router::build(&specs).expect("generated routes are valid");
        let path = format!("/{}", segs.join("/"));
        let method: &[u8] = if get { b"GET" } else { b"POST" };
        let mut p = Params::new();
        let got = router.find(host.as_bytes(), path.as_bytes(), b"", method, &Headers::default(), &mut p);
        prop_assert_eq!(got, reference(&specs, host.as_bytes(), path.as_bytes(), method));
    }

    #[test]
    fn find_never_panics(
        host in proptest::collection::vec(any::<u8>(), 0..300),
        raw in proptest::collection::vec(any::<u8>(), 0..300),
        slash in any::<bool>(),
        query in proptest::collection::vec(any::<u8>(), 0..100),
        method in proptest::collection::vec(any::<u8>(), 0..10),
    ) {
        let mut hdr = route(&["/{a}/*", "/x/{b}/{c}"]);
        hdr.headers = vec![cond("x", None)];
        hdr.args = vec![cond("q", Some("1"))];
        let specs = [
            hosted(&["*.a", "b"], &["/", "/*"]),
            hdr,
            hosted(&[], &["/x/y", "/{z}"]),
        ];
        let router = build(&specs);
        let mut p = Params::new();
        let h = Headers(vec![("x", b"1")]);
        // Most interesting paths start with '/'; raw bytes alone almost never do.
        let path = if slash { [b"/".as_slice(), &raw].concat() } else { raw };
        if let Some(id) = router.find(&host, &path, &query, &method, &h, &mut p) {
            prop_assert!(id < specs.len());
            for i in 0..p.len() {
                prop_assert!(p.value(i, &path).is_some());
            }
            if let Some(w) = p.wildcard_start {
                prop_assert!(w <= path.len());
            }
        }
    }
}
