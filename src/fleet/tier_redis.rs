//! The shared cache tier's Redis side (called by the tier thread, `tier.rs`): where entries,
//! their Vary variants and tag sets live, one lookup, one write, one purge, and the purge
//! channel with its replay stream. Must not touch shards beyond handing them `Mail::TierPurge`.
//!
//! Every Vary variant of a key is kept: an entry without Vary under the key's own Redis key, each
//! variant under the key plus a suffix derived from its Vary'd request values, listed in a small
//! set beside it (the variant index). A lookup (one script, one round trip) returns the key's
//! entry and every listed variant; the shard picks the one its request matches. Purges are also
//! appended to a capped stream, so a node whose subscription was down replays what it missed.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, RedisResult, Value};
use xxhash_rust::xxh3::xxh3_64;

use crate::cache::peer::Mail;
use crate::cache::{Entry, Target};
use crate::metrics::tier::TIER;
use crate::util::mesh::Inlet;

pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The Redis channel purges travel on between nodes.
pub const PURGE_CHANNEL: &str = "ringway:cache:purge";

/// Per Redis address, the cache namespaces seen using it (the tier thread adds, the listener
/// reads them after a purge gap).
pub(crate) type Namespaces = Rc<std::cell::RefCell<HashMap<String, HashSet<String>>>>;

/// What a purge listener needs of the tier thread: the shards' inlet, this node's name in
/// published purges (its own are not applied twice), and the namespaces.
pub(crate) struct Hearer {
    pub mail: Inlet<Mail>,
    pub node: String,
    pub namespaces: Namespaces,
}

/// The capped stream every purge is also appended to (about this many kept).
pub const PURGE_STREAM: &str = "ringway:cache:purges";
const STREAM_MAXLEN: u64 = 10_000;
/// Variants a lookup returns at most (a key with more: the rest are misses on other nodes).
const MAX_VARIANTS: usize = 32;

/// Where a cache's entry for `key` lives in Redis: the namespace hashed, then the key as it is.
pub fn redis_key(ns: &str, key: &[u8]) -> Vec<u8> {
    let mut k = format!("ringway:c:{:016x}:", xxh3_64(ns.as_bytes())).into_bytes();
    k.extend_from_slice(key);
    k
}

/// The set listing `key`'s variant keys. Cache keys never hold a NUL (they come from the request
/// line and headers), so suffixes after one cannot be another key's; they still start with the
/// key, so a prefix purge's SCAN finds them.
fn index_key(ns: &str, key: &[u8]) -> Vec<u8> {
    let mut k = redis_key(ns, key);
    k.extend_from_slice(b"\0i");
    k
}

/// Where the variant of `key` selected by `vary` (the Vary'd request values) lives.
fn variant_key(ns: &str, key: &[u8], vary: &[(Box<str>, Option<bytes::Bytes>)]) -> Vec<u8> {
    let mut sel = Vec::new();
    for (n, v) in vary {
        sel.extend_from_slice(n.as_bytes());
        match v {
            Some(v) => {
                sel.push(1);
                sel.extend_from_slice(&(v.len() as u32).to_le_bytes());
                sel.extend_from_slice(v);
            }
            None => sel.push(0),
        }
    }
    let mut k = redis_key(ns, key);
    k.extend_from_slice(format!("\0v{:016x}", xxh3_64(&sel)).as_bytes());
    k
}

/// The set of keys stored with Surrogate-Key `tag`.
fn tag_key(ns: &str, tag: &[u8]) -> Vec<u8> {
    let mut k = format!("ringway:t:{:016x}:", xxh3_64(ns.as_bytes())).into_bytes();
    k.extend_from_slice(tag);
    k
}

fn tags(e: &Entry) -> impl Iterator<Item = &[u8]> {
    e.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"surrogate-key"))
        .flat_map(|(_, v)| v.split(|&b| b == b' ').filter(|t| !t.is_empty()))
}

