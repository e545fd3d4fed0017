//! Incomplete responses (RFC 9111 3.3-3.4), in both modes: which 206s are stored as
//! partial entries (the tee that stores one) and how a later range completes them. No I/O.
//!
//! A partial entry holds one contiguous span of the representation (its `Span`) and the headers
//! of the 206 that brought it. Lookups treat it as a miss (`CacheCx::decide`); it answers only a
//! single range wholly inside its bytes (`covered`), never a full request.
//! A 206 is stored when it has exactly one `Content-Range: bytes a-b/total` (a known total that
//! fits `cache_max_body_bytes`) and a strong `ETag`, and its body is exactly `b - a + 1` bytes.
//! It is combined with the stored partial when both carry the same strong ETag and total and
//! their spans touch or overlap (the new bytes win); otherwise the new one replaces the old.
//! Once the span covers `0..total` the entry becomes an ordinary complete 200.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

pub use super::entry::Span;
use super::entry::{Entry, Policy};
use super::peer::Op;
use super::{rules, CacheCx, Instance, Pending, Tee};
use crate::http::parse::{RequestHead, ResponseHead};

/// A 206 on its way into the store: where its body goes and the partial it may complete.
#[derive(Debug)]
pub struct Merge {
    pub span: Span,
    /// The body length its Content-Range announces.
    pub len: u64,
    /// The stored partial of the same representation, if any.
    pub old: Option<Arc<Entry>>,
}

/// `bytes a-b/total` as `(a, b + 1, total)`; `None` for anything else (`*` totals,
/// unsatisfied ranges, a range past the end, garbage).
pub fn content_range(v: &[u8]) -> Option<(u64, u64, u64)> {
    let v = rules::trim(v).strip_prefix(b"bytes ")?;
    let v = std::str::from_utf8(v).ok()?;
    let (range, total) = v.trim().split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let digits = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (a, b, total) = (digits(a)?, digits(b)?, digits(total)?);
    (a <= b && b < total).then_some((a, b + 1, total))
}

/// A strong entity tag (`"..."`, not `W/"..."`), trimmed.
fn strong_etag(v: Option<&[u8]>) -> Option<&[u8]> {
    let t = rules::trim(v?);
    (t.len() >= 2 && t.starts_with(b"\"") && t.ends_with(b"\"")).then_some(t)
}

/// The partial entry (without body) a 206 becomes, and how it merges with `old` (the stored
/// partial the lookup found); `None` if this 206 must not be stored.
pub fn from_response(
    resp: &ResponseHead,
    req: &RequestHead,
    p: &Policy<'_>,
    (req_ms, now_ms): (u64, u64),
    old: Option<&Arc<Entry>>,
    max_total: usize,
) -> Option<(Entry, Merge)> {
    let ranges = resp
        .headers
        .iter()
        .filter(|h| resp.name(h).eq_ignore_ascii_case(b"content-range"))
        .count();
    if resp.status != 206 || ranges != 1 {
        return None;
    }
    let (a, b, total) = content_range(resp.header("content-range")?)?;
    if total > max_total as u64 {
        return None;
    }
    let etag = strong_etag(resp.header("etag"))?;
    let mut e = Entry::from_any_response(resp, req, p, (req_ms, now_ms))?;
    let span = Span { start: a, total };
    e.partial = Some(span);
    let old = old
        .filter(|o| {
            o.partial.is_some_and(|s| s.total == total)
                && strong_etag(o.header("etag")) == Some(etag)
                && o.same_variant(&e)
        })
        .cloned();
    Some((
        e,
        Merge {
            span,
            len: b - a,
            old,
        },
    ))
}

/// The entry to store once the 206's whole body arrived: `None` if the body is not the
/// announced range. Combined with the old partial where the spans touch; a complete result
/// is a 200 without Content-Range.
pub fn finish(mut e: Entry, body: Bytes, m: &Merge) -> Option<Entry> {
    if body.len() as u64 != m.len {
        return None;
    }
    let (mut start, mut body) = (m.span.start, body);
    if let Some((s, o)) = m
        .old
        .as_ref()
        .and_then(|o| Some((o.partial?.start, &o.body)))
    {
        if let Some((s, b)) = combine(s, o, start, &body) {
            (start, body) = (s, b);
        }
    }
    if start == 0 && body.len() as u64 == m.span.total {
        e.status = 200;
        e.partial = None;
        e.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case(b"content-range"));
    } else {
        e.partial = Some(Span {
            start,
            total: m.span.total,
        });
    }
    e.body = body;
    Some(e)
}

/// The union of `old` at `a` and `new` at `b` if they touch or overlap (`new` wins where both
/// have bytes), as its start and bytes.
fn combine(a: u64, old: &[u8], b: u64, new: &[u8]) -> Option<(u64, Bytes)> {
    let (old_end, new_end) = (a + old.len() as u64, b + new.len() as u64);
    if b > old_end || a > new_end {
        return None;
    }
    let start = a.min(b);
    let mut out = vec![0u8; (old_end.max(new_end) - start) as usize];
    let at = |x: u64| (x - start) as usize;
    out[at(a)..at(old_end)].copy_from_slice(old);
    out[at(b)..at(new_end)].copy_from_slice(new);
    Some((start, Bytes::from(out)))
}

