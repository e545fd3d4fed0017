//! Wakes a shard's control loop as soon as something is sent to it (a control message, mail on a
//! mesh lane), instead of at its next tick: a socketpair per shard. Must not carry data.

use std::future::Future;
use std::io::{self, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use monoio::io::AsyncReadRent;
use monoio::net::UnixStream;

use super::control::Control;

/// The senders' end of the socketpair.
pub struct Nudge(StdUnixStream);

impl Nudge {
    /// Never blocks: a full socket buffer already holds a wake-up the shard has not read.
    pub fn nudge(&self) {
        let _ = (&self.0).write(&[1]);
    }
}

/// How every sender (plane, admin, other shards over the mesh) wakes one shard: the first send
/// after the shard last looked writes one byte; later ones only find the bell already rung.
/// So a burst of mesh mail costs the shard one wake-up and its senders one syscall.
pub struct Doorbell {
    nudge: Option<Nudge>,
    /// Rung since the shard last called `answer`.
    rung: AtomicBool,
}

impl Doorbell {
    /// `None`: no wake-up (the socketpair could not be made); the shard sees mail at its tick.
    pub fn new(nudge: Option<Nudge>) -> Doorbell {
        Doorbell {
            nudge,
            rung: AtomicBool::new(false),
        }
    }

    /// Called after the message is queued. SeqCst read-modify-write: a sender that finds the
    /// bell rung queued its message before the shard's `answer`, so the shard's drain sees it.
    pub fn ring(&self) {
        if !self.rung.swap(true, SeqCst) {
            if let Some(n) = &self.nudge {
                n.nudge();
            }
        }
    }

    /// The shard, each time it wakes and before it reads its channels and lanes: anything sent
    /// from now on rings again.
    pub fn answer(&self) {
        self.rung.swap(false, SeqCst);
    }
}

impl crate::util::mesh::Wake for Doorbell {
    fn wake(&self) {
        self.ring();
    }
}

/// The one way to send a shard a control message: onto its channel, then the doorbell, so the
/// shard reads it now rather than at its next tick (which is long when the shard is idle).
#[derive(Clone)]
pub struct ShardLink {
    tx: Sender<Control>,
    bell: Arc<Doorbell>,
}

impl ShardLink {
    pub fn new(tx: Sender<Control>, bell: Arc<Doorbell>) -> ShardLink {
        ShardLink { tx, bell }
    }

    /// False once the shard is gone.
    pub fn send(&self, msg: Control) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        self.bell.ring();
        true
    }
}

/// A connected pair: the senders' `Nudge` and the shard's end (adopted by `Wakeup::new` on the
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
