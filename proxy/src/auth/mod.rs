//! Who is calling: identities verified from the caller's bearer token. OIDC JWTs are checked
//! against their issuer's published keys (`oidc`); `inbound` asks for tokens on routes that
//! are not public and serves the resource metadata clients discover the identity provider by.

pub mod access;
pub mod inbound;
pub mod oidc;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user: the configured user claim (by default `sub`).
    pub user: String,
    /// The `email` claim, when the token carries one.
    pub email: Option<String>,
    /// The configured groups claim.
    pub groups: Vec<String>,
    /// How the identity was established.
    pub method: Method,
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
}

impl Method {
    /// The method as a metric label and in audit records.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Oidc { .. } => "oidc",
            Self::ServiceAccount => "serviceaccount",
        }
    }
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
    /// Minted for another audience.
    #[error("the token was issued for another audience")]
    Audience,
    /// A required claim is missing or of the wrong type.
    #[error("the token lacks the {0} claim")]
    Claim(String),
    /// The issuer's keys could not be fetched.
    #[error("the identity provider could not be reached")]
    Unavailable,
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
            Self::Audience => "audience",
            Self::Claim(_) => "claim",
            Self::Unavailable => "unavailable",
            Self::NotConfigured => "not_configured",
        }
    }
}
