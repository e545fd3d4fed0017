//! The open loop's busy-poll against `serve`: a window wider than the gap between sends (the
//! thread polls without a break) still sends every request and lets the timeout watchdog run.

mod common;

use std::time::Duration;

use common::{json, num, run, Server};

/// With `--spin` far wider than the 250 us between sends the pacer never stops polling, so
/// everything else on the thread (the sends it fires, responses, monoio's timers) runs only in
/// the gaps of that poll. Every due request must still leave and be answered, and the one the
/// server stalls must be cut off by the watchdog as a timeout, not wait out the stall.
#[test]
fn continuous_busy_poll_keeps_the_schedule_and_the_watchdog() {
    let server = Server::start(&["--stall-once-after", "200", "--stall", "4s"]);
    let out = run(
        &[
            "-t",
            "1",
            "-c",
            "4",
            "-R",
            "4000",
            "--spin",
            "5ms",
            "--timeout",
            "1s",
            "-d",
            "2s",
            "--json",
            &server.url(),
        ],
        Duration::from_secs(20),
    );
    let v = json(&out);
    let requests = num(&v, &["requests"]);
    let timeouts = num(&v, &["errors", "timeout"]);
    assert_eq!(timeouts, 1.0, "the stalled request is one timeout: {v}");
    assert_eq!(num(&v, &["errors", "total"]), 1.0, "{v}");
    // 8,000 due in the window; the stalled one timed out instead.
    assert_eq!(
        requests, 7_999.0,
        "every due request sent and answered: {v}"
    );
    // Every answered request that found its connection free counts toward the schedule error.
    let scheduled = num(&v, &["schedule_error_us", "count"]);
    let late = num(&v, &["late_sends"]);
    assert!(scheduled + late >= requests, "{v}");
    // The server saw every request once (its count includes the stalled one).
    let seen = server.count();
    assert!(seen >= 8_000, "server saw {seen}: {v}");
}
