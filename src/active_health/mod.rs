//! Active health checks: one prober thread for the whole gateway (never on a shard, never once
//! per shard) probes every checked node and publishes verdict flips to all shards via the `Plane`.

// Targets follow the current config generation: after every swap they are rebuilt (counters
// kept for unchanged nodes) and the down set is re-sent, since a rebuilt upstream starts all up.

pub mod probe;
pub mod verdict;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{ActiveCheck, Config};
use crate::runtime::plane::Plane;
use verdict::{Outcome, Verdict};

/// Longest sleep with nothing to probe; a config swap ends any sleep at once.
const IDLE: Duration = Duration::from_secs(60);
/// Probes run in parallel (one scoped thread each) in batches of this many, so one slow node
/// does not delay the others by its whole timeout.
const BATCH: usize = 32;

/// One checked node.
struct Target {
    upstream: String,
    /// Index in the upstream's node list of the generation the targets were built from.
    node: usize,
    addr: SocketAddr,
    /// The address as written: the metrics label and the default Host header.
    host: String,
    check: Arc<ActiveCheck>,
    verdict: Verdict,
    next: Instant,
}

/// Starts the prober thread; it runs until the process exits.
pub fn start(plane: Arc<Plane>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("ringway-health".into())
        .spawn(move || run(&plane))
        .map(|_| ())
        .map_err(|e| format!("cannot start the health check thread: {e}"))
}

fn run(plane: &Plane) {
    let mut generation = 0;
    let mut targets: Vec<Target> = Vec::new();
    loop {
        let g = plane.generation();
        if g != generation {
            generation = g;
            targets = rebuild(std::mem::take(&mut targets), &plane.config().cfg);
            let keep: HashSet<(String, String)> = targets
                .iter()
                .map(|t| (t.upstream.clone(), t.host.clone()))
                .collect();
            plane.retain_active(|k| keep.contains(k));
            for t in targets.iter().filter(|t| !t.verdict.up) {
                plane.publish_down(&t.upstream, t.node, true);
            }
        }
        let now = Instant::now();
        let mut due: Vec<&mut Target> = targets.iter_mut().filter(|t| t.next <= now).collect();
        for batch in due.chunks_mut(BATCH) {
            let outcomes: Vec<Outcome> = std::thread::scope(|s| {
                let handles: Vec<_> = batch
                    .iter()
                    .map(|t| {
                        let (check, addr, host) = (&t.check, t.addr, t.host.as_str());
                        s.spawn(move || probe::run(check, addr, host))
                    })
                    .collect();
                handles
                    .into_iter()
                    // A panicking probe is a bug, but it must not take checking down with it.
                    .map(|h| h.join().unwrap_or(Outcome::TcpFail))
                    .collect()
            });
            for (t, o) in batch.iter_mut().zip(outcomes) {
                let was = t.verdict.up;
                let up = t.verdict.record(o, &t.check);
                if up != was {
                    log::warn!(
                        "active health check: upstream {:?} node {} is now {} ({o:?})",
                        t.upstream,
                        t.host,
                        if up { "up" } else { "down" }
                    );
                }
                plane.node_checked(&t.upstream, t.node, &t.host, o.passed(), up);
                let every = if up {
                    t.check.healthy_interval
                } else {
                    t.check.unhealthy_interval
                };
                t.next = Instant::now() + every;
            }
        }
        let next = targets.iter().map(|t| t.next).min();
        let wait = next.map_or(IDLE, |n| n.saturating_duration_since(Instant::now()));
        plane.wait_for_swap(generation, wait.max(Duration::from_millis(1)));
    }
}

/// The targets for `cfg`; a node whose upstream, address and check settings are unchanged
/// keeps its verdict and schedule, every other one starts up and is probed at once.
fn rebuild(old: Vec<Target>, cfg: &Config) -> Vec<Target> {
    let mut old: HashMap<(String, String), Target> = old
        .into_iter()
        .map(|t| ((t.upstream.clone(), t.host.clone()), t))
        .collect();
    let now = Instant::now();
    let mut out = Vec::new();
    for u in &cfg.upstreams {
        let Some(check) = &u.checks else { continue };
        for (i, n) in u.nodes.iter().enumerate() {
            let kept = old
                .remove(&(u.name.clone(), n.host.clone()))
                .filter(|t| t.check == *check && t.addr == n.addr);
            out.push(match kept {
                Some(mut t) => {
                    t.node = i;
                    t
                }
                None => Target {
                    upstream: u.name.clone(),
                    node: i,
                    addr: n.addr,
                    host: n.host.clone(),
                    check: check.clone(),
                    verdict: Verdict::default(),
                    next: now,
                },
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(nodes: &str, check: &str) -> Config {
        crate::config::from_str(&format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[[upstreams]]\nname = \"u\"\nnodes = [{nodes}]\n\
             [upstreams.checks.active]\n{check}\n"
        ))
        .expect("valid config")
    }

    #[test]
    fn rebuild_keeps_unchanged_nodes_and_renumbers() {
        let a = cfg(
            "{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }",
            "type = \"tcp\"",
        );
        let mut t = rebuild(Vec::new(), &a);
        assert_eq!(t.len(), 2);
        t[1].verdict.up = false;
        // Node 2 moves to index 0; node 1 is removed; node 3 is new.
        let b = cfg(
            "{ addr = \"127.0.0.1:2\" }, { addr = \"127.0.0.1:3\" }",
            "type = \"tcp\"",
        );
        let t = rebuild(t, &b);
        assert_eq!(
            (t[0].host.as_str(), t[0].node, t[0].verdict.up),
            ("127.0.0.1:2", 0, false)
        );
        assert_eq!(
            (t[1].host.as_str(), t[1].node, t[1].verdict.up),
            ("127.0.0.1:3", 1, true)
        );
        // A changed check starts over.
        let c = cfg("{ addr = \"127.0.0.1:2\" }", "type = \"http\"");
        assert!(rebuild(t, &c)[0].verdict.up);
    }
}
