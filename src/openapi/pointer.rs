//! JSON pointers into a document: the error that names one, escaping a reference token and
//! following internal `$ref`s. Knows no OpenAPI object (doc.rs reads those).

use std::fmt;

use serde_json::Value;

/// A document error at a JSON pointer into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocError {
    /// `#/paths/~1pets/get`; `#` for the document as a whole.
    pub pointer: String,
    pub message: String,
}

impl DocError {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> DocError {
        DocError {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pointer, self.message)
    }
}

impl std::error::Error for DocError {}

/// Longest `$ref` chain followed before giving up (a cycle, or a document built to hang us).
const MAX_REF_HOPS: usize = 32;

/// JSON pointer escaping of one reference token.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Follows `$ref`s from `v` (at pointer `at`) to the node they name, inside this document.
pub fn resolve<'a>(
    root: &'a Value,
    v: &'a Value,
    at: &str,
) -> Result<(&'a Value, String), DocError> {
    let mut cur = v;
    let mut ptr = at.to_string();
    for _ in 0..MAX_REF_HOPS {
        let Some(r) = cur.get("$ref") else {
            return Ok((cur, ptr));
        };
        let Some(r) = r.as_str() else {
            return Err(DocError::new(format!("{ptr}/$ref"), "expected a string"));
        };
        let Some(frag) = r.strip_prefix('#') else {
            return Err(DocError::new(
                format!("{ptr}/$ref"),
                format!("{r:?}: only references inside the document (\"#/...\") are supported"),
            ));
        };
        let target = root.pointer(&percent_decode(frag)).ok_or_else(|| {
            DocError::new(format!("{ptr}/$ref"), format!("{r:?} points at nothing"))
        })?;
        cur = target;
        ptr = format!("#{frag}");
    }
    Err(DocError::new(ptr, "too many nested $refs (a cycle?)"))
}

fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
