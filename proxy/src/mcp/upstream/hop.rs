//! The upstream hop: requests to one McpServer's upstream with its credentials, the caller's
//! own headers reduced to an allowlist, and replies read as JSON or SSE.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use mcpgate_crds::gateway_config::{Upstream, UpstreamAuth};
use mcpgate_crds::v1alpha1::Transport;
use serde_json::{Value, json};

use super::reply::{ReadLimits, collect_limited, read_reply, status_text};
use crate::auth::Identity;
use crate::mcp::extra_headers;
use crate::mcp::message::{META_VERSION, PROTOCOL_VERSION, SESSION_ID};
use crate::outbound::Outbound;
use crate::session::UpstreamSession;
use crate::source::ServerRoute;
use crate::traffic::Policy;
use crate::upstream::HttpClient;

/// Caller headers passed to the upstream, with every `Mcp-Param-*` header (tool parameters a
/// tool's schema mirrors into headers); everything else (cookies, the caller's
/// Authorization, hop-by-hop headers, its session id) stays at the gateway.
const FORWARDED_REQUEST: [&str; 6] = [
    "accept",
    "content-type",
    "last-event-id",
    "mcp-method",
    "mcp-name",
    "user-agent",
];
/// Headers carrying tool parameters (`Mcp-Param-{Name}`), lower-cased as `http` stores them.
const PARAM_HEADER_PREFIX: &str = "mcp-param-";

