//! Owns the etcd server a test starts (Debian's `etcd`, ephemeral ports, a temp data dir, killed
//! on drop), its v3 JSON gateway as a small client, and a TCP relay that can cut one gateway off.
//! Must not start gateways or build their configs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn free_port() -> u16 {
    super::closed_port().port()
}

/// One etcd member on 127.0.0.1.
pub struct Etcd {
    child: Option<Child>,
    pub client: SocketAddr,
    peer: u16,
    dir: PathBuf,
}

impl Etcd {
    pub fn start() -> Etcd {
        let dir = std::env::temp_dir().join(format!(
            "ringway-etcd-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd temp dir");
        let mut e = Etcd {
            child: None,
            client: SocketAddr::from(([127, 0, 0, 1], free_port())),
            peer: free_port(),
            dir,
        };
        e.spawn();
        e
    }

    /// `http://127.0.0.1:PORT`, for `config_source.etcd.endpoints`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    fn spawn(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args([
                "--name",
                "t",
                "--data-dir",
                self.dir.join("data").to_str().expect("utf-8 path"),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("t={peer}"),
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `etcd` ({e}); install the Debian package etcd-server")
            });
        self.child = Some(child);
        let ok = super::wait_until(Duration::from_secs(20), || {
            self.try_call("/v3/kv/range", &json!({"key": B64.encode("probe")}))
                .is_ok()
        });
        assert!(ok, "etcd did not answer on {client}:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// SIGKILL: what a crash looks like to its clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same ports and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            super::send_signal(c.id(), sig);
        }
    }

    fn try_call(&self, path: &str, body: &Value) -> Result<Value, String> {
        call(self.client, path, body)
    }

    fn call(&self, path: &str, body: &Value) -> Value {
        self.try_call(path, body)
            .unwrap_or_else(|e| panic!("etcd {path}: {e}"))
    }

    fn rev(v: &Value) -> i64 {
        v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    }

    /// Puts `value` at `key`; returns the revision it was committed at.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        Etcd::rev(&self.call(
            "/v3/kv/put",
            &json!({"key": B64.encode(key), "value": B64.encode(value)}),
        ))
    }

    pub fn delete(&self, key: &str) -> i64 {
        Etcd::rev(&self.call("/v3/kv/deleterange", &json!({"key": B64.encode(key)})))
    }

    /// Every key under `prefix` (keys and values as text) and the revision read at.
    pub fn range(&self, prefix: &str) -> (Vec<(String, String)>, i64) {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(l) = end.last_mut() {
            *l += 1;
        }
        let v = self.call(
            "/v3/kv/range",
            &json!({"key": B64.encode(prefix), "range_end": B64.encode(&end)}),
        );
        let text = |k: &str, kv: &Value| {
            String::from_utf8(B64.decode(kv[k].as_str().unwrap_or("")).expect("base64"))
                .expect("utf-8")
        };
        let kvs = v["kvs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|kv| (text("key", kv), text("value", kv)))
                    .collect()
            })
            .unwrap_or_default();
        (kvs, Etcd::rev(&v))
    }

    /// Compacts (physically) up to the current revision; returns it.
    pub fn compact(&self) -> i64 {
        let rev = Etcd::rev(&self.call("/v3/kv/range", &json!({"key": B64.encode("x")})));
        self.call(
            "/v3/kv/compaction",
            &json!({"revision": rev.to_string(), "physical": true}),
        );
        rev
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One JSON-gateway call (`POST /v3/...`) over a fresh connection.
fn call(client: SocketAddr, path: &str, body: &Value) -> Result<Value, String> {
    let mut s =
        TcpStream::connect_timeout(&client, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").ok_or("no response head")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{path}: {head}\n{body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A TCP relay to etcd for one gateway: `cut` makes it a black hole (connections stay open,
/// nothing passes either way, new ones are accepted and starved), as a network partition does.
pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub fn start(to: SocketAddr) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").expect("relay listen");
        let addr = l.local_addr().expect("relay addr");
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (c2, s2, k2) = (cut.clone(), stop.clone(), conns.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(a) = conn else { continue };
                let Ok(b) = TcpStream::connect(to) else {
                    continue;
                };
                for s in [&a, &b] {
                    if let Ok(c) = s.try_clone() {
                        k2.lock().unwrap().push(c);
                    }
                }
                for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)]
                {
                    let cut = c2.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            // Cut: bytes are swallowed, as a partition loses them.
                            while cut.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay {
            addr,
            cut,
            stop,
            conns,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Ends the partition: the connections held during it are reset (as a long partition's
    /// TCP connections are, after retransmissions fail), new ones pass.
    pub fn heal(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.heal();
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Waits until `f` holds, polling every millisecond; returns how long it took.
pub fn time_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// One put (`Some`) or delete through the JSON gateway at `client`, for writer threads that do
/// not own the `Etcd`; Err while etcd is down.
pub fn write_at(client: SocketAddr, key: &str, value: Option<&str>) -> Result<(), String> {
    let r = match value {
        Some(v) => call(
            client,
            "/v3/kv/put",
            &json!({"key": B64.encode(key), "value": B64.encode(v)}),
        ),
        None => call(
            client,
            "/v3/kv/deleterange",
            &json!({"key": B64.encode(key)}),
        ),
    };
    r.map(|_| ())
}
