//! The authorization server's endpoints for MCP clients (OAuth 2.1):
//! - `/-/oauth/authorize`: checks the client and its redirect URI before anything else, and
//!   answers every error with a page, never a redirect (only the person's decision sends the
//!   browser back to the client); requires PKCE S256, takes RFC 8707 `resource`s
//!   that are the gateway or its routes, signs the person in, and asks their consent every
//!   time (MCP's rule for dynamically registered clients: a client's name is its own claim);
//! - `/-/oauth/token`: authorization codes (sealed, one minute, single use: a replay revokes
//!   what the code gave) and refresh tokens (rotated; reuse revokes the family);
//! - `/-/oauth/register` (RFC 7591) and `/-/oauth/revoke` (RFC 7009).
//!
//! Redirects carry `iss` (RFC 9207) so clients can tell this server's answers apart.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::browser::BrowserSession;
use super::clients::Client;
use super::keys::random_id;
use super::pages;
use super::tokens::{IssueError, Issued, Person, constant_time_eq};
use super::{Context, SignIn, body, form, html, no_store, oauth_error, query, redirect, single};
use crate::auth::now;
use crate::error::{Body, json_response};
use crate::path::route_key;

const CONSENT_PURPOSE: &[u8] = b"mcpgate consent request v1";
const CODE_PURPOSE: &[u8] = b"mcpgate authorization code v1";
/// How long the consent page may stay open.
const CONSENT_TIME: u64 = 600;

/// An authorization request the person is asked about, sealed into the consent form.
#[derive(Debug, Serialize, Deserialize)]
struct Consent {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    resources: Vec<String>,
    scope: String,
    state: Option<String>,
    /// The person who was asked: only they may answer.
    user: String,
    expires: u64,
}

/// An authorization code's content, sealed into the code itself.
#[derive(Debug, Serialize, Deserialize)]
struct Code {
    id: String,
    client_id: String,
    redirect_uri: String,
    challenge: String,
    resources: Vec<String>,
    scope: String,
    person: Person,
    expires: u64,
}

/// Where an authorization error goes once the redirect URI is trusted.
struct Back<'a> {
    redirect_uri: &'a str,
    state: Option<&'a str>,
}

