//! openid-connect's control thread, one per plugin config: discovery, the JWKS (fetched, refreshed,
//! refetched on a shard's unknown `kid` at most once per `jwks_refetch_interval`), and the pool of
//! worker threads that make the per-token calls (calls.rs) concurrently. Never runs on a shard.

// State changes (provider reachable or not, keys changed) are logged once, not per call; every
// call is counted in metrics::oidc. A provider that is down leaves the last keys in force.
// Introspection, code exchange and refresh go to up to `MAX_WORKERS` threads (started as needed),
// so one slow answer holds up only its own caller; a job still queued at its deadline is answered
// "unavailable" without a call.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use serde_json::{Map, Value};

use super::calls::{
    self, body, Discovered, Endpoints, Failed, Grant, Introspection, Provider, Reach, Tokens,
};
use super::keys::KeySet;
use crate::metrics::oidc::count;
use crate::util::mesh::Wake;

const DISCOVERY: usize = 0;
const JWKS: usize = 1;

/// Longest wait between discovery attempts while the provider cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Worker threads one plugin config may run at once for per-token calls.
pub const MAX_WORKERS: usize = 8;

/// A shard's request to the control thread.
pub enum Ask {
    /// A token named a `kid` the shard's keys lack. `reply` hears `KeysUnchanged` when no new
    /// keys come of it (rate-limited, or the JWKS has nothing new); new keys go to every shard.
    Refetch { reply: Mailbox },
    /// RFC 7662 for an opaque token; the answer goes to `reply` only.
    Introspect { token: String, reply: Mailbox },
    /// The browser flow's callback: the code for tokens (PKCE `verifier`), the ID token checked
    /// against `nonce`. Answered as `Tokens { key: code }`.
    Exchange {
        code: String,
        verifier: String,
        nonce: String,
        reply: Mailbox,
    },
    /// A session's access token expired: new tokens for its refresh token (the key).
    Refresh { token: String, reply: Mailbox },
}

/// What the control thread tells a shard.
pub enum News {
    /// The provider's keys and discovery document (after discovery, a refresh that changed
    /// them, or to a shard that just joined).
    Keys(Arc<KeySet>, Arc<Discovered>),
    KeysUnchanged,
    Introspected {
        token: String,
        answer: Introspection,
    },
    /// The outcome of an `Exchange` (key: the code) or a `Refresh` (key: the refresh token).
    Tokens {
        key: String,
        result: Result<Tokens, Failed>,
    },
}

/// What every shard of one plugin config shares with its control thread: the shards' mailboxes
/// and the newest keys (for a shard that joins later). Locked when a shard joins and when the
/// thread broadcasts, never per request.
#[derive(Default)]
struct Hub {
    shards: Vec<Mailbox>,
    current: Option<(Arc<KeySet>, Arc<Discovered>)>,
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
    pub reply: Mailbox,
}

/// A shard's mailbox as the control thread and workers hold it: each send rings the shard's
/// doorbell, so a request parked for the answer resumes at once.
#[derive(Clone)]
pub struct Mailbox {
    tx: Sender<News>,
    wake: Arc<dyn Wake>,
}

impl Mailbox {
    /// Err when the shard's instance is gone.
    pub fn send(&self, n: News) -> Result<(), ()> {
        self.tx.send(n).map_err(|_| ())?;
        self.wake.wake();
        Ok(())
    }
}

impl Remote {
    /// Starts the control thread. It ends when the last `Sender<Ask>` is gone (the factory and
    /// every shard instance of this config dropped); its workers end with it.
    pub fn start(ep: Endpoints) -> std::io::Result<Remote> {
        let hub = Arc::new(Mutex::new(Hub::default()));
        let (asks, rx) = unbounded();
        let h = hub.clone();
        std::thread::Builder::new()
            .name("ringway-oidc".into())
            .spawn(move || Thread::new(ep, h).run(&rx))?;
        Ok(Remote { hub, asks })
    }

