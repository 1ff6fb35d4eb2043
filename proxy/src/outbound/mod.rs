//! The credentials the gateway sends upstream in its own name or in a user's: decided per
//! request from the route's auth mode and the caller, and never shown to the caller.
//!
//! Shared API keys are resolved once per configuration version (`source::snapshot`) and
//! injected by the hop itself. The modes here need more than the configuration: a token the
//! gateway obtains with the client credentials grant (`service`), each user's own API
//! key, from an AuthOverride or entered by the user on the gateway's pages, and each user's
//! OAuth tokens, from their authorization of the gateway at the upstream's provider
//! (`authorization_code`); users' credentials are kept sealed in the vault (`vault`). A call that needs a user's credential the gateway does
//! not hold fails with [`OutboundError::AuthorizationRequired`], which the MCP routes answer
//! with where the user can supply it.

pub mod api_key;
pub mod authorization_code;
pub mod discovery;
pub mod exchange;
pub mod lease;
pub mod service;
pub mod slots;
pub mod vault;

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use mcpgate_crds::gateway_config::UpstreamAuth;

use crate::auth::{Identity, Method};
use crate::source::ServerRoute;
use crate::upstream::HttpClient;

/// What a per-user OAuth server needs of each user.
const AUTHORIZATION: &str = "authorization (OAuth)";

/// Headers set on one upstream request.
pub type Headers = Arc<[(HeaderName, HeaderValue)]>;

/// What the gateway sends upstream for one request, and how it was obtained.
#[derive(Clone, Default)]
pub struct Resolved {
    /// The headers.
    pub headers: Option<Headers>,
    /// Whether an upstream 401 should make the gateway obtain a fresh credential and try
    /// once more (a token it obtains, as opposed to a key it was given).
    pub renewable: bool,
}

/// Why the gateway has no credential to send for a call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboundError {
    /// The user has not supplied their credential for the server yet (or the upstream
    /// refused the one they supplied): they can at `url`.
    #[error(
        "McpServer {namespace}/{server} needs your own {what}: open {url} in a browser, then retry"
    )]
    AuthorizationRequired {
        /// The server's namespace.
        namespace: String,
        /// The server's name.
        server: String,
        /// What is needed, e.g. "API key".
        what: &'static str,
        /// Where the user supplies it.
        url: String,
        /// Names this need of this user (an opaque digest) in URL elicitations.
        elicitation: String,
    },
    /// The server uses per-user credentials and the caller has none it could supply here.
    #[error("{0}")]
    NoUserCredential(String),
    /// The gateway's own token could not be obtained.
    #[error("McpServer {server}: the gateway could not obtain a token from {endpoint}: {why}")]
    TokenEndpoint {
        /// `namespace/name`.
        server: String,
        /// The token endpoint.
        endpoint: String,
        /// What it said (never a secret).
        why: String,
    },
    /// The route's mode is not served by this build.
    #[error("McpServer {0}: its outbound auth mode is not served by this gateway build")]
    Unsupported(String),
}

/// Decides and obtains upstream credentials.
pub struct Outbound {
    service: service::ServiceTokens,
    exchanges: exchange::Exchanges,
    vault: Option<Arc<vault::Vault>>,
    oauth: Option<authorization_code::UserOAuth>,
    /// The gateway's public URL (no trailing slash), where people supply credentials.
    public_url: Option<String>,
}

impl Outbound {
    /// Token requests go through `http`. `vault` holds what users enter on the gateway's
    /// pages (present when people sign in at the gateway, at `public_url`).
    pub fn new(
        http: HttpClient,
        vault: Option<Arc<vault::Vault>>,
        public_url: Option<String>,
    ) -> Self {
        let public_url = public_url.map(|u| u.trim_end_matches('/').to_owned());
        let oauth = vault
            .as_ref()
            .zip(public_url.as_ref())
            .map(|(vault, base)| {
                authorization_code::UserOAuth::new(
                    http.clone(),
                    vault.clone(),
                    format!("{base}/-/connections/callback"),
                    Some(format!("{base}/-/connections/client-metadata")),
                )
            });
        Self {
            exchanges: exchange::Exchanges::new(http.clone()),
            service: service::ServiceTokens::new(http),
            vault,
            oauth,
            public_url,
        }
    }