impl SignIn {
    /// The URL of `redirect_uri` with `parameters` and this server's `iss` added.
    fn back_to(&self, redirect_uri: &str, parameters: &[(&str, &str)]) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in parameters {
            query.append_pair(k, v);
        }
        query.append_pair("iss", &self.issuer);
        let separator = if redirect_uri.contains('?') { '&' } else { '?' };
        format!("{redirect_uri}{separator}{}", query.finish())
    }

    fn error_back(&self, back: &Back<'_>, error: &str, description: &str) -> Response<Body> {
        let mut parameters = vec![("error", error), ("error_description", description)];
        if let Some(state) = back.state {
            parameters.push(("state", state));
        }
        redirect(&self.back_to(back.redirect_uri, &parameters))
    }

    /// The audiences `requested` names: the gateway itself, or routes by canonical URL.
    fn resources(
        &self,
        context: &Context<'_>,
        requested: Vec<&str>,
    ) -> Result<Vec<String>, String> {
        if requested.is_empty() {
            return Ok(vec![self.issuer.clone()]);
        }
        let snapshot = context.current.load();
        let mut resources = Vec::new();
        for resource in requested {
            let trimmed = resource.trim_end_matches('/');
            let known = trimmed == self.issuer
                || trimmed
                    .strip_prefix(&self.issuer)
                    .and_then(route_key)
                    .is_some_and(|key| snapshot.as_ref().is_some_and(|s| s.route(key).is_some()));
            if !known {
                return Err(format!(
                    "resource {resource:?} is neither this gateway ({}) nor one of its MCP servers",
                    self.issuer
                ));
            }
            if !resources.iter().any(|r| r == trimmed) {
                resources.push(trimmed.to_owned());
            }
        }
        Ok(resources)
    }

    /// How the consent page names `resources`.
    fn describe(&self, context: &Context<'_>, resources: &[String]) -> Vec<String> {
        let snapshot = context.current.load();
        resources
            .iter()
            .map(|resource| {
                let route = resource.strip_prefix(&self.issuer).and_then(|path| {
                    snapshot
                        .as_ref()?
                        .route(path)
                        .map(|r| r.name())
                        .map(|(ns, n)| format!("{ns}/{n}"))
                });
                match route {
                    Some(name) => format!("{name} ({resource})"),
                    None => format!("every MCP server you may use at this gateway ({resource})"),
                }
            })
            .collect()
    }

    /// GET /-/oauth/authorize.
    pub(super) async fn authorize(
        &self,
        context: &Context<'_>,
        req: &Request<Incoming>,
    ) -> Response<Body> {
        let parameters = query(req);
        let bad = |message: &str| {
            html(
                StatusCode::BAD_REQUEST,
                pages::problem("This sign-in link is not valid", message),
            )
        };
        let one = |name| single(&parameters, name);
        let (client_id, redirect_uri) = match (one("client_id"), one("redirect_uri")) {
            (Ok(Some(c)), Ok(Some(r))) => (c, r),
            (Err(e), _) | (_, Err(e)) => return bad(&e),
            _ => return bad("client_id and redirect_uri are required"),
        };
        let client = match self.clients.resolve(client_id, context.peer).await {
            Ok(client) => client,
            Err(message) => return bad(&message),
        };
        if !client.redirect_allowed(redirect_uri) {
            return bad(&format!(
                "redirect_uri {redirect_uri:?} is not registered for this client"
            ));
        }
        let state = match one("state") {
            Ok(state) => state,
            Err(e) => return bad(&e),
        };
        let checked = (|| {
            let value = |name| one(name).map_err(|e| ("invalid_request", e));
            if value("response_type")? != Some("code") {
                return Err((
                    "unsupported_response_type",
                    "response_type must be code".to_owned(),
                ));
            }
            let challenge = value("code_challenge")?.unwrap_or_default();
            match value("code_challenge_method")? {
                Some("S256") => {}
                Some(other) => {
                    return Err((
                        "invalid_request",
                        format!("code_challenge_method {other:?} is not accepted: use S256"),
                    ));
                }
                None => {
                    return Err((
                        "invalid_request",
                        "PKCE is required: send code_challenge with code_challenge_method=S256"
                            .to_owned(),
                    ));
                }
            }
            if challenge.len() != 43 || URL_SAFE_NO_PAD.decode(challenge).is_err() {
                return Err((
                    "invalid_request",
                    "code_challenge must be the base64url SHA-256 of the code verifier (43 characters)"
                        .to_owned(),
                ));
            }
            let requested: Vec<&str> = parameters
                .iter()
                .filter(|(k, _)| k == "resource")
                .map(|(_, v)| v.as_str())
                .collect();
            let resources = self
                .resources(context, requested)
                .map_err(|e| ("invalid_target", e))?;
            let scope = value("scope")?.unwrap_or_default().to_owned();
            Ok((challenge.to_owned(), resources, scope))
        })();
        // A page, not a redirect: anyone can register a client with any redirect URI, so
        // redirecting errors before the person decided would make the gateway an open
        // redirector (RFC 9700 §4.11.2).
        let (challenge, resources, scope) = match checked {
            Ok(checked) => checked,
            Err((error, description)) => return bad(&format!("{error}: {description}")),
        };
        let Some(session) = self.session(req.headers()) else {
            let here = req.uri().path_and_query().map_or("", |p| p.as_str());
            let next: String = url::form_urlencoded::byte_serialize(here.as_bytes()).collect();
            return redirect(&format!("/-/signin?next={next}"));
        };
        let consent = Consent {
            client_id: client.id.clone(),
            redirect_uri: redirect_uri.to_owned(),
            challenge,
            resources,
            scope,
            state: state.map(str::to_owned),
            user: session.person.user.clone(),
            expires: now().as_secs() + CONSENT_TIME,
        };
        let Some(sealed) = serde_json::to_vec(&consent)
            .ok()
            .and_then(|c| self.seal.seal_for(CONSENT_PURPOSE, &c).ok())
        else {
            return bad("the gateway could not seal the request; try again");
        };
        let redirect_host = url::Url::parse(redirect_uri)
            .ok()
            .map(|u| match u.host_str() {
                Some(host) => format!("{}://{host}", u.scheme()),
                None => format!("{}:", u.scheme()),
            })
            .unwrap_or_default();
        html(
            StatusCode::OK,
            pages::consent(
                &session.person.user,
                client.name.as_deref(),
                &client.id,
                client.registered,
                &redirect_host,
                &self.describe(context, &consent.resources),
                &consent.scope,
                &sealed,
                &session.csrf,
            ),
        )
    }

    /// POST /-/oauth/authorize: the person's decision.
    pub(super) async fn decide(&self, req: Request<Incoming>) -> Response<Body> {
        let (session, fields): (BrowserSession, _) = match self.checked_form(req).await {
            Ok(checked) => checked,
            Err(page) => return page,
        };
        let consent: Option<Consent> = single(&fields, "request")
            .ok()
            .flatten()
            .and_then(|sealed| self.seal.open_for(CONSENT_PURPOSE, sealed))
            .and_then(|plain| serde_json::from_slice(&plain).ok());
        let Some(consent) = consent.filter(|c| c.expires > now().as_secs()) else {
            return html(
                StatusCode::BAD_REQUEST,
                pages::problem(
                    "Request expired",
                    "This authorization request is no longer valid. Start again from your MCP client.",
                ),
            );
        };
        if consent.user != session.person.user {
            return html(
                StatusCode::FORBIDDEN,
                pages::problem(
                    "Another person's request",
                    "This request was shown to someone else. Start again from your MCP client.",
                ),
            );
        }
        let back = Back {
            redirect_uri: &consent.redirect_uri,
            state: consent.state.as_deref(),
        };
        if single(&fields, "decision").ok().flatten() != Some("allow") {
            tracing::info!(user = %session.person.user, client = %consent.client_id, "authorization denied");
            return self.error_back(&back, "access_denied", "the user denied access");
        }
        let Ok(id) = random_id::<16>() else {
            return self.error_back(&back, "server_error", "no randomness");
        };
        let code = Code {
            id,
            client_id: consent.client_id.clone(),
            redirect_uri: consent.redirect_uri.clone(),
            challenge: consent.challenge.clone(),
            resources: consent.resources.clone(),
            scope: consent.scope.clone(),
            person: session.person.clone(),
            expires: now().as_secs() + self.code_lifetime.as_secs(),
        };
        let Some(sealed) = serde_json::to_vec(&code)
            .ok()
            .and_then(|c| self.seal.seal_for(CODE_PURPOSE, &c).ok())
        else {
            return self.error_back(&back, "server_error", "the gateway could not seal the code");
        };
        tracing::info!(user = %session.person.user, client = %consent.client_id, resources = ?consent.resources, "authorization granted");
        let mut parameters = vec![("code", sealed.as_str())];
        if let Some(state) = back.state {
            parameters.push(("state", state));
        }
        redirect(&self.back_to(back.redirect_uri, &parameters))
    }

    /// The client a token or revocation request comes from, authenticated; Err is the
    /// response to send.
    async fn client(
        &self,
        context: &Context<'_>,
        headers: &HeaderMap,
        fields: &[(String, String)],
    ) -> Result<Client, Response<Body>> {
        let invalid = |description: &str| {
            let mut response = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", description);
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"mcpgate\""),
            );
            Err(response)
        };
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|pair| {
                let (id, secret) = pair.split_once(':')?;
                let decode = |s: &str| {
                    url::form_urlencoded::parse(format!("x={s}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                };
                Some((decode(id)?, decode(secret)?))
            });
        let form_id = single(fields, "client_id").ok().flatten();
        let form_secret = single(fields, "client_secret").ok().flatten();
        let (id, secret) = match (&basic, form_id) {
            (Some((id, secret)), None) => (id.as_str(), Some(secret.as_str())),
            (Some((id, secret)), Some(form)) if form == id => (id.as_str(), Some(secret.as_str())),
            (Some(_), Some(_)) => return invalid("client_id differs from the Basic credentials"),
            (None, Some(id)) => (id, form_secret),
            (None, None) => return invalid("client_id is required"),
        };
        let client = match self.clients.resolve(id, context.peer).await {
            Ok(client) => client,
            Err(message) => return invalid(&message),
        };
        if !client.authenticates(secret) {
            return invalid("the client secret is wrong or missing");
        }
        Ok(client)
    }

    /// A form posted by an authenticated client (the token and revocation endpoints).
    async fn client_form(
        &self,
        context: &Context<'_>,
        req: Request<Incoming>,
    ) -> Result<(Client, Vec<(String, String)>), Response<Body>> {
        let (headers, fields) = form(req)
            .await
            .map_err(|e| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &e))?;
        let client = self.client(context, &headers, &fields).await?;
        Ok((client, fields))
    }

    /// POST /-/oauth/token.
    pub(super) async fn token(
        &self,
        context: &Context<'_>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let (client, fields) = match self.client_form(context, req).await {
            Ok(posted) => posted,
            Err(response) => return response,
        };
        let one = |name| single(&fields, name);
        let result = match one("grant_type") {
            Ok(Some("authorization_code")) => self.redeem(&client, &fields).await,
            Ok(Some("refresh_token")) => match one("refresh_token") {
                Ok(Some(token)) => self
                    .tokens
                    .refresh(token, &client.id, &resources(&fields))
                    .await
                    .map_err(grant_error),
                _ => Err(("invalid_request", "refresh_token is required".to_owned())),
            },
            Ok(Some(other)) => Err((
                "unsupported_grant_type",
                format!(
                    "grant_type {other:?} is not supported (authorization_code, refresh_token)"
                ),
            )),
            Ok(None) => Err(("invalid_request", "grant_type is required".to_owned())),
            Err(e) => Err(("invalid_request", e)),
        };
        match result {
            Ok(issued) => {
                if client.registered
                    && let Err(error) = self.clients.used(&client.id).await
                {
                    tracing::warn!(%error, "could not mark a client registration used");
                }
                let mut response = json_response(
                    StatusCode::OK,
                    &json!({
                        "access_token": issued.access_token,
                        "token_type": "Bearer",
                        "expires_in": issued.expires_in,
                        "refresh_token": issued.refresh_token,
                    }),
                );
                no_store(response.headers_mut());
                response
            }
            Err(("server_error", description)) => {
                tracing::warn!(error = %description, "the token endpoint failed");
                oauth_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "the gateway could not issue a token; try again",
                )
            }
            Err((error, description)) => oauth_error(StatusCode::BAD_REQUEST, error, &description),
        }
    }

    async fn redeem(
        &self,
        client: &Client,
        fields: &[(String, String)],
    ) -> Result<Issued, (&'static str, String)> {
        let one = |name| {
            single(fields, name)
                .map_err(|e| ("invalid_request", e))?
                .ok_or(("invalid_request", format!("{name} is required")))
        };
        let invalid = || {
            (
                "invalid_grant",
                "the authorization code is not valid".to_owned(),
            )
        };
        let code: Code = self
            .seal
            .open_for(CODE_PURPOSE, one("code")?)
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            .ok_or_else(invalid)?;
        if code.expires < now().as_secs() {
            return Err(("invalid_grant", "the authorization code has expired".into()));
        }
        if code.client_id != client.id {
            return Err((
                "invalid_grant",
                "the authorization code was issued to another client".into(),
            ));
        }
        if one("redirect_uri")? != code.redirect_uri {
            return Err((
                "invalid_grant",
                "redirect_uri differs from the authorization request's".into(),
            ));
        }
        let verifier = one("code_verifier")?;
        let valid_verifier = (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if !valid_verifier || !constant_time_eq(computed.as_bytes(), code.challenge.as_bytes()) {
            return Err((
                "invalid_grant",
                "code_verifier does not match the code_challenge".into(),
            ));
        }
        let requested = resources(fields);
        let resources = if requested.is_empty() {
            code.resources.clone()
        } else if requested.iter().all(|r| code.resources.contains(r)) {
            requested
        } else {
            return Err((
                "invalid_target",
                "resource was not part of the authorization".into(),
            ));
        };
        self.tokens
            .authorize(&code.id, code.person, &client.id, resources, code.scope)
            .await
            .map_err(grant_error)
    }

    /// POST /-/oauth/register.
    pub(super) async fn register(
        &self,
        context: &Context<'_>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let (headers, bytes) = match body(req).await {
            Ok(read) => read,
            Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", &e),
        };
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                "send the client metadata as application/json",
            );
        }
        let metadata: Value = match serde_json::from_slice(&bytes) {
            Ok(metadata) => metadata,
            Err(e) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_client_metadata",
                    &format!("the registration is not JSON: {e}"),
                );
            }
        };
        match self.clients.register(&metadata, context.peer).await {
            Ok(registered) => {
                tracing::info!(client = %registered["client_id"], name = %registered["client_name"], "client registered");
                let mut response = json_response(StatusCode::CREATED, &registered);
                no_store(response.headers_mut());
                response
            }
            Err(super::clients::RegistrationError::Limited(wait)) => {
                let mut response = oauth_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "slow_down",
                    &format!("too many client registrations: try again in {wait} seconds"),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(wait));
                response
            }
            Err(super::clients::RegistrationError::Full) => {
                tracing::warn!("client registration refused: too many waiting for their first use");
                oauth_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "slow_down",
                    "too many client registrations are waiting for their first use: try again later",
                )
            }
            Err(super::clients::RegistrationError::Store(error)) => {
                tracing::warn!(%error, "storing a client registration failed");
                oauth_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "the gateway could not store the registration",
                )
            }
            Err(error) => oauth_error(StatusCode::BAD_REQUEST, error.code(), &error.to_string()),
        }
    }

    /// POST /-/oauth/revoke (RFC 7009: unknown tokens are not an error).
    pub(super) async fn revoke(
        &self,
        context: &Context<'_>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let (client, fields) = match self.client_form(context, req).await {
            Ok(posted) => posted,
            Err(response) => return response,
        };
        let Ok(Some(token)) = single(&fields, "token") else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "token is required",
            );
        };
        match self.tokens.revoke(token, Some(&client.id)).await {
            Ok(()) => {
                let mut response = Response::new(crate::error::full(bytes::Bytes::new()));
                no_store(response.headers_mut());
                response
            }
            Err(error) => {
                tracing::warn!(%error, "revocation failed");
                oauth_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "the gateway could not revoke the token; try again",
                )
            }
        }
    }
}

/// The RFC 8707 `resource` parameters of a token request.
fn resources(fields: &[(String, String)]) -> Vec<String> {
    fields
        .iter()
        .filter(|(k, _)| k == "resource")
        .map(|(_, v)| v.trim_end_matches('/').to_owned())
        .collect()
}

fn grant_error(error: IssueError) -> (&'static str, String) {
    match error {
        IssueError::InvalidGrant(message) => ("invalid_grant", message.to_owned()),
        IssueError::InvalidTarget => ("invalid_target", error.to_string()),
        other => ("server_error", other.to_string()),
    }
}
