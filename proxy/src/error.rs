//! The one place failures become HTTP responses: every refusal and failure of the proxy is a
//! [`ProxyError`], answered by [`ProxyError::respond`] with its HTTP status, a JSON-RPC error
//! (codes defined once, in [`code`]) and the headers it needs; JSON bodies everywhere, and
//! never a status a client would take as "fall back to the old transport". Each answer
//! carries its [`ErrorKind`], which `mcpgate_errors_total{kind}` counts.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use serde_json::{Value, json};

use crate::mcp::upstream::hop::HopError;
use crate::traffic::limits::{Budget, Spent};

/// The body type of every response.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// JSON-RPC error codes the gateway uses.
pub mod code {
    /// The body is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// The message is not a JSON-RPC request, or the HTTP request around it is wrong.
    pub const INVALID_REQUEST: i64 = -32600;
    /// A method the route does not serve.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Unknown tool and other bad parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The upstream failed, timed out, answered what MCP does not allow, or its circuit is
    /// open.
    pub const UPSTREAM: i64 = -32001;
    /// The caller is authenticated but not granted access to the route.
    pub const FORBIDDEN: i64 = -32003;
    /// No valid bearer token (HTTP 401 with a `WWW-Authenticate` challenge).
    pub const UNAUTHENTICATED: i64 = -32005;
    /// A stateless request's headers say something other than its body (2026-07-28).
    pub const HEADER_MISMATCH: i64 = -32020;
    /// The client's protocol version is not served (2026-07-28).
    pub const UNSUPPORTED_VERSION: i64 = -32022;
    /// The call needs the user's own credential for an upstream, which the gateway does not
    /// hold yet (the answer says where to supply it).
    pub const AUTHORIZATION_REQUIRED: i64 = -32004;
    /// A budget of the server's `spec.rateLimits` is spent (HTTP 429, with `Retry-After`).
    pub const RATE_LIMITED: i64 = -32029;
    /// URL-mode elicitation required (MCP 2025-11-25 URLElicitationRequiredError).
    pub const URL_ELICITATION_REQUIRED: i64 = -32042;
    /// A failure inside the gateway itself.
    pub const INTERNAL: i64 = -32603;
}

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// What kind of error an answer is: its `mcpgate_errors_total{kind}` label, as a response
/// extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKind(pub &'static str);

