//! ip-restriction: allow (`whitelist`) or deny (`blacklist`) client addresses
//! by IPv4/IPv6 address or CIDR. Denied requests get 403 `{"message": ...}` in the access phase.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::util::{err, parse};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Reply, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;

pub const SPEC: Spec = Spec {
    name: "ip-restriction",
    priority: 3000,
    phases: phase::ACCESS,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default)]
    whitelist: Option<Vec<String>>,
    #[serde(default)]
    blacklist: Option<Vec<String>>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    response_code: Option<u16>,
}

fn nets(list: &[String], path: &str, key: &str) -> Result<Vec<IpNet>, ConfigError> {
    if list.is_empty() {
        return Err(err(path, key, "must list at least one address or CIDR"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let s = s.trim();
        let net = match s.parse::<IpNet>() {
            Ok(n) => n.trunc(),
            Err(_) => match s.parse::<IpAddr>() {
                Ok(a) => IpNet::from(a),
                Err(_) => {
                    return Err(err(
                        path,
                        &format!("{key}[{i}]"),
                        format!("{s:?} is not an IP address or CIDR (e.g. \"10.0.0.0/8\", \"2001:db8::/32\")"),
                    ))
                }
            },
        };
        out.push(net);
    }
    Ok(out)
}

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    let (allow, list) = match (&c.whitelist, &c.blacklist) {
        (Some(w), None) => (true, nets(w, path, "whitelist")?),
        (None, Some(b)) => (false, nets(b, path, "blacklist")?),
        _ => {
            return Err(ConfigError::new(
                path,
                "set exactly one of whitelist or blacklist",
            ))
        }
    };
    let code = c.response_code.unwrap_or(403);
    if !(403..=404).contains(&code) {
        return Err(err(
            path,
            "response_code",
            format!("expected 403 or 404, got {code}"),
        ));
    }
    let message = c
        .message
        .unwrap_or_else(|| "Your IP address is not allowed".into());
    if message.is_empty() || message.len() > 1024 {
        return Err(err(path, "message", "expected 1..=1024 characters"));
    }
    Ok(Arc::new(Factory(Arc::new(Shared {
        allow,
        list,
        code,
        message,
    }))))
}

struct Shared {
    /// true: whitelist (only listed may pass); false: blacklist.
    allow: bool,
    list: Vec<IpNet>,
    code: u16,
    message: String,
}

struct Factory(Arc<Shared>);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, _shard: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(IpRestriction {
            s: self.0.clone(),
            // Built per shard, so cloning it never touches another core's reference count.
            reply: Reply::json_message(self.0.code, &self.0.message),
        })
    }
}

struct IpRestriction {
    s: Arc<Shared>,
    reply: Reply,
}

impl Plugin for IpRestriction {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn access(&self, _req: &RequestHead, cx: &mut Ctx) -> Flow {
        // An IPv4 client on a dual-stack listener shows as ::ffff:a.b.c.d; match it as IPv4.
        let ip = cx.client_ip.to_canonical();
        let listed = self.s.list.iter().any(|n| n.contains(&ip));
        if listed == self.s.allow {
            Flow::Continue
        } else {
            Flow::Respond(self.reply.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::plugin::testkit;

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn whitelist_lets_only_listed_addresses_through() {
        let gw =
            testkit::gateway("[ip-restriction]\nwhitelist = [\"10.0.0.0/8\", \"2001:db8::1\"]\n");
        assert_eq!(gw.send_from("10.1.2.3", GET).replied(), None);
        assert_eq!(
            gw.send_from("::ffff:10.9.9.9", GET).replied(),
            None,
            "v4-mapped"
        );
        assert_eq!(gw.send_from("2001:db8::1", GET).replied(), None);
        let x = gw.send_from("192.168.0.1", GET);
        assert_eq!(x.replied(), Some(403));
        assert_eq!(
            x.reply_message().as_deref(),
            Some("Your IP address is not allowed")
        );
        assert_eq!(gw.send_from("2001:db8::2", GET).replied(), Some(403));
    }

    #[test]
    fn blacklist_refuses_listed_addresses_with_the_configured_answer() {
        let gw = testkit::gateway(
            "[ip-restriction]\nblacklist = [\"127.0.0.1\"]\nresponse_code = 404\nmessage = \"go away\"\n",
        );
        let x = gw.send(GET);
        assert_eq!(x.replied(), Some(404));
        assert_eq!(x.reply_message().as_deref(), Some("go away"));
        assert_eq!(gw.send_from("127.0.0.2", GET).replied(), None);
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[ip-restriction]\n");
        assert_eq!(e.path, "routes[0].plugins.ip-restriction");
        let e = testkit::config_error(
            "[ip-restriction]\nwhitelist = [\"1.2.3.4\"]\nblacklist = [\"5.6.7.8\"]\n",
        );
        assert_eq!(e.path, "routes[0].plugins.ip-restriction");
        let e = testkit::config_error("[ip-restriction]\nwhitelist = [\"1.2.3.4\", \"nope\"]\n");
        assert_eq!(e.path, "routes[0].plugins.ip-restriction.whitelist[1]");
        let e = testkit::config_error("[ip-restriction]\nblacklist = []\n");
        assert_eq!(e.path, "routes[0].plugins.ip-restriction.blacklist");
        let e = testkit::config_error(
            "[ip-restriction]\nblacklist = [\"1.2.3.4\"]\nresponse_code = 500\n",
        );
        assert_eq!(e.path, "routes[0].plugins.ip-restriction.response_code");
    }
}
