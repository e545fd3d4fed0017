//! Final output: the wrk-style human summary and the `--json` object (stable snake_case keys).
//! Owns formatting only; must not measure anything or decide exit codes.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::args::LoadConfig;
use crate::hist::{us, Stats, Summary};
use crate::worker::RunResult;

#[derive(Serialize, serde::Deserialize)]
pub struct JsonReport {
    pub url: String,
    pub mode: String,
    pub threads: usize,
    pub connections: usize,
    pub pipeline: usize,
    pub rate: Option<f64>,
    pub keepalive: bool,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub requests: u64,
    pub bytes: u64,
    pub rps: f64,
    pub bytes_per_s: f64,
    pub errors: JsonErrors,
    pub status_counts: BTreeMap<String, u64>,
    /// From actual send to response end.
    pub latency_uncorrected_us: Summary,
    /// Open loop only (null in closed loop): from intended send time to response end.
    pub latency_corrected_us: Option<Summary>,
    /// Open loop only: how long after its due time each request left, over the requests whose
    /// connection was free in time (the pacer's own error).
    #[serde(default)]
    pub schedule_error_us: Option<Summary>,
    /// Open loop: requests whose connection was still busy with the previous one when due.
    #[serde(default)]
    pub late_sends: u64,
}

#[derive(Serialize, serde::Deserialize)]
pub struct JsonErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    /// Responses outside 2xx/3xx, by status code.
    pub status: BTreeMap<String, u64>,
    pub total: u64,
}

pub fn json(cfg: &LoadConfig, run: &RunResult) -> Result<String, String> {
    serde_json::to_string(&summarise(cfg, run)).map_err(|e| format!("json: {e}"))
}

pub fn summarise(cfg: &LoadConfig, run: &RunResult) -> JsonReport {
    let s = &run.stats;
    let secs = run.elapsed.as_secs_f64().max(1e-9);
    JsonReport {
        url: cfg.label.clone(),
        mode: if cfg.rate.is_some() { "open" } else { "closed" }.to_string(),
        threads: cfg.threads,
        connections: cfg.connections,
        pipeline: cfg.pipeline,
        rate: cfg.rate,
        keepalive: cfg.keepalive,
        duration_s: secs,
        warmup_s: cfg.warmup.as_secs_f64(),
        requests: s.requests,
        bytes: s.bytes,
        rps: s.requests as f64 / secs,
        bytes_per_s: s.bytes as f64 / secs,
        errors: JsonErrors {
            connect: s.connect,
            read: s.read,
            write: s.write,
            timeout: s.timeout,
            status: s.bad_statuses().map(|(c, n)| (c.to_string(), n)).collect(),
            total: s.total_errors(),
        },
        status_counts: s.statuses().map(|(c, n)| (c.to_string(), n)).collect(),
        latency_uncorrected_us: Summary::of(&s.uncorrected),
        latency_corrected_us: s.corrected.as_ref().map(Summary::of),
        schedule_error_us: s.schedule.as_ref().map(Summary::of),
        late_sends: s.late,
    }
}

pub fn fmt_us(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.2}s", v / 1_000_000.0)
    } else if v >= 1_000.0 {
        format!("{:.2}ms", v / 1_000.0)
    } else {
        format!("{v:.2}us")
    }
}

pub fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.2}{}", UNITS[i])
}

