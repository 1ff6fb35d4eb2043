//! A person's browser session at the gateway, and the pages it opens: sign-in and out, the
//! servers they may use and how to connect to each, and their personal access tokens.
//!
//! The session is a sealed cookie (HttpOnly, SameSite=Lax, Secure and `__Host-` when the
//! gateway is served over https) holding the person and a CSRF token; every form posts that
//! token back and is refused without it. `next` after sign-in is only ever a gateway path,
//! so sign-in cannot be used to redirect elsewhere.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::keys::random_id;
use super::login::{LOGIN_TIME, Pending};
use super::pages::{self, GrantRow, RouteLink, TokenRow};
use super::tokens::{Person, constant_time_eq};
use super::{Context, PREFIX, SignIn, cookie, form, html, query, redirect, single};
use crate::auth::{Identity, now};
use crate::error::Body;
use crate::source::Route;

const SESSION_PURPOSE: &[u8] = b"mcpgate browser session v1";
const PENDING_PURPOSE: &[u8] = b"mcpgate sign-in pending v1";
/// Longest personal access token life, in days.
const MAX_TOKEN_DAYS: u64 = 365;

/// A signed-in browser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrowserSession {
    /// Who.
    pub person: Person,
    /// Posted back by every form.
    pub csrf: String,
    /// Seconds since the epoch.
    pub expires: u64,
}

impl BrowserSession {
    /// The person as a caller, for access checks.
    pub fn identity(&self) -> Identity {
        self.person.identity()
    }
}

impl SignIn {
    fn cookie_name(&self, base: &str) -> String {
        if self.secure {
            format!("__Host-mcpgate-{base}")
        } else {
            format!("mcpgate-{base}")
        }
    }

