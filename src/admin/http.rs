//! A small blocking HTTP/1.1 server for the status and admin listeners (a capped thread per
//! connection, one request each, stoppable for an upgrade). Never on the shards' request path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 8 * 1024 * 1024;
const MAX_CONNS: usize = 64;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A query argument's raw value (`force=true` -> "true"; `force` -> "").
    pub fn arg(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec(v).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    pub fn text(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }

    /// `{"error_msg": "..."}`, APISIX's admin error shape.
    pub fn error(status: u16, msg: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error_msg": msg.into() }))
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Set once a binary upgrade's successor serves: every status/admin listener of this process
/// stops accepting (the successor accepts on the same sockets).
static STOP: AtomicBool = AtomicBool::new(false);
/// How often a listener thread looks at `STOP` while no connection arrives.
const STOP_POLL_MS: i32 = 200;

/// Stops every status/admin accept loop of this process within `STOP_POLL_MS`; connections
/// already accepted are answered.
pub fn stop_accepting() {
    STOP.store(true, Ordering::SeqCst);
}

/// Waits until `listener` has a connection or `STOP_POLL_MS` passes; false on a poll error.
fn wait_readable(listener: &TcpListener) -> bool {
    let mut p = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, STOP_POLL_MS) >= 0 }
}

/// Accepts on `listener` (its own thread) until `stop_accepting`, serving each connection on a
/// short-lived thread. The listener is non-blocking so a successor accepting the same socket
/// cannot leave this thread stuck in accept.
pub fn spawn(listener: TcpListener, name: &'static str, handler: Handler) -> std::io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name(format!("ringway-{name}"))
        .spawn(move || {
            while !STOP.load(Ordering::SeqCst) {
                if !wait_readable(&listener) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                // Accepted sockets do not inherit O_NONBLOCK on Linux; made sure of anyway.
                if stream.set_nonblocking(false).is_err() {
                    continue;
                }
                if active.load(Ordering::Relaxed) >= MAX_CONNS {
                    continue; // dropped: closes the connection
                }
                active.fetch_add(1, Ordering::Relaxed);
                let (h, a) = (handler.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("ringway-{name}-conn"))
                    .spawn(move || {
                        serve_one(stream, &h);
                        a.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::Relaxed);
                }
            }
        })?;
    Ok(())
}

fn serve_one(mut stream: TcpStream, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let resp = match read_request(&mut stream, peer) {
        Ok(req) => handler(&req),
        Err(Some(resp)) => resp,
        Err(None) => return,
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nServer: ringway\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        crate::http::write::reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&resp.body);
    let _ = stream.flush();
}

/// Err(None): the client went away; Err(Some): answer with this error.
fn read_request(stream: &mut TcpStream, peer: SocketAddr) -> Result<Request, Option<Response>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let (head_len, mut req) = loop {
        let n = stream.read(&mut chunk).map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let target = r.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let req = Request {
                    method: r.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query: query.to_string(),
                    headers: r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    body: Vec::new(),
                    peer,
                };
                break (len, req);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(Some(Response::error(431, "request head too large")))
            }
            Err(e) => return Err(Some(Response::error(400, format!("bad request: {e}")))),
        }
    };
    if req.header("transfer-encoding").is_some() {
        return Err(Some(Response::error(
            411,
            "send the body with Content-Length",
        )));
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| Some(Response::error(400, "bad Content-Length")))?,
    };
    if len > MAX_BODY {
        return Err(Some(Response::error(
            413,
            format!("body over {MAX_BODY} bytes"),
        )));
    }
    let mut body = buf.split_off(head_len);
    while body.len() < len {
        let n = stream.read(&mut chunk).map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    req.body = body;
    Ok(req)
}
