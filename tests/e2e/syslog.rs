//! The syslog logger plugin and the access log's syslog destination against a real rsyslogd:
//! every entry of a burst arrives intact over UDP, TCP and TLS; a restarting daemon loses at
//! most one batch; drops are counted.

use crate::harness::rsyslog::{Listen, Rsyslog};
use crate::harness::tls::Pki;
use crate::harness::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const BATCH: usize = 50;

fn echo() -> Origin {
    Origin::start("o", |_| Resp::text(200, "ok").into())
}

/// A gateway whose catch-all route logs through the syslog plugin with `plugin` keys.
fn gateway(o: &Origin, plugin: &str) -> Gateway {
    let cfg = format!(
        "{}[status]\nlisten = \"127.0.0.1:0\"\n\n{}{}",
        server(&[("workers", "2")]),
        upstream("backend", &[o.addr], ""),
        route(
            "app",
            &["/*"],
            "backend",
            &format!(
                "[routes.plugins.syslog]\nbatch_max_size = {BATCH}\ninactive_timeout = \"100ms\"\n\
                 facility = \"local0\"\nseverity = \"notice\"\n{plugin}"
            )
        )
    );
    Gateway::start(&cfg)
}

/// `n` requests `/{tag}/{i}` over one keep-alive connection.
fn burst(gw: &Gateway, tag: &str, n: usize) {
    let mut c = gw.client();
    for i in 0..n {
        assert_eq!(c.get(&format!("/{tag}/{i}")).status, 200);
    }
}

/// The request URIs in rsyslog's lines (`PRI APP MSGID JSON`), checking each line is whole.
fn uris(lines: &[String], pri: &str) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let (got_pri, app, msgid, msg) = (p.next(), p.next(), p.next(), p.next());
            assert_eq!(
                (got_pri, app, msgid),
                (Some(pri), Some("ringway"), Some("access")),
                "{l}"
            );
            let v: serde_json::Value = serde_json::from_str(msg.unwrap_or_default().trim())
                .unwrap_or_else(|e| panic!("not whole JSON ({e}): {l}"));
            v["request"]["uri"].as_str().expect("uri").to_string()
        })
        .collect()
}

fn assert_all_arrived(r: &Rsyslog, tag: &str, n: usize, pri: &str) {
    let lines = r.wait_lines(n, Duration::from_secs(20));
    let got = uris(&lines, pri);
    let want: BTreeSet<String> = (0..n).map(|i| format!("/{tag}/{i}")).collect();
    let seen: BTreeSet<String> = got.iter().cloned().collect();
    let missing: Vec<_> = want.difference(&seen).take(5).collect();
    assert!(
        missing.is_empty(),
        "{tag}: {} of {n} missing, e.g. {missing:?}",
        n - seen.len()
    );
    assert_eq!(got.len(), n, "{tag}: duplicates");
}

#[test]
fn a_burst_arrives_intact_over_udp_tcp_and_tls() {
    let _cpu = cpu_lock();
    let o = echo();
    // local0.notice = 16 * 8 + 5
    for (listen, n) in [(Listen::Udp, 1500), (Listen::Tcp, 3000)] {
        let r = Rsyslog::start(listen, None);
        let sock = if listen == Listen::Udp { "udp" } else { "tcp" };
        let gw = gateway(
            &o,
            &format!(
                "host = \"127.0.0.1\"\nport = {}\nsock_type = \"{sock}\"\n",
                r.addr.port()
            ),
        );
        burst(&gw, sock, n);
        assert_all_arrived(&r, sock, n, "133");
    }
    let pki = Pki::new("syslog");
    pki.leaf("collector", &["syslog.test"]);
    let files = (
        pki.path("root.pem"),
        pki.path("collector.pem"),
        pki.path("collector.key"),
    );
    let r = Rsyslog::start(Listen::Tls, Some(files));
    let gw = gateway(
        &o,
        &format!(
            "host = \"127.0.0.1\"\nport = {}\ntls = true\ntls_ca = \"{}\"\ntls_server_name = \"syslog.test\"\n",
            r.addr.port(),
            pki.path("root.pem")
        ),
    );
    burst(&gw, "tls", 2000);
    assert_all_arrived(&r, "tls", 2000, "133");
}