/// Every way the proxy refuses or fails a request. Messages say what to fix and never carry
/// a credential.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The path is no route.
    #[error(
        "no MCP server is served at {path}; routes look like /{{namespace}}/mcp/{{name}}/server"
    )]
    NoRoute {
        /// As requested.
        path: String,
    },
    /// No configuration has loaded yet.
    #[error("the gateway has not loaded its configuration yet")]
    NotReady,
    /// At a limit of connections or requests in flight.
    #[error("the gateway is at its limit of open {limit}: retry in a moment")]
    Busy {
        /// `connections` or `requests`.
        limit: &'static str,
    },
    /// Handling the request panicked.
    #[error(
        "internal error in the gateway: this request failed and was logged; other requests are not affected"
    )]
    Panicked,
    /// Origin or Host refused (DNS rebinding protection).
    #[error("{message}")]
    Refused {
        /// Which header and why.
        message: String,
    },
    /// No valid bearer token.
    #[error("Unauthorized: {message}")]
    Unauthenticated {
        /// Why the token was refused.
        message: String,
        /// The `WWW-Authenticate` challenge.
        challenge: Option<HeaderValue>,
    },
    /// The token could not be checked now (a 401 would make the client drop a good one).
    #[error("{message}: try again shortly")]
    AuthUnavailable {
        /// What could not be reached.
        message: String,
    },
    /// Authenticated, but not allowed this.
    #[error("{message}")]
    Forbidden {
        /// Who, what, and what would grant it.
        message: String,
    },
    /// The HTTP request around the message is wrong (a header, a missing session, ...).
    #[error("{message}")]
    BadRequest {
        /// The request's id, when known.
        id: Option<Value>,
        /// What to fix.
        message: String,
    },
    /// A method the route does not take.
    #[error("{message}")]
    MethodNotAllowed {
        /// Which to use.
        message: &'static str,
    },
    /// The body is not JSON (415), or the client does not accept what MCP answers (406).
    #[error("{message}")]
    MediaType {
        /// 415 or 406.
        status: StatusCode,
        /// Which header to fix.
        message: &'static str,
    },
    /// The body is over the limit.
    #[error("request body over the {limit}-byte limit")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {seconds} s")]
    BodyTimeout {
        /// The limit.
        seconds: f32,
    },
    /// Not one JSON-RPC message ([`code::PARSE_ERROR`] or [`code::INVALID_REQUEST`]).
    #[error("the body is not one JSON-RPC message: {message}")]
    Malformed {
        /// The request's id, when it could be read.
        id: Option<Value>,
        /// Which code.
        code: i64,
        /// What is wrong.
        message: String,
    },
    /// The protocol version or a stateless request's envelope is wrong (400).
    #[error("{message}")]
    Protocol {
        /// The request's id.
        id: Option<Value>,
        /// [`code::INVALID_PARAMS`], [`code::HEADER_MISMATCH`] or [`code::UNSUPPORTED_VERSION`].
        code: i64,
        /// What is wrong.
        message: String,
        /// Details (the supported versions).
        data: Option<Value>,
    },
    /// The session is not this gateway's, not this caller's or this route's, or expired.
    #[error("session not found or expired: initialize a new session")]
    SessionNotFound {
        /// The request's id.
        id: Option<Value>,
    },
    /// Bad parameters: an unknown tool, a name or URI no member has, a cursor, a size.
    #[error("{message}")]
    InvalidParams {
        /// The request's id.
        id: Option<Value>,
        /// What is wrong.
        message: String,
        /// Details (the URI not found).
        data: Option<Value>,
        /// 200 for a request the route understood; 400 for one it cannot take at all.
        status: StatusCode,
    },
    /// A method the route does not serve.
    #[error("{message}")]
    MethodNotFound {
        /// The request's id.
        id: Option<Value>,
        /// Which method, and why.
        message: String,
        /// 200 within a session; 404 for a stateless request (the 2026-07-28 revision).
        status: StatusCode,
    },
    /// A budget of the server's `spec.rateLimits` is spent.
    #[error("rate limited: {server} allows {} tool calls {} every {} s (spec.rateLimits.{}); retry after {} s",
        spent.limit.requests, whose(spent.budget), spent.limit.period_seconds, spent.budget.label(), retry_after(spent))]
    RateLimited {
        /// The call's id.
        id: Option<Value>,
        /// `namespace/name`.
        server: String,
        /// Which budget, and when the next call fits.
        spent: Spent,
    },
    /// An upstream request failed. A JSON-RPC request gets its error in a 200 answer (the
    /// calling tool sees which server failed); a stream or notification gets a 502.
    #[error("{error}")]
    Upstream {
        /// The request's id; None for a stream or notification.
        id: Option<Value>,
        /// What failed.
        error: HopError,
    },
    /// What the bridge to an HTTP+SSE upstream could not get from it, answering request
    /// `id` (200) or a stream or notification (502).
    #[error("{message}")]
    Bridge {
        /// The request's id; None for a stream or notification.
        id: Option<Value>,
        /// What failed.
        message: String,
    },
    /// A failure inside the gateway.
    #[error("{message}")]
    Internal {
        /// The request's id.
        id: Option<Value>,
        /// What failed (no request data).
        message: String,
    },
}

fn whose(budget: Budget) -> &'static str {
    match budget {
        Budget::Server => "for all callers",
        Budget::User => "per caller",
        Budget::Tool => "of this tool",
    }
}

fn retry_after(spent: &Spent) -> u64 {
    spent.retry_after.as_secs_f64().ceil().max(1.0) as u64
}

