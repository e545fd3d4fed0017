//! Unit tests of the shard store: LRU and W-TinyLFU eviction, the byte budget, variants,
//! purge by key and prefix.

use super::*;

fn key(i: u64) -> Vec<u8> {
    format!("k{i:03}").into_bytes()
}

fn one(body: usize) -> usize {
    key(0).len() + test_entry(body).size() + ENTRY_OVERHEAD
}

#[test]
fn lru_evicts_oldest_and_never_exceeds_budget() {
    let one = one(100);
    let mut s = Store::new(one * 3, None);
    for i in 0..3 {
        assert!(s.insert(&key(i), i, test_entry(100)));
    }
    assert!(s.get(&key(0), |_| true).is_some(), "0 becomes most recent");
    assert!(s.insert(&key(3), 3, test_entry(100)));
    assert!(s.get(&key(1), |_| true).is_none(), "1 was least recent");
    assert!(s.get(&key(0), |_| true).is_some());
    for i in 10..1000 {
        s.insert(&key(i), i, test_entry(50 + (i as usize % 200)));
        assert!(s.stats().bytes <= s.stats().budget);
    }
    assert!(s.stats().peak <= s.stats().budget);
    assert!(
        !s.insert(b"big", 1, test_entry(one * 3)),
        "larger than the budget"
    );
}

/// Entries of the admission tests: large enough that the sketch fits beside a few of them.
const BODY: usize = 1000;

/// A store with admission whose entry budget holds `n` entries of `BODY` bytes.
fn tinylfu(n: usize) -> Store {
    let probe = Store::new(1 << 20, Some(64));
    let sketch = (1 << 20) - probe.stats().budget;
    // The main region's 99% holds exactly `n`; the window's 1% holds no whole entry, so
    // every newcomer meets admission at once.
    let s = Store::new(n * one(BODY) * 51 / 50 + sketch, Some(64));
    assert!(s.sketch.is_some());
    s
}

#[test]
fn tinylfu_keeps_hot_entries_against_one_hit_wonders() {
    let mut s = tinylfu(10);
    for i in 0..10 {
        for _ in 0..5 {
            s.touch(i);
        }
        assert!(s.insert(&key(i), i, test_entry(BODY)));
    }
    for i in 100..200 {
        s.touch(i);
        s.insert(&key(i), i, test_entry(BODY));
        assert!(s.stats().bytes <= s.stats().budget);
    }
    let kept = (0..10)
        .filter(|&i| s.get(&key(i), |_| true).is_some())
        .count();
    assert_eq!(kept, 10, "a scan of new keys did not flush the hot set");
    assert!(s.stats().rejected >= 90);
    assert!(s.stats().peak <= s.stats().budget);
}

#[test]
fn tinylfu_admits_a_newcomer_asked_for_more_than_the_victim() {
    let mut s = tinylfu(4);
    for i in 0..4 {
        s.touch(i);
        assert!(s.insert(&key(i), i, test_entry(BODY)));
    }
    for _ in 0..3 {
        s.touch(50);
    }
    assert!(
        s.insert(&key(50), 50, test_entry(BODY)),
        "hotter than the victim"
    );
    assert!(s.get(&key(50), |_| true).is_some());
    assert_eq!(s.stats().evictions, 1);
    assert_eq!(s.stats().entries, 4);
}

#[test]
fn protected_segment_shields_entries_hit_on_probation() {
    let mut s = tinylfu(10);
    for i in 0..10 {
        s.touch(i);
        assert!(s.insert(&key(i), i, test_entry(BODY)));
    }
    // 0..3 are hit once: promoted from probation to protected.
    for i in 0..3 {
        assert!(s.get(&key(i), |_| true).is_some());
    }
    // Newcomers each asked for twice displace probation entries (3.. first), never 0..3.
    for i in 100..107 {
        s.touch(i);
        s.touch(i);
        assert!(s.insert(&key(i), i, test_entry(BODY)));
    }
    for i in 0..3 {
        assert!(s.get(&key(i), |_| true).is_some(), "protected {i} kept");
    }
    assert_eq!(s.stats().entries, 10);
    assert!(s.stats().peak <= s.stats().budget);
}

#[test]
fn mixed_sizes_never_exceed_the_budget_and_refreshes_stay() {
    let mut s = Store::new(64 << 10, Some(64));
    for i in 0..5000u64 {
        let body = 20 + (i as usize * 7919 % 3000);
        s.touch(i % 300);
        s.insert(&key(i % 300), i % 300, test_entry(body));
        assert!(s.stats().bytes <= s.stats().budget, "at {i}");
    }
    assert!(s.stats().peak <= s.stats().budget);
    // A resident key's refresh is kept even when it is the coldest around.
    let resident = (0..300).find(|&k| s.contains(&key(k))).map(key);
    let Some(k) = resident else {
        panic!("nothing resident")
    };
    assert!(s.insert(&k, 9999, test_entry(30)));
    assert!(s.get(&k, |_| true).is_some());
}

#[test]
fn variants_remove_and_prefix() {
    let mut s = Store::new(1 << 20, None);
    let mut a = test_entry(1);
    a.vary = vec![("accept".into(), Some(Bytes::from_static(b"a")))];
    let mut b = test_entry(1);
    b.vary = vec![("accept".into(), Some(Bytes::from_static(b"b")))];
    s.insert(b"h/x", 1, a);
    s.insert(b"h/x", 1, b);
    s.insert(b"h/y", 2, test_entry(1));
    let pick = |v: &'static [u8]| move |e: &Entry| e.vary[0].1.as_deref() == Some(v);
    assert!(s.get(b"h/x", pick(b"a")).is_some());
    assert!(s.get(b"h/x", pick(b"b")).is_some());
    assert_eq!(s.remove(b"h/x"), 2);
    assert_eq!(s.remove(b"h/x"), 0);
    assert_eq!(s.remove_where(Some(b"h/"), None), 1);
    assert_eq!(s.stats().bytes, 0);
    assert_eq!(s.stats().entries, 0);
}