    /// A new shard's mailbox (`wake` rings its doorbell); it gets the current keys at once if
    /// there are any.
    pub fn join(&self, wake: Arc<dyn Wake>) -> ShardEnds {
        let (tx, news) = unbounded();
        let tx = Mailbox { tx, wake };
        let mut hub = self.hub.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((k, d)) = &hub.current {
            let _ = tx.send(News::Keys(k.clone(), d.clone()));
        }
        hub.shards.push(tx.clone());
        ShardEnds {
            asks: self.asks.clone(),
            news,
            reply: tx,
        }
    }
}

/// One per-token call for a worker, answered on `reply` by its deadline.
struct Job {
    deadline: Instant,
    work: Work,
    reply: Mailbox,
}

enum Work {
    Introspect {
        url: Option<String>,
        token: String,
    },
    Exchange {
        p: Provider,
        code: String,
        verifier: String,
        nonce: String,
    },
    Refresh {
        p: Provider,
        token: String,
    },
}

impl Job {
    /// Makes the call (none when `with` is None or the deadline passed) and answers.
    fn run(self, with: Option<(&ureq::Agent, &Endpoints, &Reach)>) {
        let with = with.filter(|_| Instant::now() < self.deadline);
        let reach = with.map(|w| w.2);
        let with = with.map(|(a, e, _)| (a, e));
        let unavailable = || Failed::Unavailable("no worker was free before the timeout".into());
        let news = match self.work {
            Work::Introspect { url, token } => {
                let answer = match (url, with) {
                    (Some(u), Some((agent, ep))) => calls::introspect(agent, ep, &u, &token),
                    _ => Introspection::Unavailable,
                };
                News::Introspected { token, answer }
            }
            Work::Exchange {
                p,
                code,
                verifier,
                nonce,
            } => {
                let result = match with {
                    None => Err(unavailable()),
                    Some((agent, ep)) => {
                        let grant = Grant::Code {
                            code: &code,
                            verifier: &verifier,
                            redirect_uri: ep.redirect_uri.as_deref().unwrap_or_default(),
                        };
                        calls::token(agent, ep, &p, grant, Some(&nonce), ep.userinfo)
                    }
                };
                News::Tokens { key: code, result }
            }
            Work::Refresh { p, token } => {
                let result = match with {
                    None => Err(unavailable()),
                    Some((agent, ep)) => {
                        calls::token(agent, ep, &p, Grant::Refresh(&token), None, false)
                    }
                };
                News::Tokens { key: token, result }
            }
        };
        if let Some(r) = reach {
            match &news {
                News::Introspected {
                    answer: Introspection::Unavailable,
                    ..
                } => r.mark(false, "introspection", "no answer"),
                News::Tokens {
                    result: Err(Failed::Unavailable(e)),
                    ..
                } => r.mark(false, "token", e),
                _ => r.mark(true, "", ""),
            }
        }
        let _ = self.reply.send(news);
    }
}

/// The worker pool: a shared queue, threads started while none is idle (up to `MAX_WORKERS`).
struct Pool {
    jobs: Sender<Job>,
    queue: Receiver<Job>,
    idle: Arc<AtomicUsize>,
    started: usize,
    agent: ureq::Agent,
    ep: Arc<Endpoints>,
    reach: Arc<Reach>,
}

