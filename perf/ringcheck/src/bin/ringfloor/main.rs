//! The kernel floor of a proxied keep-alive small GET: a hand-written io_uring forwarder (client
//! recv, upstream send, upstream recv, client send per request) with the ring levers a monoio fork
//! could reach, each switchable. No HTTP beyond a request's blank line and a response length
//! learnt once from the upstream; no gateway code. Must not be used for anything but measuring.
//!
//! Usage: `ringfloor UPSTREAM LEVERS` (UPSTREAM host:port; LEVERS `base` or a comma list of
//! `peek` recv(MSG_PEEK) on the upstream socket per request, as ringway's pool does;
//! `multishot` one multishot recv per socket over a provided-buffer ring, sends straight from the
//! provided buffer; `link` upstream send IO_LINKed to the upstream recv; `linkc` client send linked
//! to the next client recv; `pollfirst` IORING_RECVSEND_POLL_FIRST on every recv that waits;
//! `fixed` registered (fixed) files; `defer` DEFER_TASKRUN on top of the shard's flags).
//! The ring is set up as a shard's (COOP_TASKRUN + TASKRUN_FLAG + SINGLE_ISSUER, 1024 entries).
//! Prints `ringfloor listening on ADDR`, then after each burst of connections has closed
//! `ringfloor run: requests R enters E cqes C peeks P` (counts since the previous such line).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

mod ring;
use ring::{poll_first, BufRing, BGID};

const OP_ACCEPT: u64 = 0;
const OP_CRECV: u64 = 1;
const OP_USEND: u64 = 2;
const OP_URECV: u64 = 3;
const OP_CSEND: u64 = 4;
const MAX_CONNS: usize = 4096;

#[derive(Default, Clone, Copy)]
struct Levers {
    peek: bool,
    multishot: bool,
    link: bool,
    linkc: bool,
    pollfirst: bool,
    fixed: bool,
    defer: bool,
}

impl Levers {
    fn parse(s: &str) -> Result<Levers, String> {
        let mut l = Levers::default();
        for w in s.split(',').filter(|w| !w.is_empty() && *w != "base") {
            match w {
                "peek" => l.peek = true,
                "multishot" => l.multishot = true,
                "link" => l.link = true,
                "linkc" => l.linkc = true,
                "pollfirst" => l.pollfirst = true,
                "fixed" => l.fixed = true,
                "defer" => l.defer = true,
                _ => return Err(format!("unknown lever {w:?}")),
            }
        }
        if l.multishot && (l.link || l.linkc) {
            return Err("multishot keeps every recv armed: nothing to link".into());
        }
        Ok(l)
    }
}

/// Where the message being sent lives: the connection's own buffer, or a provided buffer that
/// goes back to the ring once the send is done.
#[derive(Clone, Copy)]
enum Out {
    Own,
    Provided(u16),
}

struct Conn {
    cfd: RawFd,
    ufd: RawFd,
    gen: u16,
    live: bool,
    /// The request as received (its bytes `..qhave`), then sent upstream from `..qlen`.
    qbuf: Box<[u8]>,
    qhave: usize,
    /// The response as received (`..rhave`).
    rbuf: Box<[u8]>,
    rhave: usize,
    /// The message being sent: its start, length, how much went, and where it lives.
    out_ptr: *const u8,
    out_len: usize,
    out_sent: usize,
    out: Out,
}

fn ud(slot: usize, gen: u16, op: u64) -> u64 {
    (slot as u64) << 32 | (gen as u64) << 16 | op
}

/// Builds `$build` with `$fd` the connection's socket (`$up`: the upstream one), as a registered
/// file index when the `fixed` lever is on.
macro_rules! on_fd {
    ($self:ident, $slot:expr, $up:expr, |$fd:ident| $build:expr) => {
        if $self.lv.fixed {
            let $fd = types::Fixed((2 * $slot + $up as usize) as u32);
            $build
        } else {
            let c = &$self.conns[$slot];
            let $fd = types::Fd(if $up { c.ufd } else { c.cfd });
            $build
        }
    };
}

#[derive(Default)]
struct Stats {
    requests: u64,
    enters: u64,
    cqes: u64,
    peeks: u64,
}

struct Fwd {
    ring: IoUring,
    lv: Levers,
    listen: RawFd,
    upstream: String,
    resp_len: usize,
    conns: Vec<Conn>,
    free: Vec<usize>,
    live: usize,
    bufs: Option<BufRing>,
    stats: Stats,
}

