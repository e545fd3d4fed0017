//! traffic-split: sends matching requests to weighted upstreams (smooth
//! weighted round-robin per shard); an entry without `upstream` means the route's own.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::util::{err, parse};
use super::vars::{self, Conds};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;

pub const SPEC: Spec = Spec {
    name: "traffic-split",
    priority: 966,
    phases: phase::ACCESS,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchConf {
    #[serde(default)]
    vars: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightedConf {
    /// An upstream's name (`upstream_id` is accepted as an alias for configs moved over).
    #[serde(default, alias = "upstream_id")]
    upstream: Option<String>,
    #[serde(default)]
    weight: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConf {
    #[serde(default, rename = "match")]
    matches: Vec<MatchConf>,
    weighted_upstreams: Vec<WeightedConf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    rules: Vec<RuleConf>,
}

struct Rule {
    /// Any one of these must hold (each an AND of conditions); empty matches everything.
    matches: Vec<Conds>,
    /// (upstream index or None for the route's own, weight > 0)
    targets: Vec<(Option<usize>, i64)>,
}

fn factory(v: &toml::Value, path: &str, cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    if c.rules.is_empty() {
        return Err(err(path, "rules", "must have at least one rule"));
    }
    let mut rules = Vec::with_capacity(c.rules.len());
    for (i, r) in c.rules.into_iter().enumerate() {
        let at = format!("{path}.rules[{i}]");
        let mut matches = Vec::with_capacity(r.matches.len());
        for (j, m) in r.matches.iter().enumerate() {
            if let Some(v) = &m.vars {
                matches.push(vars::parse(v, &format!("{at}.match[{j}].vars"))?);
            }
        }
        if r.weighted_upstreams.is_empty() {
            return Err(err(
                &at,
                "weighted_upstreams",
                "must have at least one entry",
            ));
        }
        let mut targets = Vec::with_capacity(r.weighted_upstreams.len());
        for (j, w) in r.weighted_upstreams.iter().enumerate() {
            let wat = format!("{at}.weighted_upstreams[{j}]");
            let weight = w.weight.unwrap_or(1);
            if !(0..=1_000_000).contains(&weight) {
                return Err(err(
                    &wat,
                    "weight",
                    format!("expected 0..=1000000, got {weight}"),
                ));
            }
            let up = match &w.upstream {
                Some(name) => Some(*cx.upstreams.get(name).ok_or_else(|| {
                    let mut known: Vec<&str> = cx.upstreams.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    err(
                        &wat,
                        "upstream",
                        format!("unknown upstream {name:?}; known upstreams: {known:?}"),
                    )
                })?),
                None => None,
            };
            if weight > 0 {
                targets.push((up, weight));
            }
        }
        if targets.is_empty() {
            return Err(err(&at, "weighted_upstreams", "all weights are 0"));
        }
        rules.push(Rule { matches, targets });
    }
    Ok(Arc::new(Factory(Arc::new(rules))))
}

struct Factory(Arc<Vec<Rule>>);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, _shard: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(TrafficSplit {
            current: self
                .0
                .iter()
                .map(|r| RefCell::new(vec![0; r.targets.len()]))
                .collect(),
            rules: self.0.clone(),
        })
    }
}

struct TrafficSplit {
    rules: Arc<Vec<Rule>>,
    /// Smooth WRR running weights, per rule, this shard only.
    current: Vec<RefCell<Vec<i64>>>,
}

/// nginx's smooth weighted round-robin: spreads picks evenly (1:9 never sends ten in a row).
fn pick(targets: &[(Option<usize>, i64)], current: &mut [i64]) -> Option<usize> {
    let mut total = 0;
    let mut best = 0;
    for (i, (_, w)) in targets.iter().enumerate() {
        current[i] += w;
        total += w;
        if current[i] > current[best] {
            best = i;
        }
    }
    current[best] -= total;
    targets[best].0
}

impl Plugin for TrafficSplit {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn access(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        for (rule, cur) in self.rules.iter().zip(&self.current) {
            let hit =
                rule.matches.is_empty() || rule.matches.iter().any(|m| vars::matches(m, req, cx));
            if hit {
                cx.upstream = pick(&rule.targets, &mut cur.borrow_mut());
                break;
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::testkit::{self, Setup};

    #[test]
    fn smooth_wrr_spreads_one_in_ten() {
        let t = [(Some(1), 1), (None, 9)];
        let mut cur = [0; 2];
        let picks: Vec<_> = (0..20).map(|_| pick(&t, &mut cur)).collect();
        assert_eq!(picks.iter().filter(|p| **p == Some(1)).count(), 2);
        // Never two canary picks in a row.
        assert!(picks
            .windows(2)
            .all(|w| !(w[0] == Some(1) && w[1] == Some(1))));
    }

    const UPSTREAMS: &[&str] = &["stable", "canary"];

    fn gw(route: &str) -> testkit::Gateway {
        Setup::route(route).upstreams(UPSTREAMS).build().unwrap()
    }

    #[test]
    fn matching_requests_go_to_the_rules_upstream() {
        let gw = gw(
            "[traffic-split]\nrules = [\
             { match = [{ vars = [[\"http_x_canary\", \"==\", \"1\"]] }], weighted_upstreams = [{ upstream = \"canary\" }] },\
             { match = [{ vars = [[\"arg_v\", \"==\", \"old\"]] }], weighted_upstreams = [{ upstream_id = \"stable\" }] }]\n",
        );
        let x = gw.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Canary: 1\r\n\r\n");
        assert_eq!(x.replied(), None);
        assert_eq!(x.cx.upstream, Some(1));
        let x = gw.send(b"GET /?v=old HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.cx.upstream, Some(0));
        let x = gw.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Canary: 2\r\n\r\n");
        assert_eq!(x.cx.upstream, None, "no rule matched: the route's upstream");
    }

    #[test]
    fn weights_alternate_with_the_routes_own_upstream() {
        let gw = gw(
            "[traffic-split]\nrules = [{ weighted_upstreams = [{ upstream = \"canary\", weight = 1 }, { weight = 3 }] }]\n",
        );
        let picks: Vec<Option<usize>> = (0..8)
            .map(|_| gw.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").cx.upstream)
            .collect();
        assert_eq!(picks.iter().filter(|p| **p == Some(1)).count(), 2);
        assert_eq!(picks.iter().filter(|p| p.is_none()).count(), 6);
        assert!(picks.windows(2).all(|w| w != [Some(1), Some(1)]));
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = Setup::route(
            "[traffic-split]\nrules = [{ weighted_upstreams = [{ weight = 1 }, { upstream = \"blue\" }] }]\n",
        )
        .upstreams(UPSTREAMS)
        .build()
        .err()
        .unwrap();
        assert_eq!(
            e.path,
            "routes[0].plugins.traffic-split.rules[0].weighted_upstreams[1].upstream"
        );
        assert!(
            e.message.contains("[\"canary\", \"stable\"]"),
            "{}",
            e.message
        );
        let e = testkit::config_error("[traffic-split]\nrules = []\n");
        assert_eq!(e.path, "routes[0].plugins.traffic-split.rules");
        let e = testkit::config_error(
            "[traffic-split]\nrules = [{ weighted_upstreams = [{ weight = 0 }] }]\n",
        );
        assert_eq!(
            e.path,
            "routes[0].plugins.traffic-split.rules[0].weighted_upstreams"
        );
        let e = testkit::config_error(
            "[traffic-split]\nrules = [{ weighted_upstreams = [{ weight = -1 }] }]\n",
        );
        assert_eq!(
            e.path,
            "routes[0].plugins.traffic-split.rules[0].weighted_upstreams[0].weight"
        );
        let e = testkit::config_error(
            "[traffic-split]\nrules = [{ match = [{ vars = [[\"bogus\", \"==\", \"1\"]] }], weighted_upstreams = [{ weight = 1 }] }]\n",
        );
        assert!(
            e.path
                .starts_with("routes[0].plugins.traffic-split.rules[0].match[0].vars"),
            "{e}"
        );
    }
}
