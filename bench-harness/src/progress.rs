//! The live one-line progress shown on stderr while a run is going (only when it is a tty).
//! Owns that line's format and redraw pace; must not affect the final report or stdout.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::Live;

pub struct Progress {
    enabled: bool,
    start: Instant,
    measure_start: Instant,
    end: Instant,
    last_draw: Instant,
    drawn: bool,
}

impl Progress {
    pub fn new(enabled: bool, start: Instant, measure_start: Instant, end: Instant) -> Progress {
        Progress {
            enabled,
            start,
            measure_start,
            end,
            last_draw: start,
            drawn: false,
        }
    }

    pub fn tick(&mut self, lives: &[Arc<Live>]) {
        let now = Instant::now();
        if !self.enabled || now.duration_since(self.last_draw) < Duration::from_millis(900) {
            return;
        }
        self.last_draw = now;
        let total = self.end.duration_since(self.start).as_secs_f64();
        let line = if now < self.measure_start {
            format!(
                "warmup {:.0}s/{:.0}s",
                now.duration_since(self.start).as_secs_f64(),
                total
            )
        } else {
            let reqs: u64 = lives
                .iter()
                .map(|l| l.requests.load(Ordering::Relaxed))
                .sum();
            let errs: u64 = lives.iter().map(|l| l.errors.load(Ordering::Relaxed)).sum();
            let measured = now
                .duration_since(self.measure_start)
                .as_secs_f64()
                .max(1e-3);
            format!(
                "{:.0}s/{:.0}s  {:.0} req/s  {} requests  {} errors",
                now.duration_since(self.start).as_secs_f64(),
                total,
                reqs as f64 / measured,
                reqs,
                errs
            )
        };
        let mut err = std::io::stderr().lock();
        // Progress is cosmetic: a closed stderr must not abort the run.
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        self.drawn = true;
    }

    pub fn finish(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}
