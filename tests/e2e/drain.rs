//! Graceful shutdown on SIGTERM / SIGINT.
use crate::harness::*;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn sigterm_drains_in_flight_requests() {
    let _cpu = cpu_lock(); // needs more than 20 responses before the SIGTERM
    let origin = Origin::start("o", |r| {
        Resp::text(200, format!("{}|{}", r.target, "x".repeat(2000)))
            .delay(Duration::from_millis(50))
            .into()
    });
    let mut gw = Gateway::start(&simple_config(
        origin.addr,
        &[("shutdown_timeout", "\"5s\"")],
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let complete = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut handles = Vec::new();
    for t in 0..10 {
        let (stop, complete, failures) = (stop.clone(), complete.clone(), failures.clone());
        let addr = gw.addr;
        handles.push(std::thread::spawn(move || {
            let mut i = 0;
            'outer: while !stop.load(SeqCst) {
                let mut c = match Client::try_connect(addr) {
                    Ok(c) => c,
                    Err(_) => break, // refused after shutdown: fine
                };
                loop {
                    if stop.load(SeqCst) {
                        break 'outer;
                    }
                    let path = format!("/{t}/{i}");
                    i += 1;
                    if c.try_send(get_req(&path, "example.com")).is_err() {
                        continue 'outer;
                    }
                    match c.try_read_response() {
                        Ok(r) => {
                            let want = format!("{path}|{}", "x".repeat(2000));
                            if r.status != 200 || r.body_str() != want {
                                failures.lock().expect("lock").push(format!(
                                    "{path}: got {} with a {}-byte body",
                                    r.status,
                                    r.body.len()
                                ));
                            } else {
                                complete.fetch_add(1, SeqCst);
                            }
                            if r.connection_close() {
                                continue 'outer;
                            }
                        }
                        Err(e) if e.got() == 0 && !e.is_timeout() => continue 'outer, // closed before any byte
                        Err(e) => {
                            failures
                                .lock()
                                .expect("lock")
                                .push(format!("{path}: truncated/failed response: {e}"));
                            continue 'outer;
                        }
                    }
                }
            }
        }));
    }
    // Waits for the load to get going rather than sampling it after a fixed time: a loaded
    // machine took longer than 700 ms to reach 20 responses (CI-like runs beside builds).
    let going = wait_until(Duration::from_secs(10), || complete.load(SeqCst) > 20);
    let before = complete.load(SeqCst);
    assert!(going, "load did not get going: {before} responses in 10 s");
    let t0 = Instant::now();
    gw.send_sigterm();
    let status = gw.wait_exit(Duration::from_secs(5 + 3));
    stop.store(true, SeqCst);
    for h in handles {
        h.join().expect("client thread panicked");
    }
    let status = status.unwrap_or_else(|| {
        panic!("gateway did not exit within shutdown_timeout (5s) + 3s after SIGTERM")
    });
    assert!(
        status.success(),
        "gateway exit status after SIGTERM: {status}"
    );
    assert!(t0.elapsed() < Duration::from_secs(8));
    eprintln!(
        "drain: {before} responses before SIGTERM, {} total, origin answered {}, exit after {:?}",
        complete.load(SeqCst),
        origin.request_count(),
        t0.elapsed()
    );
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "responses broken during drain: {failures:#?}"
    );
    // every request the origin answered reached its client complete
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        complete.load(SeqCst),
        origin.request_count(),
        "origin answered {} requests but clients got {} complete responses: in-flight requests were dropped",
        origin.request_count(),
        complete.load(SeqCst)
    );
    assert!(
        TcpStream::connect_timeout(&gw.addr, Duration::from_millis(500)).is_err(),
        "new connections must be refused after shutdown"
    );
}

