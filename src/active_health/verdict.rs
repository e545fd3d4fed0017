//! One node's active-check verdict: consecutive-result counters with APISIX's thresholds.
//! Pure state (no I/O, no clock): the prober feeds it probe outcomes in order.

use crate::config::ActiveCheck;

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// TCP connected, or HTTP answered with a `healthy.http_statuses` code.
    Pass,
    /// HTTP answered with an `unhealthy.http_statuses` code.
    HttpFail(u16),
    /// Refused, reset, or a reply that is not HTTP.
    TcpFail,
    /// No connection or answer within `timeout`.
    Timeout,
    /// A status in neither list: counts for nothing (as in APISIX).
    Neutral(u16),
}

impl Outcome {
    pub fn passed(self) -> bool {
        matches!(self, Outcome::Pass | Outcome::Neutral(_))
    }
}

/// Nodes start up: a gateway that starts (or reloads) must not refuse traffic while the
/// first probes are still out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub up: bool,
    successes: u32,
    http_failures: u32,
    tcp_failures: u32,
    timeouts: u32,
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict {
            up: true,
            successes: 0,
            http_failures: 0,
            tcp_failures: 0,
            timeouts: 0,
        }
    }
}

impl Verdict {
    /// Applies one outcome; returns the verdict after it.
    pub fn record(&mut self, o: Outcome, c: &ActiveCheck) -> bool {
        match o {
            Outcome::Pass => {
                self.http_failures = 0;
                self.tcp_failures = 0;
                self.timeouts = 0;
                self.successes = self.successes.saturating_add(1);
                if !self.up && self.successes >= c.successes {
                    self.flip(true);
                }
            }
            Outcome::Neutral(_) => {}
            Outcome::HttpFail(_) => {
                self.successes = 0;
                self.http_failures = self.http_failures.saturating_add(1);
                if self.up && self.http_failures >= c.http_failures {
                    self.flip(false);
                }
            }
            Outcome::TcpFail => {
                self.successes = 0;
                self.tcp_failures = self.tcp_failures.saturating_add(1);
                if self.up && self.tcp_failures >= c.tcp_failures {
                    self.flip(false);
                }
            }
            Outcome::Timeout => {
                self.successes = 0;
                self.timeouts = self.timeouts.saturating_add(1);
                if self.up && self.timeouts >= c.timeouts {
                    self.flip(false);
                }
            }
        }
        self.up
    }

    /// A flip starts every count afresh, so coming back needs `successes` passes in a row.
    fn flip(&mut self, up: bool) {
        *self = Verdict {
            up,
            ..Verdict::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckKind;
    use std::time::Duration;

    fn check() -> ActiveCheck {
        ActiveCheck {
            kind: CheckKind::Http,
            http_path: "/".into(),
            host: None,
            timeout: Duration::from_secs(1),
            healthy_interval: Duration::from_secs(1),
            unhealthy_interval: Duration::from_secs(1),
            healthy_statuses: vec![200],
            unhealthy_statuses: vec![500],
            successes: 2,
            http_failures: 3,
            tcp_failures: 2,
            timeouts: 1,
        }
    }

    #[test]
    fn thresholds_per_kind_and_recovery() {
        let c = check();
        let mut v = Verdict::default();
        assert!(v.record(Outcome::HttpFail(500), &c));
        assert!(v.record(Outcome::HttpFail(500), &c));
        // A pass in between resets the failure run.
        assert!(v.record(Outcome::Pass, &c));
        assert!(v.record(Outcome::HttpFail(500), &c));
        assert!(v.record(Outcome::TcpFail, &c));
        assert!(!v.record(Outcome::TcpFail, &c));
        assert!(!v.record(Outcome::Pass, &c));
        assert!(!v.record(Outcome::Neutral(418), &c));
        assert!(v.record(Outcome::Pass, &c));
        assert!(!v.record(Outcome::Timeout, &c));
    }

    #[test]
    fn neutral_counts_for_nothing() {
        let c = check();
        let mut v = Verdict::default();
        for _ in 0..10 {
            assert!(v.record(Outcome::Neutral(302), &c));
        }
        assert_eq!(v, Verdict::default());
    }
}
