//! The PURGE method on a cached route: removes a key, prefix or tag on this shard, every shard and the
//! shared tier, and answers with what each shard removed. Never forwards a request nor serves an entry.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::conn::{After, ClientConn, ClientStream};
use super::shard::Shard;
use crate::cache::{Instance, Target};
use crate::plugin::Reply;

impl<S: ClientStream> ClientConn<S> {
    /// PURGE: removes the key (or prefix, or Surrogate-Key tag) here and on every shard, and
    /// waits for each shard's answer so the result is visible everywhere when the client sees it.
    pub(super) async fn purge(&mut self, shard: &Shard, inst: &Rc<Instance>, t: Target) -> After {
        if let Some(tier) = &inst.tier {
            // The shared tier and, through it, every other node.
            tier.purge(&t);
        }
        let mut removed = inst.purge_local(&t);
        let mut shards = vec![(inst.shard, inst.store.borrow().stats())];
        let (tx, rx) = crossbeam_channel::unbounded();
        let expect = inst.broadcast(&t, Some(&tx));
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got = 0;
        while got < expect && Instant::now() < deadline {
            while let Ok(a) = rx.try_recv() {
                removed += a.removed;
                shards.push((a.shard, a.stats));
                got += 1;
            }
            if got < expect {
                Box::pin(monoio::time::sleep(Duration::from_millis(1))).await;
            }
        }
        shards.sort_by_key(|s| s.0);
        let body = serde_json::json!({
            "removed": removed,
            "shards_answered": got + 1,
            "shards": shards.iter().map(|(i, s)| serde_json::json!({
                "shard": i, "entries": s.entries, "bytes": s.bytes, "peak": s.peak,
                "budget": s.budget, "evictions": s.evictions, "rejected": s.rejected,
            })).collect::<Vec<_>>(),
        })
        .to_string();
        let status = if removed > 0 { 200 } else { 404 };
        self.cx.status = status;
        let mut reply = Reply::new(status);
        reply.headers.push((
            Bytes::from_static(b"Content-Type"),
            Bytes::from_static(b"application/json"),
        ));
        reply.body = Bytes::from(body);
        self.send_reply(shard, reply).await
    }
}
