//! What every MCP route shares: the limits, clients, sessions and policies of the data
//! path ([`Shared`]), reading and checking a request before any route acts on it, and
//! sending within a client's session to an upstream (opening or re-opening the upstream's
//! session as needed). Server routes (`server_route`) and virtual servers
//! (`virtual_server`) are built on it.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::audit::{Audit, Pending, ToolCall};
use crate::auth::Identity;
use crate::error::{Body, ProxyError, code};
use crate::mcp::asking::{self, Asking};
use crate::mcp::message::SESSION_ID;
use crate::mcp::message::{Envelope, Kind, with_string_at};
use crate::mcp::upstream::era;
use crate::mcp::upstream::hop::{Hop, HopError};
use crate::outbound::OutboundError;
use crate::session::{SessionState, Sessions, UpstreamSession};
use crate::source::ServerRoute;
use crate::upstream::HttpClient;

/// Limits, clients and sessions shared by every forwarded request.
pub struct Shared {
    /// The outbound HTTP client.
    pub client: HttpClient,
    /// Largest request body accepted.
    pub max_body: usize,
    /// Time a client has to send its whole request body.
    pub body_timeout: std::time::Duration,
    /// What may be read from upstream answers.
    pub read_limits: super::upstream::reply::ReadLimits,
    /// Session sealing.
    pub sessions: Sessions,
    /// Upstream eras and the gateway's own sessions for stateless clients.
    pub eras: super::upstream::era::Eras,
    /// The configuration in service (streams watch it for changes).
    pub current: std::sync::Arc<crate::source::Current>,
    /// Turns true at shutdown: long-lived streams end so connections can drain.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// The audit trail of tool calls.
    pub audit: Audit,
    /// The credentials sent upstream beyond what routes inject by themselves.
    pub outbound: crate::outbound::Outbound,
    /// What each virtual server's members last listed, for callers whose own credential a
    /// member still needs (see `aggregate`).
    pub listed: super::last_listed::Listed,
    /// Rate limits, retries and circuit breaking of the servers that set them.
    pub traffic: crate::traffic::Traffic,
    /// How upstreams that speak only HTTP+SSE are reached.
    pub bridge: crate::mcp::upstream::sse_bridge::SseBridge,
}

