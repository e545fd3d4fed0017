//! fault-injection and api-breaker through the real server: aborts and delays with vars and
//! percentages; the breaker's trip, doubling open time, half-open probe and recovery.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn fault_injection_abort_with_vars_and_delay() {
    let o = Origin::named("o");
    let cfg = format!(
        "{}{}{}{}",
        server(&[]),
        upstream("backend", &[o.addr], ""),
        route("abort", &["/abort"], "backend", "[routes.plugins.fault-injection.abort]\nhttp_status = 418\nbody = \"teapot\"\nvars = [[[\"arg_name\", \"==\", \"jack\"]]]\n"),
        route("delay", &["/delay"], "backend", "[routes.plugins.fault-injection.delay]\nduration = 0.3\n[routes.plugins.fault-injection.abort]\nhttp_status = 503\nvars = [[[\"http_x_fail\", \"==\", \"1\"]]]\n"),
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    let r = get_with(&mut c, "/abort?name=jack", "");
    assert_eq!(r.status, 418);
    assert_eq!(r.body_str(), "teapot");
    assert_eq!(get_with(&mut c, "/abort?name=jill", "").status, 200);
    assert_eq!(
        o.request_count(),
        1,
        "the aborted request never reached the upstream"
    );

    let t = Instant::now();
    assert_eq!(get_with(&mut c, "/delay", "").status, 200);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Delay first, then abort (as APISIX).
    let t = Instant::now();
    assert_eq!(get_with(&mut c, "/delay", "X-Fail: 1\r\n").status, 503);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(o.request_count(), 2);
}

