//! API keys, roles and the per-key rate limit.
//!
//! Keys are random secrets (`ank_` + 64 hex digits) that the server never stores: it is
//! configured with their SHA-256 hashes, one `role:sha256hex` line per key, so a leaked
//! configuration does not leak a usable key. A key's identity in logs and event metadata
//! (`actor`) is the first 12 hex digits of its hash.
//!
//! A key is revoked by removing its line, or by a `revoked:sha256hex` line (which wins
//! over any role line for the same hash, from any source: a key given inline can be
//! revoked in the file), and having the server reload: `annals serve` re-reads its keys
//! on SIGHUP ([`crate::server::AppState::replace_api_keys`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::graphql::error::ApiError;

/// What a key may do. Each role includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Queries and subscriptions.
    Reader,
    /// Reader, plus the domain mutations (commands).
    Writer,
    /// Writer, plus the admin mutations (raw appends, projection control).
    Admin,
}

impl Role {
    /// The role's name in configuration and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected reader, writer or admin"
            )),
        }
    }
}

/// Who is calling: set on every authenticated request and GraphQL execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// What the caller may do.
    pub role: Role,
    /// The caller's identity for logs, rate limits and event metadata: `key:` and the
    /// first 12 hex digits of the key's hash, or `anonymous` when no keys are configured.
    pub id: String,
}

impl Principal {
    /// The caller when the server runs without keys (loopback only): allowed everything.
    pub fn anonymous() -> Self {
        Principal {
            role: Role::Admin,
            id: "anonymous".into(),
        }
    }
}

/// The configured keys, by SHA-256 hash, and the revoked ones.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], Role>,
    revoked: HashSet<[u8; 32]>,
}

/// SHA-256 of a key, in lowercase hex: the form the configuration holds.
pub fn hash_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A fresh random key with its configuration line (`role:sha256hex`).
pub fn generate_key(role: Role) -> Result<(String, String), String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| format!("no randomness available: {e}"))?;
    let key = format!("ank_{}", hex(&secret));
    let line = format!("{role}:{}", hash_key(&key));
    Ok((key, line))
}

impl ApiKeys {
    /// No keys: everything is allowed (only on loopback, see [`check_exposure`]).
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses `role:sha256hex` entries, one per line; blank lines and `#` comments are
    /// skipped. Commas also separate entries, so an environment variable can hold several.
    /// `revoked:sha256hex` revokes a key whatever else configures it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Self::default();
        keys.add(text)?;
        Ok(keys)
    }

    /// Adds the entries of `text` (same format as [`ApiKeys::parse`]).
    pub fn add(&mut self, text: &str) -> Result<(), String> {
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("");
            for entry in line.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let (role, hash) = entry.split_once(':').ok_or_else(|| {
                    format!("line {}: expected role:sha256hex, got {entry:?}", n + 1)
                })?;
                let hash = unhex(&hash.trim().to_ascii_lowercase()).ok_or_else(|| {
                    format!("line {}: the hash must be 64 hex digits (SHA-256)", n + 1)
                })?;
                if role.trim() == "revoked" {
                    self.revoked.insert(hash);
                    continue;
                }
                let role: Role = role
                    .trim()
                    .parse()
                    .map_err(|e| format!("line {}: {e}", n + 1))?;
                self.by_hash.insert(hash, role);
            }
        }
        Ok(())
    }

    /// Whether no key is configured (nor revoked: a configuration that revokes every key
    /// lets nobody in, it does not open the server).
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty() && self.revoked.is_empty()
    }

    /// How many keys are configured and not revoked.
    pub fn len(&self) -> usize {
        self.by_hash
            .keys()
            .filter(|h| !self.revoked.contains(*h))
            .count()
    }

    /// How many keys are revoked.
    pub fn revoked(&self) -> usize {
        self.revoked.len()
    }

    /// Resolves an `Authorization` header value.
    ///
    /// - no keys configured: everyone is [`Principal::anonymous`];
    /// - no header: `Ok(None)` (the route decides: GraphQL refuses, the WebSocket route
    ///   waits for `connection_init`);
    /// - a header that is not `Bearer <known key>`: `UNAUTHENTICATED`.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Option<Principal>, ApiError> {
        if self.is_empty() {
            return Ok(Some(Principal::anonymous()));
        }
        let Some(header) = header else {
            return Ok(None);
        };
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthenticated("the Authorization header must be `Bearer <API key>`")
            })?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if self.revoked.contains(&digest) {
            return Err(ApiError::unauthenticated("this API key has been revoked"));
        }
        self.principal_for_key(key)
            .map(Some)
            .ok_or_else(|| ApiError::unauthenticated("unknown API key"))
    }

    /// The principal of a raw key, if the key is configured and not revoked.
    pub fn principal_for_key(&self, key: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if self.revoked.contains(&digest) {
            return None;
        }
        self.by_hash.get(&digest).map(|role| Principal {
            role: *role,
            id: format!("key:{}", &hex(&digest)[..12]),
        })
    }
}

