//! The request mix: `-m/-H/--body` flags, weighted `--url URL@W`, and TOML `--scenario` files,
//! turned into prebuilt request bytes plus a weighted picker. Must not touch sockets or timing.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::url::Url;

/// One kind of request in the mix, before it is serialised.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: String,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub weight: u32,
}

/// Serialised requests ready to copy onto the wire, so the hot path never formats anything.
pub struct Mix {
    pub requests: Vec<Prebuilt>,
    cumulative: Vec<u64>,
    total: u64,
}

pub struct Prebuilt {
    pub bytes: Vec<u8>,
    /// Responses to HEAD carry no body even with Content-Length, so the reader must know.
    pub is_head: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(rename = "request", default)]
    requests: Vec<ScenarioEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioEntry {
    url: String,
    method: Option<String>,
    #[serde(default)]
    headers: Vec<String>,
    body: Option<String>,
    body_file: Option<PathBuf>,
    weight: Option<u32>,
}

/// `URL@3` gives weight 3; a trailing `@...` that is not a number stays part of the URL.
pub fn split_weight(s: &str) -> Result<(&str, u32), String> {
    if let Some((url, w)) = s.rsplit_once('@') {
        if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) {
            let weight: u32 = w
                .parse()
                .map_err(|_| format!("weight `{w}` is too large"))?;
            return Ok((url, weight));
        }
    }
    Ok((s, 1))
}

pub fn parse_header(h: &str) -> Result<(String, String), String> {
    let (name, value) = h
        .split_once(':')
        .ok_or_else(|| format!("header `{h}` must look like `Name: value`"))?;
    let name = name.trim();
    let value = value.trim();
    let token_ok = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token_ok) {
        return Err(format!("invalid header name in `{h}`"));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!("header `{name}` contains a line break"));
    }
    Ok((name.to_string(), value.to_string()))
}

pub fn read_body_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read body file {}: {e}", path.display()))
}

pub fn load_scenario(path: &Path) -> Result<Vec<RequestSpec>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read scenario {}: {e}", path.display()))?;
    let file: ScenarioFile = toml::from_str(&text).map_err(|e| {
        let msg = e.message().to_string();
        format!("scenario {}: {}", path.display(), msg.trim())
    })?;
    if file.requests.is_empty() {
        return Err(format!(
            "scenario {} has no [[request]] entries",
            path.display()
        ));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    file.requests
        .into_iter()
        .map(|e| {
            let headers = e
                .headers
                .iter()
                .map(|h| parse_header(h))
                .collect::<Result<Vec<_>, _>>()?;
            let body = match (e.body, e.body_file) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "scenario request {}: body and body_file both set",
                        e.url
                    ))
                }
                (Some(b), None) => b.into_bytes(),
                (None, Some(f)) => read_body_file(&base.join(f))?,
                (None, None) => Vec::new(),
            };
            Ok(RequestSpec {
                method: check_method(e.method.as_deref().unwrap_or("GET"))?,
                url: Url::parse(&e.url)?,
                headers,
                body,
                weight: e.weight.unwrap_or(1),
            })
        })
        .collect()
}

pub fn check_method(m: &str) -> Result<String, String> {
    if m.is_empty()
        || !m
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_')
    {
        return Err(format!("invalid HTTP method `{m}`"));
    }
    Ok(m.to_ascii_uppercase())
}

fn has(headers: &[(String, String)], name: &str) -> bool {
    headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
}

pub fn build(spec: &RequestSpec, keepalive: bool) -> Vec<u8> {
    let mut out = format!("{} {} HTTP/1.1\r\n", spec.method, spec.url.path);
    if !has(&spec.headers, "host") {
        out.push_str(&format!("Host: {}\r\n", spec.url.authority()));
    }
    for (n, v) in &spec.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    let wants_length =
        !spec.body.is_empty() || matches!(spec.method.as_str(), "POST" | "PUT" | "PATCH");
    if wants_length
        && !has(&spec.headers, "content-length")
        && !has(&spec.headers, "transfer-encoding")
    {
        out.push_str(&format!("Content-Length: {}\r\n", spec.body.len()));
    }
    if !keepalive && !has(&spec.headers, "connection") {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&spec.body);
    bytes
}

impl Mix {
    pub fn new(specs: &[RequestSpec], keepalive: bool) -> Result<Mix, String> {
        let mut cumulative = Vec::with_capacity(specs.len());
        let mut total = 0u64;
        for s in specs {
            total += u64::from(s.weight);
            cumulative.push(total);
        }
        if total == 0 {
            return Err("all request weights are zero".into());
        }
        let requests = specs
            .iter()
            .map(|s| Prebuilt {
                bytes: build(s, keepalive),
                is_head: s.method == "HEAD",
            })
            .collect();
        Ok(Mix {
            requests,
            cumulative,
            total,
        })
    }

    /// Weighted choice; with a single request the RNG is not even touched.
    pub fn pick(&self, rng: &mut Rng) -> usize {
        if self.requests.len() == 1 {
            return 0;
        }
        let x = rng.next() % self.total;
        self.cumulative.iter().position(|&c| x < c).unwrap_or(0)
    }
}

/// xorshift64*: the mix only needs cheap, well-spread choices, not cryptographic ones.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(method: &str, path: &str, weight: u32) -> RequestSpec {
        RequestSpec {
            method: method.into(),
            url: Url::parse(&format!("http://h:81{path}")).expect("url"),
            headers: vec![("X-A".into(), "1".into())],
            body: Vec::new(),
            weight,
        }
    }

    #[test]
    fn builds_request_bytes() {
        let mut s = spec("POST", "/p", 1);
        s.body = b"hi".to_vec();
        let text = String::from_utf8(build(&s, false)).expect("utf8");
        assert_eq!(text, "POST /p HTTP/1.1\r\nHost: h:81\r\nX-A: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
    }

    #[test]
    fn weights_are_respected() {
        let mix = Mix::new(
            &[
                spec("GET", "/a", 1),
                spec("GET", "/b", 3),
                spec("GET", "/c", 0),
            ],
            true,
        )
        .expect("mix");
        let mut rng = Rng::new(7);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[mix.pick(&mut rng)] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!((28_000..32_000).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn weight_and_header_syntax() {
        assert_eq!(split_weight("http://h/x@3"), Ok(("http://h/x", 3)));
        assert_eq!(split_weight("http://h/x@y"), Ok(("http://h/x@y", 1)));
        assert!(parse_header("NoColon").is_err());
        assert!(parse_header("Bad Name: x").is_err());
        assert_eq!(parse_header("A:  b "), Ok(("A".into(), "b".into())));
    }
}
