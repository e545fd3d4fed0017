//! A small async Redis client on the shard's own monoio runtime (one per store per shard): a few
//! pooled connections per node, AUTH/SELECT, EVALSHA with EVAL fallback, Redis Cluster MOVED/ASK.
//!
//! Every call is bounded by the caller's timeout (connect included). A failed call drops its
//! connection and puts the store in backoff (50 ms doubling to 1 s): until it ends, calls fail at
//! once with no I/O. State changes log one line each (per shard) and are counted in `Stats`,
//! plain cells the shard's snapshot copies out (never a shared atomic). Wire format: net/resp.rs.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::resp::{self, Redirect, Value};

/// Connections to one node kept per shard (idle and busy together); more callers wait.
pub const POOL_MAX: usize = 4;
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Bytes of replies buffered on one connection before it is given up as broken.
const MAX_BUFFERED: usize = resp::MAX_BULK + (64 << 10);
/// Redirections followed for one call (a MOVED, then an ASK during a migration).
const MAX_REDIRECTS: usize = 2;

/// Where a client connects and how it logs in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The server, or a cluster's seed nodes (`host:port`).
    pub nodes: Vec<String>,
    pub cluster: bool,
    pub password: Option<String>,
    /// SELECTed after connecting when not 0 (standalone only).
    pub database: i64,
    /// For log lines: how the store is named in the config.
    pub name: String,
}

/// A Lua script and its SHA1, for EVALSHA.
pub struct Script {
    pub text: &'static str,
    pub sha: String,
}

impl Script {
    pub fn new(text: &'static str) -> Script {
        Script {
            text,
            sha: redis::Script::new(text).get_hash().to_string(),
        }
    }
}

/// A shard's counters for its clients; the shard's snapshot reads them (same thread).
#[derive(Debug, Default)]
pub struct Stats {
    /// Commands sent (AUTH, SELECT, ASKING, EVALSHA, EVAL).
    pub commands: Cell<u64>,
    /// Failed calls (timeouts and connect failures included).
    pub errors: Cell<u64>,
    /// Reachable/unreachable transitions.
    pub changes: Cell<u64>,
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get().wrapping_add(n));
}

/// Why a call has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The store is backing off after a failure: no I/O was made.
    Backoff,
    Failed(String),
}

/// A shard's clients, one per store, kept across config generations (a reload keeps its
/// connections), and their counters.
pub struct Clients {
    shard: usize,
    stats: Rc<Stats>,
    by: RefCell<HashMap<Target, Rc<Client>>>,
}

impl Clients {
    pub fn new(shard: usize) -> Clients {
        Clients {
            shard,
            stats: Rc::default(),
            by: RefCell::default(),
        }
    }

    /// The shard's client for `t` (made on first use; connecting waits for the first call).
    pub fn get(&self, t: &Target) -> Rc<Client> {
        self.by
            .borrow_mut()
            .entry(t.clone())
            .or_insert_with(|| Rc::new(Client::new(t.clone(), self.shard, self.stats.clone())))
            .clone()
    }

    /// [commands, errors, changes] and the state gauge's value (0 no client has made a call,
    /// 1 all reached their store last time, 2 one did not).
    pub fn counts(&self) -> ([u64; 3], u64) {
        let s = &self.stats;
        let state = self
            .by
            .borrow()
            .values()
            .map(|c| match c.up() {
                None => 0,
                Some(true) => 1,
                Some(false) => 2,
            })
            .max()
            .unwrap_or(0);
        ([s.commands.get(), s.errors.get(), s.changes.get()], state)
    }
}

/// One shard's client for one store.
pub struct Client {
    t: Target,
    shard: usize,
    stats: Rc<Stats>,
    pools: RefCell<HashMap<Rc<str>, Rc<Pool>>>,
    /// Cluster: where MOVED said a slot lives; other slots go to the current seed.
    slots: RefCell<HashMap<u16, Rc<str>>>,
    seed: Cell<usize>,
    /// None until the first call ends; then whether the last one reached the store.
    up: Cell<Option<bool>>,
    backoff: Cell<Duration>,
    retry_at: Cell<Option<Instant>>,
}

impl Client {
    fn new(t: Target, shard: usize, stats: Rc<Stats>) -> Client {
        Client {
            t,
            shard,
            stats,
            pools: RefCell::default(),
            slots: RefCell::default(),
            seed: Cell::new(0),
            up: Cell::new(None),
            backoff: Cell::new(BACKOFF_MIN),
            retry_at: Cell::new(None),
        }
    }

    /// None before the first call, else whether the last call reached the store.
    pub fn up(&self) -> Option<bool> {
        self.up.get()
    }

