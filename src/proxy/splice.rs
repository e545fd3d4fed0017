//! Zero-copy relay of a fixed-length body between two plain TCP sockets: splice(2) through a
//! pipe, so the payload never enters user space. Owns this thread's spare pipes; knows nothing of
//! HTTP framing, TLS or the exchange's buffers.
//!
//! Why: relaying a 64 KiB response through a user buffer costs the shard two kernel copies of the
//! payload (socket to buffer, buffer to socket); on the loopback benchmark that left the shard at
//! 90%+ kernel time. Spliced, the pipe takes references to the received pages and the client
//! socket sends those same pages (MSG_SPLICE_PAGES), so the shard copies nothing.
//!
//! Why direct non-blocking calls rather than io_uring's IORING_OP_SPLICE: the kernel runs every
//! ring splice on an io-wq worker thread, a context switch per call. Here each splice runs on the
//! shard's thread with the sockets in O_NONBLOCK mode (io_uring's socket ops ignore that flag) and
//! only a would-block waits, on a ring poll (`readable` / `writable`).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use monoio::net::TcpStream;

use crate::local::deadline::within;
use crate::net::io::IoFail;
use crate::upstream::stream::UpstreamStream;

/// A stream that may be a bare TCP socket: bodies can then be spliced to or from it. Streams
/// with something between them and the socket (TLS) keep the default.
pub trait PlainSocket {
    fn plain_tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl PlainSocket for TcpStream {
    fn plain_tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl PlainSocket for UpstreamStream {
    fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            UpstreamStream::Plain(s) => Some(s),
            UpstreamStream::Tls(_) => None,
        }
    }
}

impl PlainSocket for crate::net::tls::ServerStream {}

/// Bodies with less than this left to relay are copied: below it the two splice calls (and the
/// pipe's page references) cost about what the copies would.
pub const MIN_BYTES: u64 = 16 * 1024;

/// Bytes asked of one splice into the pipe: the default pipe capacity (16 pages). A pipe slot
/// holds one page reference, so a call may move less; the loop takes what it gets.
const STEP: usize = 64 * 1024;

/// Spare (empty) pipes kept per thread: one per body being spliced at once, so this many bodies in
/// flight recently; beyond it pipes are closed (two fds each).
const KEEP: usize = 256;

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

thread_local! {
    static SPARE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill; on success both are
        // fresh descriptors that nothing else owns, so wrapping them in OwnedFd is sound.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above; each fd is wrapped exactly once.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { r, w })
    }
}

/// A pipe borrowed for one relay; back on the spare list only after a relay that completed. One
/// that failed part-way may hold bytes that must never reach another body, and closing it also
/// leaves a connection failure without fds to show for it.
struct Lease {
    pipe: Option<Pipe>,
    done: bool,
}

impl Lease {
    fn take() -> io::Result<Lease> {
        let pipe = match SPARE.with(|s| s.borrow_mut().pop()) {
            Some(p) => p,
            None => Pipe::new()?,
        };
        Ok(Lease {
            pipe: Some(pipe),
            done: false,
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(p) = self.pipe.take() {
            // A completed relay drained the pipe: every byte put in was taken out.
            if self.done {
                SPARE.with(|s| {
                    let mut s = s.borrow_mut();
                    if s.len() < KEEP {
                        s.push(p);
                    }
                });
            }
        }
    }
}

/// Puts `s` in non-blocking mode (once per socket: the caller remembers), so that a splice on it
/// returns EAGAIN instead of blocking the shard.
pub fn set_nonblocking(s: &TcpStream) -> io::Result<()> {
    let fd = s.as_raw_fd();
    // SAFETY: fcntl on an open descriptor owned by `s`, which outlives the calls; F_GETFL and
    // F_SETFL touch only the file's status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if flags & libc::O_NONBLOCK == 0
            && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (owned by the caller's
    // sockets and the leased pipe); null offsets are required for sockets and pipes; no user
    // memory is passed.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Which side of a relay failed (the pump turns it into its own `PumpFail`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpliceFail {
    Src(IoFail),
    Dst(IoFail),
}

/// Moves exactly `len` body bytes from `src` to `dst` (both already non-blocking). Errors are
/// reported like `pump`'s: `Src` for the upstream side (early close, reset, read timeout), `Dst`
/// for the client side.
pub async fn relay(
    src: &TcpStream,
    dst: &TcpStream,
    len: u64,
    read_timeout: Duration,
    write_timeout: Duration,
) -> Result<(), SpliceFail> {
    // No pipe (fd limit): report it as a failure of the response rather than copy, since the
    // head is already out and the caller cannot start over.
    let mut lease = Lease::take().map_err(|_| SpliceFail::Src(IoFail::Error))?;
    let (pr, pw) = match &lease.pipe {
        Some(p) => (p.r.as_raw_fd(), p.w.as_raw_fd()),
        None => return Err(SpliceFail::Src(IoFail::Error)),
    };
    let (sfd, dfd) = (src.as_raw_fd(), dst.as_raw_fd());
    let mut left = len;
    while left > 0 {
        let want = left.min(STEP as u64) as usize;
        let got = loop {
            match splice(sfd, pw, want) {
                Ok(0) => return Err(SpliceFail::Src(IoFail::Closed)),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready(within(read_timeout, src.readable(false)).await)
                        .map_err(SpliceFail::Src)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(SpliceFail::Src(IoFail::Error)),
            }
        };
        left -= got as u64;
        let mut held = got;
        while held > 0 {
            match splice(pr, dfd, held) {
                Ok(0) => return Err(SpliceFail::Dst(IoFail::Closed)),
                Ok(n) => held -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready(within(write_timeout, dst.writable(false)).await)
                        .map_err(SpliceFail::Dst)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(SpliceFail::Dst(IoFail::Error)),
            }
        }
    }
    lease.done = true;
    Ok(())
}

fn ready(r: Result<io::Result<()>, crate::local::deadline::Elapsed>) -> Result<(), IoFail> {
    match r {
        Err(_) => Err(IoFail::Timeout),
        Ok(Err(_)) => Err(IoFail::Error),
        Ok(Ok(())) => Ok(()),
    }
}
