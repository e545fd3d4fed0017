//! Consumers: named identities with one credential per auth plugin, looked up by the auth
//! plugins. Built once at config load, read-only afterwards (shared by shards behind an Arc).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

use crate::error::ConfigError;

use super::jwt_auth::JwtCred;

#[derive(Debug)]
pub struct Consumer {
    pub username: String,
    /// The limit key `key = "consumer"` makes for this consumer (`util::key_hash`), hashed
    /// once here instead of on every request.
    pub key_hash: u64,
}

/// Every consumer and its credentials, indexed the way each auth plugin looks them up.
#[derive(Default)]
pub struct Consumers {
    pub list: Vec<Consumer>,
    /// key-auth key -> consumer.
    /// Hashed with xxh3 (the keys come from config, so no flooding concern): SipHash was a
    /// visible share of a key-auth request in callgrind.
    pub keys: HashMap<Vec<u8>, usize, BuildHasherDefault<crate::util::hash::BytesHasher>>,
    /// basic-auth username -> (password, consumer).
    pub basic: HashMap<Vec<u8>, (Vec<u8>, usize)>,
    /// jwt-auth key (the token's `key` claim) -> (credential, consumer).
    pub jwt: HashMap<String, (JwtCred, usize)>,
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials are secrets; only names are printed.
        f.debug_struct("Consumers")
            .field("list", &self.list)
            .finish()
    }
}

impl Consumers {
    pub fn name(&self, idx: Option<usize>) -> Option<&str> {
        idx.and_then(|i| self.list.get(i))
            .map(|c| c.username.as_str())
    }
}

/// One `[[consumers]]` entry as written.
pub struct RawConsumerRef<'a> {
    pub username: &'a str,
    pub plugins: &'a BTreeMap<String, toml::Value>,
}

pub fn build(raw: &[RawConsumerRef<'_>]) -> Result<Consumers, ConfigError> {
    let mut c = Consumers::default();
    let mut names = HashMap::new();
    for (i, r) in raw.iter().enumerate() {
        let at = format!("consumers[{i}]");
        if r.username.is_empty()
            || !r
                .username
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(ConfigError::new(
                format!("{at}.username"),
                format!(
                    "{:?} must be non-empty letters, digits, '_', '-' or '.'",
                    r.username
                ),
            ));
        }
        if names.insert(r.username.to_string(), i).is_some() {
            return Err(ConfigError::new(
                format!("{at}.username"),
                format!(
                    "duplicate consumer {:?}; usernames must be unique",
                    r.username
                ),
            ));
        }
        c.list.push(Consumer {
            username: r.username.to_string(),
            key_hash: super::util::consumer_key_hash(r.username),
        });
        for (name, v) in r.plugins {
            let path = format!("{at}.plugins.{name}");
            match name.as_str() {
                "key-auth" => {
                    let key = super::key_auth::consumer_key(v, &path)?;
                    if c.keys.insert(key, i).is_some() {
                        return Err(ConfigError::new(
                            format!("{path}.key"),
                            "another consumer already uses this key; keys must be unique",
                        ));
                    }
                }
                "basic-auth" => {
                    let (user, pass) = super::basic_auth::consumer_cred(v, &path)?;
                    if c.basic.insert(user, (pass, i)).is_some() {
                        return Err(ConfigError::new(
                            format!("{path}.username"),
                            "another consumer already uses this username",
                        ));
                    }
                }
                "jwt-auth" => {
                    let (key, cred) = super::jwt_auth::consumer_cred(v, &path)?;
                    if c.jwt.insert(key, (cred, i)).is_some() {
                        return Err(ConfigError::new(
                            format!("{path}.key"),
                            "another consumer already uses this key",
                        ));
                    }
                }
                other => {
                    return Err(ConfigError::new(
                        path,
                        format!("{other:?} cannot be configured on a consumer; consumers take credentials for key-auth, basic-auth or jwt-auth"),
                    ))
                }
            }
        }
    }
    Ok(c)
}
