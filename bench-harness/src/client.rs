//! One benchmark connection (connect, write prebuilt requests, read and frame responses), its
//! timeout watchdog, and the closed/open-loop send disciplines. Must not spawn threads or print.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::{sleep, timeout_at};

use crate::hist::{ErrorKind, Stats};
use crate::http::{self, Body};
use crate::pacer::Pacer;
use crate::runtime::mono;
use crate::scenario::{Mix, Rng};

const READ_CHUNK: usize = 16 * 1024;
/// Keeps a refused or unreachable target from turning the generator into a connect() spinner.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// Counters the main thread reads for the live progress line; padded so the two threads that
/// touch them do not share a cache line with anything else.
#[repr(align(128))]
#[derive(Default)]
pub struct Live {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

/// Everything the connections of one worker thread share. Lives in an `Rc` on that thread.
pub struct Ctx {
    pub addr: SocketAddr,
    pub mix: Arc<Mix>,
    pub pipeline: usize,
    pub timeout: Duration,
    pub keepalive: bool,
    /// Origin of the open-loop schedule (the run start, warmup included).
    pub start: Instant,
    pub measure_start: Instant,
    pub end: Instant,
    pub rate: Option<f64>,
    /// Open loop: the pacer's busy-poll window.
    pub spin: Duration,
    pub connections: usize,
    pub stats: RefCell<Stats>,
    pub live: Arc<Live>,
    /// Errors of every kind counted so far on this thread (mirrored into `live`).
    pub errors: Cell<u64>,
}

impl Ctx {
    /// Work begun before the measurement window (warmup) is performed but not counted.
    fn record(&self, intended: Instant, sent: Instant, done: Instant, status: u16, bytes: u64) {
        if intended < self.measure_start {
            return;
        }
        let mut stats = self.stats.borrow_mut();
        stats.record(intended, sent, done, status, bytes);
        // This thread is the counters' only writer: a plain store, no locked add per request.
        self.live.requests.store(stats.requests, Ordering::Relaxed);
        if !(200..400).contains(&status) {
            self.count_errors(1);
        }
    }

    fn count_errors(&self, n: u64) {
        self.errors.set(self.errors.get() + n);
        self.live.errors.store(self.errors.get(), Ordering::Relaxed);
    }

    /// Open loop: how far after its due time a request actually left.
    fn scheduled(&self, intended: Instant, sent: Instant, on_time: bool) {
        if intended >= self.measure_start {
            self.stats.borrow_mut().scheduled(intended, sent, on_time);
        }
    }

    fn error(&self, kind: ErrorKind, began: Instant, n: u64) {
        if began < self.measure_start || n == 0 {
            return;
        }
        self.stats.borrow_mut().error(kind, n, began);
        self.count_errors(n);
    }
}

/// What the thread's watchdog sees of one connection: its socket and the time the exchange in
/// flight must be done by. Replaces a timer per read and write (the costliest per-request
/// bookkeeping) with one scan per watchdog period.
pub struct Guard {
    fd: Cell<RawFd>,
    deadline: Cell<Option<Instant>>,
    /// Set when the watchdog shut the socket down, so the failure is counted as a timeout.
    fired: Cell<bool>,
}

impl Default for Guard {
    fn default() -> Guard {
        Guard {
            fd: Cell::new(-1),
            deadline: Cell::new(None),
            fired: Cell::new(false),
        }
    }
}

/// Shuts down the socket of every connection whose exchange is past its deadline, every
/// `period`; the read or write in flight then fails and is counted as a timeout. Runs until
/// the runtime it lives on is dropped.
pub async fn watchdog(guards: Vec<Rc<Guard>>, period: Duration) {
    loop {
        sleep(period).await;
        let now = Instant::now();
        for g in &guards {
            let fd = g.fd.get();
            if fd >= 0 && !g.fired.get() && g.deadline.get().is_some_and(|d| d <= now) {
                g.fired.set(true);
                // SAFETY: `fd` belongs to this connection's open stream: `Conn` resets it to -1
                // on the same thread before the stream is dropped, so it cannot be a reused number.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
        }
    }
}

/// How often the watchdog looks: a tenth of the timeout, between 1 ms and 100 ms.
pub fn watchdog_period(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(100))
}

struct Response {
    status: u16,
    bytes: u64,
    close: bool,
}

pub struct Conn {
    stream: Option<TcpStream>,
    guard: Rc<Guard>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// How many requests `wbuf` holds when a one-request mix needs no re-copy (0: refill).
    reusable: usize,
    /// Whether each request of the current batch is a HEAD, so its response is framed right.
    heads: Vec<bool>,
    rng: Rng,
}

impl Conn {
    pub fn new(id: usize, pipeline: usize, guard: Rc<Guard>) -> Conn {
        Conn {
            stream: None,
            guard,
            reusable: 0,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            heads: Vec::with_capacity(pipeline),
            rng: Rng::new(id as u64 + 1),
        }
    }

