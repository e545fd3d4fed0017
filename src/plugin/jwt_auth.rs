//! jwt-auth: verifies a JWT from header, query or cookie against the consumer
//! named by its `key` claim (HS256/384/512, RS256, ES256). Reads the consumer table only.

use std::collections::HashSet;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::consumer::{Consumers, JwtCred};
use super::key_auth::{set_consumer, unauthorized};
use super::util::{cookie, parse, query_arg, query_without};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;

pub const SPEC: Spec = Spec {
    name: "jwt-auth",
    priority: 2510,
    phases: phase::ACCESS,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerConf {
    key: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    base64_secret: bool,
    /// Seconds of clock skew tolerated on exp/nbf.
    #[serde(default)]
    lifetime_grace_period: Option<u64>,
    /// Accepted for APISIX compatibility (token lifetime when APISIX signs); unused here.
    #[serde(default)]
    exp: Option<u64>,
}

pub fn consumer_cred(v: &toml::Value, path: &str) -> Result<(String, JwtCred), ConfigError> {
    let c: ConsumerConf = parse(v, path)?;
    let _ = c.exp;
    if c.key.is_empty() {
        return Err(ConfigError::new(format!("{path}.key"), "must not be empty"));
    }
    let alg_text = c.algorithm.as_deref().unwrap_or("HS256");
    let alg = match Algorithm::from_str(alg_text) {
        Ok(
            a @ (Algorithm::HS256
            | Algorithm::HS384
            | Algorithm::HS512
            | Algorithm::RS256
            | Algorithm::ES256),
        ) => a,
        _ => {
            return Err(ConfigError::new(
                format!("{path}.algorithm"),
                format!("expected HS256, HS384, HS512, RS256 or ES256, got {alg_text:?}"),
            ))
        }
    };
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let Some(secret) = c.secret.filter(|s| !s.is_empty()) else {
                return Err(ConfigError::new(
                    format!("{path}.secret"),
                    format!("{alg_text} needs a non-empty secret"),
                ));
            };
            if c.base64_secret {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(secret.as_bytes())
                    .map_err(|e| {
                        ConfigError::new(
                            format!("{path}.secret"),
                            format!("base64_secret is set but the secret is not base64: {e}"),
                        )
                    })?;
                DecodingKey::from_secret(&raw)
            } else {
                DecodingKey::from_secret(secret.as_bytes())
            }
        }
        _ => {
            let Some(pem) = c.public_key else {
                return Err(ConfigError::new(
                    format!("{path}.public_key"),
                    format!("{alg_text} needs public_key (PEM)"),
                ));
            };
            let k = if alg == Algorithm::RS256 {
                DecodingKey::from_rsa_pem(pem.as_bytes())
            } else {
                DecodingKey::from_ec_pem(pem.as_bytes())
            };
            k.map_err(|e| {
                ConfigError::new(
                    format!("{path}.public_key"),
                    format!("not a usable {alg_text} public key: {e}"),
                )
            })?
        }
    };
    let mut validation = Validation::new(alg);
    validation.leeway = c.lifetime_grace_period.unwrap_or(DEFAULT_LEEWAY);
    validation.validate_nbf = true;
    // exp is checked when present, as APISIX does; a token without one does not expire.
    validation.required_spec_claims = HashSet::new();
    validation.validate_aud = false;
    Ok((c.key, JwtCred { key, validation }))
}

/// Seconds of clock skew tolerated on exp/nbf unless the consumer sets lifetime_grace_period.
const DEFAULT_LEEWAY: u64 = 5;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default = "default_header")]
    header: String,
    #[serde(default = "default_jwt")]
    query: String,
    #[serde(default = "default_jwt")]
    cookie: String,
    #[serde(default)]
    hide_credentials: bool,
}

fn default_header() -> String {
    "authorization".into()
}
fn default_jwt() -> String {
    "jwt".into()
}

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    Ok(Arc::new(Factory(Arc::new(c))))
}

