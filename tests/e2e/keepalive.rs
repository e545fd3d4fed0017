//! Client and upstream keep-alive behaviour.
use crate::harness::*;
use std::time::Duration;

#[test]
fn many_requests_reuse_few_upstream_connections() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut total = 0;
    for c in 0..4 {
        let mut client = gw.client();
        for i in 0..50 {
            let path = format!("/ka/{c}/{i}");
            let r = client.get(&path);
            assert_eq!(r.status, 200, "request {path}: {}", r.raw_head);
            assert_eq!(r.body_str(), path, "wrong body for {path}");
            assert!(
                !r.connection_close(),
                "gateway closed a keep-alive client connection: {}",
                r.raw_head
            );
            total += 1;
        }
    }
    assert_eq!(origin.request_count(), total);
    let conns = origin.conns();
    assert!(
        conns <= 8,
        "{total} sequential requests over 4 client connections opened {conns} upstream connections; expected pooled reuse (<= 8)"
    );
}

#[test]
fn http10_without_keepalive_is_closed() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    c.send("GET /old HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(r.body_str(), "/old");
    c.wait_closed(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("HTTP/1.0 request without keep-alive: gateway must close the connection after the response: {e}"));
}

#[test]
fn client_connection_close_closes_after_response() {
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    c.send("GET /bye HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.raw_head);
    assert_eq!(r.body_str(), "/bye");
    c.wait_closed(Duration::from_secs(3)).unwrap_or_else(|e| {
        panic!("client sent `Connection: close`; gateway must close after the response: {e}")
    });
}

#[test]
fn upstream_connection_close_is_honoured() {
    let origin = Origin::start("o", |r| Resp::text(200, &r.target).close().into());
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    for i in 0..3 {
        let path = format!("/uc/{i}");
        let r = c.get(&path);
        assert_eq!(
            r.status, 200,
            "request {i} after upstream `Connection: close`: {}",
            r.raw_head
        );
        assert_eq!(r.body_str(), path);
        // give the gateway a moment to notice the upstream close before the next request
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(origin.request_count(), 3);
    assert_eq!(
        origin.conns(),
        3,
        "origin closed every connection (`Connection: close`), so each request needs a fresh upstream connection"
    );
}

#[test]
fn upstream_close_without_sleep_still_works() {
    // Same as above but back-to-back: a gateway that reuses the closed pooled
    // connection must not surface an error to the client.
    let origin = Origin::start("o", |r| Resp::text(200, &r.target).close().into());
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    for i in 0..10 {
        let path = format!("/fast/{i}");
        let r = c.get(&path);
        assert_eq!(
            r.status,
            200,
            "request {i}: {}\n{}",
            r.raw_head,
            r.body_str()
        );
        assert_eq!(r.body_str(), path);
    }
}

#[test]
fn keepalive_client_connection_serves_sequential_requests_with_bodies() {
    let origin = Origin::echo_body("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    for i in 0..20 {
        let body = format!("body-{i}-").repeat(i + 1);
        let req = format!(
            "POST /p HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = c.request(req);
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), body);
    }
}

/// An origin that frames every response for keep-alive and then closes the connection once
/// the gateway has pooled it: with a FIN, or (paths under /rst) with a reset.
fn closing_origin() -> RawOrigin {
    RawOrigin::start(|head, s| {
        use std::io::Write;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        if head_path(head).starts_with("/rst") {
            std::thread::sleep(Duration::from_millis(20));
            let _ = socket2::SockRef::from(&*s).set_linger(Some(Duration::ZERO));
        }
        false
    })
}

#[test]
fn pooled_connection_closed_by_the_upstream_while_idle_is_not_an_error() {
    // GET, POST and PUT (idempotent or not, body kept whole) each find the pooled connection
    // closed or reset while it idled; the client never sees that dead connection.
    let o = closing_origin();
    let gw = Gateway::start(&simple_config(o.addr, &[]));
    let mut c = gw.client();
    for (i, path) in ["/fin", "/rst"].into_iter().enumerate() {
        let r = c.get(&format!("{path}/warm"));
        assert_eq!(
            (r.status, r.body_str().as_str()),
            (200, "ok"),
            "{path} warm-up"
        );
        for (j, req) in [
            get_req(&format!("{path}/get"), "example.com"),
            format!(
                "POST {path}/post HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi"
            ),
            format!("PUT {path}/put HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi"),
        ]
        .into_iter()
        .enumerate()
        {
            // The origin has closed every connection it served: the pooled one is dead.
            assert!(
                wait_until(Duration::from_secs(5), || o.open_conns() == 0),
                "origin still holds {} connections",
                o.open_conns()
            );
            let r = c.request(&req);
            assert_eq!(
                (r.status, r.body_str().as_str()),
                (200, "ok"),
                "{path} request {j} after the pooled connection died: {}",
                r.raw_head
            );
            assert!(
                o.accepted() >= 2 + i * 4 + j,
                "each request needed a connection"
            );
        }
    }
}

#[test]
fn idle_client_connection_reads_requests_after_its_buffer_was_released() {
    // A plain connection idle for longer than the gateway's hold (500 ms) gives its read
    // buffer back and waits for readiness; it takes a new one when bytes arrive. Requests that
    // come in pieces, larger than the idle read, or pipelined after such a wait must all be
    // read whole; a client closing a connection in that state frees it. (The pauses put the
    // connection in that state; nothing here depends on how fast the gateway answers.)
    let past_hold = || std::thread::sleep(Duration::from_millis(700));
    let origin = Origin::echo_target("o");
    let gw = Gateway::start(&simple_config(origin.addr, &[]));
    let mut c = gw.client();
    let r = c.get("/first");
    assert_eq!((r.status, r.body_str().as_str()), (200, "/first"));

    // A head split across two writes, the second after a pause.
    past_hold();
    c.send("GET /split HTTP/1.1\r\nHo");
    std::thread::sleep(Duration::from_millis(100));
    c.send("st: example.com\r\n\r\n");
    let r = c.read_response();
    assert_eq!((r.status, r.body_str().as_str()), (200, "/split"));

    // A head larger than the idle read (2 KiB).
    past_hold();
    let big = "x".repeat(6000);
    let r = c.request(format!(
        "GET /big HTTP/1.1\r\nHost: example.com\r\nX-Big: {big}\r\n\r\n"
    ));
    assert_eq!((r.status, r.body_str().as_str()), (200, "/big"));

    // Two pipelined requests in one write after an idle wait.
    past_hold();
    c.send("GET /p1 HTTP/1.1\r\nHost: example.com\r\n\r\nGET /p2 HTTP/1.1\r\nHost: example.com\r\n\r\n");
    for p in ["/p1", "/p2"] {
        let r = c.read_response();
        assert_eq!((r.status, r.body_str().as_str()), (200, p));
    }

    // Many idle connections, each served once, then closed by their clients while idle.
    let mut idle: Vec<Client> = (0..50).map(|_| gw.client()).collect();
    for (i, c) in idle.iter_mut().enumerate() {
        let r = c.get(&format!("/idle/{i}"));
        assert_eq!(r.status, 200);
    }
    // Every served client is idle now; the gateway holds one fd for each (and the pool's).
    past_hold();
    let held = fd_count(gw.pid);
    drop(idle);
    drop(c);
    let n = wait_fds_at_most(gw.pid, held - 51, Duration::from_secs(5));
    assert!(
        n <= held - 51,
        "{n} fds after 51 idle clients closed, {held} while they idled: idle connections leaked"
    );
    let mut c = gw.client();
    assert_eq!(c.get("/after").body_str(), "/after");
}

/// Runs `per_client` GETs (paths `/{tag}/{client}/{i}`) from `clients` client connections at
/// once, each pausing `pause(i)` between requests; every answer must be the origin's 200 with
/// its path as the body. A GET is idempotent and has no body: no dead upstream connection may
/// ever reach the client as an error.
fn gets_never_fail(
    gw: &Gateway,
    tag: &str,
    clients: usize,
    per_client: usize,
    pause: fn(usize) -> Duration,
) {
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (addr, tag) = (gw.addr, tag.to_string());
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                for i in 0..per_client {
                    std::thread::sleep(pause(i));
                    let path = format!("/{tag}/{c}/{i}");
                    let r = client.get(&path);
                    assert_eq!(
                        (r.status, r.body_str()),
                        (200, path.clone()),
                        "{path}: {}",
                        r.raw_head
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
}

/// A keep-alive response echoing the request path, framed with Content-Length.
fn answer_path(head: &str, s: &mut std::net::TcpStream) -> bool {
    use std::io::Write;
    let path = head_path(head);
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
        path.len()
    );
    s.write_all(resp.as_bytes()).is_ok()
}

/// Requests seen per origin connection (keyed by the gateway's port).
#[derive(Default)]
struct PerConnection(std::sync::Mutex<std::collections::HashMap<u16, u32>>);

impl PerConnection {
    /// Counts a request on `s`; returns how many that connection has carried, this one included.
    fn count(&self, s: &std::net::TcpStream) -> u32 {
        let peer = s.peer_addr().map(|a| a.port()).unwrap_or(0);
        let mut m = self.0.lock().expect("lock");
        let n = m.entry(peer).or_insert(0);
        *n += 1;
        *n
    }
}

/// The upstream pool settings each reuse test runs with: every reuse peeked (the default), and
/// unpeeked reuse within 25 ms (a dead connection then shows only when the request is sent).
const POOLS: [&str; 2] = ["", "keepalive_pool = { peek_after = \"25ms\" }"];

#[test]
fn origin_closing_each_connection_after_three_requests_unannounced_never_fails_a_get() {
    // Like a server with a per-connection request limit that does not say `Connection: close`:
    // the FIN follows the third response, racing the gateway's next use of the connection.
    for pool in POOLS {
        let served = PerConnection::default();
        let o = RawOrigin::start(move |head, s| {
            let n = served.count(s);
            answer_path(head, s) && n < 3
        });
        let gw = Gateway::start(&simple_config_with(o.addr, &[], pool));
        gets_never_fail(&gw, "limit", 4, 60, |_| Duration::ZERO);
        assert!(
            o.accepted() >= 4 * 60 / 3,
            "[{pool}] the origin served at most 3 requests per connection, yet only {} were opened",
            o.accepted()
        );
    }
}

#[test]
fn origin_closing_connections_idle_for_30ms_never_fails_a_get() {
    // An origin keep-alive timeout of 30 ms, with pauses between requests on both sides of it
    // (and of the 25 ms unpeeked-reuse window): a pooled connection is often closed just as the
    // gateway takes it.
    for pool in POOLS {
        let o = RawOrigin::start_with_idle(Duration::from_millis(30), answer_path);
        let gw = Gateway::start(&simple_config_with(o.addr, &[], pool));
        gets_never_fail(&gw, "idle", 3, 40, |i| {
            Duration::from_millis((i as u64 * 7) % 60)
        });
        assert!(
            o.accepted() > 1,
            "[{pool}] the origin's idle timeout never closed a pooled connection"
        );
    }
}

#[test]
fn request_dropped_unanswered_on_a_reused_connection_is_retried_only_when_idempotent() {
    // The origin answers the first request on each connection and closes the connection on
    // the second without answering (it may or may not have acted on it). GET and PUT (kept
    // whole, idempotent) are sent again on a fresh connection; a POST is not (RFC 9110 9.2.2):
    // 502, and the origin saw it exactly once.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let served = PerConnection::default();
    let o = RawOrigin::start(move |head, s| {
        log.lock().expect("lock").push(head_path(head).to_string());
        served.count(s) == 1 && answer_path(head, s)
    });
    let gw = Gateway::start(&simple_config(o.addr, &[]));
    let mut c = gw.client();
    let times = |path: &str| {
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|p| *p == path)
            .count()
    };
    for (path, req) in [
        ("/get", get_req("/get", "example.com")),
        (
            "/put",
            "PUT /put HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi".to_string(),
        ),
    ] {
        // Warm: the connection this answer came on goes back to the pool.
        assert_eq!(c.get("/warm").status, 200);
        let r = c.request(&req);
        assert_eq!(
            (r.status, r.body_str()),
            (200, path.to_string()),
            "{path} on a reused connection the origin dropped: {}",
            r.raw_head
        );
        assert_eq!(
            times(path),
            2,
            "{path}: once on the dead connection, once on a fresh one"
        );
    }
    assert_eq!(c.get("/warm").status, 200);
    let r = c.request("POST /post HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(
        r.status, 502,
        "POST on a dropped reused connection: {}",
        r.raw_head
    );
    assert_eq!(
        times("/post"),
        1,
        "a POST the origin may have acted on was sent again"
    );
    // An error answering a request with a body closes the client connection; the gateway
    // itself goes on serving.
    assert!(r.connection_close(), "502 after a body: {}", r.raw_head);
    assert_eq!(gw.client().get("/after").status, 200);
}

#[test]
fn bytes_sent_just_after_a_response_keep_the_connection_out_of_use() {
    // The origin sends a whole extra response 5 ms after the one it framed. The default peek at
    // reuse keeps it from answering the next GET (with `peek_after = "25ms"` it would: the
    // reason unpeeked reuse is opt-in).
    let wrote = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = wrote.clone();
    let o = RawOrigin::start(move |head, s| {
        use std::io::Write;
        let ok = answer_path(head, s);
        if head_path(head) == "/first" {
            std::thread::sleep(Duration::from_millis(5));
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!");
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        ok
    });
    let gw = Gateway::start(&simple_config(o.addr, &[]));
    let mut c = gw.client();
    assert_eq!(c.get("/first").body_str(), "/first");
    assert!(
        wait_until(Duration::from_secs(5), || wrote
            .load(std::sync::atomic::Ordering::SeqCst)),
        "the origin never sent its extra response"
    );
    let r = c.get("/next");
    assert_eq!(
        (r.status, r.body_str()),
        (200, "/next".to_string()),
        "{}",
        r.raw_head
    );
    assert_eq!(
        o.accepted(),
        2,
        "the connection with stray bytes was reused"
    );
}
