//! Runs a load test: one pinned thread per core, each with its own monoio runtime and its share
//! of the connections; merges the per-thread stats. Must not format results (see report.rs).

use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::LoadConfig;
use crate::client::{self, Ctx, Guard, Live};
use crate::hist::Stats;
use crate::pacer::Pacer;
use crate::progress::Progress;

pub struct RunResult {
    pub stats: Stats,
    /// Wall time the counted requests span: the window, stretched by responses still in
    /// flight at its end (they are counted, so the server's tally matches ours).
    pub elapsed: Duration,
}

/// Fails fast on a dead target, so a typo in the port is one clear line, not N connect errors.
pub fn preflight(cfg: &LoadConfig) -> Result<(), String> {
    std::net::TcpStream::connect_timeout(&cfg.addr, cfg.timeout)
        .map(drop)
        .map_err(|e| format!("cannot connect to {}: {e}", cfg.addr))
}

pub fn run(cfg: &LoadConfig) -> Result<RunResult, String> {
    let mix = cfg.mix.clone();
    let start = Instant::now();
    let measure_start = start + cfg.warmup;
    let end = measure_start + cfg.duration;
    let (tx, rx) = crossbeam_channel::unbounded::<Result<Stats, String>>();
    let mut lives = Vec::with_capacity(cfg.threads);
    let mut handles = Vec::with_capacity(cfg.threads);
    for t in 0..cfg.threads {
        let live = Arc::new(Live::default());
        lives.push(live.clone());
        let tx = tx.clone();
        let mix = mix.clone();
        let cpus = cfg.cpus.clone();
        // Connection ids t, t+threads, ... keep both the count and the open-loop schedule even.
        let ids: Vec<usize> = (t..cfg.connections).step_by(cfg.threads).collect();
        // The busy-poll window: where sends are closer together than it, the thread polls
        // without a break (the price of sub-microsecond sends is the whole core).
        let spin = if cfg.rate.is_some() {
            cfg.spin
        } else {
            Duration::ZERO
        };
        let (addr, pipeline, timeout, keepalive, rate, connections) = (
            cfg.addr,
            cfg.pipeline,
            cfg.timeout,
            cfg.keepalive,
            cfg.rate,
            cfg.connections,
        );
        let handle = std::thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || {
                crate::runtime::pin_current(t, &cpus);
                let result = Stats::new(rate.is_some(), measure_start).and_then(|stats| {
                    let ctx = Rc::new(Ctx {
                        addr,
                        mix,
                        pipeline,
                        timeout,
                        keepalive,
                        start,
                        measure_start,
                        end,
                        rate,
                        spin,
                        connections,
                        stats: RefCell::new(stats),
                        live,
                        errors: Cell::new(0),
                    });
                    crate::runtime::block_on(|| drive(ctx.clone(), ids))??;
                    Rc::try_unwrap(ctx)
                        .map(|c| c.stats.into_inner())
                        .map_err(|_| "connection task outlived its runtime".to_string())
                });
                // The receiver only goes away if main already failed; nothing left to report to.
                let _ = tx.send(result);
            })
            .map_err(|e| format!("cannot spawn worker thread: {e}"))?;
        handles.push(handle);
    }
    drop(tx);

    let mut progress = Progress::new(std::io::stderr().is_terminal(), start, measure_start, end);
    let mut merged: Option<Stats> = None;
    let mut failure = None;
    let mut pending = cfg.threads;
    while pending > 0 {
        match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(Ok(stats)) => {
                pending -= 1;
                match &mut merged {
                    None => merged = Some(stats),
                    Some(m) => m.merge(&stats)?,
                }
            }
            Ok(Err(e)) => {
                pending -= 1;
                failure = Some(e);
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => progress.tick(&lives),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    progress.finish();
    for h in handles {
        if h.join().is_err() {
            failure.get_or_insert_with(|| "a worker thread panicked".to_string());
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let stats = merged.ok_or("no worker reported results")?;
    let last = stats.last_event.unwrap_or(end).max(end);
    Ok(RunResult {
        elapsed: last.saturating_duration_since(measure_start),
        stats,
    })
}

async fn drive(ctx: Rc<Ctx>, ids: Vec<usize>) -> Result<(), String> {
    let guards: Vec<Rc<Guard>> = ids.iter().map(|_| Rc::default()).collect();
    // Not awaited: it sleeps between scans and goes down with the runtime.
    monoio::spawn(client::watchdog(
        guards.clone(),
        client::watchdog_period(ctx.timeout),
    ));
    if ctx.rate.is_none() {
        let tasks: Vec<_> = ids
            .into_iter()
            .zip(guards)
            .map(|(id, g)| monoio::spawn(client::closed_loop(ctx.clone(), id, g)))
            .collect();
        for t in tasks {
            t.await;
        }
        return Ok(());
    }
    crate::pacer::tighten_timer_slack();
    let pacer = Pacer::new(ids.len(), crate::runtime::on_uring(), ctx.spin)?;
    let firing = monoio::spawn(pacer.clone().run());
    let tasks: Vec<_> = ids
        .into_iter()
        .zip(guards)
        .enumerate()
        .map(|(slot, (id, g))| {
            monoio::spawn(client::open_loop(ctx.clone(), id, g, pacer.clone(), slot))
        })
        .collect();
    for t in tasks {
        t.await;
    }
    pacer.stop();
    firing.await;
    Ok(())
}
