//! Owns a strict checker of the Prometheus text format 0.0.4, series lookup and scraping /metrics
//! (with promtool too when installed). Must not know ringway's metric names; tests assert those.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;

use super::ops::get;

/// A parsed sample: metric name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Validates `text` as Prometheus text format 0.0.4, strictly: names and label syntax, escapes,
/// values, one TYPE/HELP per family before its samples, families contiguous, no duplicate
/// series, histogram buckets cumulative with `+Inf` equal to `_count`. Returns the samples.
pub fn check_exposition(text: &str) -> Result<Vec<Sample>, String> {
    if !text.ends_with('\n') {
        return Err("exposition must end with a newline".into());
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut seen: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |m: &str| format!("line {}: {m}: {line:?}", i + 1);
        if line.is_empty() {
            return Err(at("empty line"));
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kw = parts.next().unwrap_or("");
            if kw != "HELP" && kw != "TYPE" {
                continue; // a plain comment
            }
            let name = parts.next().ok_or_else(|| at("missing metric name"))?;
            if !metric_name(name) {
                return Err(at("bad metric name"));
            }
            let arg = parts.next().ok_or_else(|| at("missing text"))?;
            switch_family(&mut current, &mut closed, name).map_err(|e| at(&e))?;
            if kw == "HELP" {
                if !helps.insert(name.to_string()) {
                    return Err(at("second HELP"));
                }
                check_help_escapes(arg).map_err(|e| at(&e))?;
            } else {
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                    return Err(at("unknown TYPE"));
                }
                if types.insert(name.to_string(), arg.to_string()).is_some() {
                    return Err(at("second TYPE"));
                }
                if samples
                    .iter()
                    .any(|s: &Sample| family_of(&s.name, &types) == name)
                {
                    return Err(at("TYPE after samples"));
                }
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let s = parse_sample(line).map_err(|e| at(&e))?;
        let fam = family_of(&s.name, &types);
        switch_family(&mut current, &mut closed, &fam).map_err(|e| at(&e))?;
        let key = format!("{}{:?}", s.name, s.labels);
        if !seen.insert(key) {
            return Err(at("duplicate series"));
        }
        if types.get(&fam).map(String::as_str) == Some("histogram") {
            let suffix = &s.name[fam.len()..];
            if !["_bucket", "_sum", "_count"].contains(&suffix) {
                return Err(at("histogram sample without _bucket/_sum/_count"));
            }
            if suffix == "_bucket" && !s.labels.contains_key("le") {
                return Err(at("bucket without le"));
            }
        } else if types.get(&fam).map(String::as_str) == Some("counter") && s.value < 0.0 {
            return Err(at("negative counter"));
        }
        samples.push(s);
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

fn switch_family(
    current: &mut Option<String>,
    closed: &mut HashSet<String>,
    fam: &str,
) -> Result<(), String> {
    if current.as_deref() == Some(fam) {
        return Ok(());
    }
    if closed.contains(fam) {
        return Err(format!("family {fam} is split (not contiguous)"));
    }
    if let Some(c) = current.take() {
        closed.insert(c);
    }
    *current = Some(fam.to_string());
    Ok(())
}

fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    for suf in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suf) {
            if matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            ) {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

fn metric_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn label_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !n.starts_with("__")
}

fn check_help_escapes(t: &str) -> Result<(), String> {
    let mut it = t.chars();
    while let Some(c) = it.next() {
        if c == '\\' && !matches!(it.next(), Some('\\' | 'n')) {
            return Err("bad escape in HELP".into());
        }
    }
    Ok(())
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !metric_name(name) {
        return Err("bad metric name".into());
    }
    let mut labels = BTreeMap::new();
    let b = line.as_bytes();
    let mut i = name_end;
    if b[i] == b'{' {
        i += 1;
        loop {
            if b.get(i) == Some(&b'}') {
                i += 1;
                break;
            }
            let eq = line[i..].find('=').ok_or("label without =")? + i;
            let lname = &line[i..eq];
            if !label_name(lname) {
                return Err(format!("bad label name {lname:?}"));
            }
            i = eq + 1;
            if b.get(i) != Some(&b'"') {
                return Err("label value not quoted".into());
            }
            i += 1;
            let mut val = String::new();
            loop {
                let c = line[i..].chars().next().ok_or("unterminated label value")?;
                i += c.len_utf8();
                match c {
                    '"' => break,
                    '\\' => {
                        let e = line[i..].chars().next().ok_or("dangling escape")?;
                        i += e.len_utf8();
                        val.push(match e {
                            '\\' => '\\',
                            '"' => '"',
                            'n' => '\n',
                            _ => return Err(format!("bad escape \\{e}")),
                        });
                    }
                    c => val.push(c),
                }
            }
            if labels.insert(lname.to_string(), val).is_some() {
                return Err(format!("label {lname} repeated"));
            }
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {}
                _ => return Err("expected , or } after label".into()),
            }
        }
    }
    let rest = &line[i..];
    let rest = rest.strip_prefix(' ').ok_or("missing space before value")?;
    let mut parts = rest.split(' ');
    let v = parts.next().ok_or("missing value")?;
    let value = match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(ts) = parts.next() {
        ts.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if parts.next().is_some() {
        return Err("trailing text".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// (bucket (bound, count) pairs, _count, has _sum) per label set.
type Group = (Vec<(f64, f64)>, Option<f64>, bool);

fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) -> Result<(), String> {
    for (fam, t) in types {
        if t != "histogram" {
            continue;
        }
        // Group by labels without `le`.
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name.starts_with(fam.as_str())) {
            let mut l = s.labels.clone();
            let le = l.remove("le");
            let g = groups.entry(format!("{l:?}")).or_default();
            match &s.name[fam.len()..] {
                "_bucket" => {
                    let le = le.ok_or("bucket without le")?;
                    let bound = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().map_err(|_| format!("bad le {le:?}"))?
                    };
                    g.0.push((bound, s.value));
                }
                "_count" => g.1 = Some(s.value),
                "_sum" => g.2 = true,
                _ => {}
            }
        }
        for (labels, (buckets, count, sum)) in groups {
            let what = format!("{fam}{labels}");
            if !sum {
                return Err(format!("{what}: no _sum"));
            }
            if buckets
                .windows(2)
                .any(|w| w[1].0 <= w[0].0 || w[1].1 < w[0].1)
            {
                return Err(format!("{what}: buckets not increasing/cumulative"));
            }
            let last = buckets.last().ok_or(format!("{what}: no buckets"))?;
            if last.0 != f64::INFINITY {
                return Err(format!("{what}: no +Inf bucket"));
            }
            if Some(last.1) != count {
                return Err(format!(
                    "{what}: +Inf bucket {} != _count {count:?}",
                    last.1
                ));
            }
        }
    }
    Ok(())
}

/// The value of the series `name` whose labels include all of `labels`, summed.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Scrapes `/metrics`, validating the format (and with promtool too when it is installed).
pub fn scrape(status: SocketAddr) -> Vec<Sample> {
    let (code, text) = get(status, "/metrics");
    assert_eq!(code, 200, "{text}");
    if let Err(e) = check_exposition(&text) {
        panic!("invalid exposition: {e}\n{text}");
    }
    promtool_check(&text);
    check_exposition(&text).unwrap()
}

/// Scrapes until `settled` holds for the samples (counters reach /metrics a moment after the
/// answers that bumped them), and returns that scrape; panics with the last one after `within`.
pub fn scrape_until(
    status: SocketAddr,
    within: std::time::Duration,
    mut settled: impl FnMut(&[Sample]) -> bool,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let ok = super::wait_until(within, || {
        samples = scrape(status);
        settled(&samples)
    });
    assert!(ok, "metrics never settled within {within:?}: {samples:#?}");
    samples
}

/// `promtool check metrics` when promtool is on PATH (CI may install it); skipped otherwise,
/// since the in-test checker above always runs.
pub fn promtool_check(text: &str) {
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
