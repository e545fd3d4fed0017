//! What one node holds of etcd and how a change reaches its shards: an event or a resync's
//! difference goes through the admin API's one-object change path (`admin::change`), an
//! invalid object is refused (log line, metric) while the rest keeps serving. No etcd I/O here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::Kv;
use super::keys;
use crate::admin::change::{self, Refused};
use crate::admin::document::{Kind, KINDS};
use crate::admin::Ops;
use crate::metrics::source::WatchState;
use crate::runtime::plane::Plane;

/// Route changes in one resync applied one by one (each costs that route); more than this, or
/// any other kind of change, and the resync is one full build instead.
const ROUTES_ONE_BY_ONE: usize = 2000;

pub type Sets = BTreeMap<&'static str, BTreeMap<String, Value>>;
/// Mod revision per object etcd holds.
type Revs = HashMap<(Kind, String), i64>;
/// (kind, id, the object wanted; None: absent).
type Change = (Kind, String, Option<Value>);

/// What the etcd thread shares with admin writers: mod revisions for compare-and-swap, the
/// revision applied (admin answers wait on it), the current client.
#[derive(Default)]
pub struct Shared {
    inner: Mutex<SharedInner>,
    applied: Condvar,
}

#[derive(Default)]
struct SharedInner {
    revs: HashMap<(Kind, String), i64>,
    revision: i64,
    client: Option<etcd_client::Client>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SharedInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mod revision of `kind/id` in etcd as this node last saw it (0: absent).
    pub fn rev_of(&self, kind: Kind, id: &str) -> i64 {
        self.lock()
            .revs
            .get(&(kind, id.to_string()))
            .copied()
            .unwrap_or(0)
    }

    pub fn client(&self) -> Option<etcd_client::Client> {
        self.lock().client.clone()
    }

    pub fn set_client(&self, c: Option<etcd_client::Client>) {
        self.lock().client = c;
    }

    pub fn revision(&self) -> i64 {
        self.lock().revision
    }

    /// Waits until this node has applied `rev` (or `limit` passes); true if it has.
    pub fn wait_applied(&self, rev: i64, limit: Duration) -> bool {
        let g = self.lock();
        let (g, _) = self
            .applied
            .wait_timeout_while(g, limit, |i| i.revision < rev)
            .unwrap_or_else(|e| e.into_inner());
        g.revision >= rev
    }
}

/// The etcd thread's view: the file's own objects (the fallback when etcd has none of an id),
/// the objects etcd holds that were refused, and where to apply.
pub struct Node {
    pub plane: Arc<Plane>,
    pub ops: Arc<Ops>,
    pub prefix: String,
    pub file_sets: Sets,
    /// Refused objects etcd holds (None: a refused delete), retried after each applied change.
    pub refused: BTreeMap<(Kind, String), Option<Value>>,
    pub shared: Arc<Shared>,
    state: Option<WatchState>,
}

impl Node {
    pub fn new(plane: Arc<Plane>, ops: Arc<Ops>, prefix: String, file_sets: Sets) -> Node {
        Node {
            plane,
            ops,
            prefix,
            file_sets,
            refused: BTreeMap::new(),
            shared: Arc::new(Shared::default()),
            state: None,
        }
    }

    /// Records a state change: one log line per change, never per retry.
    pub fn set_state(&mut self, s: WatchState, why: &str) {
        if self.state != Some(s) {
            match s {
                WatchState::Disconnected => {
                    log::warn!("etcd: {why}; serving the last good configuration, reconnecting")
                }
                _ => log::info!("etcd: {why}"),
            }
            self.state = Some(s);
        }
        self.plane.update_source(|i| i.state = s);
    }

    /// The revision whose content this node serves; admin writers waiting on it are woken.
    pub fn set_revision(&self, rev: i64) {
        self.shared.lock().revision = rev;
        self.shared.applied.notify_all();
        self.plane.update_source(|i| i.revision = rev);
    }

    /// What `kind/id` should be given etcd's object (`None`: etcd has none): etcd's wins over
    /// the file's; without one the file's object (if any) is served.
    fn desired(&self, kind: Kind, id: &str, etcd: Option<Value>) -> Option<Value> {
        etcd.or_else(|| self.file_sets.get(kind.seg())?.get(id).cloned())
    }

