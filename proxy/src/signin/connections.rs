//! The pages where a signed-in person manages their own credentials for upstream servers:
//! `/-/connections` lists the servers they may use that take each user's own credential,
//! `/-/connections/{namespace}/{name}` lets them enter (masked), replace or delete their API
//! key there, or connect (authorize the gateway at the server's OAuth provider) and
//! disconnect; `/-/connections/callback` is where every provider sends them back. A key or
//! token is never shown. These are the URLs the MCP routes name when a call needs a
//! credential the gateway does not hold.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use mcpgate_crds::gateway_config::UpstreamAuth;

use super::browser::{BrowserSession, timestamp, unavailable};
use super::pages::{self, ConnectionRow, ConnectionState};
use super::{Context, SignIn, html, query, redirect, single};
use crate::error::Body;
use crate::outbound::api_key;
use crate::outbound::vault::{CredentialKind, Summary, Vault};
use crate::source::ServerRoute;

impl SignIn {
    /// GET /-/connections.
    pub(super) async fn connections(
        &self,
        context: &Context<'_>,
        req: &Request<Incoming>,
    ) -> Response<Body> {
        let session = match self.signed_in(req) {
            Ok(session) => session,
            Err(to_sign_in) => return to_sign_in,
        };
        let Some(vault) = context.outbound.vault() else {
            return unavailable("the gateway keeps no credentials of users");
        };
        let identity = session.identity();
        let stored = match vault.list(&identity).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%error, "listing stored credentials failed");
                return unavailable("the gateway could not read its credential store");
            }
        };
        let rows: Vec<ConnectionRow> = self
            .per_user_servers(context, &session)
            .into_iter()
            .map(|route| {
                let name = route.key();
                ConnectionRow {
                    state: state_of(&route, &session, &stored),
                    what: match CredentialKind::of(&route.config.auth) {
                        Some(CredentialKind::OAuth) => "authorization (OAuth)",
                        _ => "API key",
                    },
                    server: name,
                }
            })
            .collect();
        html(StatusCode::OK, pages::connections(&rows))
    }

    /// GET /-/connections/{namespace}/{name}; `notice` says what just changed.
    pub(super) async fn connection(
        &self,
        context: &Context<'_>,
        req: &Request<Incoming>,
        server: &str,
        notice: Option<&str>,
    ) -> Response<Body> {
        let session = match self.signed_in(req) {
            Ok(session) => session,
            Err(to_sign_in) => return to_sign_in,
        };
        self.render_connection(context, &session, server, notice)
            .await
    }

    async fn render_connection(
        &self,
        context: &Context<'_>,
        session: &BrowserSession,
        server: &str,
        notice: Option<&str>,
    ) -> Response<Body> {
        let (route, vault) = match self.connectable(context, session, server) {
            Ok(found) => found,
            Err(page) => return page,
        };
        let stored = match vault.list(&session.identity()).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%error, "reading stored credentials failed");
                return unavailable("the gateway could not read its credential store");
            }
        };
        let state = state_of(&route, session, &stored);
        let oauth = CredentialKind::of(&route.config.auth) == Some(CredentialKind::OAuth);
        html(
            StatusCode::OK,
            pages::connection(server, oauth, &state, notice, &session.csrf),
        )
    }

    /// POST /-/connections/{namespace}/{name}: `action` `save` (with `key`) or `delete`.
    pub(super) async fn change_connection(
        &self,
        context: &Context<'_>,
        req: Request<Incoming>,
        server: &str,
    ) -> Response<Body> {
        let (session, fields) = match self.checked_form(req).await {
            Ok(checked) => checked,
            Err(page) => return page,
        };
        let (route, vault) = match self.connectable(context, &session, server) {
            Ok(found) => found,
            Err(page) => return page,
        };
        let field = |name| single(&fields, name).ok().flatten().unwrap_or_default();
        let identity = session.identity();
        let oauth = context
            .outbound
            .oauth()
            .filter(|_| CredentialKind::of(&route.config.auth) == Some(CredentialKind::OAuth));
        let notice = match (field("action"), oauth) {
            ("connect", Some(oauth)) => {
                return match oauth.start(&route, &identity).await {
                    Ok(url) => redirect(&url),
                    Err(why) => {
                        tracing::warn!(server = %server, %why, "starting an upstream authorization failed");
                        html(
                            StatusCode::BAD_GATEWAY,
                            pages::problem(
                                "Cannot connect",
                                &format!(
                                    "The gateway cannot send you to {server}'s sign-in: {why}"
                                ),
                            ),
                        )
                    }
                };
            }
            ("delete", Some(oauth)) => {
                if let Err(why) = oauth.disconnect(&route, &identity).await {
                    tracing::warn!(%why, "forgetting an upstream authorization failed");
                    return unavailable("the gateway could not update its credential store");
                }
                tracing::info!(user = %identity.user, server = %server, "upstream authorization disconnected");
                "Disconnected. The gateway no longer holds your authorization for this server."
            }
            ("save", None) => {
                let key = match api_key::check_entered(field("key")) {
                    Ok(key) => key,
                    Err(why) => {
                        return html(
                            StatusCode::BAD_REQUEST,
                            pages::problem(
                                "Key not saved",
                                &format!("The key was not saved: {why}."),
                            ),
                        );
                    }
                };
                if let UpstreamAuth::PerUserApiKey {
                    header, template, ..
                } = &route.config.auth
                    && let Err(why) = api_key::header(header, template.as_deref(), key)
                {
                    return html(
                        StatusCode::BAD_REQUEST,
                        pages::problem("Key not saved", &format!("The key was not saved: {why}.")),
                    );
                }
                if let Err(error) = vault.store_api_key(&route, &identity, key).await {
                    tracing::warn!(%error, "storing an API key failed");
                    return unavailable("the gateway could not store the key");
                }
                tracing::info!(user = %identity.user, server = %server, "API key stored");
                "Your key is saved. Calls to this server now use it."
            }
            ("delete", None) => {
                if let Err(error) = vault.delete(&route, &identity).await {
                    tracing::warn!(%error, "deleting an API key failed");
                    return unavailable("the gateway could not update its credential store");
                }
                tracing::info!(user = %identity.user, server = %server, "API key deleted");
                "Your key is deleted."
            }
            _ => {
                return html(
                    StatusCode::BAD_REQUEST,
                    pages::problem(
                        "Bad request",
                        "Choose save or delete (connect or delete for an OAuth server).",
                    ),
                );
            }
        };
        self.render_connection(context, &session, server, Some(notice))
            .await
    }

    /// GET /-/connections/callback: a provider sends the person back with the answer to an
    /// authorization they started; their tokens are stored and they return to the server's
    /// page.
    pub(super) async fn connection_callback(
        &self,
        context: &Context<'_>,
        req: &Request<Incoming>,
    ) -> Response<Body> {
        let session = match self.signed_in(req) {
            Ok(session) => session,
            Err(to_sign_in) => return to_sign_in,
        };
        let (Some(oauth), Some(snapshot)) = (context.outbound.oauth(), context.current.load())
        else {
            return unavailable("the gateway keeps no authorizations of users");
        };
        let identity = session.identity();
        let failed = |why: &str| {
            html(
                StatusCode::BAD_REQUEST,
                pages::problem(
                    "Not connected",
                    &format!("The authorization did not complete: {why}"),
                ),
            )
        };
        let parameters = query(req);
        // Only for a server this person may still use.
        let allowed = |server: &str| {
            self.per_user_servers(context, &session)
                .iter()
                .any(|r| r.key() == server)
        };
        match oauth
            .finish(&snapshot, &identity, &parameters, allowed)
            .await
        {
            Ok(route) => redirect(&format!("/-/connections/{}?done=connected", route.key())),
            Err(why) => {
                tracing::info!(user = %identity.user, %why, "an upstream authorization failed");
                failed(&why)
            }
        }
    }

    /// The servers `session`'s person may use that take each user's own credential.
    fn per_user_servers(
        &self,
        context: &Context<'_>,
        session: &BrowserSession,
    ) -> Vec<Arc<ServerRoute>> {
        let Some(snapshot) = context.current.load() else {
            return Vec::new();
        };
        let identity = session.identity();
        let mut servers: Vec<Arc<ServerRoute>> = snapshot
            .routes()
            .filter_map(|(_, route)| route.as_server())
            .filter(|s| CredentialKind::of(&s.config.auth).is_some())
            .filter(|s| s.config.public || s.access.permits(&identity))
            .cloned()
            .collect();
        servers.sort_by_key(|s| s.key());
        servers
    }

    /// The server `namespace/name` if the person may store a credential for it.
    fn connectable<'a>(
        &self,
        context: &Context<'a>,
        session: &BrowserSession,
        server: &str,
    ) -> Result<(Arc<ServerRoute>, &'a Arc<Vault>), Response<Body>> {
        let Some(vault) = context.outbound.vault() else {
            return Err(unavailable("the gateway keeps no credentials of users"));
        };
        self.per_user_servers(context, session)
            .into_iter()
            .find(|route| route.key() == server)
            .map(|route| (route, vault))
            .ok_or_else(|| {
                html(
                    StatusCode::NOT_FOUND,
                    pages::problem(
                        "No such server",
                        &format!("{server} is not a server you may use that takes your own credential. See all of them at /-/connections."),
                    ),
                )
            })
    }
}

/// What the gateway holds for `session`'s person and `route`, of what they `stored`; a key
/// a tenant admin set with an AuthOverride wins.
fn state_of(route: &ServerRoute, session: &BrowserSession, stored: &[Summary]) -> ConnectionState {
    if route.override_for(&session.identity()).is_some() {
        return ConnectionState::SetByAdministrator;
    }
    let kind = CredentialKind::of(&route.config.auth);
    match stored
        .iter()
        .find(|s| s.server == route.key() && Some(s.kind) == kind)
    {
        Some(s) if s.kind == CredentialKind::OAuth => {
            ConnectionState::Connected(timestamp(s.updated))
        }
        Some(s) => ConnectionState::Stored(timestamp(s.updated)),
        None => ConnectionState::Missing,
    }
}
