//! Signing people in at the gateway: the gateway is an OIDC relying party of the configured
//! identity provider (authorization code with PKCE S256, `state`, `nonce`, and the `iss`
//! response parameter checked per RFC 9207). The login in progress lives in a sealed,
//! short-lived cookie, so any replica can finish it; the ID token is verified with the
//! provider's published keys like any token from it.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::keys::random_id;
use super::tokens::constant_time_eq;
use crate::auth::Identity;
use crate::auth::oidc::OidcVerifier;
use crate::upstream::HttpClient;

/// How long a person has to complete the provider's login.
pub const LOGIN_TIME: Duration = Duration::from_secs(600);

/// The identity provider people sign in with.
pub struct IdentityProvider {
    /// Its issuer URL.
    pub issuer: String,
    client_id: String,
    client_secret: Option<SecretString>,
    scopes: String,
    /// Verifies ID tokens: this issuer, audience the gateway's client id.
    id_tokens: OidcVerifier,
    http: HttpClient,
    endpoints: tokio::sync::OnceCell<Endpoints>,
}

struct Endpoints {
    authorization: String,
    token: String,
    /// The provider says it sends `iss` with every authorization response (RFC 9207).
    sends_iss: bool,
}

/// A login in progress, sealed into a cookie between leaving for the provider and coming back.
#[derive(Debug, Serialize, Deserialize)]
pub struct Pending {
    /// Sent as `state`, must come back.
    pub state: String,
    /// Must be in the ID token.
    pub nonce: String,
    /// The PKCE verifier.
    pub verifier: String,
    /// The gateway path to return to.
    pub next: String,
    /// Seconds since the epoch.
    pub expires: u64,
}

impl IdentityProvider {
    /// The provider `issuer`, with the gateway registered there as `client_id` (a
    /// confidential client when it has a secret). `id_tokens` must trust `issuer` with the
    /// client id as audience.
    pub fn new(
        issuer: String,
        client_id: String,
        client_secret: Option<SecretString>,
        scopes: String,
        id_tokens: OidcVerifier,
        http: HttpClient,
    ) -> Self {
        Self {
            issuer,
            client_id,
            client_secret,
            scopes,
            id_tokens,
            http,
            endpoints: tokio::sync::OnceCell::new(),
        }
    }

    async fn endpoints(&self) -> Result<&Endpoints, String> {
        self.endpoints
            .get_or_try_init(|| async {
                let document = self.id_tokens.discover(&self.issuer).await?;
                let endpoint = |name: &str| {
                    document[name].as_str().map(str::to_owned).ok_or_else(|| {
                        format!("{}'s discovery document has no {name}", self.issuer)
                    })
                };
                Ok(Endpoints {
                    authorization: endpoint("authorization_endpoint")?,
                    token: endpoint("token_endpoint")?,
                    sends_iss: document["authorization_response_iss_parameter_supported"]
                        == Value::Bool(true),
                })
            })
            .await
    }

    /// Where to send the browser to sign in, and what to remember until it comes back to
    /// `redirect_uri`.
    pub async fn start(
        &self,
        redirect_uri: &str,
        next: String,
        now: u64,
    ) -> Result<(String, Pending), String> {
        let endpoints = self.endpoints().await?;
        let random = |_| random_id::<32>().map_err(|e| e.to_string());
        let pending = Pending {
            state: random(())?,
            nonce: random(())?,
            verifier: random(())?,
            next,
            expires: now + LOGIN_TIME.as_secs(),
        };
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(pending.verifier.as_bytes()));
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &self.scopes)
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let separator = if endpoints.authorization.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok((
            format!("{}{separator}{query}", endpoints.authorization),
            pending,
        ))
    }

    /// The person the provider's answer at `redirect_uri` (its query `parameters`) signs in,
    /// checked against the login that was `pending`.
    pub async fn finish(
        &self,
        parameters: &[(String, String)],
        pending: &Pending,
        redirect_uri: &str,
        now: u64,
    ) -> Result<Identity, String> {
        let get = |name: &str| {
            parameters
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if pending.expires < now {
            return Err("the sign-in took too long: start again".into());
        }
        let state = get("state").unwrap_or_default();
        if !constant_time_eq(state.as_bytes(), pending.state.as_bytes()) {
            return Err(
                "this sign-in answer does not belong to the sign-in this browser started".into(),
            );
        }
        let endpoints = self.endpoints().await?;
        match get("iss") {
            Some(iss) if iss != self.issuer => {
                return Err(format!(
                    "the answer came from issuer {iss:?}, not {:?} (mix-up attack?)",
                    self.issuer
                ));
            }
            None if endpoints.sends_iss => {
                return Err("the answer lacks the iss parameter its provider promises".into());
            }
            _ => {}
        }
        if let Some(error) = get("error") {
            let description = get("error_description").unwrap_or_default();
            return Err(format!("the identity provider said {error}: {description}"));
        }
        let code = get("code").ok_or("the answer has no authorization code")?;
        let id_token = self
            .exchange(&endpoints.token, code, &pending.verifier, redirect_uri)
            .await?;
        let (identity, claims) = self
            .id_tokens
            .verify_claims(&id_token)
            .await
            .map_err(|e| format!("the identity provider's ID token was refused: {e}"))?;
        let nonce = claims["nonce"].as_str().unwrap_or_default();
        if !constant_time_eq(nonce.as_bytes(), pending.nonce.as_bytes()) {
            return Err("the ID token's nonce is not this sign-in's".into());
        }
        if let Some(azp) = claims["azp"].as_str()
            && azp != self.client_id
        {
            return Err("the ID token was issued to another client (azp)".into());
        }
        Ok(identity)
    }

    async fn exchange(
        &self,
        token_endpoint: &str,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<String, String> {
        let client = crate::token_endpoint::Client {
            id: &self.client_id,
            secret: self.client_secret.as_ref(),
            method: crate::token_endpoint::AuthMethod::Basic,
        };
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let answer = crate::token_endpoint::request(&self.http, token_endpoint, client, &form)
            .await
            .map_err(|e| format!("the identity provider's token endpoint refused the code: {e}"))?;
        answer["id_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                "the identity provider sent no ID token (is `openid` among the scopes?)".to_owned()
            })
    }
}
