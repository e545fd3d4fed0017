//! Owns the real OpenID provider under test (npm `oidc-provider`, tests/oidc/start.mjs): starting
//! it on an ephemeral port, tokens from it, key rotation, its request counts. Must not start ringway.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The provider's issuer audience for JWT access tokens (the `resource` of tests/oidc/start.mjs).
pub const API: &str = "https://api.ringway.test";
/// The resource whose access tokens are opaque (introspected); their `aud` is still `API`.
pub const OPAQUE: &str = "https://api.ringway.test/opaque";
/// A resource with another audience.
pub const OTHER: &str = "https://other.ringway.test";

/// A running oidc-provider, killed on drop.
pub struct Oidc {
    pub addr: SocketAddr,
    child: Option<Child>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

impl Oidc {
    /// Starts tests/oidc/start.mjs with node; fails naming what is missing.
    pub fn start() -> Oidc {
        Oidc::start_with_web("http://127.0.0.1:1")
    }

    /// As `start`, with the browser client `web` registered for a gateway at `base`
    /// (`http://127.0.0.1:PORT`): its callback `base/callback`, post-logout `base/bye`.
    pub fn start_with_web(base: &str) -> Oidc {
        let d = dir();
        assert!(
            d.join("node_modules/oidc-provider").is_dir(),
            "the npm package oidc-provider is not installed: run `npm ci` in tests/oidc \
             (needs Node 18+, Debian package nodejs + npm; .ci/run does this)"
        );
        let mut child = Command::new("node")
            .arg("start.mjs")
            .env("RINGWAY_WEB", base)
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node (Debian package nodejs): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        // Drain stderr so the provider never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !line.contains("WARNING") {
                    eprintln!("[oidc] {line}");
                }
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(p) = line.strip_prefix("listening ") {
                    let _ = tx.send(p.trim().parse::<u16>().ok());
                    break;
                }
            }
            for _ in lines.map_while(Result::ok) {}
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .ok()
            .flatten()
            .expect("oidc-provider did not print `listening PORT` within 30 s");
        Oidc {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: Some(child),
        }
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn discovery(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer())
    }

    /// A client-credentials access token for `client` (secret `client-secret`) at `resource`.
    pub fn token(&self, client: &str, scope: &str, resource: &str) -> String {
        let body = format!(
            "grant_type=client_credentials&scope={}&resource={}",
            scope.replace(' ', "+"),
            resource
        );
        let (status, text) = self.http("POST", "/token", Some((client, &body)));
        assert_eq!(status, 200, "token for {client}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("token JSON");
        v["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// New signing keys go first (new tokens name their kid); the old ones stay published.
    pub fn rotate(&self) {
        let (status, text) = self.http("POST", "/test/rotate", None);
        assert_eq!(status, 200, "rotate: {text}");
    }

    /// The next introspection request is held unanswered until `release`.
    pub fn hold_next_introspection(&self) {
        let (status, text) = self.http("POST", "/test/hold-introspection", None);
        assert_eq!(status, 200, "hold: {text}");
    }

    /// Answers the held introspection request.
    pub fn release(&self) {
        let (status, text) = self.http("POST", "/test/release", None);
        assert_eq!(status, 200, "release: {text}");
    }

    /// Requests the provider received so far, by endpoint: `jwks`, `introspect`, `discovery`, `token`.
    pub fn count(&self, what: &str) -> u64 {
        let (status, text) = self.http("GET", "/test/counts", None);
        assert_eq!(status, 200, "counts: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("counts JSON");
        v[what].as_u64().expect("a count")
    }

    /// Kills the provider now (a provider outage mid-test).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One HTTP/1.1 exchange with `Connection: close`; `form` = (client id, urlencoded body)
    /// posted with client_secret_basic.
    fn http(&self, method: &str, path: &str, form: Option<(&str, &str)>) -> (u16, String) {
        use base64::Engine;
        let mut s = TcpStream::connect(self.addr).expect("connect to oidc-provider");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        let body = match form {
            Some((client, body)) => {
                let cred = base64::engine::general_purpose::STANDARD
                    .encode(format!("{client}:{client}-secret"));
                req.push_str(&format!(
                    "Authorization: Basic {cred}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                ));
                body
            }
            None => "",
        };
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).expect("write to oidc-provider");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let head_end = text.find("\r\n\r\n").map_or(text.len(), |i| i + 4);
        let mut body = text[head_end..].to_string();
        if text[..head_end]
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        (status, body)
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some(i) = s.find("\r\n") {
        let n = usize::from_str_radix(s[..i].trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        let start = i + 2;
        out.push_str(&s[start..(start + n).min(s.len())]);
        s = s.get(start + n + 2..).unwrap_or("");
    }
    out
}

impl Drop for Oidc {
    fn drop(&mut self) {
        self.stop();
    }
}
