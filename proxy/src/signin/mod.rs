//! Sign-in at the gateway. With it enabled the gateway is:
//! - an OIDC relying party of the company identity provider, giving people a browser
//!   session at the gateway (`login`, `browser`);
//! - an OAuth 2.1 authorization server for MCP clients (`oauth`): RFC 8414 metadata, PKCE
//!   S256, consent, authorization codes, refresh-token rotation with reuse detection,
//!   client metadata documents and dynamic registration (`clients`), revocation, and its
//!   own signing keys (`keys`, `tokens`);
//! - the issuer of personal access tokens for scripts.
//!
//! Everything it serves lives under `/-/` (a namespace name cannot be `-`, so no route is
//! shadowed) plus the well-known metadata documents. State every replica needs is in the
//! `store`; what a browser carries between requests is sealed with the session key.

pub mod browser;
pub mod clients;
pub mod connections;
pub mod fetch;
pub mod keys;
pub mod login;
pub mod oauth;
pub mod pages;
pub mod store;
pub mod tokens;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::error::{Body, full, json_response};
use crate::session::SessionKeys;
use crate::source::Current;
use clients::Clients;
use login::IdentityProvider;
use tokens::Tokens;

/// Largest form or registration body read.
const MAX_FORM: usize = 64 * 1024;
/// How long a client may take to send one.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// Where the gateway's own pages and endpoints live.
pub const PREFIX: &str = "/-/";

/// What sign-in is configured with.
pub struct SignIn {
    /// The gateway's issuer: its public URL, no trailing slash.
    pub issuer: String,
    /// Whether cookies are `Secure` (the public URL is https).
    pub secure: bool,
    /// Tokens issued and checked.
    pub tokens: Arc<Tokens>,
    /// Known MCP clients.
    pub clients: Clients,
    /// Where people sign in.
    pub idp: IdentityProvider,
    /// Seals cookies, consent requests and authorization codes.
    pub seal: Arc<SessionKeys>,
    /// Where sign-in state (and users' upstream credentials) live.
    pub store: Arc<store::Store>,
    /// How long an authorization code may wait to be redeemed.
    pub code_lifetime: Duration,
    /// How long a browser session lasts.
    pub session_lifetime: Duration,
}

/// What a sign-in request may look at.
pub struct Context<'a> {
    /// The configuration in service (routes and their collaborators).
    pub current: &'a Current,
    /// Upstream credentials (the vault of what users store).
    pub outbound: &'a crate::outbound::Outbound,
    /// The caller's address.
    pub peer: IpAddr,
}

impl SignIn {
    /// The response to `req` if it is one of sign-in's paths, else the request back.
    pub async fn serve(
        &self,
        context: &Context<'_>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Request<Incoming>> {
        let path = req.uri().path();
        if is_metadata_path(path) {
            return Ok(json_response(StatusCode::OK, &self.metadata()));
        }
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return Err(req);
        };
        let rest = rest.to_owned();
        let method = req.method().clone();
        let response = match (method, rest.as_str()) {
            (Method::GET, "jwks.json") => json_response(StatusCode::OK, &self.tokens.jwks()),
            (Method::GET, "oauth/authorize") => self.authorize(context, &req).await,
            (Method::POST, "oauth/authorize") => self.decide(req).await,
            (Method::POST, "oauth/token") => self.token(context, req).await,
            (Method::POST, "oauth/register") => self.register(context, req).await,
            (Method::POST, "oauth/revoke") => self.revoke(context, req).await,
            (Method::GET, "signin") => self.sign_in(&req).await,
            (Method::GET, "signin/callback") => self.callback(&req).await,
            (Method::POST, "signout") => self.sign_out(req).await,
            (Method::GET, "") => self.home(context, &req).await,
            (Method::POST, "grants/revoke") => self.revoke_grant(context, req).await,
            (Method::GET, "tokens") => self.tokens_page(context, &req, None).await,
            (Method::POST, "tokens") => self.create_token(context, req).await,
            (Method::POST, "tokens/revoke") => self.revoke_token(context, req).await,
            (Method::GET, "connections") => self.connections(context, &req).await,
            (Method::GET, "connections/callback") => self.connection_callback(context, &req).await,
            (Method::GET, "connections/client-metadata") => {
                match context.outbound.oauth().and_then(|o| o.client_metadata()) {
                    Some(document) => json_response(StatusCode::OK, &document),
                    None => html(
                        StatusCode::NOT_FOUND,
                        pages::problem("Not found", "The gateway publishes no client metadata."),
                    ),
                }
            }
            (Method::GET, path) if path.starts_with("connections/") => {
                let server = path["connections/".len()..].to_owned();
                let notice = (single(&query(&req), "done") == Ok(Some("connected")))
                    .then_some("Connected. Calls to this server now use your authorization.");
                self.connection(context, &req, &server, notice).await
            }
            (Method::POST, path) if path.starts_with("connections/") => {
                let server = path["connections/".len()..].to_owned();
                self.change_connection(context, req, &server).await
            }
            (Method::GET, path) if path.starts_with("connect/") => {
                self.connect(context, &req, &path["connect".len()..])
            }
            (_, path) => html(
                StatusCode::NOT_FOUND,
                pages::problem(
                    "Not found",
                    &format!("The gateway has no page at /-/{path}."),
                ),
            ),
        };
        Ok(response)
    }

    /// RFC 8414 authorization server metadata (also served as OpenID discovery).
    pub fn metadata(&self) -> Value {
        let issuer = &self.issuer;
        json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/-/oauth/authorize"),
            "token_endpoint": format!("{issuer}/-/oauth/token"),
            "registration_endpoint": format!("{issuer}/-/oauth/register"),
            "revocation_endpoint": format!("{issuer}/-/oauth/revoke"),
            "jwks_uri": format!("{issuer}/-/jwks.json"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
            "client_id_metadata_document_supported": true,
            "authorization_response_iss_parameter_supported": true,
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "service_documentation": format!("{issuer}/-/"),
        })
    }

    /// The absolute URL of a gateway path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }
}

