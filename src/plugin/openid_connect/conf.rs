//! openid-connect's config: the plugin table as written (APISIX's keys where they fit) and the
//! validated `Settings` every shard instance of one config shares. No I/O, no shard state.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::remote::Endpoints;
use crate::error::ConfigError;
use crate::plugin::util::{duration, err, parse, RawDur};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ClaimValidator {
    #[serde(default)]
    issuer: IssuerRule,
    #[serde(default)]
    audience: AudienceRule,
    #[serde(default)]
    required_claims: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IssuerRule {
    #[serde(default)]
    valid_issuers: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AudienceRule {
    #[serde(default)]
    required: bool,
    #[serde(default)]
    match_with_client_id: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    discovery: String,
    client_id: String,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default = "yes")]
    bearer_only: bool,
    #[serde(default = "yes")]
    use_jwks: bool,
    #[serde(default)]
    introspection_endpoint: Option<String>,
    #[serde(default)]
    introspection_endpoint_auth_method: Option<String>,
    #[serde(default)]
    required_scopes: Vec<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    claim_validator: ClaimValidator,
    #[serde(default = "yes")]
    set_access_token_header: bool,
    #[serde(default)]
    access_token_in_authorization_header: bool,
    #[serde(default = "yes")]
    set_userinfo_header: bool,
    /// Browser flow only (no ID token on the bearer path); accepted for APISIX configs.
    #[serde(default)]
    set_id_token_header: bool,
    #[serde(default)]
    unauth_action: Option<String>,
    #[serde(default)]
    consumer_by: Option<String>,
    #[serde(default)]
    claims_to_headers: BTreeMap<String, String>,
    #[serde(default)]
    timeout: Option<RawDur>,
    #[serde(default)]
    jwks_refresh_interval: Option<RawDur>,
    #[serde(default)]
    jwks_refetch_interval: Option<RawDur>,
    #[serde(default)]
    introspection_cache_ttl: Option<RawDur>,
    #[serde(default)]
    introspection_negative_ttl: Option<RawDur>,
    #[serde(default)]
    clock_skew: Option<RawDur>,
    /// Keep verified JWTs per shard until they expire (README "OpenID Connect"); off only to
    /// measure what the reuse saves.
    #[serde(default = "yes")]
    reuse_verified_tokens: bool,
    #[serde(default)]
    provider_unavailable_status: Option<u16>,
}

/// The validated settings every shard instance of one config shares.
pub(super) struct Settings {
    pub endpoints: Endpoints,
    pub use_jwks: bool,
    pub required_scopes: Vec<String>,
    /// `WWW-Authenticate` for 403 insufficient_scope (it names the scopes).
    pub scope_challenge: String,
    pub issuers: Vec<String>,
    pub audience: Option<String>,
    pub skew: Duration,
    pub reuse_verified: bool,
    pub required_claims: Vec<String>,
    pub set_access_token_header: bool,
    pub access_token_in_authorization_header: bool,
    pub set_userinfo_header: bool,
    pub pass_unauthenticated: bool,
    pub consumer_by: Option<String>,
    pub claims_to_headers: Vec<(String, String)>,
    pub intro_ttl: Duration,
    pub negative_ttl: Duration,
    pub unavailable_status: u16,
}

/// Every duration of this plugin is added to `Instant`s on the shard: a week at most.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

fn dur(
    path: &str,
    key: &str,
    v: &Option<RawDur>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = v.as_ref().map_or(Ok(default), |d| duration(path, key, d))?;
    if d > MAX_DURATION {
        return Err(err(path, key, format!("{d:?} is longer than a week")));
    }
    Ok(d)
}

fn http_url(path: &str, key: &str, u: &str) -> Result<(), ConfigError> {
    if u.starts_with("http://") || u.starts_with("https://") {
        Ok(())
    } else {
        Err(err(path, key, format!("{u:?} is not an http(s) URL")))
    }
}

