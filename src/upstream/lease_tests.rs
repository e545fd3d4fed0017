//! Unit tests for leases: what each outcome does to balancer, passive health, pool and the retry
//! budget. Bookkeeping tests use no sockets; the connect/pool round trip uses loopback only.

use super::*;

/// An upstream with `n` loopback nodes (ports nothing listens on unless a test binds them).
fn upstream(n: usize, balance: &str, retries: u32, max_fails: u32) -> UpstreamState {
    let nodes: Vec<String> = (0..n)
        .map(|i| format!("{{ addr = \"127.0.0.1:{}\" }}", 1 + i))
        .collect();
    upstream_toml(&format!(
        "nodes = [{}]\nbalance = \"{balance}\"\nretries = {retries}\nmax_fails = {max_fails}",
        nodes.join(", ")
    ))
}

fn upstream_toml(body: &str) -> UpstreamState {
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[[upstreams]]\nname = \"u\"\n{body}\n\
         [[routes]]\nname = \"r\"\npaths = [\"/*\"]\nupstream = \"u\"\n"
    );
    let cfg = crate::config::from_str(&text).expect("test config is valid");
    UpstreamState::new(&cfg.upstreams[0], None)
}

fn counts(up: &UpstreamState, node: usize) -> (u64, u64) {
    up.health.borrow().counts(node)
}

fn in_flight(up: &UpstreamState, node: usize) -> u64 {
    up.balancer.borrow().in_flight(node)
}

#[test]
fn done_reports_success_and_ends_the_in_flight_count() {
    let up = upstream(2, "least_conn", 1, 1);
    let mut a = up.attempts(0);
    let now = Instant::now();
    let (node, fresh) = a.next(now).expect("a node");
    assert!(!fresh);
    let lease = a.begin(node, false, now);
    assert_eq!(in_flight(&up, node), 1);
    lease.finish(Outcome::Done);
    assert_eq!(in_flight(&up, node), 0);
    assert_eq!(counts(&up, node), (1, 0));
}

#[test]
fn dropped_lease_settles_as_aborted() {
    let up = upstream(2, "least_conn", 1, 1);
    let mut a = up.attempts(0);
    let now = Instant::now();
    let (node, _) = a.next(now).expect("a node");
    drop(a.begin(node, true, now));
    assert_eq!(in_flight(&up, node), 0);
    assert_eq!(counts(&up, node), (0, 0));
    // Aborted says nothing about the node: the request may still try it.
    assert!(!a.tried.contains(node));
}

#[test]
fn aborted_touches_neither_health_nor_pool() {
    let up = upstream(1, "round_robin", 0, 1);
    let mut a = up.attempts(0);
    let now = Instant::now();
    let (node, _) = a.next(now).expect("a node");
    a.begin(node, false, now).finish(Outcome::Aborted);
    assert_eq!(counts(&up, node), (0, 0));
    assert!(!up.health.borrow().is_ejected(node, now));
}

#[test]
fn node_failure_is_counted_and_the_next_attempt_goes_elsewhere() {
    let up = upstream(3, "round_robin", 1, 1);
    let mut a = up.attempts(0);
    let now = Instant::now();
    let (first, _) = a.next(now).expect("a node");
    a.begin(first, false, now)
        .finish(Outcome::NodeFailed(UpstreamError::Reset));
    assert_eq!(counts(&up, first), (0, 1));
    assert!(up.health.borrow().is_ejected(first, now));
    let (second, _) = a.next(now).expect("a retry");
    assert_ne!(second, first);
    a.begin(second, false, now)
        .finish(Outcome::NodeFailed(UpstreamError::ReadTimeout));
    // retries = 1: two attempts made, the budget is spent; the last error answers.
    assert_eq!(a.next(now), Err(UpstreamError::ReadTimeout));
}

#[test]
fn no_retries_means_one_attempt() {
    let up = upstream(3, "round_robin", 0, 0);
    let mut a = up.attempts(0);
    let now = Instant::now();
    let (n, _) = a.next(now).expect("a node");
    a.failed(n, UpstreamError::ConnectTimeout);
    assert_eq!(a.next(now), Err(UpstreamError::ConnectTimeout));
    assert_eq!(counts(&up, n), (0, 1));
}

#[test]
fn every_node_tried_ends_the_attempts() {
    let up = upstream(2, "round_robin", 10, 0);
    let mut a = up.attempts(0);
    let now = Instant::now();
    for _ in 0..2 {
        let (n, _) = a.next(now).expect("an untried node");
        a.failed(n, UpstreamError::ConnectRefused);
    }
    assert_eq!(a.next(now), Err(UpstreamError::ConnectRefused));
}

#[test]
fn first_stale_connection_is_retried_fresh_on_the_same_node_for_free() {
    let up = upstream(2, "round_robin", 0, 1);
    let mut a = up.attempts(0);
    let now = Instant::now();
    let (node, _) = a.next(now).expect("a node");
    a.begin(node, true, now).finish(Outcome::Stale);
    // Not a failure, not an attempt: retries = 0 still allows the fresh connection.
    assert_eq!(counts(&up, node), (0, 0));
    assert_eq!(in_flight(&up, node), 0);
    assert_eq!(a.next(now), Ok((node, true)));
    a.begin(node, false, now).finish(Outcome::Done);
    assert_eq!(counts(&up, node), (1, 0));
}

