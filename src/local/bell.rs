//! Same-thread wake-up: one waiter (a shard's control loop) woken by code on the same thread.
//! Owns only the flag and the waker; must not cross threads (the nudge in runtime/wake.rs does).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

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
