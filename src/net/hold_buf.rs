//! `HoldBuf`: the buffer of a keep-alive hold's read, which is dropped (cancelled) when the hold
//! passes; if the kernel filled it anyway, it shuts the connection's socket down. Owns no socket.
//!
//! Why: monoio cancels a dropped read lazily (an `AsyncCancel` submitted at the next ring enter,
//! the op kept as `Ignored` until its completion arrives). A request that arrives between the
//! op's last poll and the kernel's cancel is read into this buffer, and monoio then drops it: the
//! request would be lost and the client left waiting for the keep-alive timeout. monoio's
//! cancel-and-await (`Canceller`) hashes into a set on every read (+800 instructions per TLS
//! request, perf/RESULTS.md issue 21a); this costs a byte written and one read back per hold.
//!
//! How: a byte 0 is written where the read starts (a request head never starts with NUL, nor
//! does a TLS record). A buffer dropped without [`HoldBuf::into_inner`] is dropped only after the
//! kernel is done with it (by monoio at the op's completion, or with a completed op); if that byte
//! changed, bytes were taken from the socket and are gone. The socket is then shut down, so the
//! connection ends at once (its readiness wait or read sees the close) and the client sees a
//! close instead of a hang: the keep-alive race clients retry idempotent requests on (RFC 9112
//! 9.3.1). The length read is not in the buffer, so the bytes cannot be handed on exactly.
//! The socket is touched only while the connection still holds `alive` (its fd is then open and
//! still this connection's, never a number reused since).

use std::future::Future;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::{Rc, Weak};

use monoio::buf::IoBufMut;

/// A read buffer for a hold; see the module comment.
pub struct HoldBuf<B: IoBufMut> {
    buf: ManuallyDrop<B>,
    /// Where the read starts, holding 0 until the kernel writes there; null: no room (no check).
    at: *mut u8,
    fd: RawFd,
    alive: Weak<()>,
}

impl<B: IoBufMut> HoldBuf<B> {
    /// Wraps `buf` for a read on `fd` (negative: never shut down) by a connection holding `alive`.
    #[inline]
    pub fn new(mut buf: B, fd: RawFd, alive: &Rc<()>) -> Self {
        // monoio reads into a buffer from `write_ptr` on.
        let at = if buf.bytes_total() > 0 {
            // SAFETY: the buffer owns at least one byte at `write_ptr` (checked above); writing
            // it initialises it and reads nothing.
            unsafe {
                let p = buf.write_ptr();
                p.write(0);
                p
            }
        } else {
            std::ptr::null_mut()
        };
        HoldBuf {
            buf: ManuallyDrop::new(buf),
            at,
            fd,
            alive: Rc::downgrade(alive),
        }
    }

    /// The buffer back after its read completed (its bytes were handed on): no check.
    #[inline]
    pub fn into_inner(self) -> B {
        let mut me = ManuallyDrop::new(self);
        // SAFETY: `me` is never dropped or used again, so each field is moved out exactly once.
        unsafe {
            drop(std::ptr::read(&me.alive));
            ManuallyDrop::take(&mut me.buf)
        }
    }

    /// Whether the kernel wrote where the read starts (bytes were read into this buffer).
    fn filled(&self) -> bool {
        // SAFETY: `at` points into the buffer, still owned (not yet dropped), at a byte written
        // in `new`; when this is asked (drop) no read is in flight on it any more.
        !self.at.is_null() && unsafe { self.at.read() } != 0
    }
}

