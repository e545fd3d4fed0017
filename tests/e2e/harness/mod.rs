//! Shared integration-test harness for ringway.
//!
//! * [`Gateway`]: runs the real `ringway` binary on a temp config, waits for its
//!   `listening on ADDR` stderr line(s), keeps draining stderr, kills on drop.
//! * [`Origin`]: a blocking std-thread HTTP/1.1 origin that records every request
//!   (raw head + decoded body) and is scripted per test with a handler closure.
//! * [`Client`]: a minimal raw HTTP/1.1 client with correct response framing.
//! * `/proc` helpers for RSS, thread names and CPU affinity.
#![allow(dead_code)]

pub mod ops;
pub mod tls;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default socket read/write timeout for test clients.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the gateway to print its listening line(s).
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

pub fn ringway_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringway")
}

// ---------------------------------------------------------------------------
// temp files
// ---------------------------------------------------------------------------

static TEMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temp file removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(contents: &str) -> TempFile {
        let n = TEMP_COUNTER.fetch_add(1, SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "ringway-test-{}-{}-{}.toml",
            std::process::id(),
            n,
            nanos
        ));
        std::fs::write(&path, contents).expect("write temp config file");
        TempFile { path }
    }
    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("temp path is utf-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------------------
// config builders
// ---------------------------------------------------------------------------

/// `[server]` section with `listen = ["127.0.0.1:0"]`, `workers = 1` as defaults;
/// `overrides` are `(key, raw TOML value)` pairs that replace or add keys.
pub fn server(overrides: &[(&str, &str)]) -> String {
    let mut keys: Vec<(String, String)> = vec![
        ("listen".into(), r#"["127.0.0.1:0"]"#.into()),
        ("workers".into(), "1".into()),
    ];
    for (k, v) in overrides {
        if let Some(e) = keys.iter_mut().find(|(kk, _)| kk == k) {
            e.1 = v.to_string();
        } else {
            keys.push((k.to_string(), v.to_string()));
        }
    }
    let mut s = String::from("[server]\n");
    for (k, v) in keys {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s.push('\n');
    s
}

/// `[[upstreams]]` with equal-weight nodes; `extra` is raw TOML lines appended.
pub fn upstream(name: &str, nodes: &[SocketAddr], extra: &str) -> String {
    let w: Vec<(SocketAddr, u32)> = nodes.iter().map(|a| (*a, 1)).collect();
    upstream_weighted(name, &w, extra)
}

pub fn upstream_weighted(name: &str, nodes: &[(SocketAddr, u32)], extra: &str) -> String {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|(a, w)| format!(r#"{{ addr = "{a}", weight = {w} }}"#))
        .collect();
    format!(
        "[[upstreams]]\nname = \"{name}\"\nnodes = [{}]\n{extra}\n\n",
        nodes.join(", ")
    )
}

/// `[[routes]]` with the given paths and upstream; `extra` is raw TOML lines appended.
pub fn route(name: &str, paths: &[&str], upstream: &str, extra: &str) -> String {
    let paths: Vec<String> = paths.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[[routes]]\nname = \"{name}\"\npaths = [{}]\nupstream = \"{upstream}\"\n{extra}\n\n",
        paths.join(", ")
    )
}

/// One upstream "backend" over `origin`, one catch-all route, server overrides.
pub fn simple_config(origin: SocketAddr, server_overrides: &[(&str, &str)]) -> String {
    simple_config_with(origin, server_overrides, "")
}

/// `simple_config` with raw TOML lines added to the upstream (timeouts, pool, ...).
pub fn simple_config_with(
    origin: SocketAddr,
    server_overrides: &[(&str, &str)],
    upstream_extra: &str,
) -> String {
    format!(
        "{}{}{}",
        server(server_overrides),
        upstream("backend", &[origin], upstream_extra),
        route("default", &["/*"], "backend", "")
    )
}

// ---------------------------------------------------------------------------
// log collection
// ---------------------------------------------------------------------------

struct LogState {
    lines: Vec<String>,
    eof: bool,
}

/// Lines read from a child's pipe by a background thread.
#[derive(Clone)]
pub struct LogLines {
    inner: Arc<(Mutex<LogState>, Condvar)>,
}

impl LogLines {
    pub fn spawn_reader<R: Read + Send + 'static>(mut r: R, tag: &'static str) -> LogLines {
        let inner = Arc::new((
            Mutex::new(LogState {
                lines: Vec::new(),
                eof: false,
            }),
            Condvar::new(),
        ));
        let inner2 = inner.clone();
        thread::Builder::new()
            .name(format!("log-{tag}"))
            .spawn(move || {
                let mut pending: Vec<u8> = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let n = match r.read(&mut buf) {
                        Ok(0) | Err(_) => 0,
                        Ok(n) => n,
                    };
                    let (lock, cv) = &*inner2;
                    let mut st = lock.lock().expect("log lock");
                    if n == 0 {
                        if !pending.is_empty() {
                            let line = String::from_utf8_lossy(&pending).into_owned();
                            eprintln!("[{tag}] {line}");
                            st.lines.push(line);
                        }
                        st.eof = true;
                        cv.notify_all();
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                        let raw: Vec<u8> = pending.drain(..=pos).collect();
                        let line = String::from_utf8_lossy(&raw[..raw.len() - 1])
                            .trim_end_matches('\r')
                            .to_string();
                        eprintln!("[{tag}] {line}");
                        st.lines.push(line);
                    }
                    cv.notify_all();
                }
            })
            .expect("spawn log reader thread");
        LogLines { inner }
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.inner.0.lock().expect("log lock").lines.clone()
    }

    pub fn text(&self) -> String {
        self.snapshot().join("\n")
    }

    pub fn is_eof(&self) -> bool {
        self.inner.0.lock().expect("log lock").eof
    }

    /// Wait until at least `n` lines (from the start) satisfy `pred`; returns them.
    /// Returns what it found so far on timeout or EOF.
    pub fn wait_for_n(
        &self,
        pred: impl Fn(&str) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().expect("log lock");
        loop {
            let found: Vec<String> = st.lines.iter().filter(|l| pred(l)).cloned().collect();
            if found.len() >= n || st.eof {
                return found;
            }
            let now = Instant::now();
            if now >= deadline {
                return found;
            }
            let step = (deadline - now).min(Duration::from_millis(100));
            st = cv.wait_timeout(st, step).expect("log condvar").0;
        }
    }

    pub fn wait_for(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        self.wait_for_n(pred, 1, timeout).into_iter().next()
    }

    pub fn wait_eof(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().expect("log lock");
        while !st.eof {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = cv.wait_timeout(st, deadline - now).expect("log condvar").0;
        }
        true
    }
}

/// Parse the address out of a `... listening on 127.0.0.1:PORT ...` line.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let idx = line.find("listening on ")?;
    let rest = &line[idx + "listening on ".len()..];
    let rest = rest.strip_prefix("http://").unwrap_or(rest);
    let tok: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',' && *c != ';' && *c != ')' && *c != '"')
        .collect();
    tok.parse().ok()
}

