//! Virtual servers: one MCP server made of several McpServers. The gateway answers
//! `initialize` itself with merged capabilities and instructions, opens one upstream session
//! per member, merges lists (every upstream page fetched), routes calls by the exposed name
//! back to the owning member, and relays what upstreams send on their streams with request
//! ids made unique per member.
//!
//! Names: tools `<server>_<tool>` unless renamed, prompts `<server>_<prompt>`, resource URIs
//! `<server>+<uri>`. Server names are DNS labels, so the first `_` or `+` ends the prefix.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Map, Value, json};

use super::asking::{self, Asking};
use super::era;
use super::forward::{Forwarder, Message, hop_failure, not_a_message, unknown_tool};
use super::hop::{Hop, HopError, LATEST_LEGACY, SESSION_ID, gateway_id};
use super::message::{Kind, child_object, params_mut};
use super::relay::{self, EventIds, Rewrite};
use crate::audit::{Pending, ToolCall};
use crate::auth::Identity;
use crate::error::{Body, ProxyError, full, json_response};
use crate::outbound::OutboundError;
use crate::session::{SessionState, UpstreamSession};
use crate::source::{Current, Member, VirtualRoute};
use crate::traffic::budget_key;

/// Versions of the `initialize` era the gateway speaks downstream.
const LEGACY_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];
/// Server-to-client request ids are rewritten to `mcpgate:<server>:<original id as JSON>`.
const RELAY_ID: &str = "mcpgate:";
/// How often an idle merged stream gets an SSE comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Where listen-stream notifications name their subscription.
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// A list a client can be told has changed.
struct ListKind {
    /// Its flag in a `subscriptions/listen` filter.
    filter: &'static str,
    /// Its notification.
    method: &'static str,
}

const LIST_CHANGED: [ListKind; 3] = [
    ListKind {
        filter: "toolsListChanged",
        method: "notifications/tools/list_changed",
    },
    ListKind {
        filter: "promptsListChanged",
        method: "notifications/prompts/list_changed",
    },
    ListKind {
        filter: "resourcesListChanged",
        method: "notifications/resources/list_changed",
    },
];

/// One list method and where its items' names live.
pub(crate) struct Listing {
    /// Key of the array in the result.
    pub(crate) key: &'static str,
    /// Field of each item that is namespaced.
    field: &'static str,
}

pub(crate) fn listing(method: &str) -> Option<Listing> {
    let (key, field) = match method {
        "tools/list" => ("tools", "name"),
        "prompts/list" => ("prompts", "name"),
        "resources/list" => ("resources", "uri"),
        "resources/templates/list" => ("resourceTemplates", "uriTemplate"),
        _ => return None,
    };
    Some(Listing { key, field })
}