#[test]
fn second_stale_connection_is_a_node_failure() {
    let up = upstream(2, "round_robin", 1, 1);
    let mut a = up.attempts(0);
    let now = Instant::now();
    let (node, _) = a.next(now).expect("a node");
    a.begin(node, true, now).finish(Outcome::Stale);
    let (again, fresh) = a.next(now).expect("the fresh retry");
    assert!(fresh && again == node);
    a.begin(again, true, now).finish(Outcome::Stale);
    assert_eq!(counts(&up, node), (0, 1));
    // The fresh retry was free, so one attempt (the other node) is left in the budget.
    let (other, fresh) = a.next(now).expect("the other node");
    assert!(!fresh && other != node);
    a.begin(other, false, now)
        .finish(Outcome::NodeFailed(UpstreamError::Reset));
    assert_eq!(a.next(now), Err(UpstreamError::Reset));
}

#[test]
fn ejected_nodes_are_skipped_until_every_node_is_ejected() {
    let up = upstream(2, "round_robin", 1, 1);
    let now = Instant::now();
    up.health.borrow_mut().report_failure(0, now);
    for _ in 0..4 {
        let mut a = up.attempts(0);
        assert_eq!(a.next(now), Ok((1, false)));
    }
    up.health.borrow_mut().report_failure(1, now);
    // All ejected: all are used (fail open).
    let mut a = up.attempts(0);
    assert!(a.next(now).is_ok());
}

#[test]
fn an_untried_ejected_node_beats_giving_up() {
    let up = upstream(2, "round_robin", 1, 1);
    let now = Instant::now();
    up.health.borrow_mut().report_failure(0, now);
    let mut a = up.attempts(0);
    assert_eq!(a.next(now), Ok((1, false)));
    a.failed(1, UpstreamError::Reset);
    assert_eq!(a.next(now), Ok((0, false)));
}

#[test]
fn chash_leases_follow_the_key() {
    let up = upstream(5, "chash", 0, 1);
    let now = Instant::now();
    let key = crate::upstream::balance::hash_key(b"user-42");
    let first = up.attempts(key).next(now).expect("a node").0;
    for _ in 0..10 {
        assert_eq!(up.attempts(key).next(now), Ok((first, false)));
    }
}

#[test]
fn least_conn_leases_spread_while_held() {
    let up = upstream(2, "least_conn", 0, 1);
    let now = Instant::now();
    let mut a = up.attempts(0);
    let (n, _) = a.next(now).expect("a node");
    let held = a.begin(n, false, now);
    let mut b = up.attempts(0);
    let (m, _) = b.next(now).expect("a node");
    assert_ne!(m, n, "the busy node is avoided");
    drop(held);
    assert_eq!(in_flight(&up, n), 0);
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn lease_connects_pools_and_reuses() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let up = upstream_toml(&format!("nodes = [{{ addr = \"127.0.0.1:{port}\" }}]"));
    block_on(async {
        let mut a = up.attempts(0);
        let (lease, conn) = a.lease().await.expect("connected");
        assert!(!lease.pooled());
        // Keep the server side open so the pooled connection stays quiet.
        let (_server, _) = listener.accept().expect("accept");
        lease.finish(Outcome::Reusable(conn));
        assert_eq!(up.pools[0].borrow().len(), 1);
        assert_eq!(counts(&up, 0), (1, 0));
        let mut b = up.attempts(0);
        let (lease, conn) = b.lease().await.expect("pooled");
        assert!(lease.pooled());
        assert!(up.pools[0].borrow().is_empty());
        // A stale pooled connection empties the pool and the retry connects afresh.
        lease.finish(Outcome::Stale);
        drop(conn);
        let (lease, _conn) = b.lease().await.expect("fresh");
        assert!(!lease.pooled());
        lease.finish(Outcome::Done);
        assert_eq!(counts(&up, 0), (2, 0));
    });
}

#[test]
fn refused_connects_move_on_and_count_against_the_node() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let good = listener.local_addr().expect("addr").port();
    let bad = closed_port();
    let up = upstream_toml(&format!(
        "nodes = [{{ addr = \"127.0.0.1:{bad}\" }}, {{ addr = \"127.0.0.1:{good}\" }}]\n\
         retries = 1"
    ));
    block_on(async {
        let mut a = up.attempts(0);
        let (lease, _conn) = a.lease().await.expect("the second node");
        assert_eq!(lease.node(), 1);
        lease.finish(Outcome::Done);
        assert_eq!(counts(&up, 0), (0, 1));
        // Only the refused node: the connect failure is the answer.
        let one = upstream_toml(&format!("nodes = [{{ addr = \"127.0.0.1:{bad}\" }}]"));
        let mut b = one.attempts(0);
        assert!(matches!(
            b.lease().await.map(|_| ()),
            Err(UpstreamError::ConnectRefused)
        ));
        assert_eq!(counts(&one, 0), (0, 1));
    });
}
