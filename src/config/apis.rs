//! `[[apis]]`: APIs defined by OpenAPI documents, as plain data — the settings, checked, and the
//! document's text (read here, from the file beside the config). Parsing the document and making
//! routes of it is the build step's (`crate::built::apis`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::raw::{RawApi, RawDeprecated, RawDocument};
use super::ConfigError;

/// What a request that does not match its operation gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validate {
    Off,
    Monitor,
    Enforce,
}

/// How a request selects a version among `[[apis]]` of one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionBy {
    /// `version` is a label; it does not route.
    Label,
    /// `/{base_path}/{version}/...`; the default version also without the segment.
    Path,
    /// A request header (lowercase name) equal to the version; the default version takes
    /// requests without it.
    Header(String),
    /// A version named by the request's media type, in Accept or Content-Type:
    /// `application/vnd.acme.v2+json` or `application/json; version=2`; the default version
    /// takes requests naming none.
    MediaType,
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
    pub version_by: VersionBy,
    /// The version requests that name none get (exactly one per name; set in `resolve`).
    pub default: bool,
    /// `Deprecation: @<secs>` (RFC 9745), when deprecated.
    pub deprecated: Option<i64>,
    /// `Sunset: <HTTP-date>` (RFC 8594), when set.
    pub sunset: Option<i64>,
    /// `Link: <..>; rel="successor-version"` target.
    pub successor: Option<String>,
    /// `[apis.slo]`.
    pub slo: Option<super::slo::Slo>,
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
    let version_by = match a.version_by.as_deref() {
        None => VersionBy::Label,
        Some("path") => VersionBy::Path,
        Some("media_type") => VersionBy::MediaType,
        Some(h) if h.starts_with("header:") && h.len() > 7 => {
            let name = &h[7..];
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::new(
                    at("version_by"),
                    format!("{name:?} is not a header name"),
                ));
            }
            VersionBy::Header(name.to_ascii_lowercase())
        }
        Some(o) => {
            return Err(ConfigError::new(
                at("version_by"),
                format!(
                "expected \"path\", \"media_type\" or \"header:NAME\" (e.g. \"header:Accept-Version\"), got {o:?}"
            ),
            ))
        }
    };
    if version_by != VersionBy::Label && a.version.is_none() {
        return Err(ConfigError::new(
            at("version"),
            "version_by needs a version, e.g. version = \"v2\"",
        ));
    }
    let deprecated = match &a.deprecated {
        None | Some(RawDeprecated::Flag(false)) => None,
        // Deprecated with no date said: since the epoch, i.e. already.
        Some(RawDeprecated::Flag(true)) => Some(0),
        Some(RawDeprecated::Date(d)) => Some(date(&at("deprecated"), d)?),
    };
    let sunset = match &a.sunset {
        Some(d) => Some(date(&at("sunset"), d)?),
        None => None,
    };
    Ok(ApiConfig {
        version_by,
        default: a.default.unwrap_or(false),
        deprecated,
        sunset,
        successor: a.successor.clone(),
        slo: match &a.slo {
            Some(s) => Some(super::slo::slo(&at("slo"), s)?),
            None => None,
        },
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

/// Makes exactly one API of each name the default (the one marked `default = true`, else the
/// first); more than one marked is an error. APIs of one name must agree on `version_by`.
pub(super) fn resolve(apis: &mut [ApiConfig]) -> Result<(), ConfigError> {
    let mut names: Vec<String> = apis.iter().map(|a| a.name.clone()).collect();
    names.dedup();
    for name in names {
        let idx: Vec<usize> = (0..apis.len()).filter(|&i| apis[i].name == name).collect();
        let marked: Vec<usize> = idx.iter().copied().filter(|&i| apis[i].default).collect();
        if marked.len() > 1 {
            return Err(ConfigError::new(
                format!("apis[{}].default", marked[1]),
                format!(
                    "API {name:?} already has a default version (apis[{}])",
                    marked[0]
                ),
            ));
        }
        for &i in &idx[1..] {
            if apis[i].version_by != apis[idx[0]].version_by {
                return Err(ConfigError::new(
                    format!("apis[{i}].version_by"),
                    format!("differs from apis[{}], another version of {name:?}", idx[0]),
                ));
            }
            if apis[i].version_by == VersionBy::Label {
                return Err(ConfigError::new(
                    format!("apis[{i}].version_by"),
                    format!("several APIs are named {name:?}: say how a request picks one, e.g. version_by = \"path\""),
                ));
            }
        }
        let d = marked.first().copied().unwrap_or(idx[0]);
        apis[d].default = true;
    }
    Ok(())
}

/// "YYYY-MM-DD" -> seconds since the epoch (midnight UTC).
fn date(path: &str, s: &str) -> Result<i64, ConfigError> {
    let bad = || ConfigError::new(path, format!("{s:?} is not a date like \"2027-06-30\""));
    let mut it = s.split('-');
    let (Some(y), Some(m), Some(d), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(bad());
    };
    let (y, m, d): (i64, i64, i64) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    // Howard Hinnant's days_from_civil.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Ok((era * 146_097 + doe - 719_468) * 86_400)
}

/// An IMF-fixdate (`Wed, 30 Jun 2027 00:00:00 GMT`) for seconds since the epoch.
pub fn http_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        let t = super::date("x", "2027-06-30").expect("date");
        assert_eq!(t, 1_814_313_600);
        assert_eq!(super::http_date(t), "Wed, 30 Jun 2027 00:00:00 GMT");
        assert_eq!(super::http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert!(super::date("x", "2027-13-01").is_err());
    }
}
