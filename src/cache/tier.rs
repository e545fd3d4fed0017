//! The shared cache tier's shard side (`l2`): its validated settings, the wire form of a stored
//! entry (encoded on the tier thread, decoded there with every field checked), and the requests a
//! shard hands to the node's tier thread. Must not touch sockets: fleet/tier.rs does the I/O and
//! answers lookups as cache-lane mail (`Mail::Answer`), so a shard never blocks on the tier.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Entry, Target};

/// Which server the tier is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Redis,
    Memcached,
}

/// A route's validated `l2` table (see README "Shared cache tier").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TierConf {
    pub backend: Backend,
    /// host:port.
    pub addr: String,
    /// Every tier call's limit; a lookup that takes longer is a miss.
    pub timeout: Duration,
    /// Larger objects stay node-local.
    pub max_object_bytes: usize,
    /// No object is kept in the tier longer than this.
    pub ttl_cap: Duration,
    /// Names this cache in the tier on every node: the plugin table's owner (`route "name"`).
    pub ns: String,
}

/// What a shard asks of the tier thread.
pub enum TierReq {
    /// Look `key` up; the answer goes to `shard`'s waiting request `id` as cache-lane mail.
    Get {
        conf: Arc<TierConf>,
        key: Vec<u8>,
        shard: usize,
        id: u64,
    },
    /// Write an entry this node just stored (no answer).
    Put {
        conf: Arc<TierConf>,
        key: Vec<u8>,
        entry: Arc<Entry>,
    },
    /// Remove matches from the tier and tell the other nodes (no answer).
    Purge { conf: Arc<TierConf>, target: Target },
}

/// A shard's way to the tier thread: lookups and purges (each answered or bounded in time by
/// the thread), and writes on a bounded queue that drops when full.
#[derive(Clone)]
pub struct TierLink {
    pub asks: tokio::sync::mpsc::UnboundedSender<TierReq>,
    pub puts: tokio::sync::mpsc::Sender<TierReq>,
}

/// How many writes may wait for the tier thread before new ones are dropped (and counted).
pub const PUT_QUEUE: usize = 1024;

/// A cache instance's tier: its settings and the link.
pub struct Tier {
    pub conf: Arc<TierConf>,
    pub link: TierLink,
}

impl Tier {
    /// Queues `entry` for the tier unless it is too large or the queue is full.
    pub fn put(&self, key: &[u8], entry: &Arc<Entry>) {
        if entry.size() > self.conf.max_object_bytes {
            return;
        }
        let r = self.link.puts.try_send(TierReq::Put {
            conf: self.conf.clone(),
            key: key.to_vec(),
            entry: entry.clone(),
        });
        if r.is_err() {
            // Only when the queue is full: never on a normal request.
            crate::metrics::tier::TIER.dropped.fetch_add(1, Relaxed);
        }
    }

    pub fn purge(&self, target: &Target) {
        let _ = self.link.asks.send(TierReq::Purge {
            conf: self.conf.clone(),
            target: target.clone(),
        });
    }
}

const MAGIC: &[u8; 4] = b"RWC1";

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// The tier's form of an entry under `key`: everything freshness, Age, revalidation and Vary
/// need (storage time, initial age, lifetime, stale windows, flags, headers, vary values, body).
pub fn encode(key: &[u8], e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + key.len() + e.size());
    out.extend_from_slice(MAGIC);
    put_bytes(&mut out, key);
    out.extend_from_slice(&e.status.to_le_bytes());
    for v in [
        e.stored_ms,
        e.initial_age_ms,
        e.lifetime_ms,
        e.swr_ms,
        e.sie_ms,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.push(u8::from(e.no_cache) | u8::from(e.no_stale) << 1 | u8::from(e.auth_ok) << 2);
    out.extend_from_slice(&(e.headers.len() as u32).to_le_bytes());
    for (n, v) in &e.headers {
        put_bytes(&mut out, n);
        put_bytes(&mut out, v);
    }
    out.extend_from_slice(&(e.vary.len() as u32).to_le_bytes());
    for (n, v) in &e.vary {
        put_bytes(&mut out, n.as_bytes());
        match v {
            Some(v) => {
                out.push(1);
                put_bytes(&mut out, v);
            }
            None => out.push(0),
        }
    }
    put_bytes(&mut out, &e.body);
    out
}

struct Cursor {
    buf: Bytes,
    at: usize,
}

impl Cursor {
    fn take(&mut self, n: usize) -> Option<Bytes> {
        let end = self.at.checked_add(n)?;
        if end > self.buf.len() {
            return None;
        }
        let b = self.buf.slice(self.at..end);
        self.at = end;
        Some(b)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Some(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// A count of items each at least `min` bytes long: never more than the bytes left allow.
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n <= (self.buf.len() - self.at) / min).then_some(n)
    }
}