impl ProxyError {
    /// The `kind` label of `mcpgate_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "no_route",
            Self::NotReady => "not_ready",
            Self::Busy { .. } => "busy",
            Self::Panicked => "panic",
            Self::Refused { .. } => "refused",
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::AuthUnavailable { .. } => "auth_unavailable",
            Self::Forbidden { .. } => "forbidden",
            Self::BadRequest { .. } => "bad_request",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::MediaType { .. } => "media_type",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::Malformed { .. } => "malformed",
            Self::Protocol { .. } => "protocol",
            Self::SessionNotFound { .. } => "session_not_found",
            Self::InvalidParams { .. } => "invalid_params",
            Self::MethodNotFound { .. } => "method_not_found",
            Self::RateLimited { .. } => "rate_limited",
            Self::Upstream { error, .. } => match error {
                HopError::Unreachable(_) => "upstream_unreachable",
                HopError::Timeout(..) => "upstream_timeout",
                HopError::Status(..) => "upstream_status",
                HopError::Answer(..) => "upstream_answer",
                HopError::Unsupported(_) => "upstream_unsupported",
                HopError::Credential(_) => "upstream_credential",
                HopError::CircuitOpen(..) => "circuit_open",
            },
            Self::Bridge { .. } => "bridge",
            Self::Internal { .. } => "internal",
        }
    }

    /// The HTTP status, JSON-RPC code, id and data of the answer.
    fn shape(&self) -> (StatusCode, i64, Option<&Value>, Option<Value>) {
        use StatusCode as S;
        match self {
            Self::NoRoute { .. } => (S::NOT_FOUND, code::INVALID_REQUEST, None, None),
            Self::NotReady => (S::SERVICE_UNAVAILABLE, code::INTERNAL, None, None),
            Self::Busy { .. } => (S::SERVICE_UNAVAILABLE, code::INTERNAL, None, None),
            Self::Panicked => (S::INTERNAL_SERVER_ERROR, code::INTERNAL, None, None),
            Self::Refused { .. } => (S::FORBIDDEN, code::INVALID_REQUEST, None, None),
            Self::Unauthenticated { .. } => (S::UNAUTHORIZED, code::UNAUTHENTICATED, None, None),
            Self::AuthUnavailable { .. } => (S::SERVICE_UNAVAILABLE, code::INTERNAL, None, None),
            Self::Forbidden { .. } => (S::FORBIDDEN, code::FORBIDDEN, None, None),
            Self::BadRequest { id, .. } => {
                (S::BAD_REQUEST, code::INVALID_REQUEST, id.as_ref(), None)
            }
            Self::MethodNotAllowed { .. } => {
                (S::METHOD_NOT_ALLOWED, code::INVALID_REQUEST, None, None)
            }
            Self::MediaType { status, .. } => (*status, code::INVALID_REQUEST, None, None),
            Self::BodyTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, code::INVALID_REQUEST, None, None),
            Self::BodyTimeout { .. } => (S::REQUEST_TIMEOUT, code::INVALID_REQUEST, None, None),
            Self::Malformed { id, code, .. } => (S::BAD_REQUEST, *code, id.as_ref(), None),
            Self::Protocol { id, code, data, .. } => {
                (S::BAD_REQUEST, *code, id.as_ref(), data.clone())
            }
            Self::SessionNotFound { id } => {
                (S::NOT_FOUND, code::INVALID_REQUEST, id.as_ref(), None)
            }
            Self::InvalidParams {
                id, data, status, ..
            } => (*status, code::INVALID_PARAMS, id.as_ref(), data.clone()),
            Self::MethodNotFound { id, status, .. } => {
                (*status, code::METHOD_NOT_FOUND, id.as_ref(), None)
            }
            Self::RateLimited { id, .. } => {
                (S::TOO_MANY_REQUESTS, code::RATE_LIMITED, id.as_ref(), None)
            }
            Self::Upstream { id: Some(id), .. } | Self::Bridge { id: Some(id), .. } => {
                (S::OK, code::UPSTREAM, Some(id), None)
            }
            Self::Upstream { id: None, .. } | Self::Bridge { id: None, .. } => {
                (S::BAD_GATEWAY, code::UPSTREAM, None, None)
            }
            Self::Internal { id, .. } => {
                (S::INTERNAL_SERVER_ERROR, code::INTERNAL, id.as_ref(), None)
            }
        }
    }

    /// The answer: status, JSON body, the headers the error needs (`Retry-After`,
    /// `WWW-Authenticate`) and its [`ErrorKind`].
    pub fn respond(self) -> Response<Body> {
        let (status, code, id, data) = self.shape();
        let message = self.to_string();
        let mut response = match &self {
            // Not an MCP request: what is wrong with the path or the gateway, as JSON.
            Self::NoRoute { .. } | Self::NotReady => {
                let kind = match self {
                    Self::NoRoute { .. } => "NotFound",
                    _ => "NotReady",
                };
                json_response(
                    status,
                    &json!({"error": {"type": kind, "message": message}}),
                )
            }
            _ => {
                let mut error = json!({"code": code, "message": message});
                if let Some(data) = data {
                    error["data"] = data;
                }
                json_response(
                    status,
                    &json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error}),
                )
            }
        };
        let headers = response.headers_mut();
        match &self {
            Self::Busy { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::AuthUnavailable { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Self::RateLimited { spent, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after(spent)));
            }
            Self::Unauthenticated {
                challenge: Some(challenge),
                ..
            } => {
                headers.insert(header::WWW_AUTHENTICATE, challenge.clone());
            }
            _ => {}
        }
        response.extensions_mut().insert(ErrorKind(self.kind()));
        response
    }
}

