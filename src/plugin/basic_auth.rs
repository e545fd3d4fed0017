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

#[cfg(test)]
mod tests {
    use crate::plugin::testkit::{self, Setup};

    const CONSUMERS: &str = r#"
        [[consumers]]
        username = "alice"
        plugins.basic-auth = { username = "alice", password = "s3cret" }
        [[consumers]]
        username = "bob"
        plugins.basic-auth = { username = "bob", password = "pw" }
    "#;

    fn gw(route: &str) -> testkit::Gateway {
        Setup::route(route).consumers(CONSUMERS).build().unwrap()
    }

    /// A GET with `Authorization: <auth>`.
    fn with_auth(auth: &str) -> Vec<u8> {
        format!("GET / HTTP/1.1\r\nHost: a\r\nAuthorization: {auth}\r\n\r\n").into_bytes()
    }

    #[test]
    fn right_password_names_the_consumer() {
        let gw = gw("[basic-auth]\n");
        // bob:pw
        let x = gw.send(&with_auth("Basic Ym9iOnB3"));
        assert_eq!(x.replied(), None);
        assert_eq!(x.cx.consumer, Some(1));
        assert_eq!(x.upstream_header("X-Consumer-Username"), Some(&b"bob"[..]));
        assert!(!x.cx.req_headers.drops(b"authorization"));
        // alice:s3cret, scheme in another case
        let x = gw.send(&with_auth("basic YWxpY2U6czNjcmV0"));
        assert_eq!(x.cx.consumer, Some(0));
    }

    #[test]
    fn missing_malformed_or_wrong_credentials_get_401() {
        let gw = gw("[basic-auth]\n");
        let x = gw.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.replied(), Some(401));
        assert_eq!(
            x.reply_message().as_deref(),
            Some("Missing authorization in request")
        );
        assert_eq!(
            x.reply_header("www-authenticate"),
            Some(&b"Basic realm='.'"[..])
        );
        let x = gw.send(&with_auth("Bearer Ym9iOnB3"));
        assert_eq!(
            x.reply_message().as_deref(),
            Some("Invalid authorization in request")
        );
        let x = gw.send(&with_auth("Basic !!!"));
        assert_eq!(
            x.reply_message().as_deref(),
            Some("Invalid authorization in request")
        );
        // bob:pW
        let x = gw.send(&with_auth("Basic Ym9iOnBX"));
        assert_eq!(x.replied(), Some(401));
        assert_eq!(
            x.reply_message().as_deref(),
            Some("Invalid user authorization")
        );
        assert_eq!(x.cx.consumer, None);
    }

    #[test]
    fn hide_credentials_drops_the_authorization_header() {
        let gw = gw("[basic-auth]\nhide_credentials = true\n");
        let x = gw.send(&with_auth("Basic Ym9iOnB3"));
        assert_eq!(x.cx.consumer, Some(1));
        assert!(x.cx.req_headers.drops(b"Authorization"));
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[basic-auth]\nhide_credentials = \"yes\"\n");
        assert_eq!(e.path, "routes[0].plugins.basic-auth.hide_credentials");
        let e = Setup::route("[basic-auth]\n")
            .consumers(
                "[[consumers]]\nusername = \"a\"\nplugins.basic-auth = { username = \"a:b\", password = \"p\" }\n",
            )
            .build()
            .err()
            .unwrap();
        assert_eq!(e.path, "consumers[0].plugins.basic-auth.username");
        let e = Setup::route("[basic-auth]\n")
            .consumers(
                "[[consumers]]\nusername = \"a\"\nplugins.basic-auth = { username = \"a\" }\n",
            )
            .build()
            .err()
            .unwrap();
        assert_eq!(e.path, "consumers[0].plugins.basic-auth");
        assert!(e.message.contains("password"), "{}", e.message);
    }
}
