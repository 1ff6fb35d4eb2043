//! Who is calling: identities verified from the caller's bearer token. OIDC JWTs are checked
//! against their issuer's published keys (`oidc`), Kubernetes ServiceAccount tokens by the
//! API server's TokenReview (`service_account`); verified tokens are remembered until they
//! expire (`cache`). `inbound` asks for tokens on routes that are not public and serves the
//! resource metadata clients discover the identity provider by.

pub mod access;
pub mod cache;
pub mod inbound;
pub mod oidc;
pub mod service_account;

use base64::Engine;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user: the configured user claim (by default `sub`), after the issuer's user
    /// prefix (with several issuers, `<issuer>#` unless configured otherwise).
    pub user: String,
    /// The `email` claim, only when the issuer vouches for it (`email_verified`).
    pub email: Option<String>,
    /// The configured groups claim.
    pub groups: Vec<String>,
    /// How the identity was established.
    pub method: Method,
    /// Where the token may be used.
    pub audience: Audience,
}

/// Where a verified token may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// On every route: its `aud` names the gateway (a configured audience), or the API
    /// server reviewed it for the gateway's audience.
    Gateway,
    /// Only on the routes whose canonical URL (the `resource` of their RFC 9728 metadata)
    /// its `aud` names (RFC 8707).
    Resources(std::sync::Arc<[String]>),
}

impl Audience {
    /// Whether a token with this audience may be used on the route whose canonical URL is
    /// `resource` (`None` when the gateway has no public URL to name routes by).
    pub fn admits(&self, resource: Option<&str>) -> bool {
        match self {
            Self::Gateway => true,
            Self::Resources(names) => resource.is_some_and(|r| names.iter().any(|n| n == r)),
        }
    }
}

/// How a caller was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// An OIDC JWT from this issuer.
    Oidc {
        /// The token's issuer.
        issuer: String,
    },
    /// A Kubernetes ServiceAccount token, reviewed by the API server; the user is
    /// `system:serviceaccount:<namespace>:<name>`.
    ServiceAccount,
    /// A token the gateway issued to a person who signed in with the OIDC issuer `issuer`
    /// (so the user, email and groups are that issuer's, as with [`Method::Oidc`]).
    Gateway {
        /// The identity provider the person signed in with.
        issuer: String,
        /// What the token was issued under; revoking it ends the token.
        grant: Grant,
    },
}

/// What a gateway-issued token was issued under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// An MCP client's authorization (one refresh-token family).
    Client {
        /// The client.
        client_id: String,
        /// The family id.
        family: String,
    },
    /// A personal access token.
    Personal {
        /// The token's id.
        id: String,
    },
}

impl Method {
    /// The method as a metric label and in audit records.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Oidc { .. } => "oidc",
            Self::ServiceAccount => "serviceaccount",
            Self::Gateway {
                grant: Grant::Client { .. },
                ..
            } => "gateway",
            Self::Gateway {
                grant: Grant::Personal { .. },
                ..
            } => "personal_token",
        }
    }

    /// The identity provider that vouched for the person, if a person.
    pub fn issuer(&self) -> Option<&str> {
        match self {
            Self::Oidc { issuer } | Self::Gateway { issuer, .. } => Some(issuer),
            Self::ServiceAccount => None,
        }
    }
}

/// The claims that decide how a JWT is checked, read before anything is verified: they
/// only pick the verifier and bound how long a verified result is cached.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Unverified {
    /// Issuer.
    #[serde(default)]
    pub iss: Option<String>,
    /// Expiry, seconds since the epoch.
    #[serde(default)]
    pub exp: Option<u64>,
}

impl Unverified {
    /// The payload of `token` if it is shaped like a JWT (three parts, base64url JSON).
    pub fn peek(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether `exp` is past, beyond the clock skew any verifier tolerates: such a token is
    /// refused without checking its signature or asking the API server.
    pub fn expired(&self) -> bool {
        let now = now().as_secs();
        self.exp
            .is_some_and(|exp| exp.saturating_add(oidc::LEEWAY) < now)
    }
}

/// The values of a JWT's `aud` claim (a string or an array of strings).
pub(crate) fn audiences(aud: &serde_json::Value) -> Result<Vec<String>, AuthError> {
    use serde_json::Value;
    match aud {
        Value::String(one) => Ok(vec![one.clone()]),
        Value::Array(many) => Ok(many
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()),
        _ => Err(AuthError::Claim("aud".into())),
    }
}

/// Time since the epoch, the clock token claims are read against.
pub(crate) fn now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Why a token was refused. Reasons are a bounded set (metric labels); the messages never
/// repeat the token or its claims' values.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No bearer token.
    #[error("a bearer token is required")]
    Missing,
    /// Not a JWT, or not one the gateway can read.
    #[error("the bearer token is malformed")]
    Malformed,
    /// Signed with an algorithm the gateway does not accept (`none`, HMAC, ...).
    #[error("the token's signing algorithm is not accepted")]
    Algorithm,
    /// From an issuer the gateway does not trust.
    #[error("the token's issuer is not trusted")]
    Issuer,
    /// Signed with a key the issuer does not publish.
    #[error("the token's signing key is unknown")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    Signature,
    /// Past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// Before its `nbf`.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The user is named by the `email` claim and the issuer does not say it verified it.
    #[error("the token's email is not verified (email_verified is not true)")]
    UnverifiedEmail,
    /// Minted for another audience.
    #[error("the token was issued for another audience")]
    Audience,
    /// A required claim is missing or of the wrong type.
    #[error("the token lacks the {0} claim")]
    Claim(String),
    /// The issuer's keys could not be fetched, or the API server could not review the token.
    #[error("the identity provider could not be reached")]
    Unavailable,
    /// The Kubernetes API server did not authenticate the token, or it is not a
    /// ServiceAccount's.
    #[error("the token is not a valid ServiceAccount token")]
    Rejected,
    /// A gateway-issued token whose authorization was revoked.
    #[error("the token has been revoked")]
    Revoked,
    /// The route is not public and the gateway has no identity provider to check tokens.
    #[error(
        "this server is not public and the gateway has no identity provider configured (--oidc-issuer)"
    )]
    NotConfigured,
}

impl AuthError {
    /// The reason as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::Issuer => "issuer",
            Self::UnknownKey => "unknown_key",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::UnverifiedEmail => "unverified_email",
            Self::Audience => "audience",
            Self::Claim(_) => "claim",
            Self::Unavailable => "unavailable",
            Self::Rejected => "rejected",
            Self::Revoked => "revoked",
            Self::NotConfigured => "not_configured",
        }
    }
}