/// Set once a request's body has been read whole (a request extension the server reads to
/// decide whether an error answer must close the connection).
#[derive(Clone, Default, Debug)]
pub struct BodyRead(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl BodyRead {
    /// Marks the body read.
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether it was.
    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A request body read whole and checked.
pub struct Message {
    /// As received.
    pub bytes: Bytes,
    /// What routing needs.
    pub envelope: Envelope,
}

impl Message {
    /// The message as a JSON value, for the places that rewrite it rather than forward it;
    /// 400 (-32700) when it is nested deeper than serde_json builds values for (the
    /// envelope, which skips what it does not read, takes it). Its `params` and
    /// `params._meta` are objects or absent, as [`Envelope::parse`] checked.
    pub fn request(&self) -> Result<Value, ProxyError> {
        serde_json::from_slice(&self.bytes).map_err(|e| ProxyError::Malformed {
            id: self.envelope.id.clone(),
            code: code::PARSE_ERROR,
            message: e.to_string(),
        })
    }

    /// The message as received, with the string `value` at `path` (member names from the
    /// top): a rename that builds no [`Value`] (see [`with_string_at`]).
    pub fn with_string_at(&self, path: &[&str], value: &str) -> Result<Bytes, ProxyError> {
        with_string_at(&self.bytes, path, value)
            .map(Bytes::from)
            .map_err(|e| ProxyError::InvalidParams {
                id: self.envelope.id.clone(),
                message: format!("{}: {e}", path.join(".")),
                data: None,
                status: StatusCode::OK,
            })
    }
}

impl Shared {
    /// How a request of `owner` (with `identity` on a per-user route) reaches `route`'s
    /// upstream, with `caller`'s headers.
    pub fn hop<'a>(
        &'a self,
        route: &'a ServerRoute,
        caller: &'a HeaderMap,
        owner: Option<&'a str>,
        identity: Option<&'a Identity>,
    ) -> Hop<'a> {
        Hop {
            client: &self.client,
            limits: self.read_limits,
            owner,
            identity,
            outbound: &self.outbound,
            route,
            caller,
            policy: self.traffic.of(route),
            bridge: &self.bridge,
        }
    }

    /// What every route, server or virtual, checks before it acts on a request, answering
    /// what is wrong the way the MCP transport says: the media types (415, 406), the body
    /// (413; -32700 for what is not JSON, -32600 for what is not one JSON-RPC message), the
    /// `MCP-Protocol-Version` header (400, -32022), and for a stateless request, that its
    /// headers say what its body says (400, -32020). The message, for a POST.
    pub async fn admit(
        &self,
        parts: &http::request::Parts,
        body: Incoming,
    ) -> Result<Option<Message>, ProxyError> {
        check_media_types(&parts.method, &parts.headers)?;
        let message = match parts.method {
            Method::POST => {
                let message = self.read_message(&parts.headers, body).await;
                // Read whole (even if it is no message): the connection can carry the next.
                if !matches!(
                    message,
                    Err(ProxyError::BodyTooLarge { .. } | ProxyError::BodyTimeout { .. })
                ) && let Some(read) = parts.extensions.get::<BodyRead>()
                {
                    read.set();
                }
                Some(message?)
            }
            _ => None,
        };
        let envelope = message.as_ref().map(|m| &m.envelope);
        let id = envelope.and_then(|e| e.id.as_ref());
        if envelope.is_some_and(|e| e.kind() == Kind::Invalid) {
            return Err(not_a_message(id));
        }
        era::check_version_header(&parts.headers, id)?;
        if let Some(envelope) = envelope
            && envelope.kind() == Kind::Request
            && !parts.headers.contains_key(SESSION_ID)
            && era::is_modern(&parts.headers, envelope)
        {
            era::check(&parts.headers, envelope)?;
        }
        Ok(message)
    }

    /// Reads and parses a POST body, or answers why not (413, -32700, -32600).
    async fn read_message(
        &self,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<Message, ProxyError> {
        let too_large = ProxyError::BodyTooLarge {
            limit: self.max_body,
        };
        if content_length(headers).is_some_and(|n| n > self.max_body) {
            return Err(too_large);
        }
        let read = tokio::time::timeout(
            self.body_timeout,
            Limited::new(body, self.max_body).collect(),
        );
        let bytes = match read.await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(_)) => return Err(too_large),
            Err(_) => {
                return Err(ProxyError::BodyTimeout {
                    seconds: self.body_timeout.as_secs_f32(),
                });
            }
        };
        match Envelope::parse(&bytes) {
            Ok(envelope) => Ok(Message { bytes, envelope }),
            Err(malformed) => Err(ProxyError::Malformed {
                id: malformed.id,
                code: malformed.code,
                message: malformed.message.to_string(),
            }),
        }
    }

    /// Opens the caller's session, if it sent one: Ok(None) without a session id, Err(404)
    /// for an id this gateway did not mint for this route and this `owner`, or one past its
    /// age (the client must initialize again).
    pub fn session(
        &self,
        headers: &HeaderMap,
        route: &str,
        owner: Option<&str>,
        id: Option<&Value>,
    ) -> Result<Option<(String, std::sync::Arc<SessionState>)>, ProxyError> {
        let Some(value) = headers.get(SESSION_ID) else {
            return Ok(None);
        };
        let sid = value.to_str().unwrap_or_default();
        match self.sessions.open(sid, route, owner) {
            Some(state) => Ok(Some((sid.to_owned(), state))),
            None => Err(ProxyError::SessionNotFound { id: id.cloned() }),
        }
    }

    /// Starts the audit record of `message` if it is a `tools/call`; `call` describes it.
    pub fn audit_call(
        &self,
        message: Option<&Message>,
        call: impl FnOnce(&Envelope) -> ToolCall,
    ) -> Option<Pending> {
        let envelope = &message?.envelope;
        (envelope.method() == "tools/call").then(|| self.audit.start(call(envelope)))
    }

    /// A session's GET stream: ended early when `replaced` fires (the session opened another
    /// one here, see [`Sessions::open_stream`], or ended), and when the proxy starts shutting
    /// down (so it does not hold the drain open; clients re-open it on another replica).
    pub fn long_lived(
        &self,
        replaced: Option<tokio::sync::oneshot::Receiver<()>>,
        body: Body,
    ) -> Body {
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            let stopping = stopping.wait_for(|s| *s);
            match replaced {
                Some(replaced) => {
                    tokio::select! { _ = stopping => {}, _ = replaced => {} }
                }
                None => {
                    let _ = stopping.await;
                }
            }
        };
        let frames = body.into_data_stream().take_until(Box::pin(stopped));
        BodyExt::boxed_unsync(http_body_util::StreamBody::new(
            frames.map(|c| c.map(hyper::body::Frame::data)),
        ))
    }

    /// Sends a request to `hop`'s upstream within client session `session` (sid, state),
    /// opening the upstream session first if it is not open yet, and once more if the
    /// upstream answers 404 because it forgot it. Without a session the request goes
    /// stateless. `version` overrides the protocol version header.
    pub async fn exchange(
        &self,
        hop: &Hop<'_>,
        session: Option<(&str, &SessionState)>,
        version: Option<&str>,
        method: &Method,
        bytes: Bytes,
    ) -> Result<Response<Incoming>, HopError> {
        let Some((sid, state)) = session else {
            let request = hop.request(method.clone(), None, bytes)?;
            return hop.send(request).await;
        };
        let server = &hop.route.config.name;
        let mut upstream = match self.sessions.upstream(sid, state, server) {
            Some(open) if !open.version.is_empty() => open,
            _ => self.reopen(hop, sid, state).await?,
        };
        if let Some(v) = version {
            v.clone_into(&mut upstream.version);
        }
        let mut response = hop
            .send(hop.request(method.clone(), Some(&upstream), bytes.clone())?)
            .await?;
        // A stream this session opened before (just ended, to be replaced) can hold the
        // upstream's one GET stream for a moment after the gateway let go of it.
        let mut pause = Duration::from_millis(25);
        while *method == Method::GET
            && response.status() == StatusCode::CONFLICT
            && pause < Duration::from_secs(2)
        {
            tokio::time::sleep(pause).await;
            pause *= 2;
            response = hop
                .send(hop.request(method.clone(), Some(&upstream), Bytes::new())?)
                .await?;
        }
        if response.status() != StatusCode::NOT_FOUND || *method == Method::DELETE {
            return Ok(response);
        }
        let upstream = self.reopen(hop, sid, state).await?;
        let request = hop.request(method.clone(), Some(&upstream), bytes)?;
        hop.send(request).await
    }

    /// Opens a new upstream session for client session `sid` and remembers it.
    async fn reopen(
        &self,
        hop: &Hop<'_>,
        sid: &str,
        state: &SessionState,
    ) -> Result<UpstreamSession, HopError> {
        let (session, _) = hop
            .initialize(&state.version, &state.capabilities, &state.client_info)
            .await?;
        tracing::info!(server = %hop.server(), "opened an upstream session for an existing client session");
        self.sessions.reopened(sid, session.clone());
        Ok(session)
    }
}

