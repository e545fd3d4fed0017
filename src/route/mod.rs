//! Compiled route matcher: host index + path segment trie, built once, read-only per shard.
//! Owns route matching and precedence only; must not touch config parsing, I/O or proxying.

mod pattern;

use pattern::{HostPattern, PathPattern, Seg, MAX_HOST};
use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::ops::Range;

/// A validated route as the config layer hands it over. Route id = index in the spec slice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSpec {
    /// Empty = any host. "api.example.com" exact, "*.example.com" any strict subdomain
    /// (any depth, not example.com itself). Case-insensitive.
    pub hosts: Vec<String>,
    /// "/exact", "/users/{id}" ({param} = one non-empty segment), "/api/*" (matches "/api/"
    /// and below, not "/api"), "/*". Empty = any path.
    pub paths: Vec<String>,
    /// Empty = any method.
    pub methods: Vec<String>,
    /// All must hold. Names are case-insensitive.
    pub headers: Vec<Cond>,
    /// Query-string arguments; all must hold. Raw (not percent-decoded) comparison.
    pub args: Vec<Cond>,
    /// Higher wins, before any specificity rule.
    pub priority: i32,
}

/// `value` None = present (any value, even empty); Some = exact equality of the first occurrence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cond {
    pub name: String,
    pub value: Option<String>,
}

/// The request headers a route condition may look at.
pub trait RequestView {
    /// `name` is given lowercase; returns the first occurrence.
    fn header(&self, name: &str) -> Option<&[u8]>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// Index of the offending route in the spec slice.
    pub route: usize,
    pub message: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {}: {}", self.route, self.message)
    }
}

impl std::error::Error for RouteError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Capture {
    name: u32,
    start: usize,
    end: usize,
}

/// Per-connection scratch filled by `Router::find`: captured `{param}` byte ranges into the
/// path and, for "/*" routes, where the wildcard part starts. Cleared, never shrunk, so a warm
/// instance does not allocate.
#[derive(Debug, Clone, Default)]
pub struct Params {
    caps: Vec<Capture>,
    /// Byte offset in the path of the first byte matched by '*' (just after its '/').
    /// For strip_prefix, `&path[wildcard_start - 1..]` is the remaining path with its '/'.
    pub wildcard_start: Option<usize>,
}

impl Params {
    pub fn new() -> Params {
        Params {
            caps: Vec::with_capacity(8),
            wildcard_start: None,
        }
    }

    pub fn clear(&mut self) {
        self.caps.clear();
        self.wildcard_start = None;
    }

    /// Number of captured params, in pattern order.
    pub fn len(&self) -> usize {
        self.caps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.caps.is_empty()
    }

    /// Byte range in the path of the `i`-th captured param.
    pub fn range(&self, i: usize) -> Option<Range<usize>> {
        self.caps.get(i).map(|c| c.start..c.end)
    }

    /// Value of the `i`-th captured param; `path` must be the one given to `find`.
    pub fn value<'p>(&self, i: usize, path: &'p [u8]) -> Option<&'p [u8]> {
        path.get(self.range(i)?)
    }

    /// Bytes matched by a trailing '*' (may be empty, e.g. "/api/" against "/api/*").
    pub fn wildcard<'p>(&self, path: &'p [u8]) -> Option<&'p [u8]> {
        path.get(self.wildcard_start?..)
    }
}

#[derive(Debug)]
struct Term {
    /// Position in the global precedence order: lower wins.
    rank: u32,
    route: u32,
    /// Pattern ends in '*'; `depth` segments precede it.
    wild: bool,
    depth: u16,
    /// (interned name, segment index) of each param, in segment order.
    params: Box<[(u32, u16)]>,
}

/// Segment and host maps: one-shot xxh3 instead of SipHash (a lookup hashes one key per path
/// segment; SipHash made the 10-route lookup slower than a linear scan in perf/benches).
type KeyMap = HashMap<Box<[u8]>, u32, BuildHasherDefault<crate::plugin::util::BytesHasher>>;

#[derive(Debug, Default)]
struct Node {
    statics: KeyMap,
    param: Option<u32>,
    /// Patterns ending exactly here; sorted by rank.
    exact: Vec<Term>,
    /// Patterns "<prefix>/*" whose prefix ends here; sorted by rank.
    wild: Vec<Term>,
    /// Best rank anywhere in this subtree: lets a lookup skip subtrees that cannot win.
    min_rank: u32,
}

