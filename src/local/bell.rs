//! Same-thread wake-ups: the control loop's bell, and the requests parked for an answer from
//! another thread (woken by the control loop when the doorbell rings). Never crosses threads.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

thread_local! {
    /// Requests of this shard parked until something arrives from another thread.
    static PARKED: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

/// Pending until the shard's control loop next wakes for the doorbell (its mesh mail and the
/// plugins' mailboxes may hold the awaited answer); the caller checks again and may park again.
pub async fn parked() {
    let mut registered = false;
    poll_fn(|cx| {
        if registered {
            return Poll::Ready(());
        }
        registered = true;
        PARKED.with(|p| p.borrow_mut().push(cx.waker().clone()));
        Poll::Pending
    })
    .await
}

/// Wakes every parked request of this shard (the control loop, after the doorbell rang).
pub fn wake_parked() {
    let woken = PARKED.with(|p| std::mem::take(&mut *p.borrow_mut()));
    for w in woken {
        w.wake();
    }
}

/// Same-thread wake-up for the control loop's idle sleep: rung when a shard without connections
/// accepts one, so its ticks (log flushes) are back to the short interval at once.
#[derive(Default)]
pub struct Bell {
    rung: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Bell {
    pub fn ring(&self) {
        self.rung.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Ready once rung since the last wait ended.
    pub async fn rung(&self) {
        poll_fn(|cx| {
            if self.rung.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
