//! `ringway-bench serve`: a minimal thread-per-core static HTTP/1.1 server (SO_REUSEPORT listener
//! per thread, keep-alive, pipelining, microsecond --delay, stall, counter). Must not measure.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::args::ServeConfig;
use crate::http;
use crate::pacer::Pacer;

#[repr(align(128))]
#[derive(Default)]
struct Counter(AtomicU64);

struct Shared {
    /// One counter per thread so counting never bounces a cache line between cores.
    counts: Vec<Counter>,
    /// Global arrival order, only consulted when a one-off stall is configured.
    seq: AtomicU64,
    keepalive_resp: Vec<u8>,
    close_resp: Vec<u8>,
    /// Length of the head part of each response, for answering HEAD without a body.
    keepalive_head: usize,
    close_head: usize,
    delay: Option<Duration>,
    spin: Duration,
    stall_once_after: Option<u64>,
    stall: Duration,
}

impl Shared {
    fn total(&self) -> u64 {
        self.counts
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn prebuild(status: u16, body_size: usize, close: bool) -> (Vec<u8>, usize) {
    let body_size = if status == 204 || status == 304 {
        0
    } else {
        body_size
    };
    let conn = if close { "Connection: close\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {body_size}\r\nContent-Type: text/plain\r\n{conn}\r\n",
        reason(status)
    )
    .into_bytes();
    let head = out.len();
    out.extend((0..body_size).map(|i| b"abcdefghijklmnopqrstuvwxyz"[i % 26]));
    (out, head)
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let domain = socket2::Domain::for_address(addr);
    let fail = |e: std::io::Error| format!("cannot listen on {addr}: {e}");
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(fail)?;
    sock.set_reuse_port(true).map_err(fail)?;
    sock.set_reuse_address(true).map_err(fail)?;
    // monoio's epoll fallback needs non-blocking fds; io_uring does not mind either way.
    sock.set_nonblocking(true).map_err(fail)?;
    sock.bind(&addr.into()).map_err(fail)?;
    sock.listen(4096).map_err(fail)?;
    Ok(sock.into())
}

pub fn run(cfg: ServeConfig) -> Result<(), String> {
    // Registered before any thread starts so an early SIGTERM still prints the count.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("signals: {e}"))?;
    let first = bind(cfg.listen)?;
    let addr = first.local_addr().map_err(|e| format!("local_addr: {e}"))?;
    // Port 0 resolves on the first bind; the other threads join that exact port.
    let mut listeners = vec![first];
    for _ in 1..cfg.threads {
        listeners.push(bind(addr)?);
    }
    let (keepalive_resp, keepalive_head) = prebuild(cfg.status, cfg.body_size, false);
    let (close_resp, close_head) = prebuild(cfg.status, cfg.body_size, true);
    let shared = Arc::new(Shared {
        counts: (0..cfg.threads).map(|_| Counter::default()).collect(),
        seq: AtomicU64::new(0),
        keepalive_resp,
        close_resp,
        keepalive_head,
        close_head,
        delay: cfg.delay,
        spin: cfg.spin,
        stall_once_after: cfg.stall_once_after,
        stall: cfg.stall,
    });
    for (t, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let cpus = cfg.cpus.clone();
        std::thread::Builder::new()
            .name(format!("serve-{t}"))
            .spawn(move || {
                crate::runtime::pin_current(t, &cpus);
                let outcome =
                    crate::runtime::block_on(|| accept_loop(listener, shared, t)).and_then(|r| r);
                if let Err(e) = outcome {
                    eprintln!("ringway-bench: error: {e}");
                    std::process::exit(1);
                }
            })
            .map_err(|e| format!("cannot spawn server thread: {e}"))?;
    }
    eprintln!("listening on {addr}");
    let _ = signals.forever().next();
    crate::print_stdout(&format!("requests={}", shared.total()));
    Ok(())
}

async fn accept_loop(
    std_listener: std::net::TcpListener,
    shared: Arc<Shared>,
    t: usize,
) -> Result<(), String> {
    let listener = TcpListener::from_std(std_listener).map_err(|e| format!("listener: {e}"))?;
    // --delay is kept to the microsecond by the same timerfd pacer the open loop uses.
    let pacer = Pacer::new(0, crate::runtime::on_uring(), shared.spin)?;
    if shared.delay.is_some() {
        crate::pacer::tighten_timer_slack();
        monoio::spawn(pacer.clone().run());
    }
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                monoio::spawn(serve_conn(stream, shared.clone(), t, pacer.clone()));
            }
            // Typically EMFILE under a connection storm: back off instead of spinning.
            Err(_) => monoio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn serve_conn(stream: TcpStream, shared: Arc<Shared>, t: usize, pacer: Rc<Pacer>) {
    let slot = pacer.alloc_slot();
    serve_requests(stream, &shared, t, &pacer, slot).await;
    // Every wait above completed before it returned, so no stale due time names this slot.
    pacer.free_slot(slot);
}

async fn serve_requests(
    mut stream: TcpStream,
    shared: &Shared,
    t: usize,
    pacer: &Pacer,
    slot: usize,
) {
    let mut rbuf = BytesMut::with_capacity(8192);
    let mut wbuf = BytesMut::with_capacity(8192);
    let mut pending: Option<http::RequestHead> = None;
    // When the bytes being answered arrived: --delay counts from here.
    let mut read_at = Instant::now();
    loop {
        let mut close = false;
        let mut stall = false;
        loop {
            if let Some(req) = &mut pending {
                let Ok((used, done)) = req.body.consume(&rbuf) else {
                    wbuf.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    close = true;
                    break;
                };
                rbuf.advance(used);
                if !done {
                    break;
                }
                let Some(req) = pending.take() else { break };
                stall |= respond(shared, t, &req, &mut wbuf);
                if req.close {
                    close = true;
                    break;
                }
                continue;
            }
            match http::parse_request_head(&rbuf) {
                Ok(Some(head)) => {
                    rbuf.advance(head.head_len);
                    pending = Some(head);
                }
                Ok(None) => break,
                Err(_) => {
                    wbuf.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    close = true;
                    break;
                }
            }
        }
        if !wbuf.is_empty() {
            if let Some(d) = shared.delay {
                pacer.wait(slot, read_at + d).await;
            }
            if stall {
                monoio::time::sleep(shared.stall).await;
            }
            let (res, buf) = stream.write_all(wbuf).await;
            wbuf = buf;
            wbuf.clear();
            if res.is_err() {
                return;
            }
        }
        if close {
            return;
        }
        if rbuf.capacity() - rbuf.len() < 2048 {
            rbuf.reserve(8192);
        }
        // monoio reads from the buffer's start; slicing past the data makes the read append.
        let (len, cap) = (rbuf.len(), rbuf.capacity());
        let (res, slice) = stream.read(rbuf.slice_mut(len..cap)).await;
        rbuf = slice.into_inner();
        if shared.delay.is_some() {
            read_at = Instant::now();
        }
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Appends the response for one complete request; returns whether this is the one to stall.
fn respond(shared: &Shared, t: usize, req: &http::RequestHead, wbuf: &mut BytesMut) -> bool {
    if req.path_is_count {
        // Not counted itself, so a test can ask for the tally without disturbing it.
        let body = shared.total().to_string();
        let conn = if req.close {
            "Connection: close\r\n"
        } else {
            ""
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{conn}\r\n",
            body.len()
        );
        wbuf.extend_from_slice(head.as_bytes());
        if !req.is_head {
            wbuf.extend_from_slice(body.as_bytes());
        }
        return false;
    }
    if let Some(c) = shared.counts.get(t) {
        c.0.fetch_add(1, Ordering::Relaxed);
    }
    let stall = match shared.stall_once_after {
        Some(n) => shared.seq.fetch_add(1, Ordering::Relaxed) + 1 == n,
        None => false,
    };
    let (resp, head) = if req.close {
        (&shared.close_resp, shared.close_head)
    } else {
        (&shared.keepalive_resp, shared.keepalive_head)
    };
    wbuf.extend_from_slice(if req.is_head { &resp[..head] } else { resp });
    stall
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prebuilt_response_parses() {
        let (resp, head) = prebuild(500, 10, true);
        let h = http::parse_response_head(&resp, false)
            .expect("parse")
            .expect("complete");
        assert_eq!((h.status, h.head_len, h.close), (500, head, true));
        assert_eq!(resp.len() - head, 10);
    }
}