/// The id of a request the gateway itself sends upstream (`mcpgate-<purpose>-<n>`): unique in
/// this process, so requests sent at once never share an id within one upstream session
/// (an upstream routes its answers by id).
pub fn gateway_id(purpose: &str) -> Value {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    Value::String(format!(
        "mcpgate-{purpose}-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Why an upstream request failed; every message names the server, never a credential.
#[derive(Debug, thiserror::Error)]
pub enum HopError {
    /// No connection, or it broke.
    #[error("upstream {0} is unreachable")]
    Unreachable(String),
    /// No answer in time.
    #[error("upstream {0} did not answer within {1}s")]
    Timeout(String, f32),
    /// It answered with an HTTP error.
    #[error("upstream {0} answered HTTP {1} {2}")]
    Status(String, u16, String),
    /// It answered, but not with what MCP says.
    #[error("upstream {0} answered {1}")]
    Answer(String, String),
    /// The route cannot be served by this build.
    #[error("{0}")]
    Unsupported(String),
    /// The gateway has no credential to send for this caller (or could not obtain one).
    #[error(transparent)]
    Credential(#[from] crate::outbound::OutboundError),
    /// The server's circuit is open: it failed too often in a row (`spec.circuitBreaker`).
    #[error("upstream {0} is failing and the gateway stopped sending to it for now (its circuit is open{left}); try again later", left = open_for(*.1))]
    CircuitOpen(String, Duration),
}

/// ", N s more" for an open circuit's remaining time; nothing while it is being probed.
fn open_for(left: Duration) -> String {
    match left.as_secs_f64().ceil() {
        0.0 => String::new(),
        s => format!(" for {s} s more"),
    }
}

/// How an upstream request is addressed.
pub struct Hop<'a> {
    /// The outbound client.
    pub client: &'a HttpClient,
    /// What may be read from the upstream.
    pub limits: ReadLimits,
    /// Who is calling ([`crate::session::owner`]); None on a public route.
    pub owner: Option<&'a str>,
    /// The caller, when the route sends a credential of theirs upstream (per-user modes).
    pub identity: Option<&'a Identity>,
    /// Obtains the credentials the route sends beyond what it injects by itself.
    pub outbound: &'a Outbound,
    /// The server.
    pub route: &'a ServerRoute,
    /// The caller's request headers.
    pub caller: &'a HeaderMap,
    /// The server's traffic policy, when it has one.
    pub policy: Option<Arc<Policy>>,
    /// Where HTTP+SSE upstreams are reached.
    pub bridge: &'a super::sse_bridge::SseBridge,
}

impl Hop<'_> {
    /// `namespace/name` of the server, for messages.
    pub fn server(&self) -> String {
        format!("{}/{}", self.route.config.namespace, self.route.config.name)
    }

    /// Whose upstream session a request of this hop may share: the caller's, and on a
    /// `Passthrough` route also the credential it forwards (SHA-256 of the caller's
    /// `Authorization` header). Upstream sessions the gateway holds are never shared across
    /// different values, so never across users.
    pub fn credential_identity(&self) -> [u8; 32] {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(self.owner.unwrap_or_default().as_bytes());
        hash.update(b"\0");
        if matches!(self.route.config.auth, UpstreamAuth::Passthrough)
            && let Some(value) = self.caller.get(header::AUTHORIZATION)
        {
            hash.update(value.as_bytes());
        }
        // The caller's own headers for this upstream are a credential too.
        for (name, value) in self.extra_headers() {
            hash.update(b"\0");
            hash.update(name.as_str().as_bytes());
            hash.update(b"\0");
            hash.update(value.as_bytes());
        }
        hash.finalize().into()
    }

    /// The caller's `x-mcp-headers` for this server (validated when the request arrived).
    pub(super) fn extra_headers(&self) -> Vec<(http::HeaderName, HeaderValue)> {
        if !self.caller.contains_key(extra_headers::HEADER) {
            return Vec::new();
        }
        extra_headers::ExtraHeaders::parse(self.caller)
            .ok()
            .flatten()
            .map(|extra| extra.for_server(&self.route.config.name).to_vec())
            .unwrap_or_default()
    }

    /// The route's timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.route.config.timeout_ms.max(1))
    }

    /// Builds a request to the upstream in `session` (or none).
    pub fn request(
        &self,
        method: Method,
        session: Option<&UpstreamSession>,
        body: Bytes,
    ) -> Result<Request<Bytes>, HopError> {
        let Some(upstream) = &self.route.upstream else {
            return Err(HopError::Unsupported(format!(
                "{}: OpenAPI upstreams are not served by this gateway build",
                self.server()
            )));
        };
        let target = match &self.route.config.upstream {
            Upstream::Remote {
                transport: Transport::Sse,
                ..
            } => self
                .bridge
                .address(upstream)
                .map_err(HopError::Unsupported)?,
            _ => upstream.clone(),
        };
        let mut builder = Request::builder().method(method.clone()).uri(target);
        if let Some(headers) = builder.headers_mut() {
            for name in FORWARDED_REQUEST {
                for value in self.caller.get_all(name) {
                    headers.append(HeaderName::from_static(name), value.clone());
                }
            }
            for (name, value) in self.caller {
                if name.as_str().starts_with(PARAM_HEADER_PREFIX) {
                    headers.append(name.clone(), value.clone());
                }
            }
            if !headers.contains_key(header::ACCEPT) {
                headers.insert(
                    header::ACCEPT,
                    HeaderValue::from_static(if method == Method::GET {
                        "text/event-stream"
                    } else {
                        "application/json, text/event-stream"
                    }),
                );
            }
            if method == Method::POST && !headers.contains_key(header::CONTENT_TYPE) {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            if let Some(session) = session {
                if let Some(id) = session
                    .id
                    .as_deref()
                    .and_then(|i| HeaderValue::try_from(i).ok())
                {
                    headers.insert(SESSION_ID, id);
                }
                if let Ok(version) = HeaderValue::try_from(session.version.as_str()) {
                    headers.insert(PROTOCOL_VERSION, version);
                }
            } else if let Some(version) = self.caller.get(PROTOCOL_VERSION) {
                headers.insert(PROTOCOL_VERSION, version.clone());
            }
            if matches!(self.route.config.auth, UpstreamAuth::Passthrough)
                && let Some(value) = self.caller.get(header::AUTHORIZATION)
            {
                headers.insert(header::AUTHORIZATION, value.clone());
            }
            for (name, value) in &self.route.inject {
                headers.insert(name.clone(), value.clone());
            }
            // The caller's headers for this upstream win over what the gateway injects.
            for (name, value) in self.extra_headers() {
                headers.insert(name, value);
            }
        }
        builder
            .body(body)
            .map_err(|e| HopError::Answer(self.server(), e.to_string()))
    }

    /// Sends one JSON-RPC request and reads its response, from JSON or an SSE stream (other
    /// messages on the stream are skipped), within the route's timeout. Returns the HTTP
    /// response headers with the message.
    pub async fn call(
        &self,
        session: Option<&UpstreamSession>,
        message: &Value,
    ) -> Result<(HeaderMap, Value), HopError> {
        let body = Bytes::from(message.to_string());
        let mut request = self.request(Method::POST, session, body)?;
        // The headers describe this message, not the caller's.
        let headers = request.headers_mut();
        headers.remove("mcp-name");
        headers.remove("mcp-method");
        if session.is_none() {
            headers.remove(PROTOCOL_VERSION);
        }
        // A stateless request says its version in `_meta`; within a session the session's
        // version stands.
        if session.is_none()
            && let Some(version) = message
                .pointer(&format!(
                    "/params/_meta/{}",
                    META_VERSION.replace('/', "~1")
                ))
                .and_then(Value::as_str)
                .and_then(|v| HeaderValue::try_from(v).ok())
        {
            headers.insert(PROTOCOL_VERSION, version);
            if let Some(method) = message["method"]
                .as_str()
                .and_then(|m| HeaderValue::try_from(m).ok())
            {
                headers.insert("mcp-method", method);
            }
        }
        self.within_timeout(async {
            let response = self.send(request).await?;
            self.answer(response, message.get("id")).await
        })
        .await
    }

    /// The JSON-RPC response with `id` in an upstream's `response` (JSON or SSE), with the
    /// response's headers; an HTTP error status or anything else is an error naming the
    /// server.
    pub async fn answer(
        &self,
        response: Response<Incoming>,
        id: Option<&Value>,
    ) -> Result<(HeaderMap, Value), HopError> {
        let (parts, body) = response.into_parts();
        if !parts.status.is_success() {
            return Err(HopError::Status(
                self.server(),
                parts.status.as_u16(),
                status_text(body).await,
            ));
        }
        let reply = read_reply(&parts.headers, body, id, self.limits)
            .await
            .map_err(|why| HopError::Answer(self.server(), why))?;
        Ok((parts.headers, reply))
    }

    /// `exchange`, given up with [`HopError::Timeout`] after the route's timeout.
    pub async fn within_timeout<T>(
        &self,
        exchange: impl Future<Output = Result<T, HopError>>,
    ) -> Result<T, HopError> {
        let timeout = self.timeout();
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(HopError::Timeout(self.server(), timeout.as_secs_f32())))
    }

    /// Sends a notification (or a response to the upstream's own request); the answer's body
    /// is drained.
    pub async fn notify(
        &self,
        session: Option<&UpstreamSession>,
        message: Bytes,
    ) -> Result<StatusCode, HopError> {
        let request = self.request(Method::POST, session, message)?;
        let response = self.send(request).await?;
        let status = response.status();
        let drained = collect_limited(response.into_body(), self.limits.reply_bytes);
        let _ = tokio::time::timeout(self.timeout(), drained).await;
        Ok(status)
    }

    /// Opens an upstream session for a client with `capabilities` and `client_info` that
    /// asked for protocol `version`: `initialize`, then `notifications/initialized`.
    /// Returns the session and the upstream's `InitializeResult`.
    pub async fn initialize(
        &self,
        version: &str,
        capabilities: &Value,
        client_info: &Value,
    ) -> Result<(UpstreamSession, Value), HopError> {
        let request = json!({
            "jsonrpc": "2.0",
            "id": "mcpgate-initialize",
            "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": capabilities, "clientInfo": client_info},
        });
        let (headers, mut reply) = self.call(None, &request).await?;
        if let Some(error) = reply.get("error") {
            return Err(HopError::Answer(
                self.server(),
                format!("initialize with an error: {error}"),
            ));
        }
        let result = reply.get_mut("result").map(Value::take).unwrap_or_default();
        let session = UpstreamSession {
            server: self.route.config.name.clone(),
            id: headers
                .get(SESSION_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            version: result
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(version)
                .to_owned(),
        };
        let initialized = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        self.notify(Some(&session), Bytes::from_static(initialized))
            .await?;
        Ok((session, result))
    }
}