    /// Users' OAuth authorizations, when people sign in at the gateway.
    pub fn oauth(&self) -> Option<&authorization_code::UserOAuth> {
        self.oauth.as_ref()
    }

    /// The vault of users' own credentials, when people sign in at the gateway.
    pub fn vault(&self) -> Option<&Arc<vault::Vault>> {
        self.vault.as_ref()
    }

    /// Where a person supplies their credential for `route`.
    pub fn connect_url(&self, route: &ServerRoute) -> Option<String> {
        let base = self.public_url.as_ref()?;
        self.vault.as_ref()?;
        Some(format!(
            "{base}/-/connections/{}/{}",
            route.config.namespace, route.config.name
        ))
    }

    /// The credential for one request of `caller` (whose request carried `inbound`) to
    /// `route`, beyond what the route injects by itself.
    pub async fn resolve(
        &self,
        route: &ServerRoute,
        caller: Option<&Identity>,
        inbound: &http::HeaderMap,
    ) -> Result<Resolved, OutboundError> {
        match &route.config.auth {
            UpstreamAuth::TokenExchange { .. } => Ok(Resolved {
                headers: Some(self.exchanges.token(route, inbound).await?),
                renewable: true,
            }),
            UpstreamAuth::None | UpstreamAuth::SharedApiKey { .. } | UpstreamAuth::Passthrough => {
                Ok(Resolved::default())
            }
            UpstreamAuth::OAuth2ClientCredentials { .. } => {
                let header = self.service.token(route).await?;
                Ok(Resolved {
                    headers: Some(header),
                    renewable: true,
                })
            }
            UpstreamAuth::PerUserApiKey { .. } => {
                let person = self.person(route, caller, "an API key")?;
                if let Some(headers) = route.override_for(person) {
                    return Ok(Resolved {
                        headers: Some(headers.clone()),
                        renewable: false,
                    });
                }
                let stored = match &self.vault {
                    Some(vault) if person.method != Method::ServiceAccount => {
                        vault.api_key(route, person).await
                    }
                    _ => None,
                };
                match stored {
                    Some(headers) => Ok(Resolved {
                        headers: Some(headers),
                        renewable: false,
                    }),
                    None => Err(self.required(route, person, "API key")),
                }
            }
            UpstreamAuth::OAuth2AuthorizationCode { .. } => {
                let person = self.person(route, caller, AUTHORIZATION)?;
                let resolved = match &self.oauth {
                    Some(oauth) if person.method != Method::ServiceAccount => {
                        oauth.resolve(route, person).await?
                    }
                    _ => None,
                };
                resolved.ok_or_else(|| self.required(route, person, AUTHORIZATION))
            }
        }
    }

    /// The upstream answered 401 to `used`: forget it, so the next [`Self::resolve`]
    /// obtains a fresh one.
    pub fn refused(
        &self,
        route: &ServerRoute,
        caller: Option<&Identity>,
        inbound: &http::HeaderMap,
        used: &Resolved,
    ) {
        let (true, Some(headers)) = (used.renewable, &used.headers) else {
            return;
        };
        match (&route.config.auth, &self.oauth, caller) {
            (UpstreamAuth::OAuth2AuthorizationCode { .. }, Some(oauth), Some(person)) => {
                oauth.refused(route, person, used);
            }
            (UpstreamAuth::TokenExchange { .. }, _, _) => {
                self.exchanges.forget(route, inbound, headers);
            }
            _ => self.service.forget(route, headers),
        }
    }

