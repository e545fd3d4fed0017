//! response-rewrite: status, headers (set/add/remove) and body of the response
//! to the client. Header values may use `$remote_addr`, `$consumer_name`, `$route_name`,
//! `$request_id`, `$shard_id`. Records edits in `Ctx`; the writer applies them.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::consumer::Consumers;
use super::util::{err, parse};
use super::{phase, Ctx, Plugin, PluginFactory, Spec};
use crate::error::ConfigError;
use crate::http::parse::ResponseHead;

pub const SPEC: Spec = Spec {
    name: "response-rewrite",
    priority: 899,
    phases: phase::RESPONSE_HEADERS | phase::RESPONSE_BODY,
    build: factory,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderConf {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_base64: bool,
    #[serde(default)]
    headers: Option<HeaderConf>,
}

/// A header edit list checked at load time: `add` entries are `"Name: value"`.
pub struct Edits {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

pub fn edits(h: Option<HeaderConf>, path: &str) -> Result<Edits, ConfigError> {
    let h = h.unwrap_or_default();
    let valid = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
    };
    let mut add = Vec::new();
    for (i, a) in h.add.iter().enumerate() {
        let Some((n, v)) = a.split_once(':').filter(|(n, _)| valid(n.trim())) else {
            return Err(err(
                path,
                &format!("headers.add[{i}]"),
                format!("{a:?} must be \"Name: value\""),
            ));
        };
        add.push((n.trim().to_string(), v.trim().to_string()));
    }
    for n in h.set.keys().chain(h.remove.iter()) {
        if !valid(n) {
            return Err(err(path, "headers", format!("{n:?} is not a header name")));
        }
    }
    Ok(Edits {
        set: h.set.into_iter().collect(),
        add,
        remove: h.remove,
    })
}

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    if let Some(s) = c.status_code {
        if !(200..=598).contains(&s) {
            return Err(err(
                path,
                "status_code",
                format!("expected 200..=598, got {s}"),
            ));
        }
    }
    let body = match c.body {
        Some(b) if c.body_base64 => Some(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| {
                    err(
                        path,
                        "body",
                        format!("body_base64 is set but body is not base64: {e}"),
                    )
                })?,
        )),
        Some(b) => Some(Bytes::from(b)),
        None => None,
    };
    let edits = edits(c.headers, path)?;
    Ok(Arc::new(Factory(Arc::new(Shared {
        status: c.status_code,
        body,
        edits,
    }))))
}

struct Shared {
    status: Option<u16>,
    body: Option<Bytes>,
    edits: Edits,
}

struct Factory(Arc<Shared>);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(ResponseRewrite {
            s: self.0.clone(),
            consumers: shard.consumers.clone(),
            shard: shard.id.to_string(),
            // A per-shard copy, so handing it out never touches a shared reference count.
            body: self.0.body.as_ref().map(|b| Bytes::copy_from_slice(b)),
        })
    }
}

struct ResponseRewrite {
    s: Arc<Shared>,
    consumers: Arc<Consumers>,
    shard: String,
    body: Option<Bytes>,
}

