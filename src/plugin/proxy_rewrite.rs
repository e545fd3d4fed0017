//! proxy-rewrite: rewrites what is sent upstream: uri (fixed or `regex_uri`
//! with `$1` captures), method, host, and request headers (APISIX 3.x `headers.set/add/remove`).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use regex::bytes::Regex;
use serde::Deserialize;

use super::chain::{BuildCx, FactoryRef, ShardCx};
use super::consumer::Consumers;
use super::response_rewrite::expand;
use super::util::{err, parse};
use super::{phase, Ctx, Flow, Plugin, PluginFactory, Spec};
use crate::error::ConfigError;
use crate::http::parse::{Method, RequestHead};

pub const SPEC: Spec = Spec {
    name: "proxy-rewrite",
    priority: 1008,
    phases: phase::REWRITE,
    build: factory,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeaderConf {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    regex_uri: Option<Vec<String>>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: Option<HeaderConf>,
}

/// Methods `method` may name: APISIX's list less HEAD and CONNECT, which change how the
/// response is framed (a HEAD answer has no body; CONNECT becomes a tunnel).
const METHODS: [&str; 14] = [
    "GET",
    "POST",
    "PUT",
    "DELETE",
    "OPTIONS",
    "PATCH",
    "TRACE",
    "MKCOL",
    "COPY",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "LOCK",
    "UNLOCK",
];

fn header_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
}

fn header_value(v: &str) -> bool {
    v.bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80)
}

/// nginx writes `$1abc` for "capture 1, then abc"; the regex crate would read a group named
/// `1abc`, so numbered references are braced at load: `${1}abc`.
fn nginx_replacement(r: &str) -> String {
    let mut out = String::with_capacity(r.len() + 8);
    let b = r.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() && b[i + 1].is_ascii_digit() {
            let mut j = i + 1;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            out.push_str("${");
            out.push_str(&r[i + 1..j]);
            out.push('}');
            i = j;
        } else {
            let ch = r[i..].chars().next().unwrap_or('\u{fffd}');
            out.push(ch);
            i += ch.len_utf8().max(1);
        }
    }
    out
}

fn factory(v: &toml::Value, path: &str, _cx: &mut BuildCx) -> Result<FactoryRef, ConfigError> {
    let c: Conf = parse(v, path)?;
    if let Some(u) = &c.uri {
        if !u.starts_with('/') || !header_value(u) || u.contains(' ') {
            return Err(err(
                path,
                "uri",
                format!("{u:?} must start with / and contain no spaces or control characters"),
            ));
        }
    }
    let method = match &c.method {
        None => None,
        Some(m) => match METHODS.iter().find(|k| **k == m.as_str()) {
            Some(k) => Some(*k),
            None => {
                return Err(err(
                    path,
                    "method",
                    format!(
                        "{m:?} is not supported; expected one of {}",
                        METHODS.join(", ")
                    ),
                ))
            }
        },
    };
    let mut regex_uri = Vec::new();
    if let Some(r) = &c.regex_uri {
        if r.is_empty() || r.len() % 2 != 0 {
            return Err(err(
                path,
                "regex_uri",
                "expected [regex, replacement] (or more pairs; the first matching one applies)",
            ));
        }
        for (i, pair) in r.chunks(2).enumerate() {
            let re = Regex::new(&pair[0]).map_err(|e| {
                err(
                    path,
                    &format!("regex_uri[{}]", i * 2),
                    format!("bad regex: {e}"),
                )
            })?;
            regex_uri.push((re, nginx_replacement(&pair[1])));
        }
    }
    if let Some(h) = &c.host {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(path, "host", format!("{h:?} is not a host")));
        }
    }
    let h = c.headers.unwrap_or_default();
    for n in h.set.keys().chain(h.add.keys()).chain(h.remove.iter()) {
        if !header_name(n) {
            return Err(err(path, "headers", format!("{n:?} is not a header name")));
        }
    }
    for v in h.set.values().chain(h.add.values()) {
        if !header_value(v) {
            return Err(err(
                path,
                "headers",
                format!("{v:?} contains control characters"),
            ));
        }
    }
    if c.uri.is_none()
        && method.is_none()
        && regex_uri.is_empty()
        && c.host.is_none()
        && h.set.is_empty()
        && h.add.is_empty()
        && h.remove.is_empty()
    {
        return Err(ConfigError::new(
            path,
            "nothing to rewrite: set uri, regex_uri, method, host or headers",
        ));
    }
    Ok(Arc::new(Factory(Arc::new(Shared {
        uri: c.uri,
        regex_uri,
        method,
        host: c.host,
        set: h.set.into_iter().collect(),
        add: h.add.into_iter().collect(),
        remove: h.remove,
    }))))
}

struct Shared {
    uri: Option<String>,
    /// (regex, replacement with braced `${N}` references); the first match applies.
    regex_uri: Vec<(Regex, String)>,
    method: Option<&'static str>,
    host: Option<String>,
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
    remove: Vec<String>,
}

struct Factory(Arc<Shared>);

