//! Upstream TLS end to end: verification against a CA bundle, SNI, client certificates, pooled reuse,
//! and 502 for an untrusted or misnamed upstream certificate. The TLS origin is a blocking rustls server here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::harness::tls::{provider, roots, Pki, T};
use crate::harness::{route, server, upstream, Gateway};
use rustls::pki_types::CertificateDer;
use rustls::StreamOwned;

/// A blocking TLS origin: answers every GET with 200 "tls-origin"; counts TCP connections and
/// records the SNI each one sent.
struct TlsOrigin {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    snis: Arc<Mutex<Vec<Option<String>>>>,
}

fn tls_origin(pki: &Pki, file: &str, client_ca: Option<&str>) -> TlsOrigin {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = CertificateDer::pem_file_iter(pki.dir.join(format!("{file}.pem")))
        .expect("origin cert")
        .map(|c| c.expect("pem"))
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.dir.join(format!("{file}.key")))
        .expect("key");
    let b = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let b = match client_ca {
        Some(pem) => b.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(pem)),
                provider(),
            )
            .build()
            .expect("client verifier"),
        ),
        None => b.with_no_client_auth(),
    };
    let cfg = Arc::new(b.with_single_cert(certs, key).expect("origin config"));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let snis = Arc::new(Mutex::new(Vec::new()));
    let (c2, s2) = (conns.clone(), snis.clone());
    thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            c2.fetch_add(1, SeqCst);
            let (cfg, snis) = (cfg.clone(), s2.clone());
            thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(T));
                let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                    return;
                };
                let mut s = StreamOwned::new(conn, tcp);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut recorded = false;
                loop {
                    let n = match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if !recorded {
                        snis.lock()
                            .expect("lock")
                            .push(s.conn.server_name().map(String::from));
                        recorded = true;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..p + 4);
                        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\ntls-origin";
                        if s.write_all(resp).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    TlsOrigin { addr, conns, snis }
}

fn plain_gateway_to(origin: SocketAddr, upstream_extra: &str) -> Gateway {
    Gateway::start(&format!(
        "{}{}{}",
        server(&[]),
        upstream("backend", &[origin], upstream_extra),
        route("default", &["/*"], "backend", "")
    ))
}

fn plain_get(gw: &Gateway, n: usize) -> Vec<(u16, String)> {
    let mut s = TcpStream::connect(gw.addr).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    let mut out = Vec::new();
    for _ in 0..n {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut buf = Vec::new();
        let mut b = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let k = s.read(&mut b).expect("read");
            assert!(k > 0, "gateway closed");
            buf.extend_from_slice(&b[..k]);
        }
        let text = String::from_utf8_lossy(&buf).to_string();
        let status: u16 = text[9..12].parse().expect("status");
        let len: usize = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().expect("len"))
            })
            .expect("content-length");
        let start = text.find("\r\n\r\n").expect("head") + 4;
        while buf.len() < start + len {
            let k = s.read(&mut b).expect("read body");
            assert!(k > 0, "gateway closed in body");
            buf.extend_from_slice(&b[..k]);
        }
        out.push((
            status,
            String::from_utf8_lossy(&buf[start..start + len]).to_string(),
        ));
    }
    out
}

#[test]
fn upstream_tls_verifies_sets_sni_and_reuses_pooled_connections() {
    let pki = Pki::new("up");
    pki.leaf("origin", &["origin.test"]);
    pki.leaf("client", &["gateway-client"]);
    let origin = tls_origin(&pki, "origin", Some(&pki.root_pem));
    let gw = plain_gateway_to(
        origin.addr,
        &format!(
            "scheme = \"https\"\ntls = {{ ca = \"{}\", sni = \"origin.test\", client_cert = \"{}\", client_key = \"{}\" }}",
            pki.path("root.pem"), pki.path("client.pem"), pki.path("client.key")
        ),
    );
    let got = plain_get(&gw, 5);
    assert!(
        got.iter().all(|r| *r == (200, "tls-origin".to_string())),
        "{got:?}"
    );
    assert_eq!(
        origin.conns.load(SeqCst),
        1,
        "one pooled TLS connection served all five"
    );
    assert_eq!(
        *origin.snis.lock().expect("lock"),
        vec![Some("origin.test".to_string())]
    );
    // A second client connection still reuses the pooled upstream connection.
    assert_eq!(plain_get(&gw, 1)[0].0, 200);
    assert_eq!(origin.conns.load(SeqCst), 1);
}

#[test]
fn upstream_with_an_untrusted_certificate_is_502_unless_verify_is_off() {
    let pki = Pki::new("upbad");
    pki.leaf("origin", &["origin.test"]);
    let stranger = Pki::new("upbad-ca");
    let origin = tls_origin(&pki, "origin", None);
    let gw = plain_gateway_to(
        origin.addr,
        &format!(
            "tls = {{ ca = \"{}\", sni = \"origin.test\" }}",
            stranger.path("root.pem")
        ),
    );
    assert_eq!(
        plain_get(&gw, 1)[0].0,
        502,
        "certificate from an untrusted CA"
    );
    let wrong_name = plain_gateway_to(
        origin.addr,
        &format!(
            "tls = {{ ca = \"{}\", sni = \"elsewhere.test\" }}",
            pki.path("root.pem")
        ),
    );
    assert_eq!(
        plain_get(&wrong_name, 1)[0].0,
        502,
        "certificate for another name"
    );
    let lax = plain_gateway_to(origin.addr, "tls = { verify = false }");
    assert_eq!(plain_get(&lax, 1)[0], (200, "tls-origin".to_string()));
}
