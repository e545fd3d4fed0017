//! Naive baselines the criterion benches in `perf/benches` compare ringway's hot pieces against.
//! Deliberately simple, obviously-correct code; never used by the gateway itself.

use std::collections::HashMap;

/// Head parsing the way a quick prototype would: split into owned strings and a map.
pub fn naive_parse_head(raw: &[u8]) -> Option<(String, String, HashMap<String, String>)> {
    let text = std::str::from_utf8(raw).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let mut headers = HashMap::new();
    for line in lines {
        let (k, v) = line.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    Some((method, target, headers))
}

/// Routing by scanning every route's prefix list in order, as a first version would.
pub struct NaiveRouter {
    routes: Vec<(Option<String>, String)>,
}

impl NaiveRouter {
    pub fn new(routes: Vec<(Option<String>, String)>) -> Self {
        NaiveRouter { routes }
    }

    pub fn find(&self, host: &str, path: &str) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (i, (h, p)) in self.routes.iter().enumerate() {
            if h.as_deref().is_some_and(|h| h != host) {
                continue;
            }
            let ok = match p.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == p,
            };
            if ok && best.is_none_or(|(_, len)| p.len() > len) {
                best = Some((i, p.len()));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Weighted round-robin by expanding weights into a list and cycling through it.
pub struct NaiveWrr {
    expanded: Vec<usize>,
    next: usize,
}

impl NaiveWrr {
    pub fn new(weights: &[u32]) -> Self {
        let expanded = weights
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| std::iter::repeat_n(i, w as usize))
            .collect();
        NaiveWrr { expanded, next: 0 }
    }

    pub fn pick(&mut self, skip: &[usize]) -> Option<usize> {
        for _ in 0..self.expanded.len() {
            let n = self.expanded[self.next % self.expanded.len()];
            self.next += 1;
            if !skip.contains(&n) {
                return Some(n);
            }
        }
        None
    }
}