#[test]
fn fault_injection_percentage_is_roughly_honoured() {
    let o = Origin::named("o");
    let cfg = one_route(
        &o,
        &[],
        "[routes.plugins.fault-injection.abort]\nhttp_status = 500\npercentage = 30\n",
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    let aborted = (0..400)
        .filter(|_| get_with(&mut c, "/p", "").status == 500)
        .count();
    // Binomial(400, 0.3): mean 120, sd ~9.2; ±5 sd.
    assert!((74..=166).contains(&aborted), "aborted {aborted} of 400");
    assert_eq!(o.request_count(), 400 - aborted);
}

#[test]
fn fault_injection_config_errors() {
    let o = Origin::named("o");
    let base = |p: &str| one_route(&o, &[], p);
    assert_config_rejected(
        &base("[routes.plugins.fault-injection]\n"),
        &["routes[0].plugins.fault-injection", "abort, delay"],
    );
    assert_config_rejected(
        &base("[routes.plugins.fault-injection.abort]\nhttp_status = 99\n"),
        &["fault-injection.abort.http_status"],
    );
    assert_config_rejected(
        &base("[routes.plugins.fault-injection.delay]\nduration = -1.0\n"),
        &["fault-injection.delay.duration"],
    );
    assert_config_rejected(
        &base("[routes.plugins.fault-injection.abort]\nhttp_status = 500\npercentage = 150.0\n"),
        &["abort.percentage"],
    );
    assert_config_rejected(&base("[routes.plugins.fault-injection.abort]\nhttp_status = 500\nvars = [[[\"arg_a\", \"??\", \"1\"]]]\n"), &["abort.vars[0][0]", "unknown operator"]);
}

/// An origin answering with whatever status the test sets.
fn switchable() -> (Origin, Arc<AtomicU16>) {
    let status = Arc::new(AtomicU16::new(500));
    let s = status.clone();
    let o = Origin::start("flaky", move |_| {
        Resp::text(s.load(Ordering::SeqCst), "up").into()
    });
    (o, status)
}

#[test]
fn api_breaker_trips_doubles_and_recovers() {
    let (o, status) = switchable();
    let cfg = one_route(
        &o,
        &[],
        "[routes.plugins.api-breaker]\nbreak_response_code = 502\nbreak_response_body = \"breaker open\"\nbreak_response_headers = [{ key = \"X-Breaker\", value = \"open\" }]\nunhealthy = { http_statuses = [500, 503], failures = 3 }\nhealthy = { http_statuses = [200], successes = 2 }\n",
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    // A healthy answer in between resets the run: 2 failures, 1 success, 2 failures: still closed.
    for s in [500, 503, 200, 500, 500] {
        status.store(s, Ordering::SeqCst);
        assert_eq!(get_with(&mut c, "/", "").status, s);
    }
    status.store(500, Ordering::SeqCst);
    assert_eq!(
        get_with(&mut c, "/", "").status,
        500,
        "third failure in a row trips"
    );
    let tripped = Instant::now();
    let seen = o.request_count();
    let r = get_with(&mut c, "/", "");
    assert_eq!(r.status, 502);
    assert_eq!(r.body_str(), "breaker open");
    assert_eq!(r.header("X-Breaker"), Some("open"));
    assert_eq!(
        o.request_count(),
        seen,
        "open: nothing reaches the upstream"
    );

    // First trip: open for 2 s. The half-open probe fails: open again for 4 s.
    thread::sleep(Duration::from_millis(2100).saturating_sub(tripped.elapsed()));
    assert_eq!(
        get_with(&mut c, "/", "").status,
        500,
        "half-open lets a request through"
    );
    let retripped = Instant::now();
    assert_eq!(o.request_count(), seen + 1);
    thread::sleep(Duration::from_millis(2500).saturating_sub(retripped.elapsed()));
    assert_eq!(
        get_with(&mut c, "/", "").status,
        502,
        "second trip lasts 4 s, not 2"
    );
    assert_eq!(o.request_count(), seen + 1);

    // After 4 s the upstream is healthy again: 2 successes close the breaker for good.
    status.store(200, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(4100).saturating_sub(retripped.elapsed()));
    assert_eq!(get_with(&mut c, "/", "").status, 200);
    assert_eq!(get_with(&mut c, "/", "").status, 200);
    // Closed again: one failure does not trip (it takes 3 in a row).
    status.store(500, Ordering::SeqCst);
    assert_eq!(get_with(&mut c, "/", "").status, 500);
    status.store(200, Ordering::SeqCst);
    assert_eq!(get_with(&mut c, "/", "").status, 200);
}

#[test]
fn api_breaker_counts_unreachable_upstream_and_not_plugin_replies() {
    // Nothing listens: the gateway answers 502 itself, which counts as an unhealthy status.
    let dead = closed_port();
    let cfg = format!(
        "{}{}{}{}",
        server(&[]),
        upstream("dead", &[dead], ""),
        route("r", &["/dead"], "dead", "[routes.plugins.api-breaker]\nbreak_response_code = 503\nunhealthy = { http_statuses = [502], failures = 2 }\n"),
        route("auth", &["/auth"], "dead", "[routes.plugins.api-breaker]\nbreak_response_code = 503\nunhealthy = { http_statuses = [401, 502], failures = 1 }\n[routes.plugins.key-auth]\n"),
    );
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    assert_eq!(get_with(&mut c, "/dead", "").status, 502);
    assert_eq!(get_with(&mut c, "/dead", "").status, 502);
    assert_eq!(
        get_with(&mut c, "/dead", "").status,
        503,
        "open after two 502s"
    );
    // key-auth's 401 is a plugin reply, not an upstream status: the breaker never trips.
    for _ in 0..3 {
        assert_eq!(get_with(&mut c, "/auth", "").status, 401);
    }
}

#[test]
fn api_breaker_config_errors() {
    let o = Origin::named("o");
    let base = |p: &str| one_route(&o, &[], &format!("[routes.plugins.api-breaker]\n{p}"));
    assert_config_rejected(
        &base(""),
        &["routes[0].plugins.api-breaker", "break_response_code"],
    );
    assert_config_rejected(
        &base("break_response_code = 502\nmax_breaker_sec = 1\n"),
        &["api-breaker.max_breaker_sec"],
    );
    assert_config_rejected(
        &base("break_response_code = 502\nunhealthy = { failures = 0 }\n"),
        &["api-breaker.unhealthy.failures"],
    );
    assert_config_rejected(
        &base("break_response_code = 502\nhealthy = { http_statuses = [99] }\n"),
        &["healthy.http_statuses"],
    );
}
