//! Tokens the gateway obtains and keeps in memory (its client credentials token, tokens it
//! got by exchanging callers' tokens), one slot per key: kept until shortly before they
//! expire, renewed by one request however many calls wait for it, and dropped when the
//! upstream refuses one so the next call gets a fresh one.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use secrecy::{ExposeSecret, SecretString};

use super::{Headers, OutboundError};
use crate::token_endpoint::{self, AuthMethod, Client};
use crate::upstream::HttpClient;

/// A token is renewed this long before it expires (or at a tenth of its life, if shorter).
const EARLY: Duration = Duration::from_secs(60);
/// How long a token without `expires_in` is used.
pub const UNDATED: Duration = Duration::from_secs(300);

struct Token {
    headers: Headers,
    renew_at: Instant,
}

#[derive(Default)]
struct Slot {
    token: ArcSwapOption<Token>,
    renewing: tokio::sync::Mutex<()>,
    /// The client authentication the token endpoint took last (Post when set).
    post: AtomicBool,
}

/// Slots by key.
pub struct Slots {
    slots: moka::sync::Cache<[u8; 32], Arc<Slot>>,
}

impl Slots {
    /// At most `capacity` slots, each forgotten after `idle` unused.
    pub fn new(capacity: u64, idle: Duration) -> Self {
        Self {
            slots: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(idle)
                .build(),
        }
    }

    /// The token in slot `key`, or the one `request` obtains (given the client
    /// authentication to start with; it returns the headers, the token's lifetime if known,
    /// and the authentication that worked).
    pub async fn get<E, F>(
        &self,
        key: [u8; 32],
        request: impl FnOnce(AuthMethod) -> F,
    ) -> Result<Headers, E>
    where
        F: Future<Output = Result<(Headers, Option<Duration>, AuthMethod), E>>,
    {
        let slot = self.slots.get_with(key, Default::default);
        if let Some(token) = fresh(&slot) {
            return Ok(token);
        }
        let _renewing = slot.renewing.lock().await;
        // Whoever held the lock before may have renewed it.
        if let Some(token) = fresh(&slot) {
            return Ok(token);
        }
        let method = match slot.post.load(Ordering::Relaxed) {
            true => AuthMethod::Post,
            false => AuthMethod::Basic,
        };
        let (headers, lifetime, method) = request(method).await?;
        slot.post
            .store(method == AuthMethod::Post, Ordering::Relaxed);
        let lifetime = lifetime.unwrap_or(UNDATED);
        let early = EARLY.min(lifetime / 10);
        slot.token.store(Some(Arc::new(Token {
            headers: headers.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(early),
        })));
        Ok(headers)
    }

    /// The upstream refused `used`: the next call asks for a new token (unless another call
    /// already has one).
    pub fn forget(&self, key: [u8; 32], used: &Headers) {
        let Some(slot) = self.slots.get(&key) else {
            return;
        };
        let current = slot.token.load();
        if current
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(&t.headers, used))
        {
            slot.token.store(None);
        }
    }
}

fn fresh(slot: &Slot) -> Option<Headers> {
    let token = slot.token.load();
    token
        .as_ref()
        .filter(|t| Instant::now() < t.renew_at)
        .map(|t| t.headers.clone())
}

/// `Authorization: Bearer <token>`, marked sensitive.
pub fn bearer(token: &str) -> Option<Headers> {
    let mut value = http::HeaderValue::try_from(format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(Arc::new([(http::header::AUTHORIZATION, value)]))
}

/// Asks `endpoint` for a token for `server` (`namespace/name`) with `form`, as client `id`
/// (with `secret`, presented as `method` says, or the other way if the server refuses that):
/// the header it gives, its lifetime if known, and the client authentication that worked.
pub async fn obtain(
    http: &HttpClient,
    server: &str,
    endpoint: &str,
    (id, secret, method): (&str, Option<&SecretString>, AuthMethod),
    form: &[(&str, &str)],
) -> Result<(Headers, Option<Duration>, AuthMethod), OutboundError> {
    let failed = |why: String| OutboundError::TokenEndpoint {
        server: server.to_owned(),
        endpoint: endpoint.to_owned(),
        why,
    };
    let client = Client { id, secret, method };
    let (answer, method) = token_endpoint::request_adapting(http, endpoint, client, form)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let (token, lifetime) =
        token_endpoint::access_token(&answer).map_err(|e| failed(e.to_string()))?;
    let headers = bearer(token.expose_secret())
        .ok_or_else(|| failed("the token is not a valid header value".into()))?;
    Ok((headers, lifetime, method))
}
