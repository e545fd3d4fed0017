//! cors: answers CORS preflights at the gateway (200, never upstream) and adds
//! Access-Control-* headers to every other response of the route, plugin replies included.

use std::rc::Rc;
use std::sync::Arc;

use regex::bytes::Regex;
use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::util::{err, parse};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Reply, Spec};
use crate::error::ConfigError;
use crate::http::parse::{Method, RequestHead};

pub const SPEC: Spec = Spec {
    name: "cors",
    priority: 4000,
    phases: phase::REWRITE,
    build: factory,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default)]
    allow_origins: Option<String>,
    #[serde(default)]
    allow_origins_by_regex: Option<Vec<String>>,
    #[serde(default)]
    allow_methods: Option<String>,
    #[serde(default)]
    allow_headers: Option<String>,
    #[serde(default)]
    expose_headers: Option<String>,
    #[serde(default)]
    max_age: Option<i64>,
    #[serde(default)]
    allow_credential: Option<bool>,
}

/// What `allow_methods = "*"` (or `"**"`) expands to, as in APISIX.
const ALL_METHODS: &str = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE";

enum Origins {
    /// `*`: `Access-Control-Allow-Origin: *` for everyone.
    Any,
    /// `**`: echo whatever Origin the client sent.
    Echo,
    /// Exact origins (from the comma list) and regexes; a match is echoed with `Vary: Origin`.
    Listed(Vec<String>, Vec<Regex>),
}

struct Shared {
    origins: Origins,
    methods: String,
    /// `None` for `**`: echo Access-Control-Request-Headers.
    headers: Option<String>,
    expose: Option<String>,
    max_age: String,
    credential: bool,
}

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    let origins_text = c.allow_origins.clone().unwrap_or_else(|| "*".into());
    let methods = c.allow_methods.clone().unwrap_or_else(|| "*".into());
    let headers = c.allow_headers.clone().unwrap_or_else(|| "*".into());
    let credential = c.allow_credential.unwrap_or(false);
    let regexes = match &c.allow_origins_by_regex {
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, r) in list.iter().enumerate() {
                out.push(Regex::new(r).map_err(|e| {
                    err(
                        path,
                        &format!("allow_origins_by_regex[{i}]"),
                        format!("bad regex: {e}"),
                    )
                })?);
            }
            out
        }
        None => Vec::new(),
    };
    // APISIX refuses this too: browsers reject a wildcard together with credentials.
    if credential {
        let star = [
            (
                "allow_origins",
                c.allow_origins_by_regex
                    .is_none()
                    .then_some(origins_text.as_str()),
            ),
            ("allow_methods", Some(methods.as_str())),
            ("allow_headers", Some(headers.as_str())),
            ("expose_headers", c.expose_headers.as_deref()),
        ];
        if let Some((key, _)) = star.iter().find(|(_, v)| *v == Some("*")) {
            return Err(err(
                path,
                key,
                "\"*\" is not allowed when allow_credential is true; list the values (or use \"**\" to echo the request's)",
            ));
        }
    }
    let origins = if !regexes.is_empty() {
        // As APISIX: allow_origins_by_regex takes precedence; a listed origin still counts.
        let listed = if origins_text == "*" {
            Vec::new()
        } else {
            list(&origins_text)
        };
        Origins::Listed(listed, regexes)
    } else {
        match origins_text.as_str() {
            "*" => Origins::Any,
            "**" => Origins::Echo,
            t => {
                let l = list(t);
                if l.is_empty() {
                    return Err(err(path, "allow_origins", "must name at least one origin"));
                }
                Origins::Listed(l, Vec::new())
            }
        }
    };
    let max_age = c.max_age.unwrap_or(5);
    if max_age < -1 {
        return Err(err(
            path,
            "max_age",
            format!("expected seconds >= -1, got {max_age}"),
        ));
    }
    Ok(Arc::new(Factory(Arc::new(Shared {
        origins,
        methods: match methods.as_str() {
            "*" | "**" => ALL_METHODS.to_string(),
            m => m.to_string(),
        },
        headers: (headers != "**").then_some(headers),
        expose: c.expose_headers,
        max_age: max_age.to_string(),
        credential,
    }))))
}

fn list(t: &str) -> Vec<String> {
    t.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

struct Factory(Arc<Shared>);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, _shard: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(Cors(self.0.clone()))
    }
}

struct Cors(Arc<Shared>);

impl Cors {
    /// The Allow-Origin value for this request, if its origin is allowed.
    fn allow_origin<'a>(&'a self, origin: Option<&'a [u8]>) -> Option<&'a [u8]> {
        match &self.0.origins {
            Origins::Any => Some(b"*"),
            Origins::Echo => origin,
            Origins::Listed(l, re) => origin.filter(|o| {
                l.iter().any(|a| a.as_bytes() == *o) || re.iter().any(|r| r.is_match(o))
            }),
        }
    }
}

