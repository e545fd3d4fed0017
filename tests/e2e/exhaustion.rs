//! Resource exhaustion (issue 9), modest enough for a 2-core CI box: the per-shard connection
//! cap, thousands of idle keep-alive connections plus a slowloris flood while a normal client
//! keeps working, and a memory ceiling under a flood of distinct route misses.
use crate::harness::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn max_connections_refuses_extra_connections_without_harming_existing_ones() {
    const CAP: usize = 20;
    let origin = Origin::named("o");
    let gw = Gateway::start(&simple_config(
        origin.addr,
        &[("max_connections", &CAP.to_string())],
    ));
    let mut held: Vec<Client> = (0..CAP)
        .map(|_| {
            let mut c = gw.client();
            assert_eq!(c.get("/held").status, 200);
            c
        })
        .collect();
    // Past the cap: accepted, then closed at once, without an answer.
    for i in 0..10 {
        let mut extra = gw.client();
        let _ = extra.try_send(get_req("/extra", "example.com"));
        match extra.try_read_response() {
            Ok(r) => panic!(
                "connection {i} past max_connections was served: {}",
                r.raw_head
            ),
            Err(e) => assert!(!e.is_timeout(), "extra connection {i} left hanging: {e}"),
        }
    }
    // The existing ones are unharmed.
    for c in held.iter_mut() {
        assert_eq!(c.get("/still").status, 200);
    }
    // Room again once some leave.
    held.truncate(CAP - 5);
    let ok = wait_until(Duration::from_secs(5), || {
        Client::try_connect(gw.addr)
            .ok()
            .and_then(|mut c| {
                c.try_send(get_req("/again", "example.com")).ok()?;
                c.try_read_response().ok()
            })
            .is_some_and(|r| r.status == 200)
    });
    assert!(ok, "no room for a new connection after others closed");
}

fn vm_rss_kb(pid: u32) -> u64 {
    rss_kb(pid)
}

#[test]
fn idle_connections_and_slowloris_do_not_starve_a_normal_client() {
    let _cpu = cpu_lock(); // 2,300 connections, and a normal client must still be served promptly
    const IDLE: usize = 2000;
    const SLOW: usize = 300;
    assert!(raise_nofile(8192) >= 6000, "cannot raise RLIMIT_NOFILE");
    let origin = Origin::named("o");
    let gw = Gateway::start(&simple_config(
        origin.addr,
        &[
            ("client_header_timeout", "\"20s\""),
            ("keepalive_timeout", "\"60s\""),
        ],
    ));
    assert_eq!(gw.client().get("/warm").status, 200);
    thread::sleep(Duration::from_millis(200));
    let rss0 = vm_rss_kb(gw.pid);

    // Idle keep-alive connections, each after one complete request.
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut c = gw.client();
        let r = c.get("/idle");
        assert_eq!(r.status, 200, "idle connection {i}");
        idle.push(c);
    }
    thread::sleep(Duration::from_millis(500));
    let rss1 = vm_rss_kb(gw.pid);
    let per_conn = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / IDLE as f64;
    eprintln!(
        "RSS: {rss0} KiB before, {rss1} KiB with {IDLE} idle keep-alive connections: {per_conn:.0} bytes each"
    );
    assert!(
        per_conn < 100.0 * 1024.0,
        "{per_conn:.0} bytes of RSS per idle connection"
    );

    // Slowloris: heads trickled a few bytes at a time, never finished within the test.
    let stop = Arc::new(AtomicBool::new(false));
    let addr = gw.addr;
    let st = stop.clone();
    let slow = thread::spawn(move || {
        let mut socks: Vec<TcpStream> = (0..SLOW)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok())
            .collect();
        for s in &mut socks {
            let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = s.write_all(b"GET /slow HTTP/1.1\r\nHost: example.com\r\n");
        }
        let mut n = 0u32;
        while !st.load(SeqCst) {
            for s in &mut socks {
                let _ = s.write_all(format!("X-{n}: y\r\n").as_bytes());
            }
            n += 1;
            thread::sleep(Duration::from_millis(300));
        }
        socks.len()
    });
    thread::sleep(Duration::from_millis(500));

    // The normal client: fresh connections and keep-alive, all must succeed promptly.
    let t = Instant::now();
    for i in 0..100 {
        let mut c = gw.client();
        c.set_read_timeout(Duration::from_secs(5));
        let r = c.get(&format!("/normal/{i}"));
        assert_eq!(r.status, 200, "normal request {i} during the flood");
    }
    let mut ka = gw.client();
    ka.set_read_timeout(Duration::from_secs(5));
    for i in 0..100 {
        assert_eq!(
            ka.get(&format!("/ka/{i}")).status,
            200,
            "keep-alive request {i}"
        );
    }
    eprintln!(
        "200 normal requests during the flood took {:?}",
        t.elapsed()
    );
    stop.store(true, SeqCst);
    let slow_conns = slow.join().expect("slowloris thread");
    assert!(
        slow_conns >= SLOW * 9 / 10,
        "only {slow_conns} slowloris connections opened"
    );

    // The idle ones still work.
    for c in idle.iter_mut().step_by(100) {
        assert_eq!(c.get("/idle-again").status, 200);
    }
}

#[test]
fn route_miss_flood_keeps_memory_bounded() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 5000;
    const BATCH: usize = 100;
    let origin = Origin::named("o");
    let config = format!(
        "{}{}{}",
        server(&[]),
        upstream("backend", &[origin.addr], ""),
        route("api", &["/api/*"], "backend", "")
    );
    let gw = Gateway::start(&config);
    let mut c = gw.client();
    assert_eq!(c.get("/nope").status, 404);
    drop(c);
    let rss0 = vm_rss_kb(gw.pid);
    let addr = gw.addr;
    let mut peak = rss0;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ t as u64;
                for _ in 0..PER_THREAD / BATCH {
                    let mut batch = String::new();
                    for _ in 0..BATCH {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        batch.push_str(&get_req(
                            &format!("/miss/{x:016x}/{}", x.rotate_left(17)),
                            &format!("h{}.example.com", x % 1000),
                        ));
                    }
                    c.send(batch.as_bytes());
                    for _ in 0..BATCH {
                        let r = c.read_response();
                        assert_eq!(r.status, 404);
                    }
                }
            })
        })
        .collect();
    while !workers.iter().all(|w| w.is_finished()) {
        peak = peak.max(vm_rss_kb(gw.pid));
        thread::sleep(Duration::from_millis(50));
    }
    for w in workers {
        w.join().expect("flood thread");
    }
    peak = peak.max(vm_rss_kb(gw.pid));
    let growth = peak.saturating_sub(rss0);
    eprintln!(
        "RSS {rss0} KiB before, peak {peak} KiB over {} distinct 404s",
        THREADS * PER_THREAD
    );
    assert!(
        growth < 8 * 1024,
        "RSS grew {growth} KiB over a flood of distinct route misses"
    );
    // Still healthy.
    let mut c = gw.client();
    let mut buf = [0u8; 1];
    c.send(get_req("/api/x", "example.com"));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    let _ = c.stream.read(&mut buf[..0]);
}
