//! The node's exact-mode thread (`sync_interval = "0"`): one atomic INCR + PEXPIREAT round trip
//! per request on the limit's window key, answered to the asking shard's mailbox. Never a shard.
//!
//! Each ask runs as its own task on one multiplexed connection per store, bounded by the
//! limiter's `timeout`. A failed call marks the store down (one log line, FLEET counters and
//! state) and answers None, which the plugin turns into its `on_redis_error` fallback; while down,
//! asks are answered None at once until the backoff (50 ms doubling to 1 s) lets one try again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;

use super::store::{self, Conn};
use super::{describe, BACKOFF_MAX, BACKOFF_MIN};
use crate::limit::fleet::{wall_ms_now, ExactAnswer, ExactAsk, Kind, Store};
use crate::metrics::fleet::{FLEET, STATE_DOWN, STATE_UP};

/// One store as this thread sees it.
struct Link {
    conn: Option<Conn>,
    /// A connect is under way (asks meanwhile wait for it, up to their timeout).
    connecting: bool,
    up: Option<bool>,
    backoff: Duration,
    next_try: Instant,
}

type Links = Rc<RefCell<HashMap<Store, Link>>>;

/// Serves asks until every shard's sender is gone.
pub async fn run(mut rx: UnboundedReceiver<ExactAsk>) {
    let links: Links = Rc::default();
    while let Some(ask) = rx.recv().await {
        tokio::task::spawn_local(serve(links.clone(), ask));
    }
}

async fn serve(links: Links, ask: ExactAsk) {
    let timeout = ask.spec.timeout;
    let counted = tokio::time::timeout(timeout, count(&links, &ask))
        .await
        .unwrap_or_else(|_| Err(Some(format!("no answer within {timeout:?}"))));
    let counted = match counted {
        Ok(c) => {
            changed(&links, &ask.spec.store, true, "");
            Some(c)
        }
        Err(None) => None,
        Err(Some(e)) => {
            failed(&links, &ask.spec.store, &e);
            None
        }
    };
    ask.reply.send(ExactAnswer {
        id: ask.id,
        counted,
    });
}

/// The request's count in its window and the ms left in the window. Err(None): the store is
/// known down and backing off (no call made); Err(Some(why)): this call failed.
async fn count(links: &Links, ask: &ExactAsk) -> Result<(u64, u64), Option<String>> {
    let Kind::Count { window_ms, .. } = ask.spec.kind else {
        return Err(Some("exact mode is for limit-count only".into()));
    };
    let conn = connection(links, &ask.spec.store, ask.spec.timeout).await?;
    let now = wall_ms_now();
    let window = now / window_ms.max(1);
    let end = (window + 1) * window_ms;
    let key = store::exact_key(&ask.spec.ns, ask.key, window);
    FLEET.commands.fetch_add(1, Relaxed);
    // Kept a second past the window's end, for clocks a little apart between nodes.
    let n = store::exact_incr(&conn, &key, end + 1000)
        .await
        .map_err(|e| Some(e.to_string()))?;
    Ok((n, end.saturating_sub(now)))
}

/// The store's connection: the live one, or a new one unless the store is backing off.
async fn connection(links: &Links, s: &Store, timeout: Duration) -> Result<Conn, Option<String>> {
    loop {
        {
            let mut l = links.borrow_mut();
            let link = l.entry(s.clone()).or_insert(Link {
                conn: None,
                connecting: false,
                up: None,
                backoff: BACKOFF_MIN,
                next_try: Instant::now(),
            });
            if let Some(c) = &link.conn {
                return Ok(c.clone());
            }
            if !link.connecting {
                if Instant::now() < link.next_try {
                    return Err(None);
                }
                link.connecting = true;
                break;
            }
        }
        // Another ask is connecting: wait for it (bounded by the caller's timeout).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    FLEET.commands.fetch_add(1, Relaxed);
    let r = store::connect(s, timeout).await;
    let mut l = links.borrow_mut();
    let link = l.get_mut(s).ok_or(None)?;
    link.connecting = false;
    match r {
        Ok(c) => {
            link.conn = Some(c.clone());
            Ok(c)
        }
        Err(e) => Err(Some(e)),
    }
}

/// A call failed: drop the connection, back off, log on the transition.
fn failed(links: &Links, s: &Store, why: &str) {
    FLEET.errors.fetch_add(1, Relaxed);
    {
        let mut l = links.borrow_mut();
        if let Some(link) = l.get_mut(s) {
            link.conn = None;
            link.connecting = false;
            link.next_try = Instant::now() + link.backoff;
            link.backoff = (link.backoff * 2).min(BACKOFF_MAX);
        }
    }
    changed(links, s, false, why);
}

/// Records the store's state; logs and counts a change once.
fn changed(links: &Links, s: &Store, up: bool, why: &str) {
    let mut l = links.borrow_mut();
    let Some(link) = l.get_mut(s) else {
        return;
    };
    if up {
        link.backoff = BACKOFF_MIN;
    }
    if link.up == Some(up) {
        return;
    }
    let was = link.up.replace(up);
    FLEET
        .exact_state
        .store(if up { STATE_UP } else { STATE_DOWN }, Relaxed);
    if was.is_some() {
        FLEET.changes.fetch_add(1, Relaxed);
    }
    if up {
        log::info!(
            "fleet: store {} reachable; exact-mode limits counted there",
            describe(s)
        );
    } else {
        log::warn!(
            "fleet: store {} unreachable ({why}); exact-mode limits fall back per on_redis_error, retrying with backoff",
            describe(s)
        );
    }
}
