//! Unit tests for the pool's idle check (the peek at take time) on both drivers: a quiet
//! connection comes back usable; one the upstream closed or wrote to while it idled is never
//! handed out, except to a replayable request moments after it came back (the peek skipped).
//! Loopback sockets only.

use std::future::Future;
use std::io::{Read, Write};
use std::pin::Pin;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRentExt, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::*;

fn cfg() -> PoolConfig {
    PoolConfig {
        size: 8,
        idle_timeout: Duration::from_secs(60),
        requests: 1000,
        peek_after: Duration::from_millis(25),
    }
}

type Test = fn(std::net::TcpListener) -> Pin<Box<dyn Future<Output = ()>>>;

fn on_both_drivers(test: Test) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .expect("io_uring runtime")
        .block_on(test(bind()));
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("legacy runtime")
        .block_on(test(bind()));
}

/// A pool holding one connection to `listener`, and the server's end of it.
async fn pooled(listener: &std::net::TcpListener) -> (Pool, std::net::TcpStream) {
    let addr = listener.local_addr().expect("addr");
    let client = TcpStream::connect_addr(addr).await.expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let mut pool = Pool::new();
    pool.put(
        PooledConn::fresh(UpstreamStream::Plain(client)),
        &cfg(),
        Instant::now(),
    );
    assert_eq!(pool.len(), 1);
    (pool, server)
}

/// Waits (bounded at 5 s) until the pool's warmest connection has something to say (the state
/// the take-time check must see).
async fn wait_not_quiet(pool: &Pool) {
    let mut seen = false;
    for _ in 0..500 {
        seen = pool.idle.last().is_some_and(|c| !c.stream.idle_quiet());
        if seen {
            break;
        }
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        seen,
        "the upstream's close or bytes never reached the pooled socket"
    );
}

/// Once the pooled connection has something to say, `take` drops it instead of handing it out.
async fn not_handed_out(mut pool: Pool) {
    wait_not_quiet(&pool).await;
    assert!(pool.take(&cfg(), Instant::now(), false).is_none());
    assert!(pool.is_empty());
}

#[test]
fn a_quiet_connection_comes_back_usable_and_counted() {
    on_both_drivers(|listener| {
        Box::pin(async move {
            let (mut pool, mut server) = pooled(&listener).await;
            monoio::time::sleep(Duration::from_millis(20)).await;
            pool.sweep(&cfg(), Instant::now());
            let mut conn = pool
                .take(&cfg(), Instant::now(), false)
                .expect("quiet connection");
            assert!(pool.is_empty());
            assert_eq!(conn.requests, 1);
            let (r, _) = conn.stream.write_all(b"ping").await;
            r.expect("write");
            let mut got = [0u8; 4];
            server.read_exact(&mut got).expect("server read");
            assert_eq!(&got, b"ping");
            server.write_all(b"pong").expect("server write");
            let (r, buf) = conn.stream.read_exact(vec![0u8; 4]).await;
            r.expect("read");
            assert_eq!(buf, b"pong");
            // Back in the pool and out again: the same working socket, counted twice.
            pool.put(conn, &cfg(), Instant::now());
            let conn = pool.take(&cfg(), Instant::now(), false).expect("again");
            assert_eq!(conn.requests, 2);
        })
    });
}

#[test]
fn a_connection_the_upstream_closed_while_idle_is_not_handed_out() {
    on_both_drivers(|listener| {
        Box::pin(async move {
            let (pool, server) = pooled(&listener).await;
            drop(server);
            not_handed_out(pool).await;
        })
    });
}

#[test]
fn a_connection_the_upstream_wrote_to_while_idle_is_not_handed_out() {
    on_both_drivers(|listener| {
        Box::pin(async move {
            let (pool, mut server) = pooled(&listener).await;
            // A whole extra response: reused, it would answer the next request.
            server
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nEVIL!")
                .expect("stray bytes");
            not_handed_out(pool).await;
        })
    });
}

#[test]
fn worn_out_or_expired_connections_are_not_kept() {
    on_both_drivers(|listener| {
        Box::pin(async move {
            let (mut pool, _server) = pooled(&listener).await;
            let conn = pool.take(&cfg(), Instant::now(), false).expect("quiet");
            // The 1000th request on it: closed instead of pooled.
            let worn = PooledConn {
                requests: cfg().requests - 1,
                ..conn
            };
            pool.put(worn, &cfg(), Instant::now());
            assert!(pool.is_empty());
            let (mut pool, _server) = pooled(&listener).await;
            let later = Instant::now() + cfg().idle_timeout;
            assert!(pool.take(&cfg(), later, true).is_none());
        })
    });
}

/// A pooled connection whose upstream has closed it (the EOF is waiting on the socket), put
/// back at `at`.
async fn dead_put_at(listener: &std::net::TcpListener, at: Instant) -> Pool {
    let (mut pool, server) = pooled(listener).await;
    let conn = pool.take(&cfg(), Instant::now(), false).expect("quiet");
    pool.put(conn, &cfg(), at);
    drop(server);
    wait_not_quiet(&pool).await;
    pool
}

#[test]
fn only_a_replayable_request_skips_the_peek_and_only_just_after_the_put() {
    on_both_drivers(|listener| {
        Box::pin(async move {
            let at = Instant::now();
            // Replayable, moments after the put: handed out unpeeked (a dead one is the
            // request's stale retry to settle).
            let mut pool = dead_put_at(&listener, at).await;
            let conn = pool.take(&cfg(), at + Duration::from_millis(5), true);
            assert!(
                conn.is_some(),
                "a replayable request just after the put peeks"
            );
            // Past the window the peek runs and sees the close.
            pool.put(conn.expect("taken"), &cfg(), at);
            let later = at + cfg().peek_after;
            assert!(pool.take(&cfg(), later, true).is_none());
            // Not replayable: always peeked.
            let mut pool = dead_put_at(&listener, at).await;
            assert!(pool
                .take(&cfg(), at + Duration::from_millis(5), false)
                .is_none());
            // `peek_after = 0s`: always peeked.
            let mut pool = dead_put_at(&listener, at).await;
            let strict = PoolConfig {
                peek_after: Duration::ZERO,
                ..cfg()
            };
            assert!(pool.take(&strict, at, true).is_none());
        })
    });
}
