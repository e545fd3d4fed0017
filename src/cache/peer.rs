//! The cache's cross-shard protocol: which shard owns a key, the mail shards exchange over the
//! mesh's cache lane (asks, answers, puts, purges), fetch coalescing per node, and the waits.
//! Must not touch sockets or requests: proxy/cached.rs drives it per request.
//!
//! A key's owner is a stable hash of it over the shards; only the owner's store holds it and
//! only the owner's in-flight table coalesces its fetches. A shard asked for a key it does not
//! own sends an `Ask` to the owner and waits for the `Answer` (the stored variants as `Arc`s:
//! the body bytes are shared, never copied); the owner may make the asker the fetch's leader or
//! put it on the flight's waiting list, answered again when the fetch is done. Whatever the
//! leader learns (a new entry, a 304's refresh, a removal) goes back to the owner as a `Put`.
//! With one shard every key is local and nothing is sent.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::tier::TierReq;
use super::{now_ms, Entry, Instance, PurgeMsg, Target};
use crate::util::hash::BytesHasher;

/// How long a shard waits for the owner's first answer: the owner answers when its control loop
/// wakes (microseconds), so only a wedged owner takes this long; the request then goes to the
/// origin as an uncoalesced miss.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// The shard owning the key with this hash, out of `shards`. A remix of the key's hash (the
/// store's map and sketch use its bits as they are) reduced by multiply-shift: stable for a
/// given worker count, even over the shards.
#[inline]
pub fn owner(hash: u64, shards: usize) -> usize {
    let h = (hash ^ (hash >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    ((h * shards as u64) >> 32) as usize
}

/// Everything that travels on the cache lane; caches are named by `Instance::key`.
#[derive(Clone)]
pub enum Mail {
    /// Remove matches on the receiving shard (every shard gets it).
    Purge(PurgeMsg),
    /// To a key's owner: what is stored, and maybe a turn in its fetch.
    Ask(Ask),
    /// Back to the asking shard, for its waiting request `id`.
    Answer { id: u64, answer: Answer },
    /// To a key's owner: a change to the key, and maybe the end of the fetch `flight`.
    Put(Put),
    /// From the tier thread: another node purged `target` from caches of tier namespace `ns`.
    TierPurge { ns: Arc<str>, target: Target },
}

#[derive(Clone, Debug)]
pub struct Ask {
    pub cache: u64,
    pub from: usize,
    pub id: u64,
    pub key: Box<[u8]>,
    pub hash: u64,
    pub claim: Claim,
}

/// What an `Ask` wants of the key's fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Only what is stored.
    No,
    /// Nothing stored: lead the fetch or wait for it (a miss, in one round trip).
    IfEmpty,
    /// Lead, or nothing if a fetch runs (a stale-while-revalidate refresh).
    LeadOnly,
    /// Lead, or wait for the fetch that runs (a stale entry that needs the origin).
    LeadOrWait,
}

#[derive(Clone, Debug, Default)]
pub struct Answer {
    /// The owner has this cache (false while a reload builds it there): a plain miss.
    pub known: bool,
    /// Every stored variant of the key.
    pub variants: Vec<Arc<Entry>>,
    pub turn: Turn,
}

/// The asker's part in the key's fetch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Turn {
    /// Not asked for, or the owner does not know the cache.
    #[default]
    None,
    /// Fetch it; end the flight with a `Put` naming this id.
    Lead(u64),
    /// Another shard fetches it: a second answer (`Done`) comes when it is stored or failed.
    Wait,
    /// A fetch runs (for `Claim::LeadOnly`).
    Busy,
    /// The fetch waited for is over; `variants` is what it left.
    Done,
}

#[derive(Clone, Debug)]
pub struct Put {
    pub cache: u64,
    pub key: Box<[u8]>,
    pub hash: u64,
    pub op: Op,
    pub flight: Option<u64>,
}

#[derive(Clone, Debug)]
pub enum Op {
    Keep,
    Store(Arc<Entry>),
    Remove,
}

/// One fetch of one key on its owner: local waiters park on the gate, remote ones are listed.
pub struct Flight {
    pub id: u64,
    started_ms: u64,
    /// Led by another shard: taken over if it outlives `lock_timeout` (its shard may be gone).
    remote: bool,
    gate: Gate,
    waiters: RefCell<Vec<(usize, u64)>>,
}

impl Instance {
    /// The shard that stores the key with this hash.
    #[inline]
    pub fn owner_of(&self, hash: u64) -> usize {
        match self.lane.shards() {
            1 => self.shard,
            n => owner(hash, n),
        }
    }

    #[inline]
    pub fn is_local(&self, hash: u64) -> bool {
        self.owner_of(hash) == self.shard
    }