    fn refuse(&mut self, kind: Kind, id: &str, why: &str, rev: i64) {
        log::warn!(
            "etcd: refused {}/{id} at revision {rev}: {why}; the rest of the configuration keeps serving",
            kind.seg()
        );
        self.plane.update_source(|i| i.events_refused += 1);
    }

    /// A key that cannot be ours (unknown kind, bad id): refused, nothing else changes.
    pub fn refuse_key(&mut self, why: &str, rev: i64) {
        log::warn!("etcd: ignored a key at revision {rev}: {why}");
        self.plane.update_source(|i| i.events_refused += 1);
    }

    /// One watch event: `value` is the parsed object (Ok(None): deleted). Err when the shards
    /// aborted the swap: the caller resyncs.
    pub fn apply_event(
        &mut self,
        kind: Kind,
        id: &str,
        value: Result<Option<Value>, String>,
        mod_rev: i64,
        rev: i64,
    ) -> Result<(), String> {
        {
            let mut g = self.shared.lock();
            match &value {
                Ok(None) => g.revs.remove(&(kind, id.to_string())),
                _ => g.revs.insert((kind, id.to_string()), mod_rev),
            };
        }
        let etcd = match value {
            Ok(v) => v,
            Err(why) => {
                self.refuse(kind, id, &why, rev);
                return Ok(());
            }
        };
        let want = self.desired(kind, id, etcd);
        self.plane
            .update_source(|i| i.last_event = Some(Instant::now()));
        match self.apply(kind, id, want, rev) {
            Ok(true) => self.retry_refused(rev),
            Ok(false) => Ok(()),
            Err(e) => {
                // Not applied: the resync that follows must not take it as seen.
                self.shared.lock().revs.remove(&(kind, id.to_string()));
                Err(e)
            }
        }
    }

    /// Applies `want` for `kind/id` if the node holds something else. Ok(true): applied.
    fn apply(
        &mut self,
        kind: Kind,
        id: &str,
        want: Option<Value>,
        rev: i64,
    ) -> Result<bool, String> {
        let ops = self.ops.clone();
        let mut guard = ops.store.lock().unwrap_or_else(|e| e.into_inner());
        let Some(store) = guard.as_mut() else {
            return Err("no document to apply to".into());
        };
        if store.sets.get(kind.seg()).and_then(|s| s.get(id)) == want.as_ref() {
            self.refused.remove(&(kind, id.to_string()));
            return Ok(false);
        }
        match change::apply_one(&self.plane, store, kind, id, want.clone()) {
            Ok(done) => {
                drop(guard);
                log::debug!(
                    "etcd: {}/{id} at revision {rev}: generation {} in {:?} ({})",
                    kind.seg(),
                    done.generation,
                    done.took,
                    done.how
                );
                self.refused.remove(&(kind, id.to_string()));
                self.plane.update_source(|i| i.events_applied += 1);
                Ok(true)
            }
            Err(Refused::Invalid(e)) => {
                drop(guard);
                self.refuse(kind, id, &e.to_string(), rev);
                self.refused.insert((kind, id.to_string()), want);
                Ok(false)
            }
            Err(Refused::Aborted(e)) => Err(e),
        }
    }

    /// Objects refused because of others (a route naming an upstream not yet there, an
    /// upstream delete while routes still use it) are tried again after each applied change.
    fn retry_refused(&mut self, rev: i64) -> Result<(), String> {
        loop {
            let pending: Vec<_> = std::mem::take(&mut self.refused).into_iter().collect();
            if pending.is_empty() {
                return Ok(());
            }
            let before = pending.len();
            let mut progress = false;
            for ((kind, id), want) in pending {
                let ops = self.ops.clone();
                let mut guard = ops.store.lock().unwrap_or_else(|e| e.into_inner());
                let Some(store) = guard.as_mut() else {
                    return Ok(());
                };
                if store.sets.get(kind.seg()).and_then(|s| s.get(&id)) == want.as_ref() {
                    continue;
                }
                match change::apply_one(&self.plane, store, kind, &id, want.clone()) {
                    Ok(_) => {
                        log::info!("etcd: {}/{id} accepted now (at revision {rev})", kind.seg());
                        self.plane.update_source(|i| i.events_applied += 1);
                        progress = true;
                    }
                    Err(Refused::Invalid(_)) => {
                        self.refused.insert((kind, id), want);
                    }
                    Err(Refused::Aborted(e)) => return Err(e),
                }
            }
            if !progress || self.refused.len() >= before {
                return Ok(());
            }
        }
    }