// ---------------------------------------------------------------------------
// gateway process
// ---------------------------------------------------------------------------

pub struct Gateway {
    child: Child,
    pub pid: u32,
    /// First listener address.
    pub addr: SocketAddr,
    /// All listener addresses, in the order they were printed.
    pub addrs: Vec<SocketAddr>,
    pub stderr: LogLines,
    exit: Option<ExitStatus>,
    _config: TempFile,
}

impl Gateway {
    /// Start `ringway run -c <tmp>` with one listener and wait until it listens.
    pub fn start(config: &str) -> Gateway {
        Self::start_with_listeners(config, 1)
    }

    pub fn start_with_listeners(config: &str, listeners: usize) -> Gateway {
        let cfg = TempFile::new(config);
        let mut child = Command::new(ringway_bin())
            .args(["run", "-c", cfg.path_str()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringway binary");
        let pid = child.id();
        let stderr =
            LogLines::spawn_reader(child.stderr.take().expect("child stderr pipe"), "ringway");
        let deadline = Instant::now() + START_TIMEOUT;
        let mut found: Vec<String>;
        loop {
            found = stderr.wait_for_n(
                |l| parse_listening_line(l).is_some(),
                listeners,
                Duration::from_millis(200),
            );
            if found.len() >= listeners {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                stderr.wait_eof(Duration::from_secs(2));
                panic!(
                    "ringway exited ({status}) before printing {listeners} `listening on` line(s).\nconfig:\n{config}\nstderr:\n{}",
                    stderr.text()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ringway did not print {listeners} `listening on ADDR` line(s) within {START_TIMEOUT:?}.\nconfig:\n{config}\nstderr:\n{}",
                    stderr.text()
                );
            }
        }
        let addrs: Vec<SocketAddr> = found
            .iter()
            .map(|l| parse_listening_line(l).expect("listening line parses"))
            .collect();
        for a in &addrs {
            assert_ne!(
                a.port(),
                0,
                "gateway printed port 0 instead of the real port: {found:?}"
            );
        }
        Gateway {
            child,
            pid,
            addr: addrs[0],
            addrs,
            stderr,
            exit: None,
            _config: cfg,
        }
    }

    pub fn send_signal(&self, sig: &str) {
        send_signal(self.pid, sig);
    }

    pub fn send_sigterm(&self) {
        self.send_signal("TERM");
    }

    /// Wait up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.exit = Some(st);
                    return self.exit;
                }
                Ok(None) => {}
                Err(e) => panic!("try_wait on ringway failed: {e}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.exit.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    pub fn rss_kb(&self) -> u64 {
        rss_kb(self.pid)
    }

    pub fn threads(&self) -> Vec<(u32, String)> {
        thread_list(self.pid)
    }

    pub fn logs(&self) -> String {
        self.stderr.text()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn send_signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("run `kill` to signal ringway");
    assert!(st.success(), "kill -{sig} {pid} failed: {st}");
}

/// Output of a finished CLI invocation.
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Run `ringway ARGS...` to completion (killed + panics after `timeout`).
pub fn run_cli(args: &[&str], timeout: Duration) -> CliOutput {
    let mut child = Command::new(ringway_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringway binary");
    let out = LogLines::spawn_reader(child.stdout.take().expect("stdout pipe"), "ringway-stdout");
    let err = LogLines::spawn_reader(child.stderr.take().expect("stderr pipe"), "ringway-stderr");
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => panic!("try_wait: {e}"),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`ringway {}` did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                args.join(" "),
                out.text(),
                err.text()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    out.wait_eof(Duration::from_secs(2));
    err.wait_eof(Duration::from_secs(2));
    CliOutput {
        status,
        stdout: out.text(),
        stderr: err.text(),
    }
}

/// Run `ringway check -c <tmp>` on a config string.
pub fn check_config(config: &str) -> CliOutput {
    let cfg = TempFile::new(config);
    run_cli(&["check", "-c", cfg.path_str()], Duration::from_secs(10))
}

pub fn check_config_file(path: &Path) -> CliOutput {
    run_cli(
        &["check", "-c", path.to_str().expect("utf-8 path")],
        Duration::from_secs(10),
    )
}

// ---------------------------------------------------------------------------
// hashing / patterns
// ---------------------------------------------------------------------------

/// Deterministic body byte at offset `i`.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

pub fn pattern_fill(offset: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + k as u64);
    }
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

/// Incremental FNV-1a 64.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf29ce484222325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        for &b in data {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        self.0 = h;
    }
    pub fn of(data: &[u8]) -> u64 {
        let mut f = Fnv::default();
        f.update(data);
        f.0
    }
}

