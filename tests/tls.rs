//! TLS end to end against the real binary: SNI selection, default/strict, ECDSA+RSA, chains, resumption
//! across shards, mTLS, upstream TLS (verify, 502, pooling), SIGHUP reload, refused files. Certificates made here.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{check_config_file, route, server, upstream, Gateway, Origin, Resp, TempFile};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// certificates
// ---------------------------------------------------------------------------

/// A root CA and an intermediate; leaves are issued by the intermediate, so every served
/// chain must carry the intermediate for a client that trusts only the root.
struct Pki {
    dir: PathBuf,
    root_pem: String,
    inter_pem: String,
    inter: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    p
}

impl Pki {
    fn new(tag: &str) -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringway-tls-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let root_key = KeyPair::generate().expect("root key");
        let root_params = ca_params(&format!("{tag} root"));
        let root_cert = root_params.self_signed(&root_key).expect("root");
        let root = Issuer::new(root_params, root_key);
        let inter_key = KeyPair::generate().expect("inter key");
        let inter_params = ca_params(&format!("{tag} intermediate"));
        let inter_cert = inter_params.signed_by(&inter_key, &root).expect("inter");
        let pki = Pki {
            dir,
            root_pem: root_cert.pem(),
            inter_pem: inter_cert.pem(),
            inter: Issuer::new(inter_params, inter_key),
        };
        pki.write("root.pem", &pki.root_pem);
        pki
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("write pem");
        p
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Issues a leaf for `names` (CN = first name) with `key`; writes `<file>.pem` (leaf +
    /// intermediate) and `<file>.key`.
    fn leaf_with(
        &self,
        file: &str,
        names: &[&str],
        key: KeyPair,
        expired: bool,
    ) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
        p.distinguished_name.push(DnType::CommonName, names[0]);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &self.inter).expect("leaf");
        self.write(
            &format!("{file}.pem"),
            &format!("{}{}", cert.pem(), self.inter_pem),
        );
        self.write(&format!("{file}.key"), &key.serialize_pem());
        cert.der().clone()
    }

    fn leaf(&self, file: &str, names: &[&str]) -> CertificateDer<'static> {
        self.leaf_with(file, names, KeyPair::generate().expect("key"), false)
    }

    fn client_config(&self) -> ClientConfig {
        client_config_with(&self.root_pem, None, None)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn roots(pem: &str) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut r = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        r.add(c.expect("root pem")).expect("add root");
    }
    r
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config_with(
    root_pem: &str,
    versions: Option<&[&'static rustls::SupportedProtocolVersion]>,
    client_cert: Option<(&Path, &Path)>,
) -> ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let b = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions.unwrap_or(rustls::DEFAULT_VERSIONS))
        .expect("versions")
        .with_root_certificates(roots(root_pem));
    let mut cfg = match client_cert {
        Some((c, k)) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c)
                    .expect("cert")
                    .map(|c| c.expect("cert pem"))
                    .collect(),
                rustls::pki_types::PrivateKeyDer::from_pem_file(k).expect("key"),
            )
            .expect("client auth"),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

// ---------------------------------------------------------------------------
// TLS client over std sockets
// ---------------------------------------------------------------------------

struct TlsClient {
    s: StreamOwned<ClientConnection, TcpStream>,
}

impl TlsClient {
    /// Connects and completes the handshake (Err with rustls' reason on refusal).
    fn connect(addr: SocketAddr, name: &str, cfg: &Arc<ClientConfig>) -> Result<TlsClient, String> {
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(T)).expect("timeout");
        tcp.set_write_timeout(Some(T)).expect("timeout");
        let name = ServerName::try_from(name.to_string()).expect("server name");
        let conn = ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
        let mut s = StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
        }
        Ok(TlsClient { s })
    }

    fn peer_leaf(&self) -> CertificateDer<'static> {
        self.s.conn.peer_certificates().expect("peer certs")[0].clone()
    }

    fn resumed(&self) -> bool {
        self.s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// One keep-alive GET; returns (status, body). Errors are I/O or TLS failures.
    fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.s
            .write_all(req.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = self.s.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before the response head".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status: u16 = head[9..12]
            .parse()
            .map_err(|_| format!("bad head {head}"))?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| format!("no content-length in {head}"))?;
        while buf.len() < head_end + len {
            let n = self.s.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed inside the body".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok((
            status,
            String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string(),
        ))
    }
}

