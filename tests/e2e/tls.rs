//! TLS termination end to end against the real binary: SNI selection, default/strict, ECDSA+RSA, chains,
//! resumption across shards, versions, mTLS, SIGHUP reload, refused files. Certificates are made by the tests.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::harness::tls::{
    client_config_with, provider, roots, AnyCert, Pki, RsaOnly, TlsClient, T,
};
use crate::harness::{check_config_file, route, upstream, Gateway, Origin, Reply, Resp, TempFile};
use rcgen::KeyPair;
use rustls::ClientConfig;

fn proto_origin() -> Origin {
    Origin::start("o", |r| {
        Resp::text(200, r.header("x-forwarded-proto").unwrap_or("none")).into()
    })
}

/// A gateway with one TLS listener (`listen_extra` are more keys of that table) in front of `origin`.
fn tls_gateway(origin: &Origin, workers: usize, listen_extra: &str) -> Gateway {
    let cfg = format!(
        "[server]\nworkers = {workers}\n\n[[server.listen]]\naddr = \"127.0.0.1:0\"\ntls = true\n{listen_extra}\n\n{}{}",
        upstream("backend", &[origin.addr], ""),
        route("default", &["/*"], "backend", "")
    );
    Gateway::start(&cfg)
}

// ---------------------------------------------------------------------------
// tests: termination
// ---------------------------------------------------------------------------

#[test]
fn sni_picks_exact_wildcard_explicit_and_default_certificates() {
    let pki = Pki::new("sni");
    let a = pki.leaf("a", &["a.test"]);
    let w = pki.leaf("w", &["*.wild.test"]);
    let c = pki.leaf("c", &["other.test"]);
    let origin = proto_origin();
    let gw = tls_gateway(
        &origin,
        1,
        &format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\", sni = [\"c.test\"] }}]",
            pki.path("a.pem"), pki.path("a.key"), pki.path("w.pem"), pki.path("w.key"), pki.path("c.pem"), pki.path("c.key")
        ),
    );
    let cfg = Arc::new(pki.client_config());
    let mut ca = TlsClient::connect(gw.addr, "a.test", &cfg).expect("a.test handshake");
    assert_eq!(ca.peer_leaf(), a, "exact SAN name");
    assert_eq!(ca.s.conn.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN");
    assert_eq!(
        ca.get("/").expect("request"),
        (200, "https".to_string()),
        "X-Forwarded-Proto"
    );
    assert_eq!(
        ca.get("/again").expect("keep-alive request"),
        (200, "https".to_string())
    );
    let cw = TlsClient::connect(gw.addr, "x.wild.test", &cfg).expect("wildcard handshake");
    assert_eq!(cw.peer_leaf(), w, "wildcard SAN name");
    // Unknown name and no SNI at all (an IP name sends none) both get the first certificate;
    // the client then rejects it for the name, which is the point: the default was served.
    let mut nocheck = (*cfg).clone();
    nocheck
        .dangerous()
        .set_certificate_verifier(Arc::new(AnyCert(provider(), None)));
    let nocheck = Arc::new(nocheck);
    // c.test is served by a certificate whose own SAN is other.test, so only a lax client takes it.
    let cc = TlsClient::connect(gw.addr, "c.test", &nocheck).expect("explicit sni handshake");
    assert_eq!(cc.peer_leaf(), c, "explicit sni list overrides SANs");
    let cu = TlsClient::connect(gw.addr, "unknown.test", &nocheck).expect("unknown sni");
    assert_eq!(cu.peer_leaf(), a, "unknown name gets the default");
    let ci = TlsClient::connect(gw.addr, "127.0.0.1", &nocheck).expect("no sni");
    assert_eq!(ci.peer_leaf(), a, "missing SNI gets the default");
    assert!(
        TlsClient::connect(gw.addr, "deep.x.wild.test", &cfg).is_err(),
        "a wildcard covers one label only"
    );
}

