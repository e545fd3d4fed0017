//! key-auth: finds the consumer whose key is in a header or query argument.
//! Reads the consumer table; never touches limits or the upstream.

use std::rc::Rc;
use std::sync::Arc;

use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::consumer::Consumers;
use super::util::{parse, query_arg, query_without};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Reply, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;

pub const SPEC: Spec = Spec {
    name: "key-auth",
    priority: 2500,
    phases: phase::ACCESS,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default = "default_name")]
    header: String,
    #[serde(default = "default_name")]
    query: String,
    #[serde(default)]
    hide_credentials: bool,
}

fn default_name() -> String {
    "apikey".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerConf {
    key: String,
}

pub fn consumer_key(v: &toml::Value, path: &str) -> Result<Vec<u8>, ConfigError> {
    let c: ConsumerConf = parse(v, path)?;
    if c.key.is_empty() {
        return Err(ConfigError::new(format!("{path}.key"), "must not be empty"));
    }
    Ok(c.key.into_bytes())
}

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    if c.header.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.header"),
            "must not be empty",
        ));
    }
    Ok(Arc::new(Factory(Arc::new(c))))
}

struct Factory(Arc<Conf>);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(KeyAuth {
            c: self.0.clone(),
            consumers: shard.consumers.clone(),
        })
    }
}

struct KeyAuth {
    c: Arc<Conf>,
    consumers: Arc<Consumers>,
}

/// The 401 every auth plugin answers with: JSON message plus a challenge.
pub fn unauthorized(challenge: &'static str, message: &str) -> Flow {
    Flow::Respond(Reply::json_message(401, message).header("WWW-Authenticate", challenge))
}

/// Records the resolved consumer and tells the upstream who it is (as APISIX does).
pub fn set_consumer(cx: &mut Ctx, consumers: &Consumers, idx: usize) {
    cx.consumer = Some(idx);
    if let Some(c) = consumers.list.get(idx) {
        cx.req_headers
            .set(b"X-Consumer-Username", c.username.as_bytes());
    }
}

impl Plugin for KeyAuth {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn access(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let (key, from_query) = match req.header(&self.c.header) {
            Some(k) => (k, false),
            None => match query_arg(req.query(), self.c.query.as_bytes()) {
                Some(k) => (k, true),
                None => return unauthorized("Key realm=\"ringway\"", "Missing API key in request"),
            },
        };
        let Some(&idx) = self.consumers.keys.get(key) else {
            return unauthorized("Key realm=\"ringway\"", "Invalid API key in request");
        };
        set_consumer(cx, &self.consumers, idx);
        if self.c.hide_credentials {
            if from_query {
                cx.query = Some(query_without(req.query(), self.c.query.as_bytes()));
            } else {
                cx.req_headers.remove(self.c.header.as_bytes());
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use crate::plugin::testkit::{self, Setup};

    const CONSUMERS: &str = r#"
        [[consumers]]
        username = "alice"
        plugins.key-auth = { key = "k-alice" }
        [[consumers]]
        username = "bob"
        plugins.key-auth = { key = "k-bob" }
    "#;

    fn gw(route: &str) -> testkit::Gateway {
        Setup::route(route).consumers(CONSUMERS).build().unwrap()
    }

    #[test]
    fn a_known_key_in_header_or_query_names_the_consumer() {
        let gw = gw("[key-auth]\n");
        let x = gw.send(b"GET /x HTTP/1.1\r\nHost: a\r\napikey: k-bob\r\n\r\n");
        assert_eq!(x.replied(), None);
        assert_eq!(x.cx.consumer, Some(1));
        assert_eq!(x.upstream_header("X-Consumer-Username"), Some(&b"bob"[..]));
        let x = gw.send(b"GET /x?apikey=k-alice HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.cx.consumer, Some(0));
        assert_eq!(x.cx.query, None, "credentials stay unless hidden");
    }

    #[test]
    fn missing_or_unknown_key_gets_401_with_a_challenge() {
        let gw = gw("[key-auth]\n");
        let x = gw.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.replied(), Some(401));
        assert_eq!(
            x.reply_message().as_deref(),
            Some("Missing API key in request")
        );
        assert_eq!(
            x.reply_header("WWW-Authenticate"),
            Some(&b"Key realm=\"ringway\""[..])
        );
        assert_eq!(x.cx.consumer, None);
        let x = gw.send(b"GET /x?apikey=nope HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.replied(), Some(401));
        assert_eq!(
            x.reply_message().as_deref(),
            Some("Invalid API key in request")
        );
    }

    #[test]
    fn hide_credentials_strips_the_key_it_used() {
        let gw = gw("[key-auth]\nheader = \"X-Key\"\nquery = \"key\"\nhide_credentials = true\n");
        let x = gw.send(b"GET /x?a=1&key=k-alice&b=2 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.cx.consumer, Some(0));
        assert_eq!(x.cx.query.as_deref(), Some(&b"a=1&b=2"[..]));
        let x = gw.send(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Key: k-alice\r\n\r\n");
        assert_eq!(x.cx.consumer, Some(0));
        assert!(x.cx.req_headers.drops(b"x-key"));
        assert_eq!(x.cx.query, None);
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[key-auth]\nheader = \"\"\n");
        assert_eq!(e.path, "routes[0].plugins.key-auth.header");
        let e = Setup::route("[key-auth]\n")
            .consumers(
                "[[consumers]]\nusername = \"a\"\nplugins.key-auth = { key = \"same\" }\n\
                 [[consumers]]\nusername = \"b\"\nplugins.key-auth = { key = \"same\" }\n",
            )
            .build()
            .err()
            .unwrap();
        assert_eq!(e.path, "consumers[1].plugins.key-auth.key");
        let e = Setup::route("[key-auth]\n")
            .consumers("[[consumers]]\nusername = \"a\"\nplugins.key-auth = { key = \"\" }\n")
            .build()
            .err()
            .unwrap();
        assert_eq!(e.path, "consumers[0].plugins.key-auth.key");
    }
}
