//! Merges shard snapshots and renders them: Prometheus text format 0.0.4 for `/metrics` (control
//! threads' families from control.rs), JSON for `/status`. Status thread only; no shard state.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::control::{fleet, loggers, ocsp, oidc, source_metrics};
use super::names::*;
use super::text::{family, histogram, label, CLASSES};
use super::{RouteCounts, ShardSnapshot};

/// Gateway-wide facts the status thread knows itself (not counted by shards).
#[derive(Debug, Clone, Default)]
pub struct PlaneInfo {
    pub generation: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub shards: usize,
    pub uptime_secs: u64,
    /// Active health check results: (upstream, node) -> (up, checks passed, checks failed).
    pub active: BTreeMap<(String, String), (bool, u64, u64)>,
    /// `[config_source]`: the etcd watch's progress (None: the file is the only source).
    pub source: Option<super::source::SourceInfo>,
    /// `[[apis]]` and their routes, for the per-API series.
    pub apis: Vec<super::api::ApiRoutes>,
}

/// Sums over shards, keyed so the output order is stable.
#[derive(Default)]
pub(super) struct Merged {
    pub(super) accepted: u64,
    pub(super) requests: u64,
    pub(super) errors: u64,
    pub(super) hold_races: u64,
    pub(super) active: u64,
    pub(super) parked: u64,
    pub(super) routes: BTreeMap<String, RouteCounts>,
    /// (upstream, node) -> (successes, failures, ejected on any shard)
    pub(super) nodes: BTreeMap<(String, String), (u64, u64, bool)>,
    pub(super) log_lines: u64,
    pub(super) log_dropped: u64,
    pub(super) rate_limited: [u64; 3],
    pub(super) cache: [u64; 4],
    pub(super) exact: super::fleet::ExactCounts,
    pub(super) invalid: BTreeMap<String, [u64; 2]>,
    pub(super) deprecated: BTreeMap<(String, String), u64>,
}

pub(super) fn merge(snaps: &[ShardSnapshot]) -> Merged {
    let mut m = Merged::default();
    for s in snaps {
        m.accepted += s.accepted;
        m.requests += s.requests;
        m.errors += s.errors;
        m.hold_races += s.hold_races;
        m.active += s.active_connections;
        m.parked += s.parked_connections;
        m.log_lines += s.log_lines;
        m.log_dropped += s.log_dropped;
        for (a, b) in m.rate_limited.iter_mut().zip(s.rate_limited) {
            *a += b;
        }
        for (api, consumer, n) in &s.deprecated {
            *m.deprecated
                .entry((api.clone(), consumer.clone()))
                .or_default() += n;
        }
        for (api, [r, f]) in &s.invalid {
            let e = m.invalid.entry(api.clone()).or_default();
            e[0] += r;
            e[1] += f;
        }
        for (a, b) in m.cache.iter_mut().zip(s.cache) {
            *a += b;
        }
        for (a, b) in m.exact.calls.iter_mut().zip(s.exact.calls) {
            *a += b;
        }
        m.exact.state = m.exact.state.max(s.exact.state);
        for (name, c) in &s.routes {
            m.routes.entry(name.clone()).or_default().add(c);
        }
        for u in &s.upstreams {
            for n in &u.nodes {
                let e = m.nodes.entry((u.name.clone(), n.addr.clone())).or_default();
                e.0 += n.successes;
                e.1 += n.failures;
                e.2 |= n.ejected;
            }
        }
    }
    m
}

