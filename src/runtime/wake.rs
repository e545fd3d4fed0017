//! Wakes a shard's control loop as soon as something is sent to it, instead of at its next tick:
//! a socketpair per shard, one byte per nudge. Must not carry data (the same-thread bell is local/bell.rs).

use std::future::Future;
use std::io::{self, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::sync::Arc;

use std::time::Duration;

use crossbeam_channel::Sender;

use monoio::io::AsyncReadRent;
use monoio::net::UnixStream;

use super::control::Control;

/// The plane's end.
pub struct Nudge(StdUnixStream);

impl Nudge {
    /// Never blocks: a full socket buffer already holds a wake-up the shard has not read.
    pub fn nudge(&self) {
        let _ = (&self.0).write(&[1]);
    }
}

/// The one way to send a shard a control message: onto its channel, then a nudge, so the shard
/// reads it now rather than at its next tick (which is long when the shard is idle).
#[derive(Clone)]
pub struct ShardLink {
    tx: Sender<Control>,
    nudge: Option<Arc<Nudge>>,
}

impl ShardLink {
    pub fn new(tx: Sender<Control>, nudge: Option<Nudge>) -> ShardLink {
        ShardLink {
            tx,
            nudge: nudge.map(Arc::new),
        }
    }

    /// False once the shard is gone.
    pub fn send(&self, msg: Control) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        if let Some(n) = &self.nudge {
            n.nudge();
        }
        true
    }
}

/// A connected pair: the plane's `Nudge` and the shard's end (adopted by `Wakeup::new` on the
/// shard's own runtime).
pub fn pair() -> io::Result<(Nudge, StdUnixStream)> {
    let (a, b) = StdUnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((Nudge(a), b))
}

type Read = Pin<Box<dyn Future<Output = Option<(UnixStream, Vec<u8>)>>>>;

/// The shard's end: a read kept in flight across ticks, so a nudge ends the current wait.
pub struct Wakeup(Option<Read>);

impl Wakeup {
    pub fn new(end: Option<StdUnixStream>) -> Wakeup {
        let stream = end.and_then(|s| match UnixStream::from_std(s) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("control wake-up unavailable ({e}); swaps wait for the next tick");
                None
            }
        });
        Wakeup(stream.map(|s| read_one(s, Vec::with_capacity(64))))
    }

    /// Waits `timeout`, or less if nudged or `bell` rings.
    pub async fn sleep(&mut self, timeout: Duration, bell: &crate::local::bell::Bell) {
        let Some(read) = self.0.as_mut() else {
            monoio::select! {
                _ = monoio::time::sleep(timeout) => {}
                _ = bell.rung() => {}
            }
            return;
        };
        let woke = monoio::select! {
            _ = monoio::time::sleep(timeout) => None,
            _ = bell.rung() => None,
            r = read => Some(r),
        };
        if let Some(r) = woke {
            // EOF or an error: the plane is gone; fall back to plain ticks.
            self.0 = r.map(|(s, buf)| read_one(s, buf));
        }
    }
}

fn read_one(mut s: UnixStream, mut buf: Vec<u8>) -> Read {
    Box::pin(async move {
        buf.clear();
        let (r, buf) = s.read(buf).await;
        match r {
            Ok(n) if n > 0 => Some((s, buf)),
            _ => None,
        }
    })
}
