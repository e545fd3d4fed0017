//! The provider (endpoints, discovered document, reachability) and the calls openid-connect's
//! worker threads make, each blocking with the config's timeout: introspection, code exchange and
//! refresh (ID token verified: signature, iss, aud, exp, nonce), userinfo. Never runs on a shard.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Map, Value};

use super::keys::{self, KeySet, Refusal, Rules};
use super::session::form_encode;
use crate::metrics::oidc::count;

pub const INTROSPECTION: usize = 2;
pub const TOKEN: usize = 3;
pub const USERINFO: usize = 4;

/// The most a provider's answer may weigh (a JWKS or an introspection answer is a few KiB).
const MAX_BODY: u64 = 1 << 20;

/// Where and how to reach the provider.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub discovery: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Instead of the discovery document's `introspection_endpoint`.
    pub introspection: Option<String>,
    /// client_secret_post instead of client_secret_basic, at introspection.
    pub secret_in_body: bool,
    /// The same at the token endpoint.
    pub token_secret_in_body: bool,
    /// The browser flow's callback URL (sent again with the code).
    pub redirect_uri: Option<String>,
    /// Fetch userinfo after a code exchange (for `set_userinfo_header`).
    pub userinfo: bool,
    /// Seconds of clock skew allowed on an ID token's times.
    pub skew: u64,
    pub timeout: Duration,
    pub jwks_refresh: Duration,
    pub jwks_refetch_interval: Duration,
}

/// The parts of the provider's discovery document ringway uses.
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    pub issuer: Arc<str>,
    pub jwks_uri: String,
    pub introspection: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub end_session_endpoint: Option<String>,
}

/// Whether the provider answered the last call, shared by the control thread and its workers:
/// a change is logged once, not every call.
pub struct Reach {
    pub discovery: String,
    pub up: AtomicBool,
}

impl Reach {
    pub fn mark(&self, ok: bool, what: &str, err: &str) {
        let was = self.up.swap(ok, Relaxed);
        if ok && !was {
            log::info!(
                "openid-connect: provider {} reachable again",
                self.discovery
            );
        } else if !ok && was {
            log::warn!(
                "openid-connect: provider {} unreachable ({what}: {err}); cached keys stay in force, \
                 new opaque tokens are refused",
                self.discovery
            );
        }
    }
}

/// An introspection outcome.
pub enum Introspection {
    /// `active: true`, with the answer's members (exp, scope, sub, aud, ...).
    Active(Map<String, Value>),
    Inactive,
    /// No answer (down, timeout, bad response): the token is neither admitted nor remembered.
    Unavailable,
}

/// What a code exchange or refresh brought.
#[derive(Debug)]
pub struct Tokens {
    pub access_token: String,
    /// Seconds from now, if the provider said.
    pub expires_in: Option<u64>,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    /// Userinfo when fetched, else the ID token's claims (empty after a refresh without either).
    pub claims: Map<String, Value>,
}

/// Why a token-endpoint call gave no tokens.
#[derive(Debug)]
pub enum Failed {
    /// The provider could not be reached or answered garbage (the user may retry).
    Unavailable(String),
    /// The provider refused (bad code, revoked refresh token) or the ID token did not verify.
    Refused(String),
}

pub fn body(resp: ureq::Response) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    resp.into_reader()
        .take(MAX_BODY)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// A POST with the client's credentials (Basic, RFC 6749 2.3.1, or in the body).
#[allow(clippy::result_large_err)] // ureq's own error, handled at once by the caller
fn post_form(
    agent: &ureq::Agent,
    ep: &Endpoints,
    url: &str,
    in_body: bool,
    form: Vec<(&str, &str)>,
) -> Result<ureq::Response, ureq::Error> {
    let mut req = agent.post(url);
    let secret = ep.client_secret.clone().unwrap_or_default();
    let mut form = form;
    if in_body {
        form.push(("client_id", ep.client_id.as_str()));
        form.push(("client_secret", secret.as_str()));
    } else {
        let cred = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form_encode(&ep.client_id),
            form_encode(&secret)
        ));
        req = req.set("Authorization", &format!("Basic {cred}"));
    }
    req.send_form(&form)
}

pub fn introspect(agent: &ureq::Agent, ep: &Endpoints, url: &str, token: &str) -> Introspection {
    let form = vec![("token", token), ("token_type_hint", "access_token")];
    let r = post_form(agent, ep, url, ep.secret_in_body, form)
        .map_err(|e| e.to_string())
        .and_then(body)
        .and_then(|b| {
            serde_json::from_slice::<Map<String, Value>>(&b)
                .map_err(|e| format!("introspection answer is not a JSON object: {e}"))
        });
    count(INTROSPECTION, r.is_ok());
    match r {
        Ok(m) if m.get("active") == Some(&Value::Bool(true)) => Introspection::Active(m),
        Ok(_) => Introspection::Inactive,
        Err(e) => {
            log::debug!("openid-connect: introspection at {url} failed: {e}");
            Introspection::Unavailable
        }
    }
}