/// The `/metrics` body.
pub fn prometheus(info: &PlaneInfo, snaps: &[ShardSnapshot]) -> String {
    let m = merge(snaps);
    let mut o = String::with_capacity(4096 + m.routes.len() * 1200);
    family(&mut o, BUILD_INFO, "gauge", "Build information; always 1.");
    let _ = writeln!(
        o,
        "{BUILD_INFO}{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    family(
        &mut o,
        CONFIG_GENERATION,
        "gauge",
        "Generation of the configuration the shards run (starts at 1).",
    );
    let _ = writeln!(o, "{CONFIG_GENERATION} {}", info.generation);
    family(
        &mut o,
        CONFIG_RELOADS,
        "counter",
        "Configuration changes applied (SIGHUP, admin API) by result.",
    );
    let _ = writeln!(o, "{CONFIG_RELOADS}{{result=\"ok\"}} {}", info.reloads_ok);
    let _ = writeln!(
        o,
        "{CONFIG_RELOADS}{{result=\"error\"}} {}",
        info.reloads_failed
    );
    if let Some(src) = &info.source {
        source_metrics(&mut o, src);
    }
    family(&mut o, SHARDS, "gauge", "Shards (worker threads) running.");
    let _ = writeln!(o, "{SHARDS} {}", info.shards);
    family(
        &mut o,
        SHARDS_REPORTING,
        "gauge",
        "Shards whose counters are included in this scrape.",
    );
    let _ = writeln!(o, "{SHARDS_REPORTING} {}", snaps.len());
    family(
        &mut o,
        CONNECTIONS_ACCEPTED,
        "counter",
        "Client connections accepted.",
    );
    let _ = writeln!(o, "{CONNECTIONS_ACCEPTED} {}", m.accepted);
    family(
        &mut o,
        CONNECTIONS_ACTIVE,
        "gauge",
        "Client connections open now.",
    );
    let _ = writeln!(o, "{CONNECTIONS_ACTIVE} {}", m.active);
    family(
        &mut o,
        CONNECTIONS_PARKED,
        "gauge",
        "Of the open client connections, idle plain ones parked with no task (counted in \
         ringway_connections_active too).",
    );
    let _ = writeln!(o, "{CONNECTIONS_PARKED} {}", m.parked);
    family(
        &mut o,
        SHARD_REQUESTS,
        "counter",
        "Requests read, per shard.",
    );
    for s in snaps {
        let _ = writeln!(
            o,
            "{SHARD_REQUESTS}{{shard=\"{}\"}} {}",
            s.shard, s.requests
        );
    }
    family(
        &mut o,
        GATEWAY_ERRORS,
        "counter",
        "Error responses the gateway generated itself (4xx/5xx not from an upstream).",
    );
    let _ = writeln!(o, "{GATEWAY_ERRORS} {}", m.errors);
    family(
        &mut o,
        HOLD_RACES,
        "counter",
        "Keep-alive connections closed because a request arrived as their idle hold's read was \
         cancelled (the bytes were lost with it; the client sees a close and retries).",
    );
    let _ = writeln!(o, "{HOLD_RACES} {}", m.hold_races);
    family(
        &mut o,
        HTTP_REQUESTS,
        "counter",
        "Requests answered, by route name (\"\" = no route) and status class.",
    );
    for (route, c) in &m.routes {
        let r = label(route);
        for (i, class) in CLASSES.iter().enumerate() {
            if c.classes[i] > 0 {
                let _ = writeln!(
                    o,
                    "{HTTP_REQUESTS}{{route=\"{r}\",code=\"{class}\"}} {}",
                    c.classes[i]
                );
            }
        }
    }
    family(
        &mut o,
        HTTP_DURATION,
        "histogram",
        "Time from request head read to response written, by route.",
    );
    for (route, c) in &m.routes {
        histogram(
            &mut o,
            HTTP_DURATION,
            &format!("route=\"{}\"", label(route)),
            c,
        );
    }
    api_series(&mut o, &super::api::sums(&info.apis, &m.routes));
    family(
        &mut o,
        UPSTREAM_RESPONSES,
        "counter",
        "Upstream exchanges by upstream, node and result.",
    );
    for ((u, n), (ok, fail, _)) in &m.nodes {
        let (u, n) = (label(u), label(n));
        let _ = writeln!(
            o,
            "{UPSTREAM_RESPONSES}{{upstream=\"{u}\",node=\"{n}\",result=\"success\"}} {ok}"
        );
        let _ = writeln!(
            o,
            "{UPSTREAM_RESPONSES}{{upstream=\"{u}\",node=\"{n}\",result=\"failure\"}} {fail}"
        );
    }
    family(&mut o, UPSTREAM_NODE_UP, "gauge", "1 if the node takes traffic: not passively ejected on any shard and not failing active checks.");
    for ((u, n), (_, _, ejected)) in &m.nodes {
        let active_up = info
            .active
            .get(&(u.clone(), n.clone()))
            .map_or(true, |a| a.0);
        let up = u8::from(!ejected && active_up);
        let _ = writeln!(
            o,
            "{UPSTREAM_NODE_UP}{{upstream=\"{}\",node=\"{}\"}} {up}",
            label(u),
            label(n)
        );
    }
    family(
        &mut o,
        ACTIVE_CHECKS,
        "counter",
        "Active health check probes by upstream, node and result.",
    );
    for ((u, n), (_, pass, fail)) in &info.active {
        let (u, n) = (label(u), label(n));
        let _ = writeln!(
            o,
            "{ACTIVE_CHECKS}{{upstream=\"{u}\",node=\"{n}\",result=\"pass\"}} {pass}"
        );
        let _ = writeln!(
            o,
            "{ACTIVE_CHECKS}{{upstream=\"{u}\",node=\"{n}\",result=\"fail\"}} {fail}"
        );
    }
    family(
        &mut o,
        ACCESSLOG_LINES,
        "counter",
        "Access log lines handed to the writer.",
    );
    let _ = writeln!(o, "{ACCESSLOG_LINES} {}", m.log_lines);
    family(
        &mut o,
        ACCESSLOG_DROPPED,
        "counter",
        "Access log lines dropped because the writer fell behind (or a syslog collector stayed unreachable past the writer's buffer).",
    );
    let syslog_dropped =
        crate::accesslog::SYSLOG_DROPPED.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(o, "{ACCESSLOG_DROPPED} {}", m.log_dropped + syslog_dropped);
    family(
        &mut o,
        RATE_LIMITED,
        "counter",
        "Requests rejected by a rate-limit plugin (limit-count, limit-req, limit-conn).",
    );
    for (plugin, n) in super::LIMITERS.iter().zip(m.rate_limited) {
        let _ = writeln!(o, "{RATE_LIMITED}{{plugin=\"{plugin}\"}} {n}");
    }
    if !m.deprecated.is_empty() {
        family(
            &mut o,
            API_DEPRECATED,
            "counter",
            "Calls to deprecated API versions, by API (name@version) and consumer (\"\" when none was identified).",
        );
        for ((api, consumer), n) in &m.deprecated {
            let (api, consumer) = (label(api), label(consumer));
            let _ = writeln!(
                o,
                "{API_DEPRECATED}{{api=\"{api}\",consumer=\"{consumer}\"}} {n}"
            );
        }
    }
    if !m.invalid.is_empty() {
        family(
            &mut o,
            API_INVALID,
            "counter",
            "Requests that did not match their OpenAPI operation, by API and what was done (rejected: validate = \"enforce\", forwarded: \"monitor\").",
        );
        for (api, [r, f]) in &m.invalid {
            let api = label(api);
            let _ = writeln!(o, "{API_INVALID}{{api=\"{api}\",action=\"rejected\"}} {r}");
            let _ = writeln!(o, "{API_INVALID}{{api=\"{api}\",action=\"forwarded\"}} {f}");
        }
    }
    family(
        &mut o,
        CACHE_RESPONSES,
        "counter",
        "proxy-cache answers: hit (from a stored entry: HIT, STALE, REVALIDATED) or miss (from the origin: MISS, EXPIRED, BYPASS).",
    );
    let _ = writeln!(o, "{CACHE_RESPONSES}{{result=\"hit\"}} {}", m.cache[0]);
    let _ = writeln!(o, "{CACHE_RESPONSES}{{result=\"miss\"}} {}", m.cache[1]);
    family(
        &mut o,
        CACHE_LOOKUPS,
        "counter",
        "proxy-cache lookups: in the store of the shard that got the request (it owns the key) or asked of the owner on another shard.",
    );
    let _ = writeln!(o, "{CACHE_LOOKUPS}{{owner=\"local\"}} {}", m.cache[2]);
    let _ = writeln!(o, "{CACHE_LOOKUPS}{{owner=\"remote\"}} {}", m.cache[3]);
    loggers(&mut o);
    oidc(&mut o);
    fleet(&mut o, m.exact);
    ocsp(&mut o);
    for (name, kind, help, v) in super::tier::families() {
        family(&mut o, name, kind, help);
        let _ = writeln!(o, "{name} {v}");
    }
    o
}

