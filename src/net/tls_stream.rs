//! `TlsStream`: a terminated client connection after its handshake — rustls' server session over a
//! monoio `TcpStream`, batching every pending TLS record of one write into one send. No HTTP here.
//!
//! Replaces monoio-rustls' stream on the server side, which copied each record into a fixed
//! 16 KiB staging buffer and sent records one at a time (a 64 KiB body took 8+ sends, and its
//! `writev` sent only the first buffer). Here a write hands the whole chunk (every iovec of a
//! `writev`) to rustls, drains all records it produced into one owned buffer and sends that with
//! one `write_all`. Reads fill one owned buffer of at most [`READ_BUF`] bytes, fed to rustls
//! until it has plaintext; rustls bounds what it buffers itself, so a peer cannot grow either.
//!
//! Cancellation: an operation whose future is dropped loses the buffer it moved into the ring
//! (and the bytes in flight); [`super::guard::Guarded`] wraps this stream so later calls fail.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use std::future::poll_fn;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, RawBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::ServerConnection;

use super::hold_buf::{wait_out, HoldBuf};

/// Ciphertext read from the socket at once: one full TLS record (16 KiB plaintext + header and
/// the largest AEAD expansion rustls allows), so a record never needs two feeds.
const READ_BUF: usize = 16 * 1024 + 2048 + 5;

/// Plaintext accepted per write call: a 64 KiB body plus its head go out in one send; the caller's
/// `write_all` loops for more. Also bounds the encrypted buffer to about this size.
const WRITE_MAX: usize = 128 * 1024;

/// Write-buffer capacity kept between writes; a larger one (after a big body) is freed so an
/// idle keep-alive connection holds at most this much for sending.
const WRITE_KEEP: usize = 32 * 1024;

/// About the bytes `plain` bytes of application data take once framed and sealed: 16 KiB
/// records of at most 32 bytes' overhead each (header, AEAD tag, TLS 1.2's explicit nonce or TLS
/// 1.3's content type), plus room for an alert queued beside them.
fn sealed_len(plain: usize) -> usize {
    plain + plain.div_ceil(16 * 1024) * 32 + 64
}

pub struct TlsStream {
    tcp: TcpStream,
    conn: ServerConnection,
    /// Ciphertext read but not yet fed to rustls is `rbuf[rpos..]`.
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    /// The last read filled its destination, so rustls may hold more plaintext.
    more: bool,
}

impl TlsStream {
    /// Wraps a session whose handshake is complete; records it already decrypted (the first
    /// request, when it followed the handshake) are served by the first read.
    pub fn new(tcp: TcpStream, mut conn: ServerConnection) -> Self {
        // rustls' 64 KiB default would split a 64 KiB body (65,624 bytes once framed) into two
        // sends; one write's WRITE_MAX plus framing and queued alerts fits this with room.
        conn.set_buffer_limit(Some(WRITE_MAX + 16 * 1024));
        TlsStream {
            tcp,
            conn,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            // The handshake may have left the first request's plaintext in the session.
            more: true,
        }
    }

