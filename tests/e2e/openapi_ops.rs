//! `[[apis]]` around the request path: `ringway check` naming a bad document's pointer and the
//! routes CLI, the admin API putting a document inline, alert rules and documentation pages.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::prometheus::{scrape_until, value};
use crate::harness::*;
use crate::openapi::{api, doc_path, json_post, one, send};

#[test]
fn check_names_the_document_pointer_and_cli_prints_routes() {
    let bad = TempFile::new(
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths:\n  /pets:\n    get:\n      parameters:\n        - {name: limit, in: body}\n      responses: {}\n",
    );
    let cfg = format!(
        "{}{}{}",
        server(&[]),
        upstream("backend", &[closed_port()], ""),
        api("pets", bad.path_str(), "")
    );
    let out = check_config(&cfg);
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("apis[0].spec: #/paths/~1pets/get/parameters/0: \"in\" must be"),
        "{}",
        out.all()
    );
    let out = run_cli(
        &[
            "openapi",
            "routes",
            &doc_path("oai/petstore.yaml"),
            "--name",
            "pets",
            "--base-path",
            "/v1",
        ],
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{}", out.all());
    let t: toml::Value = toml::from_str(&out.stdout).expect("TOML");
    let routes = t["routes"].as_array().expect("routes");
    let rows: Vec<(String, String, String)> = routes
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").into(),
                r["methods"][0].as_str().unwrap_or("").into(),
                r["paths"][0].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("pets.listPets".into(), "GET".into(), "/v1/pets".into()),
            ("pets.createPets".into(), "POST".into(), "/v1/pets".into()),
            (
                "pets.showPetById".into(),
                "GET".into(),
                "/v1/pets/{petId}".into()
            ),
        ]
    );
}

/// The admin API puts an API with its document inline; each put or delete is one generation.
#[test]
fn admin_put_api_with_inline_document_is_one_generation() {
    use crate::harness::ops::{http, Proc};
    const KEY: &str = "admin-key-openapi-0123456789";
    let o = Origin::named("o");
    let cfg = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\nkey = \"{KEY}\"\n\n{}",
        server(&[("workers", "2")]),
        upstream("backend", &[o.addr], "")
    );
    let p = Proc::start("openapi-admin", &cfg);
    let adm = ops::listener(&p.logs, "admin");
    let call = |method: &str, path: &str, body: &str| -> (u16, Value) {
        let (code, text) = http(
            adm,
            method,
            path,
            &[("X-API-KEY", KEY), ("Content-Type", "application/json")],
            body,
        );
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    };
    let generation = || call("GET", "/apisix/admin/status", "").1["config_generation"].as_u64();
    let yaml = std::fs::read_to_string(doc_path("oai/petstore.yaml")).expect("petstore");
    let put = |doc: Value| {
        let body = serde_json::json!({"upstream": "backend", "base_path": "/v1", "document": doc});
        call("PUT", "/apisix/admin/apis/pets", &body.to_string())
    };
    let g0 = generation().expect("generation");
    // As YAML text first.
    let (code, v) = put(Value::String(yaml.clone()));
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["config_generation"].as_u64(), Some(g0 + 1));
    let mut c = Client::connect(p.addr);
    assert_eq!(send(&mut c, "GET", "/v1/pets?limit=3", "", "").status, 200);
    assert_eq!(
        json_post(&mut c, "/v1/pets", r#"{"id":1,"name":"a"}"#).status,
        200
    );
    one(
        &json_post(&mut c, "/v1/pets", r#"{"id":1}"#),
        "body",
        "",
        "",
    );

    // Replaced by a document without createPets, as a JSON object: one more generation.
    let mut doc = petstore_json();
    doc["paths"]["/pets"]
        .as_object_mut()
        .expect("/pets")
        .remove("post");
    let (code, v) = put(doc.clone());
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["config_generation"].as_u64(), Some(g0 + 2));
    let r = json_post(
        &mut Client::connect(p.addr),
        "/v1/pets",
        r#"{"id":1,"name":"a"}"#,
    );
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET")));

    // A bad document is refused with its pointer and changes nothing.
    doc["paths"]["/pets"]["get"]["parameters"][0]["in"] = Value::from("body");
    let (code, v) = put(doc);
    assert_eq!(code, 400);
    let msg = v.to_string();
    assert!(
        msg.contains("apis/pets.spec: #/paths/~1pets/get/parameters/0"),
        "{msg}"
    );
    assert_eq!(generation(), Some(g0 + 2));

    let (code, _) = call("DELETE", "/apisix/admin/apis/pets", "");
    assert_eq!(code, 200);
    assert_eq!(generation(), Some(g0 + 3));
    assert_eq!(
        send(&mut Client::connect(p.addr), "GET", "/v1/pets", "", "").status,
        404
    );
}

/// oai/petstore.yaml transcribed to JSON (responses shortened): the admin API also takes a
/// document as an object.
fn petstore_json() -> Value {
    serde_json::json!({
        "openapi": "3.0.0",
        "info": {"version": "1.0.0", "title": "Swagger Petstore", "license": {"name": "MIT"}},
        "paths": {
            "/pets": {
                "get": {
                    "operationId": "listPets",
                    "parameters": [{"name": "limit", "in": "query", "required": false,
                                    "schema": {"type": "integer", "maximum": 100, "format": "int32"}}],
                    "responses": {"200": {"description": "A paged array of pets"}}
                },
                "post": {
                    "operationId": "createPets",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}},
                    "responses": {"201": {"description": "Null response"}}
                }
            },
            "/pets/{petId}": {
                "get": {
                    "operationId": "showPetById",
                    "parameters": [{"name": "petId", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "ok"}}
                }
            }
        },
        "components": {"schemas": {"Pet": {"type": "object", "required": ["id", "name"],
            "properties": {"id": {"type": "integer", "format": "int64"}, "name": {"type": "string"}, "tag": {"type": "string"}}}}}
    })
}