    /// The objects `kvs` describe (file objects where etcd has none), with mod revisions
    /// recorded and unreadable keys or values refused.
    fn wanted(&mut self, kvs: Vec<Kv>, rev: i64) -> (Sets, Revs) {
        let mut want = self.file_sets.clone();
        let mut revs = HashMap::with_capacity(kvs.len());
        for kv in kvs {
            let (kind, id) = match keys::parse_key(&self.prefix, &kv.key) {
                Ok(k) => k,
                Err(why) => {
                    self.refuse_key(&why, rev);
                    continue;
                }
            };
            revs.insert((kind, id.clone()), kv.mod_rev);
            match keys::parse_value(kind, &id, &kv.value) {
                Ok(v) => {
                    want.entry(kind.seg()).or_default().insert(id, v);
                }
                Err(why) => {
                    self.refuse(kind, &id, &why, rev);
                    // An unreadable object keeps what the node had, as an unreadable event does.
                    let keep = self
                        .ops
                        .store
                        .lock()
                        .ok()
                        .and_then(|g| g.as_ref()?.sets.get(kind.seg())?.get(&id).cloned());
                    let set = want.entry(kind.seg()).or_default();
                    match keep {
                        Some(v) => set.insert(id, v),
                        None => set.remove(&id),
                    };
                }
            }
        }
        (want, revs)
    }

    /// The fast form of `wanted` + `difference` for a node that followed etcd until now: a key
    /// whose mod revision is the one last seen is unchanged, its value is not even parsed (a
    /// resync after a blip costs reading the keys, not 50,000 JSON documents). Keys gone from
    /// etcd fall back to the file's object, as a delete event does.
    fn changed_since(&mut self, old: &Revs, kvs: Vec<Kv>, rev: i64) -> (Vec<Change>, Revs) {
        let mut revs = HashMap::with_capacity(kvs.len());
        let mut out = Vec::new();
        for kv in kvs {
            let (kind, id) = match keys::parse_key(&self.prefix, &kv.key) {
                Ok(k) => k,
                Err(why) => {
                    self.refuse_key(&why, rev);
                    continue;
                }
            };
            let unchanged = old.get(&(kind, id.clone())) == Some(&kv.mod_rev);
            revs.insert((kind, id.clone()), kv.mod_rev);
            if unchanged {
                continue;
            }
            match keys::parse_value(kind, &id, &kv.value) {
                Ok(v) => out.push((kind, id, Some(v))),
                // An unreadable object keeps what the node had, as an unreadable event does.
                Err(why) => self.refuse(kind, &id, &why, rev),
            }
        }
        for (kind, id) in old.keys() {
            if !revs.contains_key(&(*kind, id.clone())) {
                out.push((*kind, id.clone(), self.desired(*kind, id, None)));
            }
        }
        // Only what differs from what the node holds.
        let guard = self.ops.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = guard.as_ref() {
            out.retain(|(kind, id, want)| {
                store.sets.get(kind.seg()).and_then(|s| s.get(id)) != want.as_ref()
            });
        }
        (out, revs)
    }

    /// A resync (start, reconnect, compaction, an older revision): brings the node to exactly
    /// `kvs` at `rev`, changing only the objects that differ. Err: the shards aborted a swap.
    pub fn resync(&mut self, kvs: Vec<Kv>, rev: i64) -> Result<usize, String> {
        let t0 = (Instant::now(), thread_cpu());
        // Cloned, not held: the admin thread takes the store lock, then this one.
        let old = self.shared.lock().revs.clone();
        // Revisions prove nothing when etcd went back (restored, replaced) or were never seen
        // (the node started from its saved configuration): then every value is compared.
        let full = old.is_empty() || rev < self.shared.revision();
        let (changes, revs) = if full {
            let (want, revs) = self.wanted(kvs, rev);
            let guard = self.ops.store.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                Some(store) => (difference(&store.sets, &want), revs),
                None => return Err("no document to apply to".into()),
            }
        } else {
            self.changed_since(&old, kvs, rev)
        };
        self.refused.clear();
        let n = changes.len();
        let routes_only = changes.iter().all(|(k, _, _)| *k == Kind::Routes);
        if n > 0 && !(routes_only && n <= ROUTES_ONE_BY_ONE) {
            let ops = self.ops.clone();
            let mut guard = ops.store.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(store) = guard.as_mut() {
                match change::apply_many(&self.plane, store, &changes) {
                    Ok((g, took)) => {
                        drop(guard);
                        self.shared.lock().revs = revs;
                        self.plane.update_source(|i| i.events_applied += n as u64);
                        self.finish_resync(
                            rev,
                            n,
                            t0,
                            &format!("one build, generation {g} in {took:?}"),
                        );
                        return Ok(n);
                    }
                    Err(Refused::Aborted(e)) => return Err(e),
                    // Some object is invalid: one by one below finds which.
                    Err(Refused::Invalid(_)) => {}
                }
            }
        }
        for (kind, id, want) in order_for_one_by_one(changes) {
            self.apply(kind, &id, want, rev)?;
        }
        self.shared.lock().revs = revs;
        self.retry_refused(rev)?;
        self.finish_resync(rev, n, t0, "one object at a time");
        Ok(n)
    }

    fn finish_resync(&mut self, rev: i64, n: usize, t0: (Instant, Duration), how: &str) {
        let how = if n == 0 { "nothing to apply" } else { how };
        self.set_revision(rev);
        if n > 0 {
            self.plane
                .update_source(|i| i.last_event = Some(Instant::now()));
        }
        log::info!(
            "etcd: in sync at revision {rev}: {n} object(s) differed ({how}), {} refused, in {:?} ({:?} of CPU)",
            self.refused.len(),
            t0.0.elapsed(),
            thread_cpu().saturating_sub(t0.1)
        );
    }
}

