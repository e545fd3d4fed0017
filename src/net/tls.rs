//! TLS termination: builds rustls server configs from certificate files (SNI, mTLS, versions,
//! shared ticket keys) on the main thread, and drives the server handshake on the shard. No HTTP here.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert};
use rustls::server::{ServerConnection, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, InconsistentKeys, RootCertStore};

use super::guard::Guarded;
use super::tls_stream::TlsStream;

/// A terminated client connection: our batching TLS stream behind the cancel guard.
pub type ServerStream = Guarded<TlsStream>;

/// Lowest protocol version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// One `{ cert, key, sni }` entry, paths already resolved against the config's directory.
#[derive(Debug, Clone)]
pub struct CertSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Explicit names; empty means "the certificate's DNS SANs (or CN)".
    pub sni: Vec<String>,
    /// OCSP response file to staple.
    pub ocsp: Option<PathBuf>,
    /// Fetch the staple from the responder (the OCSP thread); a fetched answer wins over `ocsp`.
    pub fetch: Option<OcspFetch>,
}

/// `ocsp_fetch` / `ocsp_responder` / `ocsp_refresh` of one certificate.
#[derive(Debug, Clone)]
pub struct OcspFetch {
    /// Configured responder URL; `None`: the certificate's AIA.
    pub responder: Option<String>,
    /// Longest time between two fetches.
    pub refresh: Duration,
}

/// What a TLS listener was configured with; kept so SIGHUP can rebuild from the same files.
#[derive(Debug, Clone)]
pub struct ListenTlsSpec {
    pub certificates: Vec<CertSpec>,
    pub sni_strict: bool,
    pub client_ca: Option<PathBuf>,
    pub min_version: MinVersion,
    /// The server's cipher suite order wins over the client's (nginx's `ssl_prefer_server_ciphers`).
    pub prefer_server_ciphers: bool,
    /// The Strict-Transport-Security value sent on this listener's responses.
    pub hsts: Option<Arc<str>>,
}

/// The crypto provider everything TLS here uses: ring (or aws-lc-rs with the `tls-aws-lc`
/// feature), whose default suites are all AEAD with forward secrecy (no CBC, RC4, 3DES, static
/// RSA), so there is no weak option to turn off.
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "tls-aws-lc")]
    let p = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(not(feature = "tls-aws-lc"))]
    let p = rustls::crypto::ring::default_provider();
    Arc::new(p)
}

/// One ticket-key source for the whole node. Every listener's ServerConfig, on every shard,
/// holds this same Arc, so a ticket issued on one shard resumes on any other. It rotates keys
/// every 6 hours by itself; its lock is taken once per handshake, never per request. Its keys
/// can be exported to a successor process (`net::tickets`).
pub fn new_ticketer() -> Result<Arc<super::tickets::Tickets>, String> {
    super::tickets::Tickets::new()
}

