//! `[[apis]]` against real public OpenAPI documents (tests/openapi/, with their licences): every
//! operation routed, valid requests reach the origin unchanged, each kind of invalid request
//! gets a problem+json 400 naming location and pointer and never reaches the origin.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::prometheus::{scrape, scrape_until, value};
use crate::harness::*;

pub(crate) fn doc_path(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/openapi")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

pub(crate) fn api(name: &str, spec: &str, extra: &str) -> String {
    format!("[[apis]]\nname = \"{name}\"\nspec = \"{spec}\"\nupstream = \"backend\"\n{extra}\n\n")
}

fn config(origin: std::net::SocketAddr, apis: &str) -> String {
    format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n{}{apis}",
        server(&[]),
        upstream("backend", &[origin], "")
    )
}

pub(crate) fn send(
    c: &mut Client,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Response {
    let len = if body.is_empty() && method == "GET" {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    c.request(format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{headers}{len}\r\n{body}"
    ))
}

pub(crate) fn json_post(c: &mut Client, path: &str, body: &str) -> Response {
    send(c, "POST", path, "Content-Type: application/json\r\n", body)
}

/// The problem's `errors` as (in, name, pointer), after checking the problem's shape.
pub(crate) fn problems(r: &Response) -> Vec<(String, String, String)> {
    assert_eq!(r.status, 400, "{}", r.body_str());
    assert_eq!(r.header("Content-Type"), Some("application/problem+json"));
    let j = r.json();
    assert_eq!(j["status"], 400);
    assert_eq!(j["type"], "urn:ringway:problem:request-validation");
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    j["errors"]
        .as_array()
        .expect("errors list")
        .iter()
        .map(|e| (s(&e["in"]), s(&e["name"]), s(&e["pointer"])))
        .collect()
}

pub(crate) fn one(r: &Response, at: &str, name: &str, pointer: &str) {
    let p = problems(r);
    assert!(
        p.iter()
            .any(|(a, n, ptr)| a == at && n == name && ptr == pointer),
        "want ({at}, {name}, {pointer:?}) in {p:?}"
    );
}

#[test]
fn petstore_routes_validates_and_forwards_unchanged() {
    let o = Origin::named("o");
    let cfg = config(
        o.addr,
        &api(
            "pets",
            &doc_path("oai/petstore.yaml"),
            "base_path = \"/v1\"\nmax_body_bytes = 256",
        ),
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    let mut forwarded = 0;

    // Valid requests reach the origin as sent.
    let r = send(&mut c, "GET", "/v1/pets?limit=10", "", "");
    assert_eq!(r.status, 200);
    forwarded += 1;
    assert_eq!(o.last_request().target, "/v1/pets?limit=10");
    let body = r#"{"id":7,"name":"rex","tag":"dog"}"#;
    assert_eq!(json_post(&mut c, "/v1/pets", body).status, 200);
    forwarded += 1;
    let got = o.last_request();
    assert_eq!(
        (got.method.as_str(), got.body.as_slice()),
        ("POST", body.as_bytes())
    );
    assert_eq!(send(&mut c, "GET", "/v1/pets/abc", "", "").status, 200);
    forwarded += 1;
    // A chunked body is validated decoded and forwarded as it came.
    let r = c.request(format!(
        "POST /v1/pets HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        &body[..5],
        body.len() - 5,
        &body[5..]
    ));
    assert_eq!(r.status, 200);
    forwarded += 1;
    assert_eq!(o.last_request().body, body.as_bytes());

    // Invalid ones: 400 with the location and pointer; the origin sees none of them.
    one(
        &send(&mut c, "GET", "/v1/pets?limit=ten", "", ""),
        "query",
        "limit",
        "",
    );
    one(
        &send(&mut c, "GET", "/v1/pets?limit=1000", "", ""),
        "query",
        "limit",
        "",
    );
    one(
        &json_post(&mut c, "/v1/pets", r#"{"name":"rex"}"#),
        "body",
        "",
        "",
    );
    one(
        &json_post(&mut c, "/v1/pets", r#"{"id":"7","name":"rex"}"#),
        "body",
        "",
        "/id",
    );
    one(
        &json_post(&mut c, "/v1/pets", r#"{"id":7,"name":"#),
        "body",
        "",
        "",
    );
    one(&send(&mut c, "POST", "/v1/pets", "", ""), "body", "", "");
    let r = send(
        &mut c,
        "POST",
        "/v1/pets",
        "Content-Type: text/plain\r\n",
        "x",
    );
    assert_eq!(r.status, 415, "{}", r.body_str());
    let big = format!(r#"{{"id":1,"name":"{}"}}"#, "x".repeat(300));
    assert_eq!(json_post(&mut gw.client(), "/v1/pets", &big).status, 413);

    // Undescribed paths are 404; described paths with another method 405 with Allow.
    assert_eq!(send(&mut c, "GET", "/v1/owners", "", "").status, 404);
    assert_eq!(send(&mut c, "GET", "/pets", "", "").status, 404);
    let r = send(&mut c, "DELETE", "/v1/pets", "", "");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET, POST"));
    let r = send(&mut c, "PUT", "/v1/pets/1", "", "");
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET")));

    assert_eq!(o.request_count(), forwarded);
}

#[test]
fn petstore_expanded_bad_path_parameter_and_arrays() {
    let o = Origin::named("o");
    let cfg = config(
        o.addr,
        &api("px", &doc_path("oai/petstore-expanded.yaml"), ""),
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    assert_eq!(
        send(&mut c, "GET", "/pets?tags=a&tags=b&limit=5", "", "").status,
        200
    );
    assert_eq!(send(&mut c, "DELETE", "/pets/42", "", "").status, 200);
    assert_eq!(o.request_count(), 2);
    one(
        &send(&mut c, "DELETE", "/pets/forty-two", "", ""),
        "path",
        "id",
        "",
    );
    one(&send(&mut c, "GET", "/pets/4.5", "", ""), "path", "id", "");
    one(
        &send(&mut c, "GET", "/pets?limit=x", "", ""),
        "query",
        "limit",
        "",
    );
    // NewPet: name required.
    one(
        &json_post(&mut c, "/pets", r#"{"tag":"x"}"#),
        "body",
        "",
        "",
    );
    assert_eq!(
        json_post(&mut c, "/pets", r#"{"name":"a","tag":"x"}"#).status,
        200
    );
    assert_eq!(o.request_count(), 3);
}

#[test]
fn openapi_31_dialect_each_kind_of_failure_and_monitor_mode() {
    let o = Origin::named("o");
    let spec = doc_path("petstore-3.1.yaml");
    let cfg = config(
        o.addr,
        &format!(
            "{}{}",
            api("p31", &spec, ""),
            api("m31", &spec, "base_path = \"/mon\"\nvalidate = \"monitor\"")
        ),
    );
    let gw = Gateway::start(&cfg);
    let status = ops::listener(&gw.stderr, "status");
    let mut c = gw.client();
    let id = "X-Request-Id: 0a1b2c3d\r\n";
    assert_eq!(send(&mut c, "GET", "/pets?status=sold", id, "").status, 200);
    let ok = r#"{"name":"rex","tag":null,"kind":"pet","dims":[1.5,2]}"#;
    assert_eq!(json_post(&mut c, "/pets", ok).status, 200);
    // x-ringway-plugins: request-id on this operation only.
    assert!(o.last_request().has_header("X-Pet-Request"));
    let form = "application/x-www-form-urlencoded";
    let r = send(
        &mut c,
        "POST",
        "/pets",
        &format!("Content-Type: {form}\r\n"),
        "name=rex&age=3",
    );
    assert_eq!(r.status, 200);
    let r = send(
        &mut c,
        "PATCH",
        "/pets/3",
        "Content-Type: application/merge-patch+json\r\n",
        r#"{"tag":null}"#,
    );
    assert_eq!(r.status, 200);
    let valid = o.request_count();
    assert_eq!(valid, 4);

    // missing required (header, body field), wrong type, pattern, enum, additionalProperties.
    one(
        &send(&mut c, "GET", "/pets", "", ""),
        "header",
        "X-Request-Id",
        "",
    );
    one(
        &send(&mut c, "GET", "/pets", "X-Request-Id: nothex!!\r\n", ""),
        "header",
        "X-Request-Id",
        "",
    );
    one(
        &send(&mut c, "GET", "/pets?status=lost", id, ""),
        "query",
        "status",
        "",
    );
    one(
        &json_post(&mut c, "/pets", r#"{"tag":"x"}"#),
        "body",
        "",
        "",
    );
    one(
        &json_post(&mut c, "/pets", r#"{"name":"a","age":"old"}"#),
        "body",
        "",
        "/age",
    );
    one(
        &json_post(&mut c, "/pets", r#"{"name":"a","kind":"cat"}"#),
        "body",
        "",
        "/kind",
    );
    one(
        &json_post(&mut c, "/pets", r#"{"name":"a","dims":[1,"x"]}"#),
        "body",
        "",
        "/dims/1",
    );
    one(
        &json_post(&mut c, "/pets", r#"{"name":"a","colour":"red"}"#),
        "body",
        "",
        "",
    );
    let r = send(
        &mut c,
        "POST",
        "/pets",
        &format!("Content-Type: {form}\r\n"),
        "name=rex&age=x",
    );
    one(&r, "body", "", "/age");
    one(&send(&mut c, "GET", "/pets/0", "", ""), "path", "petId", "");
    assert_eq!(
        o.request_count(),
        valid,
        "rejected requests never reach the origin"
    );

    // Monitor: the same failures are forwarded and counted.
    assert_eq!(
        send(&mut c, "GET", "/mon/pets?status=lost", "", "").status,
        200
    );
    assert_eq!(json_post(&mut c, "/mon/pets", r#"{"name":5}"#).status, 200);
    assert_eq!(o.request_count(), valid + 2);
    let samples = scrape_until(status, Duration::from_secs(5), |s| {
        value(
            s,
            "ringway_api_invalid_requests_total",
            &[("api", "m31"), ("action", "forwarded")],
        ) == 2.0
    });
    let rejected = value(
        &samples,
        "ringway_api_invalid_requests_total",
        &[("api", "p31"), ("action", "rejected")],
    );
    assert_eq!(rejected, 10.0);
}

/// GitHub's REST description (1223 operations): each operation's path, filled in, reaches the
/// origin through its own route (checked in the per-route metrics), and validation passes
/// good bodies and stops bad ones.
#[test]
fn github_rest_description_every_operation_routed() {
    let out = Command::new("gzip")
        .args(["-dc", &doc_path("github/api.github.com.json.gz")])
        .output()
        .expect("gzip (Debian package gzip) unpacks the GitHub document");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8 document");
    let doc: Value = serde_json::from_str(&text).expect("JSON document");
    let spec = TempFile::new(&text);
    let o = Origin::named("o");
    let cfg = config(
        o.addr,
        &format!(
            "{}{}",
            api("gh", spec.path_str(), "validate = \"off\""),
            api("ghv", spec.path_str(), "base_path = \"/v\"")
        ),
    );
    let gw = Gateway::start(&cfg);
    let status = ops::listener(&gw.stderr, "status");
    let mut c = gw.client();
    let mut sent = 0;
    // Route name -> requests it should have served. Templates the router cannot tell apart
    // (GitHub has `compare/{basehead}` and `compare/{base}...{head}`) go to the first.
    let mut want: std::collections::BTreeMap<String, f64> = Default::default();
    let mut first_of: std::collections::HashMap<(String, String), String> = Default::default();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let Some(id) = op.get("operationId").and_then(Value::as_str) else {
                continue;
            };
            // Templated segments get a value no static segment has.
            let mut concrete = String::new();
            let mut shape = String::new();
            for seg in path.split('/').skip(1) {
                concrete.push('/');
                shape.push('/');
                if seg.contains('{') {
                    concrete.push_str("v1x");
                    shape.push_str("{}");
                } else {
                    concrete.push_str(seg);
                    shape.push_str(seg);
                }
            }
            let m = method.to_ascii_uppercase();
            let r = c.request(format!(
                "{m} {concrete} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
            ));
            assert_eq!(r.status, 200, "{m} {concrete} ({id}): {}", r.body_str());
            assert_eq!(o.last_request().target, concrete);
            sent += 1;
            let route = first_of
                .entry((m, shape))
                .or_insert_with(|| format!("gh.{id}"))
                .clone();
            *want.entry(route).or_default() += 1.0;
        }
    }
    assert_eq!(sent, 1223);
    assert_eq!(o.request_count(), sent);
    assert!(want.len() >= 1220, "{} distinct routes", want.len());
    let mut samples = Vec::new();
    let all = wait_until(Duration::from_secs(10), || {
        samples = scrape(status);
        value(&samples, "ringway_http_requests_total", &[("code", "2xx")]) >= sent as f64
    });
    assert!(all);
    for (name, n) in &want {
        assert_eq!(
            value(&samples, "ringway_http_requests_total", &[("route", name)]),
            *n,
            "route {name}"
        );
    }

    // Validation on the same document: issues.create needs a title; a label list of strings.
    let before = o.request_count();
    let issue = r#"{"title":"Found a bug","body":"x","labels":["bug"]}"#;
    assert_eq!(
        json_post(&mut c, "/v/repos/octo/hello/issues", issue).status,
        200
    );
    assert_eq!(o.last_request().body, issue.as_bytes());
    one(
        &json_post(&mut c, "/v/repos/octo/hello/issues", r#"{"body":"x"}"#),
        "body",
        "",
        "",
    );
    one(
        &json_post(
            &mut c,
            "/v/repos/octo/hello/issues",
            r#"{"title":"t","assignees":"me"}"#,
        ),
        "body",
        "",
        "/assignees",
    );
    // per_page is an integer; state an enum.
    one(
        &send(
            &mut c,
            "GET",
            "/v/repos/octo/hello/issues?per_page=many",
            "",
            "",
        ),
        "query",
        "per_page",
        "",
    );
    one(
        &send(
            &mut c,
            "GET",
            "/v/repos/octo/hello/issues?state=gone",
            "",
            "",
        ),
        "query",
        "state",
        "",
    );
    assert_eq!(
        send(
            &mut c,
            "GET",
            "/v/repos/octo/hello/issues?state=open&per_page=5",
            "",
            ""
        )
        .status,
        200
    );
    assert_eq!(o.request_count(), before + 2);
}

/// Versions by path and by header; a deprecated version carries Deprecation, Sunset and Link
/// and its calls are counted per consumer.
#[test]
fn versions_deprecation_headers_and_per_consumer_counts() {
    let o = Origin::named("o");
    let spec = doc_path("oai/petstore.yaml");
    let auth = "[apis.plugins.key-auth]\n";
    let apis = format!(
        "{}{}{}{}[[consumers]]\nusername = \"alice\"\nplugins = {{ key-auth = {{ key = \"alice-key\" }} }}\n\n",
        api(
            "pets",
            &spec,
            &format!("version = \"v1\"\nversion_by = \"path\"\ndeprecated = \"2026-01-01\"\nsunset = \"2027-06-30\"\n{auth}")
        ),
        api("pets", &spec, &format!("version = \"v2\"\nversion_by = \"path\"\ndefault = true\n{auth}")),
        api(
            "hp",
            &spec,
            "base_path = \"/h\"\nversion = \"1\"\nversion_by = \"header:Accept-Version\"\ndeprecated = true\nsuccessor = \"https://example.com/docs/v2\""
        ),
        api("hp", &spec, "base_path = \"/h\"\nversion = \"2\"\nversion_by = \"header:Accept-Version\"\ndefault = true"),
    );
    let gw = Gateway::start(&config(o.addr, &apis));
    let status = ops::listener(&gw.stderr, "status");
    let mut c = gw.client();
    let key = "apikey: alice-key\r\n";
    let r = send(&mut c, "GET", "/v1/pets", key, "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Deprecation"), Some("@1767225600"));
    assert_eq!(r.header("Sunset"), Some("Wed, 30 Jun 2027 00:00:00 GMT"));
    assert_eq!(r.header("Link"), Some("</v2>; rel=\"successor-version\""));
    assert_eq!(send(&mut c, "GET", "/v1/pets/7", key, "").status, 200);
    assert_eq!(send(&mut c, "GET", "/v1/pets", "", "").status, 401);
    for path in ["/v2/pets", "/pets", "/pets/7"] {
        let r = send(&mut c, "GET", path, key, "");
        assert_eq!(r.status, 200, "{path}");
        assert!(!r.has_header("Deprecation"), "{path}");
    }
    // Validation still applies under the version prefix.
    one(
        &send(&mut c, "GET", "/v1/pets?limit=x", key, ""),
        "query",
        "limit",
        "",
    );

    let r = send(&mut c, "GET", "/h/pets", "Accept-Version: 1\r\n", "");
    assert_eq!(r.header("Deprecation"), Some("@0"));
    assert_eq!(
        r.header("Link"),
        Some("<https://example.com/docs/v2>; rel=\"successor-version\"")
    );
    assert!(!send(&mut c, "GET", "/h/pets", "", "").has_header("Deprecation"));
    assert!(!send(&mut c, "GET", "/h/pets", "Accept-Version: 2\r\n", "").has_header("Deprecation"));

    let samples = scrape_until(status, Duration::from_secs(5), |s| {
        value(
            s,
            "ringway_api_deprecated_requests_total",
            &[("api", "pets@v1"), ("consumer", "alice")],
        ) == 3.0
    });
    // The 401 before any consumer was known counts as anonymous.
    let v1_anon = value(
        &samples,
        "ringway_api_deprecated_requests_total",
        &[("api", "pets@v1"), ("consumer", "")],
    );
    assert_eq!(v1_anon, 1.0);
    let anon = value(
        &samples,
        "ringway_api_deprecated_requests_total",
        &[("api", "hp@1"), ("consumer", "")],
    );
    assert_eq!(anon, 1.0);
}

#[test]
fn version_config_errors_name_the_key() {
    let spec = doc_path("oai/petstore.yaml");
    let base = format!(
        "{}{}",
        server(&[]),
        upstream("backend", &[closed_port()], "")
    );
    let out = check_config(&format!(
        "{base}{}{}",
        api("p", &spec, "version = \"1\""),
        api("p", &spec, "version = \"2\"")
    ));
    assert!(out.stderr.contains("apis[1].version_by"), "{}", out.all());
    let out = check_config(&format!(
        "{base}{}",
        api(
            "p",
            &spec,
            "version = \"1\"\nversion_by = \"path\"\nsunset = \"June\""
        )
    ));
    assert!(out.stderr.contains("apis[0].sunset"), "{}", out.all());
}
