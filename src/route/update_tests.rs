//! Tests that one-route updates (`Router::set`) give the same answers as a full rebuild.
//! Owns test code only; must not be used by non-test code.

use super::tests::{arb_spec, Headers};
use super::*;
use proptest::prelude::*;

const SLOTS: usize = 8;

/// What a full rebuild answers, translated back to slot ids: live routes in slot order, so
/// ties break the way `set` orders them ((slot + 1) * ORDER_STEP).
fn rebuilt(
    live: &[Option<RouteSpec>],
    host: &str,
    path: &str,
    method: &[u8],
) -> Option<(usize, Vec<Vec<u8>>)> {
    let ids: Vec<usize> = (0..live.len()).filter(|&i| live[i].is_some()).collect();
    let specs: Vec<RouteSpec> = live.iter().flatten().cloned().collect();
    let r = Router::build(&specs).expect("generated routes are valid");
    lookup(&r, host, path, method).map(|(i, p)| (ids[i], p))
}

fn lookup(r: &Router, host: &str, path: &str, method: &[u8]) -> Option<(usize, Vec<Vec<u8>>)> {
    let mut p = Params::new();
    let id = r.find(
        host.as_bytes(),
        path.as_bytes(),
        b"",
        method,
        &Headers::default(),
        &mut p,
    )?;
    let mut vals: Vec<Vec<u8>> = (0..p.len())
        .filter_map(|i| p.value(i, path.as_bytes()).map(<[u8]>::to_vec))
        .collect();
    vals.extend(p.wildcard(path.as_bytes()).map(<[u8]>::to_vec));
    Some((id, vals))
}

#[test]
fn put_replace_delete_track_the_table() {
    let spec = |p: &str| RouteSpec {
        paths: vec![p.into()],
        ..RouteSpec::default()
    };
    let mut r = Router::build(&[spec("/a"), spec("/b/{x}")]).expect("valid");
    let before = r.clone();
    r.set(1, Some(&spec("/c/{y}")), 2 * ORDER_STEP)
        .expect("valid");
    r.set(2, Some(&spec("/d")), 3 * ORDER_STEP).expect("valid");
    r.set(0, None, 0).expect("removal");
    assert_eq!(r.len(), 2);
    assert_eq!(lookup(&r, "h", "/a", b"GET"), None);
    assert_eq!(lookup(&r, "h", "/b/1", b"GET"), None);
    assert_eq!(
        lookup(&r, "h", "/c/1", b"GET"),
        Some((1, vec![b"1".to_vec()]))
    );
    assert_eq!(lookup(&r, "h", "/d", b"GET").map(|x| x.0), Some(2));
    // The clone taken before is untouched: shards still on it keep their answers.
    assert_eq!(before.len(), 2);
    assert_eq!(lookup(&before, "h", "/a", b"GET").map(|x| x.0), Some(0));
    assert_eq!(lookup(&before, "h", "/b/1", b"GET").map(|x| x.0), Some(1));
    assert_eq!(lookup(&before, "h", "/c/1", b"GET"), None);
    // A bad pattern changes nothing.
    assert!(r.set(1, Some(&spec("nope")), 9).is_err());
    assert_eq!(lookup(&r, "h", "/c/1", b"GET").map(|x| x.0), Some(1));
}

#[test]
fn fifty_thousand_routes_one_update() {
    let specs: Vec<RouteSpec> = (0..50_000)
        .map(|i| RouteSpec {
            hosts: if i % 2 == 0 {
                vec![format!("h{i}.example.com")]
            } else {
                vec![]
            },
            paths: vec![format!("/r{i}/{{id}}")],
            ..RouteSpec::default()
        })
        .collect();
    let base = Router::build(&specs).expect("valid");
    let mut r = base.clone();
    let moved = RouteSpec {
        paths: vec!["/moved/*".into()],
        ..RouteSpec::default()
    };
    r.set(777, Some(&moved), 778 * ORDER_STEP).expect("valid");
    assert_eq!(lookup(&r, "x", "/r777/5", b"GET"), None);
    assert_eq!(lookup(&r, "x", "/moved/q", b"GET").map(|x| x.0), Some(777));
    assert_eq!(
        lookup(&r, "h778.example.com", "/r778/1", b"GET").map(|x| x.0),
        Some(778)
    );
    assert_eq!(lookup(&r, "x", "/r779/1", b"GET").map(|x| x.0), Some(779));
    assert_eq!(
        lookup(&base, "x", "/r777/5", b"GET").map(|x| x.0),
        Some(777)
    );
}

proptest! {
    #[test]
    fn updates_agree_with_full_rebuild(
        initial in proptest::collection::vec(proptest::option::of(arb_spec()), SLOTS),
        ops in proptest::collection::vec((0..SLOTS, proptest::option::of(arb_spec())), 1..10),
        host in prop_oneof![Just("a.com"), Just("x.a.com"), Just("y.x.a.com"), Just("z.org")],
        segs in proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just(""), Just("c")], 0..5),
        get in any::<bool>(),
    ) {
        let mut live = initial;
        let mut r = Router::default();
        for (slot, spec) in live.iter().enumerate() {
            r.set(slot, spec.as_ref(), (slot as u64 + 1) * ORDER_STEP).expect("valid");
        }
        let path = format!("/{}", segs.join("/"));
        let method: &[u8] = if get { b"GET" } else { b"POST" };
        for (slot, spec) in ops {
            r.set(slot, spec.as_ref(), (slot as u64 + 1) * ORDER_STEP).expect("valid");
            live[slot] = spec;
            prop_assert_eq!(r.len(), live.iter().flatten().count());
            prop_assert_eq!(lookup(&r, host, &path, method), rebuilt(&live, host, &path, method));
        }
    }
}

#[test]
fn build_with_breaks_ties_by_the_given_order() {
    let tie = RouteSpec {
        paths: vec!["/t/*".into()],
        ..RouteSpec::default()
    };
    let specs = [tie.clone(), tie.clone(), tie];
    let r = Router::build(&specs).expect("valid");
    assert_eq!(lookup(&r, "h", "/t/x", b"GET").map(|x| x.0), Some(0));
    // Reversed orders: the last id now wins the tie, and every id keeps its routes.
    let rev = Router::build_with(&specs, |id| (3 - id as u64) * ORDER_STEP).expect("valid");
    assert_eq!(lookup(&rev, "h", "/t/x", b"GET").map(|x| x.0), Some(2));
    assert_eq!(
        (rev.len(), rev.order(0), rev.order(2)),
        (3, Some(3 * ORDER_STEP), Some(ORDER_STEP))
    );
    let mut rev = rev;
    rev.set(2, None, 0).expect("removal");
    assert_eq!(lookup(&rev, "h", "/t/x", b"GET").map(|x| x.0), Some(1));
}
