//! Admin-API purges on one shard: turns a URL, URL prefix or Surrogate-Key tag into each local
//! cache's own key (its `cache_key` parts) and removes matches. Runs on the shard's thread
//! when its control channel delivers the purge; must not reach across shards itself (shard 0
//! hands each purge to a cache's shared tier, which reaches the other nodes).

use super::{CacheKeyPart, Caches, Target};

/// What the admin API asked to purge, before it is turned into each cache's key.
#[derive(Debug, Clone)]
pub enum AdminTarget {
    /// One URL: `host` as clients send it in `Host`, `uri` path and query.
    Url { host: String, uri: String },
    /// Every URL of `host` whose path (and query) starts with `prefix`.
    Prefix { host: String, prefix: String },
    /// Every entry whose response listed `tag` in `Surrogate-Key`.
    Tag(String),
}

/// What one shard removed.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdminAck {
    pub shard: usize,
    /// Caches (proxy-cache tables) on this shard.
    pub caches: usize,
    /// Caches whose `cache_key` could not be built from a URL alone (a header, cookie, query
    /// argument or consumer before the URI part): left alone for URL and prefix purges.
    pub skipped: usize,
    pub removed: usize,
}

/// The `Target` for one cache, or `None` if its key needs request parts the URL lacks.
pub(crate) fn target_for(parts: &[CacheKeyPart], t: &AdminTarget) -> Option<Target> {
    let (host, uri, prefix) = match t {
        AdminTarget::Tag(tag) => return Some(Target::Tag(tag.as_bytes().to_vec())),
        AdminTarget::Url { host, uri } => (host, uri.as_str(), false),
        AdminTarget::Prefix { host, prefix } => (host, prefix.as_str(), true),
    };
    let mut key = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // The separator `ProxyCache::key` puts between parts.
            key.push(0x1f);
        }
        match p {
            CacheKeyPart::Host => key.extend_from_slice(host.to_ascii_lowercase().as_bytes()),
            CacheKeyPart::Scheme => key.extend_from_slice(b"http"),
            CacheKeyPart::Method => key.extend_from_slice(b"GET"),
            CacheKeyPart::Literal(l) => key.extend_from_slice(l.as_bytes()),
            CacheKeyPart::RequestUri | CacheKeyPart::Uri => {
                let u = match p {
                    CacheKeyPart::Uri if !prefix => uri.split('?').next().unwrap_or(uri),
                    _ => uri,
                };
                key.extend_from_slice(u.as_bytes());
                let rest = parts.len() - i - 1;
                return Some(if prefix {
                    Target::Prefix(key)
                } else if rest == 0 {
                    Target::Key(key)
                } else {
                    // Later parts (a header, a cookie...) split one URL into several keys:
                    // the URL's entries are exactly those that continue after a separator.
                    key.push(0x1f);
                    Target::Prefix(key)
                });
            }
            CacheKeyPart::Consumer
            | CacheKeyPart::Header(_)
            | CacheKeyPart::Cookie(_)
            | CacheKeyPart::Arg(_) => return None,
        }
    }
    // A key without any URI part cannot be told apart by URL.
    None
}

/// Purges `t` from every cache on this shard (current and still-draining generations).
pub fn purge_here(caches: &Caches, shard: usize, t: &AdminTarget) -> AdminAck {
    let mut ack = AdminAck {
        shard,
        ..AdminAck::default()
    };
    let mut tiers: Vec<&str> = Vec::new();
    let live = caches.live();
    for inst in &live {
        ack.caches += 1;
        match target_for(&inst.conf.key, t) {
            Some(target) => {
                ack.removed += inst.purge_local(&target);
                // The shared tier and the other nodes: told once per node (by shard 0).
                if let Some(tier) = inst.tier.as_ref().filter(|_| shard == 0) {
                    if !tiers.contains(&&*tier.conf.ns) {
                        tiers.push(&tier.conf.ns);
                        tier.purge(&target);
                    }
                }
            }
            None => ack.skipped += 1,
        }
    }
    ack
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(uri: &str) -> AdminTarget {
        AdminTarget::Url {
            host: "Example.COM".into(),
            uri: uri.into(),
        }
    }

    #[test]
    fn keys_match_what_requests_build() {
        let default = [CacheKeyPart::Host, CacheKeyPart::RequestUri];
        let k = |t: Option<Target>| match t {
            Some(Target::Key(k)) => ("key", k),
            Some(Target::Prefix(k)) => ("prefix", k),
            _ => ("other", Vec::new()),
        };
        assert_eq!(
            k(target_for(&default, &url("/a?b=1"))),
            ("key", b"example.com\x1f/a?b=1".to_vec())
        );
        let by_path = [CacheKeyPart::Host, CacheKeyPart::Uri];
        assert_eq!(
            k(target_for(&by_path, &url("/a?b=1"))),
            ("key", b"example.com\x1f/a".to_vec())
        );
        let varied = [
            CacheKeyPart::Host,
            CacheKeyPart::RequestUri,
            CacheKeyPart::Cookie("l".into()),
        ];
        assert_eq!(
            k(target_for(&varied, &url("/a"))),
            ("prefix", b"example.com\x1f/a\x1f".to_vec())
        );
        let pre = AdminTarget::Prefix {
            host: "h".into(),
            prefix: "/p/".into(),
        };
        assert_eq!(
            k(target_for(&default, &pre)),
            ("prefix", b"h\x1f/p/".to_vec())
        );
        let by_header = [CacheKeyPart::Header("x-t".into()), CacheKeyPart::RequestUri];
        assert!(target_for(&by_header, &url("/a")).is_none());
        assert!(target_for(&[CacheKeyPart::Host], &url("/a")).is_none());
        assert!(matches!(
            target_for(&by_header, &AdminTarget::Tag("g".into())),
            Some(Target::Tag(_))
        ));
    }
}
