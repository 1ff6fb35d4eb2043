//! OIDC JWTs: the issuer's keys found by discovery (`/.well-known/openid-configuration`,
//! whose `issuer` must be the configured one) and cached; an unknown `kid` fetches the key
//! set again, at most once per [`REFETCH_INTERVAL`] per issuer. Only asymmetric algorithms
//! are accepted (RS*, PS*, ES*, EdDSA), and only with a key of their own family, so neither
//! `none` nor an HMAC token "signed" with a public key gets through. `iss`, `aud`, `exp` and
//! `nbf` are checked with [`LEEWAY`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Uri;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{Audience, AuthError, Identity, Method};
use crate::upstream::HttpClient;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY: u64 = 30;
/// An issuer's keys are fetched again on an unknown `kid` at most this often.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Keys are fetched again after this long even when every `kid` is known (rotation).
const MAX_KEY_AGE: Duration = Duration::from_secs(3600);
/// Largest discovery document or key set read.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// How long the identity provider may take to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

const ACCEPTED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// One trusted issuer, as configured.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// The `iss` value, also the base of discovery.
    pub issuer: String,
    /// Accepted `aud` values (any one suffices).
    pub audiences: Vec<String>,
    /// The claim naming the user (`sub` by default; `email` or `preferred_username` are common).
    pub user_claim: String,
    /// The claim listing the user's groups (`groups` by default).
    pub groups_claim: String,
    /// Put before the user claim's value, so that users of different issuers never share a
    /// name: empty with one issuer, `<issuer>#` by default with several (unless users are
    /// named by their verified email).
    pub user_prefix: String,
    /// Put before each group name, for the same reason: empty with one issuer, `<issuer>#`
    /// by default with several (a group of one provider is never another's).
    pub group_prefix: String,
    /// Whether the `email` claim counts only with `email_verified: true` (the default; turn
    /// it off only for an identity provider that verifies every address and omits the claim).
    pub require_verified_email: bool,
}

impl IssuerConfig {
    /// Checks what a typo would break, with a message saying what to fix.
    pub fn validate(&self) -> Result<(), String> {
        let uri: Uri = self
            .issuer
            .parse()
            .map_err(|e| format!("OIDC issuer {:?} is not a URL: {e}", self.issuer))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback(&uri) => {}
            _ => {
                return Err(format!(
                    "OIDC issuer {:?} must be an https:// URL (http:// only on loopback)",
                    self.issuer
                ));
            }
        }
        if self.audiences.iter().all(|a| a.trim().is_empty()) {
            return Err(format!(
                "OIDC issuer {:?} needs at least one audience (the gateway's URL or client id its tokens are minted for)",
                self.issuer
            ));
        }
        if self.user_claim.is_empty() || self.groups_claim.is_empty() {
            return Err(format!(
                "OIDC issuer {:?}: the user and groups claim names must not be empty",
                self.issuer
            ));
        }
        Ok(())
    }
}

/// Defaults every issuer shares unless its entry in the issuers file says otherwise.
#[derive(Debug, Clone)]
pub struct IssuerDefaults {
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// The claim naming the user.
    pub user_claim: String,
    /// The claim listing the groups.
    pub groups_claim: String,
    /// Whether `email` needs `email_verified: true`.
    pub require_verified_email: bool,
}

/// One entry of the issuers file (`--oidc-issuers-file`): per-issuer settings, each falling
/// back to the flags.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerEntry {
    /// The issuer URL.
    pub issuer: String,
    /// Accepted audiences of this issuer's tokens.
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    /// The claim naming the user.
    #[serde(default)]
    pub user_claim: Option<String>,
    /// The claim listing the groups.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Put before the user claim (default: none with one issuer, `<issuer>#` with several).
    #[serde(default)]
    pub user_prefix: Option<String>,
    /// Put before each group (default: none with one issuer, `<issuer>#` with several).
    #[serde(default)]
    pub group_prefix: Option<String>,
    /// Whether `email` needs `email_verified: true`.
    #[serde(default)]
    pub require_verified_email: Option<bool>,
}

impl IssuerEntry {
    /// An entry for `issuer` with every setting from the flags.
    pub fn plain(issuer: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audiences: None,
            user_claim: None,
            groups_claim: None,
            user_prefix: None,
            group_prefix: None,
            require_verified_email: None,
        }
    }
}

