//! `--html FILE`: one self-contained page (inline SVG and CSS, no script, nothing fetched) with the
//! latency percentile plot, requests/s over time, errors by kind and parameters. Formatting only.

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::args::LoadConfig;
use crate::hist::{us, SLICE};
use crate::report::{fmt_bytes, fmt_us, summarise};
use crate::worker::RunResult;

const W: f64 = 760.0;
const H: f64 = 320.0;
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 40.0;
const TOP: f64 = 20.0;
const RIGHT: f64 = 40.0;
/// The percentile axis ends at 99.9999% (x = 10^6), like HdrHistogram's plotter.
const MAX_NINES: f64 = 6.0;

/// One line of a plot: points in data units, drawn as a polyline plus one circle each.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    /// (x, y, tooltip)
    points: Vec<(f64, f64, String)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Rounds `v` up to 1, 2 or 5 times a power of ten, so axis ticks are readable.
fn nice(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

fn plot(
    id: &str,
    series: &[Series],
    x: (f64, f64, &[(f64, String)]),
    y_label: &str,
    y_fmt: &dyn Fn(f64) -> String,
) -> String {
    let (x0, x1, x_ticks) = x;
    let y_max = nice(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let sx = |v: f64| LEFT + (v - x0) / (x1 - x0).max(1e-12) * pw;
    let sy = |v: f64| TOP + ph - v / y_max * ph;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg id="{id}" width="{W}" height="{H}" viewBox="0 0 {W} {H}">"#
    );
    let _ = write!(
        o,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="frame"/>"#
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let y = sy(v);
        let _ = write!(
            o,
            r#"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{}" y="{:.1}" class="yt">{}</text>"#,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            esc(&y_fmt(v))
        );
    }
    for (v, label) in x_ticks {
        let x = sx(*v);
        let _ = write!(
            o,
            r#"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" class="grid"/><text x="{x:.1}" y="{}" class="xt">{}</text>"#,
            TOP + ph,
            TOP + ph + 16.0,
            esc(label)
        );
    }
    let _ = write!(
        o,
        r#"<text x="14" y="{}" class="yl" transform="rotate(-90 14 {})">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
            .collect();
        let _ = write!(
            o,
            r#"<g class="series" data-name="{}"><polyline points="{}" stroke="{}" class="line"/>"#,
            esc(s.name),
            pts.join(" "),
            s.color
        );
        for p in &s.points {
            let _ = write!(
                o,
                r#"<circle class="pt" cx="{:.1}" cy="{:.1}" r="2.5" fill="{}" data-x="{}" data-y="{}"><title>{}</title></circle>"#,
                sx(p.0),
                sy(p.1),
                s.color,
                p.0,
                p.1,
                esc(&p.2)
            );
        }
        let ly = TOP + 14.0 + 16.0 * i as f64;
        let _ = write!(
            o,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{ly}" class="legend">{}</text></g>"#,
            LEFT + 10.0,
            ly - 9.0,
            s.color,
            LEFT + 26.0,
            esc(s.name)
        );
    }
    o.push_str("</svg>");
    o
}

/// HdrHistogram's percentile-distribution points: x is log10(1/(1-p)), y the latency in us.
fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, f64, String)> {
    let mut out: Vec<(f64, f64, String)> = Vec::new();
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let x = if q >= 1.0 {
            MAX_NINES
        } else {
            (1.0 / (1.0 - q)).log10().min(MAX_NINES)
        };
        let y = us(v.value_iterated_to());
        if out.last().is_some_and(|l| l.0 >= x) {
            continue;
        }
        out.push((x, y, format!("{:.4}%: {}", q * 100.0, fmt_us(y))));
    }
    out
}

fn row(o: &mut String, k: &str, v: &str) {
    let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
}

