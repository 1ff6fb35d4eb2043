//! The gateway's own tokens (OAuth 2 client credentials grant, RFC 6749 section 4.4): one per
//! server configuration, requested with its scopes and audience, kept until shortly before
//! it expires, renewed by one request however many calls wait for it, and dropped when the
//! upstream refuses it so the next call gets a fresh one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::{HeaderValue, header};
use mcpgate_crds::gateway_config::UpstreamAuth;
use secrecy::ExposeSecret;

use super::{Headers, OutboundError};
use crate::source::ServerRoute;
use crate::token_endpoint::{self, AuthMethod, Client};
use crate::upstream::HttpClient;

/// A token is renewed this long before it expires (or at a tenth of its life, if shorter).
const EARLY: Duration = Duration::from_secs(60);
/// How long a token without `expires_in` is used.
const UNDATED: Duration = Duration::from_secs(300);
/// Server configurations whose tokens are kept.
const MAX_SLOTS: u64 = 10_000;

struct Token {
    headers: Headers,
    renew_at: Instant,
}

#[derive(Default)]
struct Slot {
    token: ArcSwapOption<Token>,
    renewing: tokio::sync::Mutex<()>,
    /// The client authentication the token endpoint took last (Post when set).
    post: std::sync::atomic::AtomicBool,
}

/// Tokens by server configuration.
pub struct ServiceTokens {
    http: HttpClient,
    slots: moka::sync::Cache<[u8; 32], Arc<Slot>>,
}

impl ServiceTokens {
    /// Tokens requested through `http`.
    pub fn new(http: HttpClient) -> Self {
        Self {
            http,
            slots: moka::sync::Cache::builder()
                .max_capacity(MAX_SLOTS)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }

    /// The `Authorization` header for `route` (a client credentials route).
    pub async fn token(&self, route: &ServerRoute) -> Result<Headers, OutboundError> {
        let slot = self.slot(route);
        if let Some(token) = fresh(&slot) {
            return Ok(token);
        }
        let _renewing = slot.renewing.lock().await;
        // Whoever held the lock before may have renewed it.
        if let Some(token) = fresh(&slot) {
            return Ok(token);
        }
        let token = self.request(route, &slot).await?;
        let headers = token.headers.clone();
        slot.token.store(Some(Arc::new(token)));
        Ok(headers)
    }

    /// The upstream refused `used`: the next call asks for a new token (unless another call
    /// already has one).
    pub fn forget(&self, route: &ServerRoute, used: &Headers) {
        let slot = self.slot(route);
        let current = slot.token.load();
        if current
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(&t.headers, used))
        {
            slot.token.store(None);
        }
    }

    fn slot(&self, route: &ServerRoute) -> Arc<Slot> {
        self.slots
            .get_with(super::config_key(route), Default::default)
    }

    async fn request(&self, route: &ServerRoute, slot: &Slot) -> Result<Token, OutboundError> {
        use std::sync::atomic::Ordering::Relaxed;
        let UpstreamAuth::OAuth2ClientCredentials {
            token_url,
            client_id,
            scopes,
            audience,
            ..
        } = &route.config.auth
        else {
            return Err(OutboundError::Unsupported(route.key()));
        };
        let failed = |why: String| OutboundError::TokenEndpoint {
            server: route.key(),
            endpoint: token_url.clone(),
            why,
        };
        let scope = scopes.join(" ");
        let mut form = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        if let Some(audience) = audience {
            // RFC 8707 names the resource; many providers read `audience` instead.
            form.push(("resource", audience));
            form.push(("audience", audience));
        }
        let client = Client {
            id: client_id,
            secret: route.client_secret.as_ref(),
            method: if slot.post.load(Relaxed) {
                AuthMethod::Post
            } else {
                AuthMethod::Basic
            },
        };
        let (answer, method) =
            token_endpoint::request_adapting(&self.http, token_url, client, &form)
                .await
                .map_err(|e| failed(e.to_string()))?;
        slot.post.store(method == AuthMethod::Post, Relaxed);
        let (token, lifetime) =
            token_endpoint::access_token(&answer).map_err(|e| failed(e.to_string()))?;
        let mut value = HeaderValue::try_from(format!("Bearer {}", token.expose_secret()))
            .map_err(|_| failed("the access token is not a valid header value".into()))?;
        value.set_sensitive(true);
        let lifetime = lifetime.unwrap_or(UNDATED);
        let early = EARLY.min(lifetime / 10);
        tracing::info!(server = %route.key(), lifetime_s = lifetime.as_secs(), "obtained the gateway's token");
        Ok(Token {
            headers: Arc::new([(header::AUTHORIZATION, value)]),
            renew_at: Instant::now() + lifetime.saturating_sub(early),
        })
    }
}

fn fresh(slot: &Slot) -> Option<Headers> {
    let token = slot.token.load();
    token
        .as_ref()
        .filter(|t| Instant::now() < t.renew_at)
        .map(|t| t.headers.clone())
}
