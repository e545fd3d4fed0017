//! Owns the scripted HTTP/1.1 origin: what it records (`Req`), what it answers (`Resp`, `Reply`),
//! the `Origin` handle, its accept loop. Must not be the gateway's client; serving: origin_serve.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::origin_serve::serve_conn;
use super::wait_until;
use super::wire::{find_header, find_headers};

/// One request as received by an origin.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    /// Raw request head including the final CRLFCRLF.
    pub raw_head: Vec<u8>,
    /// Decoded body (empty if the origin was told not to keep bodies).
    pub body: Vec<u8>,
    pub body_len: u64,
    pub body_hash: u64,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        find_headers(&self.headers, name)
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    /// The path's last segment as a number (`/b/42` -> 42), for origins whose answer it sizes.
    pub fn last_number(&self) -> Option<usize> {
        self.path().rsplit('/').next()?.parse().ok()
    }
    pub fn head_str(&self) -> String {
        String::from_utf8_lossy(&self.raw_head).into_owned()
    }
}

pub enum Body {
    Bytes(Vec<u8>),
    /// `n` bytes of [`pattern_byte`], generated while writing.
    Pattern(u64),
}

pub enum Framing {
    /// `Content-Length`.
    Length,
    /// `Transfer-Encoding: chunked` with this chunk size.
    Chunked(usize),
    /// No length; body delimited by closing the connection.
    UntilClose,
}

/// A scripted HTTP response.
pub struct Resp {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    pub framing: Framing,
    pub delay: Duration,
    pub close: bool,
}