impl<B: IoBufMut> Drop for HoldBuf<B> {
    fn drop(&mut self) {
        if self.filled() && self.fd >= 0 && self.alive.strong_count() > 0 {
            // SAFETY: the connection still holds `alive`, so it still owns its socket and `fd`
            // is open and is that socket; shutdown(2) touches no memory.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
            LOST.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: dropped once, here; `into_inner` skips this drop.
        unsafe { ManuallyDrop::drop(&mut self.buf) };
    }
}

/// A keep-alive hold's read `op` (into a [`HoldBuf`] on `fd`) whose limit passed: waited out
/// when bytes or a close are queued on the socket (a request just in is read rather than raced
/// by the cancel), else `None` and the caller drops `op`, which cancels it. Plain and TLS holds
/// share this rule; the wait before the limit stays inline in each (the per-request path).
pub async fn wait_out<F: Future>(op: Pin<&mut F>, fd: RawFd) -> Option<F::Output> {
    if fd >= 0 && queued(fd) {
        Some(op.await)
    } else {
        None
    }
}

/// Whether the socket has bytes (or a close) queued to read, asked without waiting or taking any.
pub fn queued(fd: RawFd) -> bool {
    // 0: the peer closed; > 0: bytes; -1 with EAGAIN: nothing (other errors: the read reports them).
    match peek(fd) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// Whether the socket's peer closed (or the socket failed) with no byte left to read.
pub fn closed(fd: RawFd) -> bool {
    match peek(fd) {
        Ok(n) => n == 0,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// Peeks one byte: how many there were (0: end of file), never waiting or taking any.
fn peek(fd: RawFd) -> io::Result<usize> {
    let mut byte = 0u8;
    // SAFETY: `fd` is the caller's open socket and `byte` a valid one-byte buffer for the call;
    // MSG_PEEK leaves the queue as it was and MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

thread_local! {
    /// Holds that ended with bytes read into a dropped buffer, on this thread (tests, logs).
    static LOST: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many holds on this thread ended with a request read into a dropped buffer (and so with
/// the connection shut down).
pub fn lost() -> u64 {
    LOST.with(|c| c.get())
}

// SAFETY: every call forwards to the wrapped buffer, which stays where it is inside the wrapper.
unsafe impl<B: IoBufMut> IoBufMut for HoldBuf<B> {
    #[inline]
    fn write_ptr(&mut self) -> *mut u8 {
        self.buf.write_ptr()
    }

    #[inline]
    fn bytes_total(&mut self) -> usize {
        self.buf.bytes_total()
    }

    #[inline]
    unsafe fn set_init(&mut self, pos: usize) {
        self.buf.set_init(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A connected pair of TCP sockets on loopback (std, blocking).
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn closed(peer: &mut std::net::TcpStream) -> bool {
        use std::io::Read;
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 8];
        matches!(peer.read(&mut b), Ok(0) | Err(_))
    }

    /// Writes as the kernel would: `n` bytes at the read position, then `set_init`.
    fn fill(h: &mut HoldBuf<Vec<u8>>, bytes: &[u8]) {
        // SAFETY: the test's buffer has room for `bytes` (checked by the copy's bounds).
        unsafe {
            assert!(h.bytes_total() >= bytes.len());
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), h.write_ptr(), bytes.len());
        }
    }

    #[test]
    fn a_filled_buffer_dropped_shuts_the_socket_down() {
        let (mut client, server) = pair();
        let alive = Rc::new(());
        let mut h = HoldBuf::new(Vec::with_capacity(64), server.as_raw_fd(), &alive);
        fill(&mut h, b"GET / HTTP/1.1\r\n");
        let before = lost();
        drop(h);
        assert_eq!(lost(), before + 1);
        assert!(closed(&mut client), "the client sees the close");
    }

    #[test]
    fn an_untouched_buffer_dropped_leaves_the_socket_open() {
        let (mut client, server) = pair();
        let alive = Rc::new(());
        let before = lost();
        drop(HoldBuf::new(
            Vec::with_capacity(64),
            server.as_raw_fd(),
            &alive,
        ));
        assert_eq!(lost(), before);
        assert!(open(server, &mut client));
    }

    /// Whether a byte still goes from `server` to `client`.
    fn open(mut server: std::net::TcpStream, client: &mut std::net::TcpStream) -> bool {
        use std::io::{Read, Write};
        server.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        client.read_exact(&mut b).is_ok() && &b == b"x"
    }

    #[test]
    fn a_buffer_taken_back_is_not_checked() {
        let (mut client, server) = pair();
        let alive = Rc::new(());
        let mut h = HoldBuf::new(Vec::with_capacity(64), server.as_raw_fd(), &alive);
        fill(&mut h, b"GET");
        // SAFETY: three bytes were written above.
        unsafe { h.set_init(3) };
        let v = h.into_inner();
        assert_eq!(v, b"GET");
        assert!(open(server, &mut client));
    }

    #[test]
    fn a_connection_gone_is_never_touched() {
        let (_client, server) = pair();
        let alive = Rc::new(());
        let mut h = HoldBuf::new(Vec::with_capacity(64), server.as_raw_fd(), &alive);
        fill(&mut h, b"GET");
        drop(alive);
        let before = lost();
        drop(h);
        assert_eq!(lost(), before);
    }

    /// Starts a read of `buf` on `server` (submitted to the ring), has the client send a request
    /// head, lets the kernel complete the read without the runtime reaping it, drops the read (as
    /// a hold ending then does), and lets the runtime reap; then tries to read the head again.
    /// Returns whether the head could be read again, and whether the client saw a close while
    /// the server still held its socket.
    fn race<B: IoBufMut>(buf: impl FnOnce(RawFd, &Rc<()>) -> B) -> (bool, bool) {
        use monoio::io::AsyncReadRent;
        use std::future::Future;
        use std::io::{Read, Write};
        use std::time::Duration;
        let (mut client, s) = pair();
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .expect("io_uring runtime");
        rt.block_on(async {
            let mut server = monoio::net::TcpStream::from_std(s).expect("monoio stream");
            let alive = Rc::new(());
            let fd = server.as_raw_fd();
            {
                let mut op = std::pin::pin!(server.read(buf(fd, &alive)));
                std::future::poll_fn(|cx| {
                    assert!(op.as_mut().poll(cx).is_pending(), "nothing sent yet");
                    std::task::Poll::Ready(())
                })
                .await;
                // The runtime enters the kernel: the read is armed.
                monoio::time::sleep(Duration::from_millis(20)).await;
                client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
                // The kernel completes the read on this thread's next syscall; its completion
                // waits in the ring, unreaped.
                std::thread::sleep(Duration::from_millis(20));
            }
            // The read is dropped; the runtime reaps its completion.
            monoio::time::sleep(Duration::from_millis(20)).await;
            let again = monoio::time::timeout(
                Duration::from_millis(200),
                server.read(Vec::with_capacity(64)),
            )
            .await;
            let again = matches!(again, Ok((Ok(n), _)) if n > 0);
            // Asked while the server still holds its socket: a close is the shutdown's.
            let mut b = [0u8; 8];
            let closed = match client.read(&mut b) {
                Ok(n) => n == 0,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            (again, closed)
        })
    }

    #[test]
    fn a_request_read_into_a_dropped_hold_read_closes_the_connection() {
        // Without the check (a plain buffer, as before): the request is gone and the
        // connection stays open, so the client would wait for the keep-alive timeout.
        let (again, closed) = race(|_, _| Vec::with_capacity(64));
        assert!(
            !again,
            "monoio kept the bytes of a dropped read: the race is gone"
        );
        assert!(!closed, "a plain buffer closes nothing");
        // With it: the client sees the close at once.
        let before = lost();
        let (again, closed) = race(|fd, alive| HoldBuf::new(Vec::with_capacity(64), fd, alive));
        assert!(!again);
        assert!(closed, "the client sees the close");
        assert_eq!(lost(), before + 1);
    }

    #[test]
    fn a_buffer_without_room_is_not_checked() {
        let alive = Rc::new(());
        let h = HoldBuf::new(Vec::new(), -1, &alive);
        assert!(!h.filled());
        drop(h);
    }
}
