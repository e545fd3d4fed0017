//! One-route updates of the router: putting a route's terms into the copy-on-write trie and
//! taking them out again, copying only the nodes on their paths. Must not touch lookups.

use std::sync::Arc;

use super::pattern::{HostPattern, PathPattern, Seg};
use super::{Compiled, Kept, Node, Rank, Router, Term};

impl Router {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.interned.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        Arc::make_mut(&mut self.interned).insert(name.into(), id);
        self.names.push(name.into());
        id
    }

    pub(super) fn put(&mut self, id: usize, c: Compiled, kept: Kept) {
        let npaths = c.paths.len();
        for (h, host) in c.hosts.iter().enumerate() {
            for (p, pat) in c.paths.iter().enumerate() {
                let pair = u32::try_from(h * npaths + p).unwrap_or(u32::MAX);
                let mut params = Vec::new();
                for (k, seg) in pat.segs.iter().enumerate() {
                    if let Seg::Param(name) = seg {
                        // MAX_SEGMENTS keeps k within u16.
                        params.push((self.intern(name), k as u16));
                    }
                }
                let term = Term {
                    rank: Rank::new(c.priority, host, pat, &c, pair),
                    route: id as u32,
                    wild: pat.wildcard,
                    depth: pat.segs.len() as u16,
                    params: params.into(),
                    conds: c.conds.clone(),
                };
                insert(self.root_mut(host), pat, term);
            }
        }
        self.slots.set(id, Some(Arc::new(kept)));
        self.live += 1;
    }

    pub(super) fn take_out(&mut self, id: usize, kept: &Kept) {
        let id32 = id as u32;
        // These parsed when the route was put, so they parse the same now.
        let (hosts, paths) = super::patterns(&kept.hosts, &kept.paths).unwrap_or_default();
        for host in &hosts {
            for pat in &paths {
                let emptied = match host {
                    HostPattern::Any => self
                        .any_root
                        .as_mut()
                        .is_some_and(|r| remove(r, &pat.segs, pat.wildcard, id32)),
                    HostPattern::Exact(h) => self
                        .exact_hosts
                        .get_mut(h)
                        .is_some_and(|r| remove(r, &pat.segs, pat.wildcard, id32)),
                    HostPattern::Wildcard(s) => self
                        .wildcard_hosts
                        .get_mut(s)
                        .is_some_and(|r| remove(r, &pat.segs, pat.wildcard, id32)),
                };
                if emptied {
                    match host {
                        HostPattern::Any => self.any_root = None,
                        HostPattern::Exact(h) => drop(self.exact_hosts.remove(h)),
                        HostPattern::Wildcard(s) => drop(self.wildcard_hosts.remove(s)),
                    }
                }
            }
        }
        self.slots.set(id, None);
        self.live -= 1;
    }

    fn root_mut(&mut self, host: &HostPattern) -> &mut Arc<Node> {
        let (map, key) = match host {
            HostPattern::Any => return self.any_root.get_or_insert_with(Node::new),
            HostPattern::Exact(h) => (&mut self.exact_hosts, h),
            HostPattern::Wildcard(s) => {
                let (lo, hi) = self.wildcard_lens;
                self.wildcard_lens = (lo.min(s.len()), hi.max(s.len()));
                (&mut self.wildcard_hosts, s)
            }
        };
        map.get_or_insert_with(key, Node::new)
    }
}

/// Adds `term` under `root` along `pat`, copying only the nodes on that path.
fn insert(root: &mut Arc<Node>, pat: &PathPattern, term: Term) {
    let mut node = Arc::make_mut(root);
    node.min_rank = node.min_rank.min(term.rank);
    for seg in &pat.segs {
        let child = match seg {
            Seg::Static(s) => node.statics.get_or_insert_with(s, Node::new),
            Seg::Param(_) => node.param.get_or_insert_with(Node::new),
        };
        node = Arc::make_mut(child);
        node.min_rank = node.min_rank.min(term.rank);
    }
    let list = if pat.wildcard {
        &mut node.wild
    } else {
        &mut node.exact
    };
    let at = list.partition_point(|t| t.rank < term.rank);
    list.insert(at, term);
}

/// Takes route `id`'s terms off the node at `segs` below `node`, dropping nodes left empty.
/// Returns whether `node` itself is now empty.
fn remove(node: &mut Arc<Node>, segs: &[Seg], wild: bool, id: u32) -> bool {
    let n = Arc::make_mut(node);
    match segs.split_first() {
        None if wild => n.wild.retain(|t| t.route != id),
        None => n.exact.retain(|t| t.route != id),
        Some((Seg::Static(s), rest)) => {
            if n.statics
                .get_mut(s)
                .is_some_and(|c| remove(c, rest, wild, id))
            {
                n.statics.remove(s);
            }
        }
        Some((Seg::Param(_), rest)) => {
            if n.param.as_mut().is_some_and(|c| remove(c, rest, wild, id)) {
                n.param = None;
            }
        }
    }
    n.is_empty()
}
