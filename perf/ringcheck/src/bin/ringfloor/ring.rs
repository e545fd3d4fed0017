//! What io-uring 0.6.4 leaves to its user for two of ringfloor's levers: a provided-buffer ring
//! (register, hand buffers back) and the POLL_FIRST recv flag. Knows nothing of connections.

use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{squeue, types, IoUring};

const BUFS: u16 = 1024;
pub const BUF_SIZE: usize = 4096;
/// The buffer group every multishot recv takes its buffers from.
pub const BGID: u16 = 7;

/// The provided-buffer ring (IORING_REGISTER_PBUF_RING): BUFS buffers of BUF_SIZE bytes.
pub struct BufRing {
    ring: *mut types::BufRingEntry,
    mem: Box<[u8]>,
    tail: u16,
}

impl BufRing {
    pub fn new(ring: &IoUring) -> std::io::Result<BufRing> {
        let layout = std::alloc::Layout::from_size_align(BUFS as usize * 16, 4096)
            .map_err(std::io::Error::other)?;
        // SAFETY: the layout has a non-zero size; the memory lives for the whole process
        // (never freed: the kernel reads it until the ring is gone, which is at exit).
        let base = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
        assert!(!base.is_null(), "buffer ring allocation");
        // SAFETY: `base` is page aligned, BUFS entries long and never freed (see above).
        unsafe {
            ring.submitter()
                .register_buf_ring(base as u64, BUFS, BGID)?
        };
        let mut b = BufRing {
            ring: base,
            mem: vec![0u8; BUFS as usize * BUF_SIZE].into_boxed_slice(),
            tail: 0,
        };
        for bid in 0..BUFS {
            b.give(bid);
        }
        Ok(b)
    }

    pub fn ptr(&self, bid: u16) -> *const u8 {
        self.mem[bid as usize * BUF_SIZE..].as_ptr()
    }

    /// Hands buffer `bid` (back) to the kernel.
    pub fn give(&mut self, bid: u16) {
        let addr = self.ptr(bid) as u64;
        // SAFETY: the index is masked into the ring's BUFS entries; the tail field shares the
        // first entry's `resv`, which the kernel reads and we alone write.
        unsafe {
            let e = &mut *self.ring.add((self.tail & (BUFS - 1)) as usize);
            e.set_addr(addr);
            e.set_len(BUF_SIZE as u32);
            e.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
            let tail = types::BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

/// IORING_RECVSEND_POLL_FIRST (include/uapi/linux/io_uring.h; io-uring 0.6.4 keeps `sys` private).
const POLL_FIRST: u16 = 1;

/// Sets IORING_RECVSEND_POLL_FIRST on a recv entry (io-uring 0.6.4 has no setter for it).
pub fn poll_first(e: squeue::Entry) -> squeue::Entry {
    // SAFETY: `Entry` is `#[repr(C)]` around the 64-byte `io_uring_sqe`, whose u16 `ioprio`
    // (the recv flags) is at byte offset 2 after the u8 opcode and u8 flags.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute::<squeue::Entry, [u8; 64]>(e) };
    let prio = u16::from_ne_bytes([raw[2], raw[3]]) | POLL_FIRST;
    raw[2..4].copy_from_slice(&prio.to_ne_bytes());
    // SAFETY: the same 64 bytes back, only the recv flags changed.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}
