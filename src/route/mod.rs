//! Compiled route matcher: host index + path segment trie, shared read-only by shards and
//! updated copy-on-write one route at a time.
//! Owns route matching and precedence only; must not touch config parsing, I/O or proxying.

mod pattern;
mod update;

use crate::util::cow::{CowMap, CowVec};
use pattern::{HostPattern, PathPattern, MAX_HOST};
use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

pub use crate::config::{Cond, RouteSpec};

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

/// Precedence key: lower wins. `.0` packs, most significant first, priority (higher first),
/// host specificity, path specificity, condition count (more first) and the route's order;
/// `.1` is the (host, path) pair inside the route. A route's key does not depend on the other
/// routes, which is what lets one route be added or removed without re-ranking the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank(u128, u32);

impl Rank {
    const MAX: Rank = Rank(u128::MAX, u32::MAX);

    fn new(prio: i32, host: &HostPattern, path: &PathPattern, c: &Compiled, pair: u32) -> Rank {
        let prio = (i64::from(i32::MAX) - i64::from(prio)) as u128;
        let rev = |n: usize| 255 - n.min(255) as u128;
        let (hc, Reverse(hl)) = host.specificity();
        let (pc, Reverse(a), Reverse(b)) = path.specificity();
        let host = u128::from(hc) << 8 | rev(hl);
        let path = u128::from(pc) << 16 | rev(a) << 8 | rev(b);
        let nconds = 0xF_FFFF - c.nconds.min(0xF_FFFF) as u128;
        let order = u128::from(c.order.min(ORDER_MAX));
        Rank(
            prio << 96 | host << 86 | path << 68 | nconds << 48 | order,
            pair,
        )
    }
}

/// Spacing of the orders `Router::build` gives routes (the tie-break after every precedence
/// rule: lower first), leaving room to place a new route between two existing ones.
pub const ORDER_STEP: u64 = 1 << 16;
/// Orders are 48-bit.
pub const ORDER_MAX: u64 = (1 << 48) - 1;

#[derive(Debug, Clone)]
struct Term {
    rank: Rank,
    route: u32,
    /// Pattern ends in '*'; `depth` segments precede it.
    wild: bool,
    depth: u16,
    /// (interned name, segment index) of each param, in segment order.
    params: Box<[(u32, u16)]>,
    conds: Arc<Conds>,
}

/// Segment and host maps: one-shot xxh3 instead of SipHash (a lookup hashes one key per path
/// segment; SipHash made the 10-route lookup slower than a linear scan in perf/benches).
/// Copy-on-write so an update copies only the nodes on its path.
type KeyMap = CowMap<Arc<Node>>;

#[derive(Debug, Clone)]
struct Node {
    statics: KeyMap,
    param: Option<Arc<Node>>,
    /// Patterns ending exactly here; sorted by rank.
    exact: Vec<Term>,
    /// Patterns "<prefix>/*" whose prefix ends here; sorted by rank.
    wild: Vec<Term>,
    /// No rank in this subtree is lower: lets a lookup skip subtrees that cannot win. Removals
    /// leave it as it was (still a lower bound), so a removal touches only its own path.
    min_rank: Rank,
}

impl Node {
    fn new() -> Arc<Node> {
        Arc::new(Node {
            statics: KeyMap::default(),
            param: None,
            exact: Vec::new(),
            wild: Vec::new(),
            min_rank: Rank::MAX,
        })
    }

    fn is_empty(&self) -> bool {
        self.statics.is_empty()
            && self.param.is_none()
            && self.exact.is_empty()
            && self.wild.is_empty()
    }
}

/// (name, wanted value); None = merely present.
type CondMatch<N> = (N, Option<Box<[u8]>>);

#[derive(Debug)]
struct Conds {
    methods: Box<[Box<[u8]>]>,
    headers: Box<[CondMatch<Box<str>>]>,
    args: Box<[CondMatch<Box<[u8]>>]>,
    /// A version Accept or Content-Type must name (`pattern::names_version`).
    media: Option<Box<[u8]>>,
}

