//! What edge operators expect of a TLS listener beyond a clean scan: the server's cipher order
//! (`prefer_server_ciphers`, on by default) and a Strict-Transport-Security header per listener
//! or per route.

use crate::harness::tls::{provider, roots, Pki, TlsClient};
use crate::harness::*;
use std::io::{Read, Write};
use std::sync::Arc;

fn origin() -> Origin {
    Origin::start("o", |_| Resp::text(200, "ok").into())
}

/// A gateway with one TLS listener (`extra`: more keys of its table) and one plain listener.
fn gateway(o: &Origin, pki: &Pki, extra: &str) -> Gateway {
    gateway_routes(o, pki, extra, &route("default", &["/*"], "backend", ""))
}

/// `gateway` with its own `[[routes]]` (to upstream "backend").
fn gateway_routes(o: &Origin, pki: &Pki, extra: &str, routes: &str) -> Gateway {
    let cfg = format!(
        "[server]\nworkers = 1\n\n[[server.listen]]\naddr = \"127.0.0.1:0\"\ntls = true\n\
         certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n{extra}\n\n\
         [[server.listen]]\naddr = \"127.0.0.1:0\"\n\n{}{routes}",
        pki.path("a.pem"),
        pki.path("a.key"),
        upstream("backend", &[o.addr], ""),
    );
    Gateway::start_with_listeners(&cfg, 2)
}

/// A client that prefers ChaCha20 (ring's servers list AES-GCM first), for `version`.
fn chacha_first(
    pki: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut p = (*provider()).clone();
    p.cipher_suites
        .sort_by_key(|s| !format!("{:?}", s.suite()).contains("CHACHA20"));
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots(&pki.root_pem))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn negotiated(gw: &Gateway, cfg: &Arc<rustls::ClientConfig>) -> String {
    let c = TlsClient::connect(gw.addrs[0], "a.test", cfg).expect("handshake");
    format!(
        "{:?}",
        c.s.conn.negotiated_cipher_suite().expect("suite").suite()
    )
}

#[test]
fn the_server_cipher_order_wins_unless_turned_off() {
    let pki = Pki::new("ciphers");
    pki.leaf("a", &["a.test"]);
    let o = origin();
    let on = gateway(&o, &pki, "");
    let off = gateway(&o, &pki, "prefer_server_ciphers = false");
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = chacha_first(&pki, v);
        let server_pick = negotiated(&on, &cfg);
        assert!(server_pick.contains("AES_256_GCM"), "{v:?}: {server_pick}");
        let client_pick = negotiated(&off, &cfg);
        assert!(client_pick.contains("CHACHA20"), "{v:?}: {client_pick}");
    }
}

/// The response head of `GET /` over TLS.
fn tls_head(gw: &Gateway, pki: &Pki) -> String {
    tls_head_of(gw, pki, "/")
}

fn tls_head_of(gw: &Gateway, pki: &Pki, path: &str) -> String {
    let mut c = TlsClient::connect(gw.addrs[0], "a.test", &Arc::new(pki.client_config()))
        .expect("handshake");
    c.s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("send");
    let mut buf = Vec::new();
    let _ = c.s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    text.split("\r\n\r\n").next().unwrap_or("").to_string()
}

#[test]
fn hsts_goes_on_the_tls_listeners_responses_only() {
    let pki = Pki::new("hsts");
    pki.leaf("a", &["a.test"]);
    let o = origin();
    let gw = gateway(
        &o,
        &pki,
        "hsts = { max_age = 31536000, include_subdomains = true, preload = true }",
    );
    let head = tls_head(&gw, &pki);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let want = "strict-transport-security: max-age=31536000; includeSubDomains; preload";
    assert!(head.lines().any(|l| l.eq_ignore_ascii_case(want)), "{head}");
    let plain = one_shot(gw.addrs[1], get_req("/", "a.test"));
    assert_eq!(plain.status, 200);
    assert!(
        !plain.has_header("strict-transport-security"),
        "HSTS over plain HTTP"
    );
    // Without the key: no header.
    let none = gateway(&o, &pki, "");
    assert!(!tls_head(&none, &pki)
        .to_ascii_lowercase()
        .contains("strict-transport-security"));

    let base = |listen: &str| {
        format!(
            "[server]\n[[server.listen]]\naddr = \"127.0.0.1:0\"\n{listen}\n\n{}{}",
            upstream("backend", &[o.addr], ""),
            route("default", &["/*"], "backend", "")
        )
    };
    let cert = format!(
        "tls = true\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        pki.path("a.pem"),
        pki.path("a.key")
    );
    assert_config_rejected(
        &base("hsts = { max_age = 600 }"),
        &["server.listen[0].hsts", "tls = true"],
    );
    assert_config_rejected(
        &base(&format!("{cert}hsts = {{ max_age = 600, preload = true }}")),
        &["server.listen[0].hsts.preload"],
    );
    assert_config_rejected(
        &base(&format!("{cert}hsts = {{ max_age = \"soon\" }}")),
        &["server.listen[0].hsts.max_age"],
    );
}

/// The `strict-transport-security` value of a response head, if any.
fn sts(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("strict-transport-security")
            .then(|| v.trim().to_string())
    })
}

#[test]
fn hsts_on_a_route_takes_the_place_of_the_listeners_over_tls_only() {
    let pki = Pki::new("hsts-route");
    pki.leaf("a", &["a.test"]);
    let o = origin();
    let routes = format!(
        "{}{}",
        route(
            "strict",
            &["/strict/*"],
            "backend",
            "hsts = { max_age = 31536000, include_subdomains = true }"
        ),
        route("default", &["/*"], "backend", "")
    );
    let gw = gateway_routes(&o, &pki, "hsts = { max_age = 600 }", &routes);
    assert_eq!(
        sts(&tls_head_of(&gw, &pki, "/strict/x")).as_deref(),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(
        sts(&tls_head_of(&gw, &pki, "/other")).as_deref(),
        Some("max-age=600")
    );
    let plain = one_shot(gw.addrs[1], get_req("/strict/x", "a.test"));
    assert_eq!(plain.status, 200);
    assert!(
        !plain.has_header("strict-transport-security"),
        "HSTS over plain HTTP"
    );
    // A route's value needs no listener value.
    let gw = gateway_routes(&o, &pki, "", &routes);
    assert_eq!(
        sts(&tls_head_of(&gw, &pki, "/strict/x")).as_deref(),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(sts(&tls_head_of(&gw, &pki, "/other")), None);

    let bad = |hsts: &str| {
        format!(
            "[server]\n[[server.listen]]\naddr = \"127.0.0.1:0\"\n\n{}{}",
            upstream("backend", &[o.addr], ""),
            route("strict", &["/*"], "backend", hsts)
        )
    };
    assert_config_rejected(
        &bad("hsts = { max_age = 600, preload = true }"),
        &["routes[0].hsts.preload"],
    );
    assert_config_rejected(
        &bad("hsts = { max_age = \"soon\" }"),
        &["routes[0].hsts.max_age"],
    );
}
