//! Criterion benches for the request path's hot pieces, each beside its naive baseline:
//! head parse, router lookup (10 and 10k routes), balancer pick, token bucket, cache lookup.
//! `cargo bench -p ringway-perf`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ringway::cache::entry::Entry;
use ringway::cache::store::Store;
use ringway::http::parse::{HeadLimits, RequestHead};
use ringway::limit::bucket::{Bucket, BucketParams};
use ringway::route::{Params, RequestView, RouteSpec, Router, ORDER_STEP};
use ringway::upstream::balance::{Balancer, NodeSet, Policy};
use ringway_perf::{
    naive_parse_head, NaiveBucket, NaiveLru, NaiveRouter, NaiveSmoothWrr, NaiveWrr,
};

const HEAD: &[u8] = b"GET /api/v1/users/12345?expand=orders HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) bench\r\nAccept: application/json\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\nAuthorization: Bearer abcdefghijklmnopqrstuvwxyz0123456789\r\nX-Request-Id: 7f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b\r\nConnection: keep-alive\r\n\r\n";

struct NoHeaders;
impl RequestView for NoHeaders {
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

fn parse(c: &mut Criterion) {
    let limits = HeadLimits {
        max_header_bytes: 16384,
        max_request_line_bytes: 8192,
    };
    let mut g = c.benchmark_group("head_parse");
    let mut head = RequestHead::default();
    g.bench_function("ringway", |b| {
        b.iter(|| black_box(head.parse(black_box(HEAD), &limits).is_ok()))
    });
    g.bench_function("naive_strings_and_map", |b| {
        b.iter(|| black_box(naive_parse_head(black_box(HEAD)).is_some()))
    });
    g.finish();
}

fn routes(n: usize) -> (Vec<RouteSpec>, Vec<(Option<String>, String)>) {
    let mut specs = Vec::with_capacity(n);
    let mut naive = Vec::with_capacity(n);
    for i in 0..n {
        let path = format!("/svc{i}/*");
        specs.push(RouteSpec {
            paths: vec![path.clone()],
            ..Default::default()
        });
        naive.push((None, path));
    }
    (specs, naive)
}

fn router(c: &mut Criterion) {
    for n in [10usize, 10_000] {
        let (specs, naive) = routes(n);
        let router = Router::build(&specs).expect("routes build");
        let naive = NaiveRouter::new(naive);
        let path = format!("/svc{}/items/42", n - 1);
        let mut params = Params::new();
        let mut g = c.benchmark_group(format!("router_{n}_routes"));
        g.bench_function("ringway_trie", |b| {
            b.iter(|| {
                params.clear();
                black_box(router.find(
                    b"api.example.com",
                    black_box(path.as_bytes()),
                    b"",
                    b"GET",
                    &NoHeaders,
                    &mut params,
                ))
            })
        });
        g.bench_function("naive_linear_scan", |b| {
            b.iter(|| black_box(naive.find("api.example.com", black_box(&path))))
        });
        g.finish();
    }
}

/// One route replaced in a 50k-route table: the copy-on-write update (clone the shared router,
/// `set` one route) against the full rebuild every admin change used to cost.
fn route_update(c: &mut Criterion) {
    let (specs, _) = routes(50_000);
    let router = Router::build(&specs).expect("routes build");
    let moved = RouteSpec {
        paths: vec!["/moved/{id}".into()],
        ..Default::default()
    };
    let mut g = c.benchmark_group("route_update_50k");
    g.sample_size(10);
    g.bench_function("ringway_set_one", |b| {
        b.iter(|| {
            let mut next = router.clone();
            next.set(25_000, Some(&moved), 25_001 * ORDER_STEP)
                .expect("valid");
            black_box(next)
        })
    });
    g.bench_function("naive_full_rebuild", |b| {
        let mut changed = specs.clone();
        changed[25_000] = moved.clone();
        b.iter(|| black_box(Router::build(black_box(&changed)).expect("routes build")))
    });
    g.finish();
}

fn balance(c: &mut Criterion) {
    let weights = [5u32, 3, 2, 1, 1, 4, 2, 2];
    let mut g = c.benchmark_group("balancer_pick");
    let mut rr = Balancer::new(Policy::RoundRobin, &weights);
    let skip = NodeSet::new(weights.len());
    g.bench_function("ringway_smooth_wrr", |b| {
        b.iter(|| black_box(rr.pick(0, &skip)))
    });
    let mut ch = Balancer::new(Policy::Chash, &weights);
    let mut k = 0u64;
    g.bench_function("ringway_chash", |b| {
        b.iter(|| {
            k = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
            black_box(ch.pick(k, &skip))
        })
    });
    let mut naive = NaiveWrr::new(&weights);
    g.bench_function("naive_expanded_list", |b| {
        b.iter(|| black_box(naive.pick(&[])))
    });
    let mut smooth = NaiveSmoothWrr::new(&weights);
    g.bench_function("naive_smooth_wrr", |b| {
        b.iter(|| black_box(smooth.pick(&[])))
    });
    g.finish();
}

fn bucket(c: &mut Criterion) {
    let mut g = c.benchmark_group("token_bucket");
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();
    let hashes: Vec<u64> = keys
        .iter()
        .map(|k| xxhash_rust::xxh3::xxh3_64(k.as_bytes()))
        .collect();
    let mut bk = Bucket::new(
        BucketParams {
            rate: 1e9,
            burst: 1e9,
            max_keys: 100_000,
        },
        0,
        1,
    );
    let mut i = 0usize;
    let mut now = 0u64;
    g.bench_function("ringway_bucket", |b| {
        b.iter(|| {
            i = (i + 1) % hashes.len();
            now += 1;
            black_box(bk.check(hashes[i], now).is_ok())
        })
    });
    let mut naive = NaiveBucket::new(1e9, 1e9);
    g.bench_function("naive_string_map", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            now += 1;
            black_box(naive.check(&keys[i], now))
        })
    });
    g.finish();
}

fn cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache_lookup_10k");
    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("api.example.com/items/{i}"))
        .collect();
    let mut store = Store::new(256 << 20, Some(10_000));
    let mut naive = NaiveLru::new();
    for k in &keys {
        let e = Entry {
            status: 200,
            headers: Vec::new(),
            body: bytes::Bytes::from_static(b"hello"),
            vary: Vec::new(),
            stored_ms: 0,
            initial_age_ms: 0,
            lifetime_ms: 600_000,
            swr_ms: 0,
            sie_ms: 0,
            no_cache: false,
            no_stale: false,
            auth_ok: false,
            partial: None,
        };
        store.insert(k.as_bytes(), xxhash_rust::xxh3::xxh3_64(k.as_bytes()), e);
        naive.insert(k, b"hello".to_vec());
    }
    let mut i = 0usize;
    g.bench_function("ringway_store", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(store.get(keys[i].as_bytes(), |_| true).is_some())
        })
    });
    g.bench_function("naive_map_and_recency_list", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(naive.get(&keys[i]).is_some())
        })
    });
    g.finish();
}

criterion_group!(benches, parse, router, route_update, balance, bucket, cache);
criterion_main!(benches);
