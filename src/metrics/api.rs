//! Per-API counters for `/metrics` (rendered by `expose.rs`), summed on the status thread from
//! the per-route counters shards keep. Must not count anything itself: the request path stays.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::RouteCounts;

/// One API version and the names of the routes made from its document.
#[derive(Debug, Clone)]
pub struct ApiRoutes {
    /// `name@version` (or `name`).
    pub id: String,
    pub routes: Arc<[Box<str>]>,
}

/// Sums each API's routes out of the merged per-route counters.
pub fn sums(
    apis: &[ApiRoutes],
    routes: &BTreeMap<String, RouteCounts>,
) -> Vec<(String, RouteCounts)> {
    apis.iter()
        .map(|a| {
            let mut c = RouteCounts::default();
            for r in a.routes.iter() {
                if let Some(rc) = routes.get(&**r) {
                    c.add(rc);
                }
            }
            (a.id.clone(), c)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_an_apis_routes_only() {
        let mut routes = BTreeMap::new();
        let one = |class: usize, bucket: usize| {
            let mut c = RouteCounts::default();
            c.classes[class] = 1;
            c.buckets[bucket] = 1;
            c.sum_us = 700;
            c
        };
        routes.insert("p@v1.list".to_string(), one(1, 1));
        routes.insert("p@v1: 405 /v1/pets".to_string(), one(3, 0));
        routes.insert("p@v1.gone".to_string(), one(4, 2));
        routes.insert("other".to_string(), one(4, 2));
        let apis = [ApiRoutes {
            id: "p@v1".into(),
            routes: vec![
                "p@v1.list".into(),
                "p@v1: 405 /v1/pets".into(),
                "p@v1.none".into(),
            ]
            .into(),
        }];
        let s = sums(&apis, &routes);
        assert_eq!(s[0].1.classes, [0, 1, 0, 1, 0]);
        assert_eq!(s[0].1.sum_us, 1400);
    }
}
