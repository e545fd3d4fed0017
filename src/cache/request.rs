//! The request's part in a cache lookup: what the client asked of a stored response
//! (RFC 9111 5.2.1 request directives) and whether a given entry satisfies it. Pure, no clock.

use super::Entry;

/// The request's part in the lookup decision.
#[derive(Debug, Default, Clone, Copy)]
pub struct Lookup {
    /// The client's no-cache / max-age=0 (by configuration in the default mode; always in
    /// `rfc9111` mode, with `Pragma: no-cache` when there is no Cache-Control).
    pub client_no_cache: bool,
    pub ranged: bool,
    /// A 206 answering this Range request may be stored as a partial entry.
    pub store_partial: bool,
    pub authorized: bool,
    /// `rfc9111` mode only: the request's `max-age`, `max-stale` (bare: `u64::MAX`) and
    /// `min-fresh` in seconds, and `only-if-cached`.
    pub max_age: Option<u64>,
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
}

impl Lookup {
    /// `e` may answer without contacting the origin: fresh (or stale within the client's
    /// `max-stale` when the response allows serving stale), no older than the client's
    /// `max-age` (`max-age=0` always revalidates), fresh for `min-fresh` more seconds.
    pub fn accepts(&self, e: &Entry, now_ms: u64) -> bool {
        if self.client_no_cache || e.no_cache {
            return false;
        }
        let age = e.age_ms(now_ms);
        if self
            .max_age
            .is_some_and(|ma| age >= ma.saturating_mul(1000))
        {
            return false;
        }
        if let Some(mf) = self.min_fresh {
            if e.lifetime_ms.saturating_sub(age) < mf.saturating_mul(1000).max(1) {
                return false;
            }
        }
        if age < e.lifetime_ms {
            return true;
        }
        self.max_stale.is_some_and(|ms| {
            !e.no_stale && age < e.lifetime_ms.saturating_add(ms.saturating_mul(1000))
        })
    }

    /// A stale entry may be served within its stale-while-revalidate window: not when the
    /// client asked for a fresh or young enough response.
    pub fn may_refresh_stale(&self) -> bool {
        !self.client_no_cache && self.max_age.is_none() && self.min_fresh.is_none()
    }
}