/// (name, wanted value); None = merely present.
type CondMatch<N> = (N, Option<Box<[u8]>>);

#[derive(Debug)]
struct Conds {
    methods: Box<[Box<[u8]>]>,
    headers: Box<[CondMatch<Box<str>>]>,
    args: Box<[CondMatch<Box<[u8]>>]>,
}

struct Ctx<'a> {
    path: &'a [u8],
    query: &'a [u8],
    method: &'a [u8],
    req: &'a dyn RequestView,
}

/// Compiled route table. Lookup cost depends on the host's label count and the path's
/// segment count, not on the number of routes.
#[derive(Debug)]
pub struct Router {
    conds: Vec<Conds>,
    names: Vec<Box<str>>,
    nodes: Vec<Node>,
    any_root: Option<u32>,
    exact_hosts: KeyMap,
    wildcard_hosts: KeyMap,
    /// Shortest and longest wildcard suffix: host suffixes outside this range cannot hit,
    /// so a long many-label Host header costs no hashing for them.
    wildcard_lens: (usize, usize),
}

struct Entry {
    route: usize,
    host: usize,
    path: usize,
}

struct Compiled {
    hosts: Vec<HostPattern>,
    paths: Vec<PathPattern>,
    nconds: usize,
}

impl Router {
    pub fn build(specs: &[RouteSpec]) -> Result<Router, RouteError> {
        let mut compiled = Vec::with_capacity(specs.len());
        let mut conds = Vec::with_capacity(specs.len());
        for (id, spec) in specs.iter().enumerate() {
            let (c, k) = compile(spec).map_err(|message| RouteError { route: id, message })?;
            compiled.push(c);
            conds.push(k);
        }

        // One entry per (host, path) pair; sorting them once turns the whole precedence
        // rule set into a single integer comparison at lookup time.
        let mut entries = Vec::new();
        for (route, c) in compiled.iter().enumerate() {
            for host in 0..c.hosts.len() {
                for path in 0..c.paths.len() {
                    entries.push(Entry { route, host, path });
                }
            }
        }
        entries.sort_by_key(|e| {
            let c = &compiled[e.route];
            (
                Reverse(specs[e.route].priority),
                c.hosts[e.host].specificity(),
                c.paths[e.path].specificity(),
                Reverse(c.nconds),
                e.route,
            )
        });

        let mut router = Router {
            conds,
            names: Vec::new(),
            nodes: Vec::new(),
            any_root: None,
            exact_hosts: KeyMap::default(),
            wildcard_hosts: KeyMap::default(),
            wildcard_lens: (usize::MAX, 0),
        };
        let mut interned = HashMap::new();
        for (rank, e) in entries.iter().enumerate() {
            let c = &compiled[e.route];
            let root = router.root_for(&c.hosts[e.host]);
            let rank = u32::try_from(rank).unwrap_or(u32::MAX - 1);
            router.insert(root, &c.paths[e.path], rank, e.route as u32, &mut interned);
        }
        // Children are always pushed after their parent, so a reverse sweep sees every
        // child's final min_rank before the parent's.
        for i in (0..router.nodes.len()).rev() {
            let n = &router.nodes[i];
            let mut m = u32::MAX;
            m = m.min(n.exact.first().map_or(u32::MAX, |t| t.rank));
            m = m.min(n.wild.first().map_or(u32::MAX, |t| t.rank));
            for &c in n.statics.values().chain(n.param.iter()) {
                m = m.min(router.nodes[c as usize].min_rank);
            }
            router.nodes[i].min_rank = m;
        }
        Ok(router)
    }

    /// Number of routes the table was built from.
    pub fn len(&self) -> usize {
        self.conds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conds.is_empty()
    }

    fn new_node(&mut self) -> u32 {
        self.nodes.push(Node {
            min_rank: u32::MAX,
            ..Node::default()
        });
        (self.nodes.len() - 1) as u32
    }

    fn root_for(&mut self, host: &HostPattern) -> u32 {
        let existing = match host {
            HostPattern::Any => self.any_root,
            HostPattern::Exact(h) => self.exact_hosts.get(h).copied(),
            HostPattern::Wildcard(s) => self.wildcard_hosts.get(s).copied(),
        };
        if let Some(root) = existing {
            return root;
        }
        let root = self.new_node();
        match host {
            HostPattern::Any => self.any_root = Some(root),
            HostPattern::Exact(h) => drop(self.exact_hosts.insert(h.clone(), root)),
            HostPattern::Wildcard(s) => {
                let (lo, hi) = self.wildcard_lens;
                self.wildcard_lens = (lo.min(s.len()), hi.max(s.len()));
                self.wildcard_hosts.insert(s.clone(), root);
            }
        }
        root
    }

