//! The gateway's own tokens (OAuth 2 client credentials grant, RFC 6749 section 4.4): one per
//! server configuration, requested with its scopes and audience, kept in a [`Slots`] slot.

use std::time::Duration;

use mcpgate_crds::gateway_config::UpstreamAuth;

use super::slots::{Slots, obtain};
use super::{Headers, OutboundError};
use crate::source::ServerRoute;
use crate::token_endpoint;
use crate::upstream::HttpClient;

/// Server configurations whose tokens are kept.
const MAX_SLOTS: u64 = 10_000;

/// Tokens by server configuration.
pub struct ServiceTokens {
    http: HttpClient,
    slots: Slots,
}

impl ServiceTokens {
    /// Tokens requested through `http`.
    pub fn new(http: HttpClient) -> Self {
        Self {
            http,
            slots: Slots::new(MAX_SLOTS, Duration::from_secs(3600)),
        }
    }

    /// The `Authorization` header for `route` (a client credentials route).
    pub async fn token(&self, route: &ServerRoute) -> Result<Headers, OutboundError> {
        self.slots
            .get(super::config_key(route), |method| {
                self.request(route, method)
            })
            .await
    }

    /// The upstream refused `used`: the next call asks for a new token.
    pub fn forget(&self, route: &ServerRoute, used: &Headers) {
        self.slots.forget(super::config_key(route), used);
    }

    async fn request(
        &self,
        route: &ServerRoute,
        method: token_endpoint::AuthMethod,
    ) -> Result<(Headers, Option<Duration>, token_endpoint::AuthMethod), OutboundError> {
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
        let client = (client_id.as_str(), route.client_secret.as_ref(), method);
        let (headers, lifetime, method) =
            obtain(&self.http, &route.key(), token_url, client, &form).await?;
        tracing::info!(server = %route.key(), lifetime_s = lifetime.map(|l| l.as_secs()), "obtained the gateway's token");
        Ok((headers, lifetime, method))
    }
}
