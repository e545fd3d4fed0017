//! config/prometheus-alerts.yml and config/grafana-dashboard.json: every metric they query is in
//! names.rs and in a live /metrics scrape; well formed (promtool check rules when installed).

use crate::harness::{ops, prometheus};

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::time::Duration;

use crate::harness::{route, server, upstream, wait_until, Gateway, Origin, Resp};

fn repo_file(rel: &str) -> String {
    let path = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `ringway_*` token in `text`.
fn metric_tokens(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("ringway_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The names declared in src/metrics/names.rs.
fn declared() -> BTreeSet<String> {
    metric_tokens(&repo_file("src/metrics/names.rs"))
}

/// The family a series name belongs to (`_bucket`/`_sum`/`_count` of a declared histogram).
fn family<'a>(name: &'a str, declared: &BTreeSet<String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if declared.contains(base) {
                return base;
            }
        }
    }
    name
}

/// The `expr:` values of the alerts file, checked line by line (no YAML dependency): every
/// rule has an alert name, one expr, a severity label and annotations.
fn alert_exprs(yml: &str) -> Vec<String> {
    assert!(!yml.contains('\t'), "YAML must not contain tabs");
    assert!(yml.lines().any(|l| l == "groups:"), "top-level `groups:`");
    let mut names = BTreeSet::new();
    let mut exprs = Vec::new();
    let mut severities = 0;
    let mut annotations = 0;
    for l in yml.lines() {
        let t = l.trim_start();
        if let Some(n) = t.strip_prefix("- alert: ") {
            assert!(names.insert(n.to_string()), "duplicate alert {n}");
        } else if let Some(e) = t.strip_prefix("expr: ") {
            assert!(
                !e.starts_with('|') && !e.starts_with('>'),
                "single-line exprs only"
            );
            exprs.push(e.to_string());
        } else if t.starts_with("severity: ") {
            severities += 1;
        } else if t == "annotations:" {
            annotations += 1;
        }
    }
    assert!(names.len() >= 4, "at least four alerts");
    assert_eq!(names.len(), exprs.len(), "one expr per alert");
    assert_eq!(names.len(), severities, "a severity per alert");
    assert_eq!(names.len(), annotations, "annotations per alert");
    exprs
}

/// Every `expr` in the dashboard's panels, and the panel titles; checks ids and layout.
fn dashboard_exprs(doc: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    let panels = doc["panels"].as_array().expect("panels array");
    let mut ids = BTreeSet::new();
    let (mut exprs, mut titles) = (Vec::new(), Vec::new());
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("numeric id")),
            "unique ids"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "gridPos: {p}");
        titles.push(p["title"].as_str().expect("title").to_string());
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel without queries: {p}");
        for t in targets {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    (exprs, titles)
}

#[test]
fn alerts_and_dashboard_use_exposed_metric_names() {
    let declared = declared();
    assert!(declared.len() >= 15, "{declared:?}");
    let yml = repo_file("config/prometheus-alerts.yml");
    let exprs = alert_exprs(&yml);
    let dash: serde_json::Value =
        serde_json::from_str(&repo_file("config/grafana-dashboard.json")).expect("dashboard JSON");
    let (panel_exprs, titles) = dashboard_exprs(&dash);
    let vars = dash["templating"]["list"].to_string();

    let alert_names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_tokens(e)).collect();
    let dash_names: BTreeSet<String> = panel_exprs
        .iter()
        .map(String::as_str)
        .chain([vars.as_str()])
        .flat_map(metric_tokens)
        .collect();
    // What the issue asks each file to cover.
    for want in [
        "ringway_http_requests_total",
        "ringway_http_request_duration_seconds_bucket",
        "ringway_upstream_node_up",
        "ringway_rate_limited_total",
    ] {
        assert!(alert_names.contains(want), "alerts miss {want}");
        assert!(dash_names.contains(want), "dashboard misses {want}");
    }
    assert!(dash_names.contains("ringway_connections_active"));
    assert!(exprs.iter().any(|e| e.contains("histogram_quantile(0.99")));
    assert!(panel_exprs
        .iter()
        .any(|e| e.contains("histogram_quantile(0.5")));
    assert!(titles.len() >= 5);

    let referenced: BTreeSet<String> = alert_names.union(&dash_names).cloned().collect();
    for name in &referenced {
        let fam = family(name, &declared);
        assert!(
            declared.contains(fam),
            "{name} is not in src/metrics/names.rs"
        );
    }

    // A gateway whose scrape has a sample of every family: routed traffic, a rate-limit
    // rejection, an upstream with an active check (one node live, one closed).
    let origin = Origin::start("o", |_| Resp::text(200, "ok").into());
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let checks = "[upstreams.checks.active]\ntype = \"tcp\"\n\
        healthy = { interval = \"100ms\" }\nunhealthy = { interval = \"100ms\" }\n";
    let cfg = format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
        server(&[("workers", "2")]),
        upstream("backend", &[origin.addr, closed], checks),
        route(
            "limited",
            &["/*"],
            "backend",
            "[routes.plugins.limit-count]\ncount = 2\ntime_window = 60\nrejected_code = 429\n"
        )
    );
    let gw = Gateway::start(&cfg);
    let status = ops::listener(&gw.stderr, "status");
    let codes: Vec<u16> = (0..5).map(|_| gw.client().get("/x").status).collect();
    assert!(codes.contains(&429), "{codes:?}");
    let mut samples = Vec::new();
    let ok = wait_until(Duration::from_secs(10), || {
        samples = prometheus::scrape(status);
        referenced
            .iter()
            .all(|n| samples.iter().any(|s| &s.name == n))
    });
    let seen: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    let missing: Vec<&String> = referenced
        .iter()
        .filter(|n| !seen.contains(n.as_str()))
        .collect();
    assert!(ok, "referenced but not in /metrics: {missing:?}");
    assert!(
        prometheus::value(
            &samples,
            "ringway_rate_limited_total",
            &[("plugin", "limit-count")]
        ) >= 1.0
    );
}

#[test]
fn promtool_accepts_the_alert_rules_when_installed() {
    let path = format!(
        "{}/config/prometheus-alerts.yml",
        env!("CARGO_MANIFEST_DIR")
    );
    let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "rules", &path])
        .output()
    else {
        // Not installed: the line-based checks in the other test still ran.
        alert_exprs(&repo_file("config/prometheus-alerts.yml"));
        return;
    };
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
