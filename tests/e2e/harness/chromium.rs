//! Owns a real headless Chromium for page tests: launched on a temp profile, driven over the
//! DevTools protocol (a minimal WebSocket client), console errors collected. Asserts nothing.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

const BINARY: &str = "/usr/bin/chromium";
const WAIT: Duration = Duration::from_secs(30);

/// A headless Chromium with one page under DevTools control; killed (profile removed) on drop.
pub struct Chromium {
    child: Child,
    profile: PathBuf,
    /// The DevTools connection (None only while attaching).
    ws: Option<TcpStream>,
    next_id: u64,
    /// Console errors, uncaught exceptions and failed loads the page reported so far.
    pub errors: Vec<String>,
}

impl Chromium {
    /// Launches Chromium on `about:blank` and attaches to its page, with console, log and
    /// exception reporting on. Panics naming the Debian package when the binary is missing.
    pub fn launch() -> Chromium {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} not found: install the Debian package `chromium` (.ci/run does)"
        );
        let profile = std::env::temp_dir().join(format!(
            "ringway-chromium-{}-{}",
            std::process::id(),
            rand_seed()
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("profile dir");
        let child = Command::new(BINARY)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromium");
        let mut c = Chromium {
            child,
            ws: None,
            profile,
            next_id: 0,
            errors: Vec::new(),
        };
        // Attached after `c` exists, so a failure here still kills the browser (Drop).
        c.ws = Some(c.attach());
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            c.call(domain, json!({}));
        }
        c
    }

    /// Connects to the page target named in the profile's DevToolsActivePort file.
    fn attach(&mut self) -> TcpStream {
        let file = self.profile.join("DevToolsActivePort");
        let deadline = Instant::now() + WAIT;
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok())
            {
                break p;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("chromium exited ({st}) before opening DevTools");
            }
            assert!(
                Instant::now() < deadline,
                "chromium opened no DevTools port"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let list = loop {
            let l = http_get(port, "/json/list").unwrap_or_default();
            let v: Value = serde_json::from_str(&l).unwrap_or(Value::Null);
            if let Some(url) = v.as_array().and_then(|a| {
                a.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(String::from))
            }) {
                break url;
            }
            assert!(Instant::now() < deadline, "no page target: {l}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let path = list
            .split_once(&format!("127.0.0.1:{port}"))
            .map(|(_, p)| p.to_string())
            .expect("ws url");
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("devtools connect");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: cmluZ3dheS10ZXN0LWtleQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .expect("ws handshake");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                Ok(_) => panic!("devtools closed during the handshake"),
                Err(e) if is_timeout(&e) && Instant::now() < deadline => {}
                Err(e) => panic!("devtools handshake: {e}"),
            }
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "devtools refused: {head}");
        s
    }

    /// Sends one DevTools command and waits for its result (events meanwhile are recorded).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// `call`, with the protocol's error returned (e.g. a page navigating away mid-evaluate).
    pub fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        let ws = self.ws.as_mut().expect("attached");
        send_frame(ws, msg.as_bytes()).expect("devtools send");
        let deadline = Instant::now() + WAIT;
        loop {
            let ws = self.ws.as_mut().expect("attached");
            let text =
                read_message(ws, deadline).unwrap_or_else(|e| panic!("devtools {method}: {e}"));
            let v: Value = serde_json::from_str(&text).expect("devtools json");
            if v["id"] == id {
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
            self.event(&v);
        }
    }

    fn event(&mut self, v: &Value) {
        let p = &v["params"];
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => self
                .errors
                .push(format!("exception: {}", p["exceptionDetails"])),
            Some("Runtime.consoleAPICalled") if p["type"] == "error" || p["type"] == "assert" => {
                self.errors
                    .push(format!("console.{}: {}", p["type"], p["args"]))
            }
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => self
                .errors
                .push(format!("log: {} {}", p["entry"]["text"], p["entry"]["url"])),
            _ => {}
        }
    }

    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// Evaluates `expr` in the page and returns its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is `true`, up to `timeout`; returns how long that took. A page
    /// still navigating (no context to evaluate in) counts as not yet.
    pub fn wait_true(&mut self, expr: &str, timeout: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            let r = self.try_call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            );
            if r.is_ok_and(|r| r["result"]["value"] == Value::Bool(true)) {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Sets the viewport (a phone: 390 wide, mobile) for the next screenshot.
    pub fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        );
    }

    /// Writes a PNG of the page to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// GET over a fresh connection; the DevTools server keeps it open, so the body is read by its
/// Content-Length.
fn http_get(port: u16, path: &str) -> io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One masked text frame (clients must mask; the key need not be secret here).
fn send_frame(s: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let mut f = vec![0x81u8];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let key = [0x5a, 0x17, 0xc3, 0x8e];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    s.write_all(&f)
}

fn read_exact_by(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        match s.read(&mut buf[at..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => at += n,
            Err(e) if is_timeout(&e) && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One whole message (continuation frames joined); pings are answered.
fn read_message(s: &mut TcpStream, deadline: Instant) -> io::Result<String> {
    let mut msg = Vec::new();
    loop {
        let mut h = [0u8; 2];
        read_exact_by(s, &mut h, deadline)?;
        let (fin, op) = (h[0] & 0x80 != 0, h[0] & 0x0f);
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            read_exact_by(s, &mut b, deadline)?;
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            read_exact_by(s, &mut b, deadline)?;
            len = u64::from_be_bytes(b);
        }
        let mut data = vec![0u8; len as usize];
        read_exact_by(s, &mut data, deadline)?;
        match op {
            0x9 => {
                let mut f = vec![0x8a, 0x80 | data.len() as u8, 0, 0, 0, 0];
                f.extend_from_slice(&data);
                s.write_all(&f)?;
            }
            0x8 => return Err(io::Error::other("devtools closed the connection")),
            0xa => {}
            _ => {
                msg.extend_from_slice(&data);
                if fin {
                    return Ok(String::from_utf8_lossy(&msg).into_owned());
                }
            }
        }
    }
}