    /// Applies `op` to `key` on its owner (here, or by mail) and, with `flight`, ends that fetch.
    pub fn put(&self, key: &[u8], hash: u64, op: Op, flight: Option<u64>) {
        let to = self.owner_of(hash);
        if to == self.shard {
            self.apply(key, hash, op, flight);
            return;
        }
        self.lane.send(
            to,
            Mail::Put(Put {
                cache: self.key,
                key: key.into(),
                hash,
                op,
                flight,
            }),
        );
    }

    /// Owner side of a `Put`.
    pub(super) fn apply(&self, key: &[u8], hash: u64, op: Op, flight: Option<u64>) {
        match op {
            Op::Keep => {}
            Op::Store(e) => {
                self.store.borrow_mut().insert(key, hash, e);
            }
            Op::Remove => {
                self.store.borrow_mut().remove(key);
            }
        }
        if let Some(id) = flight {
            let f = {
                let mut m = self.inflight.borrow_mut();
                match m.get(key) {
                    Some(f) if f.id == id => m.remove(key),
                    _ => None,
                }
            };
            if let Some(f) = f {
                self.release(key, &f);
            }
        }
    }

    /// Sends `Ask` to the key's owner; the returned `Asking` receives the answers.
    pub fn ask(&self, key: &[u8], hash: u64, claim: Claim) -> Asking {
        let asking = self.peers.open();
        let sent = self.lane.send(
            self.owner_of(hash),
            Mail::Ask(Ask {
                cache: self.key,
                from: self.shard,
                id: asking.id,
                key: key.into(),
                hash,
                claim,
            }),
        );
        if !sent {
            // The owner has exited (shutdown): answer "unknown" at once.
            asking.slot.answer.replace(Some(Answer::default()));
        }
        asking
    }

    /// Asks the shared tier for `key` (`None` without one): the tier thread answers like an
    /// owner, with the entry found (or none) as cache-lane mail, or not at all past its timeout.
    pub fn ask_tier(&self, key: &[u8]) -> Option<Asking> {
        let t = self.tier.as_ref()?;
        let asking = self.peers.open();
        let req = TierReq::Get {
            conf: t.conf.clone(),
            key: key.to_vec(),
            shard: self.shard,
            id: asking.id,
        };
        if t.link.asks.send(req).is_err() {
            // The tier thread is gone: a miss at once.
            asking.slot.answer.replace(Some(Answer::default()));
        }
        Some(asking)
    }

    /// Owner side of an `Ask`: counts the request for admission, returns the variants (a hit
    /// promotes them) and settles the asker's turn in the fetch.
    pub(super) fn answer(&self, a: &Ask) -> Answer {
        let variants = {
            let mut s = self.store.borrow_mut();
            s.touch(a.hash);
            s.get_all(&a.key)
        };
        let turn = match a.claim {
            Claim::No => Turn::None,
            Claim::IfEmpty if !variants.is_empty() => Turn::None,
            c => match self.flight(&a.key, true) {
                Ok(f) => Turn::Lead(f.id),
                Err(_) if c == Claim::LeadOnly => Turn::Busy,
                Err(f) => {
                    f.waiters.borrow_mut().push((a.from, a.id));
                    Turn::Wait
                }
            },
        };
        Answer {
            known: true,
            variants,
            turn,
        }
    }

    /// Owner side: a new flight for `key` (Ok, the caller leads it) or the one running (Err).
    fn flight(&self, key: &[u8], remote: bool) -> Result<Rc<Flight>, Rc<Flight>> {
        let now = now_ms();
        let mut m = self.inflight.borrow_mut();
        if let Some(f) = m.get(key) {
            let lock = self.conf.lock_timeout.as_millis() as u64;
            if !f.remote || now.saturating_sub(f.started_ms) < lock {
                return Err(f.clone());
            }
        }
        let id = self.flights.get() + 1;
        self.flights.set(id);
        let f = Rc::new(Flight {
            id,
            started_ms: now,
            remote,
            gate: Gate::default(),
            waiters: RefCell::default(),
        });
        m.insert(key.to_vec(), f.clone());
        Ok(f)
    }

    /// A fetch is over (its entry, if any, already stored): wakes the waiters here and answers
    /// the ones on other shards with what is stored now.
    fn release(&self, key: &[u8], f: &Flight) {
        f.gate.open();
        let waiters = std::mem::take(&mut *f.waiters.borrow_mut());
        if waiters.is_empty() {
            return;
        }
        let variants = self.store.borrow().peek_all(key);
        for (shard, id) in waiters {
            let answer = Answer {
                known: true,
                variants: variants.clone(),
                turn: Turn::Done,
            };
            self.lane.send(shard, Mail::Answer { id, answer });
        }
    }
}

