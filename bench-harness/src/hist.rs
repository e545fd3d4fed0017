//! Per-thread measurement state (latency histograms, byte/request/error/status counters) and
//! its merge and percentile summary. Must not format output or know about sockets.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Latencies are kept in nanoseconds so loopback runs (tens of µs) keep 3 significant digits.
const MAX_TRACKABLE_NS: u64 = 3_600 * 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Read,
    Write,
    Timeout,
}

pub struct Stats {
    pub uncorrected: Histogram<u64>,
    /// Open loop only: latency from each request's intended send time.
    pub corrected: Option<Histogram<u64>>,
    pub requests: u64,
    pub bytes: u64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    /// Indexed by status code; a flat array keeps counting allocation-free.
    pub status: Vec<u64>,
    pub last_event: Option<Instant>,
    /// Open loop only: how long after its due time each on-time request actually left.
    pub schedule: Option<Histogram<u64>>,
    /// Open loop: requests whose connection was still busy at their due time.
    pub late: u64,
    /// Responses and errors per `SLICE` of the measured window, for the over-time plot.
    pub timeline: Vec<Slice>,
    origin: Instant,
}

/// Width of one timeline bucket (`slice` divides by it in whole tenths of a second).
pub const SLICE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slice {
    pub responses: u64,
    pub errors: u64,
}

fn new_hist() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, MAX_TRACKABLE_NS, 3).map_err(|e| format!("histogram: {e}"))
}

impl Stats {
    /// `origin` is the start of the measured window (timeline bucket 0).
    pub fn new(open_loop: bool, origin: Instant) -> Result<Stats, String> {
        Ok(Stats {
            schedule: if open_loop { Some(new_hist()?) } else { None },
            late: 0,
            timeline: Vec::new(),
            origin,
            uncorrected: new_hist()?,
            corrected: if open_loop { Some(new_hist()?) } else { None },
            requests: 0,
            bytes: 0,
            connect: 0,
            read: 0,
            write: 0,
            timeout: 0,
            status: vec![0; 1000],
            last_event: None,
        })
    }

    pub fn record(
        &mut self,
        intended: Instant,
        sent: Instant,
        done: Instant,
        status: u16,
        bytes: u64,
    ) {
        self.requests += 1;
        self.bytes += bytes;
        if let Some(slot) = self.status.get_mut(usize::from(status)) {
            *slot += 1;
        }
        let bad = !(200..400).contains(&status);
        let s = self.slice(done);
        s.responses += 1;
        s.errors += u64::from(bad);
        self.uncorrected.saturating_record(nanos(done - sent));
        if let Some(h) = &mut self.corrected {
            h.saturating_record(nanos(done.saturating_duration_since(intended)));
        }
        self.last_event = Some(done);
    }

    fn slice(&mut self, at: Instant) -> &mut Slice {
        let since = at.saturating_duration_since(self.origin);
        let i = (since.as_secs() * 10 + u64::from(since.subsec_millis() / 100)) as usize;
        if i >= self.timeline.len() {
            self.timeline.resize(i + 1, Slice::default());
        }
        &mut self.timeline[i]
    }

    pub fn scheduled(&mut self, intended: Instant, sent: Instant, on_time: bool) {
        if !on_time {
            self.late += 1;
        } else if let Some(h) = &mut self.schedule {
            h.saturating_record(nanos(sent.saturating_duration_since(intended)));
        }
    }

    pub fn error(&mut self, kind: ErrorKind, n: u64, at: Instant) {
        self.slice(at).errors += n;
        match kind {
            ErrorKind::Connect => self.connect += n,
            ErrorKind::Read => self.read += n,
            ErrorKind::Write => self.write += n,
            ErrorKind::Timeout => self.timeout += n,
        }
    }

