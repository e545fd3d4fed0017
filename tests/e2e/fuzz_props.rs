//! Stable-toolchain driver for the fuzz properties (tests/fuzz/src/props.rs): replays each
//! target's seed corpus (tests/fuzz/corpus/<target>/) and then a bounded number of inputs made
//! by a seeded random mutator and small grammar generators. The same properties run under
//! libFuzzer with `cargo +nightly fuzz run <target>` from tests/fuzz; any crash input found
//! there belongs in the corpus directory so this test replays it forever after.

#[path = "../fuzz/src/props.rs"]
mod props;

use std::path::PathBuf;

/// xorshift64*: deterministic, so a failure reproduces from the printed seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
        .iter()
        .map(|p| std::fs::read(p).expect("read corpus file"))
        .collect()
}

/// Tokens that matter to HTTP framing; the mutator splices them in.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b":",
    b" ",
    b"\t",
    b",",
    b";",
    b"\0",
    b"\x7f",
    b"\xff",
    b"0",
    b"f",
    b"ffffffffffffffff",
    b"Content-Length: ",
    b"Transfer-Encoding: ",
    b"chunked",
    b"Host: ",
    b"Connection: ",
    b"close",
    b"keep-alive",
    b"upgrade",
    b"Upgrade: websocket",
    b"Expect: 100-continue",
    b"HTTP/1.0",
    b"HTTP/1.1",
    b"http://",
    b"?",
    b"/",
    b"*",
    b"[",
    b"]",
    b"\"",
    b"=",
    b"[[routes]]\n",
    b"[server]\n",
];

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let t = *rng.pick(TOKENS);
                v.splice(at..at, t.iter().copied());
            }
            3 if at < v.len() => {
                let end = (at + 1 + rng.below(8)).min(v.len());
                v.drain(at..end);
            }
            4 if at < v.len() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                let dup: Vec<u8> = v[at..end].to_vec();
                v.splice(at..at, dup);
            }
            5 if !other.is_empty() => {
                let s = rng.below(other.len());
                let e = (s + 1 + rng.below(32)).min(other.len());
                v.splice(at..at, other[s..e].iter().copied());
            }
            _ => v.truncate(at),
        }
    }
    v
}