impl ApiKeys {
    /// Whether `principal` (authenticated earlier, e.g. when its WebSocket connected) may
    /// still act under these keys: its key is configured and not revoked, or, for
    /// [`Principal::anonymous`], no keys are configured at all.
    pub fn is_active(&self, principal: &Principal) -> bool {
        let Some(prefix) = principal.id.strip_prefix("key:") else {
            return self.is_empty();
        };
        self.by_hash
            .iter()
            .any(|(hash, role)| *role == principal.role && hex(hash).starts_with(prefix))
            && !self
                .revoked
                .iter()
                .any(|hash| hex(hash).starts_with(prefix))
    }
}

/// The API keys in force, replaceable while serving (SIGHUP), with a watch that moves on
/// every replacement so that live subscriptions re-check their key. Cheap to clone.
#[derive(Clone, Debug)]
pub struct KeyRing {
    keys: Arc<RwLock<Arc<ApiKeys>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl KeyRing {
    /// A ring holding `keys`.
    pub fn new(keys: ApiKeys) -> Self {
        Self {
            keys: Arc::new(RwLock::new(Arc::new(keys))),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    /// The keys in force.
    pub fn current(&self) -> Arc<ApiKeys> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `keys` in force. Refused, keeping the keys in force, when there are keys and
    /// `keys` has none: that would let every caller in as admin. To lock every key out,
    /// revoke them (`revoked:` lines) instead.
    pub fn replace(&self, keys: ApiKeys) -> Result<(), String> {
        {
            let mut current = self.keys.write().unwrap_or_else(PoisonError::into_inner);
            if keys.is_empty() && !current.is_empty() {
                return Err(
                    "the new configuration has no API keys, which would allow every \
                            request; keeping the keys in force (revoke keys with `revoked:` \
                            lines instead)"
                        .into(),
                );
            }
            *current = Arc::new(keys);
        }
        self.changed.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// Moves on every [`KeyRing::replace`].
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Refuses to expose a server without keys anywhere but on a loopback address.
pub fn check_exposure(addr: &SocketAddr, keys: &ApiKeys) -> Result<(), String> {
    if keys.is_empty() && !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {addr} without API keys: anyone who can reach it could write \
             to the log. Configure keys (--api-keys-file or ANNALS_API_KEYS; create one with \
             `annals keys new --role admin`) or listen on a loopback address such as 127.0.0.1"
        ));
    }
    Ok(())
}

/// Requests per second and burst allowed per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second per key.
    pub per_second: NonZeroU32,
    /// Requests a key may send at once after being idle.
    pub burst: NonZeroU32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: NonZeroU32::new(500).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// The per-key limiter (governor's GCRA, keyed by [`Principal::id`]).
#[derive(Clone)]
pub struct KeyRateLimiter {
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

impl fmt::Debug for KeyRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRateLimiter").finish_non_exhaustive()
    }
}

impl KeyRateLimiter {
    /// A limiter with this quota for every key.
    pub fn new(limit: RateLimit) -> Self {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Self {
            limiter: Arc::new(RateLimiter::keyed(quota)),
        }
    }