/// 400 for a JSON object that is neither a request, a notification nor a response.
pub fn not_a_message(id: Option<&Value>) -> ProxyError {
    ProxyError::BadRequest {
        id: id.cloned(),
        message: "not a JSON-RPC request, notification or response".into(),
    }
}

/// An unknown (or unexposed) tool, answered as MCP servers do.
pub fn unknown_tool(id: Option<&Value>, name: &str) -> ProxyError {
    ProxyError::InvalidParams {
        id: id.cloned(),
        message: format!("Unknown tool: {name}"),
        data: None,
        status: StatusCode::OK,
    }
}

/// A POST must be JSON and its sender accept both JSON and SSE answers; a GET must accept
/// SSE (media type parameters ignored, wildcards honoured, as the reference SDKs do).
fn check_media_types(method: &Method, headers: &HeaderMap) -> Result<(), ProxyError> {
    let refuse = |status, message| Err(ProxyError::MediaType { status, message });
    let accepts = |wanted: &str| {
        let (kind, _) = wanted.split_once('/').unwrap_or_default();
        headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.split(';').next().unwrap_or_default().trim())
            .any(|t| {
                t.eq_ignore_ascii_case(wanted)
                    || t == "*/*"
                    || t.strip_suffix("/*")
                        .is_some_and(|k| k.eq_ignore_ascii_case(kind))
            })
    };
    match *method {
        Method::POST => {
            let json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
            if !json {
                return refuse(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "Unsupported Media Type: Content-Type must be application/json",
                );
            }
            if !(accepts("application/json") && accepts("text/event-stream")) {
                return refuse(
                    StatusCode::NOT_ACCEPTABLE,
                    "Not Acceptable: Client must accept both application/json and text/event-stream",
                );
            }
            Ok(())
        }
        Method::GET if !accepts("text/event-stream") => refuse(
            StatusCode::NOT_ACCEPTABLE,
            "Not Acceptable: Client must accept text/event-stream",
        ),
        _ => Ok(()),
    }
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// 400 for an `initialize` whose parameters could not be sealed into a session id (they
/// are kept in it), before any upstream is asked.
pub fn oversized_initialize(message: &Message) -> Option<ProxyError> {
    let limit = crate::session::MAX_STATE_BYTES;
    (message.envelope.method() == "initialize" && message.bytes.len() > limit).then(|| {
        ProxyError::InvalidParams {
            id: message.envelope.id.clone(),
            message: format!(
                "initialize is {} bytes: a session keeps its parameters, and the gateway's limit is {limit}; send smaller capabilities and clientInfo",
                message.bytes.len()
            ),
            data: None,
            status: StatusCode::BAD_REQUEST,
        }
    })
}

/// What a caller is told when an upstream request failed: where to supply a missing
/// credential of theirs (asked the way `asking` says), or which server failed
/// ([`upstream_failure`]).
pub fn hop_failure(
    method: &Method,
    id: Option<&Value>,
    error: HopError,
    asking: Asking,
) -> Result<Response<Body>, ProxyError> {
    match error {
        HopError::Credential(needed @ OutboundError::AuthorizationRequired { .. }) => {
            Ok(asking::answer(asking, id, &[&needed]))
        }
        error => Err(upstream_failure(method, id, error)),
    }
}

/// A JSON-RPC error for requests (so the calling tool sees which server failed), 502 for
/// streams and notifications.
pub fn upstream_failure(method: &Method, id: Option<&Value>, error: HopError) -> ProxyError {
    let id = match method {
        &Method::POST => id.cloned(),
        _ => None,
    };
    ProxyError::Upstream { id, error }
}
