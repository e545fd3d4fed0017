//! RFC 5424 syslog messages and their blocking delivery to a collector over UDP (RFC 5426), TCP
//! with octet counting (RFC 6587) or TLS (RFC 5425). For sender threads only, never a shard.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::util::civil::rfc3339_millis_now;

/// How messages travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One datagram per message; nothing tells the sender a message was lost.
    Udp,
    /// `LEN SP MSG` frames on one kept connection.
    Tcp,
    /// The TCP framing inside TLS.
    Tls,
}

/// Facility names of RFC 5424 table 1, by code.
const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];
const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

pub fn facility(name: &str) -> Result<u8, String> {
    FACILITIES
        .iter()
        .position(|f| *f == name)
        .map(|i| i as u8)
        .ok_or_else(|| format!("unknown facility {name:?}; expected one of {FACILITIES:?}"))
}

pub fn severity(name: &str) -> Result<u8, String> {
    SEVERITIES
        .iter()
        .position(|s| *s == name)
        .map(|i| i as u8)
        .ok_or_else(|| format!("unknown severity {name:?}; expected one of {SEVERITIES:?}"))
}

/// APP-NAME: 1..=48 printable ASCII characters (RFC 5424 section 6.2.5).
pub fn app_name(name: Option<&str>) -> Result<String, String> {
    let name = name.unwrap_or("ringway");
    if name.is_empty() || name.len() > 48 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("1..=48 printable characters, no spaces".into());
    }
    Ok(name.to_string())
}

/// Where and how to deliver, validated.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub transport: Transport,
    /// TLS only: the client config and the name the collector's certificate must carry.
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    pub timeout: Duration,
    /// PRI = facility * 8 + severity.
    pub pri: u8,
    pub app_name: String,
    pub msgid: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// A TLS client config for a collector: verified against `ca` (PEM bundle) or the web PKI
