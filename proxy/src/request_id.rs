//! The id of one request: the caller's `x-request-id` when it is a plausible one, else one the
//! gateway makes. It names the request in the diagnostic log (the request span), in its audit
//! records and in the response's `x-request-id`, so a caller's report, a log line and an audit
//! record can be matched.

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderValue};
use ring::rand::{SecureRandom, SystemRandom};

/// The header carrying it, both ways.
pub const HEADER: &str = "x-request-id";
/// The longest id taken from a caller.
const MAX_LEN: usize = 128;

/// One request's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

/// This process's random half of the ids it makes; the other half counts.
static PREFIX: LazyLock<u64> = LazyLock::new(|| {
    let mut bytes = [0u8; 8];
    // Without randomness, ids still differ within this process (the counter does).
    let _ = SystemRandom::new().fill(&mut bytes);
    u64::from_be_bytes(bytes)
});
static COUNTER: AtomicU64 = AtomicU64::new(1);

impl RequestId {
    /// The caller's id when it is 1 to 128 characters of `[A-Za-z0-9._:-]` (nothing that could
    /// forge a log line or an audit field), else a new one.
    pub fn of(headers: &HeaderMap) -> Self {
        headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= MAX_LEN
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
            })
            .map_or_else(Self::new, |v| Self(v.into()))
    }

    /// A new id: 32 hex digits, unique in this process and (by its random half) across them.
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(format!("{:016x}{n:016x}", *PREFIX).into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// As a header value (always valid: the characters are checked or generated).
    pub fn header_value(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.0).ok()
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER,
            HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("x")),
        );
        headers
    }

    #[test]
    fn a_plausible_caller_id_is_kept() {
        for id in ["abc-123", "req_1.2:3", &"a".repeat(128)] {
            assert_eq!(RequestId::of(&with(id)).as_str(), id);
        }
    }

    #[test]
    fn anything_else_gets_a_new_id() {
        for id in ["", "a b", "x\"y", "{\"forged\":1}", &"a".repeat(129), "é"] {
            let got = RequestId::of(&with(id));
            assert_ne!(got.as_str(), id);
            assert_eq!(got.as_str().len(), 32, "{got}");
        }
        let (a, b) = (RequestId::new(), RequestId::new());
        assert_ne!(a, b);
        assert_eq!(
            &a.as_str()[..16],
            &b.as_str()[..16],
            "one process, one prefix"
        );
        assert!(a.header_value().is_some());
    }
}
