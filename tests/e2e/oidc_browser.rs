//! openid-connect's browser flow through the real server: a real headless Chromium signs in at a
//! real OpenID provider (npm oidc-provider's login and consent pages), the session cookie reaches
//! the upstream as headers, an expired access token is refreshed, logout ends the session; and
//! tampered, forged or expired cookies and callbacks without a login start a new login.

use std::time::Duration;

use base64::Engine;
use ringway::plugin::openid_connect::session::{write_chunked, Sealer, Session};

use crate::harness::chromium::Chromium;
use crate::harness::oidc::Oidc;
use crate::harness::*;

const SECRET: &str = "browser-flow-test-secret";
const WAIT: Duration = Duration::from_secs(30);

/// A gateway on `port` with one catch-all route behind the browser flow for client `web`.
fn gateway(port: u16, origin: &Origin, idp: &Oidc, extra: &str) -> Gateway {
    let base = format!("http://127.0.0.1:{port}");
    let plugin = format!(
        "[routes.plugins.openid-connect]\n\
         discovery = \"{}\"\n\
         client_id = \"web\"\n\
         client_secret = \"web-secret\"\n\
         bearer_only = false\n\
         redirect_uri = \"{base}/callback\"\n\
         post_logout_redirect_uri = \"{base}/bye\"\n\
         scope = \"openid email\"\n\
         session = {{ secret = \"{SECRET}\" }}\n\
         {extra}",
        idp.discovery()
    );
    // The page after logout is public.
    let cfg = format!(
        "{}{}{}{}",
        server(&[("listen", &format!("[\"127.0.0.1:{port}\"]"))]),
        upstream("backend", &[origin.addr], ""),
        route("app", &["/*"], "backend", &plugin),
        route("bye", &["/bye"], "backend", ""),
    );
    Gateway::start(&cfg)
}

fn b64_json(v: &str) -> serde_json::Value {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v)
        .expect("base64 header");
    serde_json::from_slice(&raw).expect("JSON header")
}

/// Signs in at the provider's dev login and consent pages, from wherever the browser is now.
fn sign_in(b: &mut Chromium, login: &str) {
    assert!(
        b.wait_true("!!document.querySelector('input[name=login]')", WAIT)
            .is_some(),
        "no login form at the provider: {:?}",
        b.eval("location.href")
    );
    b.eval(&format!(
        "document.querySelector('input[name=login]').value = '{login}';\
         document.querySelector('input[name=password]').value = 'any';\
         document.querySelector('form').submit(); true"
    ));
    // The consent page (first sign-in of this account at this client).
    assert!(
        b.wait_true(
            "!!document.querySelector('input[name=prompt][value=consent]')",
            WAIT
        )
        .is_some(),
        "no consent page: {:?} {:?}",
        b.eval("location.href"),
        b.eval("document.body.innerHTML")
    );
    b.eval("document.querySelector('input[name=prompt][value=consent]').form.submit(); true");
}

/// Navigates and waits until a new document (not the one before) has loaded.
fn go(b: &mut Chromium, url: &str) {
    b.eval("window.__before = true");
    b.navigate(url);
    assert!(
        b.wait_true(
            "!window.__before && document.readyState === 'complete'",
            WAIT
        )
        .is_some(),
        "{url} never loaded"
    );
}