fn proto_origin() -> Origin {
    Origin::start("o", |r| {
        Resp::text(200, r.header("x-forwarded-proto").unwrap_or("none")).into()
    })
}

/// A gateway with one TLS listener (`listen_extra` are more keys of that table) in front of `origin`.
fn tls_gateway(origin: &Origin, workers: usize, listen_extra: &str) -> Gateway {
    let cfg = format!(
        "[server]\nworkers = {workers}\n\n[[server.listen]]\naddr = \"127.0.0.1:0\"\ntls = true\n{listen_extra}\n\n{}{}",
        upstream("backend", &[origin.addr], ""),
        route("default", &["/*"], "backend", "")
    );
    Gateway::start(&cfg)
}

// ---------------------------------------------------------------------------
// tests: termination
// ---------------------------------------------------------------------------

#[test]
fn sni_picks_exact_wildcard_explicit_and_default_certificates() {
    let pki = Pki::new("sni");
    let a = pki.leaf("a", &["a.test"]);
    let w = pki.leaf("w", &["*.wild.test"]);
    let c = pki.leaf("c", &["other.test"]);
    let origin = proto_origin();
    let gw = tls_gateway(
        &origin,
        1,
        &format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\", sni = [\"c.test\"] }}]",
            pki.path("a.pem"), pki.path("a.key"), pki.path("w.pem"), pki.path("w.key"), pki.path("c.pem"), pki.path("c.key")
        ),
    );
    let cfg = Arc::new(pki.client_config());
    let mut ca = TlsClient::connect(gw.addr, "a.test", &cfg).expect("a.test handshake");
    assert_eq!(ca.peer_leaf(), a, "exact SAN name");
    assert_eq!(ca.s.conn.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN");
    assert_eq!(
        ca.get("/").expect("request"),
        (200, "https".to_string()),
        "X-Forwarded-Proto"
    );
    assert_eq!(
        ca.get("/again").expect("keep-alive request"),
        (200, "https".to_string())
    );
    let cw = TlsClient::connect(gw.addr, "x.wild.test", &cfg).expect("wildcard handshake");
    assert_eq!(cw.peer_leaf(), w, "wildcard SAN name");
    // Unknown name and no SNI at all (an IP name sends none) both get the first certificate;
    // the client then rejects it for the name, which is the point: the default was served.
    let mut nocheck = (*cfg).clone();
    nocheck
        .dangerous()
        .set_certificate_verifier(Arc::new(AnyCert(provider(), None)));
    let nocheck = Arc::new(nocheck);
    // c.test is served by a certificate whose own SAN is other.test, so only a lax client takes it.
    let cc = TlsClient::connect(gw.addr, "c.test", &nocheck).expect("explicit sni handshake");
    assert_eq!(cc.peer_leaf(), c, "explicit sni list overrides SANs");
    let cu = TlsClient::connect(gw.addr, "unknown.test", &nocheck).expect("unknown sni");
    assert_eq!(cu.peer_leaf(), a, "unknown name gets the default");
    let ci = TlsClient::connect(gw.addr, "127.0.0.1", &nocheck).expect("no sni");
    assert_eq!(ci.peer_leaf(), a, "missing SNI gets the default");
    assert!(
        TlsClient::connect(gw.addr, "deep.x.wild.test", &cfg).is_err(),
        "a wildcard covers one label only"
    );
}