pub fn page(cfg: &LoadConfig, run: &RunResult) -> String {
    let r = summarise(cfg, run);
    let s = &run.stats;
    let mut o = String::new();
    o.push_str(concat!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<title>ringway-bench report</title><style>",
        "body{font:14px sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0 20px}",
        "th,td{border:1px solid #ccc;padding:3px 10px;text-align:left}td{font-family:monospace}",
        ".frame{fill:none;stroke:#888}.grid{stroke:#e4e4e4}.line{fill:none;stroke-width:1.5}",
        ".xt{font-size:11px;text-anchor:middle}.yt{font-size:11px;text-anchor:end}",
        ".yl,.legend{font-size:12px}.yl{text-anchor:middle}",
        "</style></head><body><h1>ringway-bench report</h1>"
    ));
    let _ = write!(o, "<h2>Parameters</h2><table id=\"params\">");
    row(&mut o, "target", &r.url);
    row(&mut o, "mode", &r.mode);
    if let Some(rate) = r.rate {
        row(&mut o, "rate (req/s)", &rate.to_string());
    }
    row(&mut o, "threads", &r.threads.to_string());
    row(&mut o, "connections", &r.connections.to_string());
    row(&mut o, "pipeline", &r.pipeline.to_string());
    row(&mut o, "keep-alive", &r.keepalive.to_string());
    row(&mut o, "warmup", &format!("{} s", r.warmup_s));
    row(&mut o, "measured", &format!("{:.2} s", r.duration_s));
    row(&mut o, "requests", &r.requests.to_string());
    row(&mut o, "requests/s", &format!("{:.1}", r.rps));
    row(&mut o, "transfer/s", &fmt_bytes(r.bytes_per_s));
    if let Some(e) = &r.schedule_error_us {
        row(
            &mut o,
            "schedule error p50 / p99 / max",
            &format!("{} / {} / {}", fmt_us(e.p50), fmt_us(e.p99), fmt_us(e.max)),
        );
        row(
            &mut o,
            "late sends (connection busy)",
            &r.late_sends.to_string(),
        );
    }
    o.push_str("</table><h2>Latency by percentile</h2>");
    let mut series = Vec::new();
    if let Some(c) = &s.corrected {
        series.push(Series {
            name: "corrected (from intended send)",
            color: "#c0392b",
            points: percentile_points(c),
        });
    }
    series.push(Series {
        name: if s.corrected.is_some() {
            "uncorrected (from actual send)"
        } else {
            "latency"
        },
        color: "#2471a3",
        points: percentile_points(&s.uncorrected),
    });
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"];
    let ticks: Vec<(f64, String)> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i as f64, l.to_string()))
        .collect();
    o.push_str(&plot(
        "latency",
        &series,
        (0.0, MAX_NINES, &ticks),
        "latency",
        &|v| fmt_us(v),
    ));
    o.push_str("<h2>Requests/s over time</h2>");
    let per_s = 1.0 / SLICE.as_secs_f64();
    let at = |i: usize| (i as f64 + 0.5) * SLICE.as_secs_f64();
    let point = |i: usize, n: u64, what: &str| {
        let v = n as f64 * per_s;
        (at(i), v, format!("{:.1} s: {v:.0} {what}/s", at(i)))
    };
    let timeline = [
        Series {
            name: "responses/s",
            color: "#1e8449",
            points: (s.timeline.iter().enumerate())
                .map(|(i, t)| point(i, t.responses, "responses"))
                .collect(),
        },
        Series {
            name: "errors/s",
            color: "#c0392b",
            points: (s.timeline.iter().enumerate())
                .map(|(i, t)| point(i, t.errors, "errors"))
                .collect(),
        },
    ];
    let end = (s.timeline.len() as f64 * SLICE.as_secs_f64()).max(SLICE.as_secs_f64());
    let step = nice(end / 8.0);
    let t_ticks: Vec<(f64, String)> = (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|&t| t <= end + 1e-9)
        .map(|t| (t, format!("{t} s")))
        .collect();
    o.push_str(&plot(
        "rate",
        &timeline,
        (0.0, end, &t_ticks),
        "per second",
        &|v| format!("{v:.0}"),
    ));
    o.push_str("<h2>Errors by kind</h2><table id=\"errors\">");
    let e = &r.errors;
    for (k, n) in [
        ("connect", e.connect),
        ("read", e.read),
        ("write", e.write),
        ("timeout", e.timeout),
    ] {
        row(&mut o, k, &n.to_string());
    }
    for (code, n) in &e.status {
        row(&mut o, &format!("status {code}"), &n.to_string());
    }
    row(&mut o, "total", &e.total.to_string());
    o.push_str("</table></body></html>\n");
    o
}