    pub fn merge(&mut self, other: &Stats) -> Result<(), String> {
        self.uncorrected
            .add(&other.uncorrected)
            .map_err(|e| format!("merge: {e:?}"))?;
        for (a, b) in [
            (&mut self.corrected, &other.corrected),
            (&mut self.schedule, &other.schedule),
        ] {
            if let (Some(a), Some(b)) = (a, b) {
                a.add(b).map_err(|e| format!("merge: {e:?}"))?;
            }
        }
        self.late += other.late;
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), Slice::default());
        }
        for (a, b) in self.timeline.iter_mut().zip(&other.timeline) {
            a.responses += b.responses;
            a.errors += b.errors;
        }
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.connect += other.connect;
        self.read += other.read;
        self.write += other.write;
        self.timeout += other.timeout;
        for (a, b) in self.status.iter_mut().zip(&other.status) {
            *a += b;
        }
        self.last_event = self.last_event.max(other.last_event);
        Ok(())
    }

    /// Responses outside 2xx/3xx, by code; these are errors even though the exchange completed.
    pub fn bad_statuses(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.statuses()
            .filter(|&(code, _)| !(200..400).contains(&code))
    }

    pub fn statuses(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.status
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(code, &n)| (code as u16, n))
    }

    pub fn socket_errors(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }

    pub fn total_errors(&self) -> u64 {
        self.socket_errors() + self.bad_statuses().map(|(_, n)| n).sum::<u64>()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// Percentile summary in microseconds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
    /// Share of samples within one stdev of the mean, as wrk prints it.
    pub within_stdev_pct: f64,
}

pub fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        let count = h.len();
        if count == 0 {
            return Summary {
                count,
                min: 0.0,
                mean: 0.0,
                stdev: 0.0,
                p50: 0.0,
                p75: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                p99_99: 0.0,
                max: 0.0,
                within_stdev_pct: 0.0,
            };
        }
        let (mean, stdev) = (h.mean(), h.stdev());
        let lo = (mean - stdev).max(0.0) as u64;
        let hi = (mean + stdev) as u64;
        let within: u64 = h
            .iter_recorded()
            .filter(|v| (lo..=hi).contains(&v.value_iterated_to()))
            .map(|v| v.count_at_value())
            .sum();
        let q = |p: f64| us(h.value_at_quantile(p));
        Summary {
            count,
            min: us(h.min()),
            mean: mean / 1000.0,
            stdev: stdev / 1000.0,
            p50: q(0.50),
            p75: q(0.75),
            p90: q(0.90),
            p99: q(0.99),
            p99_9: q(0.999),
            p99_99: q(0.9999),
            max: us(h.max()),
            within_stdev_pct: 100.0 * within as f64 / count as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_summarise() {
        let t0 = Instant::now();
        let mut a = Stats::new(true, t0).expect("stats");
        let mut b = Stats::new(true, t0).expect("stats");
        for i in 1..=100u64 {
            a.record(t0, t0, t0 + Duration::from_micros(i), 200, 10);
        }
        b.record(
            t0,
            t0 + Duration::from_millis(900),
            t0 + Duration::from_secs(1),
            500,
            10,
        );
        b.error(ErrorKind::Timeout, 2, t0 + Duration::from_millis(250));
        a.merge(&b).expect("merge");
        assert_eq!(a.timeline.len(), 11, "{:?}", a.timeline);
        assert_eq!(a.timeline[0].responses, 100);
        assert_eq!(a.timeline[2].errors, 2);
        assert_eq!(
            a.timeline[10],
            Slice {
                responses: 1,
                errors: 1
            }
        );
        assert_eq!((a.requests, a.bytes, a.timeout), (101, 1010, 2));
        assert_eq!(a.bad_statuses().collect::<Vec<_>>(), vec![(500, 1)]);
        assert_eq!(a.total_errors(), 3);
        let s = Summary::of(&a.uncorrected);
        assert!((49.0..=52.0).contains(&s.p50), "{s:?}");
        let c = Summary::of(a.corrected.as_ref().expect("open loop"));
        assert!(c.max >= 999_000.0 && s.max < 101_000.0, "{c:?} {s:?}");
    }
}