#[test]
fn sni_strict_refuses_unknown_and_missing_names() {
    let pki = Pki::new("strict");
    pki.leaf("a", &["a.test"]);
    let origin = proto_origin();
    let gw = tls_gateway(
        &origin,
        1,
        &format!(
            "sni_strict = true\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            pki.path("a.pem"),
            pki.path("a.key")
        ),
    );
    let cfg = Arc::new(pki.client_config());
    let mut ok = TlsClient::connect(gw.addr, "a.test", &cfg).expect("known name");
    assert_eq!(ok.get("/").expect("request").0, 200);
    let mut nocheck = (*cfg).clone();
    nocheck
        .dangerous()
        .set_certificate_verifier(Arc::new(AnyCert(provider(), None)));
    let nocheck = Arc::new(nocheck);
    assert!(
        TlsClient::connect(gw.addr, "b.test", &nocheck).is_err(),
        "unknown name refused"
    );
    assert!(
        TlsClient::connect(gw.addr, "127.0.0.1", &nocheck).is_err(),
        "missing SNI refused"
    );
}

#[test]
fn ecdsa_and_rsa_certificates_for_one_name_follow_client_support() {
    let pki = Pki::new("algs");
    let ec = pki.leaf("ec", &["both.test"]);
    // ring cannot generate RSA keys; the openssl CLI does.
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("run openssl genpkey");
    assert!(out.status.success(), "openssl genpkey failed");
    let rsa_key = KeyPair::from_pem(&String::from_utf8_lossy(&out.stdout)).expect("rsa key");
    let rsa = pki.leaf_with("rsa", &["both.test"], rsa_key, false);
    let origin = proto_origin();
    let gw =
        tls_gateway(
            &origin,
            1,
            &format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}]",
            pki.path("ec.pem"), pki.path("ec.key"), pki.path("rsa.pem"), pki.path("rsa.key")
        ),
        );
    let cfg = Arc::new(pki.client_config());
    let mut c = TlsClient::connect(gw.addr, "both.test", &cfg).expect("ecdsa-capable client");
    assert_eq!(c.peer_leaf(), ec);
    assert_eq!(c.get("/").expect("request").0, 200);
    // A client that only verifies RSA signatures gets the RSA certificate, on 1.2 and 1.3.
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut rsa_only = client_config_with(&pki.root_pem, Some(&[v]), None);
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(&pki.root_pem)),
            provider(),
        )
        .build()
        .expect("verifier");
        rsa_only
            .dangerous()
            .set_certificate_verifier(Arc::new(RsaOnly(inner)));
        let mut r =
            TlsClient::connect(gw.addr, "both.test", &Arc::new(rsa_only)).expect("rsa-only client");
        assert_eq!(r.peer_leaf(), rsa, "{v:?}");
        assert_eq!(r.get("/").expect("request").0, 200);
    }
}

#[test]
fn sessions_resume_on_any_shard_with_tls13_and_tls12_tickets() {
    let pki = Pki::new("resume");
    pki.leaf("a", &["a.test"]);
    let origin = proto_origin();
    let gw = tls_gateway(
        &origin,
        2,
        &format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            pki.path("a.pem"),
            pki.path("a.key")
        ),
    );
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = Arc::new(client_config_with(&pki.root_pem, Some(&[v]), None));
        let mut first = TlsClient::connect(gw.addr, "a.test", &cfg).expect("full handshake");
        assert!(!first.resumed());
        // The request makes the client read the server's TLS 1.3 tickets.
        assert_eq!(first.get("/").expect("request").0, 200);
        // SO_REUSEPORT spreads these over both shards (all eight on one shard: p = 1/128); every
        // one resumes, so the ticket keys are the node's, not a shard's.
        for i in 0..8 {
            let mut c = TlsClient::connect(gw.addr, "a.test", &cfg).expect("resumed handshake");
            assert!(c.resumed(), "{v:?}: connection {i} did not resume");
            assert_eq!(c.get("/").expect("request").0, 200);
        }
    }
}