/// KEYS = the key's entry, its variant index. Returns the entry (if any) and every listed variant
/// still there (index members whose variant expired are dropped from the index).
const LOOKUP: &str = r"
local out = {}
local v = redis.call('GET', KEYS[1])
if v then out[#out + 1] = v end
local vs = redis.call('SMEMBERS', KEYS[2])
for i = 1, math.min(#vs, tonumber(ARGV[1])) do
  local x = redis.call('GET', vs[i])
  if x then out[#out + 1] = x else redis.call('SREM', KEYS[2], vs[i]) end
end
return out
";

/// Every stored blob for `key` (its entry without Vary, and its variants), in one round trip.
pub async fn lookup(
    c: &mut MultiplexedConnection,
    ns: &str,
    key: &[u8],
) -> RedisResult<Vec<Vec<u8>>> {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT
        .get_or_init(|| redis::Script::new(LOOKUP))
        .key(redis_key(ns, key))
        .key(index_key(ns, key))
        .arg(MAX_VARIANTS)
        .invoke_async(c)
        .await
}

/// Writes `blob` (`entry` encoded) for `key` for `ms`: an entry without Vary replaces the key's
/// entry and forgets its variants; a variant is stored beside the others and listed in the index.
pub async fn put(
    c: &mut MultiplexedConnection,
    ns: &str,
    key: &[u8],
    entry: &Entry,
    blob: Vec<u8>,
    ms: u64,
    ttl_cap: Duration,
) -> RedisResult<()> {
    let (k, idx) = (redis_key(ns, key), index_key(ns, key));
    let cap_ms = (ttl_cap.as_millis() as u64).max(ms);
    let mut p = redis::pipe();
    let stored = if entry.vary.is_empty() {
        p.cmd("SET").arg(&k).arg(blob).arg("PX").arg(ms).ignore();
        p.cmd("DEL").arg(&idx).ignore();
        k
    } else {
        let v = variant_key(ns, key, &entry.vary);
        p.cmd("SET").arg(&v).arg(blob).arg("PX").arg(ms).ignore();
        p.cmd("SADD").arg(&idx).arg(&v).ignore();
        p.cmd("PEXPIRE").arg(&idx).arg(cap_ms).ignore();
        // The key's entry, if it had no Vary before, is not a variant of this.
        p.cmd("DEL").arg(&k).ignore();
        v
    };
    for tag in tags(entry) {
        let set = tag_key(ns, tag);
        p.cmd("SADD").arg(&set).arg(&stored).ignore();
        p.cmd("PEXPIRE").arg(&set).arg(cap_ms).ignore();
    }
    p.query_async(c).await
}

/// KEYS = the purge stream; ARGV = the purge, the channel, the stream's cap. Appends the purge
/// and publishes it with its stream id in front, so listeners know how far they have heard.
const PUBLISH: &str = r"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'm', ARGV[1])
redis.call('PUBLISH', ARGV[2], id .. '\n' .. ARGV[1])
return id
";

/// Removes what `target` names from the tier (every variant of a key, everything under a
/// prefix, a tag's keys and set) and appends `msg` to the purge stream and channel.
pub async fn purge(
    c: &mut MultiplexedConnection,
    ns: &str,
    target: &Target,
    msg: Vec<u8>,
) -> RedisResult<()> {
    let keys = matches(c, ns, target).await?;
    let mut p = redis::pipe();
    for k in &keys {
        p.cmd("DEL").arg(k).ignore();
    }
    if let Target::Tag(t) = target {
        p.cmd("DEL").arg(tag_key(ns, t)).ignore();
    }
    p.cmd("EVAL")
        .arg(PUBLISH)
        .arg(1)
        .arg(PURGE_STREAM)
        .arg(msg)
        .arg(PURGE_CHANNEL)
        .arg(STREAM_MAXLEN)
        .ignore();
    p.query_async(c).await
}

/// The Redis keys `target` names: a key with its index and variants, those under a prefix
/// (SCAN: variants and indexes start with their key), a tag's set members.
async fn matches(
    c: &mut MultiplexedConnection,
    ns: &str,
    target: &Target,
) -> RedisResult<Vec<Vec<u8>>> {
    match target {
        Target::Key(k) => {
            let idx = index_key(ns, k);
            let mut out: Vec<Vec<u8>> = c.smembers(&idx).await?;
            out.push(redis_key(ns, k));
            out.push(idx);
            Ok(out)
        }
        Target::Tag(t) => c.smembers(tag_key(ns, t)).await,
        Target::Prefix(p) => {
            let mut pattern = Vec::new();
            for &b in &redis_key(ns, p) {
                if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
                    pattern.push(b'\\');
                }
                pattern.push(b);
            }
            pattern.push(b'*');
            let mut out = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(c)
                    .await?;
                out.extend(keys);
                if next == 0 {
                    return Ok(out);
                }
                cursor = next;
            }
        }
    }
}

/// A purge as published: `node \n ns \n kind target` (kind K, P or T).
pub fn purge_message(node: &str, ns: &str, t: &Target) -> Vec<u8> {
    let (kind, body) = match t {
        Target::Key(k) => (b'K', k),
        Target::Prefix(p) => (b'P', p),
        Target::Tag(g) => (b'T', g),
    };
    let mut m = format!("{node}\n{ns}\n").into_bytes();
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// Reads a published purge (any bytes: another node's, or anything on the channel); `None`
/// unless it is one. Never panics.
pub fn parse_purge(m: &[u8]) -> Option<(&[u8], &str, Target)> {
    let mut it = m.splitn(3, |&b| b == b'\n');
    let node = it.next()?;
    let ns = std::str::from_utf8(it.next()?).ok()?;
    let rest = it.next()?;
    let (&kind, body) = rest.split_first()?;
    let body = body.to_vec();
    let t = match kind {
        b'K' => Target::Key(body),
        b'P' => Target::Prefix(body),
        b'T' => Target::Tag(body),
        _ => return None,
    };
    Some((node, ns, t))
}

pub(crate) async fn within<T, E: std::fmt::Display>(
    d: Duration,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {d:?}")),
    }
}

/// A stream entry id, `ms-seq`.
pub type StreamId = (u64, u64);

pub fn parse_id(s: &[u8]) -> Option<StreamId> {
    let s = std::str::from_utf8(s).ok()?;
    let (a, b) = s.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A purge as heard on the channel: its stream id, a newline, then the purge (`purge_message`).
/// `None` for anything else. Never panics.
pub fn parse_published(m: &[u8]) -> Option<(StreamId, &[u8])> {
    let nl = m.iter().position(|&b| b == b'\n')?;
    Some((parse_id(&m[..nl])?, &m[nl + 1..]))
}

/// What a node missed while not subscribed.
struct CatchUp {
    /// Purges published after the last one heard, oldest first, with their ids.
    missed: Vec<(StreamId, Vec<u8>)>,
    /// The last purge heard is no longer in the stream (trimmed, or the stream is gone): purges
    /// after it may have been trimmed too.
    gap: bool,
    /// The newest id in the stream (where to go on from).
    newest: StreamId,
}

/// Reads the stream past `last` (`None`: the first subscription; nothing to replay).
async fn catch_up(c: &mut MultiplexedConnection, last: Option<StreamId>) -> RedisResult<CatchUp> {
    let newest =
        |v: &[(String, Vec<Vec<u8>>)]| v.last().and_then(|(id, _)| parse_id(id.as_bytes()));
    let Some(last) = last else {
        let top: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XREVRANGE")
            .arg(PURGE_STREAM)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(c)
            .await?;
        return Ok(CatchUp {
            missed: Vec::new(),
            gap: false,
            newest: newest(&top).unwrap_or((0, 0)),
        });
    };
    // Trimming removes the oldest entries first: if the last purge heard is still in the
    // stream, nothing after it was trimmed. If it is gone (trimmed, or the stream lost with
    // Redis's data), purges after it may have been: a gap (conservative). Before any purge was
    // heard (`last` = 0-0), a gap is any entry deleted since the stream began.
    let gap = if last == (0, 0) {
        let info: RedisResult<Value> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(PURGE_STREAM)
            .query_async(c)
            .await;
        info.ok().is_some_and(|v| {
            matches!((number(&v, b"entries-added"), number(&v, b"length")), (Some(a), Some(l)) if a > l)
        })
    } else {
        let id = format!("{}-{}", last.0, last.1);
        let here: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(PURGE_STREAM)
            .arg(&id)
            .arg(&id)
            .query_async(c)
            .await?;
        here.is_empty()
    };
    let mut missed = Vec::new();
    let mut from = last;
    loop {
        let batch: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(PURGE_STREAM)
            .arg(format!("({}-{}", from.0, from.1))
            .arg("+")
            .arg("COUNT")
            .arg(500)
            .query_async(c)
            .await?;
        let n = batch.len();
        for (id, fields) in batch {
            let Some(id) = parse_id(id.as_bytes()) else {
                continue;
            };
            from = id;
            // Fields come as name, value: the purge is the value of `m`.
            if let Some(m) = fields
                .chunks(2)
                .find(|f| f[0] == b"m")
                .and_then(|f| f.get(1))
            {
                missed.push((id, m.clone()));
            }
        }
        if n < 500 {
            break;
        }
    }
    Ok(CatchUp {
        missed,
        gap,
        newest: from,
    })
}

/// A numeric field of an XINFO reply (a flat name, value list, or a map under RESP3).
fn number(v: &Value, name: &[u8]) -> Option<u64> {
    let is_name = |k: &Value| match k {
        Value::BulkString(b) => b[..] == *name,
        Value::SimpleString(s) => s.as_bytes() == name,
        _ => false,
    };
    let value = |v: &Value| match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    };
    match v {
        Value::Array(items) => items
            .chunks(2)
            .find(|p| p.len() == 2 && is_name(&p[0]))
            .and_then(|p| value(&p[1])),
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| is_name(k))
            .and_then(|(_, v)| value(v)),
        _ => None,
    }
}