    /// True while a failure's backoff lasts: calls now would fail at once.
    pub fn backing_off(&self) -> bool {
        self.retry_at.get().is_some_and(|at| Instant::now() < at)
    }

    /// Runs `script` with one key (which routes the call on a cluster) and `args`, within
    /// `timeout`. An error reply other than a redirection or NOSCRIPT is a failure.
    pub async fn eval(
        &self,
        timeout: Duration,
        script: &Script,
        key: &[u8],
        args: &[&[u8]],
    ) -> Result<Value, CallError> {
        if self.backing_off() {
            return Err(CallError::Backoff);
        }
        let r = match monoio::time::timeout(timeout, self.routed(script, key, args)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        match &r {
            Ok(_) => self.reached(),
            Err(why) => self.failed(why),
        }
        r.map_err(CallError::Failed)
    }

    async fn routed(&self, script: &Script, key: &[u8], args: &[&[u8]]) -> Result<Value, String> {
        let mut node = self.node_for(key);
        let mut asking = false;
        for hop in 0..=MAX_REDIRECTS {
            let v = self.on_node(&node, script, key, args, asking).await?;
            let Value::Error(e) = &v else {
                return Ok(v);
            };
            match resp::redirect(e).filter(|_| self.t.cluster && hop < MAX_REDIRECTS) {
                Some(Redirect::Moved { slot, to }) => {
                    let to: Rc<str> = to.into();
                    self.slots.borrow_mut().insert(slot, to.clone());
                    (node, asking) = (to, false);
                }
                Some(Redirect::Ask { to }) => (node, asking) = (to.into(), true),
                None => return Err(format!("store answered: {e}")),
            }
        }
        Err("too many redirections".into())
    }

    fn node_for(&self, key: &[u8]) -> Rc<str> {
        if self.t.cluster {
            if let Some(n) = self.slots.borrow().get(&resp::slot(key)) {
                return n.clone();
            }
        }
        let seeds = &self.t.nodes;
        seeds
            .get(self.seed.get() % seeds.len().max(1))
            .map_or_else(|| "".into(), |s| s.as_str().into())
    }

    /// EVALSHA on `node` (after ASKING for an ASK redirection), then EVAL if the node does not
    /// have the script yet.
    async fn on_node(
        &self,
        node: &Rc<str>,
        script: &Script,
        key: &[u8],
        args: &[&[u8]],
        asking: bool,
    ) -> Result<Value, String> {
        let mut lease = self.lease(node).await?;
        let mut cmd: Vec<&[u8]> = vec![b"EVALSHA", script.sha.as_bytes(), b"1", key];
        cmd.extend_from_slice(args);
        let v = self.send(&mut lease, asking, &cmd).await?;
        if !matches!(&v, Value::Error(e) if e.starts_with("NOSCRIPT")) {
            return Ok(v);
        }
        (cmd[0], cmd[1]) = (b"EVAL", script.text.as_bytes());
        self.send(&mut lease, asking, &cmd).await
    }

    /// One command on the leased connection (ASKING first if `asking`); its reply.
    async fn send(&self, lease: &mut Lease, asking: bool, cmd: &[&[u8]]) -> Result<Value, String> {
        let mut req = Vec::with_capacity(128);
        if asking {
            resp::encode(&mut req, &[b"ASKING"]);
        }
        resp::encode(&mut req, cmd);
        let n = 1 + usize::from(asking);
        bump(&self.stats.commands, n as u64);
        let conn = lease.conn.as_mut().ok_or("not connected")?;
        lease.clean = false;
        let mut replies = conn.call(req, n).await?;
        lease.clean = true;
        replies.pop().ok_or_else(|| "no reply".into())
    }

    /// A connection to `node`: an idle one, a new one while under `POOL_MAX`, else the first
    /// one given back.
    async fn lease(&self, node: &Rc<str>) -> Result<Lease, String> {
        let pool = self
            .pools
            .borrow_mut()
            .entry(node.clone())
            .or_default()
            .clone();
        poll_fn(|cx| {
            if !pool.idle.borrow().is_empty() || pool.open.get() < POOL_MAX {
                Poll::Ready(())
            } else {
                pool.waiting.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let idle = pool.idle.borrow_mut().pop();
        if let Some(c) = idle {
            return Ok(Lease {
                pool,
                conn: Some(c),
                clean: true,
            });
        }
        pool.open.set(pool.open.get() + 1);
        let mut lease = Lease {
            pool,
            conn: None,
            clean: false,
        };
        lease.conn = Some(self.connect(node).await?);
        lease.clean = true;
        Ok(lease)
    }

    async fn connect(&self, node: &str) -> Result<Conn, String> {
        let addr = resolve(node)?;
        let s = TcpStream::connect_addr(addr)
            .await
            .map_err(|e| format!("connect {node}: {e}"))?;
        let _ = s.set_nodelay(true);
        let mut c = Conn {
            s,
            buf: Vec::new(),
            chunk: Vec::with_capacity(4096),
        };
        let mut req = Vec::new();
        let mut n = 0;
        if let Some(p) = &self.t.password {
            resp::encode(&mut req, &[b"AUTH", p.as_bytes()]);
            n += 1;
        }
        if !self.t.cluster && self.t.database != 0 {
            let db = self.t.database.to_string();
            resp::encode(&mut req, &[b"SELECT", db.as_bytes()]);
            n += 1;
        }
        if n > 0 {
            bump(&self.stats.commands, n as u64);
            for v in c.call(req, n).await? {
                if let Value::Error(e) = v {
                    return Err(format!("{node} refused the login: {e}"));
                }
            }
        }
        Ok(c)
    }

    /// A call reached the store: the backoff is over; logged if it was down.
    fn reached(&self) {
        self.backoff.set(BACKOFF_MIN);
        self.retry_at.set(None);
        if self.up.replace(Some(true)) == Some(false) {
            bump(&self.stats.changes, 1);
            log::info!(
                "fleet: store {} reachable again from shard {}; exact-mode limits counted there",
                self.t.name,
                self.shard
            );
        }
    }

    /// A call failed: idle connections are dropped (a restarted server broke them all), the
    /// next seed is tried next, and calls fail at once until the backoff ends.
    fn failed(&self, why: &str) {
        bump(&self.stats.errors, 1);
        self.pools.borrow_mut().clear();
        self.seed.set(self.seed.get().wrapping_add(1));
        let b = self.backoff.get();
        self.retry_at.set(Some(Instant::now() + b));
        self.backoff.set((b * 2).min(BACKOFF_MAX));
        let was = self.up.replace(Some(false));
        if was == Some(false) {
            return;
        }
        if was.is_some() {
            bump(&self.stats.changes, 1);
        }
        log::warn!(
            "fleet: store {} unreachable ({why}) from shard {}; exact-mode limits fall back per on_redis_error, retrying with backoff",
            self.t.name,
            self.shard
        );
    }
}

/// A literal address only: a shard never waits on a DNS lookup. Configured addresses are
/// checked at load (plugin/limit_policy.rs); a cluster redirect naming a host fails this call.
fn resolve(node: &str) -> Result<SocketAddr, String> {
    node.parse()
        .map_err(|_| format!("{node} is not an IP address and port (no DNS lookups on a shard)"))
}

/// One node's connections on one shard.
#[derive(Default)]
struct Pool {
    idle: RefCell<Vec<Conn>>,
    /// Connections open or opening, idle ones included.
    open: Cell<usize>,
    /// Callers waiting for a connection (all woken when one is given back).
    waiting: RefCell<Vec<Waker>>,
}

/// A connection taken from its pool: given back when dropped if its last call ended cleanly;
/// otherwise (an error, a timeout mid-call, no connection) it is closed and its place freed.
struct Lease {
    pool: Rc<Pool>,
    conn: Option<Conn>,
    /// No command is half sent or half answered.
    clean: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        match self.conn.take().filter(|_| self.clean) {
            Some(c) => self.pool.idle.borrow_mut().push(c),
            None => self.pool.open.set(self.pool.open.get().saturating_sub(1)),
        }
        for w in self.pool.waiting.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

struct Conn {
    s: TcpStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
    /// The read buffer handed to the kernel (monoio owns it during a read).
    chunk: Vec<u8>,
}

impl Conn {
    /// Writes `req` (`n` commands) and reads `n` replies. A connection that errs is not reused.
    async fn call(&mut self, req: Vec<u8>, n: usize) -> Result<Vec<Value>, String> {
        let (r, _) = self.s.write_all(req).await;
        r.map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match resp::parse(&self.buf).map_err(|e| e.to_string())? {
                Some((v, used)) => {
                    self.buf.drain(..used);
                    out.push(v);
                }
                None => {
                    if self.buf.len() > MAX_BUFFERED {
                        return Err("reply too large".into());
                    }
                    let mut chunk = std::mem::take(&mut self.chunk);
                    chunk.clear();
                    let (r, chunk) = self.s.read(chunk).await;
                    self.buf.extend_from_slice(&chunk);
                    self.chunk = chunk;
                    match r {
                        Ok(0) => return Err("connection closed by the store".into()),
                        Ok(_) => {}
                        Err(e) => return Err(format!("read: {e}")),
                    }
                }
            }
        }
        Ok(out)
    }
}
