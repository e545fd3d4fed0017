//! Wakes a shard's control loop as soon as the plane sends it a config swap, instead of at its
//! next tick: a socketpair per shard, one byte per nudge. Must not carry data; `Control` does.

use std::future::Future;
use std::io::{self, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::time::Duration;

use monoio::io::AsyncReadRent;
use monoio::net::UnixStream;

/// The plane's end.
pub struct Nudge(StdUnixStream);

impl Nudge {
    /// Never blocks: a full socket buffer already holds a wake-up the shard has not read.
    pub fn nudge(&self) {
        let _ = (&self.0).write(&[1]);
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

    /// Waits `timeout`, or less if nudged.
    pub async fn sleep(&mut self, timeout: Duration) {
        let Some(read) = self.0.as_mut() else {
            monoio::time::sleep(timeout).await;
            return;
        };
        let woke = monoio::select! {
            _ = monoio::time::sleep(timeout) => None,
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