    fn set_cookie(&self, headers: &mut HeaderMap, base: &str, value: &str, max_age: Duration) {
        let cookie = cookie::Cookie::build((self.cookie_name(base), value.to_owned()))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(cookie::SameSite::Lax)
            .max_age(cookie::time::Duration::seconds(
                i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX),
            ))
            .build();
        if let Ok(value) = HeaderValue::try_from(cookie.to_string()) {
            headers.append(header::SET_COOKIE, value);
        }
    }

    /// The signed-in session of this browser, if any.
    pub fn session(&self, headers: &HeaderMap) -> Option<BrowserSession> {
        let sealed = cookie(headers, &self.cookie_name("session"))?;
        let session: BrowserSession =
            serde_json::from_slice(&self.seal.open_for(SESSION_PURPOSE, sealed)?).ok()?;
        (session.expires > now().as_secs()).then_some(session)
    }

    /// A form posted by a signed-in browser with its CSRF token, or the page to answer.
    pub(super) async fn checked_form(
        &self,
        req: Request<Incoming>,
    ) -> Result<(BrowserSession, Vec<(String, String)>), Response<Body>> {
        let Some(session) = self.session(req.headers()) else {
            return Err(html(
                StatusCode::UNAUTHORIZED,
                pages::problem(
                    "Signed out",
                    "Your gateway session has ended. Sign in again and retry.",
                ),
            ));
        };
        let (_, fields) = form(req)
            .await
            .map_err(|e| html(StatusCode::BAD_REQUEST, pages::problem("Bad request", &e)))?;
        let csrf = single(&fields, "csrf").ok().flatten().unwrap_or_default();
        if !constant_time_eq(csrf.as_bytes(), session.csrf.as_bytes()) {
            return Err(html(
                StatusCode::FORBIDDEN,
                pages::problem(
                    "Form expired",
                    "This form did not come from your current gateway session (missing or stale CSRF token). Reload the page and try again.",
                ),
            ));
        }
        Ok((session, fields))
    }

    /// The `id` a signed-in browser's form names (a grant or token to revoke).
    async fn checked_id(
        &self,
        req: Request<Incoming>,
    ) -> Result<(BrowserSession, String), Response<Body>> {
        let (session, fields) = self.checked_form(req).await?;
        let id = single(&fields, "id").ok().flatten().unwrap_or_default();
        Ok((session, id.to_owned()))
    }

    /// GET /-/signin?next=/-/...: off to the identity provider.
    pub(super) async fn sign_in(&self, req: &Request<Incoming>) -> Response<Body> {
        let parameters = query(req);
        let next = single(&parameters, "next")
            .ok()
            .flatten()
            .filter(|n| is_gateway_path(n))
            .unwrap_or(PREFIX)
            .to_owned();
        let callback = self.url("/-/signin/callback");
        match self.idp.start(&callback, next, now().as_secs()).await {
            Ok((location, pending)) => {
                let Some(sealed) = serde_json::to_vec(&pending)
                    .ok()
                    .and_then(|p| self.seal.seal_for(PENDING_PURPOSE, &p).ok())
                else {
                    return unavailable("the gateway could not seal the sign-in state");
                };
                let mut response = redirect(&location);
                self.set_cookie(response.headers_mut(), "signin", &sealed, LOGIN_TIME);
                response
            }
            Err(error) => {
                tracing::warn!(%error, issuer = %self.idp.issuer, "the identity provider is unavailable");
                unavailable(
                    "The identity provider could not be reached. Try again in a minute; if it persists, tell the gateway's operators.",
                )
            }
        }
    }

    /// GET /-/signin/callback: the provider's answer.
    pub(super) async fn callback(&self, req: &Request<Incoming>) -> Response<Body> {
        let pending: Option<Pending> = cookie(req.headers(), &self.cookie_name("signin"))
            .and_then(|sealed| self.seal.open_for(PENDING_PURPOSE, sealed))
            .and_then(|plain| serde_json::from_slice(&plain).ok());
        let Some(pending) = pending else {
            return html(
                StatusCode::BAD_REQUEST,
                pages::problem(
                    "Sign-in not started here",
                    "This browser has no sign-in in progress (cookies blocked, or it took too long). Start again from the gateway.",
                ),
            );
        };
        let callback = self.url("/-/signin/callback");
        let identity = match self
            .idp
            .finish(&query(req), &pending, &callback, now().as_secs())
            .await
        {
            Ok(identity) => identity,
            Err(error) => {
                tracing::info!(%error, "sign-in refused");
                return html(
                    StatusCode::BAD_REQUEST,
                    pages::problem("Sign-in failed", &error),
                );
            }
        };
        let Some(person) = Person::of(&identity) else {
            return unavailable("the identity provider named no person");
        };
        let Ok(csrf) = random_id::<24>() else {
            return unavailable("the gateway's random source failed");
        };
        let session = BrowserSession {
            person,
            csrf,
            expires: now().as_secs() + self.session_lifetime.as_secs(),
        };
        let Some(sealed) = serde_json::to_vec(&session)
            .ok()
            .and_then(|s| self.seal.seal_for(SESSION_PURPOSE, &s).ok())
        else {
            return unavailable("the gateway could not seal the session");
        };
        if sealed.len() > 3800 {
            return html(
                StatusCode::BAD_REQUEST,
                pages::problem(
                    "Too many groups",
                    "Your identity is too large for a browser cookie (many groups?). Ask the gateway's operators to map fewer groups into the token.",
                ),
            );
        }
        tracing::info!(user = %session.person.user, "signed in");
        let mut response = redirect(&pending.next);
        self.set_cookie(
            response.headers_mut(),
            "session",
            &sealed,
            self.session_lifetime,
        );
        self.set_cookie(response.headers_mut(), "signin", "", Duration::ZERO);
        response
    }

    /// POST /-/signout.
    pub(super) async fn sign_out(&self, req: Request<Incoming>) -> Response<Body> {
        if let Err(page) = self.checked_form(req).await {
            return page;
        }
        let mut response = html(
            StatusCode::OK,
            pages::page(
                "Signed out",
                "<p>You are signed out of the gateway. MCP clients you allowed keep their access until you revoke it or it expires.</p><p><a href=\"/-/signin\">Sign in again</a></p>",
            ),
        );
        self.set_cookie(response.headers_mut(), "session", "", Duration::ZERO);
        response
    }

    /// The session, or a redirect to sign in and come back to this page.
    pub(super) fn signed_in(
        &self,
        req: &Request<Incoming>,
    ) -> Result<BrowserSession, Response<Body>> {
        self.session(req.headers()).ok_or_else(|| {
            let here = req
                .uri()
                .path_and_query()
                .map_or(PREFIX, |p| p.as_str())
                .to_owned();
            let next: String = url::form_urlencoded::byte_serialize(here.as_bytes()).collect();
            redirect(&format!("/-/signin?next={next}"))
        })
    }

    /// The routes `session`'s person may use, by path.
    fn routes_for(&self, context: &Context<'_>, session: &BrowserSession) -> Vec<RouteLink> {
        let Some(snapshot) = context.current.load() else {
            return Vec::new();
        };
        let identity = session.identity();
        let mut links: Vec<RouteLink> = snapshot
            .routes()
            .filter(|(_, route)| route.public() || route.access().permits(&identity))
            .map(|(path, route)| {
                let (namespace, name) = route.name();
                RouteLink {
                    name: format!("{namespace}/{name}"),
                    kind: match route {
                        Route::Server(_) => "McpServer",
                        Route::Virtual(_) => "VirtualMcpServer",
                    },
                    url: self.url(path),
                    path: path.to_owned(),
                }
            })
            .collect();
        links.sort_by(|a, b| a.path.cmp(&b.path));
        links
    }

    /// GET /-/: the servers this person may use and the clients they allowed.
    pub(super) async fn home(
        &self,
        context: &Context<'_>,
        req: &Request<Incoming>,
    ) -> Response<Body> {
        match self.signed_in(req) {
            Ok(session) => self.render_home(context, &session).await,
            Err(to_sign_in) => to_sign_in,
        }
    }

    async fn render_home(&self, context: &Context<'_>, session: &BrowserSession) -> Response<Body> {
        let grants = match self.tokens.grants(&session.person.user).await {
            Ok(grants) => grants,
            Err(error) => {
                tracing::warn!(%error, "listing authorizations failed");
                return unavailable("the gateway could not read its authorizations");
            }
        };
        let mut rows = Vec::with_capacity(grants.len());
        for (id, family) in grants {
            let client = match self.clients.resolve(&family.client_id, context.peer).await {
                Ok(client) => client.name.unwrap_or(client.id),
                Err(_) => family.client_id.clone(),
            };
            rows.push(GrantRow {
                id,
                client,
                resources: family.resources.join(", "),
                created: timestamp(family.created),
            });
        }
        let routes = self.routes_for(context, session);
        html(
            StatusCode::OK,
            pages::home(
                &session.person.user,
                session.person.email.as_deref(),
                &routes,
                &rows,
                &session.csrf,
            ),
        )
    }

    /// POST /-/grants/revoke: ends one of the person's client authorizations.
    pub(super) async fn revoke_grant(
        &self,
        context: &Context<'_>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let (session, id) = match self.checked_id(req).await {
            Ok(checked) => checked,
            Err(page) => return page,
        };
        let id = id.as_str();
        match self.tokens.revoke_grant(&session.person.user, id).await {
            Ok(true) => {
                tracing::info!(user = %session.person.user, "client authorization revoked");
                self.render_home(context, &session).await
            }
            Ok(false) => html(
                StatusCode::NOT_FOUND,
                pages::problem(
                    "No such authorization",
                    "You gave no authorization with that id.",
                ),
            ),
            Err(error) => {
                tracing::warn!(%error, "revoking an authorization failed");
                unavailable("the gateway could not update its authorizations")
            }
        }
    }

    /// GET /-/connect/{route path}: how to connect to one route.
    pub(super) fn connect(
        &self,
        context: &Context<'_>,
        req: &Request<Incoming>,
        path: &str,
    ) -> Response<Body> {
        let session = match self.signed_in(req) {
            Ok(session) => session,
            Err(to_sign_in) => return to_sign_in,
        };
        match self
            .routes_for(context, &session)
            .into_iter()
            .find(|r| r.path == path)
        {
            Some(route) => html(StatusCode::OK, pages::connect(&route)),
            None => html(
                StatusCode::NOT_FOUND,
                pages::problem(
                    "No such server",
                    "There is no MCP server at that path that you may use.",
                ),
            ),
        }
    }

    /// GET /-/tokens (and the page after creating one).
    pub(super) async fn tokens_page(
        &self,
        context: &Context<'_>,
        req: &Request<Incoming>,
        created: Option<(&str, &str)>,
    ) -> Response<Body> {
        match self.signed_in(req) {
            Ok(session) => self.render_tokens(context, &session, created).await,
            Err(to_sign_in) => to_sign_in,
        }
    }

    async fn render_tokens(
        &self,
        context: &Context<'_>,
        session: &BrowserSession,
        created: Option<(&str, &str)>,
    ) -> Response<Body> {
        let rows = match self.tokens.personal_tokens(&session.person.user).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "listing personal access tokens failed");
                return unavailable("the gateway could not read its token store");
            }
        };
        let rows: Vec<TokenRow> = rows
            .into_iter()
            .map(|(id, token)| TokenRow {
                id,
                name: token.name,
                created: timestamp(token.created),
                expires: timestamp(token.expires),
                route: token.route,
            })
            .collect();
        let routes = self.routes_for(context, session);
        html(
            StatusCode::OK,
            pages::tokens(&rows, &routes, created, &session.csrf),
        )
    }

    /// POST /-/tokens: a new personal access token, shown once.
    pub(super) async fn create_token(
        &self,
        context: &Context<'_>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let (session, fields) = match self.checked_form(req).await {
            Ok(checked) => checked,
            Err(page) => return page,
        };
        let field = |name| single(&fields, name).ok().flatten().unwrap_or_default();
        let name: String = field("name").trim().chars().take(60).collect();
        if name.is_empty() {
            return html(
                StatusCode::BAD_REQUEST,
                pages::problem("Name needed", "Give the token a name you will recognise."),
            );
        }
        let days = field("days")
            .parse::<u64>()
            .ok()
            .filter(|d| (1..=MAX_TOKEN_DAYS).contains(d));
        let Some(days) = days else {
            return html(
                StatusCode::BAD_REQUEST,
                pages::problem(
                    "Expiry needed",
                    &format!("Choose an expiry of 1 to {MAX_TOKEN_DAYS} days."),
                ),
            );
        };
        let route = match field("route") {
            "" => None,
            path => match self
                .routes_for(context, &session)
                .into_iter()
                .find(|r| r.path == path)
            {
                Some(route) => Some(route.url),
                None => {
                    return html(
                        StatusCode::BAD_REQUEST,
                        pages::problem(
                            "No such server",
                            "The token can only be restricted to a server you may use.",
                        ),
                    );
                }
            },
        };
        match self
            .tokens
            .create_personal(
                session.person.clone(),
                name.clone(),
                Duration::from_secs(days * 86_400),
                route,
            )
            .await
        {
            Ok((_, token)) => {
                tracing::info!(user = %session.person.user, name = %name, "personal access token created");
                self.render_tokens(context, &session, Some((&name, &token)))
                    .await
            }
            Err(error) => {
                tracing::warn!(%error, "creating a personal access token failed");
                unavailable("the gateway could not store the token")
            }
        }
    }

    /// POST /-/tokens/revoke.
    pub(super) async fn revoke_token(
        &self,
        context: &Context<'_>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let (session, id) = match self.checked_id(req).await {
            Ok(checked) => checked,
            Err(page) => return page,
        };
        let id = id.as_str();
        match self.tokens.revoke_personal(&session.person.user, id).await {
            Ok(true) => {
                tracing::info!(user = %session.person.user, "personal access token revoked");
                self.render_tokens(context, &session, None).await
            }
            Ok(false) => html(
                StatusCode::NOT_FOUND,
                pages::problem("No such token", "You have no token with that id."),
            ),
            Err(error) => {
                tracing::warn!(%error, "revoking a personal access token failed");
                unavailable("the gateway could not update its token store")
            }
        }
    }
}

