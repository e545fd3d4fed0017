//! One benchmark connection: connect, write prebuilt requests, read and frame responses, and
//! the closed-loop and open-loop send disciplines. Must not spawn threads or print anything.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::{sleep, sleep_until, timeout_at};

use crate::hist::{ErrorKind, Stats};
use crate::http::{self, Body};
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
    pub connections: usize,
    pub stats: RefCell<Stats>,
    pub live: Arc<Live>,
}

impl Ctx {
    /// Work begun before the measurement window (warmup) is performed but not counted.
    fn record(&self, intended: Instant, sent: Instant, done: Instant, status: u16, bytes: u64) {
        if intended < self.measure_start {
            return;
        }
        self.stats
            .borrow_mut()
            .record(intended, sent, done, status, bytes);
        self.live.requests.fetch_add(1, Ordering::Relaxed);
        if !(200..400).contains(&status) {
            self.live.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn error(&self, kind: ErrorKind, began: Instant, n: u64) {
        if began < self.measure_start || n == 0 {
            return;
        }
        self.stats.borrow_mut().error(kind, n);
        self.live.errors.fetch_add(n, Ordering::Relaxed);
    }
}

struct Response {
    status: u16,
    bytes: u64,
    close: bool,
}

pub struct Conn {
    stream: Option<TcpStream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Whether each request of the current batch is a HEAD, so its response is framed right.
    heads: Vec<bool>,
    rng: Rng,
}

impl Conn {
    pub fn new(id: usize, pipeline: usize) -> Conn {
        Conn {
            stream: None,
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
                self.stream = Some(stream);
                self.rbuf.clear();
                Ok(())
            }
            Ok(Err(_)) | Err(_) => Err(ErrorKind::Connect),
        }
    }

    fn drop_stream(&mut self) {
        self.stream = None;
        self.rbuf.clear();
    }

    /// Copies `n` picked requests into the reused write buffer.
    fn fill_batch(&mut self, mix: &Mix, n: usize) {
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
        let buf = std::mem::take(&mut self.wbuf);
        match timeout_at(mono(deadline), stream.write_all(buf)).await {
            Ok((res, buf)) => {
                self.wbuf = buf;
                res.map(|_| ()).map_err(|_| ErrorKind::Write)
            }
            // The buffer went down with the cancelled write; a fresh one is made next batch.
            Err(_) => Err(ErrorKind::Timeout),
        }
    }

    /// Reads more bytes into `rbuf`; `Ok(0)` is end of stream.
    async fn fill(&mut self, deadline: Instant) -> Result<usize, ErrorKind> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(ErrorKind::Read);
        };
        let mut buf = std::mem::take(&mut self.rbuf);
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        // monoio reads from the buffer's start; slicing past the data makes the read append.
        let (len, cap) = (buf.len(), buf.capacity());
        match timeout_at(mono(deadline), stream.read(buf.slice_mut(len..cap))).await {
            Ok((res, slice)) => {
                self.rbuf = slice.into_inner();
                res.map_err(|_| ErrorKind::Read)
            }
            Err(_) => Err(ErrorKind::Timeout),
        }
    }

    async fn read_response(
        &mut self,
        is_head: bool,
        deadline: Instant,
    ) -> Result<Response, ErrorKind> {
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
            if self.fill(deadline).await? == 0 {
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
            if self.fill(deadline).await? == 0 {
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
pub async fn closed_loop(ctx: std::rc::Rc<Ctx>, id: usize) {
    let mut c = Conn::new(id, ctx.pipeline);
    loop {
        let now = Instant::now();
        if now >= ctx.end {
            break;
        }
        if c.stream.is_none() {
            if let Err(kind) = c.connect(&ctx).await {
                ctx.error(kind, now, 1);
                sleep(CONNECT_BACKOFF.min(ctx.end.saturating_duration_since(Instant::now()))).await;
                continue;
            }
        }
        c.fill_batch(&ctx.mix, ctx.pipeline);
        let sent = Instant::now();
        let deadline = sent + ctx.timeout;
        if let Err(kind) = c.send(deadline).await {
            ctx.error(kind, sent, c.heads.len() as u64);
            c.drop_stream();
            continue;
        }
        for i in 0..c.heads.len() {
            match c.read_response(c.heads[i], deadline).await {
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
        if !ctx.keepalive {
            c.drop_stream();
        }
    }
}

/// wrk2's discipline: request k of connection `id` is due at start + (id + k*connections)/rate,
/// one in flight per connection, and latency counts from that due time so a stalled server
/// cannot hide its backlog (coordinated omission).
pub async fn open_loop(ctx: std::rc::Rc<Ctx>, id: usize) {
    let Some(rate) = ctx.rate else { return };
    let mut c = Conn::new(id, 1);
    let mut k: u64 = 0;
    loop {
        let offset = (id as f64 + k as f64 * ctx.connections as f64) / rate;
        let intended = ctx.start + Duration::from_secs_f64(offset);
        k += 1;
        if intended >= ctx.end || Instant::now() >= ctx.end {
            break;
        }
        if Instant::now() < intended {
            sleep_until(mono(intended)).await;
        }
        if c.stream.is_none() {
            if let Err(kind) = c.connect(&ctx).await {
                ctx.error(kind, intended, 1);
                continue;
            }
        }
        c.fill_batch(&ctx.mix, 1);
        let sent = Instant::now();
        let deadline = sent + ctx.timeout;
        let result = match c.send(deadline).await {
            Ok(()) => c.read_response(c.heads[0], deadline).await,
            Err(kind) => Err(kind),
        };
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
