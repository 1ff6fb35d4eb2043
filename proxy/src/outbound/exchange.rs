//! The caller's own token exchanged for one meant for the upstream (OAuth 2 token exchange,
//! RFC 8693): the caller's bearer token is the subject token, the upstream's URL the
//! `resource` (RFC 8707), and the answer is kept per caller token and server configuration
//! in a [`Slots`] slot. The safe alternative to passing the caller's token through: the
//! upstream gets a token issued for it, and the authorization server decides whether the
//! caller may have one.

use std::time::Duration;

use http::HeaderMap;
use mcpgate_crds::gateway_config::{Upstream, UpstreamAuth};
use sha2::{Digest, Sha256};

use super::slots::{Slots, obtain};
use super::{Headers, OutboundError};
use crate::source::ServerRoute;
use crate::token_endpoint::AuthMethod;
use crate::upstream::HttpClient;

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Callers whose exchanged tokens are kept.
const MAX_SLOTS: u64 = 100_000;

/// Exchanged tokens by caller token and server configuration.
pub struct Exchanges {
    http: HttpClient,
    slots: Slots,
}

impl Exchanges {
    /// Exchanges made through `http`.
    pub fn new(http: HttpClient) -> Self {
        Self {
            http,
            slots: Slots::new(MAX_SLOTS, Duration::from_secs(600)),
        }
    }

    /// The `Authorization` header for the caller of `inbound` (their request's headers) at
    /// `route` (a token exchange route).
    pub async fn token(
        &self,
        route: &ServerRoute,
        inbound: &HeaderMap,
    ) -> Result<Headers, OutboundError> {
        if route.config.public {
            // Nobody checked the token of a caller on a public route.
            return Err(OutboundError::NoUserCredential(format!(
                "McpServer {} exchanges the caller's token, which a public route does not check: make the route non-public",
                route.key()
            )));
        }
        let subject = subject(route, inbound)?;
        self.slots
            .get(key(route, subject), |method| {
                self.request(route, subject, method)
            })
            .await
    }

    /// The upstream refused `used`: the caller's next call exchanges again.
    pub fn forget(&self, route: &ServerRoute, inbound: &HeaderMap, used: &Headers) {
        if let Ok(subject) = subject(route, inbound) {
            self.slots.forget(key(route, subject), used);
        }
    }

    async fn request(
        &self,
        route: &ServerRoute,
        subject: &str,
        method: AuthMethod,
    ) -> Result<(Headers, Option<Duration>, AuthMethod), OutboundError> {
        let UpstreamAuth::TokenExchange {
            token_url,
            client_id,
            audience,
            scopes,
            ..
        } = &route.config.auth
        else {
            return Err(OutboundError::Unsupported(route.key()));
        };
        let scope = scopes.join(" ");
        let mut form = vec![
            ("grant_type", GRANT),
            ("subject_token", subject),
            ("subject_token_type", ACCESS_TOKEN),
            ("requested_token_type", ACCESS_TOKEN),
        ];
        if let Upstream::Remote { url, .. } = &route.config.upstream {
            form.push(("resource", url));
        }
        if let Some(audience) = audience {
            form.push(("audience", audience));
        }
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let client = (client_id.as_str(), route.client_secret.as_ref(), method);
        let (headers, lifetime, method) =
            obtain(&self.http, &route.key(), token_url, client, &form).await?;
        tracing::debug!(server = %route.key(), "exchanged a caller's token");
        Ok((headers, lifetime, method))
    }
}

/// The caller's bearer token, the subject of the exchange.
fn subject<'a>(route: &ServerRoute, inbound: &'a HeaderMap) -> Result<&'a str, OutboundError> {
    inbound
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            OutboundError::NoUserCredential(format!(
                "McpServer {} exchanges the caller's bearer token for its own, and this call carries none: call with a bearer token (a public route has none to exchange)",
                route.key()
            ))
        })
}

/// The slot of `subject`'s token for `route`'s configuration.
fn key(route: &ServerRoute, subject: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(super::config_key(route));
    hash.update(subject.as_bytes());
    hash.finalize().into()
}
