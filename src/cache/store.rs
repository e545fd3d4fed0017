//! One shard's cache store: entries by primary key with Vary variants, a byte budget that is
//! never exceeded, W-TinyLFU eviction (or plain LRU) over slab-backed lists, purge and sweeps.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::entry::Entry;
use super::sketch::Sketch;

/// Bytes charged per entry on top of its key, headers and body (slab node, map slot, Rc).
pub const ENTRY_OVERHEAD: usize = 192;
/// Variants kept per primary key; the least recently used one goes first.
const MAX_VARIANTS: usize = 16;
const NIL: u32 = u32::MAX;
/// W-TinyLFU proportions (Caffeine's defaults): the admission window holds 1% of the bytes,
/// the protected segment up to 80% of the main region.
const WINDOW_PERCENT: usize = 1;
const PROTECTED_PERCENT: usize = 80;

/// Which list an entry is on. With admission off everything lives in `Window`, a plain LRU.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Region {
    /// New entries: recency only.
    Window = 0,
    /// Admitted from the window, not hit since: the main region's victims come from here.
    Probation = 1,
    /// Hit while on probation.
    Protected = 2,
}

struct Node {
    key: Rc<[u8]>,
    entry: Arc<Entry>,
    size: usize,
    hash: u64,
    region: Region,
    prev: u32,
    next: u32,
}

/// A doubly linked list threaded through the slab: `head` most recent, `tail` the next victim.
#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
    bytes: usize,
}

const EMPTY: List = List {
    head: NIL,
    tail: NIL,
    bytes: 0,
};

/// Counters for the shard loop and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub entries: usize,
    pub bytes: usize,
    pub peak: usize,
    pub budget: usize,
    pub evictions: u64,
    pub rejected: u64,
}

/// W-TinyLFU (Einziger, Eytan, Friedman; as in Caffeine): a small LRU window takes every new
/// entry; when it overflows, its oldest entry may enter the segmented-LRU main region only by
/// evicting entries the sketch says were asked for less often. Every operation is O(1) except
/// admitting an entry larger than the victims it displaces (one step per victim).
pub struct Store {
    map: HashMap<Rc<[u8]>, Vec<u32>>,
    slab: Vec<Option<Node>>,
    free: Vec<u32>,
    lists: [List; 3],
    bytes: usize,
    budget: usize,
    window_max: usize,
    main_max: usize,
    protected_max: usize,
    peak: usize,
    evictions: u64,
    rejected: u64,
    sketch: Option<Sketch>,
    sweep_at: usize,
}

