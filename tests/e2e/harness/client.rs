//! Owns the raw HTTP/1.1 client towards the gateway: `Client`, `Response` read with exact framing,
//! one-shot helpers. Must not start gateways or origins, nor decide what a test expects.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::wire::{
    find_header, find_headers, find_subslice, parse_header_lines, pattern_fill, te_is_chunked, Fnv,
};

/// Default socket read/write timeout for test clients.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub raw_head: String,
    pub body: Vec<u8>,
    /// "length", "chunked", "close" or "none".
    pub framing: &'static str,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        find_headers(&self.headers, name)
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// `Connection` header lists `close`.
    pub fn connection_close(&self) -> bool {
        self.header_all("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): head:\n{}\nbody: {:?}",
                self.raw_head,
                self.body_str()
            )
        })
    }
    /// Assert this is a gateway-made error: status, JSON body {"error":..,"status":N},
    /// Content-Type application/json.
    pub fn assert_gateway_error(&self, status: u16) {
        assert_eq!(
            self.status,
            status,
            "expected gateway error {status}, got:\n{}\nbody: {:?}",
            self.raw_head,
            self.body_str()
        );
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.to_ascii_lowercase().starts_with("application/json"),
            "gateway error {status} must have Content-Type application/json, got {ct:?}; head:\n{}",
            self.raw_head
        );
        let v = self.json();
        assert_eq!(
            v.get("status").and_then(|s| s.as_u64()),
            Some(status as u64),
            "gateway error body must be {{\"error\":..,\"status\":{status}}}, got {v}"
        );
        assert!(
            v.get("error").map(|e| e.is_string()).unwrap_or(false),
            "gateway error body must have a string \"error\" field, got {v}"
        );
    }
}

#[derive(Debug)]
pub enum ReadError {
    /// EOF; `got` bytes of this response had arrived.
    Closed {
        got: usize,
    },
    /// I/O error (reset, timeout...); `got` bytes of this response had arrived.
    Io {
        err: io::Error,
        got: usize,
    },
    Malformed(String),
}

impl ReadError {
    pub fn got(&self) -> usize {
        match self {
            ReadError::Closed { got } | ReadError::Io { got, .. } => *got,
            ReadError::Malformed(_) => usize::MAX,
        }
    }
    pub fn is_timeout(&self) -> bool {
        matches!(self, ReadError::Io { err, .. }
            if err.kind() == io::ErrorKind::WouldBlock || err.kind() == io::ErrorKind::TimedOut)
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed { got } => {
                write!(f, "connection closed after {got} bytes of the response")
            }
            ReadError::Io { err, got } => write!(
                f,
                "I/O error {err} ({:?}) after {got} bytes of the response",
                err.kind()
            ),
            ReadError::Malformed(m) => write!(f, "malformed response: {m}"),
        }
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of the current response consumed so far (for partial-response reporting).
    got: usize,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::try_connect(addr).unwrap_or_else(|e| panic!("connect to gateway {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let _ = stream.set_nodelay(true);
        Ok(Client {
            stream,
            buf: Vec::new(),
            got: 0,
        })
    }

    pub fn set_read_timeout(&mut self, d: Duration) {
        self.stream
            .set_read_timeout(Some(d))
            .expect("set_read_timeout");
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .write_all(bytes.as_ref())
            .unwrap_or_else(|e| panic!("write request to gateway: {e}"));
    }

    pub fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> io::Result<()> {
        self.stream.write_all(bytes.as_ref())
    }

    fn fill(&mut self) -> Result<usize, ReadError> {
        let mut tmp = [0u8; 65536];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => return Err(ReadError::Closed { got: self.got }),
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(ReadError::Io { err, got: self.got }),
            }
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        self.got += n;
        self.buf.drain(..n).collect()
    }