/// The `/status` body.
pub fn status_json(info: &PlaneInfo, snaps: &[ShardSnapshot]) -> serde_json::Value {
    let m = merge(snaps);
    let shards: Vec<_> = snaps
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.shard, "generation": s.generation, "accepted": s.accepted,
                "requests": s.requests, "active_connections": s.active_connections,
            })
        })
        .collect();
    let mut ups: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for ((u, n), (ok, fail, ejected)) in &m.nodes {
        let active = info.active.get(&(u.clone(), n.clone()));
        ups.entry(u.clone()).or_default().push(serde_json::json!({
            "node": n, "successes": ok, "failures": fail, "passively_ejected": ejected,
            "active_healthy": active.map(|a| a.0),
            "healthy": !ejected && active.map_or(true, |a| a.0),
        }));
    }
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": info.uptime_secs,
        "config_generation": info.generation,
        "reloads": { "ok": info.reloads_ok, "error": info.reloads_failed },
        "shards": info.shards,
        "shards_reporting": snaps.len(),
        "connections": { "accepted": m.accepted, "active": m.active },
        "requests": m.requests,
        "gateway_errors": m.errors,
        "per_shard": shards,
        "upstreams": ups,
        "config_source": info.source.as_ref().map(|s| serde_json::json!({
            "kind": s.kind, "revision": s.revision, "watch": s.state.name(),
            "seconds_since_last_event": s.last_event.map(|t| t.elapsed().as_secs_f64()),
            "events": { "applied": s.events_applied, "refused": s.events_refused },
            "resyncs": s.resyncs, "started_from_saved": s.from_saved,
        })),
    })
}

