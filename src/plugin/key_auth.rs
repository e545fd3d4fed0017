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