/// CPU time this thread has used: the log's resync cost on a busy machine, where wall time
/// mostly measures waiting for a core.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given, which lives on this stack.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// What differs between what the node holds and what it should: (kind, id, wanted object).
pub fn difference(have: &Sets, want: &Sets) -> Vec<(Kind, String, Option<Value>)> {
    let empty = BTreeMap::new();
    let mut out = Vec::new();
    for kind in KINDS {
        let h = have.get(kind.seg()).unwrap_or(&empty);
        let w = want.get(kind.seg()).unwrap_or(&empty);
        for (id, v) in w {
            if h.get(id) != Some(v) {
                out.push((kind, id.clone(), Some(v.clone())));
            }
        }
        for id in h.keys() {
            if !w.contains_key(id) {
                out.push((kind, id.clone(), None));
            }
        }
    }
    out
}

/// Puts of what others refer to first (upstreams, consumers, global rules), then routes; then
/// route deletes before the deletes of what they referred to.
fn order_for_one_by_one(
    changes: Vec<(Kind, String, Option<Value>)>,
) -> Vec<(Kind, String, Option<Value>)> {
    let rank = |(k, _, v): &(Kind, String, Option<Value>)| match (k, v.is_some()) {
        (Kind::Routes, true) => 1,
        (Kind::Routes, false) => 2,
        (_, true) => 0,
        (_, false) => 3,
    };
    let mut c = changes;
    c.sort_by_key(rank);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sets(items: &[(&'static str, &str, Value)]) -> Sets {
        let mut s = Sets::new();
        for k in KINDS {
            s.insert(k.seg(), BTreeMap::new());
        }
        for (k, id, v) in items {
            s.get_mut(k).unwrap().insert(id.to_string(), v.clone());
        }
        s
    }

    #[test]
    fn the_difference_names_only_what_changed_and_orders_references() {
        let have = sets(&[
            ("routes", "same", json!({"name": "same"})),
            ("routes", "old", json!({"name": "old"})),
            ("upstreams", "gone", json!({"name": "gone"})),
            ("upstreams", "u", json!({"name": "u", "v": 1})),
        ]);
        let want = sets(&[
            ("routes", "same", json!({"name": "same"})),
            ("routes", "new", json!({"name": "new"})),
            ("upstreams", "u", json!({"name": "u", "v": 2})),
        ]);
        let d = difference(&have, &want);
        let names: Vec<_> = d
            .iter()
            .map(|(k, id, v)| format!("{}/{id}:{}", k.seg(), v.is_some()))
            .collect();
        assert_eq!(
            names,
            [
                "routes/new:true",
                "routes/old:false",
                "upstreams/u:true",
                "upstreams/gone:false"
            ]
        );
        let ordered: Vec<_> = order_for_one_by_one(d)
            .into_iter()
            .map(|(k, id, _)| format!("{}/{id}", k.seg()))
            .collect();
        assert_eq!(
            ordered,
            ["upstreams/u", "routes/new", "routes/old", "upstreams/gone"]
        );
        assert!(difference(&want, &want).is_empty());
    }
}