/// Reads every file named in `spec` and builds the listener's rustls config. Runs on the main
/// thread (start-up and SIGHUP); every error names the file.
pub fn build_server_config(
    spec: &ListenTlsSpec,
    ticketer: Arc<dyn ProducesTickets>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = provider();
    let mut resolver = SniResolver::default();
    for (i, c) in spec.certificates.iter().enumerate() {
        let (mut key, names) = load_certified_key(&c.cert, &c.key, &provider)?;
        let query = match &c.fetch {
            Some(f) => Some(ocsp_query(&key, c, f)?),
            None => None,
        };
        if let Some(p) = &c.ocsp {
            key.ocsp = staple(p, &c.cert);
        }
        if let Some(der) = query.and_then(|q| super::ocsp::fetched(&c.cert, &q.serial)) {
            key.ocsp = Some(der);
        }
        let key = Arc::new(key);
        let names = if c.sni.is_empty() {
            names
        } else {
            c.sni.clone()
        };
        if i == 0 && !spec.sni_strict {
            resolver.default = Some(key.clone());
        }
        for n in names {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix("*.") {
                Some(suffix) => resolver.wildcard.entry(suffix.to_string()),
                None => resolver.exact.entry(n),
            }
            .or_default()
            .push(key.clone());
        }
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match spec.min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &spec.client_ca {
        Some(ca) => {
            let roots = load_roots(ca)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("{}: unusable client CA bundle: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // ring's order: AES-256-GCM, AES-128-GCM, then ChaCha20 (per version), ECDHE only.
    cfg.ignore_client_order = spec.prefer_server_ciphers;
    // Resumption is stateless (tickets) only: a session-ID cache would be a lock shared by all
    // shards on every full handshake, and per-shard caches would not resume across shards.
    cfg.ticketer = ticketer;
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Arc::new(cfg))
}

/// What the OCSP thread sends for this certificate: needs the issuer (second in the chain file)
/// and a responder URL (configured or in the certificate).
pub fn ocsp_query(
    key: &CertifiedKey,
    c: &CertSpec,
    f: &OcspFetch,
) -> Result<super::ocsp::Query, String> {
    let (Some(leaf), Some(issuer)) = (key.cert.first(), key.cert.get(1)) else {
        return Err(format!(
            "{}: OCSP fetching needs the issuer certificate after the leaf in this file",
            c.cert.display()
        ));
    };
    super::ocsp::query(leaf.as_ref(), issuer.as_ref(), f.responder.as_deref())
        .map_err(|e| format!("{}: {e}", c.cert.display()))
}

/// The OCSP response in `path`, if it is one: a missing or malformed file is logged and the
/// certificate is served without a staple (clients then ask the responder themselves, or go
/// without), never refused.
fn staple(path: &Path, cert: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        // An OCSPResponse is a DER SEQUENCE whose first element is responseStatus, an
        // ENUMERATED; 0 is `successful`. Anything else is not worth stapling.
        Ok(der) if ocsp_successful(&der) => Some(der),
        Ok(_) => {
            log::warn!(
                "{}: not a successful DER OCSP response; serving {} without a staple",
                path.display(),
                cert.display()
            );
            None
        }
        Err(e) => {
            log::warn!(
                "{}: {e}; serving {} without an OCSP staple",
                path.display(),
                cert.display()
            );
            None
        }
    }
}

/// `30 len 0A 01 00 ...`: a SEQUENCE starting with ENUMERATED successful(0).
fn ocsp_successful(der: &[u8]) -> bool {
    let Some((&0x30, rest)) = der.split_first() else {
        return false;
    };
    let skip = match rest.first() {
        Some(&l) if l < 0x80 => 1,
        Some(&l) if (0x81..=0x84).contains(&l) => 1 + usize::from(l - 0x80),
        _ => return false,
    };
    rest.get(skip..skip + 3) == Some(&[0x0a, 0x01, 0x00][..])
}

/// Loads a PEM chain and key, checks that they match and that the leaf has not expired, and
/// returns the key with the leaf's DNS names (SANs, or the CN when there are none).
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<String>), String> {
    let chain = load_chain(cert)?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "{}: cannot read a PEM private key: {}",
            key.display(),
            pem_err(e)
        )
    })?;
    let signer = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        // Some key types cannot report their public half; the handshake still proves possession.
        Ok(()) | Err(TlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(format!(
                "{}: private key does not match certificate {}",
                key.display(),
                cert.display()
            ))
        }
        Err(e) => return Err(format!("{}: not a usable certificate: {e}", cert.display())),
    }
    let leaf = &ck.cert[0];
    let (_, x) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("{}: cannot parse certificate: {e}", cert.display()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let not_after = x.validity().not_after;
    if not_after.timestamp() < now {
        return Err(format!(
            "{}: certificate expired on {not_after}",
            cert.display()
        ));
    }
    let names = cert_names(&x);
    drop(x);
    Ok((ck, names))
}

fn cert_names(x: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = x.subject().iter_common_name().next() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_string());
            }
        }
    }
    names
}

/// A PEM file with one or more certificates, leaf first.
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| {
        format!(
            "{}: cannot read certificates: {}",
            path.display(),
            pem_err(e)
        )
    })?;
    let chain = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad PEM certificate: {}", path.display(), pem_err(e)))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no \"BEGIN CERTIFICATE\" block found",
            path.display()
        ));
    }
    Ok(chain)
}

