//! Each user's authorization of the gateway at an upstream's OAuth authorization server
//! (authorization code grant with PKCE S256, RFC 6749 and RFC 7636), the gateway being the
//! OAuth client, so the upstream's tokens never reach the MCP client:
//! - the provider is what the McpServer names, the rest learnt as an MCP client learns it
//!   (`discovery`); it is learnt again each time a person starts an authorization, so an
//!   upstream that moved to another authorization server is followed, and tokens are only
//!   ever refreshed at the token endpoint that issued them;
//! - the client is pre-registered, or the gateway's client ID metadata document when the
//!   provider accepts one, or registered once per server and provider through dynamic
//!   client registration (RFC 7591) and shared by its users (every replica reads the same
//!   record); the token endpoint authentication is the one registered or offered;
//! - scopes are the McpServer's, else those the upstream asks for (plus `offline_access`
//!   when offered); an upstream's `403 insufficient_scope` asks the person to authorize again
//!   with the union of what they granted and what it asks, unless they already granted it;
//! - `state` is sealed and names the user's record, so an answer only completes the
//!   authorization its own user started; `iss` is checked (RFC 9207); `resource` names the
//!   upstream (RFC 8707); one callback URL serves every server;
//! - tokens are refreshed before they expire and once after an upstream 401, one refresh per
//!   user and server however many calls wait (rotated refresh tokens are kept);
//! - Disconnect revokes at the provider (RFC 7009) when it offers revocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mcpgate_crds::gateway_config::{Upstream, UpstreamAuth};
use mcpgate_crds::v1alpha1::SentToken;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::discovery;
use super::lease::Leases;
use super::vault::{TokenSet, Tokens, Vault, record_id};
use super::{OutboundError, Resolved};
use crate::auth::Identity;
use crate::session::SessionKeys;
use crate::signin::keys::random_id;
use crate::signin::store::{Kind, Store, Write};
use crate::signin::tokens::constant_time_eq;
use crate::source::{ServerRoute, Snapshot};
use crate::token_endpoint::{self, AuthMethod, Client, TokenError};
use crate::upstream::HttpClient;

/// How long a person has to complete the provider's consent.
const AUTHORIZE_TIME: Duration = Duration::from_secs(600);
/// How long what was learnt about a provider is kept.
const PROVIDER_TTL: Duration = Duration::from_secs(3600);
/// How long a provider that could not be learnt is not asked again (but by a Connect).
const UNLEARNT_TTL: Duration = Duration::from_secs(30);
/// What `state` is sealed for.
const STATE_PURPOSE: &[u8] = b"mcpgate upstream authorization state";
/// How long one replica may hold the lease on refreshing a user's tokens.
/// (Longer than a refresh can take: two token requests of at most 10 s each.)
const LEASE_TIME: Duration = Duration::from_secs(30);
/// At most this many scopes are asked for after upstreams asked for more.
const MAX_SCOPES: usize = 64;
/// Longest scope kept from an upstream's challenge.
const MAX_SCOPE_LEN: usize = 256;
/// The scope that asks for a refresh token where a provider offers it.
const OFFLINE_ACCESS: &str = "offline_access";

/// What the gateway knows about one server's authorization server.
struct Provider {
    /// Its issuer, when its metadata was found.
    issuer: Option<String>,
    authorization: String,
    token: String,
    revocation: Option<String>,
    /// It promises `iss` in every authorization response (RFC 9207).
    sends_iss: bool,
    /// The RFC 8707 resource tokens are asked for.
    resource: String,
    /// The scopes asked for first.
    scopes: Vec<String>,
    client_id: String,
    client_secret: Option<SecretString>,
    /// The secret goes in the form rather than HTTP Basic (learnt when Basic is refused).
    post: AtomicBool,
}

impl Provider {
    fn client(&self) -> Client<'_> {
        Client {
            id: &self.client_id,
            secret: self.client_secret.as_ref(),
            method: if self.post.load(Ordering::Relaxed) {
                AuthMethod::Post
            } else {
                AuthMethod::Basic
            },
        }
    }

    /// A token request, remembering which client authentication the server took.
    async fn request(&self, http: &HttpClient, form: &[(&str, &str)]) -> Result<Value, TokenError> {
        let (answer, method) =
            token_endpoint::request_adapting(http, &self.token, self.client(), form).await?;
        self.post
            .store(method == AuthMethod::Post, Ordering::Relaxed);
        Ok(answer)
    }
}

/// An authorization in progress, sealed into `state`.
#[derive(Serialize, Deserialize)]
struct State {
    /// `namespace/name` of the server.
    server: String,
    /// The record the tokens go to: the user who started it.
    record: String,
    /// The PKCE verifier.
    verifier: String,
    /// Seconds since the epoch.
    expires: u64,
    /// The token endpoint of the provider it was started at.
    #[serde(default)]
    token: String,
    /// The scopes asked for.
    #[serde(default)]
    scopes: Vec<String>,
}

/// The gateway's registration at a provider (dynamic client registration), as stored.
#[derive(Serialize, Deserialize)]
struct Registration {
    server: String,
    endpoint: String,
    client_id: String,
    /// Sealed for this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    /// The token endpoint authentication the provider registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_method: Option<String>,
}

