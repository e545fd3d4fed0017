//! Criterion benches for OpenAPI request validation against a real schema (GitHub's REST
//! description, tests/openapi/github): a ~1 KiB `issues/create` JSON body checked (parse +
//! JSON Schema) beside parsing it alone, the parameter checks of `issues/list-for-repo`, and
//! building the whole 1223-operation document (parse + compile every validator).
//! `cargo bench -p ringway-perf --bench openapi`.

use std::hint::black_box;
use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion};
use ringway::openapi::{compile, parse, Document, RequestParts};

fn github() -> String {
    let gz = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/openapi/github/api.github.com.json.gz"
    );
    let out = Command::new("gzip")
        .args(["-dc", gz])
        .output()
        .expect("gzip unpacks the GitHub document");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A realistic 1 KiB issue.
fn body() -> String {
    let text = "Steps to reproduce: open the settings page, change the theme twice and reload. \
                The header keeps the old colours until the cache expires. "
        .repeat(6);
    let b = serde_json::json!({
        "title": "Theme change does not apply to the header until reload",
        "body": text,
        "assignees": ["octocat", "hubot"],
        "milestone": 3,
        "labels": ["bug", "ui", "needs-triage"],
    })
    .to_string();
    assert!((900..1200).contains(&b.len()), "{}", b.len());
    b
}

fn op_index(doc: &Document, id: &str) -> usize {
    doc.ops
        .iter()
        .position(|o| o.operation_id.as_deref() == Some(id))
        .expect("operation")
}

fn validate(c: &mut Criterion) {
    let text = github();
    let doc = parse(&text).expect("document");
    let compiled = compile(&doc).expect("validators");
    let create = compiled.ops[op_index(&doc, "issues/create")].clone();
    let list = compiled.ops[op_index(&doc, "issues/list-for-repo")].clone();
    let body = body();
    let mut out = Vec::new();
    let mut g = c.benchmark_group("openapi_body_1k");
    g.bench_function("validate_parse_and_schema", |b| {
        b.iter(|| {
            out.clear();
            create.check_body(
                Some(b"application/json"),
                black_box(body.as_bytes()),
                &mut out,
            );
            black_box(out.len())
        })
    });
    assert!(out.is_empty(), "{out:?}");
    g.bench_function("parse_only_serde_json", |b| {
        b.iter(|| {
            black_box(
                serde_json::from_slice::<serde_json::Value>(black_box(body.as_bytes())).is_ok(),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("openapi_params");
    let header = |_: &str| None;
    let req = RequestParts {
        path: b"/repos/octo/hello/issues",
        query: b"state=open&labels=bug,ui&sort=updated&direction=desc&per_page=50&page=2",
        header: &header,
    };
    g.bench_function("issues_list_for_repo", |b| {
        b.iter(|| {
            out.clear();
            list.check_head(black_box(&req), &mut out);
            black_box(out.len())
        })
    });
    assert!(out.is_empty(), "{out:?}");
    g.finish();

    let mut g = c.benchmark_group("openapi_build");
    g.sample_size(10);
    g.bench_function("github_1223_operations_parse_and_compile", |b| {
        b.iter(|| {
            let d = parse(black_box(&text)).expect("document");
            black_box(compile(&d).expect("validators").ops.len())
        })
    });
    g.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
