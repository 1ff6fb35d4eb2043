//! Single-server routes: the client's MCP traffic forwarded to one upstream, JSON verbatim,
//! streams streamed, with the route's credentials injected and the caller's own stripped.

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use mcpgate_crds::gateway_config::{Upstream, UpstreamAuth};
use serde::Deserialize;
use serde_json::Value;

use super::filter;
use crate::error::{Body, code, jsonrpc_error};
use crate::source::ServerRoute;
use crate::upstream::HttpClient;

/// Request headers passed to the upstream; everything else (cookies, the caller's
/// Authorization, hop-by-hop headers) stays at the gateway.
const FORWARDED_REQUEST: [&str; 8] = [
    "accept",
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "mcp-method",
    "mcp-name",
    "user-agent",
];
/// Response headers passed back to the client.
const FORWARDED_RESPONSE: [&str; 5] = [
    "content-type",
    "mcp-session-id",
    "cache-control",
    "x-accel-buffering",
    "www-authenticate",
];

/// Limits and clients shared by every forwarded request.
pub struct Forwarder {
    /// The outbound HTTP client.
    pub client: HttpClient,
    /// Largest request body accepted.
    pub max_body: usize,
}

/// Just enough of a JSON-RPC message to route and filter it; the body itself is forwarded
/// as received.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Params>,
}

#[derive(Deserialize)]
struct Params {
    #[serde(default)]
    name: Option<String>,
}

impl Forwarder {
    /// Forwards one request to the route's upstream.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        route: &ServerRoute,
    ) -> (Response<Body>, Option<Duration>) {
        let server = format!("{}/{}", route.config.namespace, route.config.name);
        let Some(upstream) = &route.upstream else {
            let kind = match route.config.upstream {
                Upstream::OpenApi { .. } => "OpenAPI",
                Upstream::Remote { .. } => "remote",
            };
            return (
                jsonrpc_error(
                    StatusCode::OK,
                    None,
                    code::UPSTREAM,
                    format!("{server}: {kind} upstreams are not served by this gateway build"),
                ),
                None,
            );
        };
        if !matches!(
            route.config.auth,
            UpstreamAuth::None | UpstreamAuth::SharedApiKey { .. } | UpstreamAuth::Passthrough
        ) {
            return (
                jsonrpc_error(
                    StatusCode::OK,
                    None,
                    code::UPSTREAM,
                    format!("{server}: its outbound auth mode is not served by this gateway build"),
                ),
                None,
            );
        }

        let (parts, body) = req.into_parts();
        let body = if parts.method == Method::POST {
            if content_length(&parts.headers).is_some_and(|n| n > self.max_body) {
                return (too_large(self.max_body), None);
            }
            let bytes = match Limited::new(body, self.max_body).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return (too_large(self.max_body), None),
            };
            let envelope: Envelope = match serde_json::from_slice(&bytes) {
                Ok(e) => e,
                Err(e) => {
                    return (
                        jsonrpc_error(
                            StatusCode::BAD_REQUEST,
                            None,
                            code::PARSE_ERROR,
                            format!("the body is not JSON-RPC: {e}"),
                        ),
                        None,
                    );
                }
            };
            if envelope.method.as_deref() == Some("tools/call") {
                let name = envelope
                    .params
                    .as_ref()
                    .and_then(|p| p.name.as_deref())
                    .unwrap_or_default();
                if !route.config.tools.permits(name) {
                    return (
                        jsonrpc_error(
                            StatusCode::OK,
                            envelope.id.as_ref(),
                            code::INVALID_PARAMS,
                            format!("Unknown tool: {name}"),
                        ),
                        None,
                    );
                }
            }
            let lists_tools = envelope.method.as_deref() == Some("tools/list");
            Some((bytes, envelope.id, lists_tools))
        } else {
            None
        };

        let mut upstream_req = Request::builder()
            .method(parts.method.clone())
            .uri(upstream.clone());
        if let Some(headers) = upstream_req.headers_mut() {
            for name in FORWARDED_REQUEST {
                for value in parts.headers.get_all(name) {
                    headers.append(HeaderName::from_static(name), value.clone());
                }
            }
            if matches!(route.config.auth, UpstreamAuth::Passthrough)
                && let Some(value) = parts.headers.get(header::AUTHORIZATION)
            {
                headers.insert(header::AUTHORIZATION, value.clone());
            }
            for (name, value) in &route.inject {
                headers.insert(name.clone(), value.clone());
            }
        }
        let (bytes, id, lists_tools) = body.unwrap_or_default();
        let upstream_req = match upstream_req.body(crate::error::full(bytes)) {
            Ok(r) => r,
            Err(e) => {
                return (
                    jsonrpc_error(
                        StatusCode::BAD_GATEWAY,
                        id.as_ref(),
                        code::UPSTREAM,
                        format!("{server}: {e}"),
                    ),
                    None,
                );
            }
        };

        let started = Instant::now();
        let timeout = Duration::from_millis(route.config.timeout_ms.max(1));
        let response = match tokio::time::timeout(timeout, self.client.request(upstream_req)).await
        {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                tracing::warn!(%server, %error, "upstream request failed");
                return (
                    upstream_failure(
                        &parts.method,
                        id.as_ref(),
                        format!("upstream {server} is unreachable"),
                    ),
                    None,
                );
            }
            Err(_) => {
                return (
                    upstream_failure(
                        &parts.method,
                        id.as_ref(),
                        format!(
                            "upstream {server} did not answer within {}s",
                            timeout.as_secs_f32()
                        ),
                    ),
                    None,
                );
            }
        };
        let latency = started.elapsed();
        let (up_parts, up_body) = response.into_parts();
        let filtered = lists_tools
            && !(route.config.tools.allow.is_empty() && route.config.tools.deny.is_empty());
        let content_type = up_parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let body = match (filtered, content_type) {
            (true, t) if t.starts_with("text/event-stream") => {
                filter::filter_sse(up_body, route.config.tools.clone())
            }
            (true, t) if t.starts_with("application/json") => {
                match filter::filter_json(up_body, route.config.tools.clone()).await {
                    Ok(body) => body,
                    Err(error) => {
                        tracing::warn!(%server, %error, "upstream body failed");
                        return (
                            upstream_failure(
                                &parts.method,
                                id.as_ref(),
                                format!("upstream {server} broke off its answer"),
                            ),
                            None,
                        );
                    }
                }
            }
            _ => up_body.boxed(),
        };
        let mut out = Response::new(body);
        *out.status_mut() = up_parts.status;
        for name in FORWARDED_RESPONSE {
            for value in up_parts.headers.get_all(name) {
                out.headers_mut()
                    .append(HeaderName::from_static(name), value.clone());
            }
        }
        (out, Some(latency))
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

fn too_large(limit: usize) -> Response<Body> {
    jsonrpc_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        None,
        code::INVALID_REQUEST,
        format!("request body over the {limit}-byte limit"),
    )
}

/// A JSON-RPC error for requests (so the calling tool sees which server failed), 502 for
/// streams and notifications.
fn upstream_failure(method: &Method, id: Option<&Value>, message: String) -> Response<Body> {
    match (method, id) {
        (&Method::POST, Some(id)) => {
            jsonrpc_error(StatusCode::OK, Some(id), code::UPSTREAM, message)
        }
        _ => jsonrpc_error(StatusCode::BAD_GATEWAY, None, code::UPSTREAM, message),
    }
}