/// Whether `path` is where a client looks for the gateway's authorization server metadata:
/// RFC 8414 and OpenID discovery, at the root, path-inserted and path-appended (clients
/// derive these from the issuer, and some from the MCP URL).
fn is_metadata_path(path: &str) -> bool {
    const AS: &str = "/.well-known/oauth-authorization-server";
    const OIDC: &str = "/.well-known/openid-configuration";
    [AS, OIDC]
        .iter()
        .any(|known| path == *known || path.starts_with(&format!("{known}/")))
        || path.ends_with(OIDC)
        || path.ends_with(AS)
}

/// An HTML response that is never cached or framed.
pub fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut response = Response::new(full(page));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    no_store(headers);
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Marks a response as not to be stored (tokens, pages with CSRF tokens).
pub fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// A 303 to `location` (a gateway path or an already validated URL).
pub fn redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::try_from(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    no_store(response.headers_mut());
    response
}

/// An OAuth error body (RFC 6749 §5.2).
pub fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    let mut response = json_response(
        status,
        &json!({"error": error, "error_description": description}),
    );
    no_store(response.headers_mut());
    response
}

/// The query's parameters, in order.
pub fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The one value of `name`; Err when it is repeated (RFC 6749 §3.1).
pub fn single<'a>(
    parameters: &'a [(String, String)],
    name: &str,
) -> Result<Option<&'a str>, String> {
    let mut values = parameters.iter().filter(|(k, _)| k == name);
    let first = values.next().map(|(_, v)| v.as_str());
    if values.next().is_some() {
        return Err(format!("the {name} parameter is repeated"));
    }
    Ok(first)
}

/// A form body (`application/x-www-form-urlencoded`), bounded in size and time.
pub async fn form(req: Request<Incoming>) -> Result<(HeaderMap, Vec<(String, String)>), String> {
    let (headers, bytes) = body(req).await?;
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !kind.starts_with("application/x-www-form-urlencoded") {
        return Err("send the parameters as application/x-www-form-urlencoded".into());
    }
    Ok((
        headers,
        url::form_urlencoded::parse(&bytes).into_owned().collect(),
    ))
}

/// The request body, at most [`MAX_FORM`] bytes within [`FORM_TIMEOUT`].
pub async fn body(req: Request<Incoming>) -> Result<(HeaderMap, Bytes), String> {
    let (parts, body) = req.into_parts();
    let read = Limited::new(body, MAX_FORM).collect();
    match tokio::time::timeout(FORM_TIMEOUT, read).await {
        Ok(Ok(collected)) => Ok((parts.headers, collected.to_bytes())),
        Ok(Err(_)) => Err(format!("the body is over {MAX_FORM} bytes or broken")),
        Err(_) => Err("the body did not arrive in time".into()),
    }
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_found_where_clients_look() {
        for path in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/oauth-authorization-server/team-a/mcp/github/server",
            "/.well-known/openid-configuration",
            "/.well-known/openid-configuration/team-a/mcp/github/server",
            "/team-a/mcp/github/server/.well-known/openid-configuration",
        ] {
            assert!(is_metadata_path(path), "{path}");
        }
        for path in [
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-authorization-serverx",
            "/team-a/mcp/github/server",
        ] {
            assert!(!is_metadata_path(path), "{path}");
        }
    }

    #[test]
    fn repeated_parameters_are_refused() {
        let parameters = vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
            ("b".to_owned(), "3".to_owned()),
        ];
        assert_eq!(single(&parameters, "a"), Ok(Some("1")));
        assert_eq!(single(&parameters, "c"), Ok(None));
        assert!(single(&parameters, "b").is_err());
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; mcpgate-session=xyz"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&headers, "mcpgate-session"), Some("xyz"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "session"), None);
    }
}
