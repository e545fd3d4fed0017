//! Parsing of `http://host:port/path` target URLs into the parts a request needs.
//! Owns URL syntax only; must not resolve names at parse time or know about connections.

use std::net::{SocketAddr, ToSocketAddrs};

/// A plain-HTTP target. `path` keeps the query string because it is sent verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "unsupported scheme `{scheme}` in URL `{s}` (only http://)"
                ))
            }
            None => {
                return Err(format!(
                    "invalid URL `{s}`: expected http://host[:port]/path"
                ))
            }
        };
        let rest = rest.split('#').next().unwrap_or("");
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err(format!("invalid URL `{s}`: userinfo is not supported"));
        }
        let (host, port) =
            split_host_port(authority).map_err(|e| format!("invalid URL `{s}`: {e}"))?;
        if host.is_empty() {
            return Err(format!("invalid URL `{s}`: missing host"));
        }
        let path = match path.chars().next() {
            None => "/".to_string(),
            Some('?') => format!("/{path}"),
            Some(_) => path.to_string(),
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!(
                "invalid URL `{s}`: path contains spaces or control characters"
            ));
        }
        Ok(Url { host, port, path })
    }

    /// The Host header value: the port is omitted when it is the scheme default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    pub fn resolve(&self) -> Result<SocketAddr, String> {
        let mut addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve `{}`: {e}", self.host))?;
        addrs
            .next()
            .ok_or_else(|| format!("cannot resolve `{}`: no addresses", self.host))
    }
}

fn split_host_port(authority: &str) -> Result<(String, u16), String> {
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed `[` in host")?;
        let port = match after.strip_prefix(':') {
            Some(p) => parse_port(p)?,
            None if after.is_empty() => 80,
            None => return Err("garbage after IPv6 host".into()),
        };
        return Ok((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_string(), parse_port(port)?)),
        None => Ok((authority.to_string(), 80)),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("bad port `{p}`")),
        Ok(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_shapes() {
        let u = Url::parse("http://127.0.0.1:8080/a/b?x=1").expect("valid");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/a/b?x=1")
        );
        let u = Url::parse("http://example.com").expect("valid");
        assert_eq!(
            (u.port, u.path.as_str(), u.authority().as_str()),
            (80, "/", "example.com")
        );
        let u = Url::parse("http://[::1]:9000?q").expect("valid");
        assert_eq!((u.host.as_str(), u.path.as_str()), ("::1", "/?q"));
        assert_eq!(u.authority(), "[::1]:9000");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "localhost:80",
            "https://x/",
            "http://",
            "http://h:0/",
            "http://h:99999/",
            "http://h/a b",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad} should fail");
        }
    }
}