    fn insert(
        &mut self,
        root: u32,
        pat: &PathPattern,
        rank: u32,
        route: u32,
        interned: &mut HashMap<Box<str>, u32>,
    ) {
        let mut node = root;
        let mut params = Vec::new();
        for (k, seg) in pat.segs.iter().enumerate() {
            let existing = match seg {
                Seg::Static(s) => self.nodes[node as usize].statics.get(s).copied(),
                Seg::Param(_) => self.nodes[node as usize].param,
            };
            let child = match existing {
                Some(c) => c,
                None => {
                    let c = self.new_node();
                    let n = &mut self.nodes[node as usize];
                    match seg {
                        Seg::Static(s) => drop(n.statics.insert(s.clone(), c)),
                        Seg::Param(_) => n.param = Some(c),
                    }
                    c
                }
            };
            if let Seg::Param(name) = seg {
                let next_id = self.names.len() as u32;
                let id = *interned.entry(name.clone()).or_insert(next_id);
                if id == next_id {
                    self.names.push(name.clone());
                }
                // MAX_SEGMENTS keeps k within u16.
                params.push((id, k as u16));
            }
            node = child;
        }
        let term = Term {
            rank,
            route,
            wild: pat.wildcard,
            depth: pat.segs.len() as u16,
            params: params.into(),
        };
        // Entries arrive in rank order, so pushing keeps each list sorted.
        let n = &mut self.nodes[node as usize];
        if pat.wildcard {
            n.wild.push(term);
        } else {
            n.exact.push(term);
        }
    }

    /// Finds the winning route for a request, filling `params`. `host` may carry ":port" and
    /// any case; `path` is the raw path without the query; `query` the raw query string.
    pub fn find(
        &self,
        host: &[u8],
        path: &[u8],
        query: &[u8],
        method: &[u8],
        req: &dyn RequestView,
        params: &mut Params,
    ) -> Option<usize> {
        params.clear();
        if path.first() != Some(&b'/') {
            return None;
        }
        let ctx = Ctx {
            path,
            query,
            method,
            req,
        };
        let mut best: Option<&Term> = None;
        let mut buf = [0u8; MAX_HOST];
        let by_host = !self.exact_hosts.is_empty() || !self.wildcard_hosts.is_empty();
        // Without host routes the Host header is not looked at (no normalisation copy).
        if let Some(h) = by_host
            .then(|| pattern::normalize_host(host, &mut buf))
            .flatten()
        {
            if let Some(&root) = self.exact_hosts.get(h) {
                self.search(root, 1, &ctx, &mut best);
            }
            if !self.wildcard_hosts.is_empty() {
                // Every proper suffix that starts after a '.', so "*.example.com" sees
                // "a.b.example.com" but never "example.com" itself.
                let (lo, hi) = self.wildcard_lens;
                for (i, _) in h.iter().enumerate().filter(|&(_, &b)| b == b'.') {
                    let suffix = &h[i + 1..];
                    if suffix.len() > hi {
                        continue;
                    }
                    if suffix.len() < lo {
                        break;
                    }
                    if let Some(&root) = self.wildcard_hosts.get(suffix) {
                        self.search(root, 1, &ctx, &mut best);
                    }
                }
            }
        }
        if let Some(root) = self.any_root {
            self.search(root, 1, &ctx, &mut best);
        }
        let term = best?;
        fill_params(term, path, params);
        Some(term.route as usize)
    }

