//! Leases on an upstream's nodes: per attempt a node and a pooled or new connection; each lease's outcome settles
//! balancer, passive health and pool here and nowhere else. Never reads or writes the connections; knows no HTTP.

use std::mem::ManuallyDrop;
use std::time::Instant;

use monoio::net::TcpStream;

use super::balance::NodeSet;
use super::pool::PooledConn;
use super::stream::UpstreamStream;
use super::UpstreamState;
use crate::error::UpstreamError;
use crate::local::deadline::coarse_now;

/// How the exchange on a leased connection ended; given to `Lease::finish` exactly once.
pub enum Outcome {
    /// The node answered and the connection is clean: back to the node's keep-alive pool.
    Reusable(PooledConn),
    /// The node answered; the connection is not reused (dropped, or kept by the caller as a tunnel).
    Done,
    /// The pooled connection was dead before any response byte. The first time in a request this
    /// is not the node's fault: the node's pool is cleared and the next lease is a fresh
    /// connection to the same node, not counted as an attempt. A second time it is a failure.
    Stale,
    /// The node failed the request: counted against it (passive health) and not tried again.
    NodeFailed(UpstreamError),
    /// Ended for a reason that says nothing about the node (the client went away, sent a bad body).
    Aborted,
}

/// One request's attempts against one upstream: which nodes were tried, how many attempts the
/// retry budget (`retries`) has left, and the stale connection's one free retry.
pub struct Attempts<'u> {
    up: &'u UpstreamState,
    hash: u64,
    tried: NodeSet,
    /// Attempts made so far (the stale connection's retry is not counted).
    made: u32,
    stale_retry_used: bool,
    /// The request can be sent again if a pooled connection turns out dead (`replayable`).
    replayable: bool,
    /// The next attempt goes to this node on a fresh connection (after a stale pooled one).
    fresh_for: Option<usize>,
    /// What the request is answered with if no attempt succeeds.
    last: UpstreamError,
}

/// One attempt's claim on a node. Hand it back with `finish`; dropped unfinished (the request
/// was cancelled) it settles as `Outcome::Aborted`, so least_conn's in-flight count stays right.
pub struct Lease<'a, 'u> {
    attempts: &'a mut Attempts<'u>,
    node: usize,
    pooled: bool,
}

impl UpstreamState {
    /// Starts one request's attempts. `hash` is the chash key (unused by other policies).
    pub fn attempts(&self, hash: u64) -> Attempts<'_> {
        Attempts {
            up: self,
            hash,
            tried: NodeSet::new(self.cfg.nodes.len()),
            made: 0,
            stale_retry_used: false,
            replayable: false,
            fresh_for: None,
            last: UpstreamError::ConnectRefused,
        }
    }
}

impl<'u> Attempts<'u> {
    /// The request is kept whole and idempotent: a pooled connection returned moments ago is
    /// leased without peeking at it (a dead one ends as `Outcome::Stale`, then a fresh one).
    pub fn replayable(mut self, yes: bool) -> Self {
        self.replayable = yes;
        self
    }

    /// Leases a node and a connection to it: the node's warmest pooled connection, or a new one
    /// (connect_timeout; for a TLS upstream the handshake too). A failed connect counts against
    /// the node and moves on to the next, within the retry budget. `Err` is the error to answer
    /// with once the budget is spent or every node was tried.
    pub async fn lease(&mut self) -> Result<(Lease<'_, 'u>, PooledConn), UpstreamError> {
        loop {
            // Pool ages and health windows are seconds: the sweeper's clock saves two reads.
            let now = coarse_now();
            let (node, fresh) = self.next(now)?;
            let pooled = if fresh {
                None
            } else {
                self.up.pools[node]
                    .borrow_mut()
                    .take(&self.up.cfg.pool, now, self.replayable)
            };
            let (conn, was_pooled) = match pooled {
                Some(c) => (c, true),
                None => match connect(self.up, node).await {
                    Ok(s) => (PooledConn::fresh(s), false),
                    Err(e) => {
                        // Counted against the node, which this request does not try again.
                        self.failed(node, e);
                        continue;
                    }
                },
            };
            return Ok((self.begin(node, was_pooled, now), conn));
        }
    }

