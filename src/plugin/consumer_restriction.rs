//! consumer-restriction (APISIX's): lets a route admit only some consumers or consumer groups,
//! by white/blacklist and per-consumer methods. Reads the consumer an auth plugin set; no state.

use std::rc::Rc;
use std::sync::Arc;

use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::consumer::Consumers;
use super::util::{err, parse};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Reply, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;

pub const SPEC: Spec = Spec {
    name: "consumer-restriction",
    priority: 2400,
    phases: phase::ACCESS,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByMethod {
    user: String,
    methods: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    whitelist: Vec<String>,
    #[serde(default)]
    blacklist: Vec<String>,
    #[serde(default)]
    allowed_by_methods: Vec<ByMethod>,
    #[serde(default)]
    rejected_code: Option<u16>,
    #[serde(default)]
    rejected_msg: Option<String>,
}

/// What the lists name: the consumer's username or its group's name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    ConsumerName,
    GroupName,
}

struct Rules {
    kind: Kind,
    whitelist: Vec<String>,
    blacklist: Vec<String>,
    by_method: Vec<(String, Vec<String>)>,
    rejected: Reply,
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    let kind = match c.kind.as_deref() {
        None | Some("consumer_name") => Kind::ConsumerName,
        Some("consumer_group_id") => Kind::GroupName,
        Some(o) => {
            return Err(err(
                path,
                "type",
                format!("expected \"consumer_name\" or \"consumer_group_id\", got {o:?}"),
            ))
        }
    };
    if c.whitelist.is_empty() && c.blacklist.is_empty() && c.allowed_by_methods.is_empty() {
        return Err(err(
            path,
            "whitelist",
            "set whitelist, blacklist or allowed_by_methods",
        ));
    }
    for (i, m) in c.allowed_by_methods.iter().enumerate() {
        if let Some(bad) = m.methods.iter().find(|x| !METHODS.contains(&x.as_str())) {
            return Err(err(
                path,
                &format!("allowed_by_methods[{i}].methods"),
                format!("{bad:?} is not a method; expected one of {METHODS:?}"),
            ));
        }
    }
    let code = c.rejected_code.unwrap_or(403);
    if !(200..=599).contains(&code) {
        return Err(err(
            path,
            "rejected_code",
            format!("expected an HTTP status, got {code}"),
        ));
    }
    let what = match kind {
        Kind::ConsumerName => "consumer_name",
        Kind::GroupName => "consumer_group_id",
    };
    let msg = c
        .rejected_msg
        .unwrap_or_else(|| format!("The {what} is forbidden."));
    Ok(Arc::new(Factory(Arc::new(Rules {
        kind,
        whitelist: c.whitelist,
        blacklist: c.blacklist,
        by_method: c
            .allowed_by_methods
            .into_iter()
            .map(|m| (m.user, m.methods))
            .collect(),
        rejected: Reply::json_message(code, &msg),
    }))))
}

struct Factory(Arc<Rules>);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(Restriction {
            r: self.0.clone(),
            consumers: shard.consumers.clone(),
        })
    }
}

struct Restriction {
    r: Arc<Rules>,
    consumers: Arc<Consumers>,
}

impl Plugin for Restriction {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn access(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let r = &self.r;
        let consumer = cx.consumer.and_then(|i| self.consumers.list.get(i));
        let value = consumer.and_then(|c| match r.kind {
            Kind::ConsumerName => Some(c.username.as_str()),
            Kind::GroupName => c.group.as_deref(),
        });
        let Some(value) = value else {
            return Flow::Respond(Reply::json_message(
                401,
                "Missing authentication or identity verification.",
            ));
        };
        let listed = |l: &[String]| l.iter().any(|x| x == value);
        if listed(&r.blacklist) || (!r.whitelist.is_empty() && !listed(&r.whitelist)) {
            return Flow::Respond(r.rejected.clone());
        }
        let method = req.method_bytes();
        for (user, methods) in &r.by_method {
            if user == value && !methods.iter().any(|m| m.as_bytes() == method) {
                return Flow::Respond(r.rejected.clone());
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use crate::plugin::testkit::{self, Setup};

    const CONSUMERS: &str = r#"
        [[consumer_groups]]
        name = "gold"
        [[consumers]]
        username = "ann"
        group = "gold"
        plugins.key-auth = { key = "ann" }
        [[consumers]]
        username = "bob"
        plugins.key-auth = { key = "bob" }
    "#;

    fn status(route: &str, key: Option<&str>, method: &str) -> Option<u16> {
        let gw = Setup::route(route).consumers(CONSUMERS).build().unwrap();
        let auth = key.map_or(String::new(), |k| format!("apikey: {k}\r\n"));
        gw.send(format!("{method} / HTTP/1.1\r\nHost: a\r\n{auth}\r\n").as_bytes())
            .replied()
    }

    #[test]
    fn lists_of_consumers_and_groups_and_methods() {
        let wl = "[key-auth]\n[consumer-restriction]\nwhitelist = [\"ann\"]\n";
        assert_eq!(status(wl, Some("ann"), "GET"), None);
        assert_eq!(status(wl, Some("bob"), "GET"), Some(403));
        let bl = "[key-auth]\n[consumer-restriction]\nblacklist = [\"ann\"]\nrejected_code = 429\n";
        assert_eq!(status(bl, Some("ann"), "GET"), Some(429));
        assert_eq!(status(bl, Some("bob"), "GET"), None);
        let group = "[key-auth]\n[consumer-restriction]\ntype = \"consumer_group_id\"\nwhitelist = [\"gold\"]\n";
        assert_eq!(status(group, Some("ann"), "GET"), None);
        assert_eq!(
            status(group, Some("bob"), "GET"),
            Some(401),
            "no group to check"
        );
        let methods = "[key-auth]\n[consumer-restriction]\nallowed_by_methods = [{ user = \"bob\", methods = [\"GET\"] }]\n";
        assert_eq!(status(methods, Some("bob"), "GET"), None);
        assert_eq!(status(methods, Some("bob"), "POST"), Some(403));
        assert_eq!(status(methods, Some("ann"), "POST"), None);
        // Without an auth plugin naming a consumer there is nothing to check.
        assert_eq!(
            status(
                "[consumer-restriction]\nwhitelist = [\"ann\"]\n",
                None,
                "GET"
            ),
            Some(401)
        );
        let gw = Setup::route(wl).consumers(CONSUMERS).build().unwrap();
        let x = gw.send(b"GET / HTTP/1.1\r\nHost: a\r\napikey: bob\r\n\r\n");
        assert_eq!(
            x.reply_message().as_deref(),
            Some("The consumer_name is forbidden.")
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        for (body, key) in [
            ("", "whitelist"),
            ("type = \"route_id\"\nwhitelist = [\"a\"]", "type"),
            ("whitelist = [\"a\"]\nrejected_code = 99", "rejected_code"),
            (
                "allowed_by_methods = [{ user = \"a\", methods = [\"FETCH\"] }]",
                "allowed_by_methods[0].methods",
            ),
        ] {
            let e = testkit::config_error(&format!("[consumer-restriction]\n{body}\n"));
            assert_eq!(
                e.path,
                format!("routes[0].plugins.consumer-restriction.{key}")
            );
        }
    }
}
