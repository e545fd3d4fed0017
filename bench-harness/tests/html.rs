//! `--html`, `--json-out` and `--compare` end to end: a real run against `serve`, the page opened
//! in a real headless Chromium (no console errors, plots carry the run's points), the two saved
//! JSON reports compared.

mod common;

#[allow(dead_code)]
#[path = "../../tests/e2e/harness/chromium.rs"]
mod chromium;

use std::path::PathBuf;
use std::time::Duration;

use common::{json, num, run, Server};

fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench_html");
    std::fs::create_dir_all(&dir).expect("out dir");
    dir
}

#[test]
fn html_report_renders_in_chromium_and_compare_reads_saved_runs() {
    let server = Server::start(&["--delay", "300us"]);
    let dir = out_dir();
    let (page, a_json, b_json) = (
        dir.join("open.html"),
        dir.join("open.json"),
        dir.join("closed.json"),
    );
    let path = |p: &PathBuf| p.to_str().expect("utf-8 path").to_string();
    let out = run(
        &[
            "-t",
            "1",
            "-c",
            "8",
            "-R",
            "2000",
            "-d",
            "2s",
            "--json",
            "--html",
            &path(&page),
            "--json-out",
            &path(&a_json),
            &server.url(),
        ],
        Duration::from_secs(20),
    );
    let v = json(&out);
    let requests = num(&v, &["requests"]);
    // 4,000 were due; half is the floor because a loaded CI box can stall the run for most of a
    // second (seen: 700 ms), and what this test checks is the report, not the pace.
    assert!(requests > 2000.0, "{v}");
    // The file is the same report stdout printed.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&a_json).expect("json-out")).expect("json");
    assert_eq!(saved, v);
    let sched = num(&v, &["schedule_error_us", "count"]);
    assert!(sched > 0.0, "open loop reports its schedule error: {v}");

    let html = std::fs::read_to_string(&page).expect("html written");
    for external in ["src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "page loads something: {external}");
    }

    let mut browser = chromium::Chromium::launch();
    browser.navigate(&format!("file://{}", page.display()));
    let loaded = browser.wait_true(
        "document.readyState === 'complete' && !!document.querySelector('#rate')",
        Duration::from_secs(20),
    );
    assert!(loaded.is_some(), "page never loaded: {:?}", browser.errors);
    // Both latency series (corrected and uncorrected) are drawn, each with its points.
    let series = browser.eval(
        "Array.from(document.querySelectorAll('#latency g.series')).map(g => \
         g.querySelectorAll('circle.pt').length)",
    );
    let counts: Vec<u64> = series
        .as_array()
        .expect("series list")
        .iter()
        .filter_map(|n| n.as_u64())
        .collect();
    assert!(
        counts.len() == 2 && counts.iter().all(|&n| n >= 10),
        "{series}"
    );
    // The uncorrected curve ends at the run's maximum latency, at the 99.9999% edge.
    let last = browser.eval(
        "(() => { const p = document.querySelectorAll('#latency g.series')[1]\
         .querySelectorAll('circle.pt'); const c = p[p.length - 1]; \
         return [Number(c.dataset.x), Number(c.dataset.y)]; })()",
    );
    let max = num(&v, &["latency_uncorrected_us", "max"]);
    let (x, y) = (last[0].as_f64().expect("x"), last[1].as_f64().expect("y"));
    assert!(
        x == 6.0 && (y - max).abs() <= max * 0.01,
        "last point {last} vs max {max}"
    );
    // Every point is drawn inside the plot, the page has real size.
    let inside = browser.eval(
        "(() => { const s = document.querySelector('#latency').getBoundingClientRect(); \
         return s.width > 500 && Array.from(document.querySelectorAll('#latency circle.pt'))\
         .every(c => { const r = c.getBoundingClientRect(); \
         return r.width > 0 && r.left >= s.left && r.right <= s.right \
         && r.top >= s.top && r.bottom <= s.bottom; }); })()",
    );
    assert_eq!(inside, serde_json::Value::Bool(true));
    // The over-time plot adds up to the requests counted (10 slices per second).
    let counted = browser.eval(
        "Array.from(document.querySelectorAll('#rate g.series')[0].querySelectorAll('circle.pt'))\
         .reduce((a, c) => a + Number(c.dataset.y) / 10, 0)",
    );
    assert_eq!(
        counted.as_f64().map(f64::round),
        Some(requests),
        "{counted}"
    );
    let error_rows = browser.eval("document.querySelectorAll('#errors tr').length");
    assert_eq!(
        error_rows.as_u64(),
        Some(5),
        "connect, read, write, timeout, total"
    );
    let params = browser.eval("document.querySelector('#params').innerText");
    assert!(
        params.as_str().is_some_and(|t| t.contains("2000")),
        "{params}"
    );
    assert!(browser.errors.is_empty(), "console: {:?}", browser.errors);
    drop(browser);

    let out = run(
        &[
            "-t",
            "1",
            "-c",
            "8",
            "-d",
            "1s",
            "--json-out",
            &path(&b_json),
            &server.url(),
        ],
        Duration::from_secs(20),
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Requests/sec"));
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&b_json).expect("b")).expect("json");

    let out = run(
        &["--compare", &path(&a_json), &path(&b_json)],
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("requests/s"))
        .unwrap_or_else(|| panic!("no requests/s line: {text}"));
    let ratio = rps_line.split_whitespace().last().expect("ratio");
    let want = format!("{:.2}x", num(&b, &["rps"]) / num(&v, &["rps"]));
    assert_eq!(ratio, want, "{text}");
    assert!(
        text.contains("Latency, uncorrected:") && text.contains("p99.9"),
        "{text}"
    );

    let out = run(
        &["--compare", &path(&a_json), &path(&page)],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a ringway-bench --json report"),
        "{err}"
    );
}
