//! Incomplete responses (RFC 9111 3.3-3.4) through the real server (2 shards, so keys are
//! owned by either shard) and a counting origin that answers ranges: 206s stored as partial
//! entries (both modes), combined into a complete 200, never served as a full response.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::cache::gw;
use crate::harness::*;

const V1: &str = "0123456789abcdefghij";
const V2: &str = "0123456789ABCDEFGHIJ";

/// An origin serving `V1` (or `V2` once `version` is 2) with ETag `"v1"`/`"v2"` (weak under
/// `/weak`), answering `Range: bytes=a-b` with a 206.
fn origin(version: Arc<AtomicUsize>) -> Origin {
    Origin::start("o", move |r| {
        let v = version.load(Ordering::SeqCst);
        let body = if v == 2 { V2 } else { V1 };
        let tag = if r.path().starts_with("/weak") {
            format!("W/\"v{v}\"")
        } else {
            format!("\"v{v}\"")
        };
        let range = r
            .header("range")
            .and_then(|h| h.strip_prefix("bytes="))
            .and_then(|s| s.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
        let resp = match range {
            Some((a, b)) => Resp::text(206, &body[a..=b])
                .header("Content-Range", &format!("bytes {a}-{b}/{}", body.len())),
            None => Resp::text(200, body),
        };
        resp.header("Cache-Control", "max-age=100")
            .header("ETag", &tag)
            .into()
    })
}

fn get(g: &Gateway, path: &str, extra: &str) -> Response {
    let mut c = g.client();
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n"));
    c.try_read_response_ext(false).expect("a response")
}

fn range(g: &Gateway, path: &str, a: usize, b: usize) -> Response {
    get(g, path, &format!("Range: bytes={a}-{b}\r\n"))
}

/// A full GET the cache alone may answer: 200 when a complete entry is stored, 504 otherwise.
fn cached_only(g: &Gateway, path: &str) -> Response {
    get(g, path, "Cache-Control: only-if-cached\r\n")
}

fn label(r: &Response) -> &str {
    r.header("X-Cache-Status").unwrap_or("-")
}

#[test]
fn ranges_with_one_strong_etag_combine_into_a_complete_entry() {
    let o = origin(Arc::new(AtomicUsize::new(1)));
    let g = gw(&o, "mode = \"rfc9111\"");
    // Several keys, so both shards own some and the rest are asked across shards.
    let paths = ["/a", "/b", "/c", "/d", "/e"];
    for p in paths {
        let r = range(&g, p, 0, 9);
        assert_eq!(
            (r.status, label(&r), r.body_str()),
            (206, "MISS", V1[..10].into()),
            "{p}"
        );
        // Half of it is stored, and a partial entry never answers a full request.
        assert_eq!(cached_only(&g, p).status, 504, "{p}");
        // An overlapping range completes it.
        let r = range(&g, p, 8, 19);
        assert_eq!((r.status, r.body_str()), (206, V1[8..].into()), "{p}");
    }
    assert_eq!(o.request_count(), 2 * paths.len());
    for p in paths {
        let r = get(&g, p, "");
        assert_eq!(
            (r.status, label(&r), r.body_str()),
            (200, "HIT", V1.into()),
            "{p}"
        );
        assert_eq!(r.header("Content-Range"), None, "{p}");
        assert_eq!(r.header("ETag"), Some("\"v1\""), "{p}");
        let r = range(&g, p, 5, 14);
        assert_eq!(
            (r.status, label(&r), r.body_str()),
            (206, "HIT", V1[5..15].into()),
            "{p}"
        );
        assert_eq!(r.header("Content-Range"), Some("bytes 5-14/20"), "{p}");
    }
    assert_eq!(o.request_count(), 2 * paths.len());
}

#[test]
fn adjacent_ranges_combine_gaps_and_other_validators_do_not() {
    let version = Arc::new(AtomicUsize::new(1));
    let o = origin(version.clone());
    let g = gw(&o, "mode = \"rfc9111\"");
    // A gap between two ranges: the newer replaces the older, nothing complete yet.
    range(&g, "/gap", 0, 4);
    range(&g, "/gap", 10, 19);
    assert_eq!(cached_only(&g, "/gap").status, 504);
    // Adjacent to the kept one (10-19): complete.
    range(&g, "/gap", 0, 9);
    assert_eq!(cached_only(&g, "/gap").body_str(), V1);
    // A new representation (ETag "v2"): the old partial is discarded, not combined.
    range(&g, "/new", 0, 9);
    version.store(2, Ordering::SeqCst);
    range(&g, "/new", 10, 19);
    assert_eq!(cached_only(&g, "/new").status, 504);
    range(&g, "/new", 0, 9);
    let r = cached_only(&g, "/new");
    assert_eq!((r.status, r.body_str()), (200, V2.into()));
    assert_eq!(r.header("ETag"), Some("\"v2\""));
    // A weak ETag does not say the bytes are the same: never combined.
    range(&g, "/weak", 0, 9);
    range(&g, "/weak", 10, 19);
    assert_eq!(cached_only(&g, "/weak").status, 504);
    assert_eq!(o.request_count(), 8);
}

#[test]
fn the_default_mode_stores_ranges_when_it_would_store_the_200() {
    let o = origin(Arc::new(AtomicUsize::new(1)));
    let g = gw(&o, "");
    let r = range(&g, "/a", 0, 9);
    assert_eq!((r.status, label(&r)), (206, "MISS"));
    let r = range(&g, "/a", 2, 5);
    assert_eq!(
        (r.status, label(&r), r.body_str()),
        (206, "HIT", V1[2..6].into())
    );
    range(&g, "/a", 10, 19);
    let r = get(&g, "/a", "");
    assert_eq!((r.status, label(&r), r.body_str()), (200, "HIT", V1.into()));
    assert_eq!(o.request_count(), 2);
    // Without 200 among the statuses stored, Range misses stay out of the cache.
    let o2 = origin(Arc::new(AtomicUsize::new(1)));
    let g2 = gw(&o2, "cache_http_status = [404]");
    for (a, b) in [(0, 9), (10, 19), (0, 9)] {
        let r = range(&g2, "/a", a, b);
        assert_eq!((r.status, label(&r)), (206, "BYPASS"));
    }
    assert_eq!(o2.request_count(), 3);
}

#[test]
fn a_full_get_over_a_partial_entry_goes_to_the_origin_and_replaces_it() {
    let o = origin(Arc::new(AtomicUsize::new(1)));
    let g = gw(&o, "mode = \"rfc9111\"");
    for p in ["/a", "/b", "/c"] {
        range(&g, p, 0, 9);
        let r = get(&g, p, "");
        assert_eq!(
            (r.status, label(&r), r.body_str()),
            (200, "MISS", V1.into()),
            "{p}"
        );
        let r = get(&g, p, "");
        assert_eq!(
            (r.status, label(&r), r.body_str()),
            (200, "HIT", V1.into()),
            "{p}"
        );
        let r = range(&g, p, 10, 19);
        assert_eq!(
            (r.status, label(&r), r.body_str()),
            (206, "HIT", V1[10..].into()),
            "{p}"
        );
    }
    assert_eq!(o.request_count(), 6);
}

#[test]
fn a_range_inside_a_partial_entry_is_answered_from_it_others_go_on() {
    let o = origin(Arc::new(AtomicUsize::new(1)));
    let g = gw(&o, "mode = \"rfc9111\"");
    for p in ["/a", "/b", "/c"] {
        range(&g, p, 4, 11);
        let r = range(&g, p, 5, 8);
        assert_eq!(
            (r.status, label(&r), r.body_str()),
            (206, "HIT", V1[5..9].into()),
            "{p}"
        );
        assert_eq!(r.header("Content-Range"), Some("bytes 5-8/20"), "{p}");
        assert_eq!(r.header_all("Content-Range").len(), 1, "{p}");
        // Past its end, or a full request: the origin answers.
        let r = range(&g, p, 10, 12);
        assert_eq!(
            (r.status, label(&r), r.body_str()),
            (206, "MISS", V1[10..13].into()),
            "{p}"
        );
        // The two were combined (4-12): a range inside both is now served.
        let r = range(&g, p, 4, 12);
        assert_eq!(
            (r.status, label(&r), r.body_str()),
            (206, "HIT", V1[4..13].into()),
            "{p}"
        );
        // Client no-cache and a mismatched If-Range are not answered from it.
        let r = get(&g, p, "Range: bytes=5-8\r\nCache-Control: no-cache\r\n");
        assert_eq!(label(&r), "MISS", "{p}");
        let r = get(&g, p, "Range: bytes=5-8\r\nIf-Range: \"v0\"\r\n");
        assert_ne!(label(&r), "HIT", "{p}");
    }
    assert_eq!(o.request_count(), 4 * 3);
}
