//! OCSP stapling against a real responder (`openssl ocsp` in server mode), checked by
//! `openssl s_client -status`: fetched by the gateway's OCSP thread (kept through a responder
//! outage, refreshed when it is back), or from a configured file (SIGHUP re-reads it; a missing
//! or bad file leaves the listener serving without a staple).

use crate::harness::tls::Pki;
use crate::harness::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Responder(Child);

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl() -> Command {
    assert!(
        std::path::Path::new("/usr/bin/openssl").exists(),
        "openssl not found: install the Debian package `openssl` (.ci/run does)"
    );
    Command::new("/usr/bin/openssl")
}

/// The leaf's serial as OpenSSL's index file spells it (upper-case hex, no leading zero bytes).
fn serial(pem_path: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_file_iter(pem_path)
        .expect("pem")
        .next()
        .expect("a certificate")
        .expect("pem cert");
    let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
    let raw = x.tbs_certificate.raw_serial();
    let trimmed: Vec<u8> = raw.iter().copied().skip_while(|&b| b == 0).collect();
    trimmed.iter().map(|b| format!("{b:02X}")).collect()
}

/// Starts `openssl ocsp` answering for the intermediate from `index`, on a free loopback port.
fn responder(pki: &Pki) -> (Responder, u16) {
    let port = closed_port().port();
    (responder_on(pki, port), port)
}

