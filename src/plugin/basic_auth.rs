//! basic-auth: resolves the consumer from `Authorization: Basic`.
//! Reads the consumer table only.

use std::rc::Rc;
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::consumer::Consumers;
use super::key_auth::{set_consumer, unauthorized};
use super::util::parse;
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;

pub const SPEC: Spec = Spec {
    name: "basic-auth",
    priority: 2520,
    phases: phase::ACCESS,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default)]
    hide_credentials: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerConf {
    username: String,
    password: String,
}

pub fn consumer_cred(v: &toml::Value, path: &str) -> Result<(Vec<u8>, Vec<u8>), ConfigError> {
    let c: ConsumerConf = parse(v, path)?;
    if c.username.is_empty() || c.username.contains(':') {
        return Err(ConfigError::new(
            format!("{path}.username"),
            "must be non-empty and contain no ':'",
        ));
    }
    Ok((c.username.into_bytes(), c.password.into_bytes()))
}

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    Ok(Arc::new(Factory(c.hide_credentials)))
}

struct Factory(bool);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(BasicAuth {
            hide: self.0,
            consumers: shard.consumers.clone(),
        })
    }
}

struct BasicAuth {
    hide: bool,
    consumers: Arc<Consumers>,
}

const CHALLENGE: &str = "Basic realm='.'";

/// Compares without an early exit, so timing does not reveal how much of a password matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Plugin for BasicAuth {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn access(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let Some(h) = req.header("authorization") else {
            return unauthorized(CHALLENGE, "Missing authorization in request");
        };
        let h = h.trim_ascii();
        let encoded = match h.get(..6) {
            Some(p) if p.eq_ignore_ascii_case(b"basic ") => h[6..].trim_ascii(),
            _ => return unauthorized(CHALLENGE, "Invalid authorization in request"),
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return unauthorized(CHALLENGE, "Invalid authorization in request");
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return unauthorized(CHALLENGE, "Invalid authorization in request");
        };
        let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
        match self.consumers.basic.get(user) {
            Some((want, idx)) if same(want, pass) => {
                set_consumer(cx, &self.consumers, *idx);
                if self.hide {
                    cx.req_headers.remove(b"Authorization");
                }
                Flow::Continue
            }
            _ => unauthorized(CHALLENGE, "Invalid user authorization"),
        }
    }
}