    /// Takes one request from the key's budget, or says how long to wait.
    pub fn check(&self, principal: &Principal) -> Result<(), ApiError> {
        self.limiter.check_key(&principal.id).map_err(|not_until| {
            ApiError::rate_limited(not_until.wait_time_from(DefaultClock::default().now()))
        })
    }

    /// Takes `n` more requests from the key's budget at once (the operations of a batch
    /// beyond the one its HTTP request paid for), or says how long to wait.
    pub fn check_n(&self, principal: &Principal, n: u32) -> Result<(), ApiError> {
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match self.limiter.check_key_n(&principal.id, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(ApiError::rate_limited(
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
            // More operations than the burst allows at all: wait for a full budget.
            Err(_) => Err(ApiError::rate_limited(std::time::Duration::from_secs(1))),
        }
    }

    /// Forgets keys whose budget is full again, so idle keys cost no memory.
    pub fn prune(&self) {
        self.limiter.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_authenticate_with_their_role() {
        let (key, line) = generate_key(Role::Writer).unwrap();
        let keys = ApiKeys::parse(&format!("# comment\n\n{line}\n")).unwrap();
        let p = keys
            .authenticate(Some(&format!("Bearer {key}")))
            .unwrap()
            .unwrap();
        assert_eq!(p.role, Role::Writer);
        assert!(p.id.starts_with("key:"));
        assert!(keys.authenticate(Some("Bearer ank_nope")).is_err());
        assert!(keys.authenticate(Some("Basic abc")).is_err());
        assert_eq!(keys.authenticate(None).unwrap(), None);
    }

    #[test]
    fn bad_lines_are_refused_with_their_line_number() {
        let err = ApiKeys::parse("reader:00\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        let err = ApiKeys::parse(&format!("\nroot:{}", "0".repeat(64))).unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("unknown role"),
            "{err}"
        );
    }

    #[test]
    fn revoked_lines_win_over_role_lines_from_any_source() {
        let (key, line) = generate_key(Role::Admin).unwrap();
        let (other, other_line) = generate_key(Role::Reader).unwrap();
        let hash = line.split_once(':').unwrap().1;
        let mut keys = ApiKeys::parse(&format!("revoked:{hash}\n{other_line}")).unwrap();
        keys.add(&line).unwrap();
        let err = keys
            .authenticate(Some(&format!("Bearer {key}")))
            .unwrap_err();
        assert!(err.message().contains("revoked"), "{}", err.message());
        assert!(keys.principal_for_key(&key).is_none());
        assert!(keys.principal_for_key(&other).is_some());
        assert_eq!((keys.len(), keys.revoked()), (1, 1));
        // Revoking every key locks everyone out; it does not turn authentication off.
        let only_revoked = ApiKeys::parse(&format!("revoked:{hash}")).unwrap();
        assert!(!only_revoked.is_empty());
        assert!(only_revoked.authenticate(None).unwrap().is_none());
    }

    #[test]
    fn no_keys_only_on_loopback() {
        let none = ApiKeys::none();
        assert!(check_exposure(&"127.0.0.1:8080".parse().unwrap(), &none).is_ok());
        assert!(check_exposure(&"[::1]:8080".parse().unwrap(), &none).is_ok());
        let err = check_exposure(&"0.0.0.0:8080".parse().unwrap(), &none).unwrap_err();
        assert!(err.contains("without API keys"));
        let (_, line) = generate_key(Role::Admin).unwrap();
        let some = ApiKeys::parse(&line).unwrap();
        assert!(check_exposure(&"0.0.0.0:8080".parse().unwrap(), &some).is_ok());
    }
}