/// Expands `$var` in a configured value; unknown variables expand to nothing (as nginx).
pub fn expand(v: &str, cx: &Ctx, consumers: &Consumers, shard: &str, out: &mut Vec<u8>) {
    out.clear();
    let mut rest = v;
    while let Some(at) = rest.find('$') {
        out.extend_from_slice(&rest.as_bytes()[..at]);
        let tail = &rest[at + 1..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        match &tail[..end] {
            "remote_addr" => out.extend_from_slice(cx.client_ip.to_string().as_bytes()),
            "consumer_name" => {
                out.extend_from_slice(consumers.name(cx.consumer).unwrap_or("").as_bytes())
            }
            "route_id" => out.extend_from_slice(cx.route.to_string().as_bytes()),
            "request_id" => {
                out.extend_from_slice(cx.request_id.as_deref().unwrap_or("").as_bytes())
            }
            "shard_id" => out.extend_from_slice(shard.as_bytes()),
            "" => out.push(b'$'),
            _ => {}
        }
        rest = &tail[end..];
    }
    out.extend_from_slice(rest.as_bytes());
}

impl Plugin for ResponseRewrite {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn response_headers(&self, _resp: &ResponseHead, cx: &mut Ctx) {
        if let Some(s) = self.s.status {
            cx.status_override = Some(s);
        }
        let mut buf = Vec::new();
        for n in &self.s.edits.remove {
            cx.resp_headers.remove(n.as_bytes());
        }
        for (n, v) in &self.s.edits.set {
            expand(v, cx, &self.consumers, &self.shard, &mut buf);
            cx.resp_headers.set(n.as_bytes(), &buf);
        }
        for (n, v) in &self.s.edits.add {
            expand(v, cx, &self.consumers, &self.shard, &mut buf);
            cx.resp_headers.add(n.as_bytes(), &buf);
        }
    }

    fn response_body(&self, _cx: &mut Ctx) -> Option<Bytes> {
        self.body.clone()
    }
}

#[cfg(test)]
mod tests {
    use crate::plugin::testkit::{self, Setup};

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Length: 2\r\n\r\n";

    #[test]
    fn rewrites_status_headers_and_body_of_the_upstream_response() {
        let gw = Setup::route(
            "[response-rewrite]\nstatus_code = 201\nbody = \"replaced\"\n\
             headers = { set = { X-Client = \"$remote_addr\", X-Who = \"$consumer_name|$route_id|$shard_id\" }, add = [\"X-Add: one\"], remove = [\"Server\"] }\n\
             [key-auth]\n",
        )
        .consumers("[[consumers]]\nusername = \"carol\"\nplugins.key-auth = { key = \"k\" }\n")
        .build()
        .unwrap();
        let mut x = gw.send_from(
            "192.0.2.9",
            b"GET / HTTP/1.1\r\nHost: a\r\napikey: k\r\n\r\n",
        );
        assert_eq!(x.replied(), None);
        assert_eq!(x.cx.status_override, None, "nothing before the response");
        let body = x.response(OK);
        assert_eq!(body.as_deref(), Some(&b"replaced"[..]));
        assert_eq!(x.cx.status, 200, "the upstream's, for the log");
        assert_eq!(x.cx.status_override, Some(201));
        assert_eq!(x.client_header("X-Client"), Some(&b"192.0.2.9"[..]));
        assert_eq!(x.client_header("X-Who"), Some(&b"carol|0|0"[..]));
        assert_eq!(x.client_header("X-Add"), Some(&b"one"[..]));
        assert!(x.cx.resp_headers.drops(b"server"));
        assert!(!x.cx.resp_headers.drops(b"x-add"));
    }

    #[test]
    fn without_a_body_or_status_the_upstreams_stay() {
        let gw = testkit::gateway("[response-rewrite]\nbody = \"aGk=\"\nbody_base64 = true\n");
        let mut x = gw.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.response(OK).as_deref(), Some(&b"hi"[..]));
        assert_eq!(x.cx.status_override, None);

        let gw = testkit::gateway("[response-rewrite]\nheaders = { remove = [\"Server\"] }\n");
        let mut x = gw.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.response(OK), None);
        assert!(x.cx.resp_headers.drops(b"Server"));
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[response-rewrite]\nstatus_code = 99\n");
        assert_eq!(e.path, "routes[0].plugins.response-rewrite.status_code");
        let e = testkit::config_error("[response-rewrite]\nheaders = { add = [\"no colon\"] }\n");
        assert_eq!(e.path, "routes[0].plugins.response-rewrite.headers.add[0]");
        let e = testkit::config_error("[response-rewrite]\nbody = \"%%\"\nbody_base64 = true\n");
        assert_eq!(e.path, "routes[0].plugins.response-rewrite.body");
        let e = testkit::config_error("[response-rewrite]\nheaders = { remove = [\"a b\"] }\n");
        assert_eq!(e.path, "routes[0].plugins.response-rewrite.headers");
    }
}
