//! openid-connect: bearer access tokens from an OpenID provider (JWTs verified on the shard against
//! the provider's JWKS, opaque ones introspected, RFC 6750 answers) and the browser flow
//! (browser.rs). Provider calls run off the shard (remote.rs); shards read its news, never block.

// Per shard and config, one `Side`: the provider's keys as last heard, the verified-token cache
// (a JWT already verified is recognised by its bytes until it expires, with no signature check),
// the introspection caches (positive up to the token's remaining lifetime and
// `introspection_cache_ttl`, negative for `introspection_negative_ttl`), and the tokens asked
// about. The shard reads its mailbox at most every `DRAIN_EVERY` and while a request waits.

mod browser;
mod cache;
mod calls;
mod conf;
pub mod keys;
mod remote;
pub mod session;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Map, Value};

use self::cache::TokenCache;
use self::calls::{Discovered, Failed, Introspection, Tokens};
use self::conf::{Settings, Unauth};
use self::keys::{KeySet, Refusal, Rules};
use self::remote::{Ask, News, Remote, ShardEnds};
use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::consumer::Consumers;
use super::key_auth::set_consumer;
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Reply, Spec, Until, Wait};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;

pub const SPEC: Spec = Spec {
    name: "openid-connect",
    priority: 2599,
    phases: phase::ACCESS,
    build: factory,
};

/// The longest a verified JWT is reused without a new check, whatever its `exp` says.
const MAX_REUSE_SECS: u64 = 24 * 3600;

/// How often a shard reads its mailbox on the request path (new keys reach it within this).
const DRAIN_EVERY: Duration = Duration::from_millis(50);

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    Ok(Arc::new(Factory {
        s: Arc::new(conf::settings(v, path)?),
        remote: OnceLock::new(),
    }))
}

struct Factory {
    s: Arc<Settings>,
    /// Started when the first shard builds its instance (not at config check); `None` if the
    /// thread could not be started (every token then gets the unavailable status).
    remote: OnceLock<Option<Remote>>,
}

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        let remote = self.remote.get_or_init(|| {
            Remote::start(self.s.endpoints.clone())
                .map_err(|e| log::error!("openid-connect: cannot start its control thread: {e}"))
                .ok()
        });
        let names = shard
            .consumers
            .list
            .iter()
            .enumerate()
            .map(|(i, c)| (c.username.clone(), i))
            .collect();
        Rc::new(Oidc(Rc::new(Side {
            s: self.s.clone(),
            consumers: shard.consumers.clone(),
            names,
            ends: remote.as_ref().map(|r| r.join(shard.purges.waker())),
            keys: RefCell::new(None),
            disc: RefCell::new(None),
            key_news: Cell::new(0),
            next_drain: Cell::new(Instant::now()),
            refetch: Cell::new(None),
            jwt: RefCell::default(),
            intro: RefCell::default(),
            denied: RefCell::default(),
            pending: RefCell::default(),
            sessions: RefCell::default(),
            asked: RefCell::default(),
            answers: RefCell::default(),
        })))
    }
}

/// What a verified token admits: computed once per token and shard, then reused until expiry.
struct Grant {
    consumer: Option<usize>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    scope_ok: bool,
}

/// One shard's state for one config.
struct Side {
    s: Arc<Settings>,
    consumers: Arc<Consumers>,
    names: HashMap<String, usize>,
    ends: Option<ShardEnds>,
    keys: RefCell<Option<(Arc<KeySet>, Rules)>>,
    /// The provider's endpoints (browser flow), from the same news as the keys.
    disc: RefCell<Option<Arc<Discovered>>>,
    /// Bumped by every keys answer (new or unchanged): what an unknown-kid wait watches.
    key_news: Cell<u64>,
    next_drain: Cell<Instant>,
    /// A refetch asked at (when, key_news then): one per `jwks_refetch_interval` per shard.
    refetch: Cell<Option<(Instant, u64)>>,
    jwt: RefCell<TokenCache<Rc<Grant>>>,
    intro: RefCell<TokenCache<Rc<Grant>>>,
    denied: RefCell<TokenCache<()>>,
    pending: RefCell<HashSet<Box<[u8]>>>,
    /// Browser flow: opened session cookies by their bytes (until the access token expires).
    sessions: RefCell<TokenCache<Rc<Grant>>>,
    /// Codes and refresh tokens asked about, and the answers (kept `browser::ANSWER_KEEP`).
    asked: RefCell<HashSet<String>>,
    #[allow(clippy::type_complexity)]
    answers: RefCell<HashMap<String, (Instant, Rc<Result<Tokens, Failed>>)>>,
}

