//! Simulated shards exchanging reports at a sync interval: node-wide admissions per window
//! must stay within 5% of the limit whatever the traffic split.

use super::*;

/// Runs `shards` limiters for `windows` windows; `rate(shard, ms)` is requests in that ms.
/// Shards tick at `sync_ms`, staggered; reports arrive at the receiver's next tick.
fn simulate(
    shards: usize,
    limit: u64,
    window_ms: u64,
    sync_ms: u64,
    windows: u64,
    rate: impl Fn(usize, u64) -> u32,
) -> Vec<u64> {
    let p = CountParams {
        limit,
        window_ms,
        sliding: false,
        max_keys: 1000,
    };
    let mut ls: Vec<CountLimiter> = (0..shards)
        .map(|i| CountLimiter::new(p, i, shards))
        .collect();
    let mut inbox: Vec<Vec<(usize, u64, Vec<Item>)>> = vec![Vec::new(); shards];
    let mut admitted = vec![0u64; windows as usize];
    for ms in 0..windows * window_ms {
        for (i, l) in ls.iter_mut().enumerate() {
            // Stagger the ticks so shards never see each other's newest state.
            if (ms + i as u64 * sync_ms / shards as u64) % sync_ms == 0 {
                for (from, w, items) in inbox[i].drain(..) {
                    l.absorb(from, w, &items, ms);
                }
                let (w, items) = l.tick(ms);
                if !items.is_empty() {
                    for (j, b) in inbox.iter_mut().enumerate() {
                        if j != i {
                            b.push((i, w, items.clone()));
                        }
                    }
                }
            }
            for _ in 0..rate(i, ms) {
                if l.check(7, ms).allowed {
                    admitted[(ms / window_ms) as usize] += 1;
                }
            }
        }
    }
    admitted
}

fn assert_within(admitted: &[u64], limit: u64, what: &str) {
    for (w, &a) in admitted.iter().enumerate() {
        let lo = limit as f64 * 0.95;
        let hi = limit as f64 * 1.05;
        assert!(
            (a as f64) >= lo && (a as f64) <= hi,
            "{what}: window {w} admitted {a}, limit {limit} ({admitted:?})"
        );
    }
}

#[test]
fn all_traffic_on_one_shard() {
    let a = simulate(4, 500, 1000, 20, 4, |s, _| if s == 0 { 20 } else { 0 });
    assert_within(&a, 500, "one shard");
}

#[test]
fn even_traffic() {
    let a = simulate(4, 500, 1000, 20, 4, |_, _| 5);
    assert_within(&a, 500, "even");
}

#[test]
fn alternating_traffic() {
    // Traffic moves between shards every 100 ms.
    let a = simulate(2, 1000, 1000, 10, 4, |s, ms| {
        if (ms / 100) % 2 == s as u64 {
            30
        } else {
            0
        }
    });
    assert_within(&a, 1000, "alternating");
}

#[test]
fn skewed_and_slow_sync() {
    let a = simulate(2, 300, 2000, 100, 3, |s, ms| {
        if s == 0 {
            3
        } else {
            (ms % 4 == 0) as u32
        }
    });
    assert_within(&a, 300, "skewed");
}

#[test]
fn light_traffic_never_refused() {
    let p = CountParams {
        limit: 10,
        window_ms: 1000,
        sliding: false,
        max_keys: 100,
    };
    let mut l = CountLimiter::new(p, 1, 2);
    for i in 0..5 {
        assert!(l.check(1, i * 10).allowed, "request {i} refused");
        l.tick(i * 10);
    }
}

#[test]
fn single_shard_is_exact_and_headers_count_down() {
    let p = CountParams {
        limit: 3,
        window_ms: 1000,
        sliding: false,
        max_keys: 100,
    };
    let mut l = CountLimiter::new(p, 0, 1);
    let d: Vec<Decision> = (0..4).map(|i| l.check(9, 100 + i)).collect();
    assert_eq!(d.iter().filter(|d| d.allowed).count(), 3);
    assert_eq!(d[0].remaining, 2);
    assert_eq!(d[3].remaining, 0);
    assert_eq!(d[0].reset_ms, 900);
    assert!(l.check(9, 1000).allowed, "new window");
}

