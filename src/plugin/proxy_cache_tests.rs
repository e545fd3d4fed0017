//! Unit tests for proxy-cache's lookup phase (kept apart so proxy_cache.rs stays one thing):
//! what `before_upstream` decides and records in `Ctx::cache`. No sockets; serving is e2e.

use bytes::Bytes;

use crate::cache::entry::Entry;
use crate::cache::{self, Mode, Target};
use crate::plugin::testkit::{self, Exchange};

const GET: &[u8] = b"GET /a?b=1 HTTP/1.1\r\nHost: Shop.Example\r\n\r\n";

/// Stores a fresh (or, with `lifetime_ms` 0, stale) 200 under the key this request looked up.
fn store(x: &Exchange<'_>, lifetime_ms: u64, etag: bool) {
    let c = &x.cx.private.cache;
    let mut e = Entry {
        status: 200,
        body: Bytes::from_static(b"cached"),
        stored_ms: cache::now_ms(),
        lifetime_ms,
        ..Entry::default()
    };
    if etag {
        e.headers
            .push((Bytes::from_static(b"ETag"), Bytes::from_static(b"\"v1\"")));
    }
    let inst = c.inst.as_ref().expect("the lookup kept the instance");
    assert!(inst.store.borrow_mut().insert(&c.key, c.hash, e));
}