/// The gateway exports per-API series and `ringway alerts` writes rules over them (promtool
/// accepts them, when installed); the admin listener serves each
/// API's document as exposed and an HTML index.
#[test]
fn slo_alert_rules_and_documentation_pages() {
    use crate::harness::ops::Proc;
    let o = Origin::named("o");
    let spec = doc_path("oai/petstore.yaml");
    let cfg = format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\nkey = \"admin-key-slo-0123456789\"\n\n{}{}{}[[consumers]]\nusername = \"bob\"\nplugins = {{ key-auth = {{ key = \"bob-key\" }} }}\n\n",
        server(&[]),
        upstream("backend", &[o.addr], ""),
        api(
            "pets",
            &spec,
            "version = \"v1\"\nversion_by = \"path\"\nsunset = \"2027-06-30\"\n[apis.slo]\nlatency_p99 = \"300ms\"\nerror_ratio = 0.01\n[apis.plugins.key-auth]\n"
        ),
        api("pets", &spec, "version = \"v2\"\nversion_by = \"path\"\ndefault = true"),
    );
    let p = Proc::start("openapi-slo", &cfg);
    let status = ops::listener(&p.logs, "status");
    let adm = ops::listener(&p.logs, "admin");
    let mut c = Client::connect(p.addr);
    for path in ["/v1/pets", "/v1/pets/1", "/v2/pets", "/pets/2"] {
        assert_eq!(
            send(&mut c, "GET", path, "apikey: bob-key\r\n", "").status,
            200,
            "{path}"
        );
    }
    assert_eq!(
        send(&mut c, "DELETE", "/v1/pets", "apikey: bob-key\r\n", "").status,
        405
    );

    let out = run_cli(
        &["alerts", "-c", p.path.to_str().expect("path")],
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{}", out.all());
    let rules: Value = serde_saphyr::from_str(&out.stdout).expect("YAML rules");
    let groups = rules["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "only pets@v1 has an slo");
    let list = groups[0]["rules"].as_array().expect("rules");
    let names: Vec<&str> = list
        .iter()
        .map(|r| r["record"].as_str().or(r["alert"].as_str()).unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [
            "ringway:api_requests:rate5m",
            "ringway:api_errors:rate5m",
            "ringway:api_latency_p99:5m",
            "RingwayApiLatencyP99High",
            "RingwayApiErrorRatioHigh"
        ]
    );
    assert!(list[3]["expr"].as_str().unwrap_or("").ends_with("> 0.3"));
    // The rules read the gateway's own per-API series, which sum exactly that API's routes:
    // two GETs and the 405 for pets@v1, two GETs for pets@v2.
    let expr = list[0]["expr"].as_str().expect("expr");
    assert!(
        expr.contains("ringway_api_requests_total{api=\"pets@v1\"}"),
        "{expr}"
    );
    let samples = scrape_until(status, Duration::from_secs(5), |s| {
        value(s, "ringway_api_requests_total", &[("api", "pets@v1")]) == 3.0
            && value(s, "ringway_api_requests_total", &[("api", "pets@v2")]) == 2.0
    });
    let v1 = [("api", "pets@v1")];
    assert_eq!(
        value(
            &samples,
            "ringway_api_requests_total",
            &[("api", "pets@v1"), ("code", "4xx")]
        ),
        1.0
    );
    assert_eq!(value(&samples, "ringway_api_errors_total", &v1), 0.0);
    assert_eq!(
        value(&samples, "ringway_api_request_duration_seconds_count", &v1),
        3.0
    );
    if let Ok(check) = Command::new("promtool")
        .args(["check", "rules", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        let mut check = check;
        check
            .stdin
            .take()
            .expect("stdin")
            .write_all(out.stdout.as_bytes())
            .expect("write");
        assert!(
            check.wait().expect("promtool").success(),
            "promtool refused:\n{}",
            out.stdout
        );
    }

    // Documentation on the admin listener.
    let (code, html) = ops::get(adm, "/apis/");
    assert_eq!(code, 200);
    assert!(html.starts_with("<!doctype html>"), "{html}");
    for want in [
        "<td>pets</td><td>v1</td>",
        "sunset Wed, 30 Jun 2027 00:00:00 GMT",
        "href=\"/apis/pets/v2/openapi.json\"",
        "<td>/v2</td>",
        "default",
    ] {
        assert!(html.contains(want), "{want} in {html}");
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
    let (code, doc) = ops::get(adm, "/apis/pets/v1/openapi.json");
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&doc).expect("JSON");
    assert_eq!(doc["servers"][0]["url"], "/v1");
    assert_eq!(
        doc["components"]["securitySchemes"]["ringway-key-auth"]["name"],
        "apikey"
    );
    assert_eq!(
        doc["security"][0]["ringway-key-auth"],
        serde_json::json!([])
    );
    assert_eq!(doc["paths"]["/pets"]["get"]["operationId"], "listPets");
    let (code, doc) = ops::get(adm, "/apis/pets/default/openapi.json");
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&doc).expect("JSON");
    assert_eq!(doc["servers"][0]["url"], "/v2");
    assert!(doc.get("security").is_none());
    assert_eq!(ops::get(adm, "/apis/pets/v9/openapi.json").0, 404);
}
