//! The JSON the status page polls (`/status/live`): cumulative counters merged from the same shard
//! snapshots `/metrics` uses; rates and percentiles are the browser's job. No I/O, no shard state.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::expose::{merge, PlaneInfo};
use super::{RouteCounts, ShardSnapshot, BUCKETS_US, LIMITERS};

/// Where the running config came from, for the page's header.
pub struct Source<'a> {
    pub file: Option<&'a str>,
    /// Admin API changes are overlaid on the file.
    pub admin: bool,
}

/// Counters only (no rates): the page takes differences between two polls, so this costs one
/// snapshot per poll like a Prometheus scrape, and nothing is kept here between polls.
pub fn live_json(info: &PlaneInfo, snaps: &[ShardSnapshot], src: &Source) -> Value {
    let m = merge(snaps);
    let mut total = RouteCounts::default();
    for c in m.routes.values() {
        total.add(c);
    }
    let routes: Vec<Value> = m
        .routes
        .iter()
        .map(|(name, c)| {
            json!({ "name": name, "classes": c.classes, "count": c.total(), "sum_us": c.sum_us })
        })
        .collect();
    let mut ups: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for ((u, n), (ok, fail, ejected)) in &m.nodes {
        let active = info.active.get(&(u.clone(), n.clone())).map(|a| a.0);
        ups.entry(u).or_default().push(json!({
            "node": n, "successes": ok, "failures": fail,
            "passive_ejected": ejected, "active_up": active,
            "up": !ejected && active.unwrap_or(true),
        }));
    }
    let upstreams: Vec<Value> = ups
        .into_iter()
        .map(|(name, nodes)| json!({ "name": name, "nodes": nodes }))
        .collect();
    let shards: Vec<Value> = snaps
        .iter()
        .map(|s| {
            json!({ "id": s.shard, "requests": s.requests, "accepted": s.accepted,
                    "active": s.active_connections })
        })
        .collect();
    let limited: BTreeMap<&str, u64> = LIMITERS.iter().copied().zip(m.rate_limited).collect();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json!({
        "t_ms": now_ms,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": info.uptime_secs,
        "config": {
            "generation": info.generation,
            "file": src.file,
            "admin_overlay": src.admin,
            "reloads_ok": info.reloads_ok,
            "reloads_failed": info.reloads_failed,
        },
        "shards_configured": info.shards,
        "shards": shards,
        "connections": { "accepted": m.accepted, "active": m.active },
        "requests": m.requests,
        "gateway_errors": m.errors,
        "responses": {
            "classes": total.classes,
            "buckets": total.buckets,
            "bucket_bounds_us": BUCKETS_US,
            "sum_us": total.sum_us,
        },
        "routes": routes,
        "upstreams": upstreams,
        "rate_limited": limited,
        "cache": {
            "hits": m.cache[0],
            "misses": m.cache[1],
            "local_lookups": m.cache[2],
            "remote_lookups": m.cache[3],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_routes_and_marks_nodes_down_by_either_check() {
        let mut c = RouteCounts {
            classes: [0, 3, 0, 1, 2],
            ..Default::default()
        };
        c.buckets[1] = 6;
        let s = ShardSnapshot {
            routes: vec![("a".into(), c.clone()), ("b".into(), c)],
            upstreams: vec![super::super::UpstreamSnap {
                name: "u".into(),
                nodes: vec![
                    super::super::NodeSnap {
                        addr: "n1".into(),
                        ejected: true,
                        ..Default::default()
                    },
                    super::super::NodeSnap {
                        addr: "n2".into(),
                        ..Default::default()
                    },
                ],
            }],
            cache: [3, 1, 2, 2],
            ..Default::default()
        };
        let mut info = PlaneInfo::default();
        info.active.insert(("u".into(), "n2".into()), (false, 0, 3));
        let v = live_json(
            &info,
            &[s],
            &Source {
                file: Some("x.toml"),
                admin: false,
            },
        );
        assert_eq!(v["responses"]["classes"], json!([0, 6, 0, 2, 4]));
        assert_eq!(v["responses"]["buckets"][1], 12);
        let nodes = &v["upstreams"][0]["nodes"];
        assert_eq!(nodes[0]["up"], false, "passively ejected");
        assert_eq!(nodes[1]["up"], false, "actively down");
        assert_eq!(nodes[1]["active_up"], false);
        assert_eq!(v["cache"]["hits"], 3);
        assert_eq!(v["config"]["file"], "x.toml");
    }
}
