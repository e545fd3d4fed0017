//! Rate limiting through the real server: limit-count headers and rejections, node-wide
//! accuracy across shards with uneven traffic (±5%), limit-req, limit-conn.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn limit_count_counts_down_then_rejects_with_headers() {
    let o = Origin::named("o");
    let cfg = format!(
        "{}{}{}",
        server(&[]),
        upstream("backend", &[o.addr], ""),
        route(
            "api",
            &["/*"],
            "backend",
            "[routes.plugins.limit-count]\ncount = 3\ntime_window = 60\n"
        )
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    for want in ["2", "1", "0"] {
        let r = get_with(&mut c, "/a", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("X-RateLimit-Limit"), Some("3"));
        assert_eq!(r.header("X-RateLimit-Remaining"), Some(want));
        let reset: u64 = r.header("X-RateLimit-Reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    let r = get_with(&mut c, "/a", "");
    assert_eq!(r.status, 503, "APISIX's default rejected_code");
    assert_eq!(r.header("X-RateLimit-Remaining"), Some("0"));
    assert_eq!(r.header("X-RateLimit-Limit"), Some("3"));
    assert_eq!(
        o.request_count(),
        3,
        "rejected requests never reach the upstream"
    );
    // The connection stays usable after a rejection.
    assert_eq!(get_with(&mut c, "/a", "").status, 503);
}

#[test]
fn limit_count_key_code_message_and_group() {
    let o = Origin::named("o");
    let lc = |extra: &str| {
        format!("[routes.plugins.limit-count]\ncount = 2\ntime_window = 60\nkey = \"header:X-Tenant\"\nrejected_code = 429\nrejected_msg = \"slow down\"\n{extra}")
    };
    let cfg = format!(
        "{}{}{}{}{}",
        server(&[]),
        upstream("backend", &[o.addr], ""),
        route("a", &["/a"], "backend", &lc("group = \"g\"\n")),
        route("b", &["/b"], "backend", &lc("group = \"g\"\n")),
        route("c", &["/c"], "backend", &lc("")),
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    // Route a and b share group g: two requests in total for tenant t1.
    assert_eq!(get_with(&mut c, "/a", "X-Tenant: t1\r\n").status, 200);
    assert_eq!(get_with(&mut c, "/b", "X-Tenant: t1\r\n").status, 200);
    let r = get_with(&mut c, "/a", "X-Tenant: t1\r\n");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["message"], "slow down");
    // Another tenant has its own count; route c (no group) its own too.
    assert_eq!(get_with(&mut c, "/b", "X-Tenant: t2\r\n").status, 200);
    assert_eq!(get_with(&mut c, "/c", "X-Tenant: t1\r\n").status, 200);
}

/// Learns which shard serves each of `n` connections (response-rewrite's `$shard_id`).
fn connections_by_shard(gw: &Gateway, n: usize) -> HashMap<String, Vec<Client>> {
    let mut by: HashMap<String, Vec<Client>> = HashMap::new();
    for _ in 0..n {
        let mut c = gw.client();
        let r = get_with(&mut c, "/whoami", "");
        assert_eq!(r.status, 200);
        let shard = r.header("X-Shard").expect("X-Shard header").to_string();
        by.entry(shard).or_default().push(c);
    }
    by
}

/// Drives `clients` (one thread each) at `/limited` for `dur`; returns admitted times.
fn drive(gw: &Gateway, clients: Vec<Client>, tenant: &str, dur: Duration) -> (Vec<Instant>, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let stop = stop.clone();
            let tenant = tenant.to_string();
            thread::spawn(move || {
                let mut ok = Vec::new();
                let mut total = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = get_with(&mut c, "/limited", &format!("X-Tenant: {tenant}\r\n"));
                    total += 1;
                    match r.status {
                        200 => ok.push(Instant::now()),
                        503 => {}
                        s => panic!("unexpected status {s}"),
                    }
                }
                (ok, total)
            })
        })
        .collect();
    thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut total = 0;
    for h in handles {
        let Ok((ok, n)) = h.join() else {
            panic!("load thread failed; gateway log:\n{}", gw.logs());
        };
        all.extend(ok);
        total += n;
    }
    all.sort();
    (all, total)
}