impl PluginFactory for Factory {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }
    fn build(&self, shard: &ShardCx) -> Rc<dyn Plugin> {
        Rc::new(ProxyRewrite {
            s: self.0.clone(),
            consumers: shard.consumers.clone(),
            shard: shard.id.to_string(),
        })
    }
}

struct ProxyRewrite {
    s: Arc<Shared>,
    consumers: Arc<Consumers>,
    shard: String,
}

impl Plugin for ProxyRewrite {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn rewrite(&self, req: &RequestHead, cx: &mut Ctx) -> Flow {
        let s = &self.s;
        if let Some(u) = &s.uri {
            cx.uri = Some(u.as_bytes().to_vec());
        } else if !s.regex_uri.is_empty() {
            // Matched against the path without the query, as nginx's $uri; the query follows.
            let path = req.path();
            if let Some((re, rep)) = s.regex_uri.iter().find(|(re, _)| re.is_match(path)) {
                cx.uri = Some(re.replace(path, rep.as_bytes()).into_owned());
            }
        }
        // A HEAD request stays HEAD: its client expects no body, whatever the upstream sends.
        if s.method.is_some() && req.method != Method::Head {
            cx.method = s.method;
        }
        if let Some(h) = &s.host {
            cx.host = Some(h.as_bytes().to_vec());
        }
        if !(s.set.is_empty() && s.add.is_empty() && s.remove.is_empty()) {
            let mut buf = Vec::new();
            // APISIX 3.x order: add, then set, then remove.
            for (n, v) in &s.add {
                expand(v, cx, &self.consumers, &self.shard, &mut buf);
                cx.req_headers.add(n.as_bytes(), &buf);
            }
            for (n, v) in &s.set {
                expand(v, cx, &self.consumers, &self.shard, &mut buf);
                cx.req_headers.set(n.as_bytes(), &buf);
            }
            for n in &s.remove {
                cx.req_headers.remove(n.as_bytes());
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use crate::plugin::testkit;

    #[test]
    fn rewrites_uri_method_host_and_headers() {
        let gw = testkit::gateway(
            "[proxy-rewrite]\nuri = \"/v2/fixed\"\nmethod = \"POST\"\nhost = \"backend.internal\"\n\
             headers = { set = { X-Real-IP = \"$remote_addr\" }, add = { X-Via = \"ringway-$shard_id\" }, remove = [\"Cookie\"] }\n",
        );
        let x = gw.send_from("198.51.100.4", b"GET /old?q=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.replied(), None);
        assert_eq!(x.cx.uri.as_deref(), Some(&b"/v2/fixed"[..]));
        assert_eq!(
            x.cx.query, None,
            "the query follows as is (proxy applies it)"
        );
        assert_eq!(x.cx.method, Some("POST"));
        assert_eq!(x.cx.host.as_deref(), Some(&b"backend.internal"[..]));
        assert_eq!(x.upstream_header("X-Real-IP"), Some(&b"198.51.100.4"[..]));
        assert_eq!(x.upstream_header("X-Via"), Some(&b"ringway-0"[..]));
        assert!(x.cx.req_headers.drops(b"cookie"));
        // HEAD stays HEAD.
        let x = gw.send(b"HEAD /old HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.cx.method, None);
    }

    #[test]
    fn regex_uri_uses_the_first_matching_pair_on_the_path() {
        let gw = testkit::gateway(
            "[proxy-rewrite]\nregex_uri = [\"^/api/v1/(.*)\", \"/v1/$1x\", \"^/api/(\\\\w+)/(.*)\", \"/$2/$1\"]\n",
        );
        let x = gw.send(b"GET /api/v1/users?page=2 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.cx.uri.as_deref(), Some(&b"/v1/usersx"[..]));
        let x = gw.send(b"GET /api/v3/items HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.cx.uri.as_deref(), Some(&b"/items/v3"[..]));
        let x = gw.send(b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(x.cx.uri, None, "no match: the request's uri");
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = testkit::config_error("[proxy-rewrite]\n");
        assert_eq!(e.path, "routes[0].plugins.proxy-rewrite");
        assert!(e.message.contains("nothing to rewrite"), "{}", e.message);
        let e = testkit::config_error("[proxy-rewrite]\nmethod = \"HEAD\"\n");
        assert_eq!(e.path, "routes[0].plugins.proxy-rewrite.method");
        let e = testkit::config_error("[proxy-rewrite]\nuri = \"no-slash\"\n");
        assert_eq!(e.path, "routes[0].plugins.proxy-rewrite.uri");
        let e = testkit::config_error(
            "[proxy-rewrite]\nregex_uri = [\"^/a\", \"/b\", \"(\", \"/c\"]\n",
        );
        assert_eq!(e.path, "routes[0].plugins.proxy-rewrite.regex_uri[2]");
        let e = testkit::config_error("[proxy-rewrite]\nregex_uri = [\"^/a\"]\n");
        assert_eq!(e.path, "routes[0].plugins.proxy-rewrite.regex_uri");
        let e = testkit::config_error("[proxy-rewrite]\nheaders = { set = { \"X A\" = \"1\" } }\n");
        assert_eq!(e.path, "routes[0].plugins.proxy-rewrite.headers");
    }
}
