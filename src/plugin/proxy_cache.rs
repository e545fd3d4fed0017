//! proxy-cache: config validation, per-shard cache instances, and the lookup in
//! `before_upstream` (after auth and limits have had their say). Serving, storing, coalescing
//! and purging are async and live in proxy/cached.rs; the rules in cache/.

use std::rc::Rc;
use std::sync::Arc;

use serde::Deserialize;
use xxhash_rust::xxh3::xxh3_64;

use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::consumer::Consumers;
use super::util::{cookie, duration, err, parse, query_arg, RawDur};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Reply, Spec};
use crate::cache::tier::{Backend, TierConf};
use crate::cache::{self, rules, CacheConf, CacheKeyPart, Instance, Lookup, Mode, Store, Target};
use crate::error::ConfigError;
use crate::http::parse::{Method, RequestHead};

pub const SPEC: Spec = Spec {
    name: "proxy-cache",
    priority: 1085,
    phases: phase::BEFORE_UPSTREAM,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    cache_key: Option<Vec<String>>,
    #[serde(default)]
    cache_method: Option<Vec<String>>,
    #[serde(default)]
    cache_http_status: Option<Vec<u16>>,
    #[serde(default)]
    cache_ttl: Option<u64>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
    #[serde(default)]
    max_bytes: Option<u64>,
    #[serde(default, alias = "cache_bypass")]
    bypass: Vec<String>,
    #[serde(default)]
    no_cache: Vec<String>,
    #[serde(default)]
    hide_cache_headers: bool,
    #[serde(default)]
    cache_status_header: Option<String>,
    #[serde(default)]
    client_no_cache: Option<String>,
    #[serde(default)]
    cache_set_cookie: bool,
    #[serde(default)]
    lock_timeout: Option<RawDur>,
    #[serde(default)]
    purge_allow: Vec<String>,
    #[serde(default)]
    admin_key: Option<String>,
    #[serde(default)]
    admission: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    targeted_cache_control: Option<Vec<String>>,
    l2: Option<RawTier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    backend: String,
    addr: String,
    #[serde(default)]
    timeout: Option<RawDur>,
    #[serde(default)]
    max_object_bytes: Option<u64>,
    #[serde(default)]
    ttl: Option<RawDur>,
}

/// The `l2` table: the shared tier (README "Shared cache tier").
fn tier(path: &str, r: &RawTier, owner: &str) -> Result<TierConf, ConfigError> {
    let backend = match r.backend.as_str() {
        "redis" => Backend::Redis,
        "memcached" => Backend::Memcached,
        o => {
            return Err(err(
                path,
                "l2.backend",
                format!("{o:?}: expected \"redis\" or \"memcached\""),
            ))
        }
    };
    let ok_addr = r
        .addr
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok_addr {
        return Err(err(
            path,
            "l2.addr",
            format!("{:?} is not host:port", r.addr),
        ));
    }
    let timeout = match &r.timeout {
        Some(d) => duration(path, "l2.timeout", d)?,
        None => std::time::Duration::from_millis(50),
    };
    if timeout.is_zero() || timeout > std::time::Duration::from_secs(10) {
        return Err(err(
            path,
            "l2.timeout",
            "expected more than 0 and at most 10s (a lookup that takes longer is a miss)",
        ));
    }
    let ttl_cap = match &r.ttl {
        Some(d) => duration(path, "l2.ttl", d)?,
        None => std::time::Duration::from_secs(3600),
    };
    if ttl_cap < std::time::Duration::from_secs(1) {
        return Err(err(path, "l2.ttl", "expected at least 1s"));
    }
    let max_object_bytes = r.max_object_bytes.unwrap_or(1 << 20);
    if max_object_bytes == 0 || max_object_bytes > 512 << 20 {
        return Err(err(
            path,
            "l2.max_object_bytes",
            format!("expected 1..=536870912, got {max_object_bytes}"),
        ));
    }
    Ok(TierConf {
        backend,
        addr: r.addr.clone(),
        timeout,
        max_object_bytes: max_object_bytes as usize,
        ttl_cap,
        ns: owner.to_string(),
    })
}