#[test]
fn long_in_flight_request_completes_and_new_connections_are_not_served() {
    let origin = Origin::start("o", |r| {
        if r.path() == "/slow" {
            Resp::text(200, "slow-done")
                .delay(Duration::from_millis(1500))
                .into()
        } else {
            Resp::text(200, "fast").into()
        }
    });
    let mut gw = Gateway::start(&simple_config(
        origin.addr,
        &[("shutdown_timeout", "\"10s\"")],
    ));
    let addr = gw.addr;
    let slow = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(get_req("/slow", "example.com"));
        c.try_read_response().map_err(|e| e.to_string())
    });
    assert!(
        origin.wait_requests(1, Duration::from_secs(5)),
        "slow request never reached the origin"
    );
    gw.send_sigterm();
    std::thread::sleep(Duration::from_millis(300));
    // a new connection during the drain must not be served
    match Client::try_connect(addr) {
        Err(_) => {}
        Ok(mut c) => {
            c.set_read_timeout(Duration::from_secs(5));
            let _ = c.try_send(get_req("/new", "example.com"));
            if let Ok(r) = c.try_read_response() {
                assert!(
                    !(200..300).contains(&r.status),
                    "a connection opened after SIGTERM was served: {}",
                    r.raw_head
                );
            }
        }
    }
    let r = slow
        .join()
        .expect("slow client thread")
        .unwrap_or_else(|e| panic!("in-flight request cut by SIGTERM: {e}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "slow-done");
    let st = gw.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!("gateway still running 5s after the last in-flight request finished")
    });
    assert!(st.success(), "exit status {st}");
    assert_eq!(
        origin
            .requests()
            .iter()
            .filter(|r| r.path() == "/new")
            .count(),
        0,
        "request on a post-SIGTERM connection reached the origin"
    );
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "port still accepting after exit"
    );
}

#[test]
fn idle_keepalive_connections_do_not_hold_shutdown() {
    let origin = Origin::echo_target("o");
    let mut gw = Gateway::start(&simple_config(
        origin.addr,
        &[("shutdown_timeout", "\"20s\"")],
    ));
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut c = gw.client();
        assert_eq!(c.get("/").status, 200);
        idle.push(c);
    }
    let t0 = Instant::now();
    gw.send_sigterm();
    let st = gw
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("idle keep-alive connections kept the gateway alive >5s after SIGTERM (shutdown_timeout 20s)"));
    assert!(st.success(), "exit status {st}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    for mut c in idle {
        c.wait_closed(Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("idle client connection after exit: {e}"));
    }
}

#[test]
fn shutdown_timeout_bounds_drain() {
    let origin = Origin::start("o", |_| Reply::Hang);
    let mut gw = Gateway::start(&format!(
        "{}{}{}",
        server(&[("shutdown_timeout", "\"1s\"")]),
        upstream(
            "backend",
            &[origin.addr],
            "read_timeout = \"60s\"\nretries = 0"
        ),
        route("r", &["/*"], "backend", "")
    ));
    let addr = gw.addr;
    let hung = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(get_req("/", "example.com"));
        let _ = c.try_read_response();
    });
    assert!(
        origin.wait_requests(1, Duration::from_secs(5)),
        "request never reached origin"
    );
    let t0 = Instant::now();
    gw.send_sigterm();
    let st = gw.wait_exit(Duration::from_secs(4));
    assert!(
        st.is_some(),
        "gateway did not exit within shutdown_timeout=1s + 3s with a hung in-flight request"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "exited before shutdown_timeout: {:?}",
        t0.elapsed()
    );
    hung.join().expect("client thread");
}

#[test]
fn sigint_also_exits_cleanly() {
    let origin = Origin::echo_target("o");
    let mut gw = Gateway::start(&simple_config(origin.addr, &[]));
    assert_eq!(one_shot(gw.addr, get_req("/", "example.com")).status, 200);
    gw.send_signal("INT");
    let st = gw
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within 5s of SIGINT"));
    assert!(st.success(), "exit status after SIGINT: {st}");
}
