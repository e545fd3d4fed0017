//! TLS session-ticket keys the node can export and import (a binary upgrade hands them to the
//! new process so clients resume across it), and the rustls ticketer built on them. No sockets.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ::ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use serde::{Deserialize, Serialize};

/// Keys rotate after this; a ticket stays redeemable for up to twice as long (current and
/// previous key), as rustls' own ticketer does.
pub const LIFETIME: Duration = Duration::from_secs(6 * 3600);
const NAME_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// One key as handed between processes: a public name (the ticket's first bytes), the secret
/// and when it became current (Unix seconds).
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyMaterial {
    pub name: [u8; NAME_LEN],
    pub secret: [u8; KEY_LEN],
    pub since: u64,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("KeyMaterial")
            .field("since", &self.since)
            .finish()
    }
}

/// The node's current and previous key, exportable.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeySet {
    pub current: KeyMaterial,
    pub previous: Option<KeyMaterial>,
}

struct Live {
    current: (KeyMaterial, LessSafeKey),
    previous: Option<(KeyMaterial, LessSafeKey)>,
}

/// The ticketer every TLS listener on every shard shares. Its lock is taken once per handshake
/// that issues or redeems a ticket (a write only when the key rotates), never per request.
pub struct Tickets {
    live: RwLock<Live>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tickets")
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn fresh(rng: &SystemRandom) -> Result<KeyMaterial, String> {
    let mut k = KeyMaterial {
        name: [0; NAME_LEN],
        secret: [0; KEY_LEN],
        since: now(),
    };
    rng.fill(&mut k.name)
        .and_then(|()| rng.fill(&mut k.secret))
        .map_err(|_| "cannot create TLS ticket keys: no system randomness".to_string())?;
    Ok(k)
}

fn live(k: KeyMaterial) -> Result<(KeyMaterial, LessSafeKey), String> {
    let key = UnboundKey::new(&CHACHA20_POLY1305, &k.secret)
        .map_err(|_| "unusable TLS ticket key".to_string())?;
    Ok((k, LessSafeKey::new(key)))
}

impl Tickets {
    pub fn new() -> Result<Arc<Tickets>, String> {
        let rng = SystemRandom::new();
        let current = live(fresh(&rng)?)?;
        Ok(Arc::new(Tickets {
            live: RwLock::new(Live {
                current,
                previous: None,
            }),
            rng,
        }))
    }

    /// The keys to hand to a successor process.
    pub fn export(&self) -> KeySet {
        let l = self.live.read().unwrap_or_else(|e| e.into_inner());
        KeySet {
            current: l.current.0.clone(),
            previous: l.previous.as_ref().map(|p| p.0.clone()),
        }
    }

    /// Takes over a predecessor's keys: its tickets resume here, and new tickets use its
    /// current key until that key's rotation time.
    pub fn import(&self, set: KeySet) -> Result<(), String> {
        let current = live(set.current)?;
        let previous = set.previous.map(live).transpose()?;
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Live { current, previous };
        Ok(())
    }

    fn rotate_if_due(&self) {
        let due = {
            let l = self.live.read().unwrap_or_else(|e| e.into_inner());
            now().saturating_sub(l.current.0.since) >= LIFETIME.as_secs()
        };
        if !due {
            return;
        }
        let Ok(next) = fresh(&self.rng).and_then(live) else {
            return; // keep the current key rather than stop issuing tickets
        };
        let mut l = self.live.write().unwrap_or_else(|e| e.into_inner());
        if now().saturating_sub(l.current.0.since) >= LIFETIME.as_secs() {
            let old = std::mem::replace(&mut l.current, next);
            l.previous = Some(old);
        }
    }
}

impl ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME.as_secs() as u32
    }

    /// name || nonce || ciphertext+tag, as rustls' own AEAD ticketer lays it out.
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.rotate_if_due();
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let l = self.live.read().unwrap_or_else(|e| e.into_inner());
        let (k, key) = &l.current;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&k.name);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&k.name),
            &mut body,
        )
        .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let name = cipher.get(..NAME_LEN)?;
        let nonce = cipher.get(NAME_LEN..NAME_LEN + NONCE_LEN)?;
        let body = cipher.get(NAME_LEN + NONCE_LEN..)?;
        let l = self.live.read().unwrap_or_else(|e| e.into_inner());
        let (k, key) = std::iter::once(&l.current)
            .chain(l.previous.as_ref())
            .find(|(k, _)| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = body.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(&k.name), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_after_export_and_import_and_not_elsewhere() {
        let old = Tickets::new().unwrap();
        let t = old.encrypt(b"session state").unwrap();
        assert_eq!(old.decrypt(&t).as_deref(), Some(&b"session state"[..]));
        let other = Tickets::new().unwrap();
        assert_eq!(other.decrypt(&t), None, "another node's keys open nothing");
        let json = serde_json::to_string(&old.export()).unwrap();
        other.import(serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(other.decrypt(&t).as_deref(), Some(&b"session state"[..]));
        let mut bad = t.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(other.decrypt(&bad), None, "a flipped bit fails the tag");
        assert_eq!(other.decrypt(&t[..10]), None);
        assert!(!format!("{:?}", old.export()).contains("secret"));
    }
}