#[test]
fn sni_strict_refuses_unknown_and_missing_names() {
    let pki = Pki::new("strict");
    pki.leaf("a", &["a.test"]);
    let origin = proto_origin();
    let gw = tls_gateway(
        &origin,
        1,
        &format!(
            "sni_strict = true\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            pki.path("a.pem"),
            pki.path("a.key")
        ),
    );
    let cfg = Arc::new(pki.client_config());
    let mut ok = TlsClient::connect(gw.addr, "a.test", &cfg).expect("known name");
    assert_eq!(ok.get("/").expect("request").0, 200);
    let mut nocheck = (*cfg).clone();
    nocheck
        .dangerous()
        .set_certificate_verifier(Arc::new(AnyCert(provider(), None)));
    let nocheck = Arc::new(nocheck);
    assert!(
        TlsClient::connect(gw.addr, "b.test", &nocheck).is_err(),
        "unknown name refused"
    );
    assert!(
        TlsClient::connect(gw.addr, "127.0.0.1", &nocheck).is_err(),
        "missing SNI refused"
    );
}

#[test]
fn ecdsa_and_rsa_certificates_for_one_name_follow_client_support() {
    let pki = Pki::new("algs");
    let ec = pki.leaf("ec", &["both.test"]);
    // ring cannot generate RSA keys; the openssl CLI does.
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("run openssl genpkey");
    assert!(out.status.success(), "openssl genpkey failed");
    let rsa_key = KeyPair::from_pem(&String::from_utf8_lossy(&out.stdout)).expect("rsa key");
    let rsa = pki.leaf_with("rsa", &["both.test"], rsa_key, false);
    let origin = proto_origin();
    let gw =
        tls_gateway(
            &origin,
            1,
            &format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}]",
            pki.path("ec.pem"), pki.path("ec.key"), pki.path("rsa.pem"), pki.path("rsa.key")
        ),
        );
    let cfg = Arc::new(pki.client_config());
    let mut c = TlsClient::connect(gw.addr, "both.test", &cfg).expect("ecdsa-capable client");
    assert_eq!(c.peer_leaf(), ec);
    assert_eq!(c.get("/").expect("request").0, 200);
    // A client that only verifies RSA signatures gets the RSA certificate, on 1.2 and 1.3.
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut rsa_only = client_config_with(&pki.root_pem, Some(&[v]), None);
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(&pki.root_pem)),
            provider(),
        )
        .build()
        .expect("verifier");
        rsa_only
            .dangerous()
            .set_certificate_verifier(Arc::new(RsaOnly(inner)));
        let mut r =
            TlsClient::connect(gw.addr, "both.test", &Arc::new(rsa_only)).expect("rsa-only client");
        assert_eq!(r.peer_leaf(), rsa, "{v:?}");
        assert_eq!(r.get("/").expect("request").0, 200);
    }
}

#[test]
fn sessions_resume_on_any_shard_with_tls13_and_tls12_tickets() {
    let pki = Pki::new("resume");
    pki.leaf("a", &["a.test"]);
    let origin = proto_origin();
    let gw = tls_gateway(
        &origin,
        2,
        &format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            pki.path("a.pem"),
            pki.path("a.key")
        ),
    );
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = Arc::new(client_config_with(&pki.root_pem, Some(&[v]), None));
        let mut first = TlsClient::connect(gw.addr, "a.test", &cfg).expect("full handshake");
        assert!(!first.resumed());
        // The request makes the client read the server's TLS 1.3 tickets.
        assert_eq!(first.get("/").expect("request").0, 200);
        // SO_REUSEPORT spreads these over both shards (all eight on one shard: p = 1/128); every
        // one resumes, so the ticket keys are the node's, not a shard's.
        for i in 0..8 {
            let mut c = TlsClient::connect(gw.addr, "a.test", &cfg).expect("resumed handshake");
            assert!(c.resumed(), "{v:?}: connection {i} did not resume");
            assert_eq!(c.get("/").expect("request").0, 200);
        }
    }
}