/// Admissions per gateway window. The gateway's windows are aligned to an instant the test
/// cannot see (the node's limiter epoch), and admissions need not come as one burst (shards
/// hand each other unused share on every sync), so the phase is recovered from the data: the
/// alignment, in 5 ms steps, whose full windows stay closest to the limit. No alignment can
/// hide over- or under-admission, since the windows' sum is the same for every phase.
/// First and last windows are partial: dropped.
fn full_windows(admitted: &[Instant], window: Duration, limit: usize) -> Vec<usize> {
    let Some(&base) = admitted.first() else {
        return Vec::new();
    };
    let step = Duration::from_millis(5);
    let mut best: Option<(f64, Vec<usize>)> = None;
    let mut phase = Duration::ZERO;
    while phase < window {
        let mut counts: Vec<usize> = Vec::new();
        for &t in admitted {
            // Shift by a whole window so the phase never moves an admission before zero.
            let at = t.duration_since(base) + window - phase;
            let i = (at.as_nanos() / window.as_nanos()) as usize;
            if counts.len() <= i {
                counts.resize(i + 1, 0);
            }
            counts[i] += 1;
        }
        let first = counts.iter().position(|&c| c > 0).unwrap_or(0);
        let mut full: Vec<usize> = counts[first..].to_vec();
        if full.len() >= 2 {
            full.remove(0);
            full.pop();
        }
        let worst = full
            .iter()
            .map(|&c| (c as f64 - limit as f64).abs())
            .fold(0.0, f64::max);
        if best.as_ref().map_or(true, |(w, _)| worst < *w) {
            best = Some((worst, full));
        }
        phase += step;
    }
    best.map(|(_, w)| w).unwrap_or_default()
}

/// A 2-shard gateway with `/whoami` (names the shard) and `/limited` (carrying
/// `limited_plugin`), plus 24 keep-alive connections split by the shard they landed on.
fn uneven_shards_gateway(o: &Origin, limited_plugin: &str) -> (Gateway, Vec<Client>, Vec<Client>) {
    let cfg = format!(
        "{}{}{}{}",
        // Connections must stay on their shard for the whole run.
        server(&[("workers", "2"), ("keepalive_requests", "10000000")]),
        upstream("backend", &[o.addr], ""),
        route(
            "whoami",
            &["/whoami"],
            "backend",
            "[routes.plugins.response-rewrite]\nheaders.set = { X-Shard = \"$shard_id\" }\n"
        ),
        route("limited", &["/limited"], "backend", limited_plugin),
    );
    let gw = Gateway::start(&cfg);
    let mut by = connections_by_shard(&gw, 24);
    assert_eq!(by.len(), 2, "24 connections all landed on one shard");
    let s0 = by.remove("0").expect("shard 0 connections");
    let s1 = by.remove("1").expect("shard 1 connections");
    (gw, s0, s1)
}

#[test]
fn node_wide_limit_within_5_percent_with_uneven_shards() {
    let _cpu = cpu_lock(); // clients drive two shards flat out; the count must hold within 5%
    const LIMIT: usize = 200;
    let o = Origin::named("o");
    let (gw, mut s0, mut s1) = uneven_shards_gateway(
        &o,
        &format!("[routes.plugins.limit-count]\ncount = {LIMIT}\ntime_window = 1\nkey = \"header:X-Tenant\"\nsync_interval = \"10ms\"\n"),
    );
    assert!(
        (s0.len() >= 4 && !s1.is_empty()) || (s1.len() >= 4 && !s0.is_empty()),
        "need 4 connections on one shard and 1 on the other: {} / {}",
        s0.len(),
        s1.len()
    );
    if s0.len() < 4 {
        std::mem::swap(&mut s0, &mut s1);
    }
    let window = Duration::from_secs(1);
    // All traffic on one shard, then 4:1 over both shards, each with its own key.
    let one: Vec<Client> = s0.drain(..3).collect();
    let mut uneven: Vec<Client> = s0.drain(..1).collect();
    uneven.push(s1.remove(0));
    for (name, clients, tenant) in [("one shard", one, "t-one"), ("uneven", uneven, "t-uneven")] {
        let (admitted, total) = drive(&gw, clients, tenant, Duration::from_millis(4300));
        let windows = full_windows(&admitted, window, LIMIT);
        println!("{name}: {total} requests, admitted per full window: {windows:?} (limit {LIMIT})");
        assert!(windows.len() >= 2, "{name}: too few windows: {windows:?}");
        assert!(
            total > LIMIT * 8,
            "{name}: load too light to test the limit: {total}"
        );
        for w in &windows {
            let dev = (*w as f64 - LIMIT as f64).abs() / LIMIT as f64;
            assert!(
                dev <= 0.05,
                "{name}: window admitted {w}, limit {LIMIT} ({windows:?})"
            );
        }
    }
}