/// A header name a response may carry: an RFC 9110 token.
fn is_token(b: &[u8]) -> bool {
    !b.is_empty()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// A header value that cannot break the response it is written into.
fn is_value(b: &[u8]) -> bool {
    b.iter().all(|&c| c != b'\r' && c != b'\n' && c != 0)
}

/// Reads what `encode` wrote for `key` (the body and headers are slices of `blob`, not copies).
/// `None` for anything else: another key (a hash collision in the tier), another format, a
/// truncated or altered blob, headers that could not be sent as they are. Never panics.
pub fn decode(key: &[u8], blob: Bytes) -> Option<Entry> {
    let mut c = Cursor { buf: blob, at: 0 };
    if &c.take(4)?[..] != MAGIC || c.bytes()? != key {
        return None;
    }
    let status = c.u16()?;
    if !(200..=599).contains(&status) {
        return None;
    }
    let mut t = [0u64; 5];
    for v in &mut t {
        *v = c.u64()?;
    }
    let flags = c.u8()?;
    if flags > 7 {
        return None;
    }
    let n = c.count(8)?;
    let mut headers = Vec::with_capacity(n);
    for _ in 0..n {
        let (name, value) = (c.bytes()?, c.bytes()?);
        if !is_token(&name) || !is_value(&value) {
            return None;
        }
        headers.push((name, value));
    }
    let n = c.count(5)?;
    let mut vary = Vec::with_capacity(n);
    for _ in 0..n {
        let name = c.bytes()?;
        if !is_token(&name) || name.iter().any(u8::is_ascii_uppercase) {
            return None;
        }
        let name: Box<str> = std::str::from_utf8(&name).ok()?.into();
        let value = match c.u8()? {
            0 => None,
            1 => Some(c.bytes()?),
            _ => return None,
        };
        vary.push((name, value));
    }
    let body = c.bytes()?;
    if c.at != c.buf.len() {
        return None;
    }
    let [stored_ms, initial_age_ms, lifetime_ms, swr_ms, sie_ms] = t;
    Some(Entry {
        status,
        headers,
        body,
        vary,
        stored_ms,
        initial_age_ms,
        lifetime_ms,
        swr_ms,
        sie_ms,
        no_cache: flags & 1 != 0,
        no_stale: flags & 2 != 0,
        auth_ok: flags & 4 != 0,
        partial: None,
    })
}

/// How long the tier should keep `e` (ms from `now_ms`): while it can still be served or
/// revalidated, never past `cap`; `None` if it is of no further use.
pub fn keep_ms(e: &Entry, now_ms: u64, cap: Duration) -> Option<u64> {
    let cap = cap.as_millis() as u64;
    let left = if e.has_validator() {
        cap
    } else {
        (e.lifetime_ms + e.swr_ms.max(e.sie_ms)).saturating_sub(e.age_ms(now_ms))
    };
    Some(left.min(cap)).filter(|&l| l > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            status: 200,
            headers: vec![
                (Bytes::from_static(b"ETag"), Bytes::from_static(b"\"v1\"")),
                (
                    Bytes::from_static(b"Cache-Control"),
                    Bytes::from_static(b"max-age=60"),
                ),
            ],
            body: Bytes::from_static(b"hello"),
            vary: vec![
                ("accept-encoding".into(), Some(Bytes::from_static(b"gzip"))),
                ("x-a".into(), None),
            ],
            stored_ms: 1_700_000_000_000,
            initial_age_ms: 3000,
            lifetime_ms: 60_000,
            swr_ms: 5000,
            sie_ms: 0,
            no_cache: false,
            no_stale: true,
            auth_ok: true,
            partial: None,
        }
    }

    #[test]
    fn entries_round_trip_and_altered_blobs_are_refused() {
        let e = sample();
        let blob = Bytes::from(encode(b"k1", &e));
        let d = decode(b"k1", blob.clone()).expect("decodes");
        assert_eq!(format!("{d:?}"), format!("{e:?}"));
        assert!(decode(b"k2", blob.clone()).is_none(), "another key");
        for cut in 0..blob.len() {
            assert!(decode(b"k1", blob.slice(..cut)).is_none(), "cut at {cut}");
        }
        let mut longer = blob.to_vec();
        longer.push(0);
        assert!(decode(b"k1", longer.into()).is_none(), "trailing bytes");
        let mut bad = e.clone();
        bad.headers[0].1 = Bytes::from_static(b"x\r\nInjected: 1");
        assert!(decode(b"k1", encode(b"k1", &bad).into()).is_none());
    }

    #[test]
    fn kept_while_useful_and_capped() {
        let e = sample();
        let cap = Duration::from_secs(3600);
        // A validator keeps it revalidatable: up to the cap.
        assert_eq!(keep_ms(&e, e.stored_ms, cap), Some(3_600_000));
        let mut plain = e.clone();
        plain.headers.retain(|(n, _)| &n[..] != b"ETag");
        // 60 s of life + 5 s of stale-while-revalidate, 3 s of it already gone.
        assert_eq!(keep_ms(&plain, plain.stored_ms, cap), Some(62_000));
        assert_eq!(keep_ms(&plain, plain.stored_ms + 62_000, cap), None);
        assert_eq!(
            keep_ms(&plain, plain.stored_ms, Duration::from_secs(10)),
            Some(10_000)
        );
    }
}