    /// The upstream refused a call of `caller` for want of the `challenged` scopes (`403
    /// insufficient_scope`): the error asking them to authorize again with those scopes
    /// added, when that can help (not when they granted them already, which would loop).
    pub async fn insufficient_scope(
        &self,
        route: &ServerRoute,
        caller: Option<&Identity>,
        challenged: Option<&[String]>,
    ) -> Option<OutboundError> {
        let (UpstreamAuth::OAuth2AuthorizationCode { .. }, Some(oauth), Some(person)) =
            (&route.config.auth, &self.oauth, caller)
        else {
            return None;
        };
        match oauth
            .step_up(route, person, challenged.unwrap_or_default())
            .await
        {
            Ok(true) => Some(self.required(
                route,
                person,
                "authorization for more scopes (the upstream asks for more than you granted)",
            )),
            Ok(false) => None,
            Err(error) => {
                tracing::warn!(server = %route.key(), %error, "recording the scopes an upstream asks for failed");
                None
            }
        }
    }

    /// What to tell a caller whose own credential the upstream refused.
    pub fn refused_error(
        &self,
        route: &ServerRoute,
        caller: Option<&Identity>,
    ) -> Option<OutboundError> {
        match route.config.auth {
            UpstreamAuth::PerUserApiKey { .. } => Some(self.required(
                route,
                caller?,
                "API key (the upstream refused the one the gateway holds)",
            )),
            UpstreamAuth::OAuth2AuthorizationCode { .. } => Some(self.required(
                route,
                caller?,
                "authorization (the upstream refused the token the gateway holds)",
            )),
            _ => None,
        }
    }

    /// The caller, if a per-user credential can be looked up for them.
    fn person<'a>(
        &self,
        route: &ServerRoute,
        caller: Option<&'a Identity>,
        what: &str,
    ) -> Result<&'a Identity, OutboundError> {
        caller.ok_or_else(|| {
            OutboundError::NoUserCredential(format!(
                "McpServer {} sends each user's own {what} upstream, and this route is public: callers without a token have none; make the route non-public",
                route.key()
            ))
        })
    }

    /// The error for a person (or machine) without their credential for `route`.
    fn required(
        &self,
        route: &ServerRoute,
        caller: &Identity,
        what: &'static str,
    ) -> OutboundError {
        let server = route.key();
        if caller.method == Method::ServiceAccount {
            return OutboundError::NoUserCredential(format!(
                "McpServer {server} sends each user's own {what} upstream, and {} is a machine identity with none: call as a person, or have a tenant admin create an AuthOverride for {}",
                caller.user, caller.user
            ));
        }
        match self.connect_url(route) {
            Some(url) => OutboundError::AuthorizationRequired {
                namespace: route.config.namespace.clone(),
                server: route.config.name.clone(),
                what,
                url,
                elicitation: vault::record_id(caller, &server).unwrap_or_default(),
            },
            None => OutboundError::NoUserCredential(format!(
                "McpServer {server} sends each user's own {what} upstream and the gateway holds none for {}: a tenant admin can create an AuthOverride, or the gateway's operators can turn on sign-in so users enter their own",
                caller.user
            )),
        }
    }
}

/// Everything a server's outbound auth depends on (its name, mode settings and client
/// secret): what the gateway learns or obtains for one configuration is kept under this, so
/// a changed secret, scope or endpoint starts afresh.
pub fn config_key(route: &ServerRoute) -> [u8; 32] {
    use secrecy::ExposeSecret;
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for part in [
        route.config.namespace.as_str(),
        route.config.name.as_str(),
        &serde_json::to_string(&route.config.auth).unwrap_or_default(),
        route
            .client_secret
            .as_ref()
            .map(|s| s.expose_secret())
            .unwrap_or_default(),
    ] {
        hash.update(part.as_bytes());
        hash.update(b"\0");
    }
    hash.finalize().into()
}