fn part(path: &str, key: &str, s: &str) -> Result<CacheKeyPart, ConfigError> {
    let s = s.trim();
    let v = s.trim_start_matches('$');
    Ok(match v {
        "host" => CacheKeyPart::Host,
        "request_uri" => CacheKeyPart::RequestUri,
        "uri" => CacheKeyPart::Uri,
        "scheme" => CacheKeyPart::Scheme,
        "request_method" | "method" => CacheKeyPart::Method,
        "consumer_name" | "consumer" => CacheKeyPart::Consumer,
        _ => match v.split_once(':') {
            Some(("header", h)) if !h.is_empty() => CacheKeyPart::Header(h.to_ascii_lowercase()),
            Some(("cookie", c)) if !c.is_empty() => CacheKeyPart::Cookie(c.to_string()),
            Some(("arg", a)) if !a.is_empty() => CacheKeyPart::Arg(a.to_string()),
            _ => {
                if let Some(h) = v.strip_prefix("http_").filter(|h| !h.is_empty()) {
                    CacheKeyPart::Header(h.replace('_', "-"))
                } else if let Some(c) = v.strip_prefix("cookie_").filter(|c| !c.is_empty()) {
                    CacheKeyPart::Cookie(c.to_string())
                } else if let Some(a) = v.strip_prefix("arg_").filter(|a| !a.is_empty()) {
                    CacheKeyPart::Arg(a.to_string())
                } else if !s.starts_with('$') && !s.is_empty() {
                    CacheKeyPart::Literal(s.to_string())
                } else {
                    return Err(err(path, key, format!("unknown variable {s:?}; use $host, $request_uri, $uri, $scheme, $request_method, $consumer_name, header:NAME, cookie:NAME, arg:NAME (or $http_NAME, $cookie_NAME, $arg_NAME)")));
                }
            }
        },
    })
}

