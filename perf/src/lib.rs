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

/// Smooth weighted round-robin (nginx's sequence) written plainly: the fair baseline for
/// ringway's balancer, which must produce the same smooth order. (`NaiveWrr` above is cheaper
/// per pick but bursty: it sends `weight` requests in a row to one node.)
pub struct NaiveSmoothWrr {
    nodes: Vec<(i64, i64)>,
}

impl NaiveSmoothWrr {
    pub fn new(weights: &[u32]) -> Self {
        NaiveSmoothWrr {
            nodes: weights.iter().map(|&w| (i64::from(w), 0)).collect(),
        }
    }

    pub fn pick(&mut self, skip: &[usize]) -> Option<usize> {
        let total: i64 = (0..self.nodes.len())
            .filter(|i| !skip.contains(i))
            .map(|i| self.nodes[i].0)
            .sum();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if !skip.contains(&i) {
                n.1 += n.0;
            }
        }
        let best = (0..self.nodes.len())
            .filter(|i| !skip.contains(i))
            .max_by_key(|&i| (self.nodes[i].1, std::cmp::Reverse(i)))?;
        self.nodes[best].1 -= total;
        Some(best)
    }
}

/// A token bucket per key in a SipHash map, as a first version would (f64 tokens, refill on
/// access). Baseline for ringway's node-wide `limit::bucket::Bucket`.
pub struct NaiveBucket {
    rate: f64,
    burst: f64,
    map: HashMap<String, (f64, u64)>,
}

impl NaiveBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        NaiveBucket {
            rate,
            burst,
            map: HashMap::new(),
        }
    }

    pub fn check(&mut self, key: &str, now_ms: u64) -> bool {
        let (tokens, last) = self
            .map
            .entry(key.to_string())
            .or_insert((self.burst, now_ms));
        let refill = (now_ms - *last) as f64 * self.rate / 1000.0;
        *tokens = (*tokens + refill).min(self.burst);
        *last = now_ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An LRU cache as a SipHash map of owned keys plus a recency list scanned on every hit.
/// Baseline for ringway's `cache::store::Store` lookup.
pub struct NaiveLru {
    map: HashMap<String, Vec<u8>>,
    order: std::collections::VecDeque<String>,
}

impl NaiveLru {
    pub fn new() -> Self {
        NaiveLru {
            map: HashMap::new(),
            order: std::collections::VecDeque::new(),
        }
    }

    pub fn insert(&mut self, key: &str, body: Vec<u8>) {
        self.map.insert(key.to_string(), body);
        self.order.push_front(key.to_string());
    }

    pub fn get(&mut self, key: &str) -> Option<&Vec<u8>> {
        let at = self.order.iter().position(|k| k == key)?;
        if let Some(k) = self.order.remove(at) {
            self.order.push_front(k);
        }
        self.map.get(key)
    }
}

impl Default for NaiveLru {
    fn default() -> Self {
        Self::new()
    }
}