// ---------------------------------------------------------------------------
// header helpers
// ---------------------------------------------------------------------------

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn find_headers<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_header_lines(lines: &[&str]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| match l.find(':') {
            Some(i) => (l[..i].to_string(), l[i + 1..].trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// True if the comma-separated `Transfer-Encoding` values end with `chunked`.
fn te_is_chunked(headers: &[(String, String)]) -> bool {
    let all: Vec<String> = find_headers(headers, "transfer-encoding")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    all.last().map(|s| s == "chunked").unwrap_or(false)
}

// ---------------------------------------------------------------------------
// origin server
// ---------------------------------------------------------------------------

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
    /// Body arrived with chunked framing.
    pub chunked: bool,
    /// Index of the accepted connection (0-based) this request came on.
    pub conn_id: usize,
    /// Index of this request on its connection (0-based).
    pub seq_on_conn: usize,
    pub peer: SocketAddr,
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
    /// No framing headers added and no body written.
    NoBody,
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
    pub fn no_body(mut self) -> Resp {
        self.framing = Framing::NoBody;
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

type Handler = Box<dyn Fn(&Req) -> Reply + Send + Sync>;

struct OriginShared {
    name: String,
    stop: AtomicBool,
    conns: AtomicUsize,
    open_conns: AtomicUsize,
    bytes_in: AtomicU64,
    requests: Mutex<Vec<Req>>,
    request_count: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    tunnels_closed: AtomicUsize,
    handler: Handler,
    opts: OriginOpts,
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
            open_conns: AtomicUsize::new(0),
            bytes_in: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            request_count: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
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
                    sh.open_conns.fetch_add(1, SeqCst);
                    let sh2 = sh.clone();
                    let _ = thread::Builder::new()
                        .name(format!("origin-{}-c{id}", sh.name))
                        .spawn(move || {
                            serve_conn(stream, &sh2, id);
                            sh2.open_conns.fetch_sub(1, SeqCst);
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
    pub fn open_conns(&self) -> usize {
        self.shared.open_conns.load(SeqCst)
    }
    /// Complete requests (head + body) received so far.
    pub fn request_count(&self) -> usize {
        self.shared.request_count.load(SeqCst)
    }
    /// Total raw bytes read from all connections.
    pub fn bytes_in(&self) -> u64 {
        self.shared.bytes_in.load(SeqCst)
    }
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(SeqCst)
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

/// Poll `f` every 10 ms until true or timeout.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

const ORIGIN_IDLE_LIMIT: Duration = Duration::from_secs(60);

/// Read more bytes, polling the stop flag. Ok(0) = EOF.
fn origin_read(stream: &mut TcpStream, buf: &mut Vec<u8>, sh: &OriginShared) -> io::Result<usize> {
    let start = Instant::now();
    let mut tmp = [0u8; 65536];
    loop {
        if sh.stop.load(SeqCst) {
            return Err(io::Error::other("origin stopped"));
        }
        match stream.read(&mut tmp) {
            Ok(n) => {
                sh.bytes_in.fetch_add(n as u64, SeqCst);
                buf.extend_from_slice(&tmp[..n]);
                return Ok(n);
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                if start.elapsed() > ORIGIN_IDLE_LIMIT {
                    return Err(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn origin_sleep(sh: &OriginShared, d: Duration) {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline && !sh.stop.load(SeqCst) {
        thread::sleep((deadline - Instant::now()).min(Duration::from_millis(20)));
    }
}

struct BodySink<'a> {
    sh: &'a OriginShared,
    keep: bool,
    body: Vec<u8>,
    len: u64,
    hash: Fnv,
    paused: bool,
}

impl BodySink<'_> {
    fn push(&mut self, data: &[u8]) {
        if self.keep {
            self.body.extend_from_slice(data);
        }
        self.hash.update(data);
        self.len += data.len() as u64;
        if let Some((after, dur)) = self.sh.opts.read_pause {
            if !self.paused && self.len >= after {
                self.paused = true;
                origin_sleep(self.sh, dur);
            }
        }
    }
}

/// Take up to `want` bytes from `buf` (reading more as needed) into the sink.
fn origin_read_exact_into(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    sh: &OriginShared,
    mut want: u64,
    sink: &mut BodySink,
) -> io::Result<()> {
    while want > 0 {
        if buf.is_empty() && origin_read(stream, buf, sh)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in body"));
        }
        let take = (buf.len() as u64).min(want) as usize;
        sink.push(&buf[..take]);
        buf.drain(..take);
        want -= take as u64;
    }
    Ok(())
}

fn origin_read_line(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    sh: &OriginShared,
) -> io::Result<Vec<u8>> {
    loop {
        if let Some(pos) = find_subslice(buf, b"\r\n") {
            let line: Vec<u8> = buf.drain(..pos + 2).take(pos).collect();
            return Ok(line);
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        if origin_read(stream, buf, sh)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in line"));
        }
    }
}

fn serve_conn(mut stream: TcpStream, sh: &OriginShared, conn_id: usize) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_nodelay(true);
    let peer = match stream.peer_addr() {
        Ok(p) => p,
        Err(_) => return,
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut seq = 0usize;
    loop {
        // ---- head
        let head_end = loop {
            if let Some(pos) = find_subslice(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > 1024 * 1024 {
                return;
            }
            match origin_read(&mut stream, &mut buf, sh) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let raw_head: Vec<u8> = buf.drain(..head_end).collect();
        let head_text = String::from_utf8_lossy(&raw_head).into_owned();
        let lines: Vec<&str> = head_text[..head_text.len() - 4].split("\r\n").collect();
        let mut parts = lines[0].split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("").to_string();
        let headers = parse_header_lines(&lines[1..]);

        sh.in_flight.fetch_add(1, SeqCst);
        let cur = sh.in_flight.load(SeqCst);
        sh.max_in_flight.fetch_max(cur, SeqCst);
        let result = serve_one(
            &mut stream,
            &mut buf,
            sh,
            conn_id,
            seq,
            peer,
            method,
            target,
            version,
            headers,
            raw_head,
        );
        sh.in_flight.fetch_sub(1, SeqCst);
        seq += 1;
        if !result {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Serve one request whose head was already read. Returns whether to keep the connection.
#[allow(clippy::too_many_arguments)]
fn serve_one(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    sh: &OriginShared,
    conn_id: usize,
    seq: usize,
    peer: SocketAddr,
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    raw_head: Vec<u8>,
) -> bool {
    let expect_continue = find_header(&headers, "expect")
        .map(|v| v.eq_ignore_ascii_case("100-continue"))
        .unwrap_or(false);
    if expect_continue
        && sh.opts.send_continue
        && stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
    {
        return false;
    }
    let chunked = te_is_chunked(&headers);
    let mut sink = BodySink {
        sh,
        keep: sh.opts.keep_body,
        body: Vec::new(),
        len: 0,
        hash: Fnv::default(),
        paused: false,
    };
    if chunked {
        loop {
            let line = match origin_read_line(stream, buf, sh) {
                Ok(l) => l,
                Err(_) => return false,
            };
            let line = String::from_utf8_lossy(&line).into_owned();
            let size_str = line.split(';').next().unwrap_or("").trim();
            let size = match u64::from_str_radix(size_str, 16) {
                Ok(s) => s,
                Err(_) => return false,
            };
            if size == 0 {
                // trailers
                loop {
                    match origin_read_line(stream, buf, sh) {
                        Ok(l) if l.is_empty() => break,
                        Ok(_) => {}
                        Err(_) => return false,
                    }
                }
                break;
            }
            if origin_read_exact_into(stream, buf, sh, size, &mut sink).is_err() {
                return false;
            }
            match origin_read_line(stream, buf, sh) {
                Ok(l) if l.is_empty() => {}
                _ => return false,
            }
        }
    } else if let Some(cl) = find_header(&headers, "content-length") {
        let n: u64 = match cl.trim().parse() {
            Ok(n) => n,
            Err(_) => return false,
        };
        if origin_read_exact_into(stream, buf, sh, n, &mut sink).is_err() {
            return false;
        }
    }
    let req = Req {
        method,
        target,
        version,
        headers,
        raw_head,
        body: sink.body,
        body_len: sink.len,
        body_hash: sink.hash.0,
        chunked,
        conn_id,
        seq_on_conn: seq,
        peer,
    };
    sh.requests
        .lock()
        .expect("origin requests lock")
        .push(req.clone());
    sh.request_count.fetch_add(1, SeqCst);

    let reply = (sh.handler)(&req);
    match reply {
        Reply::Close => false,
        Reply::Hang => {
            origin_sleep(sh, Duration::from_secs(120));
            false
        }
        Reply::Pieces { pieces, gap, close } => {
            let _ = stream.set_nodelay(true);
            for (i, p) in pieces.iter().enumerate() {
                if i > 0 {
                    origin_sleep(sh, gap);
                }
                if stream.write_all(p).is_err() {
                    return false;
                }
            }
            !close
        }
        Reply::Raw { bytes, close } => {
            if stream.write_all(&bytes).is_err() {
                return false;
            }
            !close
        }
        Reply::Upgrade {
            close_after_first_echo,
        } => {
            let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
            if stream.write_all(head).is_err() {
                return false;
            }
            // echo leftovers, then everything that arrives, until EOF.
            loop {
                if !buf.is_empty() {
                    let data: Vec<u8> = std::mem::take(buf);
                    if stream.write_all(&data).is_err() {
                        break;
                    }
                    if close_after_first_echo {
                        break;
                    }
                }
                match origin_read(stream, buf, sh) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            sh.tunnels_closed.fetch_add(1, SeqCst);
            false
        }
        Reply::Http(resp) => {
            let is_head = req.method.eq_ignore_ascii_case("HEAD");
            let conn_tokens: Vec<String> = req
                .header_all("connection")
                .iter()
                .flat_map(|v| v.split(','))
                .map(|t| t.trim().to_ascii_lowercase())
                .collect();
            let client_wants_close = conn_tokens.iter().any(|t| t == "close")
                || (req.version == "HTTP/1.0" && !conn_tokens.iter().any(|t| t == "keep-alive"));
            let mut resp = resp;
            if client_wants_close {
                resp.close = true;
            }
            write_resp(stream, sh, &resp, is_head).is_ok()
                && !resp.close
                && !matches!(resp.framing, Framing::UntilClose)
        }
    }
}

fn write_resp(
    stream: &mut TcpStream,
    sh: &OriginShared,
    resp: &Resp,
    is_head: bool,
) -> io::Result<()> {
    if !resp.delay.is_zero() {
        origin_sleep(sh, resp.delay);
    }
    let body_len = match &resp.body {
        Body::Bytes(b) => b.len() as u64,
        Body::Pattern(n) => *n,
    };
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, resp.reason);
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let status_no_body = resp.status == 204 || resp.status == 304 || resp.status < 200;
    match resp.framing {
        Framing::Length if !status_no_body => {
            head.push_str(&format!("Content-Length: {body_len}\r\n"))
        }
        Framing::Chunked(_) if !status_no_body => head.push_str("Transfer-Encoding: chunked\r\n"),
        _ => {}
    }
    if resp.close || matches!(resp.framing, Framing::UntilClose) {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if is_head || status_no_body || matches!(resp.framing, Framing::NoBody) {
        return stream.flush();
    }
    let chunk_size = match resp.framing {
        Framing::Chunked(n) => Some(n),
        _ => None,
    };
    let emit = |data: &[u8], stream: &mut TcpStream| -> io::Result<()> {
        match chunk_size {
            Some(cs) => {
                for c in data.chunks(cs) {
                    let mut out = format!("{:x}\r\n", c.len()).into_bytes();
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                    stream.write_all(&out)?;
                }
                Ok(())
            }
            None => stream.write_all(data),
        }
    };
    match &resp.body {
        Body::Bytes(b) => emit(b, stream)?,
        Body::Pattern(n) => {
            let mut off = 0u64;
            let mut chunk = vec![0u8; 64 * 1024];
            while off < *n {
                let len = ((*n - off) as usize).min(chunk.len());
                pattern_fill(off, &mut chunk[..len]);
                emit(&chunk[..len], stream)?;
                off += len as u64;
            }
        }
    }
    if chunk_size.is_some() {
        stream.write_all(b"0\r\n\r\n")?;
    }
    stream.flush()
}

/// A port on 127.0.0.1 that nothing listens on (bound then released).
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind to find a free port");
    let a = l.local_addr().expect("local_addr");
    drop(l);
    a
}

// ---------------------------------------------------------------------------
// raw client
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
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
        let reason = parts.next().unwrap_or("").to_string();
        Ok(Response {
            version,
            status,
            reason,
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

// ---------------------------------------------------------------------------
// /proc helpers
// ---------------------------------------------------------------------------

pub fn proc_status_field(path: &str, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .map(|l| l[field.len() + 1..].trim().to_string())
}

/// VmRSS of a process in KiB.
pub fn rss_kb(pid: u32) -> u64 {
    let v = proc_status_field(&format!("/proc/{pid}/status"), "VmRSS")
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status (process gone?)"));
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unparsable VmRSS {v:?}"))
}

/// (tid, comm) of every thread of a process.
pub fn thread_list(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let dir = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/task: {e}"));
    for e in dir.flatten() {
        let tid: u32 = match e.file_name().to_str().and_then(|s| s.parse().ok()) {
            Some(t) => t,
            None => continue,
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        out.push((tid, comm));
    }
    out.sort();
    out
}

pub fn thread_cpus_allowed(pid: u32, tid: u32) -> String {
    proc_status_field(
        &format!("/proc/{pid}/task/{tid}/status"),
        "Cpus_allowed_list",
    )
    .unwrap_or_else(|| panic!("no Cpus_allowed_list for thread {tid} of {pid}"))
}

/// io_uring usable per /proc/sys/kernel/io_uring_disabled (0 or absent).
pub fn io_uring_allowed() -> bool {
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(s) => s.trim() == "0",
        Err(_) => true,
    }
}

// ---------------------------------------------------------------------------
// fault injection (issue 9): raw scriptable upstreams, fd counting
// ---------------------------------------------------------------------------

/// A raw TCP upstream for fault injection: for every request head it reads (up to and
/// including the blank line; request bodies are not read), `handler(head_text, stream)` does
/// whatever it likes with the socket and returns whether to keep serving the connection.
pub struct RawOrigin {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

impl RawOrigin {
    pub fn start(handler: impl Fn(&str, &mut TcpStream) -> bool + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw origin");
        let addr = listener.local_addr().expect("raw origin addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let (st, acc, op) = (stop.clone(), accepted.clone(), open.clone());
        thread::Builder::new()
            .name("raw-origin".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.load(SeqCst) {
                        break;
                    }
                    let Ok(mut s) = conn else { continue };
                    acc.fetch_add(1, SeqCst);
                    op.fetch_add(1, SeqCst);
                    let (h, st2, op2) = (handler.clone(), st.clone(), op.clone());
                    let _ =
                        thread::Builder::new()
                            .name("raw-origin-conn".into())
                            .spawn(move || {
                                let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                                let mut buf = Vec::new();
                                let mut tmp = [0u8; 16384];
                                let idle_until = Instant::now() + Duration::from_secs(60);
                                'conn: while !st2.load(SeqCst) && Instant::now() < idle_until {
                                    while let Some(end) = find_subslice(&buf, b"\r\n\r\n") {
                                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                                        let text = String::from_utf8_lossy(&head).into_owned();
                                        if !h(&text, &mut s) {
                                            break 'conn;
                                        }
                                    }
                                    match s.read(&mut tmp) {
                                        Ok(0) => break,
                                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                                        Err(e)
                                            if e.kind() == io::ErrorKind::WouldBlock
                                                || e.kind() == io::ErrorKind::TimedOut => {}
                                        Err(_) => break,
                                    }
                                }
                                drop(s);
                                op2.fetch_sub(1, SeqCst);
                            });
                }
            })
            .expect("spawn raw origin");
        RawOrigin {
            addr,
            stop,
            accepted,
            open,
        }
    }
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(SeqCst)
    }
    /// Connections the origin has not seen closed yet.
    pub fn open_conns(&self) -> usize {
        self.open.load(SeqCst)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Resets the connection (RST instead of FIN) by closing it with SO_LINGER 0.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// The request path in a request head's first line.
pub fn head_path(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
}

/// Waits (up to `timeout`) for the process's fd count to drop to `max` or below; returns
/// the last count seen.
pub fn wait_fds_at_most(pid: u32, max: usize, timeout: Duration) -> usize {
    let mut n = fd_count(pid);
    wait_until(timeout, || {
        n = fd_count(pid);
        n <= max
    });
    n
}

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (bounded by the hard limit);
/// returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < want {
            rl.rlim_cur = want.min(rl.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        }
    }
    rl.rlim_cur
}

/// `GET path` with `Host: t` and `extra` raw header lines (each ending in CRLF).
pub fn get_with(c: &mut Client, path: &str, extra: &str) -> Response {
    c.request(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n"))
}

/// A config with one route "r" on "/*" to upstream "backend" (the origin `o`); `plugins` is
/// appended to the route's table.
pub fn one_route(o: &Origin, server_overrides: &[(&str, &str)], plugins: &str) -> String {
    format!(
        "{}{}{}",
        server(server_overrides),
        upstream("backend", &[o.addr], ""),
        route("r", &["/*"], "backend", plugins)
    )
}

/// `ringway check` refuses `cfg`, and its output names each of `want`.
pub fn assert_config_rejected(cfg: &str, want: &[&str]) {
    let out = check_config(cfg);
    assert!(!out.status.success(), "accepted:\n{cfg}");
    for w in want {
        assert!(out.all().contains(w), "want {w:?} in:\n{}", out.all());
    }
}
