//! openid-connect's browser-flow cookies: a session or a login in progress sealed with AES-256-GCM
//! under `session.secret` (encrypted and authenticated, bound to its cookie name), read back from
//! a Cookie header, and written as Set-Cookie. Pure functions over outside bytes; no I/O, no state.

// Layout of a sealed value: base64url(nonce(12) || ciphertext || tag(16)) of the JSON below. A
// value longer than `CHUNK` is cut into at most `MAX_CHUNKS` cookies `name`, `name_1`, ...; the
// first starts with "<count>." so stale later chunks are never read. Anything that does not open
// (tampered, truncated, another secret, expired) is simply no cookie: the caller starts a login.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Bytes of one cookie's value (browsers keep at least 4096 per cookie, name and attributes in).
pub const CHUNK: usize = 3800;
/// Cookies one sealed value may span.
pub const MAX_CHUNKS: usize = 4;

/// A signed-in browser: what the session cookie carries.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Session {
    /// Unix seconds after which the session is over (whatever the tokens say).
    pub exp: u64,
    pub access_token: String,
    /// Unix seconds the access token expires at (from `expires_in`; 0: unknown).
    pub access_exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The ID token as the provider signed it (verified at sign-in; `id_token_hint` at logout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// The userinfo answer, or the ID token's claims when no userinfo was fetched.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// A login in progress: what the state cookie carries from the redirect to the callback.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Login {
    pub exp: u64,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    /// Where the browser goes once signed in (path and query on this gateway).
    pub back: String,
}

/// The sealing key of one plugin config.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Sealer {
    /// The key is SHA-256 of a label and the configured secret.
    pub fn new(secret: &str) -> Sealer {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"ringway openid-connect session v1\0");
        ctx.update(secret.as_bytes());
        let d = ctx.finish();
        // 32 bytes is AES-256's key length: `new` cannot fail on it.
        let key = UnboundKey::new(&AES_256_GCM, d.as_ref()).unwrap_or_else(|_| unreachable!());
        Sealer {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        }
    }

    /// `v` as JSON, encrypted for cookie `name`; None only if the system RNG fails.
    pub fn seal<T: Serialize>(&self, name: &str, v: &T) -> Option<String> {
        let mut buf = serde_json::to_vec(v).ok()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buf,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Some(B64.encode(out))
    }

    /// The value sealed for cookie `name`, if `text` is one and it opens.
    pub fn open<T: DeserializeOwned>(&self, name: &str, text: &[u8]) -> Option<T> {
        let mut raw = B64.decode(text).ok()?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[..NONCE_LEN]);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut raw[NONCE_LEN..],
            )
            .ok()?;
        serde_json::from_slice(plain).ok()
    }

    /// `n` random bytes as base64url (state, nonce, PKCE verifier).
    pub fn random(&self, n: usize) -> Option<String> {
        let mut b = vec![0u8; n];
        self.rng.fill(&mut b).ok()?;
        Some(B64.encode(b))
    }
}

/// PKCE S256 (RFC 7636 4.2): base64url(SHA-256(verifier)).
pub fn challenge(verifier: &str) -> String {
    B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// The value of cookie `name` in a Cookie header (`a=b; c=d`), if present.
pub fn cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
    })
}

/// The chunk cookie names of `name`: `name`, `name_1`, ...
pub fn chunk_name(name: &str, i: usize) -> String {
    if i == 0 {
        name.to_string()
    } else {
        format!("{name}_{i}")
    }
}

/// A chunked value put back together from a Cookie header; None when a chunk is missing or the
/// count is not one we write.
pub fn read_chunked(header: &[u8], name: &str) -> Option<Vec<u8>> {
    let first = cookie(header, name)?;
    let dot = first.iter().position(|&b| b == b'.')?;
    let n: usize = std::str::from_utf8(&first[..dot]).ok()?.parse().ok()?;
    if n == 0 || n > MAX_CHUNKS {
        return None;
    }
    let mut out = first[dot + 1..].to_vec();
    for i in 1..n {
        out.extend_from_slice(cookie(header, &chunk_name(name, i))?);
    }
    Some(out)
}

