//! A heap slot for the per-request future, recycled through a per-thread free list.
//! Owns only raw blocks of memory; what lives in them is the caller's future.
//!
//! Why: the request's state machine (~2 KiB) is kept off the connection task so an idle
//! keep-alive connection stays small (perf/idle-rss.sh), but a `Box` per request went through
//! mimalloc's generic path for blocks over 1 KiB (callgrind: ~250 instructions per request
//! for the malloc/free pair). A block from this list costs a pop and a push.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Blocks kept at most (each the size of one request future).
const KEEP: usize = 256;

/// Free blocks with their layouts; freed when the thread ends.
struct Free(Vec<(Layout, NonNull<u8>)>);

impl Drop for Free {
    fn drop(&mut self) {
        for (layout, p) in self.0.drain(..) {
            // SAFETY: every block in the list came from `alloc(layout)` with this layout and
            // holds no live value (its future was dropped before the block was listed).
            unsafe { dealloc(p.as_ptr(), layout) };
        }
    }
}

thread_local! {
    static FREE: RefCell<Free> = const { RefCell::new(Free(Vec::new())) };
}

/// Frees all but `keep` listed blocks (a shard gone quiet, runtime/quiet.rs): the list's
/// high-water mark is the requests that ran at once, and an idle shard needs none of it.
pub(super) fn trim(keep: usize) {
    let spare: Vec<(Layout, NonNull<u8>)> = FREE
        .try_with(|free| {
            let mut free = free.borrow_mut();
            let at = free.0.len().min(keep);
            let spare = free.0.split_off(at);
            free.0.shrink_to_fit();
            spare
        })
        .unwrap_or_default();
    drop(Free(spare));
}

/// `F`, pinned on the heap like `Pin<Box<F>>`, in a recycled block.
pub(super) struct Pooled<F> {
    ptr: NonNull<F>,
}

impl<F: Future> Pooled<F> {
    /// Inlined so the future is built in its block: called out of line, the whole future type
    /// (~2 KiB) is copied in (callgrind: +250 Ir of memcpy per request).
    #[inline(always)]
    pub(super) fn new(f: F) -> Pooled<F> {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            let ptr = NonNull::<F>::dangling();
            // SAFETY: writing a zero-sized value through a dangling, aligned pointer is allowed.
            unsafe { ptr.as_ptr().write(f) };
            return Pooled { ptr };
        }
        let reused = FREE
            .try_with(|free| {
                let mut free = free.borrow_mut();
                match free.0.last() {
                    Some((l, _)) if *l == layout => free.0.pop().map(|(_, p)| p),
                    _ => None,
                }
            })
            .ok()
            .flatten();
        let raw = reused.unwrap_or_else(|| {
            // SAFETY: `layout` has a non-zero size (checked above).
            let p = unsafe { alloc(layout) };
            NonNull::new(p).unwrap_or_else(|| handle_alloc_error(layout))
        });
        let ptr = raw.cast::<F>();
        // SAFETY: `ptr` is valid for writes of `F` (allocated with `Layout::new::<F>()`) and
        // holds no value, so nothing is overwritten without being dropped.
        unsafe { ptr.as_ptr().write(f) };
        Pooled { ptr }
    }
}

impl<F: Future> Future for Pooled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `ptr` points to the initialised `F` this value owns exclusively (we hold
        // `&mut self`), and the `F` is never moved out of its block before `drop` drops it in
        // place, so pinning it is sound, as with `Pin<Box<F>>`.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<F> Drop for Pooled<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the block holds an initialised `F` owned by this value; it is dropped once,
        // here, and the block is not read again except as raw memory.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        if layout.size() == 0 {
            return;
        }
        let raw = self.ptr.cast::<u8>();
        let kept = FREE
            .try_with(|free| {
                let mut free = free.borrow_mut();
                if free.0.len() < KEEP {
                    free.0.push((layout, raw));
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false);
        if !kept {
            // SAFETY: the block came from `alloc(layout)` (or the list, which only holds such
            // blocks) and no longer holds a value.
            unsafe { dealloc(raw.as_ptr(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    struct CountDrop(Rc<Cell<u32>>);
    impl Drop for CountDrop {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn values_are_dropped_once_and_blocks_reused() {
        let drops = Rc::new(Cell::new(0));
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async {
            for i in 0..5u32 {
                let guard = CountDrop(drops.clone());
                let big = [i as u8; 3000];
                let got = Pooled::new(async move {
                    let _g = guard;
                    // Suspended once, as a request is.
                    monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                    big.iter().map(|&b| u32::from(b)).sum::<u32>()
                })
                .await;
                assert_eq!(got, 3000 * i);
            }
            // Dropped without being polled to completion.
            drop(Pooled::new({
                let guard = CountDrop(drops.clone());
                async move {
                    let _g = guard;
                }
            }));
        });
        assert_eq!(drops.get(), 6);
        // The loop's five futures share one layout: after the first, each reused its block.
        FREE.with(|f| assert!(!f.borrow().0.is_empty()));
    }
}