#[test]
fn sliding_window_weighs_previous() {
    let p = CountParams {
        limit: 10,
        window_ms: 1000,
        sliding: true,
        max_keys: 100,
    };
    let mut l = CountLimiter::new(p, 0, 1);
    for i in 0..10 {
        assert!(l.check(1, 900 + i).allowed);
    }
    // 10% into the next window, 90% of the previous 10 still count.
    let got = (0..10).filter(|i| l.check(1, 1100 + i).allowed).count();
    assert_eq!(got, 1);
}

#[test]
fn many_keys_stay_bounded() {
    let p = CountParams {
        limit: 10,
        window_ms: 60_000,
        sliding: false,
        max_keys: 1000,
    };
    let mut l = CountLimiter::new(p, 0, 2);
    for k in 0..50_000u64 {
        l.check(k.wrapping_mul(0x9e37_79b9_7f4a_7c15), k / 10);
        if k % 100 == 0 {
            l.tick(k / 10);
        }
    }
    assert!(l.len() <= 1000, "{} keys kept", l.len());
}

/// A cluster-wide limiter: windows on the wall clock, the node's cap from grants, the opening
/// fraction for the next window, and the store-away modes.
#[test]
fn fleet_grants_cap_the_node_and_modes_override() {
    use crate::limit::fleet::{GrantItem, Mode};
    let p = CountParams {
        limit: 100,
        window_ms: 1000,
        sliding: false,
        max_keys: 100,
    };
    // The node epoch is 400 ms into a wall-clock second: its window ends 600 ms later.
    let mut l = CountLimiter::new(p, 0, 1).fleet(1_000_400, 1.0);
    let w = l.window(0);
    assert_eq!(w, 1000);
    let d = l.check(5, 0);
    assert!(d.allowed);
    assert_eq!(d.reset_ms, 600);
    // The store grants this node 10 in this window, and 30% of the next.
    l.grant(
        w,
        Mode::Shared,
        0.5,
        &[GrantItem {
            key: 5,
            cap: 10,
            frac: 0.3,
        }],
        1,
    );
    let ok = (0..20).filter(|i| l.check(5, 2 + i).allowed).count();
    assert_eq!(ok, 9, "10 in all");
    // A grant for another window is not applied to this one.
    l.grant(
        w + 1,
        Mode::Shared,
        0.5,
        &[GrantItem {
            key: 5,
            cap: 50,
            frac: 0.3,
        }],
        30,
    );
    assert!(!l.check(5, 31).allowed);
    // Next window: 30 until a grant says otherwise.
    let ok = (0..50).filter(|i| l.check(5, 600 + i).allowed).count();
    assert_eq!(ok, 30);
    // A key never granted opens with the default fraction.
    let ok = (0..80).filter(|i| l.check(6, 700 + i).allowed).count();
    assert_eq!(ok, 50);
    // Store away: allow admits past the cap, deny refuses under it.
    l.grant(l.window(800), Mode::Allow, 0.5, &[], 800);
    assert!(l.check(5, 801).allowed);
    l.grant(l.window(800), Mode::Deny, 0.5, &[], 802);
    assert!(!l.check(7, 803).allowed);
}

#[test]
fn fleet_keys_open_cautiously_before_the_first_grant() {
    use crate::limit::fleet::{opening_frac, Mode};
    let p = CountParams {
        limit: 20,
        window_ms: 3_600_000,
        sliding: false,
        max_keys: 100,
    };
    let open = opening_frac(20, 3_600_000, std::time::Duration::from_millis(50));
    let mut l = CountLimiter::new(p, 0, 1).fleet(0, open);
    // Before any word from the fleet thread: one request (a twentieth of the limit, plus half
    // a 50 ms interval's worth of an hour-long window, rounds down to 1).
    let ok = (0..10).filter(|i| l.check(1, *i).allowed).count();
    assert_eq!(ok, 1);
    // The first exchange showed the node alone: keys it had no grant for open with the limit.
    l.grant(l.window(20), Mode::Shared, 1.0, &[], 20);
    let ok = (0..30).filter(|i| l.check(2, 30 + i).allowed).count();
    assert_eq!(ok, 20);
}
