//! request-id: gives every request an id (a fast UUID v4 from the shard's own
//! PRNG), sends it upstream and back to the client, and keeps a valid incoming id.

use std::rc::Rc;
use std::sync::Arc;

use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::rand::Rng;
use super::util::{err, parse};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Spec};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;

pub const SPEC: Spec = Spec {
    name: "request-id",
    priority: 12015,
    phases: phase::REWRITE,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default)]
    header_name: Option<String>,
    #[serde(default)]
    include_in_response: Option<bool>,
    #[serde(default)]
    algorithm: Option<String>,
}

/// Longest incoming id kept; longer ones are replaced (they would bloat every log line).
const MAX_ID: usize = 128;

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    let header = c.header_name.unwrap_or_else(|| "X-Request-Id".into());
    if header.is_empty()
        || !header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
    {
        return Err(err(
            path,
            "header_name",
            format!("{header:?} is not a header name"),
        ));
    }
    match c.algorithm.as_deref() {
        None | Some("uuid") => {}
        Some(a) => {
            return Err(err(
                path,
                "algorithm",
                format!("only \"uuid\" is supported, got {a:?}"),
            ))
        }
    }
    Ok(Arc::new(Factory(Arc::new(Shared {
        header,
        respond: c.include_in_response.unwrap_or(true),
    }))))
}

struct Shared {
    /// As configured (lookups ignore case; it is written with this spelling).
    header: String,
    respond: bool,
}

struct Factory(Arc<Shared>);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(RequestId {
            s: self.0.clone(),
            rng: Rng::new(shard.id),
        })
    }
}

struct RequestId {
    s: Arc<Shared>,
    rng: Rng,
}

/// An incoming id is kept if it is short and made of visible ASCII (no spaces or controls,
/// which could split a log line or a header).
fn valid(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_ID && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

impl Plugin for RequestId {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn rewrite(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let name = self.s.header.as_bytes();
        let id = match req.header(&self.s.header).filter(|v| valid(v)) {
            // Valid ids are visible ASCII, so this never fails; kept as a guard.
            Some(v) => String::from_utf8_lossy(v).into_owned(),
            None => {
                let mut buf = [0u8; 36];
                self.rng.uuid_v4(&mut buf);
                let id = String::from_utf8_lossy(&buf).into_owned();
                // Replaces a missing or invalid incoming id on the way upstream.
                cx.req_headers.set(name, id.as_bytes());
                id
            }
        };
        if self.s.respond {
            // Recorded now so a plugin's own reply (401, 429, ...) carries the id too.
            cx.resp_headers.set(name, id.as_bytes());
        }
        cx.request_id = Some(id);
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use crate::plugin::testkit::{self, Setup};

    const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn gives_a_uuid_upstream_and_back_when_none_came() {
        let gw = testkit::gateway("[request-id]\n");
        let x = gw.send(GET);
        assert_eq!(x.replied(), None);
        let id = x.cx.request_id.clone().expect("an id");
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4', "UUID v4: {id}");
        assert_eq!(x.upstream_header("x-request-id"), Some(id.as_bytes()));
        assert_eq!(x.client_header("X-Request-Id"), Some(id.as_bytes()));
        assert_ne!(
            gw.send(GET).cx.request_id,
            Some(id),
            "a fresh id per request"
        );
    }

    #[test]
    fn keeps_a_valid_incoming_id_and_replaces_a_bad_one() {
        let gw = testkit::gateway("[request-id]\nheader_name = \"X-Trace\"\n");
        let x = gw.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Trace: abc-123\r\n\r\n");
        assert_eq!(x.cx.request_id.as_deref(), Some("abc-123"));
        assert_eq!(
            x.upstream_header("X-Trace"),
            None,
            "the client's header goes as is"
        );
        assert_eq!(x.client_header("X-Trace"), Some(&b"abc-123"[..]));

        let long = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Trace: {}\r\n\r\n",
            "a".repeat(129)
        );
        let x = gw.send(long.as_bytes());
        let id = x.cx.request_id.clone().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(x.upstream_header("X-Trace"), Some(id.as_bytes()));
    }

    #[test]
    fn id_rides_on_another_plugins_reply_unless_turned_off() {
        let gw = testkit::gateway("[request-id]\n[key-auth]\n");
        let x = gw.send(GET);
        assert_eq!(x.replied(), Some(401));
        let id = x.cx.request_id.as_deref().unwrap();
        assert_eq!(x.reply_header("x-request-id"), Some(id.as_bytes()));

        let gw = Setup::route("[request-id]\ninclude_in_response = false\n[key-auth]\n")
            .build()
            .unwrap();
        let x = gw.send(GET);
        assert_eq!(x.replied(), Some(401));
        assert!(x.cx.request_id.is_some());
        assert_eq!(x.reply_header("x-request-id"), None);
        assert_eq!(x.client_header("x-request-id"), None);
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[request-id]\nheader_name = \"X Id\"\n");
        assert_eq!(e.path, "routes[0].plugins.request-id.header_name");
        let e = testkit::config_error("[request-id]\nalgorithm = \"snowflake\"\n");
        assert_eq!(e.path, "routes[0].plugins.request-id.algorithm");
        let e = testkit::config_error("[request-id]\nheader = \"X-Id\"\n");
        assert_eq!(e.path, "routes[0].plugins.request-id.header");
        assert!(e.message.contains("unknown field"), "{}", e.message);
    }
}