/// The issuers to trust: `entries` with `defaults` filled in, each validated. With several
/// issuers, a user named by a claim other than `email` is `<issuer>#<user>` unless the entry
/// sets its own prefix, so the same subject at two providers is never one person; duplicates
/// are refused.
pub fn issuer_configs(
    entries: Vec<IssuerEntry>,
    defaults: &IssuerDefaults,
) -> Result<Vec<IssuerConfig>, String> {
    let several = entries.len() > 1;
    let mut configs: Vec<IssuerConfig> = Vec::new();
    for entry in entries {
        let issuer = entry.issuer.trim().to_owned();
        if configs.iter().any(|c| c.issuer == issuer) {
            return Err(format!("OIDC issuer {issuer:?} is configured twice"));
        }
        let user_claim = entry
            .user_claim
            .unwrap_or_else(|| defaults.user_claim.clone());
        // A verified email names one person whoever vouches for it; a subject does not.
        let qualify = several && user_claim != "email";
        let config = IssuerConfig {
            user_prefix: entry.user_prefix.unwrap_or_else(|| {
                if qualify {
                    format!("{issuer}#")
                } else {
                    String::new()
                }
            }),
            group_prefix: entry.group_prefix.unwrap_or_else(|| {
                if several {
                    format!("{issuer}#")
                } else {
                    String::new()
                }
            }),
            issuer,
            audiences: entry
                .audiences
                .unwrap_or_else(|| defaults.audiences.clone()),
            user_claim,
            groups_claim: entry
                .groups_claim
                .unwrap_or_else(|| defaults.groups_claim.clone()),
            require_verified_email: entry
                .require_verified_email
                .unwrap_or(defaults.require_verified_email),
        };
        config.validate()?;
        configs.push(config);
    }
    Ok(configs)
}

fn is_loopback(uri: &Uri) -> bool {
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Verifies tokens of every configured issuer.
pub struct OidcVerifier {
    client: HttpClient,
    issuers: Vec<Issuer>,
    refetch_interval: Duration,
}

struct Issuer {
    config: IssuerConfig,
    keys: Mutex<Keys>,
    /// Serialises fetches, so a burst of unknown `kid`s fetches once.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Jwk>,
    fetched: Option<Instant>,
}

impl OidcVerifier {
    /// A verifier for `issuers` (already validated); keys are fetched when first needed.
    pub fn new(client: HttpClient, issuers: Vec<IssuerConfig>) -> Self {
        Self {
            client,
            issuers: issuers
                .into_iter()
                .map(|config| Issuer {
                    config,
                    keys: Mutex::default(),
                    fetching: tokio::sync::Mutex::new(()),
                })
                .collect(),
            refetch_interval: REFETCH_INTERVAL,
        }
    }

    /// The same verifier, refetching keys for unknown `kid`s at most once per `interval`.
    pub fn with_refetch_interval(mut self, interval: Duration) -> Self {
        self.refetch_interval = interval;
        self
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Whether `issuer` is one of the configured issuers.
    pub fn trusts(&self, issuer: &str) -> bool {
        self.issuers.iter().any(|i| i.config.issuer == issuer)
    }

    /// The identity in `token`, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_claims(token)
            .await
            .map(|(identity, _)| identity)
    }

    /// The identity in `token` and all its claims, or why it is refused.
    pub async fn verify_claims(&self, token: &str) -> Result<(Identity, Value), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(AuthError::Algorithm);
        }
        let claimed = super::Unverified::peek(token).ok_or(AuthError::Malformed)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| Some(i.config.issuer.as_str()) == claimed.iss.as_deref())
            .ok_or(AuthError::Issuer)?;
        let kid = header.kid.as_deref().unwrap_or_default();
        let jwk = match issuer.key(kid) {
            Some(jwk) => jwk,
            None => {
                self.refresh(issuer).await?;
                issuer.key(kid).ok_or(AuthError::UnknownKey)?
            }
        };
        let key = decoding_key(&jwk, header.alg).ok_or(AuthError::Algorithm)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY;
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuer.config.issuer]);
        // `aud` is required, and judged by `identity`: a configured audience admits every
        // route, a route's canonical URL only that route.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAudience => AuthError::Audience,
                ErrorKind::InvalidIssuer => AuthError::Issuer,
                ErrorKind::MissingRequiredClaim(claim) => AuthError::Claim(claim.clone()),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::Algorithm
                }
                ErrorKind::InvalidSignature => AuthError::Signature,
                _ => AuthError::Malformed,
            }
        })?;
        let identity = identity(&issuer.config, &data.claims)?;
        Ok((identity, data.claims))
    }

    /// Fetches `issuer`'s keys again, unless that happened less than the refetch interval
    /// ago (an unknown `kid` must not let callers make the gateway hammer the provider).
    async fn refresh(&self, issuer: &Issuer) -> Result<(), AuthError> {
        let _one_at_a_time = issuer.fetching.lock().await;
        let recent = issuer
            .lock()
            .fetched
            .is_some_and(|at| at.elapsed() < self.refetch_interval);
        if recent {
            return Ok(());
        }
        let keys = self.fetch_keys(&issuer.config.issuer).await.map_err(|error| {
            tracing::warn!(issuer = %issuer.config.issuer, %error, "could not fetch the issuer's keys");
            AuthError::Unavailable
        })?;
        let mut cached = issuer.lock();
        cached.by_kid = keys
            .keys
            .into_iter()
            .map(|jwk| (jwk.common.key_id.clone().unwrap_or_default(), jwk))
            .collect();
        cached.fetched = Some(Instant::now());
        Ok(())
    }

    /// `issuer`'s discovery document, checked to name `issuer`.
    pub async fn discover(&self, issuer: &str) -> Result<Value, String> {
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let document = self.get_json(&discovery).await?;
        if document["issuer"].as_str() != Some(issuer) {
            return Err(format!(
                "discovery at {discovery} names issuer {}, not {issuer}",
                document["issuer"]
            ));
        }
        Ok(document)
    }

    async fn fetch_keys(&self, issuer: &str) -> Result<JwkSet, String> {
        let document = self.discover(issuer).await?;
        let jwks_uri = document["jwks_uri"]
            .as_str()
            .ok_or_else(|| format!("{issuer}'s discovery document has no jwks_uri"))?;
        serde_json::from_value(self.get_json(jwks_uri).await?)
            .map_err(|e| format!("key set at {jwks_uri}: {e}"))
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        crate::upstream::get_json(&self.client, url, MAX_DOCUMENT, FETCH_TIMEOUT).await
    }
}