/// A one-shot signal on one shard: waiters for a coalesced fetch park here.
#[derive(Default)]
pub struct Gate {
    open: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Gate {
    pub fn open(&self) {
        self.open.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// Waits for a flight's gate.
pub struct GateWait(Rc<Flight>);

impl Future for GateWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.gate.open.get() {
            return Poll::Ready(());
        }
        self.0.gate.wakers.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

impl Flight {
    pub fn wait(self: Rc<Self>) -> GateWait {
        GateWait(self)
    }
}

/// Held by the request fetching a key for the node; dropping it (done, failed or cancelled)
/// ends the flight on the owner, which releases the waiters there and on other shards.
pub enum Leader {
    Local {
        inst: Rc<Instance>,
        key: Vec<u8>,
        flight: Rc<Flight>,
    },
    Remote {
        inst: Rc<Instance>,
        key: Vec<u8>,
        hash: u64,
        id: u64,
    },
}

impl Leader {
    /// On the key's owner: becomes the fetcher of `key`, or returns the fetch already running.
    pub fn claim(inst: &Rc<Instance>, key: &[u8]) -> Result<Leader, Rc<Flight>> {
        let flight = inst.flight(key, false)?;
        Ok(Leader::Local {
            inst: inst.clone(),
            key: key.to_vec(),
            flight,
        })
    }

    /// The turn `Turn::Lead(id)` the owner gave this shard.
    pub fn remote(inst: &Rc<Instance>, key: &[u8], hash: u64, id: u64) -> Leader {
        Leader::Remote {
            inst: inst.clone(),
            key: key.to_vec(),
            hash,
            id,
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        match self {
            Leader::Local { inst, key, flight } => {
                {
                    let mut m = inst.inflight.borrow_mut();
                    if m.get(&key[..]).is_some_and(|g| Rc::ptr_eq(g, flight)) {
                        m.remove(&key[..]);
                    }
                }
                inst.release(key, flight);
            }
            Leader::Remote {
                inst,
                key,
                hash,
                id,
            } => {
                inst.put(key, *hash, Op::Keep, Some(*id));
            }
        }
    }
}

/// This shard's requests waiting for answers from owners, by id (our own counter: a plain
/// hasher will do).
#[derive(Default)]
pub struct Peers {
    next: Cell<u64>,
    waiting: RefCell<HashMap<u64, Rc<Slot>, BuildHasherDefault<BytesHasher>>>,
}

#[derive(Default)]
struct Slot {
    answer: RefCell<Option<Answer>>,
    waker: RefCell<Option<Waker>>,
}

impl Peers {
    fn open(self: &Rc<Self>) -> Asking {
        let id = self.next.get() + 1;
        self.next.set(id);
        let slot = Rc::new(Slot::default());
        self.waiting.borrow_mut().insert(id, slot.clone());
        Asking {
            peers: self.clone(),
            id,
            slot,
        }
    }

    /// An answer arrived (ignored if its request stopped waiting).
    pub fn fill(&self, id: u64, answer: Answer) {
        let Some(slot) = self.waiting.borrow().get(&id).cloned() else {
            return;
        };
        slot.answer.replace(Some(answer));
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }
}

/// One request's registration for answers from an owner; dropping it stops listening.
pub struct Asking {
    peers: Rc<Peers>,
    id: u64,
    slot: Rc<Slot>,
}

impl Asking {
    /// The next answer, or `None` after `within`.
    pub async fn next(&self, within: Duration) -> Option<Answer> {
        if let Some(a) = self.slot.answer.take() {
            return Some(a);
        }
        // Boxed: an inline monoio timer would over-align the request future.
        Box::pin(monoio::time::timeout(within, Next(&self.slot)))
            .await
            .ok()
    }
}

struct Next<'a>(&'a Slot);

impl Future for Next<'_> {
    type Output = Answer;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match self.0.answer.take() {
            Some(a) => Poll::Ready(a),
            None => {
                self.0.waker.replace(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

impl Drop for Asking {
    fn drop(&mut self) {
        self.peers.waiting.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn owners_are_stable_and_even() {
        for n in [1, 2, 3, 4, 8] {
            let mut count = vec![0usize; n];
            for k in 0..40_000u64 {
                let h = xxhash_rust::xxh3::xxh3_64(&k.to_le_bytes());
                let o = owner(h, n);
                assert_eq!(o, owner(h, n));
                count[o] += 1;
            }
            let even = 40_000 / n;
            for c in count {
                assert!(c.abs_diff(even) < even / 20, "{n} shards: {c} vs {even}");
            }
        }
    }
}