fn latency_block(out: &mut String, title: &str, h: &hdrhistogram::Histogram<u64>, spectrum: bool) {
    let s = Summary::of(h);
    let _ = writeln!(out, "  {title}");
    let _ = writeln!(out, "    Thread Stats   Avg      Stdev     Max   +/- Stdev");
    let _ = writeln!(
        out,
        "      Latency {:>9} {:>9} {:>9} {:>8.2}%",
        fmt_us(s.mean),
        fmt_us(s.stdev),
        fmt_us(s.max),
        s.within_stdev_pct
    );
    let _ = writeln!(out, "    Latency Distribution");
    let rows = [
        ("min", s.min),
        ("50%", s.p50),
        ("75%", s.p75),
        ("90%", s.p90),
        ("99%", s.p99),
        ("99.9%", s.p99_9),
        ("99.99%", s.p99_99),
        ("max", s.max),
    ];
    for (name, v) in rows {
        let _ = writeln!(out, "     {name:>7} {:>10}", fmt_us(v));
    }
    if spectrum && !h.is_empty() {
        let _ = writeln!(out, "    Detailed Percentile spectrum:");
        let _ = writeln!(
            out,
            "         Value   Percentile   TotalCount 1/(1-Percentile)"
        );
        let mut total = 0u64;
        for v in h.iter_quantiles(1) {
            total += v.count_since_last_iteration();
            let p = v.quantile_iterated_to();
            let inv = if p < 1.0 {
                format!("{:12.2}", 1.0 / (1.0 - p))
            } else {
                "         inf".to_string()
            };
            let _ = writeln!(
                out,
                "    {:>10} {:12.6} {:12} {inv}",
                fmt_us(us(v.value_iterated_to())),
                p,
                total
            );
        }
    }
}

pub fn human(cfg: &LoadConfig, run: &RunResult) -> String {
    let s: &Stats = &run.stats;
    let secs = run.elapsed.as_secs_f64().max(1e-9);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Running {} test @ {}",
        fmt_secs(cfg.duration.as_secs_f64()),
        cfg.label
    );
    let mode = match cfg.rate {
        Some(r) => format!("open loop, {r} req/s"),
        None => format!("closed loop, pipeline {}", cfg.pipeline),
    };
    let ka = if cfg.keepalive { "" } else { ", no keep-alive" };
    let _ = writeln!(
        out,
        "  {} threads and {} connections ({mode}{ka})",
        cfg.threads, cfg.connections
    );
    match &s.corrected {
        Some(c) => {
            latency_block(
                &mut out,
                "Latency, corrected (from intended send time):",
                c,
                cfg.latency,
            );
            latency_block(
                &mut out,
                "Latency, uncorrected (from actual send time):",
                &s.uncorrected,
                cfg.latency,
            );
        }
        None => latency_block(&mut out, "Latency:", &s.uncorrected, cfg.latency),
    }
    if let Some(h) = s.schedule.as_ref().filter(|h| !h.is_empty()) {
        let e = Summary::of(h);
        let _ = writeln!(
            out,
            "  Schedule error (send after due time): p50 {}, p99 {}, p99.9 {}, max {}; {} sends late (connection busy)",
            fmt_us(e.p50),
            fmt_us(e.p99),
            fmt_us(e.p99_9),
            fmt_us(e.max),
            s.late
        );
    }
    let _ = writeln!(
        out,
        "  {} requests in {:.2}s, {} read",
        s.requests,
        secs,
        fmt_bytes(s.bytes as f64)
    );
    let bad: u64 = s.bad_statuses().map(|(_, n)| n).sum();
    if bad > 0 {
        let codes: Vec<String> = s.bad_statuses().map(|(c, n)| format!("{c}: {n}")).collect();
        let _ = writeln!(
            out,
            "  Non-2xx or 3xx responses: {bad} ({})",
            codes.join(", ")
        );
    }
    if s.socket_errors() > 0 {
        let _ = writeln!(
            out,
            "  Socket errors: connect {}, read {}, write {}, timeout {}",
            s.connect, s.read, s.write, s.timeout
        );
    }
    let _ = writeln!(out, "Requests/sec: {:>10.2}", s.requests as f64 / secs);
    let _ = writeln!(
        out,
        "Transfer/sec: {:>10}",
        fmt_bytes(s.bytes as f64 / secs)
    );
    out
}

fn fmt_secs(v: f64) -> String {
    if v >= 60.0 && v % 60.0 == 0.0 {
        format!("{}m", v / 60.0)
    } else if v < 1.0 {
        format!("{}ms", (v * 1000.0).round())
    } else {
        format!("{v}s")
    }
}