#[test]
fn min_version_13_refuses_tls12_clients() {
    let pki = Pki::new("v13");
    pki.leaf("a", &["a.test"]);
    let origin = proto_origin();
    let gw = tls_gateway(
        &origin,
        1,
        &format!(
            "min_version = \"1.3\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            pki.path("a.pem"),
            pki.path("a.key")
        ),
    );
    let v12 = Arc::new(client_config_with(
        &pki.root_pem,
        Some(&[&rustls::version::TLS12]),
        None,
    ));
    assert!(TlsClient::connect(gw.addr, "a.test", &v12).is_err());
    let v13 = Arc::new(client_config_with(
        &pki.root_pem,
        Some(&[&rustls::version::TLS13]),
        None,
    ));
    assert!(TlsClient::connect(gw.addr, "a.test", &v13).is_ok());
}

#[test]
fn mtls_accepts_clients_of_the_ca_and_refuses_others() {
    let pki = Pki::new("mtls");
    pki.leaf("a", &["a.test"]);
    pki.leaf("client", &["client-a"]);
    let other = Pki::new("mtls-other");
    other.leaf("stranger", &["client-b"]);
    let origin = proto_origin();
    let gw = tls_gateway(
        &origin,
        1,
        &format!(
            "client_ca = \"{}\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            pki.path("root.pem"),
            pki.path("a.pem"),
            pki.path("a.key")
        ),
    );
    let good = Arc::new(client_config_with(
        &pki.root_pem,
        None,
        Some((&pki.dir.join("client.pem"), &pki.dir.join("client.key"))),
    ));
    let mut c = TlsClient::connect(gw.addr, "a.test", &good).expect("client of the CA");
    assert_eq!(c.get("/").expect("request"), (200, "https".to_string()));
    // TLS 1.3 clients learn of a refused certificate on their first read, so each refusal
    // is checked as "no response".
    let none = Arc::new(pki.client_config());
    let refused = |cfg: &Arc<ClientConfig>| match TlsClient::connect(gw.addr, "a.test", cfg) {
        Err(_) => true,
        Ok(mut c) => c.get("/").is_err(),
    };
    assert!(refused(&none), "no client certificate");
    let stranger = Arc::new(client_config_with(
        &pki.root_pem,
        None,
        Some((
            &other.dir.join("stranger.pem"),
            &other.dir.join("stranger.key"),
        )),
    ));
    assert!(refused(&stranger), "certificate from another CA");
    assert_eq!(
        origin.request_count(),
        1,
        "refused clients never reached the upstream"
    );
}

// ---------------------------------------------------------------------------
// tests: reload and refused files
// ---------------------------------------------------------------------------

#[test]
fn sighup_reloads_certificates_without_dropping_connections_and_keeps_them_on_a_bad_file() {
    let pki = Pki::new("reload");
    let v1 = pki.leaf("a", &["a.test"]);
    let origin = proto_origin();
    let gw = tls_gateway(
        &origin,
        2,
        &format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            pki.path("a.pem"),
            pki.path("a.key")
        ),
    );
    let cfg = Arc::new(pki.client_config());
    let mut old = TlsClient::connect(gw.addr, "a.test", &cfg).expect("handshake");
    assert_eq!(old.peer_leaf(), v1);
    assert_eq!(old.get("/").expect("request").0, 200);

    let v2 = pki.leaf("a", &["a.test"]);
    gw.send_signal("HUP");
    gw.stderr
        .wait_for(|l| l.contains("TLS certificates reloaded"), T)
        .expect("reload logged");
    // Shards pick the new config up on their next control tick (50 ms).
    thread::sleep(Duration::from_millis(300));
    for _ in 0..4 {
        let fresh = TlsClient::connect(gw.addr, "a.test", &Arc::new(pki.client_config()))
            .expect("new handshake");
        assert_eq!(
            fresh.peer_leaf(),
            v2,
            "new connections see the new certificate"
        );
    }
    assert_eq!(
        old.get("/after")
            .expect("old connection survives the reload")
            .0,
        200
    );

    pki.write(
        "a.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    gw.send_signal("HUP");
    let line = gw
        .stderr
        .wait_for(|l| l.contains("reload failed"), T)
        .expect("failed reload logged");
    assert!(
        line.contains(&pki.path("a.pem")),
        "error names the file: {line}"
    );
    thread::sleep(Duration::from_millis(300));
    // A new client (no cached session, which would resume and report the old chain).
    let fresh = TlsClient::connect(gw.addr, "a.test", &Arc::new(pki.client_config()))
        .expect("still serving");
    assert_eq!(fresh.peer_leaf(), v2, "the last good certificate stays");
    assert_eq!(old.get("/still").expect("old connection").0, 200);
}