    /// `pos` is the start of the next unmatched segment; `pos > path.len()` means the path is
    /// fully consumed. Each trie node sits at a fixed depth and is reached at most once, so the
    /// backtracking is bounded by the trie size, and `min_rank` prunes most of it.
    fn search<'s>(&'s self, ni: u32, pos: usize, ctx: &Ctx<'_>, best: &mut Option<&'s Term>) {
        let node = &self.nodes[ni as usize];
        let best_rank = best.map_or(u32::MAX, |t| t.rank);
        if node.min_rank >= best_rank {
            return;
        }
        let path = ctx.path;
        if pos > path.len() {
            self.check(&node.exact, ctx, best);
            return;
        }
        self.check(&node.wild, ctx, best);
        let rest = &path[pos..];
        let len = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        let seg = &rest[..len];
        let next = pos + len + 1;
        if let Some(&child) = node.statics.get(seg) {
            self.search(child, next, ctx, best);
        }
        if let (Some(child), false) = (node.param, seg.is_empty()) {
            self.search(child, next, ctx, best);
        }
    }

    fn check<'s>(&'s self, terms: &'s [Term], ctx: &Ctx<'_>, best: &mut Option<&'s Term>) {
        let best_rank = best.map_or(u32::MAX, |t| t.rank);
        for t in terms.iter().take_while(|t| t.rank < best_rank) {
            if self.conds[t.route as usize].hold(ctx) {
                *best = Some(t);
                return;
            }
        }
    }

    /// Value of the captured param `name` from the last `find` on this router.
    pub fn param<'p>(&self, params: &Params, name: &str, path: &'p [u8]) -> Option<&'p [u8]> {
        let c = params.caps.iter().find(|c| {
            self.names
                .get(c.name as usize)
                .is_some_and(|n| &**n == name)
        })?;
        path.get(c.start..c.end)
    }

    /// Name of the `i`-th captured param from the last `find` on this router.
    pub fn param_name(&self, params: &Params, i: usize) -> Option<&str> {
        let c = params.caps.get(i)?;
        self.names.get(c.name as usize).map(|n| &**n)
    }
}

fn compile(spec: &RouteSpec) -> Result<(Compiled, Conds), String> {
    let mut hosts = spec
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| pattern::parse_host(i, h))
        .collect::<Result<Vec<_>, _>>()?;
    if hosts.is_empty() {
        hosts.push(HostPattern::Any);
    }
    hosts.dedup();
    let mut paths = spec
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| pattern::parse_path(i, p))
        .collect::<Result<Vec<_>, _>>()?;
    if paths.is_empty() {
        paths.push(PathPattern::any());
    }
    let methods = spec
        .methods
        .iter()
        .enumerate()
        .map(|(i, m)| pattern::parse_method(i, m))
        .collect::<Result<Box<[_]>, _>>()?;
    let headers = spec
        .headers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = pattern::parse_header_name(i, &c.name)?;
            Ok((name, c.value.as_ref().map(|v| v.as_bytes().into())))
        })
        .collect::<Result<Box<[_]>, String>>()?;
    let args = spec
        .args
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = pattern::parse_arg_name(i, &c.name)?;
            Ok((name, c.value.as_ref().map(|v| v.as_bytes().into())))
        })
        .collect::<Result<Box<[_]>, String>>()?;
    let nconds = usize::from(!methods.is_empty()) + headers.len() + args.len();
    Ok((
        Compiled {
            hosts,
            paths,
            nconds,
        },
        Conds {
            methods,
            headers,
            args,
        },
    ))
}

impl Conds {
    fn hold(&self, ctx: &Ctx<'_>) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| **m == *ctx.method))
            && self
                .headers
                .iter()
                .all(|(name, want)| matches_cond(ctx.req.header(name), want.as_deref()))
            && self.args.iter().all(|(name, want)| {
                matches_cond(pattern::query_arg(ctx.query, name), want.as_deref())
            })
    }
}

fn matches_cond(got: Option<&[u8]>, want: Option<&[u8]>) -> bool {
    match (got, want) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(g), Some(w)) => g == w,
    }
}

/// Recovers byte ranges from segment indexes by one walk over the path, so the search itself
/// never has to record anything.
fn fill_params(term: &Term, path: &[u8], params: &mut Params) {
    let wild = term.depth as usize;
    let last = term.params.last().map_or(0, |&(_, k)| k as usize).max(wild);
    let mut pending = term.params.iter().peekable();
    let mut pos = 1;
    for idx in 0..=last {
        if pos > path.len() {
            break;
        }
        if term.wild && idx == wild {
            params.wildcard_start = Some(pos);
        }
        let rest = &path[pos..];
        let end = pos + rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        if let Some(&(name, _)) = pending.next_if(|&&(_, k)| k as usize == idx) {
            params.caps.push(Capture {
                name,
                start: pos,
                end,
            });
        }
        pos = end + 1;
    }
}

#[cfg(test)]
mod tests;
