//! Virtual servers: one MCP server made of several McpServers. The gateway answers
//! `initialize` itself with merged capabilities and instructions, opens one upstream session
//! per member, merges lists (every upstream page fetched), routes calls by the exposed name
//! back to the owning member, and relays what upstreams send on their streams with request
//! ids made unique per member.
//!
//! Names: tools `<server>_<tool>` unless renamed, prompts `<server>_<prompt>`, resource URIs
//! `<server>+<uri>`. Server names are DNS labels, so the first `_` or `+` ends the prefix.

mod broadcast;
mod initialize;
pub(crate) mod listing;
pub(crate) mod relayed;
mod routing;
mod streams;
mod subscriptions;

pub use listing::UNAVAILABLE_META;
// What each part offers the others (their `use super::*`).
use initialize::*;
use relayed::*;
use streams::*;
use subscriptions::*;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use crate::audit::{Pending, ToolCall};
use crate::auth::Identity;
use crate::error::{Body, ProxyError, full};
use crate::mcp::message::params_mut;
use crate::mcp::shared::{Message, Shared};
use crate::mcp::upstream::era;
use crate::mcp::upstream::hop::{Hop, HopError};
use crate::session::SessionState;
use crate::source::{Member, VirtualRoute};

/// One request to a virtual server's route.
pub async fn handle(
    fwd: &Shared,
    req: Request<Incoming>,
    route: &VirtualRoute,
    caller: Option<Identity>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let owner = crate::session::owner(caller.as_ref());
    let identity = caller
        .as_ref()
        .filter(|_| {
            route
                .members
                .iter()
                .any(|m| m.server.config.auth.per_user())
        })
        .cloned();
    let post = match fwd.admit(&parts, body).await {
        Ok(message) => message.map(Post::from),
        Err(error) => return error.respond(),
    };
    let audit = fwd.audit_call(post.as_ref().map(|p| &p.message), |envelope| {
        let config = &route.config;
        let call = ToolCall::new(
            caller,
            &config.namespace,
            &config.name,
            "virtual",
            envelope,
            parts.extensions.get(),
        );
        match route.resolve_tool(envelope.name()) {
            Some((member, tool)) => call.served_by(&member.server.config, &tool),
            None => call,
        }
    });
    let response = dispatch(fwd, parts, post, route, owner, identity.as_ref())
        .await
        .unwrap_or_else(ProxyError::respond);
    Pending::observe_some(audit, response)
}

/// A POSTed message: as received, and as a value once a path that reads or rewrites more than
/// the envelope has parsed it (its `params` an object when present, see
/// [`Message::request`]). A call routed within a session is renamed in place, never parsed.
struct Post {
    message: Message,
    parsed: Option<Value>,
}

impl From<Message> for Post {
    fn from(message: Message) -> Self {
        Self {
            message,
            parsed: None,
        }
    }
}

impl Post {
    /// The message as a value, parsed at most once.
    fn request(&mut self) -> Result<&mut Value, ProxyError> {
        parsed(&self.message, &mut self.parsed)
    }
}

/// `message` as a value: `parsed`, or parsed into it now.
fn parsed<'a>(
    message: &Message,
    parsed: &'a mut Option<Value>,
) -> Result<&'a mut Value, ProxyError> {
    if parsed.is_none() {
        *parsed = Some(message.request()?);
    }
    Ok(parsed.get_or_insert_default())
}