#[test]
fn bad_expired_and_mismatched_files_are_refused_naming_the_file() {
    let pki = Pki::new("bad");
    pki.leaf("good", &["a.test"]);
    pki.leaf_with(
        "expired",
        &["a.test"],
        KeyPair::generate().expect("key"),
        true,
    );
    pki.write("garbage.pem", "hello\n");
    let other_key = KeyPair::generate().expect("key");
    pki.write("other.key", &other_key.serialize_pem());
    let cases = [
        ("expired.pem", "expired.key", "expired.pem", "expired"),
        ("good.pem", "other.key", "other.key", "does not match"),
        ("garbage.pem", "good.key", "garbage.pem", "CERTIFICATE"),
        ("missing.pem", "good.key", "missing.pem", "cannot read"),
        ("good.pem", "garbage.pem", "garbage.pem", "private key"),
    ];
    for (cert, key, named, why) in cases {
        let cfg = TempFile::new(&format!(
            "[server]\nworkers = 1\n[[server.listen]]\naddr = \"127.0.0.1:0\"\ntls = true\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            pki.path(cert),
            pki.path(key)
        ));
        let out = check_config_file(&cfg.path);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(!out.status.success(), "{cert}/{key} accepted: {all}");
        assert!(
            all.contains(&pki.path(named)) && all.contains(why),
            "{cert}/{key}: {all}"
        );
        assert!(all.contains("server.listen[0]"), "key path: {all}");
    }
    // Relative paths resolve against the config file's directory.
    let rel = pki.write(
        "rel.toml",
        "[server]\nworkers = 1\n[[server.listen]]\naddr = \"127.0.0.1:0\"\ntls = true\ncertificates = [{ cert = \"good.pem\", key = \"good.key\" }]\n",
    );
    let out = check_config_file(&rel);
    assert!(
        out.status.success(),
        "relative paths: {}{}",
        out.stdout,
        out.stderr
    );
    // `run` with a bad file exits non-zero before listening.
    let cfg = TempFile::new(&format!(
        "[server]\nworkers = 1\n[[server.listen]]\naddr = \"127.0.0.1:0\"\ntls = true\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        pki.path("expired.pem"),
        pki.path("expired.key")
    ));
    let out = crate::harness::run_cli(&["run", "-c", cfg.path_str()], T);
    assert!(
        !out.status.success() && out.stderr.contains("expired"),
        "{}",
        out.stderr
    );
}

/// One worker, one certificate for `a.test` in front of `origin`, and a client connected to it
/// (everything returned must stay alive for the test's length).
fn one_cert_client(tag: &str, origin: Origin) -> (Pki, Origin, Gateway, TlsClient) {
    let pki = Pki::new(tag);
    pki.leaf("a", &["a.test"]);
    let gw = tls_gateway(
        &origin,
        1,
        &format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            pki.path("a.pem"),
            pki.path("a.key")
        ),
    );
    let c =
        TlsClient::connect(gw.addr, "a.test", &Arc::new(pki.client_config())).expect("handshake");
    (pki, origin, gw, c)
}

#[test]
fn a_closing_connection_ends_with_close_notify() {
    use std::io::{Read, Write};
    let (_pki, _origin, _gw, mut c) = one_cert_client("notify", proto_origin());
    c.s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .expect("write");
    // rustls reports a close without close_notify as UnexpectedEof; OpenSSL clients would
    // also refuse to resume such a session.
    let mut all = Vec::new();
    c.s.read_to_end(&mut all)
        .expect("clean TLS close (close_notify) after the response");
    assert!(
        all.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&all)
    );
}