    async fn connect(&mut self, ctx: &Ctx) -> Result<(), ErrorKind> {
        let deadline = mono(Instant::now() + ctx.timeout);
        match timeout_at(deadline, TcpStream::connect_addr(ctx.addr)).await {
            Ok(Ok(stream)) => {
                // Small requests must not wait for Nagle; failing to set it is harmless.
                let _ = stream.set_nodelay(true);
                self.guard.fd.set(stream.as_raw_fd());
                self.guard.fired.set(false);
                self.stream = Some(stream);
                self.rbuf.clear();
                Ok(())
            }
            Ok(Err(_)) | Err(_) => Err(ErrorKind::Connect),
        }
    }

    fn drop_stream(&mut self) {
        self.guard.fd.set(-1);
        self.guard.deadline.set(None);
        self.stream = None;
        self.rbuf.clear();
    }

    /// Copies `n` picked requests into the reused write buffer.
    fn fill_batch(&mut self, mix: &Mix, n: usize) {
        if self.reusable == n {
            return;
        }
        self.reusable = if mix.requests.len() == 1 { n } else { 0 };
        self.wbuf.clear();
        self.heads.clear();
        for _ in 0..n {
            let req = &mix.requests[mix.pick(&mut self.rng)];
            self.wbuf.extend_from_slice(&req.bytes);
            self.heads.push(req.is_head);
        }
    }

    async fn send(&mut self, deadline: Instant) -> Result<(), ErrorKind> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(ErrorKind::Write);
        };
        self.guard.deadline.set(Some(deadline));
        let buf = std::mem::take(&mut self.wbuf);
        let (res, buf) = stream.write_all(buf).await;
        self.wbuf = buf;
        match res {
            Ok(_) => Ok(()),
            Err(_) => Err(self.failed(ErrorKind::Write)),
        }
    }

    /// The kind to count for a failed read or write: a timeout if the watchdog caused it.
    fn failed(&self, kind: ErrorKind) -> ErrorKind {
        if self.guard.fired.get() {
            ErrorKind::Timeout
        } else {
            kind
        }
    }

    /// The exchange is over: the watchdog must not fire on an idle connection.
    fn done(&self) {
        self.guard.deadline.set(None);
    }

    /// Reads more bytes into `rbuf`; `Ok(0)` is end of stream. The deadline set by `send`
    /// still stands (the watchdog enforces it).
    async fn fill(&mut self) -> Result<usize, ErrorKind> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(ErrorKind::Read);
        };
        let mut buf = std::mem::take(&mut self.rbuf);
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        // monoio reads from the buffer's start; slicing past the data makes the read append.
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = stream.read(buf.slice_mut(len..cap)).await;
        self.rbuf = slice.into_inner();
        match res {
            Ok(n) if n > 0 || !self.guard.fired.get() => Ok(n),
            Ok(_) | Err(_) => Err(self.failed(ErrorKind::Read)),
        }
    }

    async fn read_response(&mut self, is_head: bool) -> Result<Response, ErrorKind> {
        let mut bytes = 0u64;
        let head = loop {
            match http::parse_response_head(&self.rbuf, is_head) {
                Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                    // Interim responses (100 Continue) precede the real one.
                    bytes += h.head_len as u64;
                    self.rbuf.advance(h.head_len);
                    continue;
                }
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(_) => return Err(ErrorKind::Read),
            }
            if self.fill().await? == 0 {
                return Err(ErrorKind::Read);
            }
        };
        bytes += head.head_len as u64;
        self.rbuf.advance(head.head_len);
        let mut body = head.body;
        loop {
            let (used, done) = body.consume(&self.rbuf).map_err(|_| ErrorKind::Read)?;
            self.rbuf.advance(used);
            bytes += used as u64;
            if done {
                break;
            }
            if self.fill().await? == 0 {
                if body == Body::UntilClose {
                    break;
                }
                return Err(ErrorKind::Read);
            }
        }
        Ok(Response {
            status: head.status,
            bytes,
            close: head.close,
        })
    }
}