    /// The socket under the session (an idle connection waits on its readiness, proxy/conn.rs).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Waits up to `limit` for the client's next bytes between requests. `Ok(true)`: bytes (or
    /// the peer's close) are here for the next read, or were already buffered; `Ok(false)`:
    /// none came, the socket read was cancelled, and the stream's buffers are freed until its
    /// next read, so an idle connection can wait on `tcp()`'s readiness holding none (memory
    /// per idle keep-alive connection, perf/idle-rss.sh).
    ///
    /// The read is dropped (cancelled) only when the socket has nothing queued just before; if
    /// bytes still arrive before the kernel sees the cancel, they are read into the dropped
    /// buffer, which then shuts the socket down (`alive`: held by the connection while it owns
    /// this stream), so the client sees a close rather than a hang (net/hold_buf.rs). monoio's
    /// cancel-and-await (`Canceller`) hashes into a set on every read: +800 instructions per
    /// TLS request (perf/RESULTS.md, issue 21a).
    pub async fn hold(&mut self, limit: Duration, alive: &Rc<()>) -> io::Result<bool> {
        if self.rpos < self.rbuf.len() {
            return Ok(true);
        }
        if self.more {
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
                return Ok(true);
            }
            self.more = false;
        }
        let mut b = std::mem::take(&mut self.rbuf);
        b.clear();
        b.reserve_exact(READ_BUF);
        let fd = self.tcp.as_raw_fd();
        let mut op = std::pin::pin!(self.tcp.read(HoldBuf::new(b, fd, alive)));
        let mut wait = crate::local::deadline::Wait::new(limit);
        let (r, b) = match poll_fn(|cx| wait.poll_with(op.as_mut(), cx)).await {
            Some(done) => done,
            None => match wait_out(op, fd).await {
                Some(done) => done,
                None => {
                    self.wbuf = Vec::new();
                    // `op` is dropped on return: monoio cancels the read and frees its buffer.
                    return Ok(false);
                }
            },
        };
        self.rbuf = b.into_inner();
        self.rpos = 0;
        if r? == 0 {
            self.conn.read_tls(&mut io::empty())?;
        }
        Ok(true)
    }

    /// Feeds buffered ciphertext to rustls (one record at most per call) and decrypts it.
    fn feed(&mut self) -> io::Result<()> {
        let mut rest = &self.rbuf[self.rpos..];
        let before = rest.len();
        let n = self.conn.read_tls(&mut rest)?;
        self.rpos += before - rest.len();
        if n == 0 && before > 0 {
            // close_notify already received: what follows it is ignored, as the RFC says.
            self.rpos = self.rbuf.len();
        }
        self.conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(())
    }

    /// Reads more ciphertext from the socket; end of stream is told to rustls (which then
    /// reports a clean close or a truncation).
    async fn fill(&mut self) -> io::Result<()> {
        let mut b = std::mem::take(&mut self.rbuf);
        b.clear();
        b.reserve_exact(READ_BUF);
        let (r, b) = self.tcp.read(b).await;
        self.rbuf = b;
        self.rpos = 0;
        if r? == 0 {
            self.conn.read_tls(&mut io::empty())?;
        }
        Ok(())
    }

    /// Copies plaintext into `dst`, reading and decrypting as needed; `Ok(0)` is a clean close.
    async fn read_plain(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(dst) {
                Ok(n) => {
                    // rustls' reader fills `dst` while it has plaintext: a short read drained it.
                    self.more = n == dst.len();
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.rpos < self.rbuf.len() {
                self.feed()?;
            } else {
                self.fill().await?;
            }
        }
    }

    /// Sends every TLS record rustls has queued (alerts, key updates, data) in one send;
    /// `hint` is about how many bytes that is.
    async fn send_pending(&mut self, hint: usize) -> io::Result<()> {
        if !self.conn.wants_write() {
            return Ok(());
        }
        let mut out = std::mem::take(&mut self.wbuf);
        out.clear();
        if out.capacity() < hint {
            // One allocation of the right size: appending 64 KiB of records to a smaller buffer
            // regrew it by doubling, copying what it held each time (callgrind: ~30 KB of
            // copies per 64 KiB response).
            out = Vec::with_capacity(hint);
        }
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out)?;
        }
        let (r, mut out) = self.tcp.write_all(out).await;
        if out.capacity() <= WRITE_KEEP {
            out.clear();
            self.wbuf = out;
        }
        r.map(|_| ())
    }

    /// Encrypts up to [`WRITE_MAX`] bytes of `parts` and sends them; returns the bytes taken.
    async fn write_parts(&mut self, parts: &[&[u8]]) -> io::Result<usize> {
        let mut taken = 0;
        for part in parts {
            let room = WRITE_MAX - taken;
            let part = &part[..part.len().min(room)];
            let n = self.conn.writer().write(part)?;
            taken += n;
            if n < part.len() || taken == WRITE_MAX {
                // Full (rustls' limit or ours): the caller's write_all sends the rest next call.
                break;
            }
        }
        self.send_pending(sealed_len(taken)).await?;
        Ok(taken)
    }
}

impl AsyncReadRent for TlsStream {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: `write_ptr`/`bytes_total` describe memory `buf` owns and keeps alive for this
        // call; u8 has no invalid values and rustls' reader only copies into the slice.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), buf.bytes_total()) };
        match self.read_plain(dst).await {
            Ok(n) => {
                // SAFETY: the first `n` bytes were just written by the reader.
                unsafe { buf.set_init(n) };
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: the RawBuf borrows the first iovec of `buf`, which outlives this call.
        let r = match unsafe { RawBuf::new_from_iovec_mut(&mut buf) } {
            Some(raw) => self.read(raw).await.0,
            None => Ok(0),
        };
        if let Ok(n) = r {
            // SAFETY: `n` bytes were written into the first iovec.
            unsafe { buf.set_init(n) };
        }
        (r, buf)
    }
}

impl AsyncWriteRent for TlsStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: `read_ptr`/`bytes_init` describe initialised memory `buf` owns for this call.
        let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let r = self.write_parts(&[src]).await;
        (r, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let ptr = buf.read_iovec_ptr();
        let len = buf.read_iovec_len();
        let parts: Vec<&[u8]> = (0..len)
            .map(|i| {
                // SAFETY: `buf` owns `len` valid iovecs, each describing initialised memory it
                // keeps alive for this call.
                let v = unsafe { &*ptr.add(i) };
                unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }
            })
            .collect();
        let r = self.write_parts(&parts).await;
        drop(parts);
        (r, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.conn.writer().flush()?;
        self.send_pending(0).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.send_pending(0).await?;
        self.tcp.shutdown().await
    }
}

// SAFETY: `Split` lets monoio hand out a read half and a write half sharing this value through
// `Rc<UnsafeCell<_>>` on one thread. Each half owns its buffer while its socket operation is in
// flight (the read side `rbuf`, the write side `wbuf`, both moved out across the await) and
// touches the rustls session only synchronously between awaits, so neither sees the other's
// state change under it; `TcpStream` is itself `Split`.
unsafe impl Split for TlsStream {}
