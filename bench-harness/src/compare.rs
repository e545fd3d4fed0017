//! `--compare A.json B.json`: two saved `--json` runs side by side with B/A ratios.
//! Reads files and formats text only; must not run load.

use std::fmt::Write;
use std::path::Path;

use crate::hist::Summary;
use crate::report::{fmt_us, JsonReport};

fn load(path: &Path) -> Result<JsonReport, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(text.trim()).map_err(|e| {
        format!(
            "{} is not a ringway-bench --json report: {e}",
            path.display()
        )
    })
}

fn ratio(a: f64, b: f64) -> String {
    if a == 0.0 {
        if b == 0.0 { "=" } else { "-" }.to_string()
    } else {
        format!("{:.2}x", b / a)
    }
}

fn line(out: &mut String, name: &str, a: String, b: String, r: String) {
    let _ = writeln!(out, "  {name:<22} {a:>14} {b:>14} {r:>9}");
}

fn latency(out: &mut String, title: &str, a: &Summary, b: &Summary) {
    let _ = writeln!(out, "{title}");
    let rows = [
        ("min", a.min, b.min),
        ("p50", a.p50, b.p50),
        ("p90", a.p90, b.p90),
        ("p99", a.p99, b.p99),
        ("p99.9", a.p99_9, b.p99_9),
        ("p99.99", a.p99_99, b.p99_99),
        ("max", a.max, b.max),
        ("mean", a.mean, b.mean),
    ];
    for (name, x, y) in rows {
        line(out, name, fmt_us(x), fmt_us(y), ratio(x, y));
    }
}

/// The side-by-side text; ratios are B/A (above 1.00x: B is higher).
pub fn run(a_path: &Path, b_path: &Path) -> Result<String, String> {
    let (a, b) = (load(a_path)?, load(b_path)?);
    let mut o = String::new();
    let _ = writeln!(o, "A: {} ({})", a_path.display(), a.url);
    let _ = writeln!(o, "B: {} ({})", b_path.display(), b.url);
    let _ = writeln!(o, "  {:<22} {:>14} {:>14} {:>9}", "", "A", "B", "B/A");
    line(
        &mut o,
        "mode",
        a.mode.clone(),
        b.mode.clone(),
        String::new(),
    );
    let conns = |r: &JsonReport| format!("{}t {}c", r.threads, r.connections);
    line(
        &mut o,
        "threads, connections",
        conns(&a),
        conns(&b),
        String::new(),
    );
    let rate = |r: &JsonReport| r.rate.map_or("-".into(), |v| format!("{v}"));
    line(&mut o, "target rate", rate(&a), rate(&b), String::new());
    let num = |v: f64| format!("{v:.1}");
    line(
        &mut o,
        "requests/s",
        num(a.rps),
        num(b.rps),
        ratio(a.rps, b.rps),
    );
    line(
        &mut o,
        "requests",
        a.requests.to_string(),
        b.requests.to_string(),
        ratio(a.requests as f64, b.requests as f64),
    );
    line(
        &mut o,
        "bytes/s",
        num(a.bytes_per_s),
        num(b.bytes_per_s),
        ratio(a.bytes_per_s, b.bytes_per_s),
    );
    let errs = |r: &JsonReport| {
        format!(
            "{} ({}/{}/{}/{})",
            r.errors.total, r.errors.connect, r.errors.read, r.errors.write, r.errors.timeout
        )
    };
    line(
        &mut o,
        "errors (c/r/w/t)",
        errs(&a),
        errs(&b),
        ratio(a.errors.total as f64, b.errors.total as f64),
    );
    latency(
        &mut o,
        "Latency, uncorrected:",
        &a.latency_uncorrected_us,
        &b.latency_uncorrected_us,
    );
    if let (Some(x), Some(y)) = (&a.latency_corrected_us, &b.latency_corrected_us) {
        latency(&mut o, "Latency, corrected:", x, y);
    }
    if let (Some(x), Some(y)) = (&a.schedule_error_us, &b.schedule_error_us) {
        latency(&mut o, "Schedule error:", x, y);
    }
    Ok(o)
}
