//! `[[apis]]`: APIs defined by OpenAPI documents, as plain data — the settings, checked, and the
//! document's text (read here, from the file beside the config). Parsing the document and making
//! routes of it is the build step's (`crate::built::apis`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::raw::{RawApi, RawDocument};
use super::ConfigError;

/// What a request that does not match its operation gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validate {
    Off,
    Monitor,
    Enforce,
}

/// Default `max_body_bytes` of an API: bodies read whole for validation.
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;

/// One `[[apis]]` entry.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub name: String,
    pub version: Option<String>,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    /// "" or "/prefix" (no trailing '/').
    pub base_path: String,
    pub hosts: Vec<String>,
    pub validate: Validate,
    pub max_body_bytes: u64,
    pub plugins: BTreeMap<String, toml::Value>,
    /// Where the document came from, for messages: its path, or "inline".
    pub source: String,
    /// The document's text (JSON or YAML).
    pub text: Arc<str>,
}

impl ApiConfig {
    /// `name`, or `name@version`: the prefix of its routes' names.
    pub fn id(&self) -> String {
        match &self.version {
            Some(v) => format!("{}@{v}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Checks `apis[i]` and reads its document (relative to `dir`).
pub(super) fn api(
    i: usize,
    a: &RawApi,
    upstreams: &HashMap<String, usize>,
    dir: &Path,
) -> Result<ApiConfig, ConfigError> {
    let at = |k: &str| format!("apis[{i}].{k}");
    if a.name.is_empty()
        || !a
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ConfigError::new(
            at("name"),
            format!(
                "{:?} must be non-empty letters, digits, '-', '_' or '.'",
                a.name
            ),
        ));
    }
    if let Some(v) = &a.version {
        if v.is_empty()
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConfigError::new(
                at("version"),
                format!("{v:?} must be non-empty letters, digits, '-', '_' or '.'"),
            ));
        }
    }
    let upstream = *upstreams.get(&a.upstream).ok_or_else(|| {
        let mut known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        known.sort_unstable();
        ConfigError::new(
            at("upstream"),
            format!("no upstream named {:?} (defined: {known:?})", a.upstream),
        )
    })?;
    let base_path = match a.base_path.as_deref() {
        None | Some("") | Some("/") => String::new(),
        Some(p) if p.starts_with('/') && !p.contains(['{', '}', '*', '?', '#']) => {
            p.trim_end_matches('/').to_string()
        }
        Some(p) => {
            return Err(ConfigError::new(
                at("base_path"),
                format!("{p:?} must start with '/' and hold no '{{', '*', '?' or '#'"),
            ))
        }
    };
    let validate = match a.validate.as_deref() {
        None | Some("enforce") => Validate::Enforce,
        Some("monitor") => Validate::Monitor,
        Some("off") => Validate::Off,
        Some(o) => {
            return Err(ConfigError::new(
                at("validate"),
                format!("expected \"enforce\", \"monitor\" or \"off\", got {o:?}"),
            ))
        }
    };
    let max_body_bytes = a.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
    if max_body_bytes == 0 {
        return Err(ConfigError::new(at("max_body_bytes"), "must be at least 1"));
    }
    let (source, text): (String, Arc<str>) = match (&a.spec, &a.document) {
        (Some(p), None) => {
            let path = dir.join(p);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::new(at("spec"), format!("cannot read {}: {e}", path.display()))
            })?;
            (p.clone(), text.into())
        }
        (None, Some(RawDocument::Text(t))) => ("inline".into(), t.as_str().into()),
        (None, Some(RawDocument::Json(v))) => ("inline".into(), v.to_string().into()),
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                at("document"),
                "give either spec (a file) or document (inline), not both",
            ))
        }
        (None, None) => {
            return Err(ConfigError::new(
                at("spec"),
                "an API needs its OpenAPI document: spec = \"openapi.yaml\" (relative to the config file)",
            ))
        }
    };
    Ok(ApiConfig {
        name: a.name.clone(),
        version: a.version.clone(),
        upstream,
        base_path,
        hosts: a.hosts.clone(),
        validate,
        max_body_bytes,
        plugins: a.plugins.clone(),
        source,
        text,
    })
}
