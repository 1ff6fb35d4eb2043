//! Verified tokens remembered by their SHA-256, so a caller's next request costs a hash and a
//! lookup instead of a signature check or an API server round trip. A verified identity is
//! kept until the token expires, at most [`MAX_AGE`] (so a ServiceAccount token whose Pod was
//! deleted, or an OIDC key withdrawn, stops working within that time); a refusal is kept for
//! [`REFUSAL_AGE`], so the same bad token sent in a loop is not checked again each time.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{AuthError, Identity};

/// The longest a verified token is trusted without being checked again.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// How long a refused token is refused without being checked again.
pub const REFUSAL_AGE: Duration = Duration::from_secs(10);
/// Tokens remembered at most (the least used go first).
const CAPACITY: u64 = 50_000;

/// Results of token checks, by token hash.
#[derive(Clone)]
pub struct TokenCache {
    entries: moka::sync::Cache<[u8; 32], Entry>,
}

#[derive(Clone)]
struct Entry {
    result: Result<Identity, AuthError>,
    until: Instant,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(MAX_AGE)
                .build(),
        }
    }
}

impl TokenCache {
    /// The key of `token` (its SHA-256; the token itself is never stored).
    pub fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The remembered result for `key`, if still valid.
    pub fn get(&self, key: &[u8; 32]) -> Option<Result<Identity, AuthError>> {
        let entry = self.entries.get(key)?;
        if entry.until > Instant::now() {
            return Some(entry.result);
        }
        self.entries.invalidate(key);
        None
    }

    /// Remembers `result` for a token expiring at `exp` (seconds since the epoch). Failures to
    /// reach the identity provider are not remembered: the next request tries again.
    pub fn put(&self, key: [u8; 32], result: &Result<Identity, AuthError>, exp: Option<u64>) {
        let age = match result {
            Ok(_) => {
                let Some(left) = exp.and_then(seconds_until) else {
                    return;
                };
                left.min(MAX_AGE)
            }
            Err(AuthError::Unavailable | AuthError::NotConfigured) => return,
            Err(_) => REFUSAL_AGE,
        };
        self.entries.insert(
            key,
            Entry {
                result: result.clone(),
                until: Instant::now() + age,
            },
        );
    }
}

/// Time from now until `epoch_seconds`; None if it has passed.
fn seconds_until(epoch_seconds: u64) -> Option<Duration> {
    Duration::from_secs(epoch_seconds)
        .checked_sub(super::now())
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Method;

    fn alice() -> Identity {
        Identity {
            user: "alice".into(),
            email: None,
            groups: vec![],
            method: Method::ServiceAccount,
            audience: crate::auth::Audience::Gateway,
        }
    }

    fn in_seconds(s: u64) -> u64 {
        crate::auth::now().as_secs() + s
    }

    #[test]
    fn verified_tokens_are_kept_until_they_expire() {
        let cache = TokenCache::default();
        let (a, b, c) = (
            TokenCache::key("a"),
            TokenCache::key("b"),
            TokenCache::key("c"),
        );
        cache.put(a, &Ok(alice()), Some(in_seconds(3600)));
        assert_eq!(cache.get(&a), Some(Ok(alice())));
        cache.put(b, &Ok(alice()), Some(in_seconds(0)));
        assert_eq!(cache.get(&b), None, "expired tokens are not kept");
        cache.put(c, &Ok(alice()), None);
        assert_eq!(
            cache.get(&c),
            None,
            "tokens without exp are checked every time"
        );
        assert_eq!(cache.get(&TokenCache::key("d")), None);
    }

    #[test]
    fn refusals_are_kept_briefly_and_outages_not_at_all() {
        let cache = TokenCache::default();
        let (bad, down) = (TokenCache::key("bad"), TokenCache::key("down"));
        cache.put(bad, &Err(AuthError::Signature), None);
        assert_eq!(cache.get(&bad), Some(Err(AuthError::Signature)));
        cache.put(down, &Err(AuthError::Unavailable), None);
        assert_eq!(cache.get(&down), None);
    }
}