fn factory(v: &toml::Value, path: &str, cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let r: Raw = parse(v, path)?;
    let parts = |key: &str, list: &[String]| {
        list.iter()
            .map(|s| part(path, key, s))
            .collect::<Result<Vec<_>, _>>()
    };
    let key = match &r.cache_key {
        Some(k) if k.is_empty() => {
            return Err(err(path, "cache_key", "must name at least one part"))
        }
        Some(k) => parts("cache_key", k)?,
        None => vec![CacheKeyPart::Host, CacheKeyPart::RequestUri],
    };
    let (mut get, mut head) = (false, false);
    for m in r
        .cache_method
        .as_deref()
        .unwrap_or(&["GET".into(), "HEAD".into()])
    {
        match m.to_ascii_uppercase().as_str() {
            "GET" => get = true,
            "HEAD" => head = true,
            other => {
                return Err(err(
                    path,
                    "cache_method",
                    format!("{other:?} cannot be cached; use GET and/or HEAD"),
                ))
            }
        }
    }
    let statuses_given = r.cache_http_status.is_some();
    let statuses = r.cache_http_status.unwrap_or_else(|| vec![200, 301, 404]);
    if let Some(s) = statuses.iter().find(|s| !(200..=599).contains(*s)) {
        return Err(err(
            path,
            "cache_http_status",
            format!("{s} is not a final status"),
        ));
    }
    if statuses.contains(&206) {
        return Err(err(
            path,
            "cache_http_status",
            "206 is not listed: with 200 listed, 206s to Range requests are kept as partial entries",
        ));
    }
    let max_bytes = r.max_bytes.unwrap_or(64 << 20);
    let max_body = r.max_body_bytes.unwrap_or(1 << 20);
    if max_bytes < 4096 {
        return Err(err(
            path,
            "max_bytes",
            format!("expected at least 4096, got {max_bytes}"),
        ));
    }
    if max_body == 0 || max_body > max_bytes {
        return Err(err(
            path,
            "max_body_bytes",
            format!("expected 1..=max_bytes ({max_bytes}), got {max_body}"),
        ));
    }
    let rfc = match r.mode.as_deref().unwrap_or("apisix") {
        "apisix" => false,
        "rfc9111" => true,
        o => {
            return Err(err(
                path,
                "mode",
                format!("{o:?}: expected \"apisix\" or \"rfc9111\""),
            ))
        }
    };
    if rfc && statuses_given {
        return Err(err(
            path,
            "cache_http_status",
            "not used with mode = \"rfc9111\" (any final status with explicit freshness may be stored)",
        ));
    }
    if rfc && r.client_no_cache.as_deref() == Some("ignore") {
        return Err(err(
            path,
            "client_no_cache",
            "mode = \"rfc9111\" always honours the client's request directives",
        ));
    }
    let targeted = r
        .targeted_cache_control
        .unwrap_or_else(|| vec!["CDN-Cache-Control".into()]);
    if let Some(t) = targeted.iter().find(|t| {
        t.is_empty()
            || t.eq_ignore_ascii_case("cache-control")
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }) {
        return Err(err(
            path,
            "targeted_cache_control",
            format!("{t:?} is not a targeted field name (such as \"CDN-Cache-Control\")"),
        ));
    }
    let honor = match r
        .client_no_cache
        .as_deref()
        .unwrap_or(if rfc { "honor" } else { "ignore" })
    {
        "ignore" => false,
        "honor" | "honour" => true,
        o => {
            return Err(err(
                path,
                "client_no_cache",
                format!("{o:?}: expected \"ignore\" or \"honor\""),
            ))
        }
    };
    let admission = match r.admission.as_deref().unwrap_or("tinylfu") {
        "tinylfu" => true,
        "lru" => false,
        o => {
            return Err(err(
                path,
                "admission",
                format!("{o:?}: expected \"tinylfu\" or \"lru\""),
            ))
        }
    };
    let mut purge_allow = Vec::new();
    for (i, a) in r.purge_allow.iter().enumerate() {
        let net = a
            .parse::<ipnet::IpNet>()
            .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                err(
                    path,
                    &format!("purge_allow[{i}]"),
                    format!("{a:?} is not an address or CIDR"),
                )
            })?;
        purge_allow.push(net);
    }
    let status_header = r
        .cache_status_header
        .unwrap_or_else(|| "X-Cache-Status".into());
    if status_header.is_empty()
        || !status_header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(err(
            path,
            "cache_status_header",
            format!("{status_header:?} is not a header name"),
        ));
    }
    let lock_timeout = match &r.lock_timeout {
        Some(d) => duration(path, "lock_timeout", d)?,
        None => std::time::Duration::from_secs(5),
    };
    let conf = CacheConf {
        key,
        get,
        head,
        statuses,
        ttl: r.cache_ttl.filter(|&t| t > 0),
        max_body_bytes: max_body as usize,
        max_bytes: max_bytes as usize,
        bypass: parts("bypass", &r.bypass)?,
        no_cache: parts("no_cache", &r.no_cache)?,
        hide_cache_headers: r.hide_cache_headers,
        status_header,
        honor_client_no_cache: honor,
        set_cookie: r.cache_set_cookie,
        lock_timeout,
        purge_allow,
        admin_key: r.admin_key.filter(|k| !k.is_empty()),
        admission,
        rfc,
        targeted: targeted.iter().map(|t| t.to_ascii_lowercase()).collect(),
        l2: match &r.l2 {
            Some(t) => Some(Arc::new(tier(path, t, &cx.owner)?)),
            None => None,
        },
    };
    Ok(Arc::new(Factory {
        // Debug output covers every setting; an equal identity on reload keeps the contents.
        ident: format!("{}|{conf:?}", cx.owner),
        conf: Arc::new(conf),
    }))
}

struct Factory {
    /// Where the table sits in the config and what it says: see `Caches::adopt`.
    ident: String,
    conf: Arc<CacheConf>,
}

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        let shards = shard.shards.max(1);
        let ident = format!("{}|{shards}", self.ident);
        let inst = shard.caches.adopt(&ident, || {
            self.instance(shard, shards, cache::key_of(&ident))
        });
        Rc::new(ProxyCache {
            inst,
            consumers: shard.consumers.clone(),
            caches: shard.caches.clone(),
        })
    }
}

