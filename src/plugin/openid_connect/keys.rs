//! openid-connect's verification material and rules: a provider's JWKS parsed into decoding keys
//! by `kid`, and the check of one JWT access token (signature, iss, aud, exp, nbf, iat). No I/O.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// The algorithms accepted for access tokens (RFC 9068 signs them asymmetrically; HS* would
/// need a shared secret, none is never accepted).
pub const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// One published key: what it decodes with and the algorithm it is pinned to, if the JWK says.
pub struct Key {
    key: DecodingKey,
    alg: Option<Algorithm>,
}

/// A provider's signing keys by `kid` (keys without a `kid` under ""), as one fetch found them.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    /// Parses a JWKS document; keys that are not for signatures or cannot be used are skipped
    /// (a provider may publish encryption keys beside them). Errors only on a document that is
    /// not a JWKS at all.
    pub fn parse(body: &[u8]) -> Result<KeySet, String> {
        let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            keys.insert(kid, Key { key, alg });
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Same kids as `other` (a refetch that found nothing new need not reset the shards' caches).
    pub fn same_kids(&self, other: &KeySet) -> bool {
        self.keys.len() == other.keys.len() && self.keys.keys().all(|k| other.keys.contains_key(k))
    }
}

/// What a token is checked against, fixed per plugin config (the issuer comes from discovery
/// when `claim_validator.issuer.valid_issuers` is empty).
#[derive(Debug, Clone)]
pub struct Rules {
    pub issuers: Vec<String>,
    pub audience: Option<String>,
    /// Seconds of clock skew allowed on exp, nbf and iat.
    pub skew: u64,
    pub required_claims: Vec<String>,
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its `kid` is not among the keys (refetch the JWKS, then try once more).
    UnknownKid,
    /// Anything else: malformed, bad signature, expired, wrong issuer or audience. The client is
    /// not told which (RFC 6750 invalid_token without detail).
    Invalid,
}

/// True for a compact JWS (three base64url parts whose header parses); other tokens are opaque.
pub fn looks_like_jwt(tok: &[u8]) -> bool {
    tok.iter().filter(|&&b| b == b'.').count() == 2 && header(tok).is_some()
}

fn header(tok: &[u8]) -> Option<jsonwebtoken::Header> {
    let head = tok.split(|&b| b == b'.').next()?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

/// Verifies `tok` and returns its claims.
pub fn verify(
    tok: &str,
    keys: &KeySet,
    rules: &Rules,
    now: u64,
) -> Result<Map<String, Value>, Refusal> {
    // Three parts, or no key is looked up (fuzzing found a two-part token taken for one with
    // an unknown kid, which would have asked for a JWKS refetch).
    if tok.bytes().filter(|&b| b == b'.').count() != 2 {
        return Err(Refusal::Invalid);
    }
    let h = header(tok.as_bytes()).ok_or(Refusal::Invalid)?;
    if !ALGORITHMS.contains(&h.alg) {
        return Err(Refusal::Invalid);
    }
    let kid = h.kid.as_deref().unwrap_or("");
    let Some(key) = keys.keys.get(kid) else {
        return Err(Refusal::UnknownKid);
    };
    if key.alg.is_some_and(|a| a != h.alg) {
        return Err(Refusal::Invalid);
    }
    let mut v = Validation::new(h.alg);
    v.leeway = rules.skew;
    v.validate_nbf = true;
    v.validate_exp = true;
    v.required_spec_claims = HashSet::from(["exp".to_string()]);
    if rules.issuers.is_empty() {
        // No issuer known yet (discovery not fetched): refuse rather than skip the check.
        return Err(Refusal::Invalid);
    }
    v.set_issuer(&rules.issuers);
    match &rules.audience {
        Some(a) => v.set_audience(&[a]),
        None => v.validate_aud = false,
    }
    let data = jsonwebtoken::decode::<Map<String, Value>>(tok, &key.key, &v)
        .map_err(|_| Refusal::Invalid)?;
    let claims = data.claims;
    // jsonwebtoken leaves iat alone: a token issued in the future is refused.
    if let Some(iat) = claims.get("iat") {
        match iat.as_u64() {
            Some(t) if t <= now.saturating_add(rules.skew) => {}
            _ => return Err(Refusal::Invalid),
        }
    }
    if rules
        .required_claims
        .iter()
        .any(|c| claims.get(c).map_or(true, Value::is_null))
    {
        return Err(Refusal::Invalid);
    }
    Ok(claims)
}

/// The token's scopes: `scope` (space-separated, RFC 9068 and RFC 7662) or `scp` (an array).
pub fn scopes(claims: &Map<String, Value>) -> Vec<&str> {
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => s.split(' ').filter(|s| !s.is_empty()).collect(),
        (_, Some(Value::Array(a))) => a.iter().filter_map(Value::as_str).collect(),
        (_, Some(Value::String(s))) => s.split(' ').filter(|s| !s.is_empty()).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_parsing_skips_unusable_and_encryption_keys() {
        let doc = br#"{"keys":[
            {"kty":"RSA","kid":"r","use":"sig","alg":"RS256","n":"sXch","e":"AQAB"},
            {"kty":"OKP","kid":"e","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"sXch","e":"AQAB"},
            {"kty":"oct","kid":"s","k":"c2VjcmV0"}
        ]}"#;
        let k = KeySet::parse(doc).unwrap();
        assert!(k.keys.contains_key("r") && k.keys.contains_key("e"));
        assert!(!k.keys.contains_key("enc"));
        assert!(KeySet::parse(b"[1,2]").is_err());
        assert!(KeySet::parse(b"\xff").is_err());
    }

    #[test]
    fn opaque_tokens_are_not_jwts() {
        assert!(!looks_like_jwt(
            b"ATEDyYBJ2w0S-CUVA8115mfNbMw0boU5YbQXrEQqCSC"
        ));
        assert!(!looks_like_jwt(b"a.b.c"));
        assert!(looks_like_jwt(b"eyJhbGciOiJSUzI1NiJ9.e30.sig"));
    }

    #[test]
    fn scopes_from_scope_or_scp() {
        let m = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(scopes(&m(serde_json::json!({"scope": "a  b"}))), ["a", "b"]);
        assert_eq!(
            scopes(&m(serde_json::json!({"scp": ["x", 1, "y"]}))),
            ["x", "y"]
        );
        assert!(scopes(&m(serde_json::json!({}))).is_empty());
    }

    #[test]
    fn unknown_kid_and_bad_tokens_are_told_apart() {
        let rules = Rules {
            issuers: vec!["i".into()],
            audience: None,
            skew: 0,
            required_claims: vec![],
        };
        let keys = KeySet::default();
        assert_eq!(
            verify(
                "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.e30.c2ln",
                &keys,
                &rules,
                0
            ),
            Err(Refusal::UnknownKid)
        );
        // alg none and HS256 are refused before any key is looked at.
        assert_eq!(
            verify("eyJhbGciOiJub25lIn0.e30.", &keys, &rules, 0),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            verify("eyJhbGciOiJIUzI1NiJ9.e30.c2ln", &keys, &rules, 0),
            Err(Refusal::Invalid)
        );
        assert_eq!(verify("junk", &keys, &rules, 0), Err(Refusal::Invalid));
    }
}
