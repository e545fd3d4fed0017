//! The PURGE method on a cached route: removes a key, prefix or tag on this shard, every shard and the
//! shared tier, and answers with what each shard removed. Never forwards a request nor serves an entry.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BufMut;

use super::conn::{After, ClientConn, ClientStream};
use super::shard::Shard;
use crate::cache::{Instance, Target};
use crate::http::parse::BodyKind;
use crate::http::write::{put_u64, reason, status_line};
use crate::net::io::write_all;

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
        let keep =
            self.req.keep_alive && self.req.body == BodyKind::Empty && !shard.drain.is_draining();
        let w = &mut self.wbuf;
        w.clear();
        status_line(w, status, reason(status).as_bytes());
        w.put_slice(b"Content-Type: application/json\r\nContent-Length: ");
        put_u64(w, body.len() as u64);
        w.put_slice(if keep {
            b"\r\n\r\n"
        } else {
            b"\r\nConnection: close\r\n\r\n"
        });
        w.put_slice(body.as_bytes());
        let ok = write_all(
            &mut self.client.stream,
            &mut self.wbuf,
            shard.built.cfg.server.send_timeout,
        )
        .await
        .is_ok();
        if ok && keep {
            After::KeepAlive
        } else {
            After::Close
        }
    }
}