impl Factory {
    fn instance(&self, shard: &ShardCx, shards: usize, key: u64) -> Rc<Instance> {
        let budget = self.conf.max_bytes / shards;
        // The sketch is sized for objects of ~1 KiB; fewer, larger objects only make it roomier.
        let expected = self.conf.admission.then_some((budget / 1024).max(64));
        Rc::new(Instance {
            conf: self.conf.clone(),
            shard: shard.id,
            store: std::cell::RefCell::new(Store::new(budget, expected)),
            inflight: Default::default(),
            flights: Default::default(),
            key,
            lane: shard.purges.clone(),
            peers: shard.caches.peers(),
            tier: self.conf.l2.as_ref().and_then(|c| shard.caches.tier(c)),
        })
    }
}

struct ProxyCache {
    inst: Rc<Instance>,
    consumers: Arc<Consumers>,
    /// This shard's caches: a miss on a key this shard owns first takes in the mail other
    /// shards sent (see `before_upstream`).
    caches: Rc<cache::Caches>,
}

/// True when any condition variable is present, non-empty and not "0" (nginx's rule).
fn any_set(parts: &[CacheKeyPart], req: &RequestHead) -> bool {
    parts.iter().any(|p| {
        let v = match p {
            CacheKeyPart::Header(h) => req.header(h),
            CacheKeyPart::Cookie(c) => req.header("cookie").and_then(|v| cookie(v, c.as_bytes())),
            CacheKeyPart::Arg(a) => query_arg(req.query(), a.as_bytes()),
            CacheKeyPart::Literal(l) => Some(l.as_bytes()),
            _ => None,
        };
        v.is_some_and(|v| !v.is_empty() && v != b"0")
    })
}

impl ProxyCache {
    fn key(&self, req: &RequestHead, cx: &Ctx, out: &mut Vec<u8>) {
        out.clear();
        for (i, p) in self.inst.conf.key.iter().enumerate() {
            if i > 0 {
                // A separator no header or URI byte can be, so parts cannot run together.
                out.push(0x1f);
            }
            match p {
                CacheKeyPart::Host => out.extend_from_slice(&req.host().to_ascii_lowercase()),
                CacheKeyPart::RequestUri => out.extend_from_slice(req.path_and_query()),
                CacheKeyPart::Uri => out.extend_from_slice(req.path()),
                CacheKeyPart::Scheme => out.extend_from_slice(b"http"),
                CacheKeyPart::Method => out.extend_from_slice(b"GET"),
                CacheKeyPart::Consumer => {
                    out.extend_from_slice(self.consumers.name(cx.consumer).unwrap_or("").as_bytes())
                }
                CacheKeyPart::Header(h) => out.extend_from_slice(req.header(h).unwrap_or_default()),
                CacheKeyPart::Cookie(c) => out.extend_from_slice(
                    req.header("cookie")
                        .and_then(|v| cookie(v, c.as_bytes()))
                        .unwrap_or_default(),
                ),
                CacheKeyPart::Arg(a) => {
                    out.extend_from_slice(query_arg(req.query(), a.as_bytes()).unwrap_or_default())
                }
                CacheKeyPart::Literal(l) => out.extend_from_slice(l.as_bytes()),
            }
        }
    }

    fn purge(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let conf = &self.inst.conf;
        if !conf.may_purge(cx.client_ip, req.header("x-api-key")) {
            return Flow::Respond(Reply::json_message(
                403,
                "PURGE is not allowed from this address",
            ));
        }
        let mut key = std::mem::take(&mut cx.private.cache.key);
        self.key(req, cx, &mut key);
        let target = if let Some(tag) = req.header("surrogate-key") {
            Target::Tag(rules::trim(tag).to_vec())
        } else if key.last() == Some(&b'*') {
            key.pop();
            Target::Prefix(key.clone())
        } else {
            Target::Key(key.clone())
        };
        cx.private.cache.key = key;
        cx.private.cache.mode = Mode::Purge(target);
        cx.private.cache.inst = Some(self.inst.clone());
        Flow::Continue
    }
}