struct Factory(Arc<Conf>);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(JwtAuth {
            c: self.0.clone(),
            consumers: shard.consumers.clone(),
        })
    }
}

struct JwtAuth {
    c: Arc<Conf>,
    consumers: Arc<Consumers>,
}

const CHALLENGE: &str = "Bearer realm=\"ringway\"";

enum From {
    Header,
    Query,
    Cookie,
}

/// The `key` claim, read without verifying (verification needs the consumer it names).
fn key_claim(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v.get("key")?.as_str().map(str::to_string)
}

impl Plugin for JwtAuth {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn access(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let found = req
            .header(&self.c.header)
            .map(|h| {
                let h = h.trim_ascii();
                let tok = match h.get(..7) {
                    Some(p) if p.eq_ignore_ascii_case(b"bearer ") => h[7..].trim_ascii(),
                    _ => h,
                };
                (tok, From::Header)
            })
            .or_else(|| query_arg(req.query(), self.c.query.as_bytes()).map(|t| (t, From::Query)))
            .or_else(|| {
                req.header("cookie")
                    .and_then(|c| cookie(c, self.c.cookie.as_bytes()))
                    .map(|t| (t, From::Cookie))
            });
        let Some((tok, from)) = found else {
            return unauthorized(CHALLENGE, "Missing JWT token in request");
        };
        let Ok(tok) = std::str::from_utf8(tok) else {
            return unauthorized(CHALLENGE, "JWT token invalid");
        };
        let Some(key) = key_claim(tok) else {
            return unauthorized(CHALLENGE, "JWT token invalid");
        };
        let Some((cred, idx)) = self.consumers.jwt.get(&key) else {
            return unauthorized(CHALLENGE, "Invalid user key in JWT token");
        };
        if let Err(e) = jsonwebtoken::decode::<serde_json::Value>(tok, &cred.key, &cred.validation)
        {
            let msg = match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    "failed to verify jwt: token expired"
                }
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    "failed to verify jwt: token not valid yet"
                }
                _ => "failed to verify jwt",
            };
            return unauthorized(CHALLENGE, msg);
        }
        set_consumer(cx, &self.consumers, *idx);
        if self.c.hide_credentials {
            match from {
                From::Header => cx.req_headers.remove(self.c.header.as_bytes()),
                From::Query => cx.query = Some(query_without(req.query(), self.c.query.as_bytes())),
                // Cookies are left as they are: removing one cookie means rewriting the header.
                From::Cookie => {}
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use crate::plugin::testkit::{self, Setup};

    const CONSUMERS: &str = r#"
        [[consumers]]
        username = "dave"
        plugins.jwt-auth = { key = "dave-key", secret = "dave-secret" }
        [[consumers]]
        username = "erin"
        plugins.jwt-auth = { key = "erin-key", secret = "ZXJpbi1zZWNyZXQ=", base64_secret = true, algorithm = "HS512", lifetime_grace_period = 0 }
    "#;

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn token(alg: jsonwebtoken::Algorithm, key: &str, secret: &[u8], exp_in: i64) -> String {
        encode(
            &Header::new(alg),
            &json!({ "key": key, "exp": now() + exp_in }),
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn dave(exp_in: i64) -> String {
        token(
            jsonwebtoken::Algorithm::HS256,
            "dave-key",
            b"dave-secret",
            exp_in,
        )
    }

    fn gw(route: &str) -> testkit::Gateway {
        Setup::route(route).consumers(CONSUMERS).build().unwrap()
    }

    fn bearer(tok: &str) -> Vec<u8> {
        format!("GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {tok}\r\n\r\n").into_bytes()
    }

    #[test]
    fn a_valid_token_names_the_consumer_its_key_claim_points_at() {
        let gw = gw("[jwt-auth]\n");
        let x = gw.send(&bearer(&dave(60)));
        assert_eq!(x.replied(), None);
        assert_eq!(x.cx.consumer, Some(0));
        assert_eq!(x.upstream_header("X-Consumer-Username"), Some(&b"dave"[..]));
        let erin = token(
            jsonwebtoken::Algorithm::HS512,
            "erin-key",
            b"erin-secret",
            60,
        );
        let x = gw.send(format!("GET /?jwt={erin} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        assert_eq!(x.cx.consumer, Some(1), "from the query, base64 secret");
        let x = gw.send(
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1; jwt={}\r\n\r\n",
                dave(60)
            )
            .as_bytes(),
        );
        assert_eq!(x.cx.consumer, Some(0), "from the cookie");
    }

    #[test]
    fn bad_tokens_get_401_with_the_reason() {
        let gw = gw("[jwt-auth]\n");
        let msg = |raw: &[u8]| {
            let x = gw.send(raw);
            assert_eq!(x.replied(), Some(401));
            assert_eq!(
                x.reply_header("WWW-Authenticate"),
                Some(&b"Bearer realm=\"ringway\""[..])
            );
            assert_eq!(x.cx.consumer, None);
            x.reply_message().unwrap()
        };
        assert_eq!(
            msg(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            "Missing JWT token in request"
        );
        assert_eq!(msg(&bearer("not.a.jwt")), "JWT token invalid");
        let stranger = token(jsonwebtoken::Algorithm::HS256, "nobody", b"x", 60);
        assert_eq!(msg(&bearer(&stranger)), "Invalid user key in JWT token");
        let forged = token(jsonwebtoken::Algorithm::HS256, "dave-key", b"guess", 60);
        assert_eq!(msg(&bearer(&forged)), "failed to verify jwt");
        assert_eq!(
            msg(&bearer(&dave(-3600))),
            "failed to verify jwt: token expired"
        );
        // Within dave's default 5 s of grace; erin has none.
        assert_eq!(gw.send(&bearer(&dave(-2))).replied(), None);
        let erin = token(
            jsonwebtoken::Algorithm::HS512,
            "erin-key",
            b"erin-secret",
            -2,
        );
        assert_eq!(msg(&bearer(&erin)), "failed to verify jwt: token expired");
    }

    #[test]
    fn hide_credentials_strips_header_or_query() {
        let gw = gw("[jwt-auth]\nhide_credentials = true\n");
        let x = gw.send(&bearer(&dave(60)));
        assert_eq!(x.cx.consumer, Some(0));
        assert!(x.cx.req_headers.drops(b"authorization"));
        let x =
            gw.send(format!("GET /?a=1&jwt={} HTTP/1.1\r\nHost: a\r\n\r\n", dave(60)).as_bytes());
        assert_eq!(x.cx.query.as_deref(), Some(&b"a=1"[..]));
        assert!(!x.cx.req_headers.drops(b"authorization"));
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[jwt-auth]\nheader = 1\n");
        assert_eq!(e.path, "routes[0].plugins.jwt-auth.header");
        let consumer_error = |creds: &str| {
            Setup::route("[jwt-auth]\n")
                .consumers(&format!(
                    "[[consumers]]\nusername = \"a\"\nplugins.jwt-auth = {creds}\n"
                ))
                .build()
                .err()
                .unwrap()
                .path
        };
        assert_eq!(
            consumer_error("{ key = \"k\", secret = \"s\", algorithm = \"none\" }"),
            "consumers[0].plugins.jwt-auth.algorithm"
        );
        assert_eq!(
            consumer_error("{ key = \"k\" }"),
            "consumers[0].plugins.jwt-auth.secret"
        );
        assert_eq!(
            consumer_error("{ key = \"k\", algorithm = \"RS256\", public_key = \"junk\" }"),
            "consumers[0].plugins.jwt-auth.public_key"
        );
        assert_eq!(
            consumer_error("{ key = \"k\", secret = \"%%\", base64_secret = true }"),
            "consumers[0].plugins.jwt-auth.secret"
        );
    }
}