struct Oidc(Rc<Side>);

const CHALLENGE: &str = "Bearer realm=\"ringway\"";
const INVALID: &str = "Bearer realm=\"ringway\", error=\"invalid_token\"";

fn invalid_token() -> Flow {
    Flow::Respond(Reply::json_message(401, "invalid_token").header("WWW-Authenticate", INVALID))
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token of `Authorization: Bearer <token>` (RFC 6750 2.1), if any.
fn bearer(req: &RequestHead) -> Option<&[u8]> {
    let h = req.header("authorization")?.trim_ascii();
    match h.get(..7) {
        Some(p) if p.eq_ignore_ascii_case(b"bearer ") => Some(h[7..].trim_ascii()),
        _ => None,
    }
}

impl Side {
    fn drain(&self, now: Instant) {
        let Some(ends) = &self.ends else { return };
        while let Ok(n) = ends.news.try_recv() {
            match n {
                News::Keys(k, disc) => {
                    let issuer = disc.issuer.clone();
                    let s = &self.s;
                    let rules = Rules {
                        issuers: if s.issuers.is_empty() {
                            vec![issuer.to_string()]
                        } else {
                            s.issuers.clone()
                        },
                        audience: s.audience.clone(),
                        skew: s.skew.as_secs(),
                        required_claims: s.required_claims.clone(),
                    };
                    *self.keys.borrow_mut() = Some((k, rules));
                    *self.disc.borrow_mut() = Some(disc);
                    // A key taken out of the set must not go on admitting its tokens.
                    self.jwt.borrow_mut().clear();
                    self.key_news.set(self.key_news.get() + 1);
                }
                News::KeysUnchanged => self.key_news.set(self.key_news.get() + 1),
                News::Introspected { token, answer } => {
                    self.pending.borrow_mut().remove(token.as_bytes());
                    match answer {
                        Introspection::Active(m) => match self.intro_grant(&token, &m) {
                            Some((g, until)) => self.intro.borrow_mut().insert(
                                token.as_bytes(),
                                until,
                                Rc::new(g),
                                now,
                            ),
                            None => self.deny(token.as_bytes(), now),
                        },
                        Introspection::Inactive => self.deny(token.as_bytes(), now),
                        Introspection::Unavailable => {}
                    }
                }
                News::Tokens { key, result } => self.answered(key, result, now),
            }
        }
    }

    fn deny(&self, tok: &[u8], now: Instant) {
        self.denied
            .borrow_mut()
            .insert(tok, now + self.s.negative_ttl, (), now);
    }

    /// An active introspection answer checked as a JWT's claims would be (exp, nbf, aud, iss
    /// when configured); the grant and how long it may be cached.
    fn intro_grant(&self, tok: &str, m: &Map<String, Value>) -> Option<(Grant, Instant)> {
        let now = unix_now();
        let skew = self.s.skew.as_secs();
        let num = |k: &str| m.get(k).and_then(Value::as_u64);
        if num("exp").is_some_and(|e| e.saturating_add(skew) <= now)
            || num("nbf").is_some_and(|n| n > now.saturating_add(skew))
        {
            return None;
        }
        if let Some(a) = &self.s.audience {
            let ok = match m.get("aud") {
                Some(Value::String(s)) => s == a,
                Some(Value::Array(v)) => v.iter().any(|x| x.as_str() == Some(a)),
                _ => false,
            };
            if !ok {
                return None;
            }
        }
        if !self.s.issuers.is_empty() {
            let iss = m.get("iss").and_then(Value::as_str)?;
            if !self.s.issuers.iter().any(|i| i == iss) {
                return None;
            }
        }
        let mut ttl = self.s.intro_ttl;
        if let Some(e) = num("exp") {
            ttl = ttl.min(Duration::from_secs(
                e.saturating_add(skew).saturating_sub(now),
            ));
        }
        Some((self.grant(tok, m), Instant::now() + ttl))
    }

    fn grant(&self, tok: &str, claims: &Map<String, Value>) -> Grant {
        let s = &self.s;
        let have = keys::scopes(claims);
        let scope_ok = s.required_scopes.iter().all(|r| have.contains(&r.as_str()));
        let consumer = s.consumer_by.as_deref().and_then(|c| {
            let v = claims.get(c)?.as_str()?;
            self.names.get(v).copied()
        });
        let mut headers = Vec::new();
        if s.set_access_token_header && !s.access_token_in_authorization_header {
            headers.push((b"X-Access-Token".to_vec(), tok.as_bytes().to_vec()));
        }
        if s.set_userinfo_header {
            let json = Value::Object(claims.clone()).to_string();
            let b64 = base64::engine::general_purpose::STANDARD.encode(json);
            headers.push((b"X-Userinfo".to_vec(), b64.into_bytes()));
        }
        for (claim, header) in &s.claims_to_headers {
            let v = match claims.get(claim) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => continue,
                Some(other) => other.to_string(),
            };
            // A claim with a line break would split the header; it is left out.
            if v.bytes().all(|b| b >= 0x20 && b != 0x7f) {
                headers.push((header.as_bytes().to_vec(), v.into_bytes()));
            }
        }
        Grant {
            consumer,
            headers,
            scope_ok,
        }
    }

    fn admit(&self, g: &Grant, cx: &mut Ctx) -> Flow {
        if !g.scope_ok {
            return Flow::Respond(
                Reply::json_message(403, "insufficient_scope")
                    .header("WWW-Authenticate", self.s.scope_challenge.clone()),
            );
        }
        if let Some(i) = g.consumer {
            set_consumer(cx, &self.consumers, i);
        }
        for (n, v) in &g.headers {
            cx.req_headers.set(n, v);
        }
        Flow::Continue
    }

    fn unavailable(&self) -> Flow {
        Flow::Respond(Reply::json_message(
            self.s.unavailable_status,
            "identity provider unavailable",
        ))
    }

    /// Asks for the JWKS again (rate-limited per shard); a wait for its answer, if one was asked
    /// or is outstanding.
    fn refetch(self: &Rc<Self>, now: Instant) -> Option<Wait> {
        let ends = self.ends.as_ref()?;
        let seen = self.key_news.get();
        let outstanding = match self.refetch.get() {
            Some((at, news)) if news == seen && now < at + self.s.endpoints.timeout * 2 => true,
            Some((at, _)) if now < at + self.s.endpoints.jwks_refetch_interval => return None,
            _ => false,
        };
        if !outstanding {
            let reply = ends.reply.clone();
            if ends.asks.send(Ask::Refetch { reply }).is_err() {
                return None;
            }
            self.refetch.set(Some((now, seen)));
        }
        let me = self.clone();
        Some(Wait {
            until: Until::Ready(Box::new(move || {
                me.drain(Instant::now());
                me.key_news.get() > seen
            })),
            within: self.s.endpoints.timeout * 2,
        })
    }

    fn introspect(self: &Rc<Self>, tok: &str) -> Option<Wait> {
        let ends = self.ends.as_ref()?;
        let key: Box<[u8]> = tok.as_bytes().into();
        if !self.pending.borrow().contains(&key) {
            let ask = Ask::Introspect {
                token: tok.to_string(),
                reply: ends.reply.clone(),
            };
            if ends.asks.send(ask).is_err() {
                return None;
            }
            self.pending.borrow_mut().insert(key.clone());
        }
        let me = self.clone();
        Some(Wait {
            until: Until::Ready(Box::new(move || {
                me.drain(Instant::now());
                !me.pending.borrow().contains(&key)
            })),
            within: self.s.endpoints.timeout + Duration::from_millis(500),
        })
    }
}

