//! Single-server routes: the client's MCP traffic forwarded to one upstream, JSON verbatim and
//! streams streamed, with the route's credentials injected and the caller's own stripped.
//! The gateway terminates the session: the client holds a sealed id carrying the upstream's,
//! and an upstream that forgot its session is re-initialized transparently.

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use crate::audit::{Pending, ToolCall};
use crate::auth::Identity;
use crate::error::{Body, ProxyError};
use crate::mcp::asking::Asking;
use crate::mcp::filter;
use crate::mcp::message::Envelope;
use crate::mcp::message::{PROTOCOL_VERSION, SESSION_ID};
use crate::mcp::shared::{
    Message, Shared, hop_failure, oversized_initialize, unknown_tool, upstream_failure,
};
use crate::mcp::upstream::era;
use crate::mcp::upstream::hop::HopError;
use crate::session::{SessionState, UpstreamSession};
use crate::source::ServerRoute;
use crate::traffic::budget_key;

/// Response headers passed back to the client (the session id is the gateway's own).
const FORWARDED_RESPONSE: [&str; 4] = [
    "content-type",
    "cache-control",
    "x-accel-buffering",
    "www-authenticate",
];

impl Shared {
    /// Forwards one request from `caller` to the route's upstream; a tool call is audited.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        route: &ServerRoute,
        caller: Option<Identity>,
    ) -> (Response<Body>, Option<Duration>) {
        let (parts, body) = req.into_parts();
        let owner = crate::session::owner(caller.as_ref());
        let identity = caller
            .as_ref()
            .filter(|_| route.config.auth.per_user())
            .cloned();
        let message = match self.admit(&parts, body).await {
            Ok(message) => message,
            Err(error) => return (error.respond(), None),
        };
        let audit = self.audit_call(message.as_ref(), |envelope| {
            let config = &route.config;
            ToolCall::new(
                caller,
                &config.namespace,
                &config.name,
                "server",
                envelope,
                parts.extensions.get(),
            )
            .served_by(config, envelope.name())
        });
        let (response, latency) = self
            .deliver(parts, message, route, owner, identity.as_ref())
            .await
            .unwrap_or_else(|error| (error.respond(), None));
        (Pending::observe_some(audit, response), latency)
    }

    /// [`Self::forward`] once the body is read.
    async fn deliver(
        &self,
        parts: http::request::Parts,
        message: Option<Message>,
        route: &ServerRoute,
        owner: Option<String>,
        identity: Option<&Identity>,
    ) -> Result<(Response<Body>, Option<Duration>), ProxyError> {
        let hop = self.hop(route, &parts.headers, owner.as_deref(), identity);
        let envelope = message.as_ref().map(|m| &m.envelope);
        let id = envelope.and_then(|e| e.id.as_ref());
        let method = envelope.map(Envelope::method).unwrap_or_default();
        if method == "tools/call" {
            let name = envelope.map(Envelope::name).unwrap_or_default();
            if !route.permits(name) {
                return Err(unknown_tool(id, name));
            }
        }
        if let Some(refusal) = message.as_ref().and_then(oversized_initialize) {
            return Err(refusal);
        }
        let session = if method == "initialize" {
            None
        } else {
            self.session(&parts.headers, &route.config.path, owner.as_deref(), id)?
        };
        // A call that is refused anyway (bad session, unknown tool) spends no budget.
        if method == "tools/call"
            && let Some(policy) = &hop.policy
        {
            let tool = envelope.map(Envelope::name).unwrap_or_default();
            policy.take_for(
                &budget_key(owner.as_deref(), &parts.extensions),
                tool,
                id,
                &hop.server(),
            )?;
        }
        let bytes = message
            .as_ref()
            .map(|m| m.bytes.clone())
            .unwrap_or_default();
        // How to tell this client that its user must authorize the upstream (read only then).
        let asking = || match (&session, &message) {
            (Some((_, state)), _) => Asking::in_session(method, &state.capabilities),
            (None, Some(message)) if era::is_modern(&parts.headers, &message.envelope) => {
                message.request().map_or(Asking::Body, |request| {
                    Asking::stateless(method, &request["params"]["_meta"])
                })
            }
            _ => Asking::Body,
        };
        // A stateless client in front of an upstream that only knows sessions: the gateway
        // holds a session for it.
        if session.is_none()
            && let Some(message) = &message
            && method != "initialize"
            && era::is_modern(&parts.headers, &message.envelope)
            && self.eras.era(&hop).await == era::Era::Legacy
        {
            let request = message.request()?;
            let tools = route.config.tools.clone();
            let policy = hop.policy.clone();
            let rewrite = move |m: &mut Value| {
                filter::filter_value(m, &tools, policy.as_deref());
                true
            };
            return match self.eras.send(&hop, request, rewrite).await {
                Ok(response) => Ok((response, None)),
                Err(error) => hop_failure(&parts.method, id, error, asking()).map(|r| (r, None)),
            };
        }
        let version = parts
            .headers
            .get(PROTOCOL_VERSION)
            .and_then(|v| v.to_str().ok());
        // A new GET stream replaces the one this session has open here: end that one first,
        // so the upstream's single stream is free for this one.
        let replaced = match (&parts.method, &session) {
            (&Method::GET, Some((sid, _))) => Some(self.sessions.open_stream(sid)),
            _ => None,
        };
        let started = Instant::now();
        let attempt = self
            .exchange(
                &hop,
                session
                    .as_ref()
                    .map(|(sid, state)| (sid.as_str(), &**state)),
                version,
                &parts.method,
                bytes.clone(),
            )
            .await;
        let response = match attempt {
            Ok(response) => response,
            Err(error) => {
                return hop_failure(&parts.method, id, error, asking()).map(|r| (r, None));
            }
        };
        let latency = started.elapsed();

        let (up_parts, up_body) = response.into_parts();
        let mut minted = None;
        if method == "initialize" && up_parts.status.is_success() {
            match self.mint(route, &bytes, &up_parts.headers, owner.clone()) {
                Ok(sid) => minted = Some(sid),
                Err(error) => {
                    return Err(ProxyError::Internal {
                        id: id.cloned(),
                        message: format!("{}: {error}", hop.server()),
                    });
                }
            }
        }
        if parts.method == Method::DELETE
            && let Some((sid, _)) = &session
        {
            self.sessions.end(sid);
        }

        // Read when it must be filtered, or its tools learnt for retries.
        let filtered = method == "tools/list"
            && (!(route.config.tools.allow.is_empty() && route.config.tools.deny.is_empty())
                || hop.policy.as_ref().is_some_and(|p| p.learns()));
        let content_type = up_parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let body = match (filtered, content_type) {
            (true, t) if t.starts_with("text/event-stream") => filter::filter_sse(
                up_body,
                route.config.tools.clone(),
                hop.policy.clone(),
                hop.limits.event_bytes,
            ),
            (true, t) if t.starts_with("application/json") => {
                let filtered = filter::filter_json(
                    up_body,
                    route.config.tools.clone(),
                    hop.policy.clone(),
                    hop.limits.reply_bytes,
                );
                match filtered.await {
                    Ok(body) => body,
                    Err(why) => {
                        tracing::warn!(server = %hop.server(), %why, "upstream answer refused");
                        return Err(upstream_failure(
                            &parts.method,
                            id,
                            HopError::Answer(hop.server(), why),
                        ));
                    }
                }
            }
            _ if parts.method == Method::GET => self.long_lived(replaced, up_body.boxed_unsync()),
            _ => up_body.boxed_unsync(),
        };
        let mut out = Response::new(body);
        *out.status_mut() = up_parts.status;
        for name in FORWARDED_RESPONSE {
            for value in up_parts.headers.get_all(name) {
                out.headers_mut()
                    .append(HeaderName::from_static(name), value.clone());
            }
        }
        if let Some(sid) = minted.and_then(|s| HeaderValue::try_from(s).ok()) {
            out.headers_mut().insert(SESSION_ID, sid);
        }
        Ok((out, Some(latency)))
    }

    /// The client's session id for a successful `initialize`: its parameters and the
    /// upstream's session, sealed.
    fn mint(
        &self,
        route: &ServerRoute,
        initialize: &[u8],
        upstream: &HeaderMap,
        owner: Option<String>,
    ) -> Result<String, crate::session::MintError> {
        let request: Value = serde_json::from_slice(initialize).unwrap_or_default();
        let params = request.get("params");
        let field = |name: &str| {
            params
                .and_then(|p| p.get(name))
                .cloned()
                .unwrap_or_default()
        };
        let version = field("protocolVersion")
            .as_str()
            .unwrap_or(super::message::LATEST_LEGACY)
            .to_owned();
        self.sessions.mint(&SessionState {
            route: route.config.path.clone(),
            version: version.clone(),
            capabilities: field("capabilities"),
            client_info: field("clientInfo"),
            upstreams: vec![UpstreamSession {
                server: route.config.name.clone(),
                id: upstream
                    .get(SESSION_ID)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                version,
            }],
            owner,
            issued: 0,
        })
    }
}
