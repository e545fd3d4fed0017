//! A keep-alive request sent just as the connection's hold (500 ms with a read in flight) ends is
//! never lost: answered, or its connection closed at once (a close clients retry on); never left
//! hanging until the keep-alive timeout. Plain and TLS connections, the shard kept busy.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::tls::{Pki, TlsClient};
use crate::harness::{cpu_lock, get_req, route, upstream, Client, Gateway, Origin};

/// The gateway's hold (proxy/conn.rs `IDLE_HOLD`).
const HOLD: Duration = Duration::from_millis(500);
/// How long the probes run.
const RUN: Duration = Duration::from_secs(10);
/// Connections loading the shard, and the requests each sends at once.
const LOADS: usize = 24;
const PIPELINE: usize = 4;
/// Probe connections of each kind.
const PROBES: usize = 40;
/// A probe's wait for an answer: far past any answer here, far below the keep-alive timeout
/// (60 s), so a request the gateway lost shows as this wait running out.
const WAIT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Tally {
    answered: AtomicUsize,
    closed: AtomicUsize,
    hung: AtomicUsize,
}

enum Outcome {
    Answered,
    /// The connection was closed (or reset) without an answer, before `WAIT`.
    Closed,
    /// No answer and no close within `WAIT`: the request was lost.
    Hung,
}

/// How long after an answer probe `i` sends its `round`th request: spread over the hold plus
/// -1..+21 ms, as the hold ends on one of the gateway's 10 ms deadline ticks (local/deadline.rs)
/// between 500 and 520 ms after it began.
fn offset(i: usize, round: usize) -> Duration {
    let us = (i * 7919 + round * 104_729) % 22_000;
    HOLD + Duration::from_micros(us as u64) - Duration::from_millis(1)
}

/// Runs one probe until `end`: a keep-alive connection that sends each request about the hold's
/// length after the previous answer; a closed connection is replaced by a new one.
fn probe<C>(
    i: usize,
    end: Instant,
    tally: &Tally,
    connect: impl Fn() -> C,
    exchange: impl Fn(&mut C, &str) -> Result<(), String>,
) {
    let mut round = 0;
    while Instant::now() < end {
        let mut c = connect();
        if exchange(&mut c, &format!("/p{i}/first")).is_err() {
            continue;
        }
        while Instant::now() < end {
            round += 1;
            thread::sleep(offset(i, round));
            let sent = Instant::now();
            let outcome = match exchange(&mut c, &format!("/p{i}/{round}")) {
                Ok(()) => Outcome::Answered,
                Err(_) if sent.elapsed() >= WAIT => Outcome::Hung,
                Err(_) => Outcome::Closed,
            };
            match outcome {
                Outcome::Answered => {
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Outcome::Closed => tally.closed.fetch_add(1, Ordering::Relaxed),
                Outcome::Hung => tally.hung.fetch_add(1, Ordering::Relaxed),
            };
            break;
        }
    }
}

#[test]
fn requests_sent_as_the_hold_ends_are_answered_or_closed_never_lost() {
    let _cpu = cpu_lock();
    let pki = Pki::new("holdrace");
    pki.leaf("a", &["a.test"]);
    let origin = Origin::echo_target("holdrace");
    let cfg = format!(
        "[server]\nworkers = 1\nkeepalive_timeout = \"60s\"\nio_uring_taskrun = \"kernel\"\n\n[[server.listen]]\naddr = \"127.0.0.1:0\"\n\n[[server.listen]]\naddr = \"127.0.0.1:0\"\ntls = true\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\n{}{}",
        pki.path("a.pem"),
        pki.path("a.key"),
        upstream("backend", &[origin.addr], ""),
        route("default", &["/*"], "backend", "")
    );
    let gw = Gateway::start_with_listeners(&cfg, 2);
    let (plain, tls) = (gw.addrs[0], gw.addrs[1]);
    let client_cfg = Arc::new(pki.client_config());
    let (plain_tally, tls_tally) = (Tally::default(), Tally::default());
    let end = Instant::now() + RUN;
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        // Load on the gateway's one shard, so that its loop runs long between ring enters (the
        // window in which a dropped read may still take bytes).
        for l in 0..LOADS {
            let stop = &stop;
            s.spawn(move || {
                let mut c = Client::connect(plain);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    // Pipelined: the shard serves a batch per wake-up, so its loop runs long.
                    let batch: String = (0..PIPELINE)
                        .map(|k| get_req(&format!("/load/{l}/{n}/{k}"), "example.com"))
                        .collect();
                    n += 1;
                    let _ = c.try_send(batch);
                    for _ in 0..PIPELINE {
                        match c.try_read_response() {
                            Ok(r) if !r.connection_close() => assert_eq!(r.status, 200),
                            // keepalive_requests reached (or a close): a new connection.
                            _ => {
                                c = Client::connect(plain);
                                break;
                            }
                        }
                    }
                }
            });
        }
        let mut probes = Vec::new();
        for i in 0..PROBES {
            let t = &plain_tally;
            probes.push(s.spawn(move || {
                probe(
                    i,
                    end,
                    t,
                    || {
                        let mut c = Client::connect(plain);
                        c.set_read_timeout(WAIT);
                        c
                    },
                    |c, path| {
                        c.try_send(get_req(path, "example.com"))
                            .map_err(|e| e.to_string())?;
                        match c.try_read_response() {
                            Ok(r) if r.status == 200 && r.body_str() == path => Ok(()),
                            Ok(r) => panic!("{path}: {} {}", r.status, r.body_str()),
                            Err(e) => Err(e.to_string()),
                        }
                    },
                )
            }));
        }
        for i in 0..PROBES {
            let (t, client_cfg) = (&tls_tally, &client_cfg);
            probes.push(s.spawn(move || {
                probe(
                    i,
                    end,
                    t,
                    || loop {
                        if let Ok(c) = TlsClient::connect(tls, "a.test", client_cfg) {
                            c.s.sock.set_read_timeout(Some(WAIT)).expect("timeout");
                            break c;
                        }
                    },
                    |c, path| match c.get(path)? {
                        (200, body) if body == path => Ok(()),
                        (status, body) => panic!("{path}: {status} {body}"),
                    },
                )
            }));
        }
        for p in probes {
            p.join().expect("probe");
        }
        stop.store(true, Ordering::Relaxed);
    });
    let report = |t: &Tally| {
        (
            t.answered.load(Ordering::Relaxed),
            t.closed.load(Ordering::Relaxed),
            t.hung.load(Ordering::Relaxed),
        )
    };
    let (p, t) = (report(&plain_tally), report(&tls_tally));
    eprintln!("hold race: plain (answered, closed, hung) {p:?}, TLS {t:?}");
    assert!(
        p.0 > 100 && t.0 > 100,
        "too few requests: plain {p:?}, TLS {t:?}"
    );
    assert_eq!(
        (p.2, t.2),
        (0, 0),
        "requests lost at the hold's end (left hanging): plain {p:?}, TLS {t:?}"
    );
}
