//! Validation of the TLS keys: `[[server.listen]]` TLS options and an upstream's `scheme`/`tls`.
//! Resolves paths against the config's directory; reading the files is the build step's (built/tls.rs).

use std::path::Path;

use super::raw::{RawListenTable, RawUpstream};
use super::ConfigError;
use crate::net::tls::{CertSpec, ListenTlsSpec, MinVersion, OcspFetch};
use crate::net::tls_client::UpstreamTlsSpec;

pub(super) fn listener_tls(
    i: usize,
    t: &RawListenTable,
    dir: &Path,
) -> Result<Option<ListenTlsSpec>, ConfigError> {
    let at = |key: &str| format!("server.listen[{i}].{key}");
    if t.tls != Some(true) {
        let stray = [
            ("certificates", !t.certificates.is_empty()),
            ("sni_strict", t.sni_strict.is_some()),
            ("client_ca", t.client_ca.is_some()),
            ("min_version", t.min_version.is_some()),
            ("prefer_server_ciphers", t.prefer_server_ciphers.is_some()),
            ("hsts", t.hsts.is_some()),
        ];
        if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(ConfigError::new(
                at(key),
                "only meaningful on a TLS listener; add tls = true",
            ));
        }
        return Ok(None);
    }
    if t.certificates.is_empty() {
        return Err(ConfigError::new(
            at("certificates"),
            "a TLS listener needs at least one certificate, e.g. certificates = [{ cert = \"server.pem\", key = \"server.key\" }]",
        ));
    }
    let mut certificates = Vec::with_capacity(t.certificates.len());
    for (n, c) in t.certificates.iter().enumerate() {
        for (k, name) in c.sni.iter().enumerate() {
            let body = name.strip_prefix("*.").unwrap_or(name);
            if body.is_empty()
                || body.contains('*')
                || !body
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(ConfigError::new(
                    at(&format!("certificates[{n}].sni[{k}]")),
                    format!("{name:?} is not a host name or a \"*.suffix\" wildcard"),
                ));
            }
        }
        let cat = |key: &str| at(&format!("certificates[{n}].{key}"));
        if let Some(u) = &c.ocsp_responder {
            let host = u.strip_prefix("http://").unwrap_or("");
            if host.is_empty() || host.starts_with('/') || u.bytes().any(|b| b <= b' ') {
                return Err(ConfigError::new(
                    cat("ocsp_responder"),
                    format!("{u:?} is not an http:// URL (OCSP responders answer over plain HTTP)"),
                ));
            }
        }
        let fetch = c.ocsp_fetch.unwrap_or(false) || c.ocsp_responder.is_some();
        if c.ocsp_fetch == Some(false) && c.ocsp_responder.is_some() {
            return Err(ConfigError::new(
                cat("ocsp_responder"),
                "set with ocsp_fetch = false; drop one of them",
            ));
        }
        if !fetch && c.ocsp_refresh.is_some() {
            return Err(ConfigError::new(
                cat("ocsp_refresh"),
                "only used with ocsp_fetch = true or ocsp_responder",
            ));
        }
        let fetch = if fetch {
            let refresh = super::raw::dur(&cat("ocsp_refresh"), &c.ocsp_refresh, 3600)?;
            if refresh.is_zero() {
                return Err(ConfigError::new(cat("ocsp_refresh"), "must be above 0"));
            }
            Some(OcspFetch {
                responder: c.ocsp_responder.clone(),
                refresh,
            })
        } else {
            None
        };
        certificates.push(CertSpec {
            cert: dir.join(&c.cert),
            key: dir.join(&c.key),
            sni: c.sni.clone(),
            ocsp: c.ocsp.as_ref().map(|p| dir.join(p)),
            fetch,
        });
    }
    let min_version = match t.min_version.as_deref() {
        None | Some("1.2") => MinVersion::Tls12,
        Some("1.3") => MinVersion::Tls13,
        Some(other) => {
            return Err(ConfigError::new(
                at("min_version"),
                format!("expected \"1.2\" or \"1.3\", got {other:?}"),
            ))
        }
    };
    let hsts = match &t.hsts {
        None => None,
        Some(h) => Some(hsts_value(&at("hsts"), h)?),
    };
    let spec = ListenTlsSpec {
        certificates,
        sni_strict: t.sni_strict.unwrap_or(false),
        client_ca: t.client_ca.as_ref().map(|p| dir.join(p)),
        min_version,
        prefer_server_ciphers: t.prefer_server_ciphers.unwrap_or(true),
        hsts,
    };
    Ok(Some(spec))
}

/// The Strict-Transport-Security value (RFC 6797); `preload` needs what the browsers' preload
/// list requires: a year or more and `includeSubDomains`.
pub(super) fn hsts_value(
    at: &str,
    h: &super::raw::RawHsts,
) -> Result<std::sync::Arc<str>, ConfigError> {
    let max_age = super::raw::dur(&format!("{at}.max_age"), &Some(h.max_age.clone()), 0)?;
    let sub = h.include_subdomains.unwrap_or(false);
    let preload = h.preload.unwrap_or(false);
    if preload && (max_age.as_secs() < 31_536_000 || !sub) {
        return Err(ConfigError::new(
            format!("{at}.preload"),
            "preload needs max_age of at least a year (\"31536000\") and include_subdomains = true",
        ));
    }
    let mut v = format!("max-age={}", max_age.as_secs());
    if sub {
        v.push_str("; includeSubDomains");
    }
    if preload {
        v.push_str("; preload");
    }
    Ok(v.into())
}

pub(super) fn upstream_tls(
    i: usize,
    u: &RawUpstream,
    dir: &Path,
) -> Result<Option<UpstreamTlsSpec>, ConfigError> {
    let at = |key: &str| format!("upstreams[{i}].{key}");
    let on = match (u.scheme.as_deref(), &u.tls) {
        (None | Some("http"), None) => false,
        (None | Some("https"), Some(_)) | (Some("https"), None) => true,
        (Some("http"), Some(_)) => {
            return Err(ConfigError::new(
                at("tls"),
                "tls settings need scheme = \"https\" (or leave scheme out)",
            ))
        }
        (Some(other), _) => {
            return Err(ConfigError::new(
                at("scheme"),
                format!("expected \"http\" or \"https\", got {other:?}"),
            ))
        }
    };
    if !on {
        return Ok(None);
    }
    let mut spec = UpstreamTlsSpec {
        verify: true,
        ..Default::default()
    };
    if let Some(t) = &u.tls {
        spec.ca = t.ca.as_ref().map(|p| dir.join(p));
        spec.sni = t.sni.clone();
        spec.verify = t.verify.unwrap_or(true);
        spec.client_cert = match (&t.client_cert, &t.client_key) {
            (Some(c), Some(k)) => Some((dir.join(c), dir.join(k))),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    at("tls.client_key"),
                    "client_cert needs client_key",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    at("tls.client_cert"),
                    "client_key needs client_cert",
                ))
            }
        };
    }
    Ok(Some(spec))
}