/// Set-Cookie values for a sealed `value` under `name` (None if it needs more than
/// `MAX_CHUNKS` cookies). `max_age` in seconds; `secure` when the gateway is reached over TLS.
pub fn write_chunked(name: &str, value: &str, max_age: u64, secure: bool) -> Option<Vec<String>> {
    let n = value.len().div_ceil(CHUNK).max(1);
    if n > MAX_CHUNKS {
        return None;
    }
    let parts: Vec<&str> = (0..n)
        .map(|i| &value[i * CHUNK..((i + 1) * CHUNK).min(value.len())])
        .collect();
    Some(
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let v = if i == 0 {
                    format!("{n}.{p}")
                } else {
                    p.to_string()
                };
                set_cookie(&chunk_name(name, i), &v, max_age, secure)
            })
            .collect(),
    )
}

/// One Set-Cookie value: HttpOnly, SameSite=Lax, Path=/, Secure when asked.
pub fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")
}

/// Set-Cookie values that remove every chunk of `name`.
pub fn clear_chunked(name: &str, secure: bool) -> Vec<String> {
    (0..MAX_CHUNKS)
        .map(|i| set_cookie(&chunk_name(name, i), "", 0, secure))
        .collect()
}

/// The decoded value of query parameter `name` (application/x-www-form-urlencoded).
pub fn query_param(query: &[u8], name: &str) -> Option<String> {
    query.split(|&b| b == b'&').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
        if pct_decode(&pair[..eq])? != name.as_bytes() {
            return None;
        }
        let v = pct_decode(pair.get(eq + 1..).unwrap_or_default())?;
        String::from_utf8(v).ok()
    })
}

fn pct_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

/// RFC 3986 unreserved characters kept, everything else %XX (query values, Basic credentials).
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            exp: 2_000_000_000,
            access_token: "a".repeat(5000),
            access_exp: 1,
            refresh_token: Some("r".into()),
            id_token: None,
            claims: serde_json::Map::new(),
        }
    }

    #[test]
    fn sealed_values_open_only_with_their_secret_and_name_and_intact() {
        let s = Sealer::new("0123456789abcdef");
        let v = s.seal("c", &session()).unwrap();
        assert_eq!(s.open::<Session>("c", v.as_bytes()), Some(session()));
        assert_eq!(s.open::<Session>("other", v.as_bytes()), None);
        assert_eq!(
            Sealer::new("another secret!!").open::<Session>("c", v.as_bytes()),
            None
        );
        let mut bad = v.into_bytes();
        bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
        assert_eq!(s.open::<Session>("c", &bad), None);
        assert_eq!(s.open::<Session>("c", b""), None);
        assert_eq!(s.open::<Session>("c", b"%%%"), None);
    }

    #[test]
    fn long_values_are_chunked_and_read_back() {
        let s = Sealer::new("0123456789abcdef");
        let v = s.seal("sess", &session()).unwrap();
        let set = write_chunked("sess", &v, 60, true).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set[0].ends_with("; HttpOnly; SameSite=Lax; Secure"));
        let header = set
            .iter()
            .map(|c| c.split(';').next().unwrap())
            .collect::<Vec<_>>()
            .join("; ");
        let header = format!("x=1; {header}; sess_3=stale");
        assert_eq!(
            read_chunked(header.as_bytes(), "sess").as_deref(),
            Some(v.as_bytes())
        );
        assert_eq!(read_chunked(b"sess=2.abc", "sess"), None);
        assert_eq!(read_chunked(b"sess=abc", "sess"), None);
        assert!(write_chunked("s", &"x".repeat(CHUNK * MAX_CHUNKS + 1), 1, false).is_none());
    }

    #[test]
    fn query_params_and_pkce() {
        assert_eq!(
            query_param(b"a=1&code=x%2By+z&state=", "code").as_deref(),
            Some("x+y z")
        );
        assert_eq!(query_param(b"state", "state").as_deref(), Some(""));
        assert_eq!(query_param(b"code=%zz", "code"), None);
        assert_eq!(query_param(b"", "code"), None);
        // RFC 7636 appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(form_encode("a b:c"), "a%20b%3Ac");
    }
}