/// roots, or not verified at all when `verify` is false.
pub fn tls_config(ca: Option<&Path>, verify: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = super::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?;
    let cfg = if verify {
        let roots = match ca {
            Some(p) => super::tls::load_roots(p)?,
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(super::tls_client::no_verify(provider))
            .with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

/// This host's name for the HOSTNAME field (`-` when it has none).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`, which outlives the call.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if r != 0 || name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        "-".into()
    } else {
        name
    }
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`. Line breaks
/// in `msg` become spaces (a collector writing one line per message keeps it whole).
pub fn message(t: &Target, host: &str, msg: &str) -> String {
    let msg = msg
        .trim_end_matches(['\n', '\r'])
        .replace(['\n', '\r'], " ");
    format!(
        "<{}>1 {} {host} {} {} {} - {msg}",
        t.pri,
        rfc3339_millis_now(),
        t.app_name,
        std::process::id(),
        t.msgid
    )
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

/// A connection to one collector, opened on first use and again after a failure.
pub struct Syslog {
    target: Target,
    host: String,
    conn: Option<Conn>,
    udp: Option<UdpSocket>,
}

impl Syslog {
    pub fn new(target: Target) -> Syslog {
        Syslog {
            target,
            host: hostname(),
            conn: None,
            udp: None,
        }
    }

    /// Sends `lines` as one message each: all or an error (then the connection is dropped and
    /// the caller may retry the whole batch; the collector may then see some lines twice).
    pub fn send(&mut self, lines: &[&str]) -> Result<(), String> {
        let r = self.try_send(lines);
        if r.is_err() {
            self.conn = None;
        }
        r.map_err(|e| format!("syslog {}: {e}", self.target.addr))
    }

    fn try_send(&mut self, lines: &[&str]) -> io::Result<()> {
        if self.target.transport == Transport::Udp {
            let sock = match &self.udp {
                Some(s) => s,
                None => {
                    let bind = if self.target.addr.is_ipv6() {
                        "[::]:0"
                    } else {
                        "0.0.0.0:0"
                    };
                    let s = UdpSocket::bind(bind)?;
                    s.connect(self.target.addr)?;
                    s.set_write_timeout(Some(self.target.timeout))?;
                    self.udp.insert(s)
                }
            };
            for l in lines {
                sock.send(message(&self.target, &self.host, l).as_bytes())?;
            }
            return Ok(());
        }
        let mut frames = Vec::with_capacity(lines.iter().map(|l| l.len() + 80).sum());
        for l in lines {
            let m = message(&self.target, &self.host, l);
            let _ = write!(frames, "{} ", m.len());
            frames.extend_from_slice(m.as_bytes());
        }
        if self.conn.as_ref().is_some_and(|c| !alive(c)) {
            self.conn = None;
        }
        let conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect()?,
        };
        let conn = self.conn.insert(conn);
        match conn {
            Conn::Tcp(s) => s.write_all(&frames).and_then(|()| s.flush()),
            Conn::Tls(s) => s.write_all(&frames).and_then(|()| s.flush()),
        }
    }

    fn connect(&self) -> io::Result<Conn> {
        let tcp = TcpStream::connect_timeout(&self.target.addr, self.target.timeout)?;
        tcp.set_write_timeout(Some(self.target.timeout))?;
        tcp.set_read_timeout(Some(self.target.timeout))?;
        tcp.set_nodelay(true)?;
        let Some((cfg, name)) = &self.target.tls else {
            return Ok(Conn::Tcp(tcp));
        };
        let c = ClientConnection::new(cfg.clone(), name.clone()).map_err(io::Error::other)?;
        let mut s = StreamOwned::new(c, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(Conn::Tls(Box::new(s)))
    }
}

/// Whether a kept connection still looks open: a collector that restarted closed it, and a
/// write into it would seem to succeed and be lost. A non-blocking peek sees that close (EOF or
/// an error); syslog collectors never send, so anything readable means the peer went away.
fn alive(c: &Conn) -> bool {
    let s = match c {
        Conn::Tcp(s) => s,
        Conn::Tls(s) => &s.sock,
    };
    let mut b = [0u8; 1];
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let r = s.peek(&mut b);
    let _ = s.set_nonblocking(false);
    matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;

    fn target(addr: SocketAddr, transport: Transport) -> Target {
        Target {
            addr,
            transport,
            tls: None,
            timeout: Duration::from_secs(2),
            pri: facility("local0").unwrap() * 8 + severity("info").unwrap(),
            app_name: "ringway".into(),
            msgid: "access".into(),
        }
    }

    #[test]
    fn rfc5424_message_shape() {
        let t = target("127.0.0.1:9".parse().unwrap(), Transport::Udp);
        let m = message(&t, "edge1", "{\"a\":1}\n");
        let parts: Vec<&str> = m.splitn(8, ' ').collect();
        assert_eq!(parts[0], "<134>1");
        assert!(
            parts[1].ends_with('Z') && parts[1].len() == 24,
            "{}",
            parts[1]
        );
        assert_eq!(
            &parts[2..],
            [
                "edge1",
                "ringway",
                &std::process::id().to_string(),
                "access",
                "-",
                "{\"a\":1}"
            ]
        );
        assert!(facility("local9").is_err() && severity("loud").is_err());
    }

    #[test]
    fn tcp_frames_are_octet_counted_and_a_closed_peer_is_noticed() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = Syslog::new(target(l.local_addr().unwrap(), Transport::Tcp));
        s.send(&["one", "two words"]).unwrap();
        let (peer, _) = l.accept().unwrap();
        let mut r = BufReader::new(peer);
        for want in ["one", "two words"] {
            let mut len = Vec::new();
            r.read_until(b' ', &mut len).unwrap();
            let n: usize = std::str::from_utf8(&len).unwrap().trim().parse().unwrap();
            let mut msg = vec![0u8; n];
            r.read_exact(&mut msg).unwrap();
            assert!(String::from_utf8(msg)
                .unwrap()
                .ends_with(&format!(" - {want}")));
        }
        // The collector goes away: the next batch opens a new connection instead of writing
        // into the dead one.
        drop(r);
        std::thread::sleep(Duration::from_millis(50));
        s.send(&["three"]).unwrap();
        let (mut peer, _) = l.accept().expect("a new connection");
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 512];
        let n = peer.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.ends_with(" - three"), "{text}");
    }
}