/// Whether `next` is a gateway page path (never another site, nor `//host`); its query may
/// hold anything printable (an authorization request's redirect URI, say).
fn is_gateway_path(next: &str) -> bool {
    let path = next.split_once('?').map_or(next, |(path, _)| path);
    path.starts_with(PREFIX)
        && !path.contains("//")
        && !path.contains('\\')
        && next.bytes().all(|b| b.is_ascii_graphic())
}

pub(super) fn unavailable(message: &str) -> Response<Body> {
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::problem("Unavailable", message),
    )
}

pub(super) fn timestamp(seconds: u64) -> String {
    jiff::Timestamp::from_second(i64::try_from(seconds).unwrap_or(i64::MAX))
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_only_ever_a_gateway_page() {
        for good in [
            "/-/",
            "/-/tokens",
            "/-/oauth/authorize?client_id=a&state=b",
            "/-/oauth/authorize?redirect_uri=http://127.0.0.1:5/cb",
        ] {
            assert!(is_gateway_path(good), "{good}");
        }
        for bad in [
            "https://evil.example.com/",
            "//evil.example.com/",
            "/-//evil.example.com",
            "/\\evil.example.com",
            "/-/\\\\evil",
            "/team-a/mcp/x/server",
            "/-/a b",
            "",
        ] {
            assert!(!is_gateway_path(bad), "{bad}");
        }
    }
}
