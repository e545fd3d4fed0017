//! The etcd thread's loop: connect, resync when needed, then one watch on the whole prefix from
//! the revision applied + 1; compaction, an older revision, a lost connection or a silent etcd
//! lead back to a resync, with backoff between failed attempts. Runs on its own tokio runtime.

use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, WatchOptions};

use super::client;
use super::keys;
use super::sync::Node;
use crate::config::source::EtcdSource;
use crate::metrics::source::WatchState;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why a watch ended.
enum End {
    /// Re-read the prefix on the same connection (compaction, older revision, aborted swap).
    Resync(String),
    /// The connection is gone or etcd stopped answering.
    Lost(String),
}

/// Follows etcd forever. `client`/`rev`: the start-up read's connection and revision (`None`,
/// 0 when the node started from its saved configuration: it resyncs first).
pub async fn follow(mut node: Node, src: EtcdSource, mut client: Option<Client>, rev: i64) {
    let mut backoff = BACKOFF_MIN;
    let mut need_sync = rev == 0;
    if rev > 0 {
        node.set_revision(rev);
    }
    loop {
        let mut c = match client.take() {
            Some(c) => c,
            None => match client::connect(&src).await {
                Ok(c) => c,
                Err(e) => {
                    node.set_state(
                        WatchState::Disconnected,
                        &format!("cannot connect to {:?}: {e}", src.endpoints),
                    );
                    node.shared.set_client(None);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        node.shared.set_client(Some(c.clone()));
        if need_sync {
            match client::read_all(&mut c, &node.prefix, src.timeout).await {
                Ok((kvs, r)) => {
                    node.set_state(
                        WatchState::Syncing,
                        &format!("re-reading {}/ at revision {r}", node.prefix),
                    );
                    node.plane.update_source(|i| i.resyncs += 1);
                    if let Err(e) = node.resync(kvs, r) {
                        log::error!("etcd: resync at revision {r}: {e}; trying again");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        client = Some(c);
                        continue;
                    }
                }
                Err(e) => {
                    node.set_state(
                        WatchState::Disconnected,
                        &format!("cannot read {}/: {e}", node.prefix),
                    );
                    node.shared.set_client(None);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        let from = node.shared.revision() + 1;
        match watch(&mut node, &mut c, &src, from, &mut backoff).await {
            End::Resync(why) => {
                log::warn!(
                    "etcd: {why}; re-reading {}/ and applying the difference",
                    node.prefix
                );
                need_sync = true;
                client = Some(c);
            }
            End::Lost(why) => {
                node.set_state(WatchState::Disconnected, &why);
                node.shared.set_client(None);
                need_sync = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

async fn watch(
    node: &mut Node,
    c: &mut Client,
    src: &EtcdSource,
    from: i64,
    backoff: &mut Duration,
) -> End {
    let opts = WatchOptions::new()
        .with_range(keys::range_end(&node.prefix))
        .with_start_revision(from)
        .with_progress_notify();
    let key = format!("{}/", node.prefix);
    let mut stream = match tokio::time::timeout(src.timeout, c.watch(key, Some(opts))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return End::Lost(format!("cannot watch: {e}")),
        Err(_) => return End::Lost(format!("cannot watch: no answer within {:?}", src.timeout)),
    };
    let mut tick = tokio::time::interval(src.timeout);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let mut watching = false;
    loop {
        tokio::select! {
            m = stream.message() => {
                let resp = match m {
                    Ok(Some(r)) => r,
                    Ok(None) => return End::Lost("the watch stream ended".into()),
                    Err(e) => return End::Lost(format!("watch: {e}")),
                };
                heard = Instant::now();
                if resp.compact_revision() > 0 {
                    return End::Resync(format!(
                        "revision {from} is compacted (oldest kept: {})",
                        resp.compact_revision()
                    ));
                }
                if resp.canceled() {
                    return End::Resync(format!("the watch was cancelled: {}", resp.cancel_reason()));
                }
                if !watching {
                    watching = true;
                    *backoff = BACKOFF_MIN;
                    node.set_state(WatchState::Watching, &format!("watching {}/ from revision {from}", node.prefix));
                }
                let header = resp.header().map_or(0, |h| h.revision());
                let applied = node.shared.revision();
                if header > 0 && header < applied {
                    return End::Resync(format!(
                        "etcd answers at revision {header}, older than the {applied} applied (restored or replaced?)"
                    ));
                }
                let mut last = 0;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let rev = kv.mod_revision();
                    last = last.max(rev);
                    let (kind, id) = match keys::parse_key(&node.prefix, kv.key()) {
                        Ok(k) => k,
                        Err(why) => {
                            node.refuse_key(&why, rev);
                            continue;
                        }
                    };
                    let value = match ev.event_type() {
                        EventType::Delete => Ok(None),
                        EventType::Put => keys::parse_value(kind, &id, kv.value()).map(Some),
                    };
                    if let Err(e) = node.apply_event(kind, &id, value, rev, rev) {
                        return End::Resync(format!("applying {}/{id}: {e}", kind.seg()));
                    }
                }
                // A response without events is a progress report: everything up to its
                // revision has been sent.
                let done = if resp.events().is_empty() { header } else { last };
                if done > applied {
                    node.set_revision(done);
                }
            }
            _ = tick.tick() => {
                if heard.elapsed() > src.timeout * 3 {
                    return End::Lost(format!("etcd did not answer for {:?}", heard.elapsed()));
                }
                if let Err(e) = stream.request_progress().await {
                    return End::Lost(format!("watch: {e}"));
                }
            }
        }
    }
}
