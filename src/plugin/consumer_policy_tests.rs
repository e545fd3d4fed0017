//! Consumer and consumer-group policy plugins through the real registry and chain: who runs,
//! which level wins (consumer over group over route and global), config errors. Test-only.

use super::testkit::{self, Setup};

const CONSUMERS: &str = r#"
    [[consumer_groups]]
    name = "gold"
    plugins.limit-count = { count = 2, time_window = 60, rejected_code = 429 }
    plugins.response-rewrite = { headers = { set = { X-Tier = "gold" } } }

    [[consumers]]
    username = "ann"
    group = "gold"
    plugins.key-auth = { key = "ann" }

    [[consumers]]
    username = "ari"
    group = "gold"
    plugins.key-auth = { key = "ari" }

    [[consumers]]
    username = "amy"
    group = "gold"
    plugins.key-auth = { key = "amy" }
    plugins.limit-count = { count = 4, time_window = 60, rejected_code = 429 }

    [[consumers]]
    username = "bob"
    plugins.key-auth = { key = "bob" }
    plugins.limit-count = { count = 1, time_window = 60, rejected_code = 429 }

    [[consumers]]
    username = "cid"
    plugins.key-auth = { key = "cid" }
"#;

fn gw(route: &str) -> testkit::Gateway {
    Setup::route(route).consumers(CONSUMERS).build().unwrap()
}

/// How many of `n` requests with `key` pass before the first refusal.
fn passes(gw: &testkit::Gateway, key: &str, n: usize) -> usize {
    let raw = format!("GET / HTTP/1.1\r\nHost: a\r\napikey: {key}\r\n\r\n");
    (0..n)
        .take_while(|_| gw.send(raw.as_bytes()).replied().is_none())
        .count()
}

#[test]
fn a_consumers_own_and_its_groups_plugins_run_after_auth() {
    let gw = gw("[key-auth]\n");
    assert_eq!(passes(&gw, "bob", 5), 1, "bob's own limit");
    assert_eq!(passes(&gw, "cid", 5), 5, "no policy, no limit");
    let mut x = gw.send(b"GET / HTTP/1.1\r\nHost: a\r\napikey: ann\r\n\r\n");
    assert_eq!(x.replied(), None);
    x.response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        x.client_header("X-Tier"),
        Some(&b"gold"[..]),
        "the group's response phase runs"
    );
    let mut x = gw.send(b"GET / HTTP/1.1\r\nHost: a\r\napikey: cid\r\n\r\n");
    x.response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(x.client_header("X-Tier"), None);
}

#[test]
fn consumer_over_group_and_the_group_counts_for_all_its_members() {
    let gw = gw("[key-auth]\n");
    // ann and ari share the group's limit (2); amy's own replaces it (4).
    assert_eq!(passes(&gw, "ann", 1), 1);
    assert_eq!(passes(&gw, "ari", 5), 1, "one of the group's two is left");
    assert_eq!(passes(&gw, "ann", 5), 0);
    assert_eq!(passes(&gw, "amy", 9), 4);
}

#[test]
fn consumer_over_route() {
    let gw = gw("[key-auth]\n[limit-count]\ncount = 3\ntime_window = 60\nrejected_code = 503\n");
    assert_eq!(passes(&gw, "bob", 5), 1, "bob's limit replaces the route's");
    assert_eq!(
        passes(&gw, "cid", 5),
        3,
        "the route's limit for a consumer without one"
    );
}

#[test]
fn config_errors_name_the_key() {
    let err = |consumers: &str| {
        Setup::route("[key-auth]\n")
            .consumers(consumers)
            .build()
            .err()
            .unwrap()
            .path
    };
    assert_eq!(
        err("[[consumers]]\nusername = \"a\"\ngroup = \"none\"\n"),
        "consumers[0].group"
    );
    assert_eq!(
        err("[[consumer_groups]]\nname = \"g\"\nplugins.key-auth = {}\n"),
        "consumer_groups[0].plugins.key-auth"
    );
    assert_eq!(
        err("[[consumer_groups]]\nname = \"g\"\n[[consumer_groups]]\nname = \"g\"\n"),
        "consumer_groups[1].name"
    );
    assert!(
        err("[[consumers]]\nusername = \"a\"\nplugins.limit-count = { count = 0 }\n")
            .starts_with("consumers[0].plugins.limit-count"),
        "a policy plugin's own error, at its key"
    );
}