#[test]
fn large_bodies_cross_tls_both_ways_on_one_keep_alive_connection() {
    // Bodies of many TLS records and beyond one write's batch, in both directions, then a
    // small exchange on the same connection: the stream's batching keeps record order intact.
    let (_pki, _origin, _gw, mut c) = one_cert_client("bulk", Origin::echo_body("bulk"));
    for size in [64 * 1024, 300 * 1024 + 7, 1] {
        let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 23) as u8).collect();
        let (status, got) = c.post("/echo", &body).expect("echo over TLS");
        assert_eq!(status, 200);
        assert_eq!(got.len(), size, "body of {size} bytes");
        assert!(
            got.as_bytes() == body.as_slice(),
            "body of {size} bytes differs"
        );
    }
    assert_eq!(c.get("/small").expect("small GET").0, 200);
}

#[test]
fn a_websocket_tunnel_over_tls_echoes_both_ways() {
    // The tunnel splits the client's TLS stream into a read half and a write half that run at
    // once; each chunk is echoed back through the write half while the read half waits.
    use std::io::{Read, Write};
    let origin = Origin::start("ws", |_| Reply::Upgrade {
        close_after_first_echo: false,
    });
    let (_pki, _origin, _gw, mut c) = one_cert_client("ws", origin);
    c.s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("write upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            c.s.read(&mut byte).expect("read 101 head"),
            1,
            "closed in head"
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for round in 0..25u8 {
        let chunk: Vec<u8> = (0..8192u32).map(|i| (i as u8) ^ round).collect();
        c.s.write_all(&chunk).expect("write tunnel chunk");
        let mut back = vec![0u8; chunk.len()];
        c.s.read_exact(&mut back).expect("echoed chunk");
        assert!(back == chunk, "round {round}: echo differs");
    }
}

/// `n` bytes of printable letters (so the harness' text body compares byte for byte).
fn letters(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

#[test]
fn pipelined_requests_over_tls_get_whole_responses_in_order() {
    // Four requests in one TLS write (one record): the stream serves them one after another
    // from the plaintext it already decrypted. The bodies span the relay's 64 KiB upstream reads
    // and TLS's 16 KiB records (150,003 bytes: at least three reads and ten records), fill one read
    // exactly (65,536), or ride in the same write and record as their head (1,000 and 1).
    let origin = Origin::start("pipe", |r| {
        Resp::text(200, letters(r.last_number().unwrap_or(0))).into()
    });
    let (_pki, _origin, _gw, mut c) = one_cert_client("pipe", origin);
    let sizes = [1000, 150_003, 65_536, 1];
    let mut reqs = Vec::new();
    for n in sizes {
        reqs.extend_from_slice(format!("GET /b/{n} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes());
    }
    std::io::Write::write_all(&mut c.s, &reqs).expect("write the pipelined requests");
    for n in sizes {
        let (status, body) = c.read_response().expect("pipelined response");
        assert_eq!(status, 200, "request for {n} bytes");
        assert_eq!(body.len(), n, "body length for {n} bytes");
        assert!(
            body.as_bytes() == letters(n).as_slice(),
            "body of {n} bytes differs"
        );
    }
    // The connection is still good for a plain keep-alive exchange afterwards.
    assert_eq!(c.get("/b/10").expect("GET after the pipeline").1.len(), 10);
}

#[test]
fn an_idle_tls_connection_reads_requests_after_its_buffers_were_released() {
    // Past the gateway's hold (500 ms) an idle TLS connection cancels its read (keeping any
    // bytes that raced in), frees its buffers and waits for the socket's readiness; it takes new
    // buffers when bytes arrive. A whole request, one split across records, one record that
    // arrives in pieces, pipelined requests and a head larger than the idle read must all be
    // read whole after such a wait. (The pauses put the connection in that state; nothing here
    // depends on how fast the gateway answers.)
    use std::io::Write;
    let past_hold = || thread::sleep(Duration::from_millis(700));
    let (pki, _origin, gw, mut c) = one_cert_client("idle", Origin::echo_target("idle"));
    assert_eq!(c.get("/first").expect("first"), (200, "/first".into()));
    past_hold();
    assert_eq!(c.get("/woke").expect("after idle"), (200, "/woke".into()));

    // A head split across two TLS records, the second after a pause.
    past_hold();
    c.s.write_all(b"GET /split HTTP/1.1\r\nHo").expect("write");
    thread::sleep(Duration::from_millis(100));
    c.s.write_all(b"st: a.test\r\n\r\n").expect("write");
    assert_eq!(c.read_response().expect("split"), (200, "/split".into()));

    // One record arriving in pieces: its first bytes wake the idle connection.
    past_hold();
    c.s.conn
        .writer()
        .write_all(b"GET /torn HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .expect("encrypt");
    let mut wire = Vec::new();
    while c.s.conn.wants_write() {
        c.s.conn.write_tls(&mut wire).expect("records");
    }
    c.s.sock.write_all(&wire[..3]).expect("write");
    thread::sleep(Duration::from_millis(100));
    c.s.sock.write_all(&wire[3..]).expect("write");
    assert_eq!(c.read_response().expect("torn"), (200, "/torn".into()));

    // Two pipelined requests in one record after an idle wait.
    past_hold();
    c.s.write_all(
        b"GET /p1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /p2 HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .expect("write");
    for p in ["/p1", "/p2"] {
        assert_eq!(c.read_response().expect("pipelined"), (200, p.into()));
    }

    // A head larger than the idle read (2 KiB).
    past_hold();
    let big = "x".repeat(6000);
    c.s.write_all(format!("GET /big HTTP/1.1\r\nHost: a.test\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .expect("write");
    assert_eq!(c.read_response().expect("big head"), (200, "/big".into()));

    // Idle TLS connections closed by their clients while idle are freed.
    let cfg = Arc::new(pki.client_config());
    let mut idle: Vec<TlsClient> = (0..20)
        .map(|_| TlsClient::connect(gw.addr, "a.test", &cfg).expect("handshake"))
        .collect();
    for (i, c) in idle.iter_mut().enumerate() {
        let path = format!("/idle/{i}");
        assert_eq!(c.get(&path).expect("idle client"), (200, path));
    }
    past_hold();
    let held = crate::harness::fd_count(gw.pid);
    drop(idle);
    let n = crate::harness::wait_fds_at_most(gw.pid, held - 20, Duration::from_secs(5));
    assert!(
        n <= held - 20,
        "{n} fds after 20 idle TLS clients closed, {held} while they idled"
    );
    assert_eq!(c.get("/last").expect("last"), (200, "/last".into()));
}

#[test]
fn an_idle_tls_connection_ends_its_keep_alive_wait_with_close_notify() {
    // The keep-alive wait ends while the connection idles holding no buffer; it still closes
    // the TLS session cleanly, so the client can resume it.
    use std::io::Read;
    let pki = Pki::new("ka-notify");
    pki.leaf("a", &["a.test"]);
    let origin = Origin::echo_target("ka");
    let gw = Gateway::start(&format!(
        "[server]\nworkers = 1\nkeepalive_timeout = \"1s\"\n\n[[server.listen]]\naddr = \"127.0.0.1:0\"\ntls = true\n\
         certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\n{}{}",
        pki.path("a.pem"),
        pki.path("a.key"),
        upstream("backend", &[origin.addr], ""),
        route("default", &["/*"], "backend", "")
    ));
    let mut c =
        TlsClient::connect(gw.addr, "a.test", &Arc::new(pki.client_config())).expect("handshake");
    assert_eq!(c.get("/one").expect("get"), (200, "/one".into()));
    // Blocks until the gateway closes (the client's read timeout is far past 1 s).
    let mut rest = Vec::new();
    c.s.read_to_end(&mut rest)
        .expect("clean TLS close (close_notify) at the keep-alive timeout");
    assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
}
