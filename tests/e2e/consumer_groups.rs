//! Consumer groups and consumer policies through the real server: a group's and a consumer's
//! limit-count after key-auth, consumer-restriction by name and group, and the admin API's
//! consumer_groups objects changing live traffic.

use std::net::SocketAddr;

use crate::harness::ops::{self, http, Proc};
use crate::harness::*;

const KEY: &str = "admin-key-0123456789";

const CONSUMERS: &str = r#"
[[consumer_groups]]
name = "gold"
[consumer_groups.plugins.limit-count]
count = 2
time_window = 60
rejected_code = 429

[[consumers]]
username = "ann"
group = "gold"
[consumers.plugins.key-auth]
key = "ann-key"

[[consumers]]
username = "bob"
[consumers.plugins.key-auth]
key = "bob-key"
[consumers.plugins.limit-count]
count = 1
time_window = 60
rejected_code = 429

[[consumers]]
username = "cid"
[consumers.plugins.key-auth]
key = "cid-key"
"#;

fn status(addr: SocketAddr, path: &str, key: &str, method: &str) -> u16 {
    Client::connect(addr)
        .request(format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\napikey: {key}\r\nContent-Length: 0\r\n\r\n"
        ))
        .status
}

#[test]
fn group_and_consumer_limits_and_restrictions_apply_after_auth() {
    let o = Origin::named("o");
    let cfg = format!(
        "{}{}{}{}{CONSUMERS}",
        server(&[]),
        upstream("backend", &[o.addr], ""),
        route(
            "open",
            &["/open/*"],
            "backend",
            "[routes.plugins.key-auth]\n"
        ),
        route(
            "gold",
            &["/gold/*"],
            "backend",
            "[routes.plugins.key-auth]\n[routes.plugins.consumer-restriction]\n\
             type = \"consumer_group_id\"\nwhitelist = [\"gold\"]\n"
        ),
    ) + &route(
        "named",
        &["/named/*"],
        "backend",
        "[routes.plugins.key-auth]\n[routes.plugins.consumer-restriction]\n\
         blacklist = [\"bob\"]\nallowed_by_methods = [{ user = \"cid\", methods = [\"GET\"] }]\n",
    );
    let gw = Gateway::start(&cfg);
    let codes = |path: &str, key: &str, n: usize| -> Vec<u16> {
        (0..n).map(|_| status(gw.addr, path, key, "GET")).collect()
    };
    assert_eq!(
        codes("/open/x", "bob-key", 3),
        [200, 429, 429],
        "bob's own limit"
    );
    assert_eq!(
        codes("/open/x", "ann-key", 3),
        [200, 200, 429],
        "the group's limit"
    );
    assert_eq!(codes("/open/x", "cid-key", 3), [200, 200, 200], "no policy");

    assert_eq!(
        status(gw.addr, "/gold/x", "cid-key", "GET"),
        401,
        "cid has no group"
    );
    assert_eq!(
        status(gw.addr, "/gold/x", "ann-key", "GET"),
        429,
        "admitted, then limited"
    );
    let r = Client::connect(gw.addr)
        .request("GET /named/x HTTP/1.1\r\nHost: t\r\napikey: bob-key\r\n\r\n");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["message"], "The consumer_name is forbidden.");
    assert_eq!(status(gw.addr, "/named/x", "cid-key", "GET"), 200);
    assert_eq!(status(gw.addr, "/named/x", "cid-key", "POST"), 403);
    assert_eq!(o.last_request().header("X-Consumer-Username"), Some("cid"));
}

#[test]
fn consumer_groups_through_the_admin_api() {
    let o = Origin::named("o");
    let cfg = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\nkey = \"{KEY}\"\n\n{}{}",
        server(&[]),
        upstream("backend", &[o.addr], ""),
        route("r", &["/*"], "backend", "[routes.plugins.key-auth]\n"),
    );
    let p = Proc::start("consumer-groups-admin", &cfg);
    let adm = ops::listener(&p.logs, "admin");
    let api = |method: &str, path: &str, body: &str| {
        let (code, text) = http(
            adm,
            method,
            path,
            &[("X-API-KEY", KEY), ("Content-Type", "application/json")],
            body,
        );
        (code, text)
    };
    let (code, text) = api(
        "PUT",
        "/apisix/admin/consumers/dan",
        r#"{"group":"silver","plugins":{"key-auth":{"key":"dan-key"}}}"#,
    );
    assert_eq!(code, 400, "no such group yet: {text}");
    assert!(text.contains("consumers/dan.group"), "{text}");
    let (code, text) = api(
        "PUT",
        "/apisix/admin/consumer_groups/silver",
        r#"{"plugins":{"limit-count":{"count":1,"time_window":60,"rejected_code":429}}}"#,
    );
    assert_eq!(code, 201, "{text}");
    let (code, text) = api(
        "PUT",
        "/apisix/admin/consumers/dan",
        r#"{"group":"silver","plugins":{"key-auth":{"key":"dan-key"}}}"#,
    );
    assert_eq!(code, 201, "{text}");
    assert_eq!(status(p.addr, "/x", "dan-key", "GET"), 200);
    assert_eq!(status(p.addr, "/x", "dan-key", "GET"), 429);
    let (code, text) = api("GET", "/apisix/admin/consumer_groups/silver", "");
    assert_eq!(code, 200);
    assert!(text.contains("limit-count"), "{text}");
    let (code, text) = api("DELETE", "/apisix/admin/consumer_groups/silver", "");
    assert!(
        code >= 400 && text.contains("consumers/dan"),
        "still used: {code} {text}"
    );
    let (code, text) = api(
        "PUT",
        "/apisix/admin/consumer_groups/silver",
        r#"{"plugins":{"key-auth":{}}}"#,
    );
    assert_eq!(code, 400, "auth plugins belong on consumers: {text}");
    assert!(
        text.contains("consumer_groups/silver.plugins.key-auth"),
        "{text}"
    );
    // `?force=true` deletes the group and the consumers that name it in one change.
    let (code, text) = api(
        "DELETE",
        "/apisix/admin/consumer_groups/silver?force=true",
        "",
    );
    assert_eq!(code, 200, "{text}");
    let (code, _) = api("GET", "/apisix/admin/consumers/dan", "");
    assert_eq!(code, 404, "the group's consumer went with it");
    let (code, _) = api("GET", "/apisix/admin/consumer_groups/silver", "");
    assert_eq!(code, 404);
    assert_eq!(status(p.addr, "/x", "dan-key", "GET"), 401);
}