struct Ctx<'a> {
    path: &'a [u8],
    query: &'a [u8],
    method: &'a [u8],
    req: &'a dyn RequestView,
}

/// Compiled route table. Lookup cost depends on the host's label count and the path's
/// segment count, not on the number of routes. Every part is shared copy-on-write, so a
/// clone is cheap and `set` on the clone copies only what one route touches.
#[derive(Debug, Clone)]
pub struct Router {
    /// By route id: what it was inserted with (to take it out again), or None.
    slots: CowVec<Option<Arc<Kept>>>,
    live: usize,
    any_root: Option<Arc<Node>>,
    exact_hosts: KeyMap,
    wildcard_hosts: KeyMap,
    /// Shortest and longest wildcard suffix: host suffixes outside this range cannot hit,
    /// so a long many-label Host header costs no hashing for them. Removals keep the bounds.
    wildcard_lens: (usize, usize),
    /// Interned param names; append-only so ids in `Params` stay valid across updates.
    names: CowVec<Box<str>>,
    interned: Arc<HashMap<Box<str>, u32>>,
}

/// A route's host and path patterns as written (parsed again to take it out: kept compact,
/// since every route has one) and its tie-break order.
#[derive(Debug)]
struct Kept {
    hosts: Box<[Box<str>]>,
    paths: Box<[Box<str>]>,
    order: u64,
}

impl Kept {
    fn new(spec: &RouteSpec, order: u64) -> Kept {
        let strs = |v: &[String]| v.iter().map(|s| Box::from(s.as_str())).collect();
        Kept {
            hosts: strs(&spec.hosts),
            paths: strs(&spec.paths),
            order,
        }
    }
}

#[derive(Debug)]
struct Compiled {
    hosts: Vec<HostPattern>,
    paths: Vec<PathPattern>,
    nconds: usize,
    priority: i32,
    order: u64,
    conds: Arc<Conds>,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            slots: CowVec::default(),
            live: 0,
            any_root: None,
            exact_hosts: KeyMap::default(),
            wildcard_hosts: KeyMap::default(),
            wildcard_lens: (usize::MAX, 0),
            names: CowVec::default(),
            interned: Arc::default(),
        }
    }
}

impl Router {
    /// Route id = index in `specs`; ties after every precedence rule go to the lower id.
    pub fn build(specs: &[RouteSpec]) -> Result<Router, RouteError> {
        Router::build_with(specs, |id| (id as u64 + 1).saturating_mul(ORDER_STEP))
    }

