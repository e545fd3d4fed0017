//! `[[apis]]` versions chosen by media type (`version_by = "media_type"`), and a deprecated
//! version's Deprecation / Sunset / Link headers on the gateway's own answers (400, 404, 405,
//! 429), not only on the upstream's.

use crate::harness::*;
use crate::openapi::{doc_path, one, send};

/// Two versions of the OAI petstore on two origins (the origin names the version that served).
fn two_versions(version_by: &str, v1_extra: &str) -> (Origin, Origin, Gateway) {
    let (o1, o2) = (Origin::named("o1"), Origin::named("o2"));
    let spec = doc_path("oai/petstore.yaml");
    let cfg = format!(
        "{}{}{}[[apis]]\nname = \"m\"\nspec = \"{spec}\"\nupstream = \"u1\"\nbase_path = \"/m\"\nversion = \"v1\"\nversion_by = \"{version_by}\"\ndeprecated = \"2026-01-01\"\nsunset = \"2027-06-30\"\nsuccessor = \"/docs/v2\"\n{v1_extra}\n\n[[apis]]\nname = \"m\"\nspec = \"{spec}\"\nupstream = \"u2\"\nbase_path = \"/m\"\nversion = \"v2\"\nversion_by = \"{version_by}\"\ndefault = true\n\n",
        server(&[]),
        upstream("u1", &[o1.addr], ""),
        upstream("u2", &[o2.addr], ""),
    );
    let gw = Gateway::start(&cfg);
    (o1, o2, gw)
}

fn notice(r: &Response, what: &str) {
    assert_eq!(r.header("Deprecation"), Some("@1767225600"), "{what}");
    assert_eq!(
        r.header("Sunset"),
        Some("Wed, 30 Jun 2027 00:00:00 GMT"),
        "{what}"
    );
    assert_eq!(
        r.header("Link"),
        Some("</docs/v2>; rel=\"successor-version\""),
        "{what}"
    );
}

#[test]
fn media_type_selects_the_version() {
    let (_o1, _o2, gw) = two_versions("media_type", "");
    let mut c = gw.client();
    for accept in [
        "application/vnd.acme.v1+json",
        "application/json; version=1",
        "text/plain, application/json;version=\"v1\";q=0.5",
    ] {
        let r = send(
            &mut c,
            "GET",
            "/m/pets",
            &format!("Accept: {accept}\r\n"),
            "",
        );
        assert_eq!(
            (r.status, r.header("X-Origin")),
            (200, Some("o1")),
            "{accept}"
        );
        notice(&r, accept);
    }
    // A POST names its version by Content-Type when Accept says nothing of it.
    let r = send(
        &mut c,
        "POST",
        "/m/pets",
        "Accept: */*\r\nContent-Type: application/vnd.acme.v1+json\r\n",
        r#"{"id":1,"name":"a"}"#,
    );
    assert_eq!(r.header("X-Origin"), Some("o1"), "{}", r.body_str());
    for accept in [
        "Accept: application/vnd.acme.v2+json\r\n",
        "Accept: application/json; version=2\r\n",
        "Accept: application/json\r\n",
        "Accept: application/vnd.acme.v3+json\r\n",
        "",
    ] {
        let r = send(&mut c, "GET", "/m/pets/7", accept, "");
        assert_eq!(
            (r.status, r.header("X-Origin")),
            (200, Some("o2")),
            "{accept}"
        );
        assert!(!r.has_header("Deprecation"), "{accept}");
    }
    // Validation applies to the version picked.
    one(
        &send(
            &mut c,
            "GET",
            "/m/pets?limit=x",
            "Accept: application/vnd.acme.v1+json\r\n",
            "",
        ),
        "query",
        "limit",
        "",
    );
}

#[test]
fn media_type_config_error_names_the_choices() {
    let spec = doc_path("oai/petstore.yaml");
    let out = check_config(&format!(
        "{}{}[[apis]]\nname = \"p\"\nspec = \"{spec}\"\nupstream = \"backend\"\nversion = \"1\"\nversion_by = \"mediatype\"\n",
        server(&[]),
        upstream("backend", &[closed_port()], "")
    ));
    assert!(
        out.stderr.contains("apis[0].version_by") && out.stderr.contains("\"media_type\""),
        "{}",
        out.all()
    );
}

#[test]
fn deprecated_version_notice_on_the_gateways_own_answers() {
    let limit = "[apis.plugins.limit-count]\ncount = 2\ntime_window = 60\nrejected_code = 429\n";
    let (o1, _o2, gw) = two_versions("path", limit);
    let mut c = gw.client();
    // 400 from the parameter check (access phase).
    let r = send(&mut c, "GET", "/m/v1/pets?limit=x", "", "");
    one(&r, "query", "limit", "");
    notice(&r, "400 query");
    // 400 from the body check (request_body phase).
    let r = send(
        &mut c,
        "POST",
        "/m/v1/pets",
        "Content-Type: application/json\r\n",
        r#"{"id":"one"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body_str());
    notice(&r, "400 body");
    // 405 on a described path, 404 on an undescribed one under the version's prefix.
    let r = send(&mut c, "DELETE", "/m/v1/pets", "", "");
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET, POST")));
    notice(&r, "405");
    let r = send(&mut c, "GET", "/m/v1/owners", "", "");
    assert_eq!(r.status, 404, "{}", r.body_str());
    notice(&r, "404");
    let r = send(&mut c, "GET", "/m/v2/owners", "", "");
    assert_eq!(r.status, 404);
    assert!(!r.has_header("Deprecation"));
    // 429 from the version's limit, once its count is spent.
    let mut last = None;
    let limited = wait_until(std::time::Duration::from_secs(5), || {
        let r = send(&mut c, "GET", "/m/v1/pets", "", "");
        let done = r.status == 429;
        last = Some(r);
        done
    });
    let r = last.expect("a response");
    assert!(limited, "{} {}", r.status, r.body_str());
    notice(&r, "429");
    // None of the gateway's own answers reached the origin.
    let seen: Vec<(String, String)> = o1
        .requests()
        .into_iter()
        .map(|q| (q.method, q.target))
        .collect();
    assert!(
        seen.iter().all(|(m, t)| m == "GET" && t == "/m/v1/pets"),
        "{seen:?}"
    );
}