/// Replays the corpus, then `rounds` mutated corpus entries plus whatever `generate` makes.
fn drive(
    target: &str,
    seed: u64,
    rounds: usize,
    prop: fn(&[u8]),
    generate: Option<fn(&mut Rng) -> Vec<u8>>,
) {
    let seeds = corpus(target);
    for s in &seeds {
        prop(s);
    }
    let mut rng = Rng::new(seed);
    for i in 0..rounds {
        let input = match generate {
            Some(g) if i % 2 == 1 => {
                let g = g(&mut rng);
                if rng.below(2) == 0 {
                    g
                } else {
                    let other = rng.pick(&seeds).clone();
                    mutate(&mut rng, &g, &other)
                }
            }
            _ => {
                let base = rng.pick(&seeds).clone();
                let other = rng.pick(&seeds).clone();
                mutate(&mut rng, &base, &other)
            }
        };
        let r = std::panic::catch_unwind(|| prop(&input));
        if r.is_err() {
            panic!(
                "{target}: property failed on round {i} (seed {seed}); input bytes: {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}

fn gen_request(rng: &mut Rng) -> Vec<u8> {
    let method = rng.pick(&["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "BREW"]);
    let target = rng.pick(&[
        "/",
        "/a/b?x=1",
        "http://h.test/p",
        "HTTPS://h.test:8443",
        "*",
        "/%2e%2e/",
        "/a?",
    ]);
    let version = rng.pick(&["HTTP/1.1", "HTTP/1.0"]);
    let mut s = format!("{method} {target} {version}\r\n").into_bytes();
    let names = [
        "Host",
        "host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Upgrade",
        "Expect",
        "X-Forwarded-For",
        "TE",
        "Keep-Alive",
        "X-A",
    ];
    let values = [
        "a.test",
        "0",
        "5",
        "5, 5",
        "chunked",
        "gzip, chunked",
        "close",
        "keep-alive, X-A",
        "upgrade",
        "websocket",
        "100-continue",
        "1.2.3.4",
        "",
        "  spaced  ",
        "[::1]:80",
    ];
    for _ in 0..rng.below(6) {
        s.extend_from_slice(rng.pick(&names).as_bytes());
        s.extend_from_slice(b": ");
        s.extend_from_slice(rng.pick(&values).as_bytes());
        s.extend_from_slice(b"\r\n");
    }
    s.extend_from_slice(b"\r\n");
    s
}

fn gen_response(rng: &mut Rng) -> Vec<u8> {
    let status = rng.pick(&["100", "101", "200", "204", "304", "404", "502", "999"]);
    let version = rng.pick(&["HTTP/1.1", "HTTP/1.0"]);
    let mut s = format!("{version} {status} Reason\r\n").into_bytes();
    let headers = [
        "Content-Length: 3",
        "Content-Length: 3, 3",
        "Content-Length: 0",
        "Transfer-Encoding: chunked",
        "Connection: close",
        "Connection: keep-alive",
        "Connection: X-Drop",
        "X-Drop: y",
        "Keep-Alive: timeout=5",
        "Upgrade: websocket",
        "Proxy-Connection: close",
        "Set-Cookie: a=b",
    ];
    for _ in 0..rng.below(5) {
        s.extend_from_slice(rng.pick(&headers).as_bytes());
        s.extend_from_slice(b"\r\n");
    }
    s.extend_from_slice(b"\r\n");
    s
}

fn gen_chunked(rng: &mut Rng) -> Vec<u8> {
    let mut s = vec![rng.next() as u8];
    for _ in 0..rng.below(4) {
        let n = rng.below(20);
        let size = if rng.below(4) == 0 {
            format!("{n:04X}")
        } else {
            format!("{n:x}")
        };
        s.extend_from_slice(size.as_bytes());
        let ext: [&[u8]; 5] = [b"", b" ", b";a=b", b" ;x", b";\t"];
        let e: &[u8] = ext[rng.below(ext.len())];
        s.extend_from_slice(e);
        s.extend_from_slice(b"\r\n");
        s.extend((0..n).map(|_| rng.next() as u8));
        s.extend_from_slice(b"\r\n");
    }
    s.extend_from_slice(b"0\r\n");
    for _ in 0..rng.below(3) {
        let trailers: [&[u8]; 3] = [
            b"X-T: 1\r\n",
            b"A:\r\n",
            b"Long-Trailer: xxxxxxxxxxxxxxxxxxxx\r\n",
        ];
        let t: &[u8] = trailers[rng.below(trailers.len())];
        s.extend_from_slice(t);
    }
    s.extend_from_slice(b"\r\n");
    if rng.below(2) == 0 {
        s.extend_from_slice(b"NEXT");
    }
    s
}

fn gen_route(rng: &mut Rng) -> Vec<u8> {
    (0..8 + rng.below(80)).map(|_| rng.next() as u8).collect()
}

#[test]
fn request_head_properties() {
    drive(
        "request_head",
        1,
        20_000,
        props::request_head,
        Some(gen_request),
    );
}

#[test]
fn response_head_properties() {
    drive(
        "response_head",
        2,
        10_000,
        props::response_head,
        Some(gen_response),
    );
}

#[test]
fn chunked_decoder_matches_reference() {
    drive("chunked", 3, 20_000, props::chunked, Some(gen_chunked));
}

#[test]
fn router_matches_naive_reference() {
    drive("route", 4, 3_000, props::route, Some(gen_route));
}

#[test]
fn cache_field_readers() {
    drive("cache_fields", 7, 20_000, props::cache_fields, None);
}

#[test]
fn media_type_versions_pick_a_route() {
    drive("media_version", 7, 5_000, props::media_version, None);
}

#[test]
fn oidc_jwks_and_tokens() {
    drive("oidc", 6, 3_000, props::oidc, None);
}

#[test]
fn oidc_session_cookies() {
    drive("oidc_cookie", 7, 3_000, props::oidc_cookie, None);
}

#[test]
fn etcd_keys_and_values() {
    drive("etcd_object", 6, 5_000, props::etcd_object, None);
}

#[test]
fn ocsp_responses() {
    drive("ocsp_response", 7, 5_000, props::ocsp_response, None);
}

#[test]
fn cache_tier_readers() {
    drive("cache_tier", 7, 20_000, props::cache_tier, None);
}

#[test]
fn resp_replies() {
    drive("resp", 8, 20_000, props::resp, None);
}

#[test]
fn config_loader_properties() {
    drive("config", 5, 2_000, props::config, None);
}

#[test]
fn openapi_loader_properties() {
    drive("openapi", 6, 300, props::openapi, None);
}

#[test]
fn reference_chunked_decoder_sanity() {
    use props::{reference_chunked, Chunked};
    assert_eq!(
        reference_chunked(b"5\r\nhello\r\n0\r\nA: b\r\n\r\nX", 64),
        Chunked::Done(b"hello".to_vec(), 21)
    );
    assert_eq!(
        reference_chunked(b"5\r\nhel", 64),
        Chunked::Incomplete(b"hel".to_vec())
    );
    assert_eq!(reference_chunked(b"5\r\nhelloX", 64), Chunked::Error);
    assert_eq!(reference_chunked(b"0\r\nA: b\r\n\r\n", 3), Chunked::Error);
    assert_eq!(
        reference_chunked(b"00000000000000001\r\n", 64),
        Chunked::Error
    );
    let long = format!(
        "1;{}\r\nx\r\n0\r\n\r\n",
        "e".repeat(props::REF_MAX_LINE - 3)
    );
    assert!(matches!(
        reference_chunked(long.as_bytes(), 0),
        Chunked::Done(..)
    ));
    let too_long = format!(
        "1;{}\r\nx\r\n0\r\n\r\n",
        "e".repeat(props::REF_MAX_LINE - 2)
    );
    assert_eq!(reference_chunked(too_long.as_bytes(), 0), Chunked::Error);
}
