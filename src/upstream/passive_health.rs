//! Passive health checking (nginx max_fails/fail_timeout semantics) per upstream per shard.
//! Owns only per-node failure counters; must not touch I/O, clocks (time is passed in) or balancing.

use super::balance::NodeSet;
use std::time::{Duration, Instant};

/// Caps fail_timeout so `now + fail_timeout` can never overflow `Instant` and panic.
const MAX_FAIL_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Clone, Default)]
struct NodeState {
    fails: u32,
    /// When the current failure-counting window opened (first failure in it).
    window_start: Option<Instant>,
    /// Set while ejected; once passed the node is "half-open" until a success clears it.
    ejected_until: Option<Instant>,
    /// A half-open node's trial request is in flight until this time: other requests keep
    /// avoiding the node meanwhile. Expires so a trial that never reports cannot wedge it.
    trial_until: Option<Instant>,
}

/// Passive health for one upstream on one shard. Node index = position in the node list.
#[derive(Debug, Clone)]
pub struct PassiveHealth {
    max_fails: u32,
    fail_timeout: Duration,
    nodes: Vec<NodeState>,
    /// (successes, failures) per node, for metrics; never reset.
    counts: Vec<(u64, u64)>,
    /// Marked down by active health checks (published by the status thread).
    down: Vec<bool>,
}