#[test]
fn a_get_misses_then_hits_what_was_stored() {
    let gw = testkit::gateway("[proxy-cache]\n");
    let x = gw.send(GET);
    assert_eq!(x.replied(), None);
    let c = &x.cx.private.cache;
    assert!(matches!(c.mode, Mode::Miss), "{:?}", c.mode);
    assert!(c.active() && c.store);
    assert_eq!(
        c.key, b"shop.example\x1f/a?b=1",
        "$host (lowercased) and $request_uri"
    );
    assert_eq!(c.hash, xxhash_rust::xxh3::xxh3_64(&c.key));
    store(&x, 60_000, false);

    let x = gw.send(GET);
    match &x.cx.private.cache.mode {
        Mode::Hit(e) => assert_eq!(&e.body[..], b"cached"),
        m => panic!("expected a hit, got {m:?}"),
    }
    // HEAD is answered from the GET's entry but never stores.
    let x = gw.send(b"HEAD /a?b=1 HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    assert!(matches!(x.cx.private.cache.mode, Mode::Hit(_)));
    assert!(!x.cx.private.cache.store);
    // Another query is another key.
    let x = gw.send(b"GET /a?b=2 HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    assert!(matches!(x.cx.private.cache.mode, Mode::Miss));
}

#[test]
fn stale_entries_revalidate_or_refetch() {
    let gw = testkit::gateway("[proxy-cache]\n");
    let x = gw.send(GET);
    store(&x, 0, true);
    assert!(matches!(
        gw.send(GET).cx.private.cache.mode,
        Mode::Revalidate(_)
    ));
    let x = gw.send(b"GET /other HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    store(&x, 0, false);
    let x = gw.send(b"GET /other HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    assert!(
        matches!(x.cx.private.cache.mode, Mode::Expired(_)),
        "{:?}",
        x.cx.private.cache.mode
    );
}

#[test]
fn unsafe_methods_invalidate_others_skip_the_cache() {
    let gw = testkit::gateway("[proxy-cache]\n");
    let x = gw.send(b"POST /a?b=1 HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 0\r\n\r\n");
    assert!(matches!(x.cx.private.cache.mode, Mode::Invalidate));
    assert!(x.cx.private.cache.active());
    assert_eq!(x.cx.private.cache.key, b"shop.example\x1f/a?b=1");
    let x = gw.send(b"OPTIONS /a HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    assert!(matches!(x.cx.private.cache.mode, Mode::Off));
    assert!(!x.cx.private.cache.active(), "the proxy forwards as usual");
}

#[test]
fn bypass_no_cache_and_client_directives() {
    let gw = testkit::gateway(
        "[proxy-cache]\nbypass = [\"arg:fresh\"]\nno_cache = [\"header:X-No-Store\"]\n\
         client_no_cache = \"honor\"\ncache_key = [\"$uri\"]\n",
    );
    let x = gw.send(b"GET /p?fresh=1 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(matches!(x.cx.private.cache.mode, Mode::Bypass));
    assert!(
        x.cx.private.cache.store,
        "a bypassed response may still be stored"
    );
    let x = gw.send(b"GET /p?fresh=0 HTTP/1.1\r\nHost: a\r\nX-No-Store: yes\r\n\r\n");
    assert!(
        matches!(x.cx.private.cache.mode, Mode::Miss),
        "\"0\" does not bypass"
    );
    assert!(!x.cx.private.cache.store);
    assert_eq!(x.cx.private.cache.key, b"/p");
    store(&x, 60_000, true);
    let x = gw.send(b"GET /p HTTP/1.1\r\nHost: a\r\nCache-Control: no-cache\r\n\r\n");
    assert!(
        matches!(x.cx.private.cache.mode, Mode::Revalidate(_)),
        "honoured no-cache"
    );
    let x = gw.send(b"GET /p HTTP/1.1\r\nHost: a\r\nCache-Control: no-store\r\n\r\n");
    assert!(matches!(x.cx.private.cache.mode, Mode::Hit(_)));
    assert!(!x.cx.private.cache.store);
}

#[test]
fn purge_needs_an_allowed_address_or_the_admin_key() {
    let gw =
        testkit::gateway("[proxy-cache]\npurge_allow = [\"10.0.0.0/8\"]\nadmin_key = \"sekret\"\n");
    let purge = b"PURGE /a?b=1 HTTP/1.1\r\nHost: shop.example\r\n\r\n";
    let x = gw.send(purge);
    assert_eq!(x.replied(), Some(403));
    assert_eq!(
        x.reply_message().as_deref(),
        Some("PURGE is not allowed from this address")
    );
    let x = gw.send_from("10.1.1.1", purge);
    assert_eq!(x.replied(), None);
    match &x.cx.private.cache.mode {
        Mode::Purge(Target::Key(k)) => assert_eq!(k, b"shop.example\x1f/a?b=1"),
        m => panic!("expected a key purge, got {m:?}"),
    }
    let x = gw.send(b"PURGE /a* HTTP/1.1\r\nHost: shop.example\r\nX-API-KEY: sekret\r\n\r\n");
    assert_eq!(x.replied(), None);
    assert!(
        matches!(&x.cx.private.cache.mode, Mode::Purge(Target::Prefix(p)) if p == b"shop.example\x1f/a")
    );
    let x = gw.send_from(
        "10.1.1.1",
        b"PURGE / HTTP/1.1\r\nHost: a\r\nSurrogate-Key: product-7\r\n\r\n",
    );
    assert!(matches!(&x.cx.private.cache.mode, Mode::Purge(Target::Tag(t)) if t == b"product-7"));
}

#[test]
fn config_errors_name_the_key() {
    let e = testkit::config_error("[proxy-cache]\ncache_method = [\"POST\"]\n");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.cache_method");
    let e = testkit::config_error("[proxy-cache]\ncache_http_status = [206]\n");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.cache_http_status");
    let e = testkit::config_error("[proxy-cache]\nmax_bytes = 100\n");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.max_bytes");
    let e = testkit::config_error("[proxy-cache]\nmax_bytes = 4096\nmax_body_bytes = 8192\n");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.max_body_bytes");
    let e = testkit::config_error("[proxy-cache]\ncache_key = [\"$nope\"]\n");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.cache_key");
    let e = testkit::config_error("[proxy-cache]\npurge_allow = [\"x\"]\n");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.purge_allow[0]");
    let e = testkit::config_error("[proxy-cache]\nadmission = \"fifo\"\n");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.admission");
    let e = testkit::config_error("[proxy-cache]\nmode = \"rfc\"\n");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.mode");
    let e = testkit::config_error("[proxy-cache]\nmode = \"rfc9111\"\ncache_http_status = [200]\n");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.cache_http_status");
    let e =
        testkit::config_error("[proxy-cache]\nmode = \"rfc9111\"\nclient_no_cache = \"ignore\"\n");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.client_no_cache");
    let e = testkit::config_error("[proxy-cache]\ntargeted_cache_control = [\"Cache-Control\"]\n");
    assert_eq!(
        e.path,
        "routes[0].plugins.proxy-cache.targeted_cache_control"
    );
}

#[test]
fn l2_settings_are_checked() {
    let l2 = |t: &str| testkit::config_error(&format!("[proxy-cache]\nl2 = {{ {t} }}\n"));
    let e = l2("backend = \"mongodb\", addr = \"h:1\"");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.l2.backend");
    let e = l2("backend = \"redis\", addr = \"no-port\"");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.l2.addr");
    let e = l2("backend = \"redis\", addr = \"h:1\", timeout = \"0s\"");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.l2.timeout");
    let e = l2("backend = \"memcached\", addr = \"h:1\", ttl = \"10ms\"");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.l2.ttl");
    let e = l2("backend = \"memcached\", addr = \"h:1\", max_object_bytes = 0");
    assert_eq!(e.path, "routes[0].plugins.proxy-cache.l2.max_object_bytes");
}