/// Writes the three families (every configured API, zero or not, so alerts see the series).
pub(super) fn api_series(o: &mut String, apis: &[(String, RouteCounts)]) {
    if apis.is_empty() {
        return;
    }
    family(
        o,
        API_REQUESTS,
        "counter",
        "Requests answered per API (name@version) and status class, the gateway's own answers included.",
    );
    for (id, c) in apis {
        let a = label(id);
        for (i, class) in CLASSES.iter().enumerate() {
            let _ = writeln!(
                o,
                "{API_REQUESTS}{{api=\"{a}\",code=\"{class}\"}} {}",
                c.classes[i]
            );
        }
    }
    family(
        o,
        API_ERRORS,
        "counter",
        "5xx answers per API (name@version).",
    );
    for (id, c) in apis {
        let _ = writeln!(o, "{API_ERRORS}{{api=\"{}\"}} {}", label(id), c.classes[4]);
    }
    family(
        o,
        API_DURATION,
        "histogram",
        "Time from request head read to response written, per API (name@version).",
    );
    for (id, c) in apis {
        histogram(o, API_DURATION, &format!("api=\"{}\"", label(id)), c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_series_have_the_api_label() {
        let mut c = RouteCounts::default();
        c.classes[1] = 1;
        c.classes[3] = 1;
        c.buckets[0] = 1;
        c.buckets[1] = 1;
        c.sum_us = 1400;
        let mut o = String::new();
        api_series(&mut o, &[("p@v1".to_string(), c)]);
        for want in [
            "ringway_api_requests_total{api=\"p@v1\",code=\"2xx\"} 1\n",
            "ringway_api_errors_total{api=\"p@v1\"} 0\n",
            "ringway_api_request_duration_seconds_bucket{api=\"p@v1\",le=\"0.001\"} 2\n",
            "ringway_api_request_duration_seconds_count{api=\"p@v1\"} 2\n",
        ] {
            assert!(o.contains(want), "{want} in {o}");
        }
    }

    #[test]
    fn merges_shards() {
        let mut c = RouteCounts::default();
        c.classes[1] = 2;
        c.buckets[0] = 2;
        let s = ShardSnapshot {
            routes: vec![("r".into(), c)],
            requests: 2,
            hold_races: 1,
            parked_connections: 3,
            ..Default::default()
        };
        let text = prometheus(&PlaneInfo::default(), &[s.clone(), s]);
        assert!(text.contains("ringway_connections_closed_on_hold_race_total 2\n"));
        assert!(text.contains("ringway_connections_parked 6\n"));
        assert!(text.contains("ringway_http_requests_total{route=\"r\",code=\"2xx\"} 4\n"));
        assert!(text.contains("ringway_http_request_duration_seconds_count{route=\"r\"} 4\n"));
    }
}