impl PassiveHealth {
    /// `max_fails` 0 disables ejection (as in nginx).
    pub fn new(nodes: usize, max_fails: u32, fail_timeout: Duration) -> Self {
        PassiveHealth {
            max_fails,
            fail_timeout: fail_timeout.min(MAX_FAIL_TIMEOUT),
            nodes: vec![NodeState::default(); nodes],
            counts: vec![(0, 0); nodes],
            down: vec![false; nodes],
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Adds every currently ejected node to `skip`. If that would be all nodes it adds none:
    /// failing open beats refusing every request when the whole upstream looks down.
    pub fn fill_ejected(&mut self, now: Instant, skip: &mut NodeSet) {
        if (self.max_fails == 0 && !self.down.contains(&true)) || self.nodes.is_empty() {
            return;
        }
        let ejected = (0..self.nodes.len())
            .filter(|&i| self.is_ejected(i, now))
            .count();
        if ejected == 0 || ejected == self.nodes.len() {
            return;
        }
        for i in 0..self.nodes.len() {
            if self.is_ejected(i, now) {
                skip.insert(i);
            }
        }
    }

    /// True while `node` is ejected, or while it is half-open with its trial still in flight.
    pub fn is_ejected(&self, node: usize, now: Instant) -> bool {
        let Some(s) = self.nodes.get(node) else {
            return false;
        };
        if self.down[node] {
            return true;
        }
        match s.ejected_until {
            Some(until) if now < until => true,
            Some(_) => s.trial_until.is_some_and(|t| now < t),
            None => false,
        }
    }

    /// Call when a request is actually sent to `node`. For a half-open node this is the one
    /// trial: until it reports (or fail_timeout passes) `is_ejected` stays true for others.
    /// Calling it is optional; without it every request in the half-open period is a trial.
    pub fn on_attempt(&mut self, node: usize, now: Instant) {
        let timeout = self.fail_timeout;
        let Some(s) = self.nodes.get_mut(node) else {
            return;
        };
        if let Some(until) = s.ejected_until {
            if now >= until && !s.trial_until.is_some_and(|t| now < t) {
                s.trial_until = Some(now + timeout);
            }
        }
    }

    /// nginx semantics: `max_fails` failures within `fail_timeout` eject the node for
    /// `fail_timeout`. A failure of a half-open node's trial re-ejects it immediately.
    pub fn report_failure(&mut self, node: usize, now: Instant) {
        let (max_fails, timeout) = (self.max_fails, self.fail_timeout);
        if let Some(c) = self.counts.get_mut(node) {
            c.1 += 1;
        }
        if max_fails == 0 {
            return;
        }
        let Some(s) = self.nodes.get_mut(node) else {
            return;
        };
        if let Some(until) = s.ejected_until {
            // Late failures of requests sent before the ejection must not extend it.
            if now >= until {
                s.ejected_until = Some(now + timeout);
                s.trial_until = None;
            }
            return;
        }
        let window_open = s
            .window_start
            .is_some_and(|w| now.saturating_duration_since(w) < timeout);
        if window_open {
            s.fails = s.fails.saturating_add(1);
        } else {
            s.fails = 1;
            s.window_start = Some(now);
        }
        if s.fails >= max_fails {
            s.ejected_until = Some(now + timeout);
            s.trial_until = None;
        }
    }

    /// Any success proves the node works: forget failures, ejection and trial state.
    pub fn report_success(&mut self, node: usize) {
        if let Some(c) = self.counts.get_mut(node) {
            c.0 += 1;
        }
        if let Some(s) = self.nodes.get_mut(node) {
            *s = NodeState::default();
        }
    }

    /// (successes, failures) reported for `node` since start, for metrics.
    pub fn counts(&self, node: usize) -> (u64, u64) {
        self.counts.get(node).copied().unwrap_or_default()
    }

    /// Active health checks' verdict: a down node is skipped like an ejected one (and the
    /// same fail-open rule applies when every node is down).
    pub fn set_down(&mut self, node: usize, down: bool) {
        if let Some(d) = self.down.get_mut(node) {
            *d = down;
        }
    }

    /// True while active health checks hold `node` down.
    pub fn is_down(&self, node: usize) -> bool {
        self.down.get(node).copied().unwrap_or(false)
    }

    /// Failures counted in the node's current window (0 if unknown node).
    pub fn fails(&self, node: usize) -> u32 {
        self.nodes.get(node).map_or(0, |s| s.fails)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: Duration = Duration::from_secs(10);

    fn secs(base: Instant, s: u64) -> Instant {
        base + Duration::from_secs(s)
    }

    fn skipped(h: &mut PassiveHealth, now: Instant) -> Vec<usize> {
        let mut skip = NodeSet::new(h.len());
        h.fill_ejected(now, &mut skip);
        (0..h.len()).filter(|&i| skip.contains(i)).collect()
    }

    #[test]
    fn ejects_after_max_fails_within_window() {
        let t0 = Instant::now();
        let mut h = PassiveHealth::new(3, 3, T);
        h.report_failure(1, t0);
        h.report_failure(1, secs(t0, 1));
        assert!(!h.is_ejected(1, secs(t0, 2)));
        h.report_failure(1, secs(t0, 2));
        assert!(h.is_ejected(1, secs(t0, 2)));
        assert!(h.is_ejected(1, secs(t0, 11)));
        assert_eq!(skipped(&mut h, secs(t0, 5)), vec![1]);
        assert!(!h.is_ejected(0, secs(t0, 5)));
    }

    #[test]
    fn failures_spread_beyond_window_do_not_eject() {
        let t0 = Instant::now();
        let mut h = PassiveHealth::new(1, 2, T);
        h.report_failure(0, t0);
        h.report_failure(0, secs(t0, 10)); // window expired: count restarts at 1
        assert!(!h.is_ejected(0, secs(t0, 10)));
        assert_eq!(h.fails(0), 1);
        h.report_failure(0, secs(t0, 15));
        assert!(h.is_ejected(0, secs(t0, 15)));
    }

    #[test]
    fn success_resets_count() {
        let t0 = Instant::now();
        let mut h = PassiveHealth::new(1, 2, T);
        h.report_failure(0, t0);
        h.report_success(0);
        h.report_failure(0, secs(t0, 1));
        assert!(!h.is_ejected(0, secs(t0, 1)));
    }

    #[test]
    fn recovery_after_timeout_and_success() {
        let t0 = Instant::now();
        let mut h = PassiveHealth::new(2, 1, T);
        h.report_failure(0, t0);
        assert!(h.is_ejected(0, secs(t0, 9)));
        assert!(!h.is_ejected(0, secs(t0, 10)));
        h.on_attempt(0, secs(t0, 10));
        h.report_success(0);
        assert!(!h.is_ejected(0, secs(t0, 10)));
        assert_eq!(h.fails(0), 0);
    }

    #[test]
    fn failed_trial_re_ejects_immediately() {
        let t0 = Instant::now();
        let mut h = PassiveHealth::new(2, 3, T);
        for s in 0..3 {
            h.report_failure(0, secs(t0, s));
        }
        assert!(h.is_ejected(0, secs(t0, 11)));
        assert!(!h.is_ejected(0, secs(t0, 12)));
        // One failure (not max_fails) suffices for a half-open node.
        h.report_failure(0, secs(t0, 12));
        assert!(h.is_ejected(0, secs(t0, 12)));
        assert!(h.is_ejected(0, secs(t0, 21)));
        assert!(!h.is_ejected(0, secs(t0, 22)));
    }

    #[test]
    fn only_one_trial_in_flight() {
        let t0 = Instant::now();
        let mut h = PassiveHealth::new(2, 1, T);
        h.report_failure(0, t0);
        assert_eq!(skipped(&mut h, secs(t0, 10)), Vec::<usize>::new());
        h.on_attempt(0, secs(t0, 10));
        assert_eq!(skipped(&mut h, secs(t0, 11)), vec![0]);
        // The trial never reported: after another fail_timeout a new trial is allowed.
        assert_eq!(skipped(&mut h, secs(t0, 20)), Vec::<usize>::new());
        h.on_attempt(0, secs(t0, 20));
        assert!(h.is_ejected(0, secs(t0, 21)));
    }

    #[test]
    fn late_failures_do_not_extend_ejection() {
        let t0 = Instant::now();
        let mut h = PassiveHealth::new(1, 1, T);
        h.report_failure(0, t0);
        h.report_failure(0, secs(t0, 5));
        assert!(!h.is_ejected(0, secs(t0, 10)));
    }

    #[test]
    fn fail_open_when_all_ejected() {
        let t0 = Instant::now();
        let mut h = PassiveHealth::new(3, 1, T);
        h.report_failure(0, t0);
        h.report_failure(1, t0);
        assert_eq!(skipped(&mut h, t0), vec![0, 1]);
        h.report_failure(2, t0);
        assert_eq!(skipped(&mut h, t0), Vec::<usize>::new());
        assert!(h.is_ejected(2, t0));
    }

    #[test]
    fn fill_keeps_existing_skip_members() {
        let t0 = Instant::now();
        let mut h = PassiveHealth::new(3, 1, T);
        h.report_failure(2, t0);
        let mut skip = NodeSet::new(3);
        skip.insert(0);
        h.fill_ejected(t0, &mut skip);
        assert!(skip.contains(0) && !skip.contains(1) && skip.contains(2));
    }

    #[test]
    fn disabled_and_out_of_range() {
        let t0 = Instant::now();
        let mut h = PassiveHealth::new(2, 0, T);
        for _ in 0..100 {
            h.report_failure(0, t0);
        }
        assert!(!h.is_ejected(0, t0));
        assert!(skipped(&mut h, t0).is_empty());
        let mut h = PassiveHealth::new(1, 1, Duration::MAX);
        h.report_failure(7, t0);
        h.report_success(7);
        h.on_attempt(7, t0);
        assert!(!h.is_ejected(7, t0));
        h.report_failure(0, t0); // huge timeout must not overflow Instant
        assert!(h.is_ejected(0, secs(t0, 1_000_000)));
    }

    proptest! {
        #[test]
        fn never_skips_every_node(
            n in 1usize..8,
            events in proptest::collection::vec((0usize..8, 0u64..30, any::<bool>()), 0..100),
        ) {
            let t0 = Instant::now();
            let mut h = PassiveHealth::new(n, 2, T);
            let mut t = 0;
            for (node, dt, ok) in events {
                t += dt;
                let now = secs(t0, t);
                if ok { h.report_success(node % n) } else { h.report_failure(node % n, now) }
                h.on_attempt(node % n, now);
                let mut skip = NodeSet::new(n);
                h.fill_ejected(now, &mut skip);
                prop_assert!(skip.len() < n);
            }
        }
    }
}