/// Users' OAuth tokens for upstream servers; `state` is sealed with the vault's keys.
pub struct UserOAuth {
    http: HttpClient,
    vault: Arc<Vault>,
    store: Arc<Store>,
    keys: Arc<SessionKeys>,
    /// The one callback URL.
    redirect_uri: String,
    /// The URL of the gateway's client ID metadata document, when providers can fetch it.
    client_metadata_url: Option<String>,
    providers: moka::sync::Cache<[u8; 32], Arc<tokio::sync::OnceCell<Arc<Provider>>>>,
    /// Why a provider could not be learnt, for a little while.
    unlearnt: moka::sync::Cache<[u8; 32], String>,
    /// One refresh at a time per record.
    renewing: moka::sync::Cache<String, Arc<tokio::sync::Mutex<()>>>,
    /// The digest of the access token the upstream last refused, per record.
    refused: moka::sync::Cache<String, [u8; 32]>,
    /// One refresh at a time per record across replicas.
    leases: Leases,
}

impl UserOAuth {
    /// Tokens kept in `vault`, registrations in `store`, `state` sealed with `keys`; the
    /// provider sends people back to `redirect_uri`; `client_metadata_url` is where the
    /// gateway serves its client ID metadata document.
    pub fn new(
        http: HttpClient,
        vault: Arc<Vault>,
        redirect_uri: String,
        client_metadata_url: Option<String>,
    ) -> Self {
        let (store, keys) = vault.parts();
        let replica = random_id::<16>().unwrap_or_else(|_| format!("{}", std::process::id()));
        Self {
            leases: Leases::new(store.clone(), replica),
            http,
            vault,
            store,
            keys,
            redirect_uri,
            client_metadata_url: client_metadata_url.filter(|url| discovery::secure(url, url)),
            providers: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(PROVIDER_TTL)
                .build(),
            unlearnt: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(UNLEARNT_TTL)
                .build(),
            renewing: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            refused: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }

    /// The callback URL providers send people back to.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The gateway's client ID metadata document (draft-ietf-oauth-client-id-metadata-document),
    /// if it serves one: a public client using PKCE, whose `client_id` is the document's URL.
    pub fn client_metadata(&self) -> Option<Value> {
        let url = self.client_metadata_url.as_ref()?;
        Some(json!({
            "client_id": url,
            "client_name": "mcpgate",
            "redirect_uris": [self.redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "application_type": "web",
        }))
    }

    /// The header for `person`'s call to `route`: their token, refreshed first when it has
    /// expired or the upstream refused it. `Ok(None)`: they have not authorized the gateway
    /// (or no longer can be refreshed) and must.
    pub async fn resolve(
        &self,
        route: &ServerRoute,
        person: &Identity,
    ) -> Result<Option<Resolved>, OutboundError> {
        let Some(id) = record_id(person, &route.key()) else {
            return Ok(None);
        };
        if let Some(tokens) = self.vault.oauth_at(&id, false).await
            && self.usable(&id, &tokens)
        {
            return Ok(Some(resolved(route, &tokens)));
        }
        let renewing = self.renewing.get_with(id.clone(), Default::default);
        let _one = renewing.lock().await;
        // Another call, or another replica, may have refreshed it meanwhile.
        let Some(tokens) = self.vault.oauth_at(&id, true).await else {
            return Ok(None);
        };
        if self.usable(&id, &tokens) {
            return Ok(Some(resolved(route, &tokens)));
        }
        let Some(refresh) = tokens.set.refresh_token.clone() else {
            return Ok(None);
        };
        let issuer_of_tokens = tokens
            .set
            .token_endpoint
            .clone()
            .or_else(|| configured_token_url(route));
        let provider = self
            .provider_matching(route, issuer_of_tokens.as_deref())
            .await
            .map_err(|why| failed(route, None, why))?;
        if issuer_of_tokens.as_deref() != Some(provider.token.as_str()) {
            // The upstream moved to another provider (or the tokens do not say where they
            // came from): a refresh token is never shown to any but the one that issued
            // it; the person authorizes again.
            tracing::info!(server = %route.key(), user = %person.user, "the server's provider is not the one that issued the tokens: asking for a new authorization");
            return Ok(None);
        }
        let held = match self.leases.take(&id, LEASE_TIME).await {
            Ok(Some(held)) => Some(held),
            Ok(None) => {
                return self
                    .refreshed_elsewhere(route, &provider, &id, &tokens)
                    .await;
            }
            Err(error) => {
                tracing::warn!(%error, "taking a refresh lease failed: refreshing without one");
                None
            }
        };
        let outcome = match self.vault.oauth_at(&id, true).await {
            // The replica that held the lease before stored new tokens just now.
            Some(now) if now.access_digest != tokens.access_digest => {
                Ok(Some(resolved(route, &now)))
            }
            _ => {
                self.refresh(route, person, &provider, &id, &tokens, &refresh)
                    .await
            }
        };
        if let Some(held) = held {
            self.leases.release(held).await;
        }
        outcome
    }

    /// Refreshes `tokens` (whose refresh token is `refresh`) at `provider` and stores the
    /// new ones; `Ok(None)` when the provider refused and the person must authorize again.
    async fn refresh(
        &self,
        route: &ServerRoute,
        person: &Identity,
        provider: &Provider,
        id: &str,
        tokens: &Tokens,
        refresh: &str,
    ) -> Result<Option<Resolved>, OutboundError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("resource", &provider.resource),
        ];
        let answer = match provider.request(&self.http, &form).await {
            Ok(answer) => answer,
            Err(error) if error.is_invalid_grant() => {
                // Another replica may have used (and rotated) it first: take what it stored.
                if let Some(now) = self.vault.oauth_at(id, true).await
                    && now.set.refresh_token.as_deref() != Some(refresh)
                {
                    return Ok(Some(resolved(route, &now)));
                }
                // Expired or revoked at the provider: only the person can authorize again.
                tracing::info!(server = %route.key(), user = %person.user, "the provider refused the refresh token");
                if let Err(error) = self.vault.delete(route, person).await {
                    tracing::warn!(%error, "deleting refused OAuth tokens failed");
                }
                return Ok(None);
            }
            Err(error) => return Err(failed(route, Some(provider), error.to_string())),
        };
        let mut set = token_set(&answer, Some(&tokens.set))
            .map_err(|why| failed(route, Some(provider), why))?;
        set.token_endpoint = Some(provider.token.clone());
        self.vault
            .store_oauth(route, person, &set)
            .await
            .map_err(|e| failed(route, Some(provider), e.to_string()))?;
        self.refused.invalidate(id);
        tracing::info!(server = %route.key(), user = %person.user, rotated = answer["refresh_token"].is_string(), "refreshed a user's upstream token");
        let tokens = self.vault.oauth_at(id, false).await.ok_or_else(|| {
            failed(
                route,
                Some(provider),
                "the refreshed tokens were not stored".into(),
            )
        })?;
        Ok(Some(resolved(route, &tokens)))
    }