/// A CA bundle (PEM) as a root store; every certificate in it must parse.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in load_chain(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

fn pem_err(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no matching PEM block".to_string(),
        other => format!("{other:?}"),
    }
}

/// Picks the certificate by SNI: exact name, then `*.parent` wildcard, then the default (the
/// first certificate) unless the listener refuses unknown names.
#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// Keyed by the part after `*.`; a wildcard covers exactly one label.
    wildcard: HashMap<String, Vec<Arc<CertifiedKey>>>,
    default: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        // Several certificates may serve one name (ECDSA and RSA): take the first the client can verify.
        let pick = |list: &Vec<Arc<CertifiedKey>>| {
            list.iter()
                .find(|k| k.key.choose_scheme(schemes).is_some())
                .or_else(|| list.first())
                .cloned()
        };
        let Some(name) = hello.server_name() else {
            return self.default.clone();
        };
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(list) = self.exact.get(name) {
            return pick(list);
        }
        if let Some(list) = name
            .split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
        {
            return pick(list);
        }
        self.default.clone()
    }
}

/// What the handshake negotiated; kept on the connection for X-Forwarded-Proto, logs and plugins.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub sni: Option<Box<str>>,
    pub version: &'static str,
    pub cipher: &'static str,
    pub resumed: bool,
    /// Subject of the verified client certificate (mTLS), e.g. `CN=client-a`.
    pub client_subject: Option<Box<str>>,
    /// The listener's Strict-Transport-Security value, set on every response of the connection.
    pub hsts: Option<Arc<str>>,
}

impl TlsInfo {
    fn of(c: &ServerConnection) -> TlsInfo {
        let version = match c.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        let cipher = c
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown");
        let client_subject = c.peer_certificates().and_then(|certs| {
            let (_, x) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
            Some(x.subject().to_string().into_boxed_str())
        });
        TlsInfo {
            sni: c.server_name().map(Into::into),
            version,
            cipher,
            resumed: c.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            client_subject,
            hsts: None,
        }
    }
}

/// Runs the server handshake on an accepted socket within `limit`. The handshake is driven here
/// (not by monoio-rustls' acceptor) so the session can be inspected before it is wrapped.
pub async fn accept(
    cfg: Arc<rustls::ServerConfig>,
    mut tcp: TcpStream,
    limit: Duration,
) -> Result<(ServerStream, TlsInfo), String> {
    let mut conn = ServerConnection::new(cfg).map_err(|e| e.to_string())?;
    match monoio::time::timeout(limit, drive(&mut tcp, &mut conn)).await {
        Err(_) => return Err("handshake timed out".into()),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(())) => {}
    }
    let info = TlsInfo::of(&conn);
    // Bytes that followed the handshake (the first request) are already decrypted inside
    // `conn`, where the stream's first read finds them.
    Ok((Guarded::new(TlsStream::new(tcp, conn)), info))
}

/// Largest read fed to rustls at once: small enough that what follows the handshake always
/// fits rustls' plaintext buffer, so nothing is left unread outside `conn`.
const HANDSHAKE_READ: usize = 4096;

async fn drive(tcp: &mut TcpStream, conn: &mut ServerConnection) -> io::Result<()> {
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut inb: Vec<u8> = Vec::with_capacity(HANDSHAKE_READ);
    loop {
        while conn.wants_write() {
            conn.write_tls(&mut out)?;
            let (r, b) = tcp.write_all(out).await;
            out = b;
            out.clear();
            r?;
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        inb.clear();
        let (r, b) = tcp.read(inb).await;
        inb = b;
        if r? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut rest: &[u8] = &inb;
        while !rest.is_empty() {
            if conn.read_tls(&mut rest)? == 0 {
                return Err(io::Error::other("TLS input buffer full"));
            }
            if let Err(e) = conn.process_new_packets() {
                // Send the alert rustls queued (unknown CA, bad certificate…) before giving up.
                if conn.write_tls(&mut out).is_ok() {
                    let _ = tcp.write_all(out).await;
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}