#[test]
fn min_version_13_refuses_tls12_clients() {
    let pki = Pki::new("v13");
    pki.leaf("a", &["a.test"]);
    let origin = proto_origin();
    let gw = tls_gateway(
        &origin,
        1,
        &format!(
            "min_version = \"1.3\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            pki.path("a.pem"),
            pki.path("a.key")
        ),
    );
    let v12 = Arc::new(client_config_with(
        &pki.root_pem,
        Some(&[&rustls::version::TLS12]),
        None,
    ));
    assert!(TlsClient::connect(gw.addr, "a.test", &v12).is_err());
    let v13 = Arc::new(client_config_with(
        &pki.root_pem,
        Some(&[&rustls::version::TLS13]),
        None,
    ));
    assert!(TlsClient::connect(gw.addr, "a.test", &v13).is_ok());
}

#[test]
fn mtls_accepts_clients_of_the_ca_and_refuses_others() {
    let pki = Pki::new("mtls");
    pki.leaf("a", &["a.test"]);
    pki.leaf("client", &["client-a"]);
    let other = Pki::new("mtls-other");
    other.leaf("stranger", &["client-b"]);
    let origin = proto_origin();
    let gw = tls_gateway(
        &origin,
        1,
        &format!(
            "client_ca = \"{}\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            pki.path("root.pem"),
            pki.path("a.pem"),
            pki.path("a.key")
        ),
    );
    let good = Arc::new(client_config_with(
        &pki.root_pem,
        None,
        Some((&pki.dir.join("client.pem"), &pki.dir.join("client.key"))),
    ));
    let mut c = TlsClient::connect(gw.addr, "a.test", &good).expect("client of the CA");
    assert_eq!(c.get("/").expect("request"), (200, "https".to_string()));
    // TLS 1.3 clients learn of a refused certificate on their first read, so each refusal
    // is checked as "no response".
    let none = Arc::new(pki.client_config());
    let refused = |cfg: &Arc<ClientConfig>| match TlsClient::connect(gw.addr, "a.test", cfg) {
        Err(_) => true,
        Ok(mut c) => c.get("/").is_err(),
    };
    assert!(refused(&none), "no client certificate");
    let stranger = Arc::new(client_config_with(
        &pki.root_pem,
        None,
        Some((
            &other.dir.join("stranger.pem"),
            &other.dir.join("stranger.key"),
        )),
    ));
    assert!(refused(&stranger), "certificate from another CA");
    assert_eq!(
        origin.request_count(),
        1,
        "refused clients never reached the upstream"
    );
}

// ---------------------------------------------------------------------------
// tests: upstream TLS
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// tests: reload and refused files
// ---------------------------------------------------------------------------

#[test]
fn sighup_reloads_certificates_without_dropping_connections_and_keeps_them_on_a_bad_file() {
    let pki = Pki::new("reload");
    let v1 = pki.leaf("a", &["a.test"]);
    let origin = proto_origin();
    let gw = tls_gateway(
        &origin,
        2,
        &format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            pki.path("a.pem"),
            pki.path("a.key")
        ),
    );
    let cfg = Arc::new(pki.client_config());
    let mut old = TlsClient::connect(gw.addr, "a.test", &cfg).expect("handshake");
    assert_eq!(old.peer_leaf(), v1);
    assert_eq!(old.get("/").expect("request").0, 200);

    let v2 = pki.leaf("a", &["a.test"]);
    gw.send_signal("HUP");
    gw.stderr
        .wait_for(|l| l.contains("TLS certificates reloaded"), T)
        .expect("reload logged");
    // Shards pick the new config up on their next control tick (50 ms).
    thread::sleep(Duration::from_millis(300));
    for _ in 0..4 {
        let fresh = TlsClient::connect(gw.addr, "a.test", &Arc::new(pki.client_config()))
            .expect("new handshake");
        assert_eq!(
            fresh.peer_leaf(),
            v2,
            "new connections see the new certificate"
        );
    }
    assert_eq!(
        old.get("/after")
            .expect("old connection survives the reload")
            .0,
        200
    );

    pki.write(
        "a.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    gw.send_signal("HUP");
    let line = gw
        .stderr
        .wait_for(|l| l.contains("reload failed"), T)
        .expect("failed reload logged");
    assert!(
        line.contains(&pki.path("a.pem")),
        "error names the file: {line}"
    );
    thread::sleep(Duration::from_millis(300));
    // A new client (no cached session, which would resume and report the old chain).
    let fresh = TlsClient::connect(gw.addr, "a.test", &Arc::new(pki.client_config()))
        .expect("still serving");
    assert_eq!(fresh.peer_leaf(), v2, "the last good certificate stays");
    assert_eq!(old.get("/still").expect("old connection").0, 200);
}

