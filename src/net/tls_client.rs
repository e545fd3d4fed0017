//! TLS towards upstreams: builds the rustls client config (CA bundle or built-in roots, optional
//! client certificate, optional no-verify) on the main thread, and connects on the shard. No HTTP here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use monoio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::guard::Guarded;
use super::tls::{load_certified_key, load_roots, provider};

/// An upstream TLS connection, guarded like the server side.
pub type ClientStream = Guarded<monoio_rustls::ClientTlsStream<TcpStream>>;

/// `tls = { ... }` on an upstream, paths resolved against the config's directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTlsSpec {
    /// CA bundle; `None` means the built-in web PKI roots.
    pub ca: Option<PathBuf>,
    /// SNI and verified name; `None` means each node's host.
    pub sni: Option<String>,
    pub verify: bool,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Everything a shard needs to open TLS to this upstream's nodes.
#[derive(Clone)]
pub struct UpstreamTls {
    pub connector: monoio_rustls::TlsConnector,
    /// One name per node, resolved once at load (the configured SNI, or the node's host).
    pub names: Vec<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Builds the client config. `hosts` are the nodes' hosts (without ports), used as SNI and as
/// the name checked against the certificate when `spec.sni` is not set.
pub fn build(spec: &UpstreamTlsSpec, hosts: &[&str]) -> Result<UpstreamTls, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = if spec.verify {
        let roots = match &spec.ca {
            Some(ca) => load_roots(ca)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider.clone())))
    };
    let mut cfg = match &spec.client_cert {
        Some((cert, key)) => {
            let (ck, _) = load_certified_key(cert, key, &provider)?;
            builder
                .with_client_auth_cert(ck.cert.clone(), key_der(key)?)
                .map_err(|e| format!("{}: {e}", key.display()))?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut names = Vec::with_capacity(hosts.len());
    for h in hosts {
        let text = spec.sni.as_deref().unwrap_or(h);
        let name = ServerName::try_from(text.to_string())
            .map_err(|_| format!("{text:?} is not a valid TLS server name"))?;
        names.push(name);
    }
    Ok(UpstreamTls {
        connector: monoio_rustls::TlsConnector::from(Arc::new(cfg)),
        names,
    })
}

fn key_der(key: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: cannot read a PEM private key: {e:?}", key.display()))
}

/// Connects TLS over an established TCP stream to `node`.
pub async fn connect(
    tls: &UpstreamTls,
    node: usize,
    tcp: TcpStream,
) -> Result<ClientStream, std::io::Error> {
    let name = tls.names[node].clone();
    match tls.connector.connect(name, tcp).await {
        Ok(s) => Ok(Guarded::new(s)),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// `verify = false`: accepts any certificate but still checks the handshake signatures, so the
/// peer must hold the key of whatever certificate it shows.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

/// The `verify = false` verifier, for other blocking TLS clients (the syslog sink).
pub fn no_verify(provider: Arc<CryptoProvider>) -> Arc<dyn ServerCertVerifier> {
    Arc::new(NoVerify(provider))
}

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