#[test]
fn limit_req_rejects_beyond_burst_and_recovers() {
    let o = Origin::named("o");
    let cfg = format!(
        "{}{}{}",
        server(&[]),
        upstream("backend", &[o.addr], ""),
        route(
            "r",
            &["/*"],
            "backend",
            "[routes.plugins.limit-req]\nrate = 5\nburst = 0\nrejected_code = 429\nnodelay = true\n"
        )
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    let statuses: Vec<u16> = (0..6).map(|_| get_with(&mut c, "/x", "").status).collect();
    assert_eq!(statuses[0], 200);
    assert!(statuses[1..].contains(&429), "{statuses:?}");
    thread::sleep(Duration::from_millis(450));
    assert_eq!(get_with(&mut c, "/x", "").status, 200, "bucket refilled");
}

#[test]
fn limit_req_delays_within_burst() {
    let o = Origin::named("o");
    let cfg = format!(
        "{}{}{}",
        server(&[]),
        upstream("backend", &[o.addr], ""),
        route(
            "r",
            &["/*"],
            "backend",
            "[routes.plugins.limit-req]\nrate = 10\nburst = 5\n"
        )
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    let t = Instant::now();
    for _ in 0..4 {
        assert_eq!(get_with(&mut c, "/x", "").status, 200);
    }
    // Requests 2..4 were in the burst: delayed by excess / rate (~100 ms each at most).
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn limit_conn_rejects_concurrent_requests_and_releases() {
    let o = Origin::start("slow", |_| {
        Resp::text(200, "slow")
            .delay(Duration::from_millis(1500))
            .into()
    });
    let cfg = format!(
        "{}{}{}",
        server(&[]),
        upstream("backend", &[o.addr], ""),
        route(
            "r",
            &["/*"],
            "backend",
            "[routes.plugins.limit-conn]\nconn = 1\nburst = 0\ndefault_conn_delay = 0.1\nrejected_code = 429\n"
        )
    );
    let gw = Gateway::start(&cfg);
    let addr = gw.addr;
    let first = thread::spawn(move || {
        let mut c = Client::connect(addr);
        get_with(&mut c, "/slow", "").status
    });
    // The first request must hold its slot before the second arrives: wait until the
    // origin has it (a fixed sleep lost that race on a loaded machine).
    assert!(
        o.wait_requests(1, Duration::from_secs(5)),
        "first request never reached the origin"
    );
    let mut c = gw.client();
    assert_eq!(
        get_with(&mut c, "/x", "").status,
        429,
        "second concurrent request"
    );
    assert_eq!(first.join().unwrap(), 200);
    assert_eq!(
        get_with(&mut c, "/x", "").status,
        200,
        "slot released after the first finished"
    );
}

/// Admitted per second between 1 s after the first admission (past the opening burst and the
/// shards' first exchange) and 200 ms before the last; with the count, for the message.
fn steady_rate(admitted: &[Instant]) -> (f64, usize) {
    let (Some(&first), Some(&last)) = (admitted.first(), admitted.last()) else {
        return (0.0, 0);
    };
    let from = first + Duration::from_secs(1);
    let to = last - Duration::from_millis(200);
    if to <= from {
        return (0.0, 0);
    }
    let n = admitted.iter().filter(|&&t| t >= from && t < to).count();
    (n as f64 / (to - from).as_secs_f64(), n)
}

#[test]
fn limit_req_node_wide_rate_within_5_percent_with_uneven_shards() {
    let _cpu = cpu_lock(); // clients drive two shards flat out; the rate must hold within 5%
                           // burst > 0: with burst 0 a leaky bucket (nginx's too) drops the leftover fraction of a
                           // request at each admission and admits below `rate`; that is not what is measured here.
    const RATE: f64 = 100.0;
    let o = Origin::named("o");
    let (gw, mut s0, mut s1) = uneven_shards_gateway(
        &o,
        &format!("[routes.plugins.limit-req]\nrate = {RATE}\nburst = 20\nnodelay = true\nkey = \"header:X-Tenant\"\n"),
    );
    if s0.len() < s1.len() {
        std::mem::swap(&mut s0, &mut s1);
    }
    assert!(
        s0.len() >= 6 && !s1.is_empty(),
        "need 6 connections on one shard and 1 on the other: {} / {}",
        s0.len(),
        s1.len()
    );
    // All of one key on one shard; then 3:1 connections over both shards, its own key.
    let one: Vec<Client> = s0.drain(..3).collect();
    let mut uneven: Vec<Client> = s0.drain(..3).collect();
    uneven.push(s1.remove(0));
    let run = Duration::from_millis(4300);
    for (name, clients, tenant) in [("one shard", one, "r-one"), ("3:1", uneven, "r-uneven")] {
        let (admitted, total) = drive(&gw, clients, tenant, run);
        let (rate, n) = steady_rate(&admitted);
        println!(
            "{name}: {total} requests, {} admitted, steady {rate:.1}/s over {n} (rate {RATE})",
            admitted.len()
        );
        // The clients must offer well over the rate, or the count says nothing about the limit.
        assert!(
            total as f64 > 2.0 * RATE * run.as_secs_f64(),
            "{name}: load too light to test the limit: {total} requests"
        );
        assert!(
            (rate - RATE).abs() / RATE <= 0.05,
            "{name}: admitted {rate:.1}/s ({n} in the steady span), rate {RATE}"
        );
    }
}