impl Issuer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached key `kid`, unless the cache is too old to trust for rotation.
    fn key(&self, kid: &str) -> Option<Jwk> {
        let keys = self.lock();
        keys.fetched.filter(|at| at.elapsed() < MAX_KEY_AGE)?;
        keys.by_kid.get(kid).cloned()
    }
}

/// A verification key for `alg` from `jwk`, only when the key is of the algorithm's family
/// (and names the same algorithm, if it names one).
fn decoding_key(jwk: &Jwk, alg: Algorithm) -> Option<DecodingKey> {
    if let Some(named) = jwk.common.key_algorithm
        && format!("{named:?}") != format!("{alg:?}")
    {
        return None;
    }
    let family_matches = matches!(
        (&jwk.algorithm, alg),
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512,
        ) | (
            AlgorithmParameters::EllipticCurve(_),
            Algorithm::ES256 | Algorithm::ES384
        ) | (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
    );
    if !family_matches {
        return None;
    }
    DecodingKey::from_jwk(jwk).ok()
}

fn identity(config: &IssuerConfig, claims: &Value) -> Result<Identity, AuthError> {
    let audience = audience(config, &claims["aud"])?;
    // Some providers send the flag as a string.
    let verified = matches!(&claims["email_verified"], Value::Bool(true))
        || claims["email_verified"].as_str() == Some("true");
    let email_counts = verified || !config.require_verified_email;
    if config.user_claim == "email" && !email_counts {
        return Err(AuthError::UnverifiedEmail);
    }
    let user = claims[config.user_claim.as_str()]
        .as_str()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| AuthError::Claim(config.user_claim.clone()))?;
    let user = format!("{}{user}", config.user_prefix);
    let prefixed = |group: &str| format!("{}{group}", config.group_prefix);
    let groups = match &claims[config.groups_claim.as_str()] {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(prefixed)
            .collect(),
        Value::String(one) => vec![prefixed(one)],
        _ => Vec::new(),
    };
    Ok(Identity {
        user,
        email: claims["email"]
            .as_str()
            .filter(|_| email_counts)
            .map(str::to_owned),
        groups,
        method: Method::Oidc {
            issuer: config.issuer.clone(),
        },
        audience,
    })
}

/// Where a token whose `aud` claim is `aud` may be used.
fn audience(config: &IssuerConfig, aud: &Value) -> Result<Audience, AuthError> {
    let named = super::audiences(aud)?;
    if named.iter().any(|a| config.audiences.contains(a)) {
        return Ok(Audience::Gateway);
    }
    // Only what can be a route's canonical URL; anything else was minted for someone else.
    let routes: Vec<String> = named
        .into_iter()
        .filter(|a| a.starts_with("https://") || a.starts_with("http://"))
        .collect();
    if routes.is_empty() {
        return Err(AuthError::Audience);
    }
    Ok(Audience::Resources(routes.into()))
}