    /// Another replica holds the lease on `id`: the tokens it stores once it refreshed
    /// (`Ok(None)` if it found the person must authorize again).
    async fn refreshed_elsewhere(
        &self,
        route: &ServerRoute,
        provider: &Provider,
        id: &str,
        tokens: &Tokens,
    ) -> Result<Option<Resolved>, OutboundError> {
        let deadline = tokio::time::Instant::now() + LEASE_TIME;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match self.vault.oauth_at(id, true).await {
                None => return Ok(None),
                Some(now) if now.access_digest != tokens.access_digest => {
                    return Ok(Some(resolved(route, &now)));
                }
                Some(_) => {}
            }
        }
        Err(failed(
            route,
            Some(provider),
            "another gateway replica is refreshing these tokens and has not finished".into(),
        ))
    }

    /// The upstream answered 401 to `used`: the next [`Self::resolve`] refreshes.
    pub fn refused(&self, route: &ServerRoute, person: &Identity, used: &Resolved) {
        let (Some(id), Some(headers)) = (record_id(person, &route.key()), &used.headers) else {
            return;
        };
        if let Some((_, value)) = headers.first() {
            // The access token is what goes stale; an ID token sent instead is its twin.
            self.refused
                .insert(id, Sha256::digest(value.as_bytes()).into());
        }
    }

    /// The upstream refused a call of `person` for want of the `challenged` scopes
    /// (`403 insufficient_scope`). `true`: a new authorization asking for them as well
    /// may help, and the next one started asks for them; `false`: `person` already granted
    /// them (asking again would loop), or holds no tokens.
    pub async fn step_up(
        &self,
        route: &ServerRoute,
        person: &Identity,
        challenged: &[String],
    ) -> Result<bool, String> {
        let Some(id) = record_id(person, &route.key()) else {
            return Ok(false);
        };
        let Some(tokens) = self.vault.oauth_at(&id, true).await else {
            return Ok(false);
        };
        let granted = tokens.set.granted();
        let challenged: Vec<String> = challenged
            .iter()
            .filter(|s| !s.is_empty() && s.len() <= MAX_SCOPE_LEN)
            .cloned()
            .collect();
        if challenged.iter().all(|s| granted.contains(s)) {
            return Ok(false);
        }
        // Kept apart from the tokens, so this write never races a refresh of them.
        let read = |e: crate::signin::store::StoreError| e.to_string();
        for _ in 0..2 {
            let found = self
                .store
                .get::<Vec<String>>(Kind::StepUp, &id)
                .await
                .map_err(read)?;
            let wanted = found.as_ref().map(|f| f.value.clone()).unwrap_or_default();
            if challenged.iter().all(|s| wanted.contains(s)) {
                return Ok(true);
            }
            let mut all = union(&[&wanted, &challenged]);
            all.truncate(MAX_SCOPES);
            let written = match &found {
                Some(found) => self
                    .store
                    .replace(Kind::StepUp, &id, &all, &found.version)
                    .await
                    .map_err(read)?,
                None => self
                    .store
                    .create(Kind::StepUp, &id, &all)
                    .await
                    .map_err(read)?,
            };
            if written == Write::Done {
                tracing::info!(server = %route.key(), user = %person.user, scopes = %challenged.join(" "), "the upstream asks for more scope");
                return Ok(true);
            }
        }
        Err("the scopes asked for changed twice while they were written".into())
    }

    /// The scopes upstreams asked `record` for beyond those granted.
    async fn stepped_up(&self, record: &str) -> Vec<String> {
        match self.store.get::<Vec<String>>(Kind::StepUp, record).await {
            Ok(found) => found.map(|f| f.value).unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, "reading the scopes an upstream asked for failed");
                Vec::new()
            }
        }
    }

    fn usable(&self, id: &str, tokens: &Tokens) -> bool {
        let now = now();
        tokens.renew_at.is_none_or(|at| now < at)
            && self.refused.get(id).is_none_or(|digest| {
                digest != tokens.access_digest && Some(digest) != tokens.id_digest
            })
    }

    /// Where to send `person`'s browser to authorize the gateway for `route`. The provider
    /// is learnt afresh: the upstream may have moved to another one.
    pub async fn start(&self, route: &ServerRoute, person: &Identity) -> Result<String, String> {
        if !matches!(
            route.config.auth,
            UpstreamAuth::OAuth2AuthorizationCode { .. }
        ) {
            return Err(format!("{} does not use OAuth", route.key()));
        }
        let record = record_id(person, &route.key())
            .ok_or("only a person signed in with an identity provider can authorize")?;
        self.forget_provider(route);
        let provider = self.provider(route).await?;
        // What they hold and what the upstream asked for since, with what it asks first
        // (SEP-2350: re-authorization keeps earlier scopes).
        let granted = match self.vault.oauth_at(&record, true).await {
            Some(tokens) => tokens.set.granted(),
            None => Vec::new(),
        };
        let mut scopes = union(&[&provider.scopes, &granted, &self.stepped_up(&record).await]);
        scopes.truncate(MAX_SCOPES);
        let state = State {
            server: route.key(),
            record,
            verifier: random_id::<32>().map_err(|e| e.to_string())?,
            expires: now() + AUTHORIZE_TIME.as_secs(),
            token: provider.token.clone(),
            scopes,
        };
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(state.verifier.as_bytes()));
        let sealed = self
            .keys
            .seal_for(
                STATE_PURPOSE,
                &serde_json::to_vec(&state).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &provider.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("state", &sealed)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if !state.scopes.is_empty() {
            query.append_pair("scope", &state.scopes.join(" "));
        }
        query.append_pair("resource", &provider.resource);
        let separator = if provider.authorization.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok(format!(
            "{}{separator}{}",
            provider.authorization,
            query.finish()
        ))
    }

    /// Completes the authorization the provider's answer (the callback's query
    /// `parameters`) belongs to, for the signed-in `person`, and stores their tokens, if
    /// they are still `allowed` the server (by `namespace/name`). Returns the server, whose
    /// page the person goes back to.
    pub async fn finish(
        &self,
        snapshot: &Snapshot,
        person: &Identity,
        parameters: &[(String, String)],
        allowed: impl Fn(&str) -> bool,
    ) -> Result<Arc<ServerRoute>, String> {
        for name in ["state", "code", "iss", "error"] {
            crate::signin::single(parameters, name)?;
        }
        let get = |name: &str| {
            parameters
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let state: State = get("state")
            .and_then(|sealed| self.keys.open_for(STATE_PURPOSE, sealed))
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            .ok_or("this answer does not carry an authorization the gateway started")?;
        if state.expires < now() {
            return Err("the authorization took too long: start it again".into());
        }
        let route = snapshot
            .server(&state.server)
            .filter(|r| matches!(r.config.auth, UpstreamAuth::OAuth2AuthorizationCode { .. }))
            .ok_or_else(|| format!("{} no longer takes an OAuth authorization", state.server))?
            .clone();
        let mine = record_id(person, &state.server)
            .is_some_and(|id| constant_time_eq(id.as_bytes(), state.record.as_bytes()));
        if !mine {
            return Err(
                "this authorization was started by someone else: start it again yourself".into(),
            );
        }
        if !allowed(&state.server) {
            return Err(format!("you may no longer use {}", state.server));
        }
        let started_at = (!state.token.is_empty()).then_some(state.token.as_str());
        let provider = self.provider_matching(&route, started_at).await?;
        if started_at.is_some_and(|token| token != provider.token) {
            return Err("the server's provider changed while you authorized: start again".into());
        }
        match (get("iss"), &provider.issuer) {
            (Some(iss), Some(issuer)) if iss != issuer => {
                return Err(format!(
                    "the answer came from issuer {iss:?}, not {issuer:?} (mix-up attack?)"
                ));
            }
            (None, Some(_)) if provider.sends_iss => {
                return Err("the answer lacks the iss parameter its provider promises".into());
            }
            _ => {}
        }
        if let Some(error) = get("error") {
            let description = get("error_description").unwrap_or_default();
            return Err(format!("the provider said {error}: {description}"));
        }
        let code = get("code").ok_or("the answer has no authorization code")?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_verifier", state.verifier.as_str()),
            ("resource", &provider.resource),
        ];
        let answer = provider
            .request(&self.http, &form)
            .await
            .map_err(|e| format!("the provider's token endpoint refused the code: {e}"))?;
        let mut set = token_set(&answer, None)?;
        set.token_endpoint = Some(provider.token.clone());
        // What was granted: the answer says when it differs from what was asked (RFC 6749
        // section 5.1).
        if set.scope.is_none() && !state.scopes.is_empty() {
            set.scope = Some(state.scopes.join(" "));
        }
        if let UpstreamAuth::OAuth2AuthorizationCode {
            send_token: SentToken::IdToken,
            ..
        } = route.config.auth
            && set.id_token.is_none()
        {
            return Err("the provider sent no ID token, which this server sends upstream: its scopes must include openid".into());
        }
        self.vault
            .store_oauth(&route, person, &set)
            .await
            .map_err(|e| e.to_string())?;
        self.refused.invalidate(&state.record);
        if let Err(error) = self.store.delete(Kind::StepUp, &state.record).await {
            tracing::warn!(%error, "forgetting the scopes an upstream asked for failed");
        }
        tracing::info!(server = %route.key(), user = %person.user, refresh = set.refresh_token.is_some(), "a user authorized the gateway upstream");
        Ok(route)
    }

    /// Forgets `person`'s tokens for `route`, revoking them at the provider first when it
    /// offers revocation. A provider that cannot be reached does not keep the tokens here.
    pub async fn disconnect(&self, route: &ServerRoute, person: &Identity) -> Result<(), String> {
        // Not while this replica refreshes them (which would store them again after).
        let renewing =
            record_id(person, &route.key()).map(|id| self.renewing.get_with(id, Default::default));
        let _one = match &renewing {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        // Nor while another replica does.
        let held = match record_id(person, &route.key()) {
            Some(id) => self.hold(&id).await,
            None => None,
        };
        if let Some(tokens) = self.vault.oauth(route, person, true).await {
            let issued_by = tokens
                .set
                .token_endpoint
                .clone()
                .or_else(|| configured_token_url(route));
            match self.provider_matching(route, issued_by.as_deref()).await {
                // Tokens are revoked only where they were issued.
                Ok(provider) if issued_by.as_deref() != Some(provider.token.as_str()) => {
                    tracing::info!(server = %route.key(), "the tokens' provider is gone: they are forgotten, not revoked");
                }
                Ok(provider) => {
                    if let Some(endpoint) = &provider.revocation {
                        let revoke = [
                            (tokens.set.refresh_token.as_deref(), "refresh_token"),
                            (Some(tokens.set.access_token.as_str()), "access_token"),
                        ];
                        for (token, hint) in revoke {
                            let Some(token) = token else { continue };
                            match token_endpoint::revoke(
                                &self.http,
                                endpoint,
                                provider.client(),
                                token,
                                hint,
                            )
                            .await
                            {
                                Ok(()) => {}
                                // RFC 7009 section 2.2.1: e.g. self-contained access tokens.
                                Err(TokenError::Refused { error, .. })
                                    if error == "unsupported_token_type" =>
                                {
                                    tracing::debug!(server = %route.key(), hint, "the provider does not revoke this kind of token");
                                }
                                Err(error) => {
                                    tracing::warn!(server = %route.key(), %error, "revoking a user's upstream token failed");
                                }
                            }
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(server = %route.key(), %why, "the provider is unknown: its tokens are forgotten, not revoked")
                }
            }
        }
        let deleted = self
            .vault
            .delete(route, person)
            .await
            .map_err(|e| e.to_string());
        if let Some(held) = held {
            self.leases.release(held).await;
        }
        deleted
    }

    /// The lease on `id`, waiting (bounded) while another replica holds it; `None` if it
    /// could not be had, which only loses the guard against a racing refresh.
    async fn hold(&self, id: &str) -> Option<super::lease::Held> {
        let deadline = tokio::time::Instant::now() + LEASE_TIME;
        loop {
            match self.leases.take(id, LEASE_TIME).await {
                Ok(Some(held)) => return Some(held),
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(None) => return None,
                Err(error) => {
                    tracing::warn!(%error, "taking a refresh lease failed");
                    return None;
                }
            }
        }
    }

    /// [`Self::provider`], learnt again once if it is not the one with token endpoint
    /// `expected` (another replica may have followed the upstream to a new provider).
    async fn provider_matching(
        &self,
        route: &ServerRoute,
        expected: Option<&str>,
    ) -> Result<Arc<Provider>, String> {
        let provider = self.provider(route).await?;
        if expected.is_none_or(|token| token == provider.token) {
            return Ok(provider);
        }
        self.forget_provider(route);
        self.provider(route).await
    }

    /// What the gateway knows about `route`'s provider, learnt once per configuration.
    /// A failure is kept for a while too, so calls waiting on a provider that is down do
    /// not each learn it again (a Connect always does).
    async fn provider(&self, route: &ServerRoute) -> Result<Arc<Provider>, String> {
        let key = super::config_key(route);
        if let Some(why) = self.unlearnt.get(&key) {
            return Err(why);
        }
        let cell = self.providers.get_with(key, Default::default);
        let learnt = cell
            .get_or_try_init(|| async { self.discover(route).await.map(Arc::new) })
            .await
            .cloned();
        if let Err(why) = &learnt {
            self.unlearnt.insert(key, why.clone());
        }
        learnt
    }

    /// Forgets what was learnt about `route`'s provider, failure included.
    fn forget_provider(&self, route: &ServerRoute) {
        let key = super::config_key(route);
        self.providers.invalidate(&key);
        self.unlearnt.invalidate(&key);
    }

    async fn discover(&self, route: &ServerRoute) -> Result<Provider, String> {
        let UpstreamAuth::OAuth2AuthorizationCode {
            authorization_url,
            token_url,
            client_id,
            registration_url,
            scopes,
            ..
        } = &route.config.auth
        else {
            return Err(format!("{} does not use OAuth", route.key()));
        };
        let Upstream::Remote { url: upstream, .. } = &route.config.upstream else {
            return Err(format!(
                "McpServer {}: only remote upstreams take OAuth",
                route.key()
            ));
        };
        let learnt = discovery::learn(&self.http, upstream, token_url.as_deref())
            .await
            .map_err(|why| format!("McpServer {}: {why}", route.key()))?;
        let metadata = learnt.metadata.as_ref();
        let listed = |name: &str| {
            metadata
                .map(|m| discovery::strings(&m[name]))
                .unwrap_or_default()
        };
        let authorization = authorization_url
            .clone()
            .or_else(|| learnt.authorization.clone())
            .ok_or_else(|| {
                format!(
                    "McpServer {}: no authorizationUrl is set and the provider's metadata (naming token endpoint {}) was not found; set spec.auth.oauth2AuthorizationCode.authorizationUrl",
                    route.key(),
                    token_url.as_deref().unwrap_or("?")
                )
            })?;
        let token = learnt.token.clone().ok_or_else(|| {
            format!(
                "McpServer {}: the provider names no token endpoint",
                route.key()
            )
        })?;
        // The McpServer's scopes, else what the upstream asks for and a refresh token where
        // the provider offers one (SEP-2207).
        let scopes = if scopes.is_empty() {
            let mut chosen = learnt.scopes.clone();
            if listed("scopes_supported")
                .iter()
                .any(|s| s == OFFLINE_ACCESS)
                && !chosen.iter().any(|s| s == OFFLINE_ACCESS)
            {
                chosen.push(OFFLINE_ACCESS.to_owned());
            }
            chosen
        } else {
            scopes.clone()
        };
        let methods = listed("token_endpoint_auth_methods_supported");
        let methods: Vec<&str> = methods.iter().map(String::as_str).collect();
        let (client_id, client_secret, post) = match client_id {
            Some(id) => (
                id.clone(),
                route.client_secret.clone(),
                prefers_post(&methods, None),
            ),
            // A client ID metadata document, unless the McpServer names a registration
            // endpoint.
            None if registration_url.is_none()
                && metadata.is_some_and(|m| {
                    m["client_id_metadata_document_supported"] == Value::Bool(true)
                })
                && self.client_metadata_url.is_some() =>
            {
                (
                    self.client_metadata_url.clone().unwrap_or_default(),
                    None,
                    false,
                )
            }
            None => {
                let endpoint = registration_url
                    .clone()
                    .or_else(|| learnt.registration.clone())
                    .ok_or_else(|| {
                        format!(
                            "McpServer {}: the provider offers no dynamic client registration: set spec.auth.oauth2AuthorizationCode.clientId (and clientSecretRef)",
                            route.key()
                        )
                    })?;
                let registered = self
                    .registered(route, &endpoint, &token, metadata, &scopes, &methods)
                    .await?;
                let post = prefers_post(&methods, registered.2.as_deref());
                (registered.0, registered.1, post)
            }
        };
        Ok(Provider {
            issuer: learnt.issuer.clone(),
            authorization,
            token,
            revocation: learnt.revocation.clone(),
            sends_iss: metadata.is_some_and(|m| {
                m["authorization_response_iss_parameter_supported"] == Value::Bool(true)
            }),
            resource: learnt.resource,
            scopes,
            client_id,
            client_secret,
            post: AtomicBool::new(post),
        })
    }

    /// The client the gateway registered at `endpoint` for `route` (its id, secret and
    /// token endpoint authentication), registering it the first time (by whichever replica
    /// gets there first).
    async fn registered(
        &self,
        route: &ServerRoute,
        endpoint: &str,
        token: &str,
        metadata: Option<&Value>,
        scopes: &[String],
        methods: &[&str],
    ) -> Result<(String, Option<SecretString>, Option<String>), String> {
        // Per provider as well: a client (and its secret) is never used at another one.
        let id = {
            let digest = Sha256::digest(
                [route.key().as_str(), endpoint, &self.redirect_uri, token]
                    .join("\0")
                    .as_bytes(),
            );
            base16ct::lower::encode_string(&digest[..16])
        };
        let purpose = [b"mcpgate client registration\0".as_slice(), id.as_bytes()].concat();
        let open = |registration: Registration| {
            let secret = match registration.client_secret {
                Some(sealed) => Some(
                    self.keys
                        .open_for(&purpose, &sealed)
                        .and_then(|plain| String::from_utf8(plain).ok())
                        .map(SecretString::from)
                        .ok_or(
                            "the stored client registration does not open with the gateway's keys",
                        )?,
                ),
                None => None,
            };
            Ok::<_, String>((registration.client_id, secret, registration.auth_method))
        };
        let read = |e: crate::signin::store::StoreError| e.to_string();
        if let Some(found) = self
            .store
            .get::<Registration>(Kind::Registration, &id)
            .await
            .map_err(read)?
        {
            return open(found.value);
        }
        // Basic, which every confidential client may use, unless the provider lists
        // only others.
        let method = ["client_secret_basic", "client_secret_post", "none"]
            .into_iter()
            .find(|m| methods.is_empty() || methods.contains(m))
            .unwrap_or("client_secret_basic");
        let mut request = json!({
            "client_name": format!("mcpgate for {}", route.key()),
            "redirect_uris": [self.redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": method,
            "application_type": "web",
        });
        if !scopes.is_empty() {
            request["scope"] = Value::String(scopes.join(" "));
        }
        // OpenID registration defaults ID tokens to RS256, which a provider signing with
        // other keys refuses: ask for one it lists.
        let algorithms = metadata
            .map(|m| discovery::strings(&m["id_token_signing_alg_values_supported"]))
            .unwrap_or_default();
        if let Some(first) = algorithms.first()
            && !algorithms.iter().any(|a| a == "RS256")
        {
            request["id_token_signed_response_alg"] = Value::String(first.clone());
        }
        let answer = token_endpoint::post_json(&self.http, endpoint, &request)
            .await
            .map_err(|e| {
                format!(
                    "McpServer {}: registering the gateway at {endpoint} failed: {e}",
                    route.key()
                )
            })?;
        let client_id = answer["client_id"]
            .as_str()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| format!("{endpoint} registered the gateway without a client_id"))?
            .to_owned();
        let secret = answer["client_secret"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let registration = Registration {
            server: route.key(),
            endpoint: endpoint.to_owned(),
            client_id,
            client_secret: match &secret {
                Some(secret) => Some(
                    self.keys
                        .seal_for(&purpose, secret.as_bytes())
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            },
            auth_method: answer["token_endpoint_auth_method"]
                .as_str()
                .map(str::to_owned),
        };
        match self
            .store
            .create(Kind::Registration, &id, &registration)
            .await
            .map_err(read)?
        {
            Write::Done => {
                tracing::info!(server = %route.key(), %endpoint, "registered the gateway as an OAuth client");
                Ok((
                    registration.client_id,
                    secret.map(SecretString::from),
                    registration.auth_method,
                ))
            }
            Write::Conflict => {
                // Another replica registered first: everyone uses that one.
                let found = self
                    .store
                    .get::<Registration>(Kind::Registration, &id)
                    .await
                    .map_err(read)?
                    .ok_or("the client registration vanished while it was written")?;
                open(found.value)
            }
        }
    }
}

/// The token endpoint the McpServer names, if it does.
fn configured_token_url(route: &ServerRoute) -> Option<String> {
    match &route.config.auth {
        UpstreamAuth::OAuth2AuthorizationCode { token_url, .. } => token_url.clone(),
        _ => None,
    }
}

/// Whether a client's secret goes in the form: the method it registered, else the
/// provider's list when that offers `client_secret_post` but not Basic.
fn prefers_post(offered: &[&str], registered: Option<&str>) -> bool {
    match registered {
        Some(method) => method == "client_secret_post",
        None => {
            offered.contains(&"client_secret_post") && !offered.contains(&"client_secret_basic")
        }
    }
}

/// The scopes of all of `sets`, each once, in order of first appearance.
fn union(sets: &[&[String]]) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for scope in sets.iter().flat_map(|s| s.iter()) {
        if !all.contains(scope) {
            all.push(scope.clone());
        }
    }
    all
}

/// The headers `tokens` give for `route`.
fn resolved(route: &ServerRoute, tokens: &Tokens) -> Resolved {
    let headers = match &route.config.auth {
        UpstreamAuth::OAuth2AuthorizationCode {
            send_token: SentToken::IdToken,
            ..
        } => tokens.id.clone(),
        _ => Some(tokens.access.clone()),
    };
    Resolved {
        headers,
        renewable: true,
    }
}

fn failed(route: &ServerRoute, provider: Option<&Provider>, why: String) -> OutboundError {
    OutboundError::TokenEndpoint {
        server: route.key(),
        endpoint: provider
            .map(|p| p.token.clone())
            .or_else(|| configured_token_url(route))
            .unwrap_or_else(|| "its provider".to_owned()),
        why,
    }
}

/// The tokens in a token endpoint's `answer`; a refresh that returns no new refresh token
/// (or ID token) keeps the `previous` one.
fn token_set(answer: &Value, previous: Option<&TokenSet>) -> Result<TokenSet, String> {
    let (access, lifetime) = token_endpoint::access_token(answer).map_err(|e| e.to_string())?;
    let text = |name: &str| {
        answer[name]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    };
    let obtained_at = now();
    Ok(TokenSet {
        access_token: access.expose_secret().to_owned(),
        refresh_token: text("refresh_token")
            .or_else(|| previous.and_then(|p| p.refresh_token.clone())),
        id_token: text("id_token").or_else(|| previous.and_then(|p| p.id_token.clone())),
        expires_at: lifetime.map(|l| obtained_at + l.as_secs()),
        obtained_at,
        token_endpoint: previous.and_then(|p| p.token_endpoint.clone()),
        scope: text("scope").or_else(|| previous.and_then(|p| p.scope.clone())),
    })
}

fn now() -> u64 {
    crate::auth::now().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(user: &str) -> Identity {
        Identity {
            user: user.into(),
            email: None,
            groups: vec![],
            method: crate::auth::Method::Oidc {
                issuer: "https://idp.example".into(),
            },
            audience: crate::auth::Audience::Gateway,
        }
    }

    /// A gateway with one per-user OAuth server `team/docs` whose provider is unreachable
    /// (every refusal below must come before the gateway would contact it).
    fn gateway() -> (UserOAuth, Snapshot, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::Files(
            crate::signin::store::FileStore::open(dir.path()).unwrap(),
        ));
        let keys = Arc::new(SessionKeys::new([5; 32], None));
        let vault = Vault::new(store, keys, Duration::from_secs(60));
        let oauth = UserOAuth::new(
            crate::upstream::client().unwrap(),
            vault,
            "https://gw.example/-/connections/callback".into(),
            None,
        );
        let config = json!({
            "schema": mcpgate_crds::gateway_config::SCHEMA_VERSION, "version": "v1",
            "servers": [{"namespace": "team", "name": "docs", "path": "/team/mcp/docs/server",
                "upstream": {"type": "remote", "url": "http://127.0.0.1:9/mcp", "transport": "StreamableHttp"},
                "auth": {"type": "oAuth2AuthorizationCode", "authorizationUrl": "http://127.0.0.1:9/auth",
                    "tokenUrl": "http://127.0.0.1:9/token", "clientId": "c", "clientSecret": null,
                    "scopes": [], "pkce": "S256", "registrationUrl": null, "sendToken": "AccessToken"},
                "tools": {"allow": [], "deny": []}, "timeoutMs": 1000,
                "retry": {"attempts": 0, "backoffMs": 100}, "rateLimits": {"perUser": null, "perServer": null},
                "public": false, "access": {"subjects": []}}],
            "virtualServers": [],
        });
        let snapshot =
            Snapshot::build(serde_json::from_value(config).unwrap(), &Default::default()).unwrap();
        (oauth, snapshot, dir)
    }

    fn sealed(oauth: &UserOAuth, state: &State) -> String {
        oauth
            .keys
            .seal_for(STATE_PURPOSE, &serde_json::to_vec(state).unwrap())
            .unwrap()
    }

    #[tokio::test]
    async fn answers_that_are_not_this_users_authorization_are_refused() {
        let (oauth, snapshot, _dir) = gateway();
        let alice = person("alice");
        let state = |who: &Identity, expires: u64| State {
            server: "team/docs".into(),
            record: record_id(who, "team/docs").unwrap(),
            verifier: "v".repeat(43),
            expires,
            token: String::new(),
            scopes: Vec::new(),
        };
        let later = now() + 60;
        let query = |state: String| {
            vec![
                ("state".to_owned(), state),
                ("code".to_owned(), "the-code".to_owned()),
            ]
        };
        type Query = Vec<(String, String)>;
        let cases: Vec<(&str, Query, &str)> = vec![
            (
                "no state",
                vec![("code".into(), "c".into())],
                "does not carry",
            ),
            (
                "a forged state",
                query("mcpgate-not-sealed".into()),
                "does not carry",
            ),
            (
                "bob's authorization",
                query(sealed(&oauth, &state(&person("bob"), later))),
                "someone else",
            ),
            (
                "an expired one",
                query(sealed(&oauth, &state(&alice, now() - 1))),
                "too long",
            ),
            (
                "a repeated state",
                [
                    query(sealed(&oauth, &state(&alice, later))),
                    query("x".into()),
                ]
                .concat(),
                "repeated",
            ),
        ];
        for (what, parameters, why) in cases {
            let error = oauth
                .finish(&snapshot, &alice, &parameters, |_| true)
                .await
                .err()
                .unwrap_or_else(|| panic!("{what} was accepted"));
            assert!(error.contains(why), "{what}: {error}");
        }
        // Her own answer, for a server she may no longer use.
        let error = oauth
            .finish(
                &snapshot,
                &alice,
                &query(sealed(&oauth, &state(&alice, later))),
                |_| false,
            )
            .await
            .unwrap_err();
        assert!(error.contains("no longer use"), "{error}");
        // A state sealed for another purpose (a session id, say) does not open.
        let other = oauth
            .keys
            .seal_for(
                b"another purpose",
                &serde_json::to_vec(&state(&alice, later)).unwrap(),
            )
            .unwrap();
        let error = oauth
            .finish(&snapshot, &alice, &query(other), |_| true)
            .await
            .unwrap_err();
        assert!(error.contains("does not carry"), "{error}");
    }

    #[tokio::test]
    async fn a_step_up_asks_again_for_what_was_granted_and_what_the_upstream_wants() {
        let (oauth, snapshot, _dir) = gateway();
        let route = snapshot.server("team/docs").unwrap().clone();
        let alice = person("alice");
        let write = ["mcp:write".to_owned()];
        // Nothing held: nothing to step up from.
        assert!(!oauth.step_up(&route, &alice, &write).await.unwrap());
        let held = TokenSet {
            access_token: "a".into(),
            scope: Some("mcp:basic".into()),
            obtained_at: now(),
            ..TokenSet::default()
        };
        oauth
            .vault
            .store_oauth(&route, &alice, &held)
            .await
            .unwrap();
        // Granted already: authorizing again could only loop.
        assert!(
            !oauth
                .step_up(&route, &alice, &["mcp:basic".to_owned()])
                .await
                .unwrap()
        );
        assert!(oauth.step_up(&route, &alice, &write).await.unwrap());
        assert!(oauth.step_up(&route, &alice, &write).await.unwrap());
        // Bob's tokens are his own: her step-up is not his.
        assert!(!oauth.step_up(&route, &person("bob"), &write).await.unwrap());
        // The next authorization asks for the union (the provider here is the McpServer's
        // own settings: its metadata cannot be reached).
        let url = oauth.start(&route, &alice).await.unwrap();
        let query: std::collections::HashMap<String, String> = url::Url::parse(&url)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        assert!(url.starts_with("http://127.0.0.1:9/auth?"), "{url}");
        assert_eq!(query["scope"], "mcp:basic mcp:write");
        assert_eq!(query["resource"], "http://127.0.0.1:9/mcp");
        assert_eq!(query["client_id"], "c");
        assert_eq!(query["code_challenge_method"], "S256");
        assert_eq!(
            query["redirect_uri"],
            "https://gw.example/-/connections/callback"
        );
    }

    #[test]
    fn scopes_are_united_in_order_and_the_secret_goes_where_the_provider_takes_it() {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            union(&[&s(&["a", "b"]), &s(&["b", "c"]), &s(&[])]),
            s(&["a", "b", "c"])
        );
        assert!(prefers_post(&["client_secret_post"], None));
        assert!(!prefers_post(
            &["client_secret_basic", "client_secret_post"],
            None
        ));
        assert!(!prefers_post(&[], None));
        assert!(prefers_post(
            &["client_secret_basic"],
            Some("client_secret_post")
        ));
        assert!(!prefers_post(&["client_secret_post"], Some("none")));
    }

    #[test]
    fn a_refresh_keeps_what_the_provider_did_not_rotate() {
        let first = token_set(
            &json!({"access_token": "a1", "refresh_token": "r1", "id_token": "i1", "expires_in": 60}),
            None,
        )
        .unwrap();
        assert_eq!(first.expires_at, Some(first.obtained_at + 60));
        let kept = token_set(&json!({"access_token": "a2"}), Some(&first)).unwrap();
        assert_eq!(kept.refresh_token.as_deref(), Some("r1"));
        assert_eq!(kept.id_token.as_deref(), Some("i1"));
        assert_eq!(kept.expires_at, None);
        let rotated = token_set(
            &json!({"access_token": "a3", "refresh_token": "r2"}),
            Some(&first),
        )
        .unwrap();
        assert_eq!(rotated.refresh_token.as_deref(), Some("r2"));
        // Where they came from and what they allow carry over a refresh.
        let bound = TokenSet {
            token_endpoint: Some("https://as.example/token".into()),
            scope: Some("mcp:basic".into()),
            ..first.clone()
        };
        let refreshed = token_set(&json!({"access_token": "a4"}), Some(&bound)).unwrap();
        assert_eq!(
            refreshed.token_endpoint.as_deref(),
            Some("https://as.example/token")
        );
        assert_eq!(refreshed.scope.as_deref(), Some("mcp:basic"));
        let narrowed = token_set(
            &json!({"access_token": "a5", "scope": "mcp:read"}),
            Some(&bound),
        )
        .unwrap();
        assert_eq!(narrowed.scope.as_deref(), Some("mcp:read"));
        assert!(token_set(&json!({"refresh_token": "r"}), None).is_err());
    }
}
