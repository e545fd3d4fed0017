//! Criterion benches for the request path's hot pieces, each beside its naive baseline:
//! head parse, router lookup (10 and 10k routes), balancer pick. `cargo bench -p ringway-perf`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ringway::http::parse::{HeadLimits, RequestHead};
use ringway::route::{Params, RequestView, RouteSpec, Router};
use ringway::upstream::balance::{Balancer, NodeSet, Policy};
use ringway_perf::{naive_parse_head, NaiveRouter, NaiveWrr};

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
    g.finish();
}

criterion_group!(benches, parse, router, balance);
criterion_main!(benches);