    /// The node for the next attempt and whether it must be a fresh connection; `Err` when the
    /// retry budget is spent or no untried node is left.
    fn next(&mut self, now: Instant) -> Result<(usize, bool), UpstreamError> {
        if self.made > self.up.cfg.retries {
            return Err(self.last);
        }
        let picked = match self.fresh_for.take() {
            Some(n) => (n, true),
            None => {
                let mut skip = self.tried.clone();
                self.up.health.borrow_mut().fill_ejected(now, &mut skip);
                let mut b = self.up.balancer.borrow_mut();
                // Ejected nodes are avoided, but an untried ejected node beats giving up.
                match b
                    .pick(self.hash, &skip)
                    .or_else(|| b.pick(self.hash, &self.tried))
                {
                    Some(n) => (n, false),
                    None => return Err(self.last),
                }
            }
        };
        self.made += 1;
        Ok(picked)
    }

    /// `node` failed this request: passive health counts it, and it is not tried again.
    fn failed(&mut self, node: usize, e: UpstreamError) {
        self.up
            .health
            .borrow_mut()
            .report_failure(node, Instant::now());
        self.tried.insert(node);
        self.last = e;
    }

    /// A connection to `node` is in hand: the request is in flight there (least_conn), and for
    /// a half-open node this is its one trial request.
    fn begin(&mut self, node: usize, pooled: bool, now: Instant) -> Lease<'_, 'u> {
        self.up.health.borrow_mut().on_attempt(node, now);
        self.up.balancer.borrow_mut().on_start(node);
        Lease {
            attempts: self,
            node,
            pooled,
        }
    }
}

impl Lease<'_, '_> {
    /// The leased node (index into the upstream's node list).
    pub fn node(&self) -> usize {
        self.node
    }

    /// The connection came from the pool (so it may turn out stale).
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// Ends the attempt: the one place its outcome reaches balancer, passive health and pool.
    pub fn finish(self, outcome: Outcome) {
        // Settled here, so Drop must not settle again.
        ManuallyDrop::new(self).settle(outcome);
    }

    fn settle(&mut self, outcome: Outcome) {
        let node = self.node;
        let a = &mut *self.attempts;
        let up = a.up;
        up.balancer.borrow_mut().on_finish(node);
        match outcome {
            Outcome::Reusable(conn) => {
                up.health.borrow_mut().report_success(node);
                up.pools[node]
                    .borrow_mut()
                    .put(conn, &up.cfg.pool, coarse_now());
            }
            Outcome::Done => up.health.borrow_mut().report_success(node),
            Outcome::Stale if !a.stale_retry_used => {
                // Not the node's fault: its idle connection expired under us, and the rest
                // of its pool is suspect too.
                a.stale_retry_used = true;
                a.made = a.made.saturating_sub(1);
                a.fresh_for = Some(node);
                up.pools[node].borrow_mut().clear();
            }
            Outcome::Stale => a.failed(node, UpstreamError::Reset),
            Outcome::NodeFailed(e) => a.failed(node, e),
            Outcome::Aborted => {}
        }
    }
}

impl Drop for Lease<'_, '_> {
    fn drop(&mut self) {
        self.settle(Outcome::Aborted);
    }
}

/// Opens a connection to `node`; for a TLS upstream the handshake counts against the same
/// connect_timeout, and a failed handshake (bad certificate, wrong name) is a connect failure (502).
async fn connect(up: &UpstreamState, node: usize) -> Result<UpstreamStream, UpstreamError> {
    let addr = up.cfg.nodes[node].addr;
    let open = async {
        let s = TcpStream::connect_addr(addr)
            .await
            .map_err(|_| UpstreamError::ConnectRefused)?;
        let _ = s.set_nodelay(true);
        match &up.tls {
            None => Ok(UpstreamStream::Plain(s)),
            Some(tls) => match crate::net::tls_client::connect(tls, node, s).await {
                Ok(t) => Ok(UpstreamStream::Tls(Box::new(t))),
                Err(e) => {
                    log::warn!(
                        "upstream {} node {addr}: TLS handshake failed: {e}",
                        up.cfg.name
                    );
                    Err(UpstreamError::ConnectRefused)
                }
            },
        }
    };
    // Boxed (only new connections pay): an inline monoio timer would over-align the request future.
    match Box::pin(monoio::time::timeout(up.cfg.connect_timeout, open)).await {
        Err(_) => Err(UpstreamError::ConnectTimeout),
        Ok(r) => r,
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
