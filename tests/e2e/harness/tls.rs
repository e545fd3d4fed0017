//! Owns the TLS test kit: a PKI made with rcgen (root, intermediate, leaves), a blocking rustls
//! client over std sockets, lax client verifiers. Must not assert anything about ringway; tests do.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

pub const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// certificates
// ---------------------------------------------------------------------------

/// A root CA and an intermediate; leaves are issued by the intermediate, so every served
/// chain must carry the intermediate for a client that trusts only the root.
pub struct Pki {
    pub dir: PathBuf,
    pub root_pem: String,
    inter_pem: String,
    inter: Issuer<'static, KeyPair>,
}

pub fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    p
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
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
        // On disk too, for tools that act as the intermediate (an OCSP responder).
        let inter_key_pem = inter_key.serialize_pem();
        let pki = Pki {
            dir,
            root_pem: root_cert.pem(),
            inter_pem: inter_cert.pem(),
            inter: Issuer::new(inter_params, inter_key),
        };
        pki.write("root.pem", &pki.root_pem);
        pki.write("inter.pem", &pki.inter_pem);
        pki.write("inter.key", &inter_key_pem);
        pki
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("write pem");
        p
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Issues a leaf for `names` (CN = first name) with `key`; writes `<file>.pem` (leaf +
    /// intermediate) and `<file>.key`.
    pub fn leaf_with(
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

    pub fn leaf(&self, file: &str, names: &[&str]) -> CertificateDer<'static> {
        self.leaf_with(file, names, KeyPair::generate().expect("key"), false)
    }

    pub fn client_config(&self) -> ClientConfig {
        client_config_with(&self.root_pem, None, None)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn roots(pem: &str) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut r = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        r.add(c.expect("root pem")).expect("add root");
    }
    r
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn client_config_with(
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

pub struct TlsClient {
    pub s: StreamOwned<ClientConnection, TcpStream>,
    /// Bytes read past the last response (the next pipelined one).
    rest: Vec<u8>,
}

impl TlsClient {
    /// Connects and completes the handshake (Err with rustls' reason on refusal).
    pub fn connect(
        addr: SocketAddr,
        name: &str,
        cfg: &Arc<ClientConfig>,
    ) -> Result<TlsClient, String> {
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(T)).expect("timeout");
        tcp.set_write_timeout(Some(T)).expect("timeout");
        let name = ServerName::try_from(name.to_string()).expect("server name");
        let conn = ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
        let mut s = StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
        }
        Ok(TlsClient {
            s,
            rest: Vec::new(),
        })
    }

    pub fn peer_leaf(&self) -> CertificateDer<'static> {
        self.s.conn.peer_certificates().expect("peer certs")[0].clone()
    }

    pub fn resumed(&self) -> bool {
        self.s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// One keep-alive GET; returns (status, body). Errors are I/O or TLS failures.
    pub fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.exchange(req.as_bytes())
    }

    /// One keep-alive POST of `body` (sent with its head in one write); returns (status, body).
    pub fn post(&mut self, path: &str, body: &[u8]) -> Result<(u16, String), String> {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.exchange(&req)
    }

    /// Writes one request and reads its Content-Length-framed response.
    fn exchange(&mut self, req: &[u8]) -> Result<(u16, String), String> {
        self.s.write_all(req).map_err(|e| e.to_string())?;
        self.read_response()
    }

    /// Reads one Content-Length-framed response (status, body); bytes past it are kept for the
    /// next call (pipelined responses).
    pub fn read_response(&mut self) -> Result<(u16, String), String> {
        let mut buf = std::mem::take(&mut self.rest);
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
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad head {head}"))?;
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
        self.rest = buf.split_off(head_end + len);
        Ok((
            status,
            String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string(),
        ))
    }
}

// ---------------------------------------------------------------------------
// client-side verifiers for the tests
// ---------------------------------------------------------------------------

/// Accepts any certificate (signatures still checked); `Some(schemes)` limits what it offers.
#[derive(Debug)]
pub struct AnyCert(
    pub Arc<rustls::crypto::CryptoProvider>,
    pub Option<Vec<SignatureScheme>>,
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
pub struct RsaOnly(pub Arc<rustls::client::WebPkiServerVerifier>);

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
