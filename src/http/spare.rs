//! Per-thread spare storage for parsed heads (head bytes plus header slots), so a connection
//! idle between requests holds none. Owns only the free list; knows nothing of connections.

use std::cell::RefCell;

use bytes::BytesMut;

use super::parse::HeaderPos;

/// Storage kept at most; beyond this many idle sets the rest go back to the allocator.
const KEEP: usize = 1024;
/// Size of new storage: most heads fit, so the first parse does not grow it.
const HEAD_BYTES: usize = 1024;
const SLOTS: usize = 32;
/// Storage grown past this (an unusually large head) is freed rather than kept.
const MAX_BYTES: usize = 16 * 1024;

type Storage = (BytesMut, Vec<HeaderPos>);

thread_local! {
    static FREE: RefCell<Vec<Storage>> = const { RefCell::new(Vec::new()) };
}

/// Fills `buf` and `headers` (both without capacity) from the list, or with new storage.
pub(super) fn take(buf: &mut BytesMut, headers: &mut Vec<HeaderPos>) {
    let (b, h) = FREE.with(|f| f.borrow_mut().pop()).unwrap_or_else(|| {
        (
            BytesMut::with_capacity(HEAD_BYTES),
            Vec::with_capacity(SLOTS),
        )
    });
    *buf = b;
    *headers = h;
}

/// Moves the storage to the list, leaving `buf` and `headers` without capacity.
pub(super) fn give(buf: &mut BytesMut, headers: &mut Vec<HeaderPos>) {
    let mut b = std::mem::take(buf);
    let mut h = std::mem::take(headers);
    if b.capacity() == 0 || b.capacity() > MAX_BYTES {
        return;
    }
    b.clear();
    h.clear();
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < KEEP {
            f.push((b, h));
        }
    });
}