#[test]
fn bad_expired_and_mismatched_files_are_refused_naming_the_file() {
    let pki = Pki::new("bad");
    pki.leaf("good", &["a.test"]);
    pki.leaf_with(
        "expired",
        &["a.test"],
        KeyPair::generate().expect("key"),
        true,
    );
    pki.write("garbage.pem", "hello\n");
    let other_key = KeyPair::generate().expect("key");
    pki.write("other.key", &other_key.serialize_pem());
    let cases = [
        ("expired.pem", "expired.key", "expired.pem", "expired"),
        ("good.pem", "other.key", "other.key", "does not match"),
        ("garbage.pem", "good.key", "garbage.pem", "CERTIFICATE"),
        ("missing.pem", "good.key", "missing.pem", "cannot read"),
        ("good.pem", "garbage.pem", "garbage.pem", "private key"),
    ];
    for (cert, key, named, why) in cases {
        let cfg = TempFile::new(&format!(
            "[server]\nworkers = 1\n[[server.listen]]\naddr = \"127.0.0.1:0\"\ntls = true\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            pki.path(cert),
            pki.path(key)
        ));
        let out = check_config_file(&cfg.path);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(!out.status.success(), "{cert}/{key} accepted: {all}");
        assert!(
            all.contains(&pki.path(named)) && all.contains(why),
            "{cert}/{key}: {all}"
        );
        assert!(all.contains("server.listen[0]"), "key path: {all}");
    }
    // Relative paths resolve against the config file's directory.
    let rel = pki.write(
        "rel.toml",
        "[server]\nworkers = 1\n[[server.listen]]\naddr = \"127.0.0.1:0\"\ntls = true\ncertificates = [{ cert = \"good.pem\", key = \"good.key\" }]\n",
    );
    let out = check_config_file(&rel);
    assert!(
        out.status.success(),
        "relative paths: {}{}",
        out.stdout,
        out.stderr
    );
    // `run` with a bad file exits non-zero before listening.
    let cfg = TempFile::new(&format!(
        "[server]\nworkers = 1\n[[server.listen]]\naddr = \"127.0.0.1:0\"\ntls = true\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        pki.path("expired.pem"),
        pki.path("expired.key")
    ));
    let out = common::run_cli(&["run", "-c", cfg.path_str()], T);
    assert!(
        !out.status.success() && out.stderr.contains("expired"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------
// client-side verifiers for the tests
// ---------------------------------------------------------------------------

/// Accepts any certificate (signatures still checked); `Some(schemes)` limits what it offers.
#[derive(Debug)]
struct AnyCert(
    Arc<rustls::crypto::CryptoProvider>,
    Option<Vec<SignatureScheme>>,
);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.1
            .clone()
            .unwrap_or_else(|| self.0.signature_verification_algorithms.supported_schemes())
    }
}

/// Full verification, but the client says it can only check RSA signatures.
#[derive(Debug)]
struct RsaOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for RsaOnly {
    fn verify_server_cert(
        &self,
        e: &CertificateDer<'_>,
        i: &[CertificateDer<'_>],
        n: &ServerName<'_>,
        o: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.verify_server_cert(e, i, n, o, now)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}