/// [`handle`] once the body is read.
async fn dispatch(
    fwd: &Shared,
    parts: http::request::Parts,
    mut post: Option<Post>,
    route: &VirtualRoute,
    owner: Option<String>,
    identity: Option<&Identity>,
) -> Result<Response<Body>, ProxyError> {
    let path = &route.config.path;
    let id = post.as_ref().and_then(|p| p.message.envelope.id.clone());
    // A stateless client's `initialize` is a method its revision removed (see `post`).
    if let Some(post) = &mut post
        && post.message.envelope.method() == "initialize"
        && !era::is_modern(&parts.headers, &post.message.envelope)
    {
        if let Some(refusal) = super::shared::oversized_initialize(&post.message) {
            return Err(refusal);
        }
        return initialize(
            fwd,
            &parts.headers,
            route,
            post.request()?,
            id.as_ref(),
            owner,
            identity,
        )
        .await;
    }
    let session = fwd.session(&parts.headers, path, owner.as_deref(), id.as_ref())?;
    let via = match (&session, &mut post) {
        (Some((sid, state)), _) => Via::Session { sid, state },
        (None, Some(p)) if era::is_modern(&parts.headers, &p.message.envelope) => Via::Stateless {
            meta: p.request()?["params"]["_meta"].clone(),
        },
        (None, Some(_)) => {
            return Err(ProxyError::BadRequest {
                id,
                message: "Bad Request: Missing session ID (initialize first, or send a 2026-07-28 request with its _meta)".into(),
            });
        }
        (None, None) => {
            return Err(ProxyError::MethodNotAllowed {
                message: "no session: GET and DELETE need the Mcp-Session-Id of an initialized session",
            });
        }
    };
    let ctx = Ctx {
        fwd,
        route,
        caller: &parts.headers,
        owner: owner.as_deref(),
        identity,
        via,
        extensions: &parts.extensions,
    };
    match (&parts.method, post) {
        (&Method::POST, Some(post)) => ctx.post(post).await,
        (&Method::GET, _) => Ok(ctx.stream().await),
        (&Method::DELETE, _) => Ok(ctx.delete().await),
        _ => Err(ProxyError::MethodNotAllowed {
            message: "use POST, GET or DELETE",
        }),
    }
}

/// How a request reaches the members.
enum Via<'a> {
    /// Within an initialized client session and its upstream sessions.
    Session {
        sid: &'a str,
        state: &'a SessionState,
    },
    /// A stateless request; requests the gateway makes for it carry the client's `_meta`.
    Stateless { meta: Value },
}

/// One request to a virtual server.
struct Ctx<'a> {
    fwd: &'a Shared,
    route: &'a VirtualRoute,
    caller: &'a HeaderMap,
    owner: Option<&'a str>,
    identity: Option<&'a Identity>,
    via: Via<'a>,
    /// The request's extensions (who sent it, see [`budget_key`]).
    extensions: &'a http::Extensions,
}

impl Ctx<'_> {
    fn session(&self) -> Option<(&str, &SessionState)> {
        match &self.via {
            Via::Session { sid, state } => Some((sid, state)),
            Via::Stateless { .. } => None,
        }
    }

    /// Sends to a member within this request's session.
    async fn send(
        &self,
        hop: &Hop<'_>,
        method: &Method,
        bytes: Bytes,
    ) -> Result<Response<Incoming>, HopError> {
        self.fwd
            .exchange(hop, self.session(), None, method, bytes)
            .await
    }

    fn hop<'b>(&'b self, member: &'b Member, caller: &'b HeaderMap) -> Hop<'b> {
        self.fwd
            .hop(&member.server, caller, self.owner, self.identity)
    }

    /// One JSON-RPC request to a member; its response.
    async fn call(&self, hop: &Hop<'_>, request: &Value) -> Result<Value, HopError> {
        if let Via::Stateless { meta } = &self.via {
            let mut request = request.clone();
            if let Some(params) = params_mut(&mut request) {
                params.insert("_meta".into(), meta.clone());
            }
            return self.fwd.eras.call(hop, &request).await;
        }
        hop.within_timeout(async {
            let response = self
                .send(hop, &Method::POST, Bytes::from(request.to_string()))
                .await?;
            let (_, reply) = hop.answer(response, request.get("id")).await?;
            Ok(reply)
        })
        .await
    }
}

fn accepted() -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::ACCEPTED;
    response
}
