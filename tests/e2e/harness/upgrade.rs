//! Owns what the binary-upgrade tests drive: a `ringway run --upgrade` successor process and a
//! steady client load (keep-alive and new connections, plain or TLS) that tallies every outcome.
//! Must not assert anything about ringway; tests do.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::gateway::{ringway_command, LogLines};

/// `ringway run --upgrade -c PATH`, killed on drop unless it exited.
pub struct Successor {
    child: Child,
    pub pid: u32,
    pub stderr: LogLines,
    exit: Option<ExitStatus>,
}

impl Successor {
    pub fn start(config: &Path) -> Successor {
        let path = config.to_str().expect("utf-8 path");
        let mut child = ringway_command()
            .args(["run", "--upgrade", "-c", path])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringway --upgrade");
        let stderr = LogLines::spawn_reader(child.stderr.take().expect("stderr"), "successor");
        Successor {
            pid: child.id(),
            child,
            stderr,
            exit: None,
        }
    }

    /// Waits for `line` in its log, or for it to exit (None then).
    pub fn wait_log(&mut self, line: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(l) = self
                .stderr
                .wait_for(|l| l.contains(line), Duration::from_millis(100))
            {
                return Some(l);
            }
            if self.wait_exit(Duration::ZERO).is_some() {
                return None;
            }
        }
        None
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exit.is_some() {
                return self.exit;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exit = Some(st);
                continue;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn send_sigterm(&self) {
        super::gateway::send_signal(self.pid, "TERM");
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How one load thread talks to the gateway.
#[derive(Clone)]
pub enum Mode {
    /// Requests on one connection until the gateway says `Connection: close`, then a new one.
    KeepAlive,
    /// One request per connection (`Connection: close`).
    NewConn,
}

/// Every outcome of a load run. A failure is any request that did not get its 200 with the
/// right body: a reset, a close before or inside a response, a wrong status or body.
#[derive(Default, Debug)]
pub struct Tally {
    pub ok: u64,
    pub failed: Vec<String>,
    pub refused: u64,
    /// TLS handshakes that resumed a session (the client keeps one session per thread).
    pub resumed: u64,
    pub handshakes: u64,
    /// Requests answered after `mark` was called.
    pub ok_after_mark: u64,
}

/// Client threads running until `stop`; each request is `GET /<thread>/<n>`, which the test's
/// origin echoes back as the body.
pub struct Load {
    stop: Arc<AtomicBool>,
    mark: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    tally: Arc<Mutex<Tally>>,
}

/// A plain or TLS connection.
trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

impl Load {
    /// `threads`: one thread per entry; `tls` with a client config (and SNI name) makes every
    /// connection TLS. Each thread pauses `pace` between requests.
    pub fn start(
        addr: SocketAddr,
        threads: &[Mode],
        tls: Option<(Arc<ClientConfig>, &str)>,
        pace: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mark = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let handles = threads
            .iter()
            .enumerate()
            .map(|(t, mode)| {
                let (stop, mark, tally, mode) =
                    (stop.clone(), mark.clone(), tally.clone(), mode.clone());
                let tls = tls.clone().map(|(c, n)| (c, n.to_string()));
                std::thread::spawn(move || run(t, addr, mode, tls, pace, &stop, &mark, &tally))
            })
            .collect();
        Load {
            stop,
            mark,
            handles,
            tally,
        }
    }

    /// From now on, answered requests also count in `ok_after_mark`.
    pub fn mark(&self) {
        self.mark.store(true, SeqCst);
    }

    pub fn ok_so_far(&self) -> u64 {
        self.tally.lock().expect("tally").ok
    }

    pub fn stop(self) -> Tally {
        self.stop.store(true, SeqCst);
        for h in self.handles {
            h.join().expect("load thread");
        }
        std::mem::take(&mut *self.tally.lock().expect("tally"))
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    t: usize,
    addr: SocketAddr,
    mode: Mode,
    tls: Option<(Arc<ClientConfig>, String)>,
    pace: Duration,
    stop: &AtomicBool,
    mark: &AtomicBool,
    tally: &Mutex<Tally>,
) {
    let mut n = 0u64;
    let mut conn: Option<Box<dyn Conn>> = None;
    while !stop.load(SeqCst) {
        let mut c = match conn.take() {
            Some(c) => c,
            None => match connect(addr, tls.as_ref()) {
                Ok((c, resumed)) => {
                    if tls.is_some() {
                        let mut tl = tally.lock().expect("tally");
                        tl.handshakes += 1;
                        tl.resumed += u64::from(resumed);
                    }
                    c
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tally.lock().expect("tally").refused += 1;
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(e) => {
                    let msg = format!("thread {t}: connect: {e}");
                    tally.lock().expect("tally").failed.push(msg);
                    continue;
                }
            },
        };
        let path = format!("/{t}/{n}");
        n += 1;
        let close = matches!(mode, Mode::NewConn);
        match exchange(&mut c, &path, close) {
            Ok((200, body, server_close)) if body == path => {
                let mut tl = tally.lock().expect("tally");
                tl.ok += 1;
                if mark.load(SeqCst) {
                    tl.ok_after_mark += 1;
                }
                if !close && !server_close {
                    conn = Some(c);
                }
            }
            Ok((status, body, _)) => {
                let msg = format!("thread {t} {path}: {status} {body:?}");
                tally.lock().expect("tally").failed.push(msg);
            }
            Err(e) => {
                let msg = format!("thread {t} {path}: {e}");
                tally.lock().expect("tally").failed.push(msg);
            }
        }
        std::thread::sleep(pace);
    }
}

fn connect(
    addr: SocketAddr,
    tls: Option<&(Arc<ClientConfig>, String)>,
) -> io::Result<(Box<dyn Conn>, bool)> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_nodelay(true)?;
    let Some((cfg, name)) = tls else {
        return Ok((Box::new(tcp), false));
    };
    let server = ServerName::try_from(name.clone()).map_err(io::Error::other)?;
    let c = ClientConnection::new(cfg.clone(), server).map_err(io::Error::other)?;
    let mut s = StreamOwned::new(c, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    let resumed = s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    Ok((Box::new(s), resumed))
}

/// One GET; (status, body, whether the server said `Connection: close`).
fn exchange(c: &mut Box<dyn Conn>, path: &str, close: bool) -> Result<(u16, String, bool), String> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: upgrade.test\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    );
    c.write_all(req.as_bytes())
        .and_then(|()| c.flush())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = c
            .read(&mut chunk)
            .map_err(|e| format!("read after {} bytes: {e}", buf.len()))?;
        if n == 0 {
            return Err(format!("closed after {} bytes of the head", buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad head {head:?}"))?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    let server_close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    while buf.len() < head_end + len {
        let n = c.read(&mut chunk).map_err(|e| format!("body: {e}"))?;
        if n == 0 {
            return Err("closed inside the body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
    Ok((status, body, server_close))
}