impl Fwd {
    fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: every entry points into a connection's boxed buffers or the provided
            // buffers, which neither move nor are freed while an op on them is in flight.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            self.stats.enters += 1;
            self.ring.submit().expect("submit with a full SQ");
        }
    }

    fn accept(&mut self) {
        let e = opcode::Accept::new(
            types::Fd(self.listen),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        self.push(e.build().user_data(OP_ACCEPT));
    }

    /// A recv into the connection's own buffer past what it holds; `waits`: nothing is expected
    /// to be there yet (what poll-first is for).
    fn recv(&mut self, slot: usize, up: bool, waits: bool) {
        let c = &mut self.conns[slot];
        let (buf, have) = if up {
            (&mut c.rbuf, c.rhave)
        } else {
            (&mut c.qbuf, c.qhave)
        };
        let (p, n) = (buf[have..].as_mut_ptr(), (buf.len() - have) as u32);
        let gen = c.gen;
        let e = on_fd!(self, slot, up, |fd| opcode::Recv::new(fd, p, n).build());
        let e = if waits && self.lv.pollfirst {
            poll_first(e)
        } else {
            e
        };
        let op = if up { OP_URECV } else { OP_CRECV };
        self.push(e.user_data(ud(slot, gen, op)));
    }

    fn recv_multi(&mut self, slot: usize, up: bool) {
        let gen = self.conns[slot].gen;
        let e = on_fd!(self, slot, up, |fd| opcode::RecvMulti::new(fd, BGID)
            .build());
        let op = if up { OP_URECV } else { OP_CRECV };
        self.push(e.user_data(ud(slot, gen, op)));
    }

    /// Sends the rest of the connection's outgoing message to the upstream (`up`) or the client,
    /// with the recv that follows it linked when the lever for that side is on.
    fn send(&mut self, slot: usize, up: bool) {
        let c = &self.conns[slot];
        // SAFETY: `out_sent < out_len` and `out_ptr` points at `out_len` bytes.
        let p = unsafe { c.out_ptr.add(c.out_sent) };
        let n = (c.out_len - c.out_sent) as u32;
        let gen = c.gen;
        let link = if up { self.lv.link } else { self.lv.linkc };
        let e = on_fd!(self, slot, up, |fd| opcode::Send::new(fd, p, n).build());
        let e = e.user_data(ud(slot, gen, if up { OP_USEND } else { OP_CSEND }));
        if link {
            self.push(e.flags(squeue::Flags::IO_LINK));
            // The recv that follows: the response on the upstream, the next request on the
            // client; nothing is there yet when the send completes.
            self.recv(slot, up, true);
        } else {
            self.push(e);
        }
    }

    fn on_accept(&mut self, res: i32) {
        self.accept();
        if res < 0 {
            eprintln!("accept: {}", std::io::Error::from_raw_os_error(-res));
            return;
        }
        let cfd = res;
        let ufd = match TcpStream::connect(&self.upstream) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                s.into_raw_fd()
            }
            Err(e) => {
                eprintln!("connect {}: {e}", self.upstream);
                // SAFETY: `cfd` is the accepted socket, ours to close.
                unsafe { libc::close(cfd) };
                return;
            }
        };
        set_nodelay(cfd);
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.conns.len() < MAX_CONNS => {
                self.conns.push(Conn {
                    cfd: -1,
                    ufd: -1,
                    gen: 0,
                    live: false,
                    qbuf: vec![0; 8192].into_boxed_slice(),
                    qhave: 0,
                    rbuf: vec![0; self.resp_len.max(4096)].into_boxed_slice(),
                    rhave: 0,
                    out_ptr: std::ptr::null(),
                    out_len: 0,
                    out_sent: 0,
                    out: Out::Own,
                });
                self.conns.len() - 1
            }
            None => {
                eprintln!("more than {MAX_CONNS} connections");
                // SAFETY: both sockets are ours to close.
                unsafe { (libc::close(cfd), libc::close(ufd)) };
                return;
            }
        };
        let c = &mut self.conns[slot];
        (c.cfd, c.ufd, c.live, c.qhave, c.rhave, c.out) = (cfd, ufd, true, 0, 0, Out::Own);
        if self.lv.fixed {
            self.ring
                .submitter()
                .register_files_update(2 * slot as u32, &[cfd, ufd])
                .expect("register files");
        }
        self.live += 1;
        if self.lv.multishot {
            self.recv_multi(slot, false);
            self.recv_multi(slot, true);
        } else {
            self.recv(slot, false, true);
        }
    }

    fn close(&mut self, slot: usize, why: i32) {
        if why < 0 && why != -libc::ECONNRESET {
            eprintln!("closing: {}", std::io::Error::from_raw_os_error(-why));
        }
        let c = &mut self.conns[slot];
        let out = std::mem::replace(&mut c.out, Out::Own);
        c.live = false;
        c.gen = c.gen.wrapping_add(1);
        let (cfd, ufd) = (c.cfd, c.ufd);
        // SAFETY: both sockets are ours; shutting them down ends an armed multishot recv
        // (its last completion carries the old generation and is ignored).
        unsafe {
            libc::shutdown(cfd, libc::SHUT_RDWR);
            libc::shutdown(ufd, libc::SHUT_RDWR);
            libc::close(cfd);
            libc::close(ufd);
        }
        if let (Out::Provided(bid), Some(b)) = (out, self.bufs.as_mut()) {
            b.give(bid);
        }
        if self.lv.fixed {
            self.ring
                .submitter()
                .register_files_update(2 * slot as u32, &[-1, -1])
                .expect("unregister files");
        }
        self.free.push(slot);
        self.live -= 1;
        if self.live == 0 {
            let s = std::mem::take(&mut self.stats);
            println!(
                "ringfloor run: requests {} enters {} cqes {} peeks {}",
                s.requests, s.enters, s.cqes, s.peeks
            );
        }
    }

    /// A whole message is in `out_*`: the request goes upstream, the response to the client.
    fn forward(&mut self, slot: usize, up: bool) {
        let c = &mut self.conns[slot];
        c.out_sent = 0;
        if up {
            c.rhave = 0;
            self.send(slot, false);
            return;
        }
        c.qhave = 0;
        if self.lv.peek {
            self.stats.peeks += 1;
            let mut x = 0u8;
            // SAFETY: `ufd` is an open socket; recv writes at most 1 byte into `x`.
            let r = unsafe {
                libc::recv(
                    c.ufd,
                    (&mut x as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if r >= 0 {
                return self.close(slot, -libc::EPROTO);
            }
        }
        self.send(slot, true);
    }

    fn on_recv(&mut self, slot: usize, up: bool, res: i32, flags: u32) {
        if !self.lv.multishot {
            if res == -libc::ECANCELED && (if up { self.lv.link } else { self.lv.linkc }) {
                return; // the linked send before it was short; `on_send` sends the rest
            }
            if res <= 0 {
                return self.close(slot, res);
            }
            let c = &mut self.conns[slot];
            let have = if up { &mut c.rhave } else { &mut c.qhave };
            *have += res as usize;
            let n = *have;
            let buf = if up { &c.rbuf } else { &c.qbuf };
            let (p, len) = (buf.as_ptr(), n);
            match whole(up, self.resp_len, &buf[..n]) {
                Ok(true) => {
                    let c = &mut self.conns[slot];
                    (c.out_ptr, c.out_len, c.out) = (p, len, Out::Own);
                    self.forward(slot, up)
                }
                Ok(false) if n < buf.len() => self.recv(slot, up, false),
                Ok(false) => self.close(slot, -libc::EMSGSIZE),
                Err(e) => self.close(slot, e),
            }
            return;
        }
        if res == -libc::ENOBUFS {
            eprintln!("provided buffers ran out; re-arming");
            return self.recv_multi(slot, up);
        }
        if res <= 0 {
            return self.close(slot, res);
        }
        let Some(bid) = cqueue::buffer_select(flags) else {
            return self.close(slot, -libc::EINVAL);
        };
        if !cqueue::more(flags) {
            self.recv_multi(slot, up);
        }
        let bufs = self.bufs.as_mut().expect("multishot has a buffer ring");
        let data = bufs.ptr(bid);
        // SAFETY: the kernel wrote `res` bytes into buffer `bid`, which is ours until given back.
        let bytes = unsafe { std::slice::from_raw_parts(data, res as usize) };
        let c = &self.conns[slot];
        let have = if up { c.rhave } else { c.qhave };
        if have == 0 && whole(up, self.resp_len, bytes) == Ok(true) {
            // Sent straight from the provided buffer, given back once the send is done.
            let c = &mut self.conns[slot];
            (c.out_ptr, c.out_len, c.out) = (data, bytes.len(), Out::Provided(bid));
            return self.forward(slot, up);
        }
        // Split across completions: gather in the connection's own buffer.
        let c = &mut self.conns[slot];
        let buf = if up { &mut c.rbuf } else { &mut c.qbuf };
        if have + bytes.len() > buf.len() {
            bufs.give(bid);
            return self.close(slot, -libc::EMSGSIZE);
        }
        buf[have..have + bytes.len()].copy_from_slice(bytes);
        bufs.give(bid);
        let n = have + bytes.len();
        let p = buf.as_ptr();
        if up {
            c.rhave = n
        } else {
            c.qhave = n
        }
        let buf = if up { &c.rbuf } else { &c.qbuf };
        match whole(up, self.resp_len, &buf[..n]) {
            Ok(true) => {
                let c = &mut self.conns[slot];
                (c.out_ptr, c.out_len, c.out) = (p, n, Out::Own);
                self.forward(slot, up)
            }
            Ok(false) => {}
            Err(e) => self.close(slot, e),
        }
    }

    fn on_send(&mut self, slot: usize, up: bool, res: i32) {
        if res < 0 {
            return self.close(slot, res);
        }
        let c = &mut self.conns[slot];
        c.out_sent += res as usize;
        if c.out_sent < c.out_len {
            return self.send(slot, up);
        }
        if let Out::Provided(bid) = std::mem::replace(&mut c.out, Out::Own) {
            self.bufs.as_mut().expect("buffer ring").give(bid);
        }
        if !up {
            self.stats.requests += 1;
        }
        let linked = if up { self.lv.link } else { self.lv.linkc };
        if !self.lv.multishot && !linked {
            self.recv(slot, up, true);
        }
    }

    fn on_cqe(&mut self, user_data: u64, res: i32, flags: u32) {
        let op = user_data & 0xff;
        if op == OP_ACCEPT {
            return self.on_accept(res);
        }
        let slot = (user_data >> 32) as usize;
        let c = &self.conns[slot];
        if !c.live || c.gen != (user_data >> 16) as u16 {
            // A completion of a connection closed since (its armed recv ending).
            if let (Some(bid), Some(b)) = (cqueue::buffer_select(flags), self.bufs.as_mut()) {
                b.give(bid);
            }
            return;
        }
        match op {
            OP_CRECV | OP_URECV => self.on_recv(slot, op == OP_URECV, res, flags),
            _ => self.on_send(slot, op == OP_USEND, res),
        }
    }

    fn run(&mut self) -> std::io::Result<()> {
        self.accept();
        let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            self.stats.enters += 1;
            done.extend(
                self.ring
                    .completion()
                    .map(|e| (e.user_data(), e.result(), e.flags())),
            );
            self.stats.cqes += done.len() as u64;
            for (u, r, f) in done.drain(..) {
                self.on_cqe(u, r, f);
            }
        }
    }
}

/// The message in `bytes` is whole: a request ends with its blank line (a GET has no body), a
/// response (`up`) is `resp_len` bytes. Err: more than a response.
fn whole(up: bool, resp_len: usize, bytes: &[u8]) -> Result<bool, i32> {
    if !up {
        return Ok(bytes.ends_with(b"\r\n\r\n"));
    }
    match bytes.len().cmp(&resp_len) {
        std::cmp::Ordering::Less => Ok(false),
        std::cmp::Ordering::Equal => Ok(true),
        std::cmp::Ordering::Greater => Err(-libc::EPROTO),
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is an open TCP socket; the option value is a c_int that outlives the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// The upstream's response length, from one GET: head up to the blank line plus Content-Length.
fn probe(upstream: &str) -> Result<usize, String> {
    let mut s = TcpStream::connect(upstream).map_err(|e| format!("connect {upstream}: {e}"))?;
    s.write_all(b"GET /s/x HTTP/1.1\r\nHost: ringfloor\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = s.read(&mut tmp).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("upstream closed before a whole response".into());
        }
        got.extend_from_slice(&tmp[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let cl = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or("response without a Content-Length")?;
        if got.len() >= end + 4 + cl {
            return Ok(end + 4 + cl);
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(upstream), levers) = (args.next(), args.next().unwrap_or_default()) else {
        eprintln!("usage: ringfloor UPSTREAM [base|LEVER,LEVER...]");
        std::process::exit(2);
    };
    let lv = Levers::parse(&levers).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let resp_len = probe(&upstream).unwrap_or_else(|e| {
        eprintln!("probing {upstream}: {e}");
        std::process::exit(1)
    });
    let mut b = IoUring::builder();
    b.setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_single_issuer();
    if lv.defer {
        b.setup_defer_taskrun();
    }
    let ring: IoUring = b.build(1024).expect("io_uring setup");
    if lv.fixed {
        ring.submitter()
            .register_files_sparse(2 * MAX_CONNS as u32)
            .expect("sparse file table");
    }
    let bufs = lv
        .multishot
        .then(|| BufRing::new(&ring).expect("provided-buffer ring"));
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!(
        "ringfloor listening on {} (levers {levers:?}, response {resp_len} bytes)",
        l.local_addr().expect("local addr")
    );
    let listen = l.as_raw_fd();
    let mut f = Fwd {
        ring,
        lv,
        listen,
        upstream,
        resp_len,
        conns: Vec::new(),
        free: Vec::new(),
        live: 0,
        bufs,
        stats: Stats::default(),
    };
    if let Err(e) = f.run() {
        eprintln!("ring: {e}");
        std::process::exit(1);
    }
    drop(l);
}