impl Pool {
    fn submit(&mut self, job: Job) {
        if self.idle.load(Relaxed) == 0 && self.started < MAX_WORKERS {
            let (queue, idle, agent, ep, reach) = (
                self.queue.clone(),
                self.idle.clone(),
                self.agent.clone(),
                self.ep.clone(),
                self.reach.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name("ringway-oidc-call".into())
                .spawn(move || {
                    idle.fetch_add(1, Relaxed);
                    while let Ok(job) = queue.recv() {
                        idle.fetch_sub(1, Relaxed);
                        job.run(Some((&agent, &ep, &reach)));
                        idle.fetch_add(1, Relaxed);
                    }
                });
            match spawned {
                Ok(_) => {
                    self.started += 1;
                    // Counted idle now, so the next submit does not start another for this job.
                    self.idle.fetch_add(1, Relaxed);
                    let _ = self.jobs.send(job);
                    self.idle.fetch_sub(1, Relaxed);
                    return;
                }
                Err(e) => log::warn!("openid-connect: cannot start a call worker: {e}"),
            }
        }
        if self.started == 0 {
            // No worker at all: answer here (unavailable) rather than leave the job queued.
            job.run(None);
            return;
        }
        let _ = self.jobs.send(job);
    }
}

struct Thread {
    ep: Endpoints,
    hub: Arc<Mutex<Hub>>,
    agent: ureq::Agent,
    pool: Pool,
    disc: Option<Arc<Discovered>>,
    keys: Option<Arc<KeySet>>,
    next_disc: Instant,
    backoff: Duration,
    next_jwks: Instant,
    last_jwks: Option<Instant>,
    /// Provider reachable at the last call (for logging state changes only).
    reach: Arc<Reach>,
}

impl Thread {
    fn new(ep: Endpoints, hub: Arc<Mutex<Hub>>) -> Thread {
        let agent = ureq::AgentBuilder::new()
            .timeout(ep.timeout)
            .redirects(0)
            .build();
        let now = Instant::now();
        let (jobs, queue) = unbounded();
        let reach = Arc::new(Reach {
            discovery: ep.discovery.clone(),
            up: true.into(),
        });
        let pool = Pool {
            reach: reach.clone(),
            jobs,
            queue,
            idle: Arc::default(),
            started: 0,
            agent: agent.clone(),
            ep: Arc::new(ep.clone()),
        };
        Thread {
            ep,
            hub,
            agent,
            pool,
            disc: None,
            keys: None,
            next_disc: now,
            backoff: Duration::from_millis(250),
            next_jwks: now,
            last_jwks: None,
            reach,
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
                Ok(ask) => self.dispatch(ask),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// A per-token ask becomes a worker's job (discovery first if it is still missing).
    fn dispatch(&mut self, ask: Ask) {
        let deadline = Instant::now() + self.ep.timeout;
        if self.disc.is_none()
            && !matches!(ask, Ask::Introspect { .. } if self.ep.introspection.is_some())
        {
            self.discover();
        }
        let provider = |t: &Thread| Provider {
            disc: t.disc.clone().unwrap_or_default(),
            keys: t.keys.clone(),
        };
        let (work, reply) = match ask {
            Ask::Introspect { token, reply } => {
                let url = self
                    .ep
                    .introspection
                    .clone()
                    .or_else(|| self.disc.as_ref().and_then(|d| d.introspection.clone()));
                (Work::Introspect { url, token }, reply)
            }
            Ask::Exchange {
                code,
                verifier,
                nonce,
                reply,
            } => (
                Work::Exchange {
                    p: provider(self),
                    code,
                    verifier,
                    nonce,
                },
                reply,
            ),
            Ask::Refresh { token, reply } => (
                Work::Refresh {
                    p: provider(self),
                    token,
                },
                reply,
            ),
            Ask::Refetch { reply } => {
                let _ = reply.send(News::KeysUnchanged);
                return;
            }
        };
        self.pool.submit(Job {
            deadline,
            work,
            reply,
        });
    }

    fn mark(&self, ok: bool, what: &str, err: &str) {
        self.reach.mark(ok, what, err);
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
                self.disc = Some(Arc::new(d));
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
                hub.current = Some((k.clone(), d.clone()));
                hub.shards
                    .retain(|s| s.send(News::Keys(k.clone(), d.clone())).is_ok());
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
}

trait Elapsed {
    fn is_none_or_elapsed(&self, d: Duration) -> bool;
}

impl Elapsed for Option<Instant> {
    fn is_none_or_elapsed(&self, d: Duration) -> bool {
        self.map_or(true, |t| t.elapsed() >= d)
    }
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
        authorization_endpoint: s("authorization_endpoint"),
        token_endpoint: s("token_endpoint"),
        userinfo_endpoint: s("userinfo_endpoint"),
        end_session_endpoint: s("end_session_endpoint"),
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
    }
}