impl Resp {
    pub fn new(status: u16) -> Resp {
        Resp {
            status,
            reason: reason_phrase(status).to_string(),
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
            framing: Framing::Length,
            delay: Duration::ZERO,
            close: false,
        }
    }
    pub fn text(status: u16, body: impl AsRef<[u8]>) -> Resp {
        Resp::new(status).body(body)
    }
    pub fn body(mut self, b: impl AsRef<[u8]>) -> Resp {
        self.body = Body::Bytes(b.as_ref().to_vec());
        self
    }
    pub fn pattern(mut self, n: u64) -> Resp {
        self.body = Body::Pattern(n);
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Resp {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
    pub fn chunked(mut self, chunk: usize) -> Resp {
        self.framing = Framing::Chunked(chunk.max(1));
        self
    }
    pub fn until_close(mut self) -> Resp {
        self.framing = Framing::UntilClose;
        self
    }
    pub fn delay(mut self, d: Duration) -> Resp {
        self.delay = d;
        self
    }
    pub fn close(mut self) -> Resp {
        self.close = true;
        self
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

pub enum Reply {
    Http(Resp),
    /// Write these bytes verbatim; close afterwards if `close`.
    Raw {
        bytes: Vec<u8>,
        close: bool,
    },
    /// Write these byte pieces with `gap` between them (separate TCP segments).
    Pieces {
        pieces: Vec<Vec<u8>>,
        gap: Duration,
        close: bool,
    },
    /// Keep the connection open and never answer (until the origin is dropped).
    Hang,
    /// Close the connection without answering.
    Close,
    /// Answer 101 and echo bytes until EOF; if `close_after_first_echo`, close
    /// the connection after echoing the first chunk of data.
    Upgrade {
        close_after_first_echo: bool,
    },
}

impl From<Resp> for Reply {
    fn from(r: Resp) -> Reply {
        Reply::Http(r)
    }
}

#[derive(Clone)]
pub struct OriginOpts {
    /// Keep decoded bodies in `Req::body` (otherwise only length + hash).
    pub keep_body: bool,
    /// After reading this many body bytes of a request, stop reading for this long.
    pub read_pause: Option<(u64, Duration)>,
    /// Answer `Expect: 100-continue` with an interim 100 before reading the body.
    pub send_continue: bool,
}

impl Default for OriginOpts {
    fn default() -> Self {
        OriginOpts {
            keep_body: true,
            read_pause: None,
            send_continue: true,
        }
    }
}

pub(super) type Handler = Box<dyn Fn(&Req) -> Reply + Send + Sync>;

pub(super) struct OriginShared {
    pub(super) name: String,
    pub(super) stop: AtomicBool,
    pub(super) conns: AtomicUsize,
    pub(super) bytes_in: AtomicU64,
    pub(super) requests: Mutex<Vec<Req>>,
    pub(super) request_count: AtomicUsize,
    pub(super) tunnels_closed: AtomicUsize,
    pub(super) handler: Handler,
    pub(super) opts: OriginOpts,
}

/// An origin for cache tests: answers "v-<target>", cacheable for 10 minutes, tagged with
/// Surrogate-Key "grp" under /p/ and "other" elsewhere (purge by tag).
pub fn tagged_cache_origin() -> Origin {
    Origin::start("o", |r| {
        Resp::text(200, format!("v-{}", r.target))
            .header("Cache-Control", "max-age=600")
            .header(
                "Surrogate-Key",
                if r.path().starts_with("/p/") {
                    "grp"
                } else {
                    "other"
                },
            )
            .into()
    })
}

/// A scripted blocking HTTP/1.1 origin on 127.0.0.1.
pub struct Origin {
    pub addr: SocketAddr,
    shared: Arc<OriginShared>,
}

impl Origin {
    /// Start on an ephemeral port.
    pub fn start(name: &str, handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Origin {
        Self::start_with("127.0.0.1:0", name, OriginOpts::default(), handler)
            .expect("bind origin on 127.0.0.1:0")
    }

    /// Start on a given address (e.g. a port that was closed earlier).
    pub fn start_with(
        addr: &str,
        name: &str,
        opts: OriginOpts,
        handler: impl Fn(&Req) -> Reply + Send + Sync + 'static,
    ) -> io::Result<Origin> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(OriginShared {
            name: name.to_string(),
            stop: AtomicBool::new(false),
            conns: AtomicUsize::new(0),
            bytes_in: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            request_count: AtomicUsize::new(0),
            tunnels_closed: AtomicUsize::new(0),
            handler: Box::new(handler),
            opts,
        });
        let sh = shared.clone();
        thread::Builder::new()
            .name(format!("origin-{name}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if sh.stop.load(SeqCst) {
                        break;
                    }
                    let stream = match conn {
                        Ok(s) => s,
                        Err(_) => continue,
                    };
                    let id = sh.conns.fetch_add(1, SeqCst);
                    let sh2 = sh.clone();
                    let _ = thread::Builder::new()
                        .name(format!("origin-{}-c{id}", sh.name))
                        .spawn(move || {
                            serve_conn(stream, &sh2);
                        });
                }
            })
            .expect("spawn origin accept thread");
        Ok(Origin { addr, shared })
    }

    /// Responds 200 with body = origin name; header `X-Origin: name`.
    pub fn named(name: &str) -> Origin {
        let n = name.to_string();
        Origin::start(name, move |_r| {
            Resp::text(200, &n).header("X-Origin", &n).into()
        })
    }

    /// Responds 200 with body = request target (path + query).
    pub fn echo_target(name: &str) -> Origin {
        Origin::start(name, |r| Resp::text(200, &r.target).into())
    }

    /// Responds 200 echoing the request body.
    pub fn echo_body(name: &str) -> Origin {
        Origin::start(name, |r| Resp::text(200, &r.body).into())
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }
    /// Accepted TCP connections so far.
    pub fn conns(&self) -> usize {
        self.shared.conns.load(SeqCst)
    }
    /// Complete requests (head + body) received so far.
    pub fn request_count(&self) -> usize {
        self.shared.request_count.load(SeqCst)
    }
    /// Total raw bytes read from all connections.
    pub fn bytes_in(&self) -> u64 {
        self.shared.bytes_in.load(SeqCst)
    }
    pub fn tunnels_closed(&self) -> usize {
        self.shared.tunnels_closed.load(SeqCst)
    }
    pub fn requests(&self) -> Vec<Req> {
        self.shared
            .requests
            .lock()
            .expect("origin requests lock")
            .clone()
    }
    pub fn last_request(&self) -> Req {
        self.requests()
            .pop()
            .expect("origin received no request at all")
    }
    /// Wait until at least `n` complete requests arrived.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.request_count() >= n)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound then released).
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind to find a free port");
    let a = l.local_addr().expect("local_addr");
    drop(l);
    a
}