    fn read_line(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(pos) = find_subslice(&self.buf, b"\r\n") {
                let mut l = self.take(pos + 2);
                l.truncate(pos);
                return Ok(l);
            }
            if self.buf.len() > 1 << 20 {
                return Err(ReadError::Malformed("line longer than 1 MiB".into()));
            }
            self.fill()?;
        }
    }

    /// Read just a response head (status line + headers).
    pub fn read_head(&mut self) -> Result<Response, ReadError> {
        self.got = 0;
        let end = loop {
            if let Some(pos) = find_subslice(&self.buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if self.buf.len() > 1 << 20 {
                return Err(ReadError::Malformed("head longer than 1 MiB".into()));
            }
            self.got = self.buf.len();
            self.fill()?;
        };
        self.got = 0;
        let raw = self.take(end);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let lines: Vec<&str> = text[..text.len() - 4].split("\r\n").collect();
        let status_line = lines[0];
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        if !version.starts_with("HTTP/1.") {
            return Err(ReadError::Malformed(format!(
                "bad status line {status_line:?}"
            )));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ReadError::Malformed(format!("bad status line {status_line:?}")))?;
        Ok(Response {
            status,
            headers: parse_header_lines(&lines[1..]),
            raw_head: text,
            body: Vec::new(),
            framing: "none",
        })
    }

    /// Read one response (1xx included), passing body bytes to `sink`.
    pub fn read_response_streaming(
        &mut self,
        head_request: bool,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<Response, ReadError> {
        let mut resp = self.read_head()?;
        let s = resp.status;
        if head_request || (100..200).contains(&s) || s == 204 || s == 304 {
            resp.framing = "none";
            return Ok(resp);
        }
        let te = resp.header_all("transfer-encoding").join(",");
        if !te.trim().is_empty() {
            if !te_is_chunked(&resp.headers) {
                return Err(ReadError::Malformed(format!(
                    "response Transfer-Encoding {te:?} not ending in chunked"
                )));
            }
            resp.framing = "chunked";
            loop {
                let line = self.read_line()?;
                let line = String::from_utf8_lossy(&line).into_owned();
                let size_s = line.split(';').next().unwrap_or("").trim().to_string();
                let size = usize::from_str_radix(&size_s, 16)
                    .map_err(|_| ReadError::Malformed(format!("bad chunk size line {line:?}")))?;
                if size == 0 {
                    loop {
                        if self.read_line()?.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let mut left = size;
                while left > 0 {
                    if self.buf.is_empty() {
                        self.fill()?;
                    }
                    let n = left.min(self.buf.len());
                    let data = self.take(n);
                    sink(&data);
                    left -= n;
                }
                if !self.read_line()?.is_empty() {
                    return Err(ReadError::Malformed(
                        "chunk data not followed by CRLF".into(),
                    ));
                }
            }
            return Ok(resp);
        }
        let cls = resp.header_all("content-length");
        if !cls.is_empty() {
            if cls.len() > 1 && cls.iter().any(|c| c.trim() != cls[0].trim()) {
                return Err(ReadError::Malformed(format!(
                    "differing Content-Length {cls:?}"
                )));
            }
            let n: u64 = cls[0]
                .trim()
                .parse()
                .map_err(|_| ReadError::Malformed(format!("bad Content-Length {:?}", cls[0])))?;
            resp.framing = "length";
            let mut left = n;
            while left > 0 {
                if self.buf.is_empty() {
                    self.fill()?;
                }
                let k = (left.min(self.buf.len() as u64)) as usize;
                let data = self.take(k);
                sink(&data);
                left -= k as u64;
            }
            return Ok(resp);
        }
        resp.framing = "close";
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len();
                let data = self.take(n);
                sink(&data);
            }
            match self.fill() {
                Ok(_) => {}
                Err(ReadError::Closed { .. }) => return Ok(resp),
                Err(e) => return Err(e),
            }
        }
    }

    /// Read one response (1xx included) into `Response::body`.
    pub fn try_read_response_ext(&mut self, head_request: bool) -> Result<Response, ReadError> {
        let mut body = Vec::new();
        let mut resp =
            self.read_response_streaming(head_request, &mut |d| body.extend_from_slice(d))?;
        resp.body = body;
        Ok(resp)
    }

    pub fn try_read_response(&mut self) -> Result<Response, ReadError> {
        self.try_read_response_ext(false)
    }

    /// Read one response or panic with a description.
    pub fn read_response(&mut self) -> Response {
        self.try_read_response()
            .unwrap_or_else(|e| panic!("reading response from gateway failed: {e}"))
    }

    pub fn read_response_to_head(&mut self) -> Response {
        self.try_read_response_ext(true)
            .unwrap_or_else(|e| panic!("reading response to HEAD from gateway failed: {e}"))
    }

    /// Read responses until a final (>= 200, or 101) one.
    pub fn read_final_response(&mut self) -> Response {
        loop {
            let r = self.read_response();
            if r.status >= 200 || r.status == 101 {
                return r;
            }
        }
    }

    /// Send raw bytes and read one final response.
    pub fn request(&mut self, raw: impl AsRef<[u8]>) -> Response {
        self.send(raw);
        self.read_final_response()
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request(get_req(path, "example.com"))
    }

    /// Bytes received but not consumed as part of a response.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }

    /// Wait for the peer to close. Ok(elapsed) on EOF/reset; Err if data arrived
    /// or it stayed open for `timeout`.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<Duration, String> {
        if !self.buf.is_empty() {
            return Err(format!(
                "unexpected extra bytes from gateway: {:?}",
                String::from_utf8_lossy(&self.buf)
            ));
        }
        let start = Instant::now();
        let deadline = start + timeout;
        let mut tmp = [0u8; 4096];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("connection still open after {timeout:?}"));
            }
            self.stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .expect("set_read_timeout");
            match self.stream.read(&mut tmp) {
                Ok(0) => return Ok(start.elapsed()),
                Ok(n) => {
                    return Err(format!(
                        "expected close, got {n} bytes: {:?}",
                        String::from_utf8_lossy(&tmp[..n])
                    ))
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(start.elapsed()), // reset counts as closed
            }
        }
    }

    /// True if the connection stays open (no EOF, no data) for `d`.
    pub fn stays_open_for(&mut self, d: Duration) -> bool {
        let r = self.wait_closed(d);
        self.stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("set_read_timeout");
        match r {
            Ok(_) => false,
            Err(e) => e.starts_with("connection still open"),
        }
    }
}

