//! Admin API against the real binary: CRUD on routes/upstreams/consumers/global rules changes
//! live traffic, refuses bad input with a clear 4xx naming the field, enforces keys and the
//! allow-list, persists across restarts and matches its OpenAPI document (50k routes and one-route
//! changes: tests/route_updates.rs).

use crate::harness::ops;

use std::net::SocketAddr;

use crate::harness::ops::{http, Proc};
use crate::harness::{route, server, upstream, Client, Origin, Resp};

const KEY: &str = "admin-key-0123456789";
const VIEWER: &str = "viewer-key-0123456789";

fn admin_section(extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\nkey = \"{KEY}\"\nviewer_key = \"{VIEWER}\"\n{extra}\n"
    )
}

fn api(admin: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (code, text) = http(
        admin,
        method,
        path,
        &[("X-API-KEY", KEY), ("Content-Type", "application/json")],
        body,
    );
    let v =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text:?}"));
    (code, v)
}

fn body_at(gw: SocketAddr, path: &str) -> (u16, String) {
    let r = Client::connect(gw).get(path);
    (r.status, r.body_str())
}

#[test]
fn crud_changes_traffic_and_survives_restart() {
    let a = Origin::start("a", |_| Resp::text(200, "from-a").into());
    let b = Origin::start("b", |_| Resp::text(200, "from-b").into());
    let cfg = format!(
        "{}{}{}{}",
        server(&[("workers", "2")]),
        admin_section(""),
        upstream("a", &[a.addr], ""),
        route("ra", &["/a/*"], "a", "")
    );
    let mut p = Proc::start("admin-crud", &cfg);
    let adm = ops::listener(&p.logs, "admin");
    let (code, list) = api(adm, "GET", "/apisix/admin/routes", "");
    assert_eq!((code, list["total"].as_u64()), (200, Some(1)), "{list}");

    let (code, v) = api(
        adm,
        "PUT",
        "/apisix/admin/upstreams/b",
        &format!(r#"{{"nodes":[{{"addr":"{}"}}]}}"#, b.addr),
    );
    assert_eq!(code, 201, "{v}");
    let (code, v) = api(
        adm,
        "PUT",
        "/apisix/admin/routes/rb",
        r#"{"paths":["/b/*"],"upstream":"b"}"#,
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["value"]["name"], "rb");
    // Applied before the admin call returns: the very next request sees it.
    assert_eq!(body_at(p.addr, "/b/x"), (200, "from-b".into()));
    let (code, v) = api(
        adm,
        "PUT",
        "/apisix/admin/routes/rb",
        r#"{"paths":["/b/*"],"upstream":"a"}"#,
    );
    assert_eq!(code, 200, "replace answers 200: {v}");
    assert_eq!(body_at(p.addr, "/b/x").1, "from-a");

    let (code, v) = api(
        adm,
        "PATCH",
        "/apisix/admin/routes/rb",
        r#"{"paths":["/bee/*"],"upstream":"b"}"#,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(body_at(p.addr, "/bee/x"), (200, "from-b".into()));
    assert_eq!(body_at(p.addr, "/b/x").0, 404);

    let (code, v) = api(adm, "DELETE", "/apisix/admin/upstreams/b", "");
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error_msg"].as_str().unwrap().contains("routes/rb"),
        "{v}"
    );
    let (code, v) = api(
        adm,
        "POST",
        "/apisix/admin/routes",
        r#"{"paths":["/posted"],"upstream":"a"}"#,
    );
    assert_eq!(code, 201, "{v}");
    let posted = v["value"]["name"].as_str().unwrap().to_string();
    assert_eq!(
        api(adm, "GET", &format!("/apisix/admin/routes/{posted}"), "").0,
        200
    );
    assert_eq!(body_at(p.addr, "/posted"), (200, "from-a".into()));

    let (code, v) = api(
        adm,
        "PUT",
        "/apisix/admin/consumers/jack",
        r#"{"plugins":{"key-auth":{"key":"jack-key"}}}"#,
    );
    assert_eq!(code, 201, "{v}");
    let (code, v) = api(
        adm,
        "PUT",
        "/apisix/admin/global_rules/1",
        r#"{"plugins":{"key-auth":{}}}"#,
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        body_at(p.addr, "/posted").0,
        401,
        "global key-auth now applies"
    );
    let r = Client::connect(p.addr)
        .request("GET /posted HTTP/1.1\r\nHost: t\r\napikey: jack-key\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(
        api(adm, "DELETE", "/apisix/admin/global_rules/1", "").0,
        200
    );
    assert_eq!(body_at(p.addr, "/posted").0, 200);

    let (code, v) = api(adm, "DELETE", "/apisix/admin/upstreams/b?force=true", "");
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        api(adm, "GET", "/apisix/admin/routes/rb", "").0,
        404,
        "force removed the referencing route"
    );
    let (code, st) = api(adm, "GET", "/apisix/admin/status", "");
    assert_eq!(code, 200);
    let generation = st["config_generation"].as_u64().unwrap();
    assert_eq!(generation, 10, "{st}");

    // Restart on the same config file: the state file beside it brings the changes back.
    p.stop();
    let p2 = Proc::start("admin-crud", &cfg);
    let adm2 = ops::listener(&p2.logs, "admin");
    assert!(
        p2.logs.text().contains("admin state loaded"),
        "{}",
        p2.logs.text()
    );
    assert_eq!(
        api(adm2, "GET", &format!("/apisix/admin/routes/{posted}"), "").0,
        200
    );
    assert_eq!(api(adm2, "GET", "/apisix/admin/consumers/jack", "").0, 200);
    assert_eq!(body_at(p2.addr, "/posted"), (200, "from-a".into()));
    assert_eq!(body_at(p2.addr, "/bee/x").0, 404);
}

