//! Socket reads and writes with (coarse, per-shard) deadlines over monoio's owned-buffer API.
//! Buffers live in the caller's structs; a timed-out operation leaves them empty, and the caller closes.

use std::future::poll_fn;
use std::os::fd::RawFd;
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::hold_buf::{wait_out, HoldBuf};
use crate::local::deadline::Wait;

/// Why an I/O step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoFail {
    Timeout,
    /// Orderly close (EOF) from the peer.
    Closed,
    /// Reset or another socket error.
    Error,
}

/// Reads at least one byte, appending to `buf`. On timeout the read is cancelled and
/// `buf` is left empty (io_uring owns the buffer until the cancel completes).
pub async fn read_some<S: AsyncReadRent>(
    s: &mut S,
    buf: &mut BytesMut,
    reserve: usize,
    limit: Duration,
) -> Result<usize, IoFail> {
    let (owned, len, cap) = take_for_read(buf, reserve);
    // The deadline is polled beside the op rather than wrapping it, so the op's future is
    // moved once (callgrind: the wrapper's moves were ~70 Ir per step).
    let mut wait = Wait::new(limit);
    let mut op = pin!(s.read(owned.slice_mut(len..cap)));
    match poll_fn(|cx| wait.poll_with(op.as_mut(), cx)).await {
        None => Err(IoFail::Timeout),
        Some((res, slice)) => {
            *buf = slice.into_inner();
            outcome(res)
        }
    }
}

/// Makes room for a read of about `reserve` bytes and takes the buffer for it: monoio reads
/// into a buffer from its start, so the caller reads into `owned.slice_mut(len..cap)` to append
/// after what is already there.
#[inline(always)]
fn take_for_read(buf: &mut BytesMut, reserve: usize) -> (BytesMut, usize, usize) {
    if buf.capacity() - buf.len() < reserve / 2 {
        buf.reserve(reserve);
    }
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    (owned, len, cap)
}

/// A finished read's result as the callers see it (0 bytes: the peer closed).
#[inline(always)]
fn outcome(res: std::io::Result<usize>) -> Result<usize, IoFail> {
    match res {
        Ok(0) => Err(IoFail::Closed),
        Ok(n) => Ok(n),
        Err(_) => Err(IoFail::Error),
    }
}

/// A keep-alive hold's read on a plain socket `fd`: [`read_some`], except that
/// at `limit` the read is dropped only when nothing is queued on the socket (a request just in is
/// read), and through a [`HoldBuf`], which shuts the socket down if a request was read into the
/// dropped buffer anyway (hold_buf.rs). `IoFail::Timeout`: dropped, `buf` left empty.
pub async fn read_hold<S: AsyncReadRent>(
    s: &mut S,
    buf: &mut BytesMut,
    reserve: usize,
    limit: Duration,
    fd: RawFd,
    alive: &Rc<()>,
) -> Result<usize, IoFail> {
    let (owned, len, cap) = take_for_read(buf, reserve);
    let owned = HoldBuf::new(owned.slice_mut(len..cap), fd, alive);
    let mut wait = Wait::new(limit);
    let mut op = pin!(s.read(owned));
    let (res, owned) = match poll_fn(|cx| wait.poll_with(op.as_mut(), cx)).await {
        Some(done) => done,
        None => match wait_out(op, fd).await {
            Some(done) => done,
            None => return Err(IoFail::Timeout),
        },
    };
    *buf = owned.into_inner().into_inner();
    outcome(res)
}

/// Writes `buf[start..end]` fully and gives the buffer back unchanged.
pub async fn write_range<S: AsyncWriteRent>(
    s: &mut S,
    buf: &mut BytesMut,
    start: usize,
    end: usize,
    limit: Duration,
) -> Result<(), IoFail> {
    if start == end {
        return Ok(());
    }
    let owned = std::mem::take(buf);
    let mut wait = Wait::new(limit);
    let mut op = pin!(s.write_all(owned.slice(start..end)));
    match poll_fn(|cx| wait.poll_with(op.as_mut(), cx)).await {
        None => Err(IoFail::Timeout),
        Some((res, slice)) => {
            *buf = slice.into_inner();
            match res {
                Ok(_) => Ok(()),
                Err(_) => Err(IoFail::Error),
            }
        }
    }
}

/// Writes all of `buf`.
pub async fn write_all<S: AsyncWriteRent>(
    s: &mut S,
    buf: &mut BytesMut,
    limit: Duration,
) -> Result<(), IoFail> {
    let end = buf.len();
    write_range(s, buf, 0, end, limit).await
}