/// What the token endpoint is asked for.
pub enum Grant<'a> {
    Code {
        code: &'a str,
        verifier: &'a str,
        redirect_uri: &'a str,
    },
    Refresh(&'a str),
}

/// The discovered provider and its keys as the control thread last knew them.
pub struct Provider {
    pub disc: Arc<Discovered>,
    pub keys: Option<Arc<KeySet>>,
}

/// A code exchange or refresh; for a code, the ID token is required and verified against
/// `nonce`; userinfo is fetched when asked for and the provider has the endpoint.
pub fn token(
    agent: &ureq::Agent,
    ep: &Endpoints,
    p: &Provider,
    grant: Grant,
    nonce: Option<&str>,
    userinfo: bool,
) -> Result<Tokens, Failed> {
    let url = p.disc.token_endpoint.as_deref().ok_or_else(|| {
        Failed::Unavailable("the discovery document has no token_endpoint".into())
    })?;
    let form = match &grant {
        Grant::Code {
            code,
            verifier,
            redirect_uri,
        } => vec![
            ("grant_type", "authorization_code"),
            ("code", *code),
            ("code_verifier", *verifier),
            ("redirect_uri", *redirect_uri),
        ],
        Grant::Refresh(rt) => vec![("grant_type", "refresh_token"), ("refresh_token", *rt)],
    };
    let r = post_form(agent, ep, url, ep.token_secret_in_body, form);
    count(TOKEN, !matches!(r, Err(ureq::Error::Transport(_))));
    let b = match r {
        Ok(resp) => body(resp).map_err(Failed::Unavailable)?,
        Err(ureq::Error::Status(code, resp)) => {
            let text = body(resp).unwrap_or_default();
            let text = String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned();
            return Err(if code >= 500 {
                Failed::Unavailable(format!("token endpoint answered {code}: {text}"))
            } else {
                Failed::Refused(format!("token endpoint answered {code}: {text}"))
            });
        }
        Err(e) => return Err(Failed::Unavailable(e.to_string())),
    };
    let m: Map<String, Value> = serde_json::from_slice(&b)
        .map_err(|e| Failed::Unavailable(format!("token answer is not a JSON object: {e}")))?;
    let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
    let access_token = s("access_token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Failed::Refused("the token answer has no access_token".into()))?;
    let id_token = s("id_token");
    let mut claims = Map::new();
    if let Some(idt) = &id_token {
        claims = verify_id_token(agent, ep, p, idt, nonce)?;
    } else if matches!(grant, Grant::Code { .. }) {
        return Err(Failed::Refused("the token answer has no id_token".into()));
    }
    if userinfo {
        if let Some(u) = &p.disc.userinfo_endpoint {
            let r = agent
                .get(u)
                .set("Authorization", &format!("Bearer {access_token}"))
                .call()
                .map_err(|e| e.to_string())
                .and_then(body)
                .and_then(|b| {
                    serde_json::from_slice::<Map<String, Value>>(&b)
                        .map_err(|e| format!("userinfo is not a JSON object: {e}"))
                });
            count(USERINFO, r.is_ok());
            match r {
                Ok(info) => claims = info,
                Err(e) => log::debug!("openid-connect: userinfo at {u} failed: {e}"),
            }
        }
    }
    Ok(Tokens {
        access_token,
        expires_in: m.get("expires_in").and_then(Value::as_u64),
        refresh_token: s("refresh_token"),
        id_token,
        claims,
    })
}

/// The ID token's claims if it verifies (OpenID Connect Core 3.1.3.7): signed by the provider,
/// `iss` the issuer, `aud` our client_id, not expired, and the login's `nonce` when given.
fn verify_id_token(
    agent: &ureq::Agent,
    ep: &Endpoints,
    p: &Provider,
    idt: &str,
    nonce: Option<&str>,
) -> Result<Map<String, Value>, Failed> {
    let rules = Rules {
        issuers: vec![p.disc.issuer.to_string()],
        audience: Some(ep.client_id.clone()),
        skew: ep.skew,
        required_claims: vec!["sub".into()],
    };
    let now = super::unix_now();
    let mut r = match &p.keys {
        Some(k) => keys::verify(idt, k, &rules, now),
        None => Err(Refusal::UnknownKid),
    };
    if r == Err(Refusal::UnknownKid) {
        // Keys rotated since the last refresh: this worker reads the JWKS once for itself.
        let fresh = agent
            .get(&p.disc.jwks_uri)
            .call()
            .map_err(|e| e.to_string())
            .and_then(body)
            .and_then(|b| KeySet::parse(&b))
            .map_err(Failed::Unavailable)?;
        r = keys::verify(idt, &fresh, &rules, now);
    }
    let claims = r.map_err(|e| Failed::Refused(format!("the ID token does not verify: {e:?}")))?;
    if let Some(n) = nonce {
        if claims.get("nonce").and_then(Value::as_str) != Some(n) {
            return Err(Failed::Refused(
                "the ID token's nonce is not the login's".into(),
            ));
        }
    }
    Ok(claims)
}