impl Plugin for ProxyCache {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn before_upstream(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let conf = &self.inst.conf;
        let cacheable = match req.method {
            Method::Get => conf.get,
            Method::Head => conf.head,
            Method::Other if req.method_bytes() == b"PURGE" => return self.purge(req, cx),
            _ => false,
        };
        let c = &mut cx.private.cache;
        c.inst = Some(self.inst.clone());
        let mut key = std::mem::take(&mut c.key);
        self.key(req, cx, &mut key);
        let c = &mut cx.private.cache;
        c.key = key;
        c.hash = xxh3_64(&c.key);
        if !cacheable {
            // Unsafe methods invalidate what is stored for the URI (RFC 9111 4.4).
            c.mode = if matches!(
                req.method,
                Method::Post | Method::Put | Method::Delete | Method::Patch
            ) {
                Mode::Invalidate
            } else {
                Mode::Off
            };
            if matches!(c.mode, Mode::Off) {
                c.inst = None;
            }
            return Flow::Continue;
        }
        let req_cc = rules::CacheControl::parse(
            req.headers
                .iter()
                .filter(|h| req.name(h).eq_ignore_ascii_case(b"cache-control"))
                .map(|h| req.value(h)),
        );
        let client_no_cache = conf.honor_client_no_cache
            && (req_cc.no_cache
                || req_cc.max_age == Some(0)
                || (req.header("cache-control").is_none()
                    && req
                        .header("pragma")
                        .is_some_and(|p| p.eq_ignore_ascii_case(b"no-cache"))));
        // The standards mode honours every request directive (RFC 9111 5.2.1).
        let rfc = |v: Option<u64>| v.filter(|_| conf.rfc);
        let ranged = req.header("range").is_some();
        // Never fetched, so never a fetch for others to wait on.
        let only_if_cached = conf.rfc && req_cc.only_if_cached;
        let storable = req.method == Method::Get
            && !req_cc.no_store
            && !only_if_cached
            && !any_set(&conf.no_cache, req);
        c.store = storable && !ranged;
        c.req_ms = cache::now_ms();
        c.ask = Lookup {
            client_no_cache,
            ranged,
            // The default mode stores parts only of what it would store whole (a 200).
            store_partial: ranged && storable && (conf.rfc || conf.statuses.contains(&200)),
            authorized: req.header("authorization").is_some(),
            max_age: rfc(req_cc.max_age),
            max_stale: rfc(req_cc.max_stale),
            min_fresh: rfc(req_cc.min_fresh),
            only_if_cached,
        };
        if !self.inst.is_local(c.hash) {
            // Another shard owns the key: bypass is decided here, the rest after asking it.
            c.mode = if any_set(&conf.bypass, req) {
                Mode::Bypass
            } else {
                Mode::Remote
            };
            return Flow::Continue;
        }
        let mut store = self.inst.store.borrow_mut();
        store.touch(c.hash);
        if any_set(&conf.bypass, req) {
            c.mode = Mode::Bypass;
            return Flow::Continue;
        }
        let mut found = store.get(&c.key, |e| e.matches(req));
        drop(store);
        if found.is_none() {
            // Another shard may have just sent this key's entry (its client already has the
            // response) while this shard's control loop has not run yet: take in the mail
            // before calling it a miss. Only on a miss: a hit costs nothing more.
            self.caches.deliver(&self.inst.lane);
            found = self.inst.store.borrow_mut().get(&c.key, |e| e.matches(req));
        }
        let contains =
            found.is_some() || (c.ask.authorized && self.inst.store.borrow().contains(&c.key));
        c.decide(found, contains);
        Flow::Continue
    }
}

#[cfg(test)]
#[path = "proxy_cache_tests.rs"]
mod tests;