fn cookie_named(b: &mut Chromium, name: &str) -> Option<serde_json::Value> {
    let all = b.call("Network.getAllCookies", serde_json::json!({}));
    all["cookies"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

#[test]
fn a_browser_signs_in_at_the_provider_is_refreshed_and_logs_out() {
    let port = closed_port().port();
    let idp = Oidc::start_with_web(&format!("http://127.0.0.1:{port}"));
    let o = Origin::named("app");
    let _gw = gateway(port, &o, &idp, "");
    let mut b = Chromium::launch();
    let app = format!("http://127.0.0.1:{port}/app?x=1");

    b.navigate(&app);
    sign_in(&mut b, "alice");
    assert!(
        b.wait_true(&format!("location.href === '{app}'"), WAIT)
            .is_some(),
        "not back at the app: {:?}",
        b.eval("location.href")
    );
    let req = last_app_request(&o);
    let info = b64_json(req.header("X-Userinfo").expect("X-Userinfo"));
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["email"], "alice@ringway.test", "userinfo was fetched");
    let id = b64_json(req.header("X-ID-Token").expect("X-ID-Token"));
    assert_eq!(id["sub"], "alice");
    assert_eq!(id["aud"], "web");
    assert_eq!(id["iss"].as_str(), Some(idp.issuer().as_str()));
    let first_token = req
        .header("X-Access-Token")
        .expect("X-Access-Token")
        .to_string();
    let c = cookie_named(&mut b, "ringway_session").expect("the session cookie");
    assert_eq!(c["httpOnly"], true);
    assert_eq!(c["sameSite"], "Lax");
    assert_eq!(c["secure"], false, "http: no Secure");
    assert!(
        cookie_named(&mut b, "ringway_session_login").is_none(),
        "the login cookie is cleared once signed in"
    );

    // The access token lives 3 s: a later page load refreshes it (a new token upstream, a new
    // cookie in the browser) without another login.
    let tokens_before = idp.count("token");
    assert!(
        wait_until(WAIT, || {
            go(&mut b, &app);
            last_app_request(&o).header("X-Access-Token") != Some(first_token.as_str())
        }),
        "the access token was never refreshed"
    );
    assert!(idp.count("token") > tokens_before);
    let info = b64_json(
        last_app_request(&o)
            .header("X-Userinfo")
            .expect("X-Userinfo"),
    );
    assert_eq!(info["sub"], "alice", "claims kept across the refresh");

    // RP-initiated logout: the provider's sign-out page, then back to post_logout_redirect_uri.
    go(&mut b, &format!("http://127.0.0.1:{port}/logout"));
    assert!(
        b.wait_true(
            "!!document.querySelector('button[name=logout][value=yes]')",
            WAIT
        )
        .is_some(),
        "no sign-out page at the provider: {:?}",
        b.eval("location.href")
    );
    assert!(
        cookie_named(&mut b, "ringway_session").is_none(),
        "cookie cleared"
    );
    b.eval("document.querySelector('button[name=logout][value=yes]').click(); true");
    let bye = format!("http://127.0.0.1:{port}/bye");
    assert!(
        b.wait_true(&format!("location.href.startsWith('{bye}')"), WAIT)
            .is_some(),
        "not sent back after logout: {:?}",
        b.eval("location.href")
    );
    // Signed out at the provider too: the app asks for a login again.
    b.navigate(&app);
    assert!(
        b.wait_true("!!document.querySelector('input[name=login]')", WAIT)
            .is_some(),
        "the provider session survived the logout: {:?}",
        b.eval("location.href")
    );
}

fn assert_login(r: &Response, idp: &Oidc) {
    assert_eq!(r.status, 302, "{}", r.body_str());
    let loc = r.header("Location").expect("Location");
    assert!(loc.starts_with(&format!("{}/auth?", idp.issuer())), "{loc}");
    for p in [
        "response_type=code",
        "client_id=web",
        "code_challenge_method=S256",
        "&state=",
        "&nonce=",
    ] {
        assert!(loc.contains(p), "{p} missing in {loc}");
    }
    let set = r.header_all("Set-Cookie");
    let login = set
        .iter()
        .find(|c| c.starts_with("ringway_session_login="))
        .expect("the login cookie");
    assert!(
        login.contains("HttpOnly") && login.contains("SameSite=Lax"),
        "{login}"
    );
}

#[test]
fn bad_cookies_and_stray_callbacks_start_a_new_login_and_deny_or_pass_as_configured() {
    let port = closed_port().port();
    let idp = Oidc::start_with_web(&format!("http://127.0.0.1:{port}"));
    let o = Origin::named("app");
    let gw = gateway(port, &o, &idp, "");
    let mut c = gw.client();
    // The first request may wait for discovery; then every bad cookie gets a login.
    let r = get_with(&mut c, "/app", "");
    assert_login(&r, &idp);

    let sealer = Sealer::new(SECRET);
    let session = |exp: u64| Session {
        exp,
        access_token: "t".into(),
        access_exp: 0,
        refresh_token: None,
        id_token: None,
        claims: serde_json::from_str(r#"{"sub":"mallory"}"#).unwrap(),
    };
    let cookie_of = |s: &Session, secret: &Sealer| {
        let sealed = secret.seal("ringway_session", s).unwrap();
        write_chunked("ringway_session", &sealed, 60, false).unwrap()[0]
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };
    let good = cookie_of(&session(4_000_000_000), &sealer);
    let r = get_with(&mut c, "/app", &format!("Cookie: {good}\r\n"));
    assert_eq!(
        r.status, 200,
        "a cookie sealed with the secret is a session"
    );
    assert_eq!(
        b64_json(o.last_request().header("X-Userinfo").unwrap())["sub"],
        "mallory"
    );
    let mut tampered = good.clone().into_bytes();
    let n = tampered.len() - 5;
    tampered[n] = if tampered[n] == b'A' { b'B' } else { b'A' };
    let expired = cookie_of(&session(1_000_000_000), &sealer);
    let foreign = cookie_of(&session(4_000_000_000), &Sealer::new("some other secret!"));
    for bad in [
        String::from_utf8(tampered).unwrap(),
        expired,
        foreign,
        "ringway_session=1.".into(),
        "ringway_session=9.AAAA".into(),
        "ringway_session=1.%%%".into(),
        format!("ringway_session=1.{}", "A".repeat(5000)),
    ] {
        let r = get_with(&mut c, "/app", &format!("Cookie: {bad}\r\n"));
        assert_login(&r, &idp);
    }
    // A callback without this browser's login (or with another state) starts over.
    let r = get_with(&mut c, "/callback?code=x&state=y", "");
    assert_login(&r, &idp);
    let r = get_with(
        &mut c,
        "/callback?code=x&state=y",
        "Cookie: ringway_session_login=AAAA\r\n",
    );
    assert_login(&r, &idp);
    // A forged code with this browser's real state: the provider refuses it, no session.
    let r = get_with(&mut c, "/deep/link?q=1", "");
    let login_cookie = r
        .header_all("Set-Cookie")
        .iter()
        .find(|c| c.starts_with("ringway_session_login="))
        .map(|c| c.split(';').next().unwrap().to_string())
        .unwrap();
    let loc = r.header("Location").unwrap().to_string();
    let state = loc
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("state="))
        .unwrap()
        .to_string();
    let r = get_with(
        &mut c,
        &format!("/callback?code=forged&state={state}"),
        &format!("Cookie: {login_cookie}\r\n"),
    );
    assert_eq!(r.status, 401, "{}", r.body_str());
    assert!(!r
        .header_all("Set-Cookie")
        .iter()
        .any(|c| c.starts_with("ringway_session=")));
    drop(c);
    drop(gw);
    port_released(port);

    for (action, want) in [("deny", 401), ("pass", 200)] {
        let gw = gateway(port, &o, &idp, &format!("unauth_action = \"{action}\"\n"));
        let r = get_with(
            &mut gw.client(),
            "/app",
            "Cookie: ringway_session=1.AAAA\r\n",
        );
        assert_eq!(r.status, want, "{action}: {}", r.body_str());
        drop(gw);
        port_released(port);
    }
}

/// The origin's last request for the app page. Chromium also asks the signed-in origin for
/// `/favicon.ico` on its own, at a moment of its choosing, so the very last request may be that.
fn last_app_request(o: &Origin) -> Req {
    o.requests()
        .into_iter()
        .rev()
        .find(|r| r.path() == "/app")
        .expect("the origin never saw /app")
}

/// Waits until nothing listens on `port` any more. A killed gateway's listening socket can
/// outlive the process for a moment (its io_uring is torn down after the process is reaped);
/// the next gateway on the same port (the provider knows this redirect_uri) shares the
/// SO_REUSEPORT group with it until then, and a connection the kernel hands to the old socket
/// is reset.
fn port_released(port: u16) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
        }),
        "port {port} still accepts connections after its gateway was stopped"
    );
}