pub fn get_req(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

/// Connect, send raw bytes, read one final response.
pub fn one_shot(addr: SocketAddr, raw: impl AsRef<[u8]>) -> Response {
    let mut c = Client::connect(addr);
    c.request(raw)
}

/// `GET path` with `Host: t` and `extra` raw header lines (each ending in CRLF).
pub fn get_with(c: &mut Client, path: &str, extra: &str) -> Response {
    c.request(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n"))
}

/// Writes `len` pattern bytes and then `then` to `stream` from a thread (so the caller can read
/// while it writes); the thread returns the FNV hash of the pattern bytes.
pub fn upload_pattern(
    stream: &TcpStream,
    len: u64,
    then: &'static [u8],
) -> thread::JoinHandle<Result<u64, String>> {
    let mut w = stream.try_clone().expect("clone client stream");
    thread::spawn(move || {
        let mut hash = Fnv::default();
        let mut buf = vec![0u8; 256 * 1024];
        let mut off = 0u64;
        while off < len {
            let n = ((len - off) as usize).min(buf.len());
            pattern_fill(off, &mut buf[..n]);
            hash.update(&buf[..n]);
            w.write_all(&buf[..n])
                .map_err(|e| format!("upload write failed at {off}: {e}"))?;
            off += n as u64;
        }
        w.write_all(then)
            .map_err(|e| format!("trailing write: {e}"))?;
        Ok(hash.0)
    })
}
