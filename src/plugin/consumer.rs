//! Consumers: named identities with one credential per auth plugin, as the auth plugins look
//! them up, and their group's name. Read-only once built (by the registry); must not name a plugin, which would close a circle.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

use jsonwebtoken::{DecodingKey, Validation};

#[derive(Debug)]
pub struct Consumer {
    pub username: String,
    /// Its `[[consumer_groups]]` name, if it names one (consumer-restriction reads it).
    pub group: Option<String>,
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
    pub group: Option<&'a str>,
    pub plugins: &'a BTreeMap<String, toml::Value>,
}

/// One `[[consumer_groups]]` entry as written.
pub struct RawGroupRef<'a> {
    pub name: &'a str,
    pub plugins: &'a BTreeMap<String, toml::Value>,
}

/// A jwt-auth consumer's verification material (built by jwt-auth's `consumer_cred`).
pub struct JwtCred {
    pub(super) key: DecodingKey,
    pub(super) validation: Validation,
}
