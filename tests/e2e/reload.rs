//! SIGHUP hot reload against the real binary: a valid file is swapped in (new generation), an
//! invalid one is refused with the old config kept, new listen ports open and removed ones close
//! without dropping existing connections, and a load loop sees zero failed requests across
//! several reloads.

use crate::harness::{ops, prometheus};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::ops::Proc;
use crate::harness::{
    closed_port, cpu_lock, get_req, route, server, upstream, wait_until, Client, Origin, Resp,
};

fn cfg(listen: &[String], origin: SocketAddr, status: bool) -> String {
    let listen: Vec<String> = listen.iter().map(|a| format!("{a:?}")).collect();
    let status = if status {
        "[status]\nlisten = \"127.0.0.1:0\"\n\n"
    } else {
        ""
    };
    format!(
        "{}{status}{}{}",
        server(&[
            ("workers", "2"),
            ("listen", &format!("[{}]", listen.join(", ")))
        ]),
        upstream("backend", &[origin], ""),
        route("r", &["/*"], "backend", "")
    )
}

fn body_of(addr: SocketAddr) -> String {
    Client::connect(addr).get("/x").body_str()
}

#[test]
fn valid_file_is_swapped_in_and_invalid_is_refused() {
    let a = Origin::start("a", |_| Resp::text(200, "from-a").into());
    let b = Origin::start("b", |_| Resp::text(200, "from-b").into());
    let listen = vec!["127.0.0.1:0".to_string()];
    let p = Proc::start("reload-basic", &cfg(&listen, a.addr, true));
    let status = ops::listener(&p.logs, "status");
    assert_eq!(body_of(p.addr), "from-a");
    // A keep-alive connection opened before the reload moves to the new config at its next request.
    let mut kept = Client::connect(p.addr);
    assert_eq!(kept.get("/x").body_str(), "from-a");

    p.rewrite(&cfg(&listen, b.addr, true));
    let line = p.reload(1);
    assert!(line.contains("generation 2"), "{line}");
    assert!(wait_until(Duration::from_secs(3), || body_of(p.addr) == "from-b"));
    assert_eq!(kept.get("/x").body_str(), "from-b");

    p.rewrite("[server]\nlisten = [\"127.0.0.1:0\"]\n[[routes]]\nname = \"r\"\npaths = [\"/*\"]\nupstream = \"missing\"\n");
    let line = p.reload(2);
    assert!(
        line.contains("routes[0].upstream") && line.contains("keeping config generation 2"),
        "{line}"
    );
    for _ in 0..5 {
        assert_eq!(body_of(p.addr), "from-b");
    }
    assert_eq!(kept.get("/x").body_str(), "from-b");
    let samples = prometheus::scrape(status);
    assert_eq!(
        prometheus::value(&samples, "ringway_config_generation", &[]),
        2.0
    );
    assert_eq!(
        prometheus::value(
            &samples,
            "ringway_config_reloads_total",
            &[("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        prometheus::value(
            &samples,
            "ringway_config_reloads_total",
            &[("result", "error")]
        ),
        1.0
    );
}

#[test]
fn new_listen_port_opens_without_dropping_connections() {
    let a = Origin::start("a", |_| Resp::text(200, "ok").into());
    let first = closed_port().to_string();
    let p = Proc::start(
        "reload-listen",
        &cfg(std::slice::from_ref(&first), a.addr, false),
    );
    let mut kept = Client::connect(p.addr);
    assert_eq!(kept.get("/x").status, 200);
    let second = closed_port();
    p.rewrite(&cfg(&[first, second.to_string()], a.addr, false));
    p.reload(1);
    assert!(
        wait_until(Duration::from_secs(3), || Client::try_connect(second)
            .is_ok()),
        "{}",
        p.logs.text()
    );
    assert_eq!(Client::connect(second).get("/x").status, 200);
    assert_eq!(
        kept.get("/x").status,
        200,
        "connection from before the reload still served"
    );
    assert_eq!(Client::connect(p.addr).get("/x").status, 200);
}

#[test]
fn removed_listen_port_closes_but_its_connections_finish() {
    let a = Origin::start("a", |_| Resp::text(200, "ok").into());
    let first = closed_port().to_string();
    let second = closed_port();
    let both = [first.clone(), second.to_string()];
    let p = Proc::start("reload-unlisten", &cfg(&both, a.addr, false));
    // Connections on the port to be removed, open across the reload (several, so both
    // shards are likely to hold one).
    let mut kept: Vec<Client> = (0..6).map(|_| Client::connect(second)).collect();
    for c in &mut kept {
        assert_eq!(c.get("/x").status, 200);
    }
    p.rewrite(&cfg(std::slice::from_ref(&first), a.addr, false));
    assert!(p.reload(1).contains("config reloaded"), "{}", p.logs.text());
    assert!(
        wait_until(Duration::from_secs(3), || Client::try_connect(second)
            .is_err()),
        "{second} still accepts after its removal:\n{}",
        p.logs.text()
    );
    assert!(p
        .logs
        .text()
        .contains(&format!("stopped listening on {second}")));
    for c in &mut kept {
        assert_eq!(
            c.get("/x").status,
            200,
            "connection from before the removal"
        );
    }
    assert_eq!(Client::connect(p.addr).get("/x").status, 200);
    // Listing it again opens it again.
    p.rewrite(&cfg(&both, a.addr, false));
    p.reload(2);
    assert!(
        wait_until(Duration::from_secs(3), || Client::try_connect(second)
            .is_ok()),
        "{}",
        p.logs.text()
    );
    assert_eq!(Client::connect(second).get("/x").status, 200);
}

#[test]
fn reloads_under_load_fail_no_request() {
    let _cpu = cpu_lock(); // reloads under a flat-out client load
    let a = Origin::start("a", |_| Resp::text(200, "a").into());
    let b = Origin::start("b", |_| Resp::text(200, "b").into());
    let listen = vec!["127.0.0.1:0".to_string()];
    let p = Proc::start("reload-load", &cfg(&listen, a.addr, false));
    let addr = p.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        workers.push(std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut c = Client::connect(addr);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = c
                    .try_send(get_req("/x", "t"))
                    .map_err(|e| e.to_string())
                    .and_then(|_| c.try_read_response().map_err(|e| format!("{e:?}")));
                match r {
                    Ok(resp) if resp.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if resp.connection_close() {
                            c = Client::connect(addr);
                        }
                    }
                    other => {
                        eprintln!("failed request: {:?}", other.map(|r| r.status));
                        failed.fetch_add(1, Ordering::Relaxed);
                        c = Client::connect(addr);
                    }
                }
            }
        }));
    }
    let t0 = Instant::now();
    for i in 1..=6 {
        std::thread::sleep(Duration::from_millis(250));
        let origin = if i % 2 == 1 { b.addr } else { a.addr };
        p.rewrite(&cfg(&listen, origin, false));
        let line = p.reload(i);
        assert!(line.contains(&format!("generation {}", i + 1)), "{line}");
    }
    std::thread::sleep(Duration::from_millis(250));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "reload under load: {ok} ok, {failed} failed, 6 reloads in {:?}",
        t0.elapsed()
    );
    assert_eq!(failed, 0);
    assert!(ok > 100, "load loop made too few requests: {ok}");
    assert!(a.request_count() > 0 && b.request_count() > 0);
}