#[test]
fn bad_input_gets_a_clear_4xx() {
    let a = Origin::start("a", |_| Resp::text(200, "ok").into());
    let cfg = format!(
        "{}{}{}{}",
        server(&[]),
        admin_section(""),
        upstream("a", &[a.addr], ""),
        route("r", &["/*"], "a", "")
    );
    let p = Proc::start("admin-bad", &cfg);
    let adm = ops::listener(&p.logs, "admin");
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "PUT",
            "/apisix/admin/routes/x",
            "{not json",
            400,
            "invalid JSON",
        ),
        (
            "PUT",
            "/apisix/admin/routes/x",
            "[1]",
            400,
            "expected a JSON object",
        ),
        (
            "PUT",
            "/apisix/admin/routes/x",
            r#"{"paths":["/x"],"upstream":"nope"}"#,
            400,
            "routes/x.upstream",
        ),
        (
            "PUT",
            "/apisix/admin/routes/x",
            r#"{"paths":["x"],"upstream":"a"}"#,
            400,
            "routes/x.paths[0]",
        ),
        (
            "PUT",
            "/apisix/admin/routes/x",
            r#"{"paths":["/x"],"upstream":"a","bogus":1}"#,
            400,
            "unknown field",
        ),
        (
            "PUT",
            "/apisix/admin/routes/x",
            r#"{"paths":["/x"],"upstream":"a","plugins":{"nope":{}}}"#,
            400,
            "unknown plugin",
        ),
        (
            "PUT",
            "/apisix/admin/upstreams/u",
            r#"{"nodes":[{"addr":"not-an-addr"}]}"#,
            400,
            "upstreams/u.nodes[0].addr",
        ),
        (
            "PUT",
            "/apisix/admin/global_rules/g",
            r#"{"plugins":3}"#,
            400,
            "global_rules/g.plugins",
        ),
        ("GET", "/apisix/admin/routes/missing", "", 404, "not found"),
        (
            "PATCH",
            "/apisix/admin/routes/missing",
            "{}",
            404,
            "not found",
        ),
        (
            "DELETE",
            "/apisix/admin/routes/missing",
            "",
            404,
            "not found",
        ),
        ("GET", "/apisix/admin/widgets", "", 404, "unknown resource"),
        ("GET", "/elsewhere", "", 404, "no such endpoint"),
        ("POST", "/apisix/admin/routes/x", "{}", 405, "not allowed"),
    ];
    for (m, path, body, want, msg) in cases {
        let (code, v) = api(adm, m, path, body);
        assert_eq!(code, *want, "{m} {path} {body}: {v}");
        assert!(
            v["error_msg"].as_str().unwrap_or("").contains(msg),
            "{m} {path} {body}: want {msg:?} in {v}"
        );
    }
    assert_eq!(http(adm, "GET", "/apisix/admin/routes", &[], "").0, 401);
    assert_eq!(
        http(
            adm,
            "GET",
            "/apisix/admin/routes",
            &[("X-API-KEY", "wrong")],
            ""
        )
        .0,
        401
    );
    assert_eq!(
        http(
            adm,
            "GET",
            "/apisix/admin/routes",
            &[("X-API-KEY", VIEWER)],
            ""
        )
        .0,
        200
    );
    assert_eq!(
        http(
            adm,
            "DELETE",
            "/apisix/admin/routes/r",
            &[("X-API-KEY", VIEWER)],
            ""
        )
        .0,
        403
    );
    // Nothing above changed the config or broke serving.
    assert_eq!(
        api(adm, "GET", "/apisix/admin/status", "").1["config_generation"],
        1
    );
    assert_eq!(body_at(p.addr, "/anything").0, 200);
}

