//! The one place failures become HTTP responses: JSON bodies everywhere, JSON-RPC errors for
//! MCP requests, and never a status a client would take as "fall back to the old transport".

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use serde_json::{Value, json};

/// The body type of every response.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// JSON-RPC error codes the gateway uses.
pub mod code {
    /// The body is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// The message is not a JSON-RPC request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown tool and other bad parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The caller is authenticated but not granted access to the route.
    pub const FORBIDDEN: i64 = -32003;
    /// The upstream failed or timed out.
    pub const UPSTREAM: i64 = -32001;
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

/// A JSON-RPC error answering request `id` (null when unknown).
pub fn jsonrpc_error(
    status: StatusCode,
    id: Option<&Value>,
    code: i64,
    message: impl Into<String>,
) -> Response<Body> {
    json_response(
        status,
        &json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": {"code": code, "message": message.into()}}),
    )
}

/// 404 for paths that are not a route, with a JSON body saying so.
pub fn not_found(path: &str) -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": {"type": "NotFound", "message": format!("no MCP server is served at {path}; routes look like /{{namespace}}/mcp/{{name}}/server")}}),
    )
}

/// 429 for a tool call over a budget of `server` (`namespace/name`), with `Retry-After` and a
/// JSON-RPC error naming the budget and when to come back.
pub fn rate_limited(
    id: Option<&Value>,
    server: &str,
    spent: &crate::traffic::limits::Spent,
) -> Response<Body> {
    use crate::traffic::limits::Budget;
    let limit = spent.limit;
    let whose = match spent.budget {
        Budget::Server => "for all callers".to_owned(),
        Budget::User => "per caller".to_owned(),
        Budget::Tool => "of this tool".to_owned(),
    };
    let seconds = spent.retry_after.as_secs_f64().ceil().max(1.0);
    let mut response = jsonrpc_error(
        StatusCode::TOO_MANY_REQUESTS,
        id,
        code::RATE_LIMITED,
        format!(
            "rate limited: {server} allows {} tool calls {whose} every {} s (spec.rateLimits.{}); retry after {seconds} s",
            limit.requests,
            limit.period_seconds,
            spent.budget.label(),
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, http::HeaderValue::from(seconds as u64));
    response
}
