//! Shard-local one-shot signals (drain, retire) that waits can select on, and the housekeeping
//! loop that ticks until one fires. Single-threaded (Cell/RefCell); other threads use channels.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Fires once; every pending and future `wait()` then completes.
#[derive(Default)]
pub struct Drain {
    fired: Cell<bool>,
    /// Set by `fire_lingering`: how long an idle keep-alive connection still waits for a request.
    linger: Cell<Option<Duration>>,
    // A slab so a waiter that is dropped before firing removes its waker: idle
    // keep-alive reads create and drop one of these per request.
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.fired.get()
    }

    /// Fires, letting idle keep-alive connections wait up to `linger` for one more request
    /// (a binary upgrade: the successor is already accepting, and closing an idle connection
    /// races a client sending on it).
    pub fn fire_lingering(&self, linger: Duration) {
        self.linger.set(Some(linger));
        self.fire();
    }

    /// `Some` when the drain was fired with `fire_lingering`.
    pub fn linger(&self) -> Option<Duration> {
        self.linger.get()
    }

    pub fn fire(&self) {
        self.fired.set(true);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        self.free.borrow_mut().clear();
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }

    /// Gives back the waiter table's free tail: a burst of connections grows it to its peak,
    /// and a quiet shard (runtime/quiet.rs) need not keep that. Slots in use stay where they are.
    pub fn trim(&self) {
        crate::util::slots::trim_tail(
            &mut self.wakers.borrow_mut(),
            &mut self.free.borrow_mut(),
            Option::is_some,
        );
    }

    pub fn wait(&self) -> DrainWait<'_> {
        DrainWait {
            drain: self,
            slot: None,
        }
    }
}

pub struct DrainWait<'a> {
    drain: &'a Drain,
    slot: Option<usize>,
}

impl Future for DrainWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.fired.get() {
            self.slot = None;
            return Poll::Ready(());
        }
        let mut wakers = self.drain.wakers.borrow_mut();
        match self.slot {
            // A wait kept across polls (an accept loop's) keeps its waker while it is the same.
            Some(i) if i < wakers.len() => {
                if !wakers[i].as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    wakers[i] = Some(cx.waker().clone());
                }
            }
            _ => {
                let i = match self.drain.free.borrow_mut().pop() {
                    Some(i) => {
                        wakers[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        wakers.push(Some(cx.waker().clone()));
                        wakers.len() - 1
                    }
                };
                drop(wakers);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            if self.drain.fired.get() {
                return;
            }
            let mut wakers = self.drain.wakers.borrow_mut();
            if let Some(w) = wakers.get_mut(i) {
                *w = None;
                self.drain.free.borrow_mut().push(i);
            }
        }
    }
}

/// A generation's housekeeping loop: calls `tick(sweep)` every `every` until `drain` (the shard
/// stops) or `retired` (a swap replaced the generation; the next one runs its own loop) fires.
/// `sweep` is true about once a second, for the slower expiry sweeps.
pub async fn tick_until(
    every: Duration,
    drain: &Drain,
    retired: &Drain,
    mut tick: impl FnMut(bool),
) {
    let mut last_sweep = Instant::now();
    loop {
        monoio::select! {
            _ = monoio::time::sleep(every) => {}
            _ = drain.wait() => return,
            _ = retired.wait() => return,
        }
        let sweep = last_sweep.elapsed() >= Duration::from_secs(1);
        if sweep {
            last_sweep = Instant::now();
        }
        tick(sweep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls each wait once with a no-op waker, so each takes a slot.
    fn register(waits: &mut [Pin<Box<DrainWait<'_>>>]) {
        let mut cx = Context::from_waker(Waker::noop());
        for w in waits {
            assert_eq!(w.as_mut().poll(&mut cx), Poll::Pending);
        }
    }

    #[test]
    fn trim_gives_back_the_free_tail_and_keeps_waits_in_use() {
        let drain = Drain::default();
        let mut waits: Vec<_> = (0..100).map(|_| Box::pin(drain.wait())).collect();
        register(&mut waits);
        assert_eq!(drain.wakers.borrow().len(), 100);
        // All but the sixth end (a burst's connections going away); the table stays at its peak.
        let kept = waits.swap_remove(5);
        drop(waits);
        assert_eq!(drain.wakers.borrow().len(), 100);
        drain.trim();
        assert_eq!(drain.wakers.borrow().len(), 6);
        assert!(drain.wakers.borrow().capacity() < 100);
        assert_eq!(drain.free.borrow().len(), 5);
        assert!(drain.free.borrow().iter().all(|&i| i < 5));
        // New waits reuse the free slots below the kept one, then grow the table again.
        let mut more: Vec<_> = (0..7).map(|_| Box::pin(drain.wait())).collect();
        register(&mut more);
        assert_eq!(drain.wakers.borrow().len(), 8);
        // The kept wait still ends with the drain, and so do the new ones.
        let mut kept = kept;
        drain.fire();
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(kept.as_mut().poll(&mut cx), Poll::Ready(()));
        for w in &mut more {
            assert_eq!(w.as_mut().poll(&mut cx), Poll::Ready(()));
        }
    }
}
