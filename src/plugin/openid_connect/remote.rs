//! openid-connect's control thread, one per plugin config: discovery, the JWKS (fetched, refreshed,
//! refetched on a shard's unknown `kid` at most once per `jwks_refetch_interval`) and introspection
//! calls, with timeouts. Talks to shards only over channels; never runs on a shard.

// State changes (provider reachable or not, keys changed) are logged once, not per call; every
// call is counted in metrics::oidc. A provider that is down leaves the last keys in force.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use serde_json::{Map, Value};

use super::keys::KeySet;
use crate::metrics::oidc::count;

const DISCOVERY: usize = 0;
const JWKS: usize = 1;
const INTROSPECTION: usize = 2;

/// Longest wait between discovery attempts while the provider cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The most a provider's answer may weigh (a JWKS or an introspection answer is a few KiB).
const MAX_BODY: u64 = 1 << 20;

/// A shard's request to the control thread.
pub enum Ask {
    /// A token named a `kid` the shard's keys lack. `reply` hears `KeysUnchanged` when no new
    /// keys come of it (rate-limited, or the JWKS has nothing new); new keys go to every shard.
    Refetch { reply: Sender<News> },
    /// RFC 7662 for an opaque token; the answer goes to `reply` only.
    Introspect { token: String, reply: Sender<News> },
}

/// What the control thread tells a shard.
pub enum News {
    /// The provider's keys and issuer (after discovery, a refresh that changed them, or to a
    /// shard that just joined).
    Keys(Arc<KeySet>, Arc<str>),
    KeysUnchanged,
    Introspected {
        token: String,
        answer: Introspection,
    },
}

/// An introspection outcome.
pub enum Introspection {
    /// `active: true`, with the answer's members (exp, scope, sub, aud, ...).
    Active(Map<String, Value>),
    Inactive,
    /// No answer (down, timeout, bad response): the token is neither admitted nor remembered.
    Unavailable,
}

/// Where and how to reach the provider.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub discovery: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Instead of the discovery document's `introspection_endpoint`.
    pub introspection: Option<String>,
    /// client_secret_post instead of client_secret_basic.
    pub secret_in_body: bool,
    pub timeout: Duration,
    pub jwks_refresh: Duration,
    pub jwks_refetch_interval: Duration,
}

/// What every shard of one plugin config shares with its control thread: the shards' mailboxes
/// and the newest keys (for a shard that joins later). Locked when a shard joins and when the
/// thread broadcasts, never per request.
#[derive(Default)]
struct Hub {
    shards: Vec<Sender<News>>,
    current: Option<(Arc<KeySet>, Arc<str>)>,
}

/// The control thread's handle: how shards join and ask.
pub struct Remote {
    hub: Arc<Mutex<Hub>>,
    asks: Sender<Ask>,
}

/// One shard's ends: asks out, news in (and the sender the thread answers it on).
pub struct ShardEnds {
    pub asks: Sender<Ask>,
    pub news: Receiver<News>,
    pub reply: Sender<News>,
}

impl Remote {
    /// Starts the control thread. It ends when the last `Sender<Ask>` is gone (the factory and
    /// every shard instance of this config dropped).
    pub fn start(ep: Endpoints) -> std::io::Result<Remote> {
        let hub = Arc::new(Mutex::new(Hub::default()));
        let (asks, rx) = unbounded();
        let h = hub.clone();
        std::thread::Builder::new()
            .name("ringway-oidc".into())
            .spawn(move || Thread::new(ep, h).run(&rx))?;
        Ok(Remote { hub, asks })
    }

    /// A new shard's mailbox; it gets the current keys at once if there are any.
    pub fn join(&self) -> ShardEnds {
        let (tx, news) = unbounded();
        let mut hub = self.hub.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((k, i)) = &hub.current {
            let _ = tx.send(News::Keys(k.clone(), i.clone()));
        }
        hub.shards.push(tx.clone());
        ShardEnds {
            asks: self.asks.clone(),
            news,
            reply: tx,
        }
    }
}

