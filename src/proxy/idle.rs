//! What a client connection holds only while it serves a request (write, upstream and path
//! buffers, both heads' storage), parked as one set on a per-thread list while it is idle.
//! Owns the list; must not hold anything a request still reads.
//!
//! Why: 10k idle keep-alive connections should cost < 8 KiB each (perf/idle-rss.sh), and a set
//! moved as one unit costs one list pop and one push per request (callgrind: separate free lists
//! for the five buffers cost ~450 instructions per request, this ~80).

use std::cell::RefCell;

use bytes::BytesMut;

use super::conn::{ClientConn, ClientStream};
use crate::http::parse::HeadStorage;

/// Sets kept at most: more than this many idle sets means that many requests ran at once
/// recently, and the rest go back to the allocator.
const KEEP: usize = 512;
/// Buffers grown past this (large coalesced bodies) are not kept.
const MAX_CAP: usize = 64 * 1024;
/// Write buffer of a new set.
const WBUF: usize = 4096;
/// Path scratch of a new set.
const PATH: usize = 256;

struct Set {
    wbuf: BytesMut,
    ubuf: BytesMut,
    path: BytesMut,
    req: HeadStorage,
    resp: HeadStorage,
}

thread_local! {
    static FREE: RefCell<Vec<Set>> = const { RefCell::new(Vec::new()) };
}

impl<S: ClientStream> ClientConn<S> {
    /// Whether the connection holds a set (taken when a request's first bytes arrive).
    fn holds(&self) -> bool {
        self.wbuf.capacity() != 0
    }

    /// Moves the request-time buffers to the list; nothing may read them until `unpark`.
    pub(super) fn park(&mut self) {
        if !self.holds() {
            return;
        }
        let mut set = Set {
            wbuf: std::mem::take(&mut self.wbuf),
            ubuf: std::mem::take(&mut self.upstream.buf),
            path: std::mem::take(&mut self.path),
            req: self.req.release(),
            resp: self.upstream.resp.release(),
        };
        for b in [&mut set.wbuf, &mut set.ubuf, &mut set.path] {
            b.clear();
        }
        if set.wbuf.capacity() > MAX_CAP || set.ubuf.capacity() > MAX_CAP {
            return;
        }
        FREE.with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEEP {
                f.push(set);
            }
        });
    }

    /// Takes a set back (or a new one) before a request is parsed.
    pub(super) fn unpark(&mut self, read_buffer_bytes: usize) {
        if self.holds() {
            return;
        }
        let set = FREE.with(|f| f.borrow_mut().pop()).unwrap_or_else(|| Set {
            wbuf: BytesMut::with_capacity(WBUF),
            ubuf: BytesMut::with_capacity(read_buffer_bytes),
            path: BytesMut::with_capacity(PATH),
            req: HeadStorage::new(),
            resp: HeadStorage::new(),
        });
        self.wbuf = set.wbuf;
        self.upstream.buf = set.ubuf;
        self.path = set.path;
        self.req.restore(set.req);
        self.upstream.resp.restore(set.resp);
    }
}

/// Frees all but `keep` parked sets (a shard gone quiet, runtime/quiet.rs): the list's
/// high-water mark is the requests that ran at once, and an idle shard needs none of it.
pub(super) fn trim(keep: usize) {
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        f.truncate(keep);
        f.shrink_to_fit();
    });
}
