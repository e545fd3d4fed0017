//! Prometheus text format 0.0.4 primitives: label escaping, a family's HELP/TYPE lines, a
//! histogram's series, status classes. Knows no metric by name; expose.rs and control.rs do.

use std::fmt::Write;

use super::{RouteCounts, BUCKETS_US};

/// Escapes a label value as the exposition format requires (backslash, quote, newline).
pub fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub(super) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One histogram's buckets, sum and count for the series labelled `labels` (`k="v"`).
pub(super) fn histogram(o: &mut String, name: &str, labels: &str, c: &RouteCounts) {
    let mut cum = 0;
    for (i, b) in BUCKETS_US.iter().enumerate() {
        cum += c.buckets[i];
        let le = *b as f64 / 1e6;
        let _ = writeln!(o, "{name}_bucket{{{labels},le=\"{le}\"}} {cum}");
    }
    cum += c.buckets[BUCKETS_US.len()];
    let _ = writeln!(o, "{name}_bucket{{{labels},le=\"+Inf\"}} {cum}");
    let _ = writeln!(o, "{name}_sum{{{labels}}} {}", c.sum_us as f64 / 1e6);
    let _ = writeln!(o, "{name}_count{{{labels}}} {cum}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_escaping() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