impl Plugin for Cors {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn rewrite(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let s = &self.0;
        let origin = req.header("origin");
        let preflight = req.method == Method::Options
            && origin.is_some()
            && req.header("access-control-request-method").is_some();
        if let Some(allow) = self.allow_origin(origin) {
            let h = &mut cx.resp_headers;
            h.set(b"Access-Control-Allow-Origin", allow);
            if !matches!(s.origins, Origins::Any) {
                // The answer depends on Origin: caches must key on it.
                h.add(b"Vary", b"Origin");
            }
            h.set(b"Access-Control-Allow-Methods", s.methods.as_bytes());
            match &s.headers {
                Some(v) => h.set(b"Access-Control-Allow-Headers", v.as_bytes()),
                None => {
                    if let Some(v) = req.header("access-control-request-headers") {
                        h.set(b"Access-Control-Allow-Headers", v);
                    }
                }
            }
            if let Some(e) = &s.expose {
                h.set(b"Access-Control-Expose-Headers", e.as_bytes());
            }
            h.set(b"Access-Control-Max-Age", s.max_age.as_bytes());
            if s.credential {
                h.set(b"Access-Control-Allow-Credentials", b"true");
            }
        }
        if preflight {
            // Answered here whether or not the origin is allowed (as APISIX); without the
            // headers above the browser refuses the real request.
            return Flow::Respond(Reply::new(200));
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use crate::plugin::testkit;

    const PREFLIGHT: &[u8] = b"OPTIONS /x HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example\r\n\
        Access-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: X-Token\r\n\r\n";

    #[test]
    fn defaults_allow_any_origin_on_the_response() {
        let gw = testkit::gateway("[cors]\n");
        let x = gw.send(b"GET /x HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example\r\n\r\n");
        assert_eq!(x.replied(), None, "not a preflight: goes upstream");
        assert_eq!(
            x.client_header("Access-Control-Allow-Origin"),
            Some(&b"*"[..])
        );
        assert_eq!(
            x.client_header("Access-Control-Allow-Methods"),
            Some(&b"GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE"[..])
        );
        assert_eq!(x.client_header("Access-Control-Max-Age"), Some(&b"5"[..]));
        assert_eq!(x.client_header("Vary"), None);
        assert_eq!(x.client_header("Access-Control-Allow-Credentials"), None);
    }

    #[test]
    fn preflight_is_answered_at_the_gateway_with_the_headers() {
        let gw = testkit::gateway(
            "[cors]\nallow_origins = \"https://app.example,https://b.example\"\n\
             allow_methods = \"GET,PUT\"\nallow_headers = \"**\"\nmax_age = 600\nallow_credential = true\n",
        );
        let x = gw.send(PREFLIGHT);
        assert_eq!(x.replied(), Some(200));
        assert_eq!(
            x.reply_header("Access-Control-Allow-Origin"),
            Some(&b"https://app.example"[..])
        );
        assert_eq!(x.reply_header("Vary"), Some(&b"Origin"[..]));
        assert_eq!(
            x.reply_header("Access-Control-Allow-Methods"),
            Some(&b"GET,PUT"[..])
        );
        assert_eq!(
            x.reply_header("Access-Control-Allow-Headers"),
            Some(&b"X-Token"[..]),
            "** echoes the request's"
        );
        assert_eq!(x.reply_header("Access-Control-Max-Age"), Some(&b"600"[..]));
        assert_eq!(
            x.reply_header("Access-Control-Allow-Credentials"),
            Some(&b"true"[..])
        );
    }

    #[test]
    fn an_unlisted_origin_gets_no_allow_headers() {
        let gw = testkit::gateway(
            "[cors]\nallow_origins = \"https://b.example\"\nallow_origins_by_regex = [\"^https://.*\\\\.corp$\"]\n",
        );
        let x = gw.send(PREFLIGHT);
        assert_eq!(x.replied(), Some(200), "answered, but without the headers");
        assert_eq!(x.reply_header("Access-Control-Allow-Origin"), None);
        let x = gw.send(b"GET / HTTP/1.1\r\nHost: a\r\nOrigin: https://x.corp\r\n\r\n");
        assert_eq!(
            x.client_header("Access-Control-Allow-Origin"),
            Some(&b"https://x.corp"[..])
        );
        let x = gw.send(b"GET / HTTP/1.1\r\nHost: a\r\nOrigin: https://b.example\r\n\r\n");
        assert_eq!(
            x.client_header("Access-Control-Allow-Origin"),
            Some(&b"https://b.example"[..])
        );
        // OPTIONS without Access-Control-Request-Method is not a preflight.
        let x = gw.send(b"OPTIONS / HTTP/1.1\r\nHost: a\r\nOrigin: https://b.example\r\n\r\n");
        assert_eq!(x.replied(), None);
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[cors]\nallow_credential = true\n");
        assert_eq!(e.path, "routes[0].plugins.cors.allow_origins");
        let e = testkit::config_error(
            "[cors]\nallow_credential = true\nallow_origins = \"https://a\"\nallow_methods = \"*\"\n",
        );
        assert_eq!(e.path, "routes[0].plugins.cors.allow_methods");
        let e = testkit::config_error("[cors]\nallow_origins_by_regex = [\"(\"]\n");
        assert_eq!(e.path, "routes[0].plugins.cors.allow_origins_by_regex[0]");
        let e = testkit::config_error("[cors]\nmax_age = -2\n");
        assert_eq!(e.path, "routes[0].plugins.cors.max_age");
        let e = testkit::config_error("[cors]\nallow_origins = \" , \"\n");
        assert_eq!(e.path, "routes[0].plugins.cors.allow_origins");
    }
}
