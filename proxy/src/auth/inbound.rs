//! The gateway as an OAuth protected resource (RFC 9728): routes that are not public need a
//! bearer token in the `Authorization` header (never the query string); a request without a
//! valid one gets 401 with a `WWW-Authenticate` challenge naming the route's resource
//! metadata, which the gateway serves per route and at the root.

use http::{HeaderMap, HeaderValue, header};
use serde_json::{Value, json};

use super::cache::TokenCache;
use super::oidc::OidcVerifier;
use super::service_account::TokenReviewer;
use super::{AuthError, Identity, Method, Unverified};
use crate::error::ProxyError;
use crate::signin::tokens::{PERSONAL_PREFIX, Tokens};
use std::sync::Arc;

/// Where RFC 9728 metadata lives.
pub const METADATA_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// Inbound authentication settings and verifiers.
pub struct Inbound {
    /// OIDC issuers.
    pub oidc: OidcVerifier,
    /// ServiceAccount tokens, when enabled (`--serviceaccount-audience`).
    pub service_accounts: Option<TokenReviewer>,
    /// Verified tokens and recent refusals.
    pub cache: TokenCache,
    /// The gateway's external base URL (`https://mcp.example.com`); else the request's host.
    pub public_url: Option<String>,
    /// Authorization servers named in resource metadata (default: the OIDC issuers).
    pub authorization_servers: Vec<String>,
    /// The scheme clients use when no public URL is set.
    pub scheme: &'static str,
    /// The gateway's own tokens, when sign-in is enabled.
    pub gateway: Option<Arc<Tokens>>,
}

impl Inbound {
    /// The caller of a request to the route at `path` (not public). A token from a
    /// configured OIDC issuer is checked against its keys; any other goes to TokenReview when
    /// ServiceAccount tokens are enabled. A token minted for one route's canonical URL
    /// (RFC 8707) is accepted on that route only.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        path: &str,
    ) -> Result<Identity, AuthError> {
        let identity = self.identify(headers).await?;
        if identity.audience.admits(self.resource(path).as_deref()) {
            Ok(identity)
        } else {
            Err(AuthError::Audience)
        }
    }

    /// The canonical URL of the route at `path`, the `resource` its metadata advertises, when
    /// the gateway knows its public URL (a Host header is the caller's to choose, so it never
    /// names an audience).
    pub fn resource(&self, path: &str) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|url| format!("{}{path}", url.trim_end_matches('/')))
    }

    /// Who the bearer token says the caller is, wherever it may be used. A token the
    /// gateway issued is checked against its grant on every request, cached or not: revoking
    /// the grant ends it.
    async fn identify(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        let token = bearer(headers)?;
        let key = TokenCache::key(token);
        let identity = match self.cache.get(&key) {
            Some(known) => known?,
            None => self.verify(token, key).await?,
        };
        if let (Method::Gateway { grant, .. }, Some(gateway)) = (&identity.method, &self.gateway) {
            gateway.live(grant).await?;
        }
        Ok(identity)
    }

    /// Verifies a token not in the cache, and caches the result.
    async fn verify(&self, token: &str, key: [u8; 32]) -> Result<Identity, AuthError> {
        if let Some(gateway) = &self.gateway
            && token.starts_with(PERSONAL_PREFIX)
        {
            let result = gateway.verify_personal(token).await;
            let exp = result.as_ref().ok().map(|(_, exp)| *exp);
            let result = result.map(|(identity, _)| identity);
            self.cache.put(key, &result, exp);
            return result;
        }
        let claims = Unverified::peek(token).ok_or(AuthError::Malformed)?;
        if claims.expired() {
            return Err(AuthError::Expired);
        }
        let result = if let Some(gateway) = self
            .gateway
            .as_ref()
            .filter(|g| claims.iss.as_deref() == Some(g.issuer.as_str()))
        {
            gateway.verify(token)
        } else if claims.iss.as_deref().is_some_and(|i| self.oidc.trusts(i)) {
            self.oidc.verify(token).await
        } else if let Some(reviewer) = &self.service_accounts {
            reviewer.review(token).await
        } else if self.oidc.is_empty() && self.gateway.is_none() {
            Err(AuthError::NotConfigured)
        } else {
            Err(AuthError::Issuer)
        };
        self.cache.put(key, &result, claims.exp);
        result
    }

    /// The answer to a request refused with `error` on the route at `path`: a 401 challenge,
    /// or a 503 when the token could not be checked (a 401 would make the client throw a
    /// good token away).
    pub fn challenge(&self, headers: &HeaderMap, path: &str, error: &AuthError) -> ProxyError {
        if *error == AuthError::Unavailable {
            return ProxyError::AuthUnavailable {
                message: error.to_string(),
            };
        }
        let metadata = format!("{}{METADATA_PREFIX}{path}", self.base(headers));
        let mut challenge = format!("Bearer resource_metadata=\"{metadata}\"");
        if !matches!(error, AuthError::Missing | AuthError::NotConfigured) {
            challenge.push_str(&format!(
                ", error=\"invalid_token\", error_description=\"{error}\""
            ));
        }
        ProxyError::Unauthenticated {
            message: error.to_string(),
            challenge: HeaderValue::try_from(challenge).ok(),
        }
    }

    /// The resource metadata of the route at `path` (`None` for the gateway as a whole).
    pub fn metadata(&self, headers: &HeaderMap, path: Option<&str>, name: Option<&str>) -> Value {
        let base = self.base(headers);
        let mut document = json!({
            "resource": format!("{base}{}", path.unwrap_or_default()),
            "authorization_servers": self.authorization_servers,
            "bearer_methods_supported": ["header"],
        });
        if let Some(name) = name {
            document["resource_name"] = Value::String(name.to_owned());
        }
        document
    }

    fn base(&self, headers: &HeaderMap) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("localhost");
                format!("{}://{host}", self.scheme)
            }
        }
    }
}

/// The bearer token of the `Authorization` header (exactly one, scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::AUTHORIZATION, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_one_bearer_header_counts() {
        assert_eq!(bearer(&headers(&["Bearer abc"])), Ok("abc"));
        assert_eq!(bearer(&headers(&["bearer  abc "])), Ok("abc"));
        assert_eq!(bearer(&headers(&[])), Err(AuthError::Missing));
        assert_eq!(bearer(&headers(&["Basic abc"])), Err(AuthError::Malformed));
        assert_eq!(bearer(&headers(&["Bearer "])), Err(AuthError::Malformed));
        assert_eq!(
            bearer(&headers(&["Bearer a", "Bearer b"])),
            Err(AuthError::Malformed)
        );
    }
}