/// The client's single range when it lies wholly inside partial entry `e`'s bytes (RFC 9111
/// 3.3: the only request a partial entry may answer), as `start..end` of the representation.
pub fn covered(req: &RequestHead, e: &Entry) -> Option<(u64, u64)> {
    let s = e.partial?;
    let (a, b) = super::entry::range(req, e, s.total).ok()??;
    (a >= s.start && b <= s.start + e.body.len() as u64).then_some((a, b))
}

/// The partial entry the lookup found, if it may answer this request: fresh enough for the
/// client and holding the whole requested range.
pub fn answers(c: &CacheCx, req: &RequestHead) -> Option<Arc<Entry>> {
    let e = c.partial.as_ref()?;
    (c.ask.accepts(e, c.req_ms) && covered(req, e).is_some()).then(|| e.clone())
}

/// A 206 to a Range request that may be stored (`Lookup::store_partial`): prepares the tee
/// that stores it as a partial entry, combined with the stored partial the lookup found; a 206
/// that may not be stored retires that partial, which it may contradict.
pub fn store(
    c: &mut CacheCx,
    inst: &Rc<Instance>,
    req: &RequestHead,
    resp: &ResponseHead,
    now: u64,
) {
    let conf = &inst.conf;
    let found = from_response(
        resp,
        req,
        &conf.policy(),
        (c.req_ms, now),
        c.partial.as_ref(),
        conf.max_body_bytes,
    );
    match found {
        Some((entry, merge)) => {
            let mut tee = Tee::new(conf.max_body_bytes, Some(merge.len));
            tee.pending = Some(Pending {
                inst: inst.clone(),
                key: c.key.clone(),
                hash: c.hash,
                entry,
                leader: None,
                merge: Some(merge),
            });
            c.tee = Some(tee);
        }
        None if c.partial.is_some() => inst.put(&c.key, c.hash, Op::Remove, None),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_takes_one_known_range_only() {
        assert_eq!(content_range(b"bytes 0-9/20"), Some((0, 10, 20)));
        assert_eq!(content_range(b" bytes 10-19/20 "), Some((10, 20, 20)));
        for bad in [
            &b"bytes 0-9/*"[..],
            b"bytes */20",
            b"bytes 5-4/20",
            b"bytes 0-20/20",
            b"bytes -1-3/20",
            b"items 0-9/20",
            b"bytes 0-9/+20",
            b"",
        ] {
            assert_eq!(
                content_range(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn spans_that_touch_or_overlap_combine_new_bytes_winning() {
        assert_eq!(
            combine(0, b"abc", 3, b"def"),
            Some((0, Bytes::from_static(b"abcdef")))
        );
        assert_eq!(
            combine(2, b"cdef", 0, b"ABC"),
            Some((0, Bytes::from_static(b"ABCdef")))
        );
        assert_eq!(
            combine(0, b"abcdef", 2, b"X"),
            Some((0, Bytes::from_static(b"abXdef")))
        );
        assert_eq!(combine(0, b"ab", 3, b"d"), None);
        assert_eq!(combine(5, b"f", 0, b"abc"), None);
    }

    fn merge(start: u64, len: u64, total: u64, old: Option<(u64, &'static [u8])>) -> Merge {
        Merge {
            span: Span { start, total },
            len,
            old: old.map(|(s, b)| {
                Arc::new(Entry {
                    status: 206,
                    body: Bytes::from_static(b),
                    partial: Some(Span { start: s, total }),
                    ..Entry::default()
                })
            }),
        }
    }

    fn part(status: u16) -> Entry {
        Entry {
            status,
            headers: vec![(
                Bytes::from_static(b"Content-Range"),
                Bytes::from_static(b"bytes 0-0/1"),
            )],
            ..Entry::default()
        }
    }

    #[test]
    fn finish_completes_keeps_partial_or_refuses_a_short_body() {
        let m = merge(4, 4, 8, Some((0, b"0123")));
        let e = finish(part(206), Bytes::from_static(b"4567"), &m).expect("stored");
        assert_eq!(
            (e.status, e.partial, &e.body[..]),
            (200, None, &b"01234567"[..])
        );
        assert!(e.header("content-range").is_none());
        let m = merge(6, 2, 8, Some((0, b"0123")));
        let e = finish(part(206), Bytes::from_static(b"67"), &m).expect("stored");
        assert_eq!(e.partial, Some(Span { start: 6, total: 8 }));
        assert_eq!((e.status, &e.body[..]), (206, &b"67"[..]));
        assert!(finish(part(206), Bytes::from_static(b"6"), &m).is_none());
    }
}