/// One request to a virtual server's route.
pub async fn handle(
    fwd: &Forwarder,
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
    let admitted = fwd.admit(&parts, body).await.and_then(|message| {
        message
            .map(|message| {
                Ok(Post {
                    request: message.request()?,
                    message,
                })
            })
            .transpose()
    });
    let post = match admitted {
        Ok(post) => post,
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

/// A POSTed message: as received, and as a value for the gateway to rewrite (its `params`
/// an object when present, see [`Message::request`]).
struct Post {
    message: Message,
    request: Value,
}

/// [`handle`] once the body is read.
async fn dispatch(
    fwd: &Forwarder,
    parts: http::request::Parts,
    post: Option<Post>,
    route: &VirtualRoute,
    owner: Option<String>,
    identity: Option<&Identity>,
) -> Result<Response<Body>, ProxyError> {
    let path = &route.config.path;
    let id = post.as_ref().and_then(|p| p.message.envelope.id.clone());
    // A stateless client's `initialize` is a method its revision removed (see `post`).
    if let Some(post) = &post
        && post.message.envelope.method() == "initialize"
        && !era::is_modern(&parts.headers, &post.message.envelope)
    {
        if let Some(refusal) = super::forward::oversized_initialize(&post.message) {
            return Err(refusal);
        }
        return initialize(
            fwd,
            &parts.headers,
            route,
            &post.request,
            id.as_ref(),
            owner,
            identity,
        )
        .await;
    }
    let session = fwd.session(&parts.headers, path, owner.as_deref(), id.as_ref())?;
    let via = match (&session, &post) {
        (Some((sid, state)), _) => Via::Session { sid, state },
        (None, Some(p)) if era::is_modern(&parts.headers, &p.message.envelope) => Via::Stateless {
            meta: p.request["params"]["_meta"].clone(),
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

/// Opens every member's upstream session, merges what they say, and mints the client's
/// session id.
async fn initialize(
    fwd: &Forwarder,
    caller: &HeaderMap,
    route: &VirtualRoute,
    request: &Value,
    id: Option<&Value>,
    owner: Option<String>,
    identity: Option<&Identity>,
) -> Result<Response<Body>, ProxyError> {
    let params = &request["params"];
    let asked = params["protocolVersion"].as_str().unwrap_or_default();
    let version = if LEGACY_VERSIONS.contains(&asked) {
        asked
    } else {
        LATEST_LEGACY
    };
    let capabilities = params
        .get("capabilities")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let client_info = params
        .get("clientInfo")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let opened = join_all(route.members.iter().map(|member| {
        let (capabilities, client_info, owner) = (&capabilities, &client_info, &owner);
        async move {
            let hop = fwd.hop(&member.server, caller, owner.as_deref(), identity);
            match hop.initialize(version, capabilities, client_info).await {
                Ok((session, result)) => (session, Some(result)),
                Err(error) => {
                    if matches!(error, HopError::Credential(OutboundError::AuthorizationRequired { .. })) {
                        tracing::debug!(%error, "a member waits for the caller's own credential");
                    } else {
                        tracing::warn!(%error, "a member did not initialize; it is opened again when used");
                    }
                    let session = UpstreamSession { server: member.name().to_owned(), id: None, version: String::new() };
                    (session, None)
                }
            }
        }
    }))
    .await;

    let mut instructions: Vec<String> = route.config.instructions.iter().cloned().collect();
    let has = |capability: &str| {
        opened.iter().any(|(_, r)| {
            r.as_ref()
                .is_some_and(|r| r["capabilities"].get(capability).is_some())
        })
    };
    let mut merged = Map::new();
    merged.insert("tools".into(), json!({"listChanged": true}));
    if has("prompts") {
        merged.insert("prompts".into(), json!({"listChanged": true}));
    }
    if has("resources") {
        merged.insert(
            "resources".into(),
            json!({"listChanged": true, "subscribe": true}),
        );
    }
    for capability in ["logging", "completions"] {
        if has(capability) {
            merged.insert(capability.into(), json!({}));
        }
    }
    for (session, result) in &opened {
        if let Some(text) = result
            .as_ref()
            .and_then(|r| r["instructions"].as_str())
            .filter(|t| !t.is_empty())
        {
            instructions.push(format!(
                "Tools prefixed `{}_` come from a server that says: {text}",
                session.server
            ));
        }
    }
    let state = SessionState {
        route: route.config.path.clone(),
        version: version.to_owned(),
        capabilities,
        client_info,
        upstreams: opened.into_iter().map(|(s, _)| s).collect(),
        owner,
        issued: 0,
    };
    let sid = match fwd.sessions.mint(&state).map(HeaderValue::try_from) {
        Ok(Ok(sid)) => sid,
        _ => {
            return Err(ProxyError::Internal {
                id: id.cloned(),
                message: "could not seal the session".into(),
            });
        }
    };
    let mut result = json!({
        "protocolVersion": version,
        "capabilities": merged,
        "serverInfo": server_info(route),
    });
    if !instructions.is_empty() {
        result["instructions"] = Value::String(instructions.join("\n\n"));
    }
    let mut response = json_response(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": id, "result": result}),
    );
    response.headers_mut().insert(SESSION_ID, sid);
    Ok(response)
}

/// The `_meta` key of a virtual server's list that left out members which failed: each
/// `{server, error}`.
pub const UNAVAILABLE_META: &str = "mcpgate.dev/unavailable";

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
    fwd: &'a Forwarder,
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

    async fn post(&self, post: Post) -> Result<Response<Body>, ProxyError> {
        let Post {
            message,
            mut request,
        } = post;
        let envelope = &message.envelope;
        let id = envelope.id.as_ref();
        match envelope.kind() {
            Kind::Request => {}
            Kind::Notification => return Ok(self.notification(&message).await),
            Kind::Response => return self.answer(&message, request).await,
            // `Forwarder::admit` refuses these before; kept for the match.
            Kind::Invalid => return Err(not_a_message(id)),
        }
        let method = envelope.method();
        let stateless = matches!(self.via, Via::Stateless { .. });
        if stateless && REMOVED_STATELESS.contains(&method) {
            return Err(method_not_found(id, method, StatusCode::NOT_FOUND));
        }
        if method == "ping" {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"jsonrpc": "2.0", "id": id, "result": {}}),
            ));
        }
        if method == "server/discover" {
            return Ok(self.discover(id));
        }
        if let Some(listing) = listing(method) {
            if envelope.params.as_ref().is_some_and(|p| p.cursor.is_some()) {
                return Err(ProxyError::InvalidParams {
                    id: id.cloned(),
                    message: "Invalid cursor: this server returns every item on the first page"
                        .into(),
                    data: None,
                    status: StatusCode::OK,
                });
            }
            return Ok(self.list(method, &listing, id).await);
        }
        if method == "logging/setLevel" {
            return Ok(self.broadcast_request(&message, &request).await);
        }
        if method == "subscriptions/listen" {
            return self.listen(&request, id).await;
        }
        let routed = match method {
            "tools/call" => {
                let name = envelope.name();
                match self.route.resolve_tool(name) {
                    Some((member, tool)) => Some((member, "/params/name", Value::String(tool))),
                    None => return Err(unknown_tool(id, name)),
                }
            }
            "prompts/get" => self
                .by_prefix(envelope.name(), '_')
                .map(|(m, n)| (m, "/params/name", n)),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                let uri = envelope
                    .params
                    .as_ref()
                    .and_then(|p| p.uri.as_deref())
                    .unwrap_or_default();
                self.by_prefix(uri, '+').map(|(m, u)| (m, "/params/uri", u))
            }
            "completion/complete" => {
                let reference = &request["params"]["ref"];
                match reference["type"].as_str() {
                    Some("ref/prompt") => self
                        .by_prefix(reference["name"].as_str().unwrap_or_default(), '_')
                        .map(|(m, n)| (m, "/params/ref/name", n)),
                    Some("ref/resource") => self
                        .by_prefix(reference["uri"].as_str().unwrap_or_default(), '+')
                        .map(|(m, u)| (m, "/params/ref/uri", u)),
                    _ => None,
                }
            }
            _ => {
                // The stateless revision answers an unknown method 404.
                let status = match stateless {
                    true => StatusCode::NOT_FOUND,
                    false => StatusCode::OK,
                };
                return Err(method_not_found(id, method, status));
            }
        };
        let Some((member, pointer, original)) = routed else {
            // SEP-2164: a resource that is not found is named in the error.
            let data = (method == "resources/read")
                .then(|| json!({"uri": envelope.params.as_ref().and_then(|p| p.uri.as_deref())}));
            return Err(ProxyError::InvalidParams {
                id: id.cloned(),
                message: format!("{method}: no server of this virtual server has that name or URI"),
                data,
                status: StatusCode::OK,
            });
        };
        let mut caller = self.caller.clone();
        if let (Some(_), Ok(name)) = (
            caller.get("mcp-name"),
            HeaderValue::try_from(original.as_str().unwrap_or_default()),
        ) {
            caller.insert("mcp-name", name);
        }
        if let Some(slot) = request.pointer_mut(pointer) {
            *slot = original;
        }
        let asking = self.asking(method, &request);
        let hop = self.hop(member, &caller);
        if method == "tools/call"
            && let Some(policy) = &hop.policy
        {
            let tool = request["params"]["name"].as_str().unwrap_or_default();
            policy
                .take(&budget_key(self.owner, self.extensions), tool)
                .map_err(|spent| ProxyError::RateLimited {
                    id: id.cloned(),
                    server: hop.server(),
                    spent,
                })?;
        }
        let rewrite = from_member(member.name().to_owned());
        let response = match &self.via {
            Via::Stateless { .. } => self.fwd.eras.send(&hop, request, rewrite).await,
            Via::Session { .. } => {
                let bytes = Bytes::from(request.to_string());
                match self.send(&hop, &Method::POST, bytes).await {
                    Ok(response) => {
                        let ids = EventIds::Member(member.name().to_owned());
                        Ok(relay::response(response, rewrite, ids, &hop).await)
                    }
                    Err(error) => Err(error),
                }
            }
        };
        match response {
            Ok(response) => Ok(response),
            Err(HopError::Credential(needed @ OutboundError::AuthorizationRequired { .. })) => {
                // One answer for everything this user still has to supply here.
                let others = self.needs(Some(member)).await;
                let needs: Vec<&OutboundError> = std::iter::once(&needed).chain(&others).collect();
                Ok(asking::answer(asking, id, &needs))
            }
            Err(error) => hop_failure(&Method::POST, id, error, asking),
        }
    }

    /// How to ask this request's client for an authorization.
    fn asking(&self, method: &str, request: &Value) -> Asking {
        match &self.via {
            Via::Session { state, .. } => Asking::in_session(method, &state.capabilities),
            Via::Stateless { .. } => Asking::stateless(request),
        }
    }

    /// What the caller still has to supply for the members (but `except`) that send each
    /// user's own credential.
    async fn needs(&self, except: Option<&Member>) -> Vec<OutboundError> {
        let members = self.route.members.iter().filter(|m| {
            m.server.config.auth.per_user() && except.is_none_or(|e| e.name() != m.name())
        });
        join_all(members.map(|m| {
            self.fwd
                .outbound
                .resolve(&m.server, self.identity, self.caller)
        }))
        .await
        .into_iter()
        .filter_map(|resolved| match resolved {
            Err(need @ OutboundError::AuthorizationRequired { .. }) => Some(need),
            _ => None,
        })
        .collect()
    }

    /// The member named by the prefix of `name` (before `separator`), and the rest.
    fn by_prefix(&self, name: &str, separator: char) -> Option<(&Member, Value)> {
        let (server, rest) = name.split_once(separator)?;
        Some((self.route.member(server)?, Value::String(rest.to_owned())))
    }

    /// Every member's items, all pages, names made the virtual server's.
    async fn list(&self, method: &str, listing: &Listing, id: Option<&Value>) -> Response<Body> {
        let lists = join_all(
            self.route
                .members
                .iter()
                .map(|member| self.list_member(member, method, listing)),
        )
        .await;
        let mut items = Vec::new();
        let mut unavailable = Vec::new();
        for (member, list) in self.route.members.iter().zip(lists) {
            let key = self.fwd.listed.key(&self.route.config.path, member, method);
            match list {
                Ok(list) => {
                    if method == "tools/list" {
                        self.fwd.listed.keep(key, &list);
                    }
                    items.extend(list);
                }
                // The caller has not connected this member yet: its tools stay listed (as
                // the member last listed them), and calling one asks them to connect. Only
                // tools: a resource or prompt list may hold another user's data.
                Err(HopError::Credential(OutboundError::AuthorizationRequired { .. }))
                    if method == "tools/list"
                        && let Some(last) = self.fwd.listed.get(&key) =>
                {
                    items.extend(last.iter().cloned());
                }
                Err(error) => {
                    tracing::warn!(server = %member.name(), %error, "{method} left out a server that failed");
                    unavailable.push(json!({"server": member.name(), "error": error.to_string()}));
                }
            }
        }
        let mut result = Map::new();
        result.insert(listing.key.into(), Value::Array(items));
        if !unavailable.is_empty() {
            // The client's user can see which part of the bundle is missing, and why.
            result.insert("_meta".into(), json!({ UNAVAILABLE_META: unavailable }));
        }
        if matches!(self.via, Via::Stateless { .. }) {
            // Per-user policy makes lists uncacheable across callers.
            result.insert("resultType".into(), "complete".into());
            result.insert("ttlMs".into(), 0.into());
            result.insert("cacheScope".into(), "private".into());
        }
        json_response(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "id": id, "result": result}),
        )
    }

    async fn list_member(
        &self,
        member: &Member,
        method: &str,
        listing: &Listing,
    ) -> Result<Vec<Value>, HopError> {
        let hop = self.hop(member, self.caller);
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let pages = hop.limits.list_pages;
        for _ in 0..pages {
            let mut request =
                json!({"jsonrpc": "2.0", "id": gateway_id("list"), "method": method, "params": {}});
            if let Some(cursor) = &cursor {
                request["params"]["cursor"] = Value::String(cursor.clone());
            }
            let reply = self.call(&hop, &request).await?;
            if let Some(error) = reply.get("error") {
                return Err(HopError::Answer(
                    hop.server(),
                    format!("{method} with an error: {error}"),
                ));
            }
            if let (Some(policy), Some(tools)) = (&hop.policy, reply["result"]["tools"].as_array())
                && method == "tools/list"
            {
                policy.learn(tools);
            }
            let (page, next) = exposed_page(member, listing, &reply["result"]);
            items.extend(page);
            if items.len() > hop.limits.list_items {
                return Err(HopError::Answer(
                    hop.server(),
                    format!(
                        "more than the gateway's limit of {} items of {method}",
                        hop.limits.list_items
                    ),
                ));
            }
            match next {
                Some(next) => cursor = Some(next),
                None => return Ok(items),
            }
        }
        Err(HopError::Answer(
            hop.server(),
            format!("more than the gateway's limit of {pages} pages of {method}"),
        ))
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
        let timeout = hop.timeout();
        let exchange = async {
            let response = self
                .send(hop, &Method::POST, Bytes::from(request.to_string()))
                .await?;
            let (parts, body) = response.into_parts();
            if !parts.status.is_success() {
                return Err(HopError::Answer(
                    hop.server(),
                    format!("HTTP {}", parts.status.as_u16()),
                ));
            }
            super::hop::read_reply(&parts.headers, body, request.get("id"), hop.limits)
                .await
                .map_err(|why| HopError::Answer(hop.server(), why))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(HopError::Timeout(hop.server(), timeout.as_secs_f32())))
    }

    /// A request every member gets (`logging/setLevel`); answered once all have.
    async fn broadcast_request(&self, message: &Message, request: &Value) -> Response<Body> {
        let results =
            join_all(self.route.members.iter().map(|member| async move {
                self.call(&self.hop(member, self.caller), request).await
            }))
            .await;
        for error in results.iter().filter_map(|r| r.as_ref().err()) {
            tracing::warn!(%error, "{} failed on a member", message.envelope.method());
        }
        json_response(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "id": message.envelope.id, "result": {}}),
        )
    }

    /// Client notifications: `initialized` was sent upstream at initialize; the others
    /// (cancellation, roots changes, progress of answers) go to every member.
    /// `server/discover`: what the gateway serves on this route.
    fn discover(&self, id: Option<&Value>) -> Response<Body> {
        let mut result = json!({
            "supportedVersions": era::MODERN_VERSIONS,
            "capabilities": {
                "tools": {"listChanged": true},
                "prompts": {"listChanged": true},
                "resources": {"listChanged": true, "subscribe": true},
                "completions": {},
            },
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {"io.modelcontextprotocol/serverInfo": self.server_info()},
        });
        if let Some(instructions) = &self.route.config.instructions {
            result["instructions"] = Value::String(instructions.clone());
        }
        json_response(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "id": id, "result": result}),
        )
    }

    fn server_info(&self) -> Value {
        server_info(self.route)
    }

    async fn notification(&self, message: &Message) -> Response<Body> {
        if matches!(self.via, Via::Stateless { .. }) {
            // Stateless clients cancel by closing the stream; nothing to pass on.
            return accepted();
        }
        if message.envelope.method() != "notifications/initialized" {
            join_all(self.route.members.iter().map(|member| async move {
                let hop = self.hop(member, self.caller);
                if let Err(error) = self.send(&hop, &Method::POST, message.bytes.clone()).await {
                    tracing::warn!(%error, "a notification did not reach a member");
                }
            }))
            .await;
        }
        accepted()
    }

    /// The client's answer to an upstream's request: back to that upstream, original id.
    async fn answer(
        &self,
        message: &Message,
        mut response: Value,
    ) -> Result<Response<Body>, ProxyError> {
        let target = message
            .envelope
            .id
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|id| id.strip_prefix(RELAY_ID))
            .and_then(|rest| rest.split_once(':'))
            .and_then(|(server, original)| {
                Some((
                    self.route.member(server)?,
                    serde_json::from_str::<Value>(original).ok()?,
                ))
            });
        let Some((member, original)) = target else {
            return Err(ProxyError::BadRequest {
                id: None,
                message: "a response to a request this session never sent".into(),
            });
        };
        if let Some(fields) = response.as_object_mut() {
            fields.insert("id".into(), original);
        }
        let hop = self.hop(member, self.caller);
        match self
            .send(&hop, &Method::POST, Bytes::from(response.to_string()))
            .await
        {
            Ok(_) => Ok(accepted()),
            Err(error) => Err(ProxyError::Upstream { id: None, error }),
        }
    }

    /// The session's stream: every member's stream merged, with keep-alives. It replaces the
    /// stream the session had open here. With a `Last-Event-ID` of one member's event, that
    /// member's stream resumed instead.
    async fn stream(&self) -> Response<Body> {
        if let Some((member, last)) = self.resumption() {
            return self.resume(member, last).await;
        }
        let replaced = self
            .session()
            .map(|(sid, _)| self.fwd.sessions.open_stream(sid));
        let opened = join_all(self.route.members.iter().map(|member| async move {
            let hop = self.hop(member, self.caller);
            let response = self.send(&hop, &Method::GET, Bytes::new()).await;
            match response {
                Ok(r) if r.status().is_success() => Some(relay::sse(
                    r.into_body(),
                    from_member(member.name().to_owned()),
                    EventIds::Member(member.name().to_owned()),
                    hop.limits.event_bytes,
                )),
                Ok(_) => None,
                Err(error) => {
                    tracing::debug!(%error, "a member has no stream");
                    None
                }
            }
        }))
        .await;
        let changes = list_changes(
            self.fwd.current.clone(),
            self.route.config.path.clone(),
            LIST_CHANGED.iter().map(|k| k.method),
            None,
        );
        let streams =
            opened
                .into_iter()
                .flatten()
                .chain([keep_alive(), changes, self.completions()]);
        event_stream(self.fwd, replaced, futures::stream::select_all(streams))
    }

    /// `notifications/elicitation/complete` as this session's user supplies a credential
    /// (naming it as the URL elicitation that asked for it did), for clients that take URL
    /// elicitations.
    fn completions(&self) -> relay::Chunks {
        let (Some((_, state)), Some(owner), Some(vault)) =
            (self.session(), self.owner, self.fwd.outbound.vault())
        else {
            return futures::stream::empty().boxed();
        };
        if Asking::in_session("tools/call", &state.capabilities) != Asking::UrlError {
            return futures::stream::empty().boxed();
        }
        let prefix = format!("{owner}-");
        futures::stream::unfold(
            (vault.stored(), prefix),
            |(mut stored, prefix)| async move {
                loop {
                    match stored.recv().await {
                        Ok(id) if id.starts_with(&prefix) => {
                            let event =
                                format!("event: message\ndata: {}\n\n", asking::complete(&id));
                            return Some((Ok(Bytes::from(event)), (stored, prefix)));
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        )
        .boxed()
    }

    /// The member, and its own event id, a GET's `Last-Event-ID` resumes (see
    /// [`EventIds::Member`]).
    fn resumption(&self) -> Option<(&Member, HeaderValue)> {
        let last = self.caller.get("last-event-id")?.to_str().ok()?;
        let (server, id) = relay::resumed(last)?;
        Some((self.route.member(server)?, HeaderValue::from_str(id).ok()?))
    }

    /// `member`'s stream resumed after its event `last` (the upstream replays what the
    /// client missed), ids kept for the next resumption.
    async fn resume(&self, member: &Member, last: HeaderValue) -> Response<Body> {
        let mut caller = self.caller.clone();
        caller.insert("last-event-id", last);
        let hop = self.hop(member, &caller);
        let name = member.name().to_owned();
        match self.send(&hop, &Method::GET, Bytes::new()).await {
            Ok(response) => {
                let ids = EventIds::Member(name.clone());
                relay::response(response, from_member(name), ids, &hop)
                    .await
                    .map(|body| self.fwd.long_lived(None, body))
            }
            Err(error) => hop_failure(&Method::GET, None, error, Asking::Body)
                .unwrap_or_else(ProxyError::respond),
        }
    }

    /// A 2026-07-28 `subscriptions/listen` stream: acknowledged first, then what every
    /// member streams for the filter the client asked for (its resource URIs sent to the
    /// member that owns them), and the gateway's own list changes when the configuration
    /// changes the route; every notification tagged with the listen request's id.
    async fn listen(
        &self,
        request: &Value,
        id: Option<&Value>,
    ) -> Result<Response<Body>, ProxyError> {
        let Via::Stateless { meta } = &self.via else {
            return Err(ProxyError::MethodNotFound {
                id: id.cloned(),
                message: "subscriptions/listen is a 2026-07-28 method; initialized sessions receive notifications on their GET stream".into(),
                status: StatusCode::OK,
            });
        };
        let subscription = id.cloned().unwrap_or(Value::Null);
        let wanted = &request["params"]["notifications"];
        let mut honored = Map::new();
        for kind in LIST_CHANGED {
            if wanted[kind.filter] == true {
                honored.insert(kind.filter.into(), true.into());
            }
        }
        let uris: Vec<&str> = wanted["resourceSubscriptions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|uri| self.by_prefix(uri, '+').is_some())
            .collect();
        if !uris.is_empty() {
            honored.insert("resourceSubscriptions".into(), json!(uris));
        }
        let opened = join_all(self.route.members.iter().map(|member| {
            let (honored, subscription) = (&honored, &subscription);
            let uris = &uris;
            async move {
                let mut filter = honored.clone();
                let prefix = format!("{}+", member.name());
                let own: Vec<&str> = uris
                    .iter()
                    .filter_map(|u| u.strip_prefix(&prefix))
                    .collect();
                filter.remove("resourceSubscriptions");
                if !own.is_empty() {
                    filter.insert("resourceSubscriptions".into(), json!(own));
                }
                let listen = json!({
                    "jsonrpc": "2.0", "id": subscription, "method": "subscriptions/listen",
                    "params": {"notifications": filter, "_meta": meta},
                });
                let rewrite = tagged(member.name().to_owned(), subscription.clone());
                let hop = self.hop(member, self.caller);
                match self.fwd.eras.listen(&hop, &listen, rewrite).await {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::debug!(%error, "a member has no listen stream");
                        None
                    }
                }
            }
        }))
        .await;
        let ack = json!({
            "jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": honored, "_meta": {SUBSCRIPTION_ID: subscription}},
        });
        let first =
            futures::stream::iter([Ok(Bytes::from(format!("event: message\ndata: {ack}\n\n")))])
                .boxed();
        let kinds = LIST_CHANGED
            .iter()
            .filter(|k| honored.contains_key(k.filter));
        let changes = list_changes(
            self.fwd.current.clone(),
            self.route.config.path.clone(),
            kinds.map(|k| k.method),
            Some(&subscription),
        );
        let streams = opened.into_iter().flatten().chain([changes, keep_alive()]);
        let merged = first.chain(futures::stream::select_all(streams));
        Ok(event_stream(self.fwd, None, merged))
    }

    /// Ends every member's session.
    async fn delete(&self) -> Response<Body> {
        join_all(self.route.members.iter().map(|member| async move {
            let hop = self.hop(member, self.caller);
            let _ = self.send(&hop, &Method::DELETE, Bytes::new()).await;
        }))
        .await;
        if let Some((sid, _)) = self.session() {
            self.fwd.sessions.end(sid);
        }
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::OK;
        response
    }
}

/// An SSE response made of `chunks`, ended when `replaced` fires (see
/// [`Forwarder::long_lived`]) or the gateway stops.
fn event_stream(
    fwd: &Forwarder,
    replaced: Option<tokio::sync::oneshot::Receiver<()>>,
    chunks: impl futures::Stream<Item = Result<Bytes, hyper::Error>> + Send + 'static,
) -> Response<Body> {
    let body = fwd.long_lived(
        replaced,
        BodyExt::boxed_unsync(StreamBody::new(chunks.map(|chunk| chunk.map(Frame::data)))),
    );
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// An SSE comment every [`KEEP_ALIVE`], so idle streams survive proxies.
fn keep_alive() -> relay::Chunks {
    futures::stream::unfold((), |()| async {
        tokio::time::sleep(KEEP_ALIVE).await;
        Some((Ok(Bytes::from_static(b": keep-alive\n\n")), ()))
    })
    .boxed()
}

/// The `notifications/<x>/list_changed` notifications each time the configuration in service
/// changes what the route at `path` offers (`methods` of them, tagged with `subscription`
/// when set); ends when the route is gone.
fn list_changes<'a>(
    current: std::sync::Arc<Current>,
    path: String,
    methods: impl Iterator<Item = &'a str>,
    subscription: Option<&Value>,
) -> relay::Chunks {
    let mut events = String::new();
    for method in methods {
        let mut message = json!({"jsonrpc": "2.0", "method": method});
        if let Some(id) = subscription {
            message["params"] = json!({"_meta": {SUBSCRIPTION_ID: id}});
        }
        events.push_str(&format!("event: message\ndata: {message}\n\n"));
    }
    if events.is_empty() {
        return futures::stream::empty().boxed();
    }
    let changed = Bytes::from(events);
    let stored = current.subscribe();
    let last = current.load().and_then(|s| s.surface(&path));
    futures::stream::unfold(
        (stored, last, current, path),
        move |(mut stored, mut last, current, path)| {
            let changed = changed.clone();
            async move {
                loop {
                    stored.changed().await.ok()?;
                    let now = current.load().and_then(|s| s.surface(&path));
                    now.as_ref()?;
                    if now != last {
                        last = now;
                        let event = Ok(changed.clone());
                        return Some((event, (stored, last, current, path)));
                    }
                }
            }
        },
    )
    .boxed()
}

fn server_info(route: &VirtualRoute) -> Value {
    json!({
        "name": format!("{}/{}", route.config.namespace, route.config.name),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// Methods the stateless revision removed: a stateless client gets 404 for them.
const REMOVED_STATELESS: [&str; 5] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// -32601 for `method`, with `status` (404 for stateless clients, 200 within a session).
fn method_not_found(id: Option<&Value>, method: &str, status: StatusCode) -> ProxyError {
    ProxyError::MethodNotFound {
        id: id.cloned(),
        message: format!("Method not found: {method}"),
        status,
    }
}

fn accepted() -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::ACCEPTED;
    response
}

/// One page of a member's list `result`: the items it exposes, under the virtual server's
/// names (anything without a name of the right type left out), and the next page's cursor.
pub(crate) fn exposed_page(
    member: &Member,
    listing: &Listing,
    result: &Value,
) -> (Vec<Value>, Option<String>) {
    let items = result[listing.key].as_array().into_iter().flatten();
    let page = items
        .filter_map(|item| {
            let name = item.get(listing.field)?.as_str()?;
            let exposed = match listing.key {
                "tools" => member.exposed_tool(name)?,
                "prompts" => format!("{}_{name}", member.name()),
                _ => format!("{}+{name}", member.name()),
            };
            let mut item = item.clone();
            if let Some(fields) = item.as_object_mut() {
                fields.insert(listing.field.into(), Value::String(exposed));
            }
            Some(item)
        })
        .collect();
    let next = result["nextCursor"]
        .as_str()
        .filter(|next| !next.is_empty())
        .map(str::to_owned);
    (page, next)
}

/// What a member's messages need on their way to a client of the virtual server: its own
/// requests get ids that route the client's answer back, resource URIs get its prefix.
pub(crate) fn from_member(server: String) -> impl Rewrite {
    move |message: &mut Value| {
        if message.get("method").is_some()
            && let Some(id) = message.get_mut("id")
        {
            *id = Value::String(format!("{RELAY_ID}{server}:{id}"));
        }
        if message["method"] == "notifications/resources/updated"
            && let Some(uri) = message.pointer_mut("/params/uri")
            && let Some(text) = uri.as_str()
        {
            *uri = Value::String(format!("{server}+{text}"));
        }
        true
    }
}

/// What a member's `subscriptions/listen` stream needs on its way to the client: its own
/// acknowledgement dropped (the gateway acknowledged already), every notification tagged
/// with the client's `subscription` id, then [`from_member`]. A notification whose `params`
/// or `params._meta` is not an object cannot carry the tag: it is dropped, and logged.
pub(crate) fn tagged(server: String, subscription: Value) -> impl Rewrite {
    let mut from = from_member(server.clone());
    move |message: &mut Value| {
        if message["method"] == "notifications/subscriptions/acknowledged" {
            return false;
        }
        if message.get("method").is_some() && message.get("id").is_none() {
            let Some(meta) = params_mut(message).and_then(|p| child_object(p, "_meta")) else {
                tracing::warn!(
                    %server,
                    method = %message["method"],
                    "dropped a notification from a member's listen stream: its params or params._meta is not an object"
                );
                return false;
            };
            meta.insert(SUBSCRIPTION_ID.into(), subscription.clone());
        }
        from(message)
    }
}

/// The tools each member of each virtual server last listed (as the virtual server exposes
/// them), by virtual server and member configuration: what a caller sees of a member that
/// needs a credential they have not supplied yet. Upstreams that list tools differently per
/// user show such a caller the last lister's tool names until they connect.
pub struct Listed(moka::sync::Cache<String, std::sync::Arc<Vec<Value>>>);

impl Default for Listed {
    fn default() -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build(),
        )
    }
}

impl Listed {
    fn key(&self, route: &str, member: &Member, method: &str) -> String {
        let config = crate::outbound::config_key(&member.server);
        format!(
            "{route}\0{}\0{method}\0{}",
            member.name(),
            base16ct::lower::encode_string(&config)
        )
    }

    fn keep(&self, key: String, items: &[Value]) {
        let same = self
            .0
            .get(&key)
            .is_some_and(|kept| kept.as_slice() == items);
        if !same {
            self.0.insert(key, std::sync::Arc::new(items.to_vec()));
        }
    }

    fn get(&self, key: &str) -> Option<std::sync::Arc<Vec<Value>>> {
        self.0.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through(server: &str, message: Value) -> Value {
        let mut message = message;
        assert!(from_member(server.to_owned())(&mut message));
        message
    }

    #[test]
    fn member_requests_get_routable_ids_and_notifications_pass() {
        let request = through(
            "github",
            json!({"jsonrpc": "2.0", "id": 0, "method": "elicitation/create", "params": {}}),
        );
        assert_eq!(request["id"], "mcpgate:github:0");
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}});
        assert_eq!(through("github", progress.clone()), progress);
        let updated = through(
            "fs",
            json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "file:///a"}}),
        );
        assert_eq!(updated["params"]["uri"], "fs+file:///a");
        let response = json!({"jsonrpc": "2.0", "id": 3, "result": {}});
        assert_eq!(
            through("fs", response.clone()),
            response,
            "responses keep the client's id"
        );
    }

    #[test]
    fn string_ids_survive_the_round_trip() {
        let request = through(
            "s",
            json!({"jsonrpc": "2.0", "id": "a:b", "method": "roots/list"}),
        );
        let id = request["id"].as_str().unwrap();
        let (server, original) = id.strip_prefix(RELAY_ID).unwrap().split_once(':').unwrap();
        assert_eq!(
            (server, serde_json::from_str::<Value>(original).unwrap()),
            ("s", json!("a:b"))
        );
    }
}