impl Plugin for Oidc {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn access(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let side = &self.0;
        let now = cx.start;
        // Once per request: the second visit after a wait must decide without waiting again.
        let waited = std::mem::take(&mut cx.private.oidc_waited);
        if now >= side.next_drain.get() || waited {
            side.drain(now);
            side.next_drain.set(now + DRAIN_EVERY);
        }
        let Some(tok) = bearer(req).filter(|t| !t.is_empty()) else {
            if let Some(b) = &side.s.browser {
                return side.browse(b, req, cx, waited);
            }
            if side.s.unauth == Unauth::Pass {
                return Flow::Continue;
            }
            return Flow::Respond(
                Reply::json_message(401, "authorization required")
                    .header("WWW-Authenticate", CHALLENGE),
            );
        };
        if let Some(g) = side.jwt.borrow().get(tok, now).cloned() {
            return side.admit(&g, cx);
        }
        if let Some(g) = side.intro.borrow().get(tok, now).cloned() {
            return side.admit(&g, cx);
        }
        let Ok(tok) = std::str::from_utf8(tok) else {
            return invalid_token();
        };
        let wait = |w: Option<Wait>, cx: &mut Ctx| match w {
            Some(w) => side.park(w, cx),
            None => invalid_token(),
        };
        if side.s.use_jwks && keys::looks_like_jwt(tok.as_bytes()) {
            let verdict = side
                .keys
                .borrow()
                .as_ref()
                .map(|(k, rules)| keys::verify(tok, k, rules, unix_now()));
            return match verdict {
                None if waited => side.unavailable(),
                None => match side.refetch(now) {
                    Some(w) => wait(Some(w), cx),
                    None => side.unavailable(),
                },
                Some(Ok(claims)) => {
                    let g = Rc::new(side.grant(tok, &claims));
                    let exp = claims.get("exp").and_then(Value::as_u64);
                    if let Some(exp) = exp.filter(|_| side.s.reuse_verified) {
                        // Capped: an Instant far in the future would overflow.
                        let left = exp
                            .saturating_add(side.s.skew.as_secs())
                            .saturating_sub(unix_now())
                            .min(MAX_REUSE_SECS);
                        side.jwt.borrow_mut().insert(
                            tok.as_bytes(),
                            now + Duration::from_secs(left),
                            g.clone(),
                            now,
                        );
                    }
                    side.admit(&g, cx)
                }
                Some(Err(Refusal::UnknownKid)) if !waited => wait(side.refetch(now), cx),
                Some(Err(_)) => invalid_token(),
            };
        }
        if side.denied.borrow().get(tok.as_bytes(), now).is_some() {
            return invalid_token();
        }
        if waited {
            // Asked and no answer came (provider down or slow): never admitted.
            return side.unavailable();
        }
        match side.introspect(tok) {
            Some(w) => wait(Some(w), cx),
            None => side.unavailable(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::plugin::testkit::{self, Setup};

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[openid-connect]\nclient_id = \"c\"\n");
        assert_eq!(e.path, "routes[0].plugins.openid-connect");
        let base = "[openid-connect]\nclient_id = \"c\"\ndiscovery = \"http://127.0.0.1:9/d\"\n";
        for (extra, key) in [
            ("bearer_only = false", "redirect_uri"),
            (
                "bearer_only = false\nredirect_uri = \"http://a/cb\"",
                "session.secret",
            ),
            ("unauth_action = \"x\"", "unauth_action"),
            ("timeout = \"soon\"", "timeout"),
            ("introspection_cache_ttl = 1e12", "introspection_cache_ttl"),
            (
                "provider_unavailable_status = 200",
                "provider_unavailable_status",
            ),
            (
                "claim_validator.audience.required = true",
                "claim_validator.audience.required",
            ),
            (
                "introspection_endpoint_auth_method = \"x\"",
                "introspection_endpoint_auth_method",
            ),
            (
                "claims_to_headers = { sub = \"a b\" }",
                "claims_to_headers.sub",
            ),
        ] {
            let e = testkit::config_error(&format!("{base}{extra}\n"));
            assert_eq!(
                e.path,
                format!("routes[0].plugins.openid-connect.{key}"),
                "{extra}"
            );
        }
        let e =
            testkit::config_error("[openid-connect]\nclient_id = \"c\"\ndiscovery = \"ftp://x\"\n");
        assert_eq!(e.path, "routes[0].plugins.openid-connect.discovery");
    }

    #[test]
    fn missing_or_non_bearer_credentials_get_the_bare_challenge() {
        let gw = Setup::route(
            "[openid-connect]\nclient_id = \"c\"\ndiscovery = \"http://127.0.0.1:9/d\"\n",
        )
        .build()
        .unwrap();
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic eDp5\r\n\r\n",
        ] {
            let x = gw.send(raw);
            assert_eq!(x.replied(), Some(401));
            assert_eq!(
                x.reply_header("WWW-Authenticate"),
                Some(&b"Bearer realm=\"ringway\""[..])
            );
        }
        let pass = Setup::route(
            "[openid-connect]\nclient_id = \"c\"\ndiscovery = \"http://127.0.0.1:9/d\"\nunauth_action = \"pass\"\n",
        )
        .build()
        .unwrap();
        assert_eq!(
            pass.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").replied(),
            None
        );
    }
}