#[test]
fn allow_list_and_generated_key() {
    let a = Origin::start("a", |_| Resp::text(200, "ok").into());
    let base = format!(
        "{}{}{}",
        server(&[]),
        upstream("a", &[a.addr], ""),
        route("r", &["/*"], "a", "")
    );
    let p = Proc::start(
        "admin-allow",
        &format!(
            "{base}[admin]\nlisten = \"127.0.0.1:0\"\nkey = \"{KEY}\"\nallow = [\"10.0.0.0/8\"]\n"
        ),
    );
    let adm = ops::listener(&p.logs, "admin");
    assert_eq!(
        http(
            adm,
            "GET",
            "/apisix/admin/routes",
            &[("X-API-KEY", KEY)],
            ""
        )
        .0,
        403
    );
    drop(p);
    let p = Proc::start(
        "admin-genkey",
        &format!("{base}[admin]\nlisten = \"127.0.0.1:0\"\n"),
    );
    let adm = ops::listener(&p.logs, "admin");
    let text = p.logs.text();
    let key = text
        .split("generated admin API key: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no generated key logged:\n{text}"));
    assert!(key.len() >= 32);
    assert_eq!(text.matches(key).count(), 1, "logged once");
    assert_eq!(
        http(
            adm,
            "GET",
            "/apisix/admin/routes",
            &[("X-API-KEY", key)],
            ""
        )
        .0,
        200
    );
    let out = crate::harness::check_config(&format!("{base}[admin]\nkey = \"short\"\n"));
    assert!(out.all().contains("admin.key"), "{}", out.all());
}

#[test]
fn openapi_document_matches_the_endpoints() {
    let a = Origin::start("a", |_| Resp::text(200, "ok").into());
    let cfg = format!(
        "{}{}{}{}",
        server(&[]),
        admin_section(""),
        upstream("a", &[a.addr], ""),
        route("r", &["/*"], "a", "")
    );
    let p = Proc::start("admin-openapi", &cfg);
    let adm = ops::listener(&p.logs, "admin");
    let (code, served) = ops::get(adm, "/openapi.json");
    assert_eq!(code, 200);
    let served: serde_json::Value = serde_json::from_str(&served).unwrap();
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/admin-openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(served, file, "served document is the one in the repo");
    let paths = served["paths"].as_object().unwrap();
    assert!(paths.len() >= 10);
    let mut checked = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let url = path.replace("{id}", "probe-id");
            let body = if ["put", "post", "patch"].contains(&method.as_str()) {
                "{}"
            } else {
                ""
            };
            let (code, text) = http(
                adm,
                &method.to_uppercase(),
                &url,
                &[("X-API-KEY", KEY)],
                body,
            );
            let documented: Vec<u16> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .filter_map(|k| k.parse().ok())
                .collect();
            assert!(
                documented.contains(&code),
                "{method} {url} answered {code} ({text}); documented {documented:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 25, "{checked}");
}
