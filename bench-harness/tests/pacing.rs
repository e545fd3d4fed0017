//! The open loop's busy-poll against `serve`: a window wider than the gap between sends (the
//! thread polls without a break) still sends every request and lets the timeout watchdog run;
//! the timer alone (`--spin 0`) sends each due request once.

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
    // 8,000 due in the window, the stalled one timed out instead (a connection still busy at the
    // window's end skips its last due send, so a stalled box may lose a few).
    assert!(
        (7_900.0..=7_999.0).contains(&requests),
        "every due request sent and answered: {v}"
    );
    // Every send counts once: toward the schedule error if its connection was free, else late.
    let scheduled = num(&v, &["schedule_error_us", "count"]);
    let late = num(&v, &["late_sends"]);
    assert_eq!(scheduled + late, requests + timeouts, "{v}");
    // The server saw every request once (its count includes the stalled one).
    let seen = server.count();
    assert_eq!(seen as f64, requests + timeouts, "{v}");
}

/// With `--spin 0` every send waits for the timerfd; the pacer lets what it fired run before it
/// re-arms the timer (through the same relay the busy-poll uses). Every due request must leave
/// exactly once, on its own connection's schedule, and be answered.
#[test]
fn timer_only_pacing_sends_every_due_request_once() {
    let server = Server::start(&["--delay", "200us"]);
    let out = run(
        &[
            "-t",
            "1",
            "-c",
            "3",
            "-R",
            "600",
            "--spin",
            "0",
            "-d",
            "1s",
            "--json",
            &server.url(),
        ],
        Duration::from_secs(15),
    );
    let v = json(&out);
    let requests = num(&v, &["requests"]);
    // 600 due; a connection still busy at the window's end skips its last one.
    assert!((590.0..=600.0).contains(&requests), "{v}");
    assert_eq!(num(&v, &["errors", "total"]), 0.0, "{v}");
    let scheduled = num(&v, &["schedule_error_us", "count"]);
    let late = num(&v, &["late_sends"]);
    assert_eq!(
        scheduled + late,
        requests,
        "every send on time or late: {v}"
    );
    let seen = server.count();
    assert_eq!(
        seen as f64, requests,
        "the server saw each request once: {v}"
    );
}