impl Store {
    /// `budget`: bytes this store may hold; `expected_entries` sizes the admission sketch
    /// (`None` = plain LRU). The sketch's own memory is taken out of the budget.
    pub fn new(budget: usize, expected_entries: Option<usize>) -> Store {
        let sketch = expected_entries
            .map(Sketch::new)
            .filter(|s| s.bytes() * 4 <= budget);
        let budget = budget - sketch.as_ref().map_or(0, Sketch::bytes);
        let (window_max, main_max) = match sketch {
            Some(_) => {
                let w = (budget / 100 * WINDOW_PERCENT).max(1);
                (w, budget - w)
            }
            None => (budget, 0),
        };
        Store {
            map: HashMap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            lists: [EMPTY; 3],
            bytes: 0,
            budget,
            window_max,
            main_max,
            protected_max: main_max / 100 * PROTECTED_PERCENT,
            peak: 0,
            evictions: 0,
            rejected: 0,
            sketch,
            sweep_at: 0,
        }
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.slab.len() - self.free.len(),
            bytes: self.bytes,
            peak: self.peak,
            budget: self.budget,
            evictions: self.evictions,
            rejected: self.rejected,
        }
    }

    /// Counts one request for `hash` (hit or miss) in the admission sketch.
    pub fn touch(&mut self, hash: u64) {
        if let Some(s) = &mut self.sketch {
            s.increment(hash);
        }
    }

    /// The variant of `key` whose Vary values `matches` accepts; records the hit (a hit on
    /// probation promotes the entry to the protected segment).
    pub fn get(&mut self, key: &[u8], matches: impl Fn(&Entry) -> bool) -> Option<Arc<Entry>> {
        let ids = self.map.get(key)?;
        let id = *ids
            .iter()
            .find(|&&i| self.node(i).is_some_and(|n| matches(&n.entry)))?;
        self.hit(id)
    }

    /// Every variant of `key`, each recorded as hit (for another shard, which picks the variant).
    pub fn get_all(&mut self, key: &[u8]) -> Vec<Arc<Entry>> {
        // One map lookup: the ids are copied out (at most MAX_VARIANTS + 1) before hits relink.
        let mut ids = [NIL; MAX_VARIANTS + 1];
        let n = match self.map.get(key) {
            Some(v) => {
                let n = v.len().min(ids.len());
                ids[..n].copy_from_slice(&v[..n]);
                n
            }
            None => return Vec::new(),
        };
        let mut out = Vec::with_capacity(n);
        for &id in &ids[..n] {
            out.extend(self.hit(id));
        }
        out
    }

    /// Every variant of `key`, without recording a hit.
    pub fn peek_all(&self, key: &[u8]) -> Vec<Arc<Entry>> {
        self.map.get(key).map_or_else(Vec::new, |ids| {
            ids.iter()
                .filter_map(|&i| self.node(i).map(|n| n.entry.clone()))
                .collect()
        })
    }

    fn hit(&mut self, id: u32) -> Option<Arc<Entry>> {
        let (region, entry) = self.node(id).map(|n| (n.region, n.entry.clone()))?;
        self.unlink(id);
        match region {
            Region::Probation => {
                self.link(id, Region::Protected);
                self.demote_protected();
            }
            r => self.link(id, r),
        }
        Some(entry)
    }

    /// True if any variant of `key` is stored.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.map.contains_key(key)
    }

    /// Stores `entry` under `key`, replacing a variant with the same Vary values. Returns false
    /// if it was not kept (too large for the budget, or colder than what it would evict).
    pub fn insert(&mut self, key: &[u8], hash: u64, entry: impl Into<Arc<Entry>>) -> bool {
        let entry: Arc<Entry> = entry.into();
        let size = key.len() + entry.size() + ENTRY_OVERHEAD;
        if size > self.window_max.max(self.main_max) {
            self.rejected += 1;
            return false;
        }
        let replaced = self.map.get(key).and_then(|ids| {
            ids.iter()
                .copied()
                .find(|&i| self.node(i).is_some_and(|n| n.entry.same_variant(&entry)))
        });
        // A refresh keeps its place in the main region: it has already been admitted.
        let region = replaced
            .and_then(|old| self.node(old))
            .map_or(Region::Window, |n| n.region);
        if let Some(old) = replaced {
            self.remove_id(old);
        }
        let key: Rc<[u8]> = match self.map.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Rc::from(key),
        };
        let node = Node {
            key: key.clone(),
            entry,
            size,
            hash,
            region,
            prev: NIL,
            next: NIL,
        };
        let id = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(node);
                i
            }
            None => {
                self.slab.push(Some(node));
                (self.slab.len() - 1) as u32
            }
        };
        self.link(id, region);
        let ids = self.map.entry(key).or_default();
        ids.push(id);
        if ids.len() > MAX_VARIANTS {
            let ids = ids.clone();
            let oldest = ids
                .iter()
                .copied()
                .min_by_key(|&i| self.node(i).map_or(0, |n| n.entry.stored_ms));
            if let Some(o) = oldest {
                self.remove_id(o);
            }
        }
        self.settle();
        self.peak = self.peak.max(self.bytes);
        // `settle` only removes, so `id` cannot have been reused by another entry.
        self.node(id).is_some()
    }

    /// Brings every region back within its share: window overflow goes to admission, a main
    /// region grown by refreshes sheds probation (then protected) entries.
    fn settle(&mut self) {
        while self.lists[Region::Window as usize].bytes > self.window_max {
            let c = self.lists[Region::Window as usize].tail;
            if c == NIL {
                break;
            }
            if self.admit(c) {
                self.unlink(c);
                self.link(c, Region::Probation);
            } else {
                self.remove_id(c);
                if self.sketch.is_some() {
                    self.rejected += 1;
                } else {
                    self.evictions += 1;
                }
            }
        }
        while self.main_bytes() > self.main_max {
            let Some(v) = self.victim() else { break };
            self.remove_id(v);
            self.evictions += 1;
        }
        self.demote_protected();
    }

    fn main_bytes(&self) -> usize {
        self.lists[Region::Probation as usize].bytes + self.lists[Region::Protected as usize].bytes
    }

    /// The main region's next victim: probation's oldest, else protected's oldest.
    fn victim(&self) -> Option<u32> {
        [Region::Probation, Region::Protected]
            .iter()
            .map(|&r| self.lists[r as usize].tail)
            .find(|&t| t != NIL)
    }

    /// Keeps the protected segment within its share by moving its oldest back to probation.
    fn demote_protected(&mut self) {
        while self.lists[Region::Protected as usize].bytes > self.protected_max {
            let t = self.lists[Region::Protected as usize].tail;
            if t == NIL {
                break;
            }
            self.unlink(t);
            self.link(t, Region::Probation);
        }
    }

    /// TinyLFU between the window and the main region: the window's oldest entry `c` gets in
    /// if there is room, or if the sketch counts it more often asked for than every victim it
    /// would displace (which are then evicted).
    fn admit(&mut self, c: u32) -> bool {
        let Some((size, hash)) = self.node(c).map(|n| (n.size, n.hash)) else {
            return false;
        };
        if self.main_bytes() + size <= self.main_max {
            return true;
        }
        let Some(s) = &self.sketch else { return false };
        let want = s.estimate(hash);
        let need = self.main_bytes() + size - self.main_max;
        let (mut freed, mut region, mut at) =
            (0, Region::Probation, self.victim_from(Region::Probation));
        while freed < need {
            if at == NIL {
                if region == Region::Protected {
                    return false;
                }
                region = Region::Protected;
                at = self.victim_from(region);
                continue;
            }
            let Some(n) = self.node(at) else { return false };
            if s.estimate(n.hash) >= want {
                return false;
            }
            freed += n.size;
            at = n.prev;
        }
        while self.main_bytes() + size > self.main_max {
            let Some(v) = self.victim() else { break };
            self.remove_id(v);
            self.evictions += 1;
        }
        true
    }

    fn victim_from(&self, r: Region) -> u32 {
        self.lists[r as usize].tail
    }

    /// Removes every variant of `key`; returns how many there were.
    pub fn remove(&mut self, key: &[u8]) -> usize {
        let ids = self.map.get(key).cloned().unwrap_or_default();
        for &i in &ids {
            self.remove_id(i);
        }
        ids.len()
    }

    /// Removes entries whose primary key starts with `prefix`, or whose `Surrogate-Key`
    /// header lists `tag`; returns how many.
    pub fn remove_where(&mut self, prefix: Option<&[u8]>, tag: Option<&[u8]>) -> usize {
        let ids: Vec<u32> = (0..self.slab.len() as u32)
            .filter(|&i| {
                self.node(i).is_some_and(|n| {
                    prefix.is_some_and(|p| n.key.starts_with(p))
                        || tag.is_some_and(|t| n.entry.has_tag(t))
                })
            })
            .collect();
        for &i in &ids {
            self.remove_id(i);
        }
        ids.len()
    }

    /// Drops up to `budget` slab slots' worth of entries that can no longer be used at
    /// `now_ms` (past every stale window, no validator). Incremental: resumes where it stopped.
    pub fn sweep(&mut self, now_ms: u64, budget: usize) -> usize {
        let mut dropped = 0;
        for _ in 0..budget.min(self.slab.len()) {
            if self.sweep_at >= self.slab.len() {
                self.sweep_at = 0;
            }
            let i = self.sweep_at as u32;
            self.sweep_at += 1;
            if self.node(i).is_some_and(|n| n.entry.is_dead(now_ms)) {
                self.remove_id(i);
                dropped += 1;
            }
        }
        dropped
    }

    fn node(&self, i: u32) -> Option<&Node> {
        self.slab.get(i as usize).and_then(Option::as_ref)
    }

    fn node_mut(&mut self, i: u32) -> Option<&mut Node> {
        self.slab.get_mut(i as usize).and_then(Option::as_mut)
    }

    /// Unlinks and frees a linked entry.
    fn remove_id(&mut self, id: u32) {
        self.unlink(id);
        let Some(node) = self.slab.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(id);
        if let Some(ids) = self.map.get_mut(&node.key) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.map.remove(&node.key);
            }
        }
    }

    /// Takes a linked entry off its region's list (its bytes leave the region and the total).
    fn unlink(&mut self, id: u32) {
        let Some(n) = self.node(id) else { return };
        let (prev, next, size, r) = (n.prev, n.next, n.size, n.region as usize);
        match self.node_mut(prev) {
            Some(p) => p.next = next,
            None => self.lists[r].head = next,
        }
        match self.node_mut(next) {
            Some(n) => n.prev = prev,
            None => self.lists[r].tail = prev,
        }
        self.lists[r].bytes -= size;
        self.bytes -= size;
    }

    /// Puts an unlinked entry at the front of region `r`.
    fn link(&mut self, id: u32, r: Region) {
        let old = self.lists[r as usize].head;
        let Some(n) = self.node_mut(id) else { return };
        n.prev = NIL;
        n.next = old;
        n.region = r;
        let size = n.size;
        match self.node_mut(old) {
            Some(o) => o.prev = id,
            None => self.lists[r as usize].tail = id,
        }
        self.lists[r as usize].head = id;
        self.lists[r as usize].bytes += size;
        self.bytes += size;
    }
}

/// A body-less entry of roughly `body` bytes, for tests and the hit-ratio simulation.
pub fn test_entry(body: usize) -> Entry {
    Entry {
        body: Bytes::from(vec![0u8; body]),
        ..Entry::default()
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
