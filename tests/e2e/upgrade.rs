//! Zero-downtime binary upgrade (`ringway run --upgrade`): steady keep-alive and new-connection
//! load through upgrades, an upgrade refused for a bad config, and TLS with resumption across it.

use crate::harness::tls::{client_config_with, Pki, TlsClient};
use crate::harness::upgrade::{Load, Mode, Successor, Tally};
use crate::harness::*;
use std::sync::Arc;
use std::time::Duration;

const SHUTDOWN: Duration = Duration::from_secs(5);
const PACE: Duration = Duration::from_millis(2);
const LOAD: [Mode; 4] = [
    Mode::KeepAlive,
    Mode::KeepAlive,
    Mode::NewConn,
    Mode::NewConn,
];

fn echo_origin() -> Origin {
    Origin::start("o", |r| Resp::text(200, &r.target).into())
}

/// Waits until the load has `n` more answers than now.
fn wait_more(load: &Load, n: u64) {
    let base = load.ok_so_far();
    assert!(
        wait_until(Duration::from_secs(20), || load.ok_so_far() >= base + n),
        "the load got {} answers in 20 s, wanted {n}",
        load.ok_so_far() - base
    );
}

/// Starts a successor on `path` and waits until it says it serves.
fn upgrade(path: &std::path::Path) -> Successor {
    let mut s = Successor::start(path);
    if s.wait_log("upgrade: serving", Duration::from_secs(30))
        .is_none()
    {
        panic!("the successor did not serve:\n{}", s.stderr.text());
    }
    s
}

fn assert_clean(t: &Tally) {
    assert!(
        t.failed.is_empty(),
        "{} failed requests (of {}), first: {:?}",
        t.failed.len(),
        t.ok + t.failed.len() as u64,
        &t.failed[..t.failed.len().min(5)]
    );
    assert_eq!(t.refused, 0, "connections refused during the upgrade");
}

#[test]
fn upgrades_under_load_fail_no_request_and_a_bad_config_leaves_the_old_one_serving() {
    let _cpu = cpu_lock();
    let origin = echo_origin();
    let cfg = format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
        server(&[("workers", "2"), ("shutdown_timeout", "\"5s\"")]),
        upstream("backend", &[origin.addr], ""),
        route("default", &["/*"], "backend", "")
    );
    let mut gw = Gateway::start(&cfg);
    let path = gw.config_path().to_path_buf();
    let good = std::fs::read_to_string(&path).expect("config file");
    let load = Load::start(gw.addr, &LOAD, None, PACE);
    wait_more(&load, 200);

    // 1. A valid upgrade: the successor takes the sockets, the old process drains and exits.
    let mut first = upgrade(&path);
    let old_exit = gw.wait_exit(SHUTDOWN + Duration::from_secs(5));
    assert!(
        old_exit.is_some_and(|s| s.success()),
        "old process after its drain: {old_exit:?}\n{}",
        gw.logs()
    );
    assert!(
        gw.logs().contains("upgrade: handed over; draining"),
        "{}",
        gw.logs()
    );
    load.mark();
    wait_more(&load, 300);

    // 2. A successor whose config is invalid exits before asking; the running one keeps serving.
    std::fs::write(&path, good.replace("[server]\n", "[server]\nworkerz = 2\n")).expect("write");
    let mut bad = Successor::start(&path);
    let code = bad
        .wait_exit(Duration::from_secs(20))
        .expect("bad successor exits");
    assert_eq!(code.code(), Some(2), "{}", bad.stderr.text());
    let said = bad.stderr.text();
    assert!(
        said.contains("workerz") && said.contains("the running process keeps serving"),
        "{said}"
    );
    assert!(
        first.wait_exit(Duration::ZERO).is_none(),
        "the running one exited"
    );
    assert!(
        !first.stderr.text().contains("handed"),
        "the bad successor reached the running process:\n{}",
        first.stderr.text()
    );
    wait_more(&load, 200);

    // 3. Upgrading the upgraded process works the same way.
    std::fs::write(&path, &good).expect("restore config");
    let mut second = upgrade(&path);
    let first_exit = first.wait_exit(SHUTDOWN + Duration::from_secs(5));
    assert!(
        first_exit.is_some_and(|s| s.success()),
        "first successor after its drain: {first_exit:?}\n{}",
        first.stderr.text()
    );
    wait_more(&load, 300);
    let tally = load.stop();
    assert_clean(&tally);
    assert!(tally.ok_after_mark > 0);

    // The status listener moved along with the proxy's.
    let status = second
        .stderr
        .wait_for(
            |l| l.contains("status listening on"),
            Duration::from_secs(5),
        )
        .and_then(|l| parse_listening_line(&l))
        .expect("status line");
    let health = one_shot(status, get_req("/healthz", "x"));
    assert_eq!(health.status, 200, "{}", health.body_str());
    eprintln!(
        "upgrade load: {} answered ({} after the first old process exited), 0 failed, 0 refused",
        tally.ok, tally.ok_after_mark
    );
    second.send_sigterm();
    assert!(second
        .wait_exit(SHUTDOWN + Duration::from_secs(5))
        .is_some());
}

#[test]
fn tls_listeners_upgrade_under_load_and_sessions_resume_across() {
    let _cpu = cpu_lock();
    let pki = Pki::new("upgrade");
    pki.leaf("a", &["a.test"]);
    let origin = echo_origin();
    let cfg = format!(
        "[server]\nworkers = 2\nshutdown_timeout = \"5s\"\n\n[[server.listen]]\naddr = \"127.0.0.1:0\"\ntls = true\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\n{}{}",
        pki.path("a.pem"),
        pki.path("a.key"),
        upstream("backend", &[origin.addr], ""),
        route("default", &["/*"], "backend", "")
    );
    let mut gw = Gateway::start(&cfg);
    let path = gw.config_path().to_path_buf();
    // One TLS 1.3 and one TLS 1.2 client hold tickets from the old process.
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let before: Vec<_> = versions
        .iter()
        .map(|v| {
            let c = Arc::new(client_config_with(&pki.root_pem, Some(&[*v]), None));
            let mut first = TlsClient::connect(gw.addr, "a.test", &c).expect("handshake");
            assert_eq!(first.get("/warm").expect("request").0, 200);
            c
        })
        .collect();
    let client = Arc::new(pki.client_config());
    let load = Load::start(gw.addr, &LOAD, Some((client, "a.test")), PACE);
    wait_more(&load, 100);
    let _next = upgrade(&path);
    let old_exit = gw.wait_exit(SHUTDOWN + Duration::from_secs(5));
    assert!(
        old_exit.is_some_and(|s| s.success()),
        "{old_exit:?}\n{}",
        gw.logs()
    );
    load.mark();
    wait_more(&load, 150);
    let tally = load.stop();
    assert_clean(&tally);
    assert!(tally.ok_after_mark > 0);
    // Only the new process listens now, and it opens the old process's tickets.
    for (v, c) in versions.iter().zip(&before) {
        let mut again = TlsClient::connect(gw.addr, "a.test", c).expect("handshake after");
        assert!(
            again.resumed(),
            "{v:?}: the old process's ticket did not resume"
        );
        assert_eq!(again.get("/after").expect("request").0, 200);
    }
    eprintln!(
        "TLS upgrade load: {} answered, {} of {} handshakes resumed, 0 failed, 0 refused",
        tally.ok, tally.resumed, tally.handshakes
    );
}