#[derive(Clone)]
struct Discovered {
    issuer: Arc<str>,
    jwks_uri: String,
    introspection: Option<String>,
}

struct Thread {
    ep: Endpoints,
    hub: Arc<Mutex<Hub>>,
    agent: ureq::Agent,
    disc: Option<Discovered>,
    keys: Option<Arc<KeySet>>,
    next_disc: Instant,
    backoff: Duration,
    next_jwks: Instant,
    last_jwks: Option<Instant>,
    /// Provider reachable at the last call (for logging state changes only).
    up: bool,
}

impl Thread {
    fn new(ep: Endpoints, hub: Arc<Mutex<Hub>>) -> Thread {
        let agent = ureq::AgentBuilder::new()
            .timeout(ep.timeout)
            .redirects(0)
            .build();
        let now = Instant::now();
        Thread {
            ep,
            hub,
            agent,
            disc: None,
            keys: None,
            next_disc: now,
            backoff: Duration::from_millis(250),
            next_jwks: now,
            last_jwks: None,
            up: true,
        }
    }

    fn run(mut self, asks: &Receiver<Ask>) {
        loop {
            let now = Instant::now();
            if self.disc.is_none() && now >= self.next_disc {
                self.discover();
            }
            if self.disc.is_some() && now >= self.next_jwks {
                self.refresh_jwks();
            }
            let due = if self.disc.is_none() {
                self.next_disc
            } else {
                self.next_jwks
            };
            let wait = due
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            match asks.recv_timeout(wait) {
                Ok(Ask::Refetch { reply }) => {
                    let allowed = self
                        .last_jwks
                        .is_none_or_elapsed(self.ep.jwks_refetch_interval);
                    if self.disc.is_none() {
                        self.discover();
                    }
                    let changed = allowed && self.disc.is_some() && self.refresh_jwks();
                    if !changed {
                        let _ = reply.send(News::KeysUnchanged);
                    }
                }
                Ok(Ask::Introspect { token, reply }) => {
                    let answer = self.introspect(&token);
                    let _ = reply.send(News::Introspected { token, answer });
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Logs reachability changes once.
    fn mark(&mut self, ok: bool, what: &str, err: &str) {
        if ok && !self.up {
            log::info!(
                "openid-connect: provider {} reachable again",
                self.ep.discovery
            );
        } else if !ok && self.up {
            log::warn!(
                "openid-connect: provider {} unreachable ({what}: {err}); cached keys stay in force, \
                 new opaque tokens are refused",
                self.ep.discovery
            );
        }
        self.up = ok;
    }

    fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let resp = self.agent.get(url).call().map_err(|e| e.to_string())?;
        body(resp)
    }

    fn discover(&mut self) {
        let r = self
            .get(&self.ep.discovery.clone())
            .and_then(|b| parse_discovery(&b));
        count(DISCOVERY, r.is_ok());
        match r {
            Ok(d) => {
                self.mark(true, "discovery", "");
                self.disc = Some(d);
                self.backoff = Duration::from_millis(250);
                self.next_jwks = Instant::now();
            }
            Err(e) => {
                self.mark(false, "discovery", &e);
                self.next_disc = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Fetches the JWKS; true when the keys changed (and were sent to every shard).
    fn refresh_jwks(&mut self) -> bool {
        let Some(d) = self.disc.clone() else {
            return false;
        };
        self.last_jwks = Some(Instant::now());
        let r = self
            .get(&d.jwks_uri)
            .and_then(|b| KeySet::parse(&b))
            .and_then(|k| match k.is_empty() {
                true => Err("the JWKS has no usable signing key".to_string()),
                false => Ok(k),
            });
        count(JWKS, r.is_ok());
        match r {
            Ok(k) => {
                self.mark(true, "jwks", "");
                self.next_jwks = Instant::now() + self.ep.jwks_refresh;
                if self.keys.as_ref().is_some_and(|old| old.same_kids(&k)) {
                    return false;
                }
                log::info!(
                    "openid-connect: {} signing keys from {} ({:?})",
                    k.len(),
                    d.jwks_uri,
                    k
                );
                let k = Arc::new(k);
                self.keys = Some(k.clone());
                let mut hub = self.hub.lock().unwrap_or_else(PoisonError::into_inner);
                hub.current = Some((k.clone(), d.issuer.clone()));
                hub.shards
                    .retain(|s| s.send(News::Keys(k.clone(), d.issuer.clone())).is_ok());
                true
            }
            Err(e) => {
                self.mark(false, "jwks", &e);
                // Retry sooner than a full refresh interval, but not in a loop.
                self.next_jwks = Instant::now() + self.ep.jwks_refresh.min(Duration::from_secs(5));
                false
            }
        }
    }

    fn introspect(&mut self, token: &str) -> Introspection {
        if self.disc.is_none() && self.ep.introspection.is_none() {
            self.discover();
        }
        let url = self
            .ep
            .introspection
            .clone()
            .or_else(|| self.disc.as_ref().and_then(|d| d.introspection.clone()));
        let Some(url) = url else {
            return Introspection::Unavailable;
        };
        let mut req = self.agent.post(&url);
        let secret = self.ep.client_secret.clone().unwrap_or_default();
        let mut form = vec![("token", token), ("token_type_hint", "access_token")];
        if self.ep.secret_in_body {
            form.push(("client_id", &self.ep.client_id));
            form.push(("client_secret", &secret));
        } else {
            let cred = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                form_encode(&self.ep.client_id),
                form_encode(&secret)
            ));
            req = req.set("Authorization", &format!("Basic {cred}"));
        }
        let r = req
            .send_form(&form)
            .map_err(|e| e.to_string())
            .and_then(body)
            .and_then(|b| {
                serde_json::from_slice::<Map<String, Value>>(&b)
                    .map_err(|e| format!("introspection answer is not a JSON object: {e}"))
            });
        count(INTROSPECTION, r.is_ok());
        match r {
            Ok(m) => {
                self.mark(true, "introspection", "");
                if m.get("active") == Some(&Value::Bool(true)) {
                    Introspection::Active(m)
                } else {
                    Introspection::Inactive
                }
            }
            Err(e) => {
                self.mark(false, "introspection", &e);
                Introspection::Unavailable
            }
        }
    }
}

trait Elapsed {
    fn is_none_or_elapsed(&self, d: Duration) -> bool;
}

impl Elapsed for Option<Instant> {
    fn is_none_or_elapsed(&self, d: Duration) -> bool {
        self.map_or(true, |t| t.elapsed() >= d)
    }
}

fn body(resp: ureq::Response) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    resp.into_reader()
        .take(MAX_BODY)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// RFC 6749 2.3.1: client credentials in HTTP Basic are form-urlencoded first.
fn form_encode(s: &str) -> String {
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

fn parse_discovery(b: &[u8]) -> Result<Discovered, String> {
    let v: Map<String, Value> = serde_json::from_slice(b)
        .map_err(|e| format!("discovery document is not a JSON object: {e}"))?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(Discovered {
        issuer: s("issuer")
            .ok_or("discovery document has no issuer")?
            .into(),
        jwks_uri: s("jwks_uri").ok_or("discovery document has no jwks_uri")?,
        introspection: s("introspection_endpoint"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_needs_issuer_and_jwks_uri() {
        let d = parse_discovery(br#"{"issuer":"i","jwks_uri":"j","introspection_endpoint":"x"}"#)
            .unwrap();
        assert_eq!((&*d.issuer, d.jwks_uri.as_str()), ("i", "j"));
        assert_eq!(d.introspection.as_deref(), Some("x"));
        assert!(parse_discovery(br#"{"jwks_uri":"j"}"#).is_err());
        assert!(parse_discovery(b"[]").is_err());
        assert!(parse_discovery(b"\x00").is_err());
        assert_eq!(form_encode("a b:c"), "a%20b%3Ac");
    }
}