/// wrk's discipline: write `pipeline` requests, read as many responses, repeat until the end.
pub async fn closed_loop(ctx: Rc<Ctx>, id: usize, guard: Rc<Guard>) {
    let mut c = Conn::new(id, ctx.pipeline, guard);
    loop {
        // Also the send time: nothing that takes time happens between here and the write.
        let mut sent = Instant::now();
        if sent >= ctx.end {
            break;
        }
        if c.stream.is_none() {
            if let Err(kind) = c.connect(&ctx).await {
                ctx.error(kind, sent, 1);
                sleep(CONNECT_BACKOFF.min(ctx.end.saturating_duration_since(Instant::now()))).await;
                continue;
            }
            sent = Instant::now();
        }
        c.fill_batch(&ctx.mix, ctx.pipeline);
        let deadline = sent + ctx.timeout;
        if let Err(kind) = c.send(deadline).await {
            ctx.error(kind, sent, c.heads.len() as u64);
            c.drop_stream();
            continue;
        }
        for i in 0..c.heads.len() {
            match c.read_response(c.heads[i]).await {
                Ok(r) => {
                    ctx.record(sent, sent, Instant::now(), r.status, r.bytes);
                    if r.close {
                        // Requests pipelined behind a closing response will never be answered.
                        ctx.error(ErrorKind::Read, sent, (c.heads.len() - i - 1) as u64);
                        c.drop_stream();
                        break;
                    }
                }
                Err(kind) => {
                    ctx.error(kind, sent, 1);
                    ctx.error(ErrorKind::Read, sent, (c.heads.len() - i - 1) as u64);
                    c.drop_stream();
                    break;
                }
            }
        }
        c.done();
        if !ctx.keepalive {
            c.drop_stream();
        }
    }
}

/// wrk2's discipline: request k of connection `id` is due at start + (id + k*connections)/rate,
/// one in flight per connection, and latency counts from that due time so a stalled server
/// cannot hide its backlog (coordinated omission). The wait is the thread's timerfd pacer, so a
/// send leaves within microseconds of its due time; `slot` is this connection's pacer slot.
pub async fn open_loop(ctx: Rc<Ctx>, id: usize, guard: Rc<Guard>, pacer: Rc<Pacer>, slot: usize) {
    let Some(rate) = ctx.rate else { return };
    let mut c = Conn::new(id, 1, guard);
    let mut k: u64 = 0;
    loop {
        let offset = (id as f64 + k as f64 * ctx.connections as f64) / rate;
        let intended = ctx.start + Duration::from_secs_f64(offset);
        k += 1;
        let now = Instant::now();
        if intended >= ctx.end || now >= ctx.end {
            break;
        }
        // A connection still busy past its due time is late because of the server, not the
        // schedule; only sends that waited count toward the schedule error.
        let on_time = now < intended;
        if on_time {
            pacer.wait(slot, intended).await;
        }
        if c.stream.is_none() {
            if let Err(kind) = c.connect(&ctx).await {
                ctx.error(kind, intended, 1);
                continue;
            }
        }
        c.fill_batch(&ctx.mix, 1);
        let sent = Instant::now();
        ctx.scheduled(intended, sent, on_time);
        let deadline = sent + ctx.timeout;
        let result = match c.send(deadline).await {
            Ok(()) => c.read_response(c.heads[0]).await,
            Err(kind) => Err(kind),
        };
        c.done();
        match result {
            Ok(r) => {
                ctx.record(intended, sent, Instant::now(), r.status, r.bytes);
                if r.close || !ctx.keepalive {
                    c.drop_stream();
                }
            }
            Err(kind) => {
                ctx.error(kind, intended, 1);
                c.drop_stream();
            }
        }
    }
}