impl Hearer {
    /// The cache namespaces seen using Redis at `addr`.
    fn namespaces(&self, addr: &str) -> Vec<String> {
        self.namespaces
            .borrow()
            .get(addr)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Hands another node's purge to every shard (this node's own are not applied twice).
    fn apply(&self, m: &[u8], replayed: bool) {
        let Some((node, ns, target)) = parse_purge(m) else {
            return;
        };
        if node == self.node.as_bytes() {
            return;
        }
        if replayed {
            TIER.purges_replayed.fetch_add(1, Relaxed);
        } else {
            TIER.purges_heard.fetch_add(1, Relaxed);
        }
        let ns: Arc<str> = ns.into();
        self.mail.send_all(|| Mail::TierPurge {
            ns: ns.clone(),
            target: target.clone(),
        });
    }
}

/// Hears purges published by other nodes on `addr` and hands them to every shard; reconnects
/// with backoff. On each resubscription it replays from the purge stream what was published
/// since the last purge it heard; if some of that was trimmed away, it drops every L1 entry of
/// the caches using this tier (logged, counted), since it cannot know which were purged.
pub(crate) async fn listen(t: Hearer, addr: String, timeout: Duration) {
    let mut backoff = BACKOFF_MIN;
    let mut lost = false;
    let mut last: Option<StreamId> = None;
    loop {
        let sub = within(timeout * 10, async {
            let client = redis::Client::open(format!("redis://{addr}/"))?;
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(PURGE_CHANNEL).await?;
            // Subscribed first, then read the stream: a purge published in between is in both
            // (applied once: the channel's copy is skipped by its id).
            let mut c = client.get_multiplexed_async_connection().await?;
            let caught = catch_up(&mut c, last).await?;
            Ok::<_, redis::RedisError>((ps, caught))
        })
        .await;
        let (ps, caught) = match sub {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if caught.gap {
            TIER.purge_gaps.fetch_add(1, Relaxed);
            let namespaces = t.namespaces(&addr);
            log::warn!(
                "cache tier: purges on redis {addr} were trimmed from {PURGE_STREAM} (or it was lost) while this node was not listening; dropping every entry of the {} cache(s) using it",
                namespaces.len()
            );
            for ns in namespaces {
                let ns: Arc<str> = ns.into();
                t.mail.send_all(|| Mail::TierPurge {
                    ns: ns.clone(),
                    target: Target::Prefix(Vec::new()),
                });
            }
        }
        let replayed = caught.missed.len();
        for (_, m) in &caught.missed {
            t.apply(m, true);
        }
        if lost {
            log::warn!(
                "cache tier: purge channel on redis {addr} back; {replayed} purge(s) published meanwhile replayed from {PURGE_STREAM}"
            );
        }
        last = Some(caught.newest);
        backoff = BACKOFF_MIN;
        let mut stream = ps.into_on_message();
        while let Some(msg) = stream.next().await {
            let Some((id, m)) = parse_published(msg.get_payload_bytes()) else {
                continue;
            };
            if last.is_some_and(|l| id <= l) {
                continue; // replayed already
            }
            last = Some(id);
            t.apply(m, false);
        }
        lost = true;
        log::warn!("cache tier: purge channel on redis {addr} lost; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_purges_and_ids_parse() {
        assert_eq!(parse_id(b"1733-7"), Some((1733, 7)));
        assert_eq!(parse_id(b"1733"), None);
        assert_eq!(parse_id(b"a-1"), None);
        let (id, m) = parse_published(b"5-0\nn1\nns\nKk").expect("parses");
        assert_eq!((id, m), ((5, 0), &b"n1\nns\nKk"[..]));
        assert!(parse_published(b"n1\nns\nKk").is_none());
        assert!(parse_published(b"").is_none());
    }

    #[test]
    fn variants_have_their_own_keys_under_the_key() {
        let a = vec![("accept".into(), Some(bytes::Bytes::from_static(b"a")))];
        let b = vec![("accept".into(), Some(bytes::Bytes::from_static(b"b")))];
        let none = vec![("accept".into(), None)];
        let (ka, kb, kn) = (
            variant_key("n", b"k", &a),
            variant_key("n", b"k", &b),
            variant_key("n", b"k", &none),
        );
        assert!(ka != kb && ka != kn && kb != kn);
        for k in [&ka, &kb, &kn, &index_key("n", b"k")] {
            assert!(k.starts_with(&redis_key("n", b"k")));
        }
    }

    #[test]
    fn purge_messages_round_trip() {
        let m = purge_message("n1", "route \"a\"", &Target::Prefix(b"h\x1f/x\ny".to_vec()));
        let (node, ns, t) = parse_purge(&m).expect("parses");
        assert_eq!((node, ns), (&b"n1"[..], "route \"a\""));
        assert!(matches!(t, Target::Prefix(p) if p == b"h\x1f/x\ny"));
        assert!(parse_purge(b"n1\nns\nXabc").is_none());
        assert!(parse_purge(b"n1\nns\n").is_none());
        assert!(parse_purge(b"").is_none());
    }
}