impl From<ProxyError> for Response<Body> {
    fn from(error: ProxyError) -> Self {
        error.respond()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use mcpgate_crds::gateway_config::RateLimit;

    fn answer(error: ProxyError) -> (StatusCode, http::HeaderMap, &'static str, Value) {
        let kind = error.kind();
        let response = error.respond();
        assert_eq!(
            response.extensions().get::<ErrorKind>(),
            Some(&ErrorKind(kind))
        );
        let (parts, body) = response.into_parts();
        let bytes = futures::executor::block_on(body.collect())
            .unwrap()
            .to_bytes();
        (
            parts.status,
            parts.headers,
            kind,
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[test]
    fn each_error_has_its_status_code_headers_and_kind() {
        let id = Some(json!(7));
        let cases = [
            (ProxyError::Panicked, 500, -32603, "panic"),
            (ProxyError::Busy { limit: "requests" }, 503, -32603, "busy"),
            (
                ProxyError::Unauthenticated {
                    message: "no token".into(),
                    challenge: Some(HeaderValue::from_static("Bearer x")),
                },
                401,
                code::UNAUTHENTICATED,
                "unauthenticated",
            ),
            (
                ProxyError::Forbidden {
                    message: "no".into(),
                },
                403,
                code::FORBIDDEN,
                "forbidden",
            ),
            (
                ProxyError::BodyTooLarge { limit: 10 },
                413,
                -32600,
                "body_too_large",
            ),
            (
                ProxyError::SessionNotFound { id: id.clone() },
                404,
                -32600,
                "session_not_found",
            ),
            (
                ProxyError::RateLimited {
                    id: id.clone(),
                    server: "a/b".into(),
                    spent: Spent {
                        budget: Budget::User,
                        limit: RateLimit {
                            requests: 2,
                            period_seconds: 60,
                        },
                        retry_after: Duration::from_millis(29_100),
                    },
                },
                429,
                code::RATE_LIMITED,
                "rate_limited",
            ),
            (
                ProxyError::Upstream {
                    id: id.clone(),
                    error: HopError::Unreachable("a/b".into()),
                },
                200,
                code::UPSTREAM,
                "upstream_unreachable",
            ),
            (
                ProxyError::Upstream {
                    id: None,
                    error: HopError::CircuitOpen("a/b".into(), Duration::from_secs(3)),
                },
                502,
                code::UPSTREAM,
                "circuit_open",
            ),
        ];
        for (error, status, code, kind) in cases {
            let message = error.to_string();
            let (got_status, headers, got_kind, body) = answer(error);
            assert_eq!((got_status.as_u16(), got_kind), (status, kind), "{message}");
            assert_eq!(body["error"]["code"], code, "{kind}");
            assert_eq!(body["error"]["message"], message, "{kind}");
            assert_eq!(body["jsonrpc"], "2.0");
            match kind {
                "busy" => assert_eq!(headers[header::RETRY_AFTER], "1"),
                "rate_limited" => {
                    assert_eq!(headers[header::RETRY_AFTER], "30");
                    assert_eq!(body["id"], 7);
                    assert_eq!(
                        message,
                        "rate limited: a/b allows 2 tool calls per caller every 60 s (spec.rateLimits.perUser); retry after 30 s"
                    );
                }
                "unauthenticated" => assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer x"),
                "circuit_open" => assert_eq!(
                    message,
                    "upstream a/b is failing and the gateway stopped sending to it for now (its circuit is open for 3 s more); try again later"
                ),
                _ => assert!(!headers.contains_key(header::RETRY_AFTER), "{kind}"),
            }
        }
    }

    #[test]
    fn a_path_that_is_no_route_is_answered_in_plain_json() {
        let (status, _, kind, body) = answer(ProxyError::NoRoute { path: "/x".into() });
        assert_eq!((status, kind), (StatusCode::NOT_FOUND, "no_route"));
        assert_eq!(body["error"]["type"], "NotFound");
        assert!(body.get("jsonrpc").is_none());
    }
}