#[test]
fn a_restarting_daemon_loses_at_most_one_batch_and_nothing_is_dropped() {
    let _cpu = cpu_lock();
    let o = echo();
    let mut r = Rsyslog::start(Listen::Tcp, None);
    let gw = gateway(
        &o,
        &format!(
            "host = \"127.0.0.1\"\nport = {}\nmax_retry_count = 50\nretry_delay = \"100ms\"\n",
            r.addr.port()
        ),
    );
    let status = ops::listener(&gw.stderr, "status");
    let mut c = gw.client();
    let mut sent = 0usize;
    let mut send_for = |c: &mut Client, d: Duration| {
        let t0 = Instant::now();
        while t0.elapsed() < d {
            assert_eq!(c.get(&format!("/r/{sent}")).status, 200);
            sent += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    send_for(&mut c, Duration::from_millis(800));
    r.stop();
    // Requests go on while the daemon is down, then it comes back on the same port.
    send_for(&mut c, Duration::from_millis(700));
    r.run();
    send_for(&mut c, Duration::from_millis(800));
    let lines = r.wait_lines(sent, Duration::from_secs(20));
    let got = uris(&lines, "133");
    let seen: BTreeSet<&String> = got.iter().collect();
    let lost = sent - seen.len();
    assert!(
        lost <= BATCH,
        "{lost} of {sent} entries lost across one restart (documented: at most one batch, {BATCH})"
    );
    let samples = prometheus::scrape(status);
    let dropped = prometheus::value(
        &samples,
        "ringway_logger_entries_dropped_total",
        &[("plugin", "syslog")],
    );
    assert_eq!(
        dropped, 0.0,
        "entries given up although the buffer had room"
    );
    eprintln!(
        "syslog restart: {sent} sent, {} arrived ({} duplicate lines), {lost} lost",
        seen.len(),
        got.len() - seen.len()
    );
}

#[test]
fn the_access_log_goes_to_syslog() {
    let _cpu = cpu_lock();
    let o = echo();
    let r = Rsyslog::start(Listen::Tcp, None);
    let cfg = format!(
        "{}{}{}[access_log]\npath = \"syslog\"\nformat = \"json\"\nsyslog = {{ address = \"{}\", transport = \"tcp\", facility = \"local3\" }}\n",
        server(&[("workers", "2")]),
        upstream("backend", &[o.addr], ""),
        route("app", &["/*"], "backend", ""),
        r.addr
    );
    let gw = Gateway::start(&cfg);
    burst(&gw, "acc", 1000);
    let lines = r.wait_lines(1000, Duration::from_secs(20));
    let mut seen = BTreeSet::new();
    for l in &lines {
        let at = l
            .find("/acc/")
            .unwrap_or_else(|| panic!("no request path: {l}"));
        let n: String = l[at + 5..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        seen.insert(n);
        let mut p = l.splitn(4, ' ');
        // local3.info = 19 * 8 + 6
        assert_eq!(
            (p.next(), p.next(), p.next()),
            (Some("158"), Some("ringway"), Some("access")),
            "{l}"
        );
        let v: serde_json::Value = serde_json::from_str(p.next().unwrap_or_default().trim())
            .unwrap_or_else(|e| panic!("not whole JSON ({e}): {l}"));
        assert!(v.is_object(), "{l}");
    }
    assert_eq!(lines.len(), 1000, "every request's line, once");
    assert_eq!(seen.len(), 1000, "every request's line, once");
    for (cfg, key) in [
        ("[access_log]\npath = \"syslog\"\n", "access_log.syslog"),
        (
            "[access_log]\npath = \"syslog\"\nsyslog = { address = \"127.0.0.1:514\", transport = \"sctp\" }\n",
            "access_log.syslog.transport",
        ),
        (
            "[access_log]\npath = \"stdout\"\nsyslog = { address = \"127.0.0.1:514\" }\n",
            "access_log.syslog",
        ),
    ] {
        let full = format!("{}{}{}{cfg}", server(&[]), upstream("backend", &[o.addr], ""), route("app", &["/*"], "backend", ""));
        assert_config_rejected(&full, &[key]);
    }
}
