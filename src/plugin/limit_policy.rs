//! The `policy` keys limit-count and limit-req share (`policy`, `redis`, `redis_cluster`,
//! `sync_interval`, `on_redis_error`), validated into a `FleetSpec`. Config only: no I/O.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::util::{duration, err, RawDur};
use crate::error::ConfigError;
use crate::limit::fleet::{FleetSpec, Kind, OnError, Store};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConf {
    addr: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    database: Option<i64>,
    #[serde(default)]
    timeout: Option<RawDur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConf {
    nodes: Vec<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    timeout: Option<RawDur>,
}

/// The policy keys as they appear in the plugin's table.
pub struct PolicyKeys<'a> {
    pub policy: Option<&'a str>,
    pub redis: Option<&'a RedisConf>,
    pub redis_cluster: Option<&'a ClusterConf>,
    pub sync_interval: Option<&'a RawDur>,
    pub on_redis_error: Option<&'a str>,
}

/// Default exchange interval with the store.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(50);
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

/// `host:port` with a numeric port.
fn addr(path: &str, key: &str, a: &str) -> Result<String, ConfigError> {
    let ok = a
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(a.to_string())
    } else {
        Err(err(path, key, format!("expected \"host:port\", got {a:?}")))
    }
}

fn timeout(path: &str, v: Option<&RawDur>) -> Result<Duration, ConfigError> {
    let t = match v {
        Some(d) => duration(path, "timeout", d)?,
        None => DEFAULT_TIMEOUT,
    };
    if t.as_millis() < 1 || t.as_secs() > 10 {
        return Err(err(path, "timeout", "expected 1ms..=10s"));
    }
    Ok(t)
}

/// `None` for `policy = "local"` (or no policy); the cluster-wide spec otherwise. `ns` names the
/// limit in the store; `kind` carries its parameters.
pub fn fleet(
    path: &str,
    keys: PolicyKeys<'_>,
    ns: String,
    kind: Kind,
) -> Result<Option<Arc<FleetSpec>>, ConfigError> {
    let policy = keys.policy.unwrap_or("local");
    if !matches!(policy, "local" | "redis" | "redis-cluster") {
        return Err(err(
            path,
            "policy",
            format!("expected \"local\", \"redis\" or \"redis-cluster\", got {policy:?}"),
        ));
    }
    if policy == "local" {
        if keys.redis.is_some() || keys.redis_cluster.is_some() || keys.on_redis_error.is_some() {
            return Err(err(
                path,
                "policy",
                "redis, redis_cluster and on_redis_error need policy = \"redis\" or \"redis-cluster\"",
            ));
        }
        return Ok(None);
    }
    let store = match (policy, keys.redis, keys.redis_cluster) {
        ("redis", Some(r), None) => {
            let at = format!("{path}.redis");
            let database = r.database.unwrap_or(0);
            if !(0..=1_000_000).contains(&database) {
                return Err(err(&at, "database", format!("expected 0 or more, got {database}")));
            }
            (
                Store::Redis {
                    addr: addr(&at, "addr", &r.addr)?,
                    password: r.password.clone(),
                    database,
                },
                timeout(&at, r.timeout.as_ref())?,
            )
        }
        ("redis-cluster", None, Some(c)) => {
            let at = format!("{path}.redis_cluster");
            if c.nodes.is_empty() {
                return Err(err(&at, "nodes", "list at least one \"host:port\" of the cluster"));
            }
            let nodes = c
                .nodes
                .iter()
                .map(|n| addr(&at, "nodes", n))
                .collect::<Result<Vec<_>, _>>()?;
            (
                Store::Cluster {
                    nodes,
                    password: c.password.clone(),
                },
                timeout(&at, c.timeout.as_ref())?,
            )
        }
        ("redis", _, _) => {
            return Err(err(
                path,
                "redis",
                "policy = \"redis\" needs redis = { addr = \"host:port\" } (and no redis_cluster)",
            ))
        }
        _ => {
            return Err(err(
                path,
                "redis_cluster",
                "policy = \"redis-cluster\" needs redis_cluster = { nodes = [\"host:port\", ...] } (and no redis)",
            ))
        }
    };
    let interval = match keys.sync_interval {
        Some(d) => duration(path, "sync_interval", d)?,
        None => DEFAULT_INTERVAL,
    };
    if interval.is_zero() && !matches!(kind, Kind::Count { .. }) {
        return Err(err(
            path,
            "sync_interval",
            "exact mode (\"0\", a store round trip per request) is for limit-count; use 1ms..=10s",
        ));
    }
    if interval.is_zero() {
        // The shard itself connects in exact mode; a DNS lookup there would block the thread.
        let (at, key, names): (String, &str, Vec<&String>) = match &store.0 {
            Store::Redis { addr, .. } => (format!("{path}.redis"), "addr", vec![addr]),
            Store::Cluster { nodes, .. } => (
                format!("{path}.redis_cluster"),
                "nodes",
                nodes.iter().collect(),
            ),
        };
        if let Some(n) = names
            .iter()
            .find(|n| n.parse::<std::net::SocketAddr>().is_err())
        {
            return Err(err(
                &at,
                key,
                format!(
                    "exact mode (sync_interval = \"0\") connects from the shards, which never wait on DNS: give an IP address and port, got {n:?}"
                ),
            ));
        }
    }
    if interval.as_secs() > 10 {
        return Err(err(
            path,
            "sync_interval",
            "expected 0 (exact mode) or 1ms..=10s",
        ));
    }
    let on_error = match keys.on_redis_error.unwrap_or("local") {
        "local" => OnError::Local,
        "allow" => OnError::Allow,
        "deny" => OnError::Deny,
        o => {
            return Err(err(
                path,
                "on_redis_error",
                format!("expected \"local\", \"allow\" or \"deny\", got {o:?}"),
            ))
        }
    };
    Ok(Some(Arc::new(FleetSpec {
        ns,
        kind,
        store: store.0,
        timeout: store.1,
        interval,
        on_error,
    })))
}