/// Validates one plugin table into the settings its instances share.
pub(super) fn settings(v: &toml::Value, path: &str) -> Result<Settings, ConfigError> {
    let c: Conf = parse(v, path)?;
    let _ = c.set_id_token_header;
    if !c.bearer_only {
        return Err(err(
            path,
            "bearer_only",
            "the browser flow (bearer_only = false) is not implemented yet; only bearer tokens are",
        ));
    }
    http_url(path, "discovery", &c.discovery)?;
    if let Some(u) = &c.introspection_endpoint {
        http_url(path, "introspection_endpoint", u)?;
    }
    if c.client_id.is_empty() {
        return Err(err(path, "client_id", "must not be empty"));
    }
    let secret_in_body = match c.introspection_endpoint_auth_method.as_deref() {
        None | Some("client_secret_basic") => false,
        Some("client_secret_post") => true,
        Some(o) => {
            return Err(err(
                path,
                "introspection_endpoint_auth_method",
                format!("expected client_secret_basic or client_secret_post, got {o:?}"),
            ))
        }
    };
    let pass_unauthenticated = match c.unauth_action.as_deref() {
        None | Some("auth") | Some("deny") => false,
        Some("pass") => true,
        Some(o) => {
            return Err(err(
                path,
                "unauth_action",
                format!("expected \"auth\", \"deny\" or \"pass\", got {o:?}"),
            ))
        }
    };
    let audience = c.audience.clone().or_else(|| {
        c.claim_validator
            .audience
            .match_with_client_id
            .then(|| c.client_id.clone())
    });
    if c.claim_validator.audience.required && audience.is_none() {
        return Err(err(
            path,
            "claim_validator.audience.required",
            "set `audience` or `claim_validator.audience.match_with_client_id` to say which audience",
        ));
    }
    let unavailable_status = c.provider_unavailable_status.unwrap_or(503);
    if !(400..=599).contains(&unavailable_status) {
        return Err(err(
            path,
            "provider_unavailable_status",
            format!("expected a 4xx or 5xx status, got {unavailable_status}"),
        ));
    }
    for (claim, header) in &c.claims_to_headers {
        if header.is_empty()
            || !header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(err(
                path,
                &format!("claims_to_headers.{claim}"),
                format!("{header:?} is not a header name"),
            ));
        }
    }
    let scope = c.required_scopes.join(" ");
    let s = Settings {
        endpoints: Endpoints {
            discovery: c.discovery,
            client_id: c.client_id,
            client_secret: c.client_secret,
            introspection: c.introspection_endpoint,
            secret_in_body,
            timeout: dur(path, "timeout", &c.timeout, Duration::from_secs(3))?,
            jwks_refresh: dur(
                path,
                "jwks_refresh_interval",
                &c.jwks_refresh_interval,
                Duration::from_secs(300),
            )?
            .max(Duration::from_secs(1)),
            jwks_refetch_interval: dur(
                path,
                "jwks_refetch_interval",
                &c.jwks_refetch_interval,
                Duration::from_secs(10),
            )?,
        },
        use_jwks: c.use_jwks,
        scope_challenge: format!(
            "Bearer realm=\"ringway\", error=\"insufficient_scope\", scope=\"{scope}\""
        ),
        required_scopes: c.required_scopes,
        issuers: c.claim_validator.issuer.valid_issuers,
        audience,
        skew: dur(path, "clock_skew", &c.clock_skew, Duration::ZERO)?,
        reuse_verified: c.reuse_verified_tokens,
        required_claims: c.claim_validator.required_claims,
        set_access_token_header: c.set_access_token_header,
        access_token_in_authorization_header: c.access_token_in_authorization_header,
        set_userinfo_header: c.set_userinfo_header,
        pass_unauthenticated,
        consumer_by: c.consumer_by,
        claims_to_headers: c.claims_to_headers.into_iter().collect(),
        intro_ttl: dur(
            path,
            "introspection_cache_ttl",
            &c.introspection_cache_ttl,
            Duration::from_secs(300),
        )?,
        negative_ttl: dur(
            path,
            "introspection_negative_ttl",
            &c.introspection_negative_ttl,
            Duration::from_secs(5),
        )?,
        unavailable_status,
    };
    Ok(s)
}
