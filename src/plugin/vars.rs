//! APISIX-style request conditions (lua-resty-expr subset) shared by traffic-split and
//! fault-injection: `[["http_x_canary", "==", "1"], ["arg_v", "~~", "^2"]]`, all must hold.

use regex::bytes::Regex;

use super::ctx::Ctx;
use super::util::{cookie, query_arg};
use crate::error::ConfigError;
use crate::http::parse::RequestHead;

/// Where a condition's left-hand side comes from.
#[derive(Debug)]
enum Var {
    /// `http_x_canary` -> header `x-canary`.
    Header(String),
    /// `arg_name` -> query argument.
    Arg(Vec<u8>),
    /// `cookie_name`.
    Cookie(Vec<u8>),
    Uri,
    Host,
    Method,
    RemoteAddr,
}

#[derive(Debug)]
enum Op {
    Eq(Vec<u8>),
    Ne(Vec<u8>),
    /// `~~` (and `~*`, compiled case-insensitive).
    Re(Regex),
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    In(Vec<Vec<u8>>),
}

/// One `[var, op, value]`; `!` before the operator negates it, as in lua-resty-expr.
#[derive(Debug)]
pub struct Cond {
    var: Var,
    op: Op,
    negate: bool,
}

/// The conditions of one `vars` list; an empty list always matches.
pub type Conds = Vec<Cond>;

fn value_text(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_var(name: &str) -> Option<Var> {
    Some(match name {
        "uri" => Var::Uri,
        "host" => Var::Host,
        "request_method" => Var::Method,
        "remote_addr" => Var::RemoteAddr,
        _ => {
            if let Some(h) = name.strip_prefix("http_").filter(|h| !h.is_empty()) {
                Var::Header(h.replace('_', "-").to_ascii_lowercase())
            } else if let Some(a) = name.strip_prefix("arg_").filter(|a| !a.is_empty()) {
                Var::Arg(a.as_bytes().to_vec())
            } else if let Some(c) = name.strip_prefix("cookie_").filter(|c| !c.is_empty()) {
                Var::Cookie(c.as_bytes().to_vec())
            } else {
                return None;
            }
        }
    })
}

/// Parses `[[var, op, value], ...]` at `path`.
pub fn parse(v: &toml::Value, path: &str) -> Result<Conds, ConfigError> {
    let Some(list) = v.as_array() else {
        return Err(ConfigError::new(
            path,
            "expected a list of [var, op, value], e.g. [[\"http_x_canary\", \"==\", \"1\"]]",
        ));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let parts = c.as_array().filter(|p| p.len() == 3).ok_or_else(|| {
            ConfigError::new(
                &at,
                "expected [var, op, value], e.g. [\"arg_v\", \"==\", \"2\"]",
            )
        })?;
        let name = parts[0].as_str().unwrap_or_default();
        let var = parse_var(name).ok_or_else(|| {
            ConfigError::new(&at, format!("unknown variable {:?}; supported: http_NAME, arg_NAME, cookie_NAME, uri, host, request_method, remote_addr", parts[0]))
        })?;
        let op_text = parts[1].as_str().unwrap_or_default();
        let (negate, op_text) = match op_text.strip_prefix('!') {
            Some(o) => (true, o),
            None => (false, op_text),
        };
        let num = || {
            parts[2]
                .as_float()
                .or_else(|| parts[2].as_integer().map(|i| i as f64))
                .ok_or_else(|| ConfigError::new(&at, format!("{op_text} needs a number")))
        };
        let text = || {
            value_text(&parts[2])
                .ok_or_else(|| ConfigError::new(&at, "value must be a string or number"))
        };
        let op = match op_text {
            "==" => Op::Eq(text()?.into_bytes()),
            "~=" => Op::Ne(text()?.into_bytes()),
            "~~" | "~*" => {
                let t = text()?;
                let src = if op_text == "~*" { format!("(?i){t}") } else { t };
                Op::Re(Regex::new(&src).map_err(|e| {
                    ConfigError::new(&at, format!("bad regex: {e}"))
                })?)
            }
            ">" => Op::Gt(num()?),
            ">=" => Op::Ge(num()?),
            "<" => Op::Lt(num()?),
            "<=" => Op::Le(num()?),
            "in" => {
                let items = parts[2]
                    .as_array()
                    .ok_or_else(|| ConfigError::new(&at, "in needs a list"))?;
                let mut set = Vec::with_capacity(items.len());
                for it in items {
                    set.push(
                        value_text(it)
                            .ok_or_else(|| ConfigError::new(&at, "in needs strings or numbers"))?
                            .into_bytes(),
                    );
                }
                Op::In(set)
            }
            o => {
                return Err(ConfigError::new(
                    &at,
                    format!("unknown operator {o:?}; supported: ==, ~=, ~~, ~*, >, >=, <, <=, in (prefix ! to negate)"),
                ))
            }
        };
        out.push(Cond { var, op, negate });
    }
    Ok(out)
}

/// True when every condition holds. An absent variable only satisfies `~=` (and negations).
pub fn matches(conds: &[Cond], req: &RequestHead, cx: &Ctx) -> bool {
    let mut ip = [0u8; 39];
    conds.iter().all(|c| {
        let v: Option<&[u8]> = match &c.var {
            Var::Header(h) => req.header(h),
            Var::Arg(a) => query_arg(req.query(), a),
            Var::Cookie(n) => req.header("cookie").and_then(|v| cookie(v, n)),
            Var::Uri => Some(req.path()),
            Var::Host => Some(req.host()),
            Var::Method => Some(req.method_bytes()),
            Var::RemoteAddr => {
                use std::io::Write;
                let mut w = &mut ip[..];
                let _ = write!(w, "{}", cx.client_ip);
                let left = w.len();
                Some(&ip[..39 - left])
            }
        };
        let num = || {
            v.and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.trim().parse::<f64>().ok())
        };
        let hit = match &c.op {
            Op::Eq(want) => v == Some(want.as_slice()),
            Op::Ne(want) => v != Some(want.as_slice()),
            Op::Re(re) => v.is_some_and(|b| re.is_match(b)),
            Op::Gt(n) => num().is_some_and(|x| x > *n),
            Op::Ge(n) => num().is_some_and(|x| x >= *n),
            Op::Lt(n) => num().is_some_and(|x| x < *n),
            Op::Le(n) => num().is_some_and(|x| x <= *n),
            Op::In(set) => v.is_some_and(|b| set.iter().any(|s| s == b)),
        };
        hit != c.negate
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conds(t: &str) -> Result<Conds, ConfigError> {
        let v: toml::Value = toml::from_str(&format!("v = {t}")).unwrap();
        parse(&v["v"], "p")
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            conds(r#"[["http_x_canary", "==", "1"], ["arg_v", "~~", "^2"]]"#)
                .unwrap()
                .len(),
            2
        );
        assert!(conds(r#"[["arg_n", ">", 3]]"#).is_ok());
        assert!(conds(r#"[["arg_n", "!in", ["a", "b"]]]"#).is_ok());
        let e = conds(r#"[["nope", "==", "1"]]"#).unwrap_err().to_string();
        assert!(e.contains("p[0]") && e.contains("unknown variable"), "{e}");
        assert!(conds(r#"[["arg_v", "=~", "1"]]"#).is_err());
        assert!(conds(r#"[["arg_v", "~~", "("]]"#).is_err());
        assert!(conds(r#"[["arg_v", "=="]]"#).is_err());
    }
}