/// `openssl ocsp` on `port`.
fn responder_on(pki: &Pki, port: u16) -> Responder {
    let child = openssl()
        .args(["ocsp", "-index"])
        .arg(pki.path("index.txt"))
        .args(["-port", &port.to_string(), "-rsigner"])
        .arg(pki.path("inter.pem"))
        .arg("-rkey")
        .arg(pki.path("inter.key"))
        .arg("-CA")
        .arg(pki.path("inter.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl ocsp");
    // Not probed with a bare connect: openssl 3.0's responder spins on a connection that
    // sends nothing. `fetch` retries until it answers.
    Responder(child)
}

/// Writes the responder's index: the leaf `a.pem` valid ("V") or revoked ("R").
fn index(pki: &Pki, status: &str) {
    let revoked = if status == "R" { "240101000000Z" } else { "" };
    std::fs::write(
        pki.path("index.txt"),
        format!(
            "{status}\t491231235959Z\t{revoked}\t{}\tunknown\t/CN=a.test\n",
            serial(&pki.path("a.pem"))
        ),
    )
    .expect("index");
}

/// Two shards, one TLS listener with the leaf in `cert` (`extra`: more keys of its certificate
/// table), one catch-all route to `o`.
fn config(pki: &Pki, o: &Origin, cert: &str, extra: &str) -> String {
    format!(
        "[server]\nworkers = 2\n\n[[server.listen]]\naddr = \"127.0.0.1:0\"\ntls = true\n\
         certificates = [{{ cert = \"{cert}\", key = \"{}\"{extra} }}]\n\n{}{}",
        pki.path("a.key"),
        upstream("backend", &[o.addr], ""),
        route("default", &["/*"], "backend", "")
    )
}

/// One request over TLS: the handshake and the proxying work.
fn served(gw: &Gateway, pki: &Pki) -> u16 {
    crate::harness::tls::TlsClient::connect(
        gw.addr,
        "a.test",
        &std::sync::Arc::new(pki.client_config()),
    )
    .expect("handshake")
    .get("/")
    .expect("request")
    .0
}

/// Asks the responder about the leaf (retrying while it starts); writes the DER answer to `out`.
fn fetch(pki: &Pki, port: u16, out: &str) {
    let mut last = String::new();
    for _ in 0..50 {
        let o = openssl()
            .args(["ocsp", "-issuer"])
            .arg(pki.path("inter.pem"))
            .arg("-cert")
            .arg(pki.path("a.pem"))
            .args([
                "-url",
                &format!("http://127.0.0.1:{port}"),
                "-timeout",
                "5",
                "-CAfile",
            ])
            .arg(pki.path("root.pem"))
            .arg("-respout")
            .arg(out)
            .stdin(Stdio::null())
            .output()
            .expect("openssl ocsp client");
        if o.status.success() {
            return;
        }
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no answer from openssl ocsp: {last}");
}

/// `openssl s_client -status` against the TLS listener: what it says about the staple.
fn staple_seen(addr: std::net::SocketAddr) -> String {
    let o = openssl()
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "a.test",
            "-status",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("s_client");
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn a_stapled_ocsp_answer_is_served_refreshed_on_sighup_and_optional() {
    let pki = Pki::new("ocsp");
    pki.leaf("a", &["a.test"]);
    index(&pki, "V");
    let (resp, port) = responder(&pki);
    let staple = pki.path("a.ocsp.der");
    fetch(&pki, port, &staple);

    let o = Origin::start("o", |_| Resp::text(200, "ok").into());
    let cfg = config(
        &pki,
        &o,
        &pki.path("a.pem"),
        &format!(", ocsp = \"{staple}\""),
    );
    let gw = Gateway::start(&cfg);
    let seen = staple_seen(gw.addr);
    assert!(seen.contains("OCSP Response Status: successful"), "{seen}");
    assert!(seen.contains("Cert Status: good"), "{seen}");

    // The responder now says revoked; a fresh answer in the file goes out after SIGHUP.
    index(&pki, "R");
    drop(resp);
    let (_resp, port) = responder(&pki);
    fetch(&pki, port, &staple);
    gw.send_signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || staple_seen(gw.addr)
            .contains("Cert Status: revoked")),
        "the refreshed answer was not stapled"
    );

    // No file (responder-side outage before the first fetch) or a bad one: served without one.
    for bad in ["", "garbage"] {
        let path = pki.path(&format!("missing-{}.der", bad.len()));
        if !bad.is_empty() {
            std::fs::write(&path, bad).expect("write");
        }
        let gw = Gateway::start(&cfg.replace(&staple, &path));
        let seen = staple_seen(gw.addr);
        assert!(seen.contains("OCSP response: no response sent"), "{seen}");
        assert!(
            seen.contains("Verify return code") || seen.contains("Protocol"),
            "handshake completed: {seen}"
        );
        assert!(gw.logs().contains("without"), "{}", gw.logs());
        assert_eq!(
            crate::harness::tls::TlsClient::connect(
                gw.addr,
                "a.test",
                &std::sync::Arc::new(pki.client_config())
            )
            .expect("handshake")
            .get("/")
            .expect("request")
            .0,
            200
        );
    }
}

#[test]
fn the_staple_is_fetched_kept_through_a_responder_outage_and_refreshed() {
    let pki = Pki::new("ocsp-fetch");
    pki.leaf("a", &["a.test"]);
    index(&pki, "V");
    // The responder is down when the gateway starts.
    let port = closed_port().port();
    let o = Origin::start("o", |_| Resp::text(200, "ok").into());
    let cfg = config(
        &pki,
        &o,
        &pki.path("a.pem"),
        &format!(", ocsp_responder = \"http://127.0.0.1:{port}/\", ocsp_refresh = \"1s\""),
    );
    let gw = Gateway::start(&cfg);
    let seen = staple_seen(gw.addr);
    assert!(seen.contains("OCSP response: no response sent"), "{seen}");
    assert_eq!(served(&gw, &pki), 200);
    assert!(
        wait_until(Duration::from_secs(10), || gw.logs().contains("failed")
            && gw.logs().contains("serving without a staple")),
        "{}",
        gw.logs()
    );

    // The responder comes up: the next fetch's answer is stapled, on every shard.
    let resp = responder_on(&pki, port);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let s = staple_seen(gw.addr);
            s.contains("OCSP Response Status: successful") && s.contains("Cert Status: good")
        }),
        "no staple after the responder came up: {}",
        gw.logs()
    );
    for _ in 0..4 {
        assert!(staple_seen(gw.addr).contains("Cert Status: good"));
    }

    // Down again: handshakes go on, with the answer held (no nextUpdate from this responder).
    drop(resp);
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .logs()
            .contains("keeping the current staple")),
        "{}",
        gw.logs()
    );
    assert_eq!(served(&gw, &pki), 200);
    assert!(staple_seen(gw.addr).contains("Cert Status: good"));

    // Back, now saying revoked: the staple is refreshed.
    index(&pki, "R");
    let _resp = responder_on(&pki, port);
    assert!(
        wait_until(Duration::from_secs(20), || staple_seen(gw.addr)
            .contains("Cert Status: revoked")),
        "the staple was not refreshed: {}",
        gw.logs()
    );
    assert_eq!(
        gw.logs().matches("serving without a staple").count(),
        1,
        "a log line per state change, not per retry: {}",
        gw.logs()
    );

    // Config errors name the key; a chain without its issuer cannot be queried.
    let with = |extra: &str, cert: &str| config(&pki, &o, cert, extra);
    let a = pki.path("a.pem");
    assert_config_rejected(
        &with(", ocsp_responder = \"https://ocsp.test\"", &a),
        &["server.listen[0].certificates[0].ocsp_responder", "http://"],
    );
    assert_config_rejected(
        &with(", ocsp_refresh = \"1h\"", &a),
        &["server.listen[0].certificates[0].ocsp_refresh"],
    );
    // No AIA in the test certificates and no ocsp_responder: nothing to ask.
    assert_config_rejected(
        &with(", ocsp_fetch = true", &a),
        &["no OCSP responder", "ocsp_responder"],
    );
    let leaf_only = pki.path("leaf-only.pem");
    let pem = std::fs::read_to_string(&a).expect("pem");
    let first = pem
        .split_inclusive("-----END CERTIFICATE-----")
        .next()
        .expect("leaf");
    std::fs::write(&leaf_only, first).expect("write");
    assert_config_rejected(
        &with(", ocsp_responder = \"http://127.0.0.1:1/\"", &leaf_only),
        &["issuer certificate"],
    );
}