    /// Like `build`, with ties after every precedence rule broken by `order(id)` (lower
    /// first; orders must differ).
    pub fn build_with(
        specs: &[RouteSpec],
        order: impl Fn(usize) -> u64,
    ) -> Result<Router, RouteError> {
        let compiled = specs
            .iter()
            .enumerate()
            .map(|(id, spec)| {
                compile(spec, order(id)).map_err(|message| RouteError { route: id, message })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut router = Router::default();
        for (id, c) in compiled.into_iter().enumerate() {
            router.slots.push(None);
            router.put(id, c, Kept::new(&specs[id], order(id)));
        }
        Ok(router)
    }

    /// Puts route `id` (replacing what it had) or, with `None`, removes it. `order` breaks
    /// ties after every precedence rule (lower first) and must differ from every other route's.
    /// Costs the trie paths of the old and the new route, not the table.
    pub fn set(
        &mut self,
        id: usize,
        spec: Option<&RouteSpec>,
        order: u64,
    ) -> Result<(), RouteError> {
        let next = match spec {
            Some(s) => Some((
                compile(s, order).map_err(|message| RouteError { route: id, message })?,
                Kept::new(s, order),
            )),
            None => None,
        };
        u32::try_from(id).map_err(|_| RouteError {
            route: id,
            message: "too many routes".into(),
        })?;
        while self.slots.len() <= id {
            self.slots.push(None);
        }
        if let Some(old) = self.slots.get(id).cloned().flatten() {
            self.take_out(id, &old);
        }
        if let Some((c, k)) = next {
            self.put(id, c, k);
        }
        Ok(())
    }

    /// The tie-break order route `id` was given, if it is in the table.
    pub fn order(&self, id: usize) -> Option<u64> {
        self.slots.get(id)?.as_ref().map(|k| k.order)
    }

    /// Number of routes in the table.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
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
            if let Some(root) = self.exact_hosts.get(h) {
                Self::search(root, 1, &ctx, &mut best);
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
                    if let Some(root) = self.wildcard_hosts.get(suffix) {
                        Self::search(root, 1, &ctx, &mut best);
                    }
                }
            }
        }
        if let Some(root) = &self.any_root {
            Self::search(root, 1, &ctx, &mut best);
        }
        let term = best?;
        fill_params(term, path, params);
        Some(term.route as usize)
    }

    /// `pos` is the start of the next unmatched segment; `pos > path.len()` means the path is
    /// fully consumed. Each trie node sits at a fixed depth and is reached at most once, so the
    /// backtracking is bounded by the trie size, and `min_rank` prunes most of it.
    fn search<'s>(node: &'s Node, pos: usize, ctx: &Ctx<'_>, best: &mut Option<&'s Term>) {
        let best_rank = best.map_or(Rank::MAX, |t| t.rank);
        if node.min_rank >= best_rank {
            return;
        }
        let path = ctx.path;
        if pos > path.len() {
            Self::check(&node.exact, ctx, best);
            return;
        }
        Self::check(&node.wild, ctx, best);
        let rest = &path[pos..];
        let len = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        let seg = &rest[..len];
        let next = pos + len + 1;
        if let Some(child) = node.statics.get(seg) {
            Self::search(child, next, ctx, best);
        }
        if let (Some(child), false) = (&node.param, seg.is_empty()) {
            Self::search(child, next, ctx, best);
        }
    }

    fn check<'s>(terms: &'s [Term], ctx: &Ctx<'_>, best: &mut Option<&'s Term>) {
        let best_rank = best.map_or(Rank::MAX, |t| t.rank);
        for t in terms.iter().take_while(|t| t.rank < best_rank) {
            if t.conds.hold(ctx) {
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

/// Host and path patterns of a route (no hosts = any host, no paths = "/*").
fn patterns<S: AsRef<str>>(
    hosts: &[S],
    paths: &[S],
) -> Result<(Vec<HostPattern>, Vec<PathPattern>), String> {
    let mut h = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| pattern::parse_host(i, h.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    if h.is_empty() {
        h.push(HostPattern::Any);
    }
    h.dedup();
    let mut p = paths
        .iter()
        .enumerate()
        .map(|(i, p)| pattern::parse_path(i, p.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    if p.is_empty() {
        p.push(PathPattern::any());
    }
    Ok((h, p))
}

fn compile(spec: &RouteSpec, order: u64) -> Result<Compiled, String> {
    let (hosts, paths) = patterns(&spec.hosts, &spec.paths)?;
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
    let media = spec.media_version.as_ref().map(|v| v.as_bytes().into());
    let nconds = usize::from(!methods.is_empty())
        + headers.len()
        + args.len()
        + usize::from(media.is_some());
    Ok(Compiled {
        hosts,
        paths,
        nconds,
        priority: spec.priority,
        order,
        conds: Arc::new(Conds {
            methods,
            headers,
            args,
            media,
        }),
    })
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
            && match self.media.as_deref() {
                None => true,
                Some(v) => ["accept", "content-type"].iter().any(|h| {
                    ctx.req
                        .header(h)
                        .is_some_and(|m| pattern::names_version(m, v))
                }),
            }
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
#[cfg(test)]
mod update_tests;
