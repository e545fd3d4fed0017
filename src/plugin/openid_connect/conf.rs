//! openid-connect's config: the plugin table as written (APISIX's keys where they fit) and the
//! validated `Settings` every shard instance of one config shares. No I/O, no shard state.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::calls::Endpoints;
use super::session::Sealer;
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SessionConf {
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    cookie_name: Option<String>,
    #[serde(default)]
    lifetime: Option<RawDur>,
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
    /// Browser flow only (no ID token on the bearer path).
    #[serde(default = "yes")]
    set_id_token_header: bool,
    #[serde(default)]
    redirect_uri: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    session: SessionConf,
    #[serde(default)]
    logout_path: Option<String>,
    #[serde(default)]
    post_logout_redirect_uri: Option<String>,
    #[serde(default = "yes")]
    renew_access_token_on_expiry: bool,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
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
    pub set_id_token_header: bool,
    pub unauth: Unauth,
    /// The authorization code flow, when `bearer_only = false`.
    pub browser: Option<Browser>,
    pub consumer_by: Option<String>,
    pub claims_to_headers: Vec<(String, String)>,
    pub intro_ttl: Duration,
    pub negative_ttl: Duration,
    pub unavailable_status: u16,
}

/// What a request without credentials gets (`unauth_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauth {
    /// A login (browser flow) or 401 (bearer only).
    Auth,
    Deny,
    Pass,
}

/// The browser flow's settings.
pub(super) struct Browser {
    pub redirect_uri: String,
    /// `redirect_uri`'s path: the request path the callback arrives on.
    pub callback_path: String,
    pub scope: String,
    pub sealer: Sealer,
    pub cookie: String,
    /// The login-in-progress cookie's name.
    pub state_cookie: String,
    /// Seconds a session lasts (the cookie's Max-Age).
    pub lifetime: u64,
    pub logout_path: String,
    pub post_logout_redirect_uri: Option<String>,
    pub renew: bool,
    /// Cookies carry Secure (the redirect_uri is https).
    pub secure: bool,
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

fn auth_method(path: &str, key: &str, v: &Option<String>) -> Result<bool, ConfigError> {
    match v.as_deref() {
        None | Some("client_secret_basic") => Ok(false),
        Some("client_secret_post") => Ok(true),
        Some(o) => Err(err(
            path,
            key,
            format!("expected client_secret_basic or client_secret_post, got {o:?}"),
        )),
    }
}

/// The browser flow's keys (`bearer_only = false`), checked.
fn browser(c: &Conf, path: &str) -> Result<Browser, ConfigError> {
    let redirect_uri = c.redirect_uri.clone().ok_or_else(|| {
        err(
            path,
            "redirect_uri",
            "required with bearer_only = false: the full callback URL registered at the provider",
        )
    })?;
    http_url(path, "redirect_uri", &redirect_uri)?;
    let after_scheme = redirect_uri.split_once("://").map_or("", |x| x.1);
    let callback_path = match after_scheme.find('/') {
        Some(i) => after_scheme[i..]
            .split(['?', '#'])
            .next()
            .unwrap_or("/")
            .to_string(),
        None => "/".to_string(),
    };
    let secret = c.session.secret.clone().unwrap_or_default();
    if secret.len() < 16 {
        return Err(err(
            path,
            "session.secret",
            "required with bearer_only = false, at least 16 characters (it seals the session cookie)",
        ));
    }
    let cookie = c
        .session
        .cookie_name
        .clone()
        .unwrap_or_else(|| "ringway_session".into());
    if cookie.is_empty()
        || !cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(err(
            path,
            "session.cookie_name",
            format!("{cookie:?}: use letters, digits, - and _"),
        ));
    }
    let logout_path = c.logout_path.clone().unwrap_or_else(|| "/logout".into());
    if !logout_path.starts_with('/') {
        return Err(err(path, "logout_path", "must start with /"));
    }
    if logout_path == callback_path {
        return Err(err(path, "logout_path", "is redirect_uri's path"));
    }
    if let Some(u) = &c.post_logout_redirect_uri {
        http_url(path, "post_logout_redirect_uri", u)?;
    }
    let lifetime = dur(
        path,
        "session.lifetime",
        &c.session.lifetime,
        Duration::from_secs(3600),
    )?
    .as_secs()
    .max(1);
    Ok(Browser {
        secure: redirect_uri.starts_with("https://"),
        redirect_uri,
        callback_path,
        scope: c.scope.clone().unwrap_or_else(|| "openid".into()),
        sealer: Sealer::new(&secret),
        state_cookie: format!("{cookie}_login"),
        cookie,
        lifetime,
        logout_path,
        post_logout_redirect_uri: c.post_logout_redirect_uri.clone(),
        renew: c.renew_access_token_on_expiry,
    })
}

/// Validates one plugin table into the settings its instances share.
pub(super) fn settings(v: &toml::Value, path: &str) -> Result<Settings, ConfigError> {
    let c: Conf = parse(v, path)?;
    http_url(path, "discovery", &c.discovery)?;
    let browser = if c.bearer_only {
        None
    } else {
        Some(browser(&c, path)?)
    };
    if let Some(u) = &c.introspection_endpoint {
        http_url(path, "introspection_endpoint", u)?;
    }
    if c.client_id.is_empty() {
        return Err(err(path, "client_id", "must not be empty"));
    }
    let secret_in_body = auth_method(
        path,
        "introspection_endpoint_auth_method",
        &c.introspection_endpoint_auth_method,
    )?;
    let token_secret_in_body = auth_method(
        path,
        "token_endpoint_auth_method",
        &c.token_endpoint_auth_method,
    )?;
    let unauth = match c.unauth_action.as_deref() {
        None | Some("auth") => Unauth::Auth,
        Some("deny") => Unauth::Deny,
        Some("pass") => Unauth::Pass,
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
    let skew = dur(path, "clock_skew", &c.clock_skew, Duration::ZERO)?;
    let s = Settings {
        endpoints: Endpoints {
            discovery: c.discovery,
            client_id: c.client_id,
            client_secret: c.client_secret,
            introspection: c.introspection_endpoint,
            secret_in_body,
            token_secret_in_body,
            redirect_uri: browser.as_ref().map(|b| b.redirect_uri.clone()),
            userinfo: c.set_userinfo_header,
            skew: skew.as_secs(),
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
        skew,
        reuse_verified: c.reuse_verified_tokens,
        required_claims: c.claim_validator.required_claims,
        set_access_token_header: c.set_access_token_header,
        access_token_in_authorization_header: c.access_token_in_authorization_header,
        set_userinfo_header: c.set_userinfo_header,
        set_id_token_header: c.set_id_token_header,
        unauth,
        browser,
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
