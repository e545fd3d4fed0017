//! End-to-end latency checks against `serve`: closed-loop p50 tracks a known server delay, and
//! open-loop correction exposes a one-off stall that uncorrected percentiles hide.

mod common;

use std::time::Duration;

use common::{json, num, run, Server};

#[test]
fn closed_loop_p50_matches_server_delay() {
    let server = Server::start(&["--delay", "20ms"]);
    let out = run(
        &["-t", "1", "-c", "4", "-d", "2s", "--json", &server.url()],
        Duration::from_secs(15),
    );
    let v = json(&out);
    let p50 = num(&v, &["latency_uncorrected_us", "p50"]);
    // monoio timers tick in whole milliseconds, so the server's 20ms sleep lands at 20-22ms.
    assert!(
        (19_500.0..26_000.0).contains(&p50),
        "p50 {p50}us not near 20ms: {v}"
    );
    assert!(num(&v, &["requests"]) > 100.0, "{v}");
    assert_eq!(num(&v, &["errors", "total"]), 0.0, "{v}");
    assert!(
        v["latency_corrected_us"].is_null(),
        "closed loop has no corrected latency: {v}"
    );
}

#[test]
fn open_loop_corrects_for_a_stall() {
    let server = Server::start(&["--stall-once-after", "100", "--stall", "1s"]);
    let out = run(
        &[
            "-t",
            "1",
            "-c",
            "10",
            "-R",
            "200",
            "-d",
            "4s",
            "--json",
            &server.url(),
        ],
        Duration::from_secs(20),
    );
    let v = json(&out);
    let requests = num(&v, &["requests"]);
    assert!((700.0..=800.0).contains(&requests), "rate not kept: {v}");
    let c_p999 = num(&v, &["latency_corrected_us", "p99_9"]);
    let c_max = num(&v, &["latency_corrected_us", "max"]);
    let u_p99 = num(&v, &["latency_uncorrected_us", "p99"]);
    let u_max = num(&v, &["latency_uncorrected_us", "max"]);
    assert!(
        c_max >= 950_000.0 && c_p999 >= 800_000.0,
        "stall missing from corrected: {v}"
    );
    assert!(u_p99 < 50_000.0, "stall leaked into uncorrected p99: {v}");
    // The stalled request itself is still seen, once, by the uncorrected histogram.
    assert!(u_max >= 950_000.0, "{v}");
}
