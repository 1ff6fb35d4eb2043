//! Accept loops (HTTP/1.1 and h2c on the MCP port; health and metrics on the admin port),
//! graceful drain, and the request path from URL to route to upstream.

use std::any::Any;
use std::convert::Infallible;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::FutureExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus::{Encoder, TextEncoder};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::auth::inbound::{Inbound, METADATA_PREFIX};
use crate::auth::{Identity, Method as AuthMethod};
use crate::error::{Body, ErrorKind, ProxyError, full, json_response};
use crate::guard::RequestGuard;
use crate::listener::{Limits, busy};
use crate::mcp::shared::Shared;
use crate::metrics::Metrics;
use crate::path::route_key;
use crate::request_id::{HEADER as REQUEST_ID_HEADER, RequestId};
use crate::signin::{Context as SignInContext, SignIn};
use crate::source::{Current, Route};

/// Everything a request needs.
pub struct App {
    /// The configuration in service.
    pub current: Arc<Current>,
    /// Upstream forwarding.
    pub forwarder: Shared,
    /// Metrics.
    pub metrics: Metrics,
    /// Origin and Host checks.
    pub guard: RequestGuard,
    /// Bearer tokens for routes that are not public, and resource metadata.
    pub inbound: Inbound,
    /// What clients may make the MCP port hold.
    pub limits: Limits,
    /// Requests being handled, at most `limits.max_in_flight`.
    pub in_flight: Semaphore,
    /// Sign-in at the gateway, when enabled.
    pub signin: Option<Arc<SignIn>>,
}

/// One MCP request, start to finish, in a span named by its [`RequestId`] (also answered in
/// `x-request-id` and written in its audit records).
pub async fn handle(app: &App, mut req: Request<Incoming>, peer: IpAddr) -> Response<CaughtBody> {
    let id = RequestId::of(req.headers());
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        route = tracing::field::Empty,
        tool = tracing::field::Empty,
        status = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    mcpgate_telemetry::continue_trace(&span, req.headers());
    req.extensions_mut().insert(id.clone());
    req.extensions_mut()
        .insert(crate::traffic::ClientAddress(peer));
    // Boxed once here: the whole request path is a large future, and this keeps the one
    // hyper holds per request small (moving a large future is a memcpy each time).
    let mut response = Box::pin(handle_in_span(app, req, peer).instrument(span.clone())).await;
    let status = response.status();
    span.record("status", status.as_u16());
    span.record("outcome", outcome(status));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if let Some(value) = id.header_value() {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// A response's outcome as request spans name it.
fn outcome(status: StatusCode) -> &'static str {
    if status.is_success() || status.is_informational() {
        "ok"
    } else if status.is_client_error() {
        "refused"
    } else {
        "error"
    }
}

async fn handle_in_span(
    app: &App,
    mut req: Request<Incoming>,
    peer: IpAddr,
) -> Response<CaughtBody> {
    let method = req.method().clone();
    let has_body = req.version() < http::Version::HTTP_2 && has_body(req.headers());
    let read = crate::mcp::shared::BodyRead::default();
    req.extensions_mut().insert(read.clone());
    let mut response = match app.in_flight.try_acquire() {
        Ok(_handling) => {
            let routed = async {
                route(app, req, peer)
                    .await
                    .unwrap_or_else(ProxyError::respond)
            };
            caught(&app.metrics, routed).await
        }
        Err(_) => {
            app.metrics.refused.with_label_values(&["requests"]).inc();
            busy("requests").map(|body| CaughtBody::new(body, &app.metrics))
        }
    };
    // An error may be answered before the body was read (401, 403, 404, 413, ...): the
    // connection cannot carry the client's next request then, and must say so rather than
    // close under it. One answered after the whole body was read (a 429, an unknown session)
    // keeps the connection.
    let unread_body = has_body && !read.is_set();
    if unread_body && (response.status().is_client_error() || response.status().is_server_error()) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    app.metrics
        .requests
        .with_label_values(&[method.as_str(), response.status().as_str()])
        .inc();
    if let Some(ErrorKind(kind)) = response.extensions().get::<ErrorKind>() {
        app.metrics.errors.with_label_values(&[kind]).inc();
    }
    response
}

/// The response of `request`, kept from taking its connection (and every other request on
/// it) down with a panic: a panic while it runs is answered 500 with a JSON-RPC error, one
/// while its body streams ends the body there. Both are logged, without the request, and
/// counted in `mcpgate_request_panics_total`.
pub async fn caught(
    metrics: &Metrics,
    request: impl Future<Output = Response<Body>>,
) -> Response<CaughtBody> {
    match AssertUnwindSafe(request).catch_unwind().await {
        Ok(response) => response.map(|body| CaughtBody::new(body, metrics)),
        Err(panic) => {
            metrics.request_panics.inc();
            tracing::error!(
                panic = panic_message(&*panic),
                "handling a request panicked; answered 500"
            );
            ProxyError::Panicked
                .respond()
                .map(|body| CaughtBody::new(body, metrics))
        }
    }
}

/// A panic's message when it is a literal; a formatted one may carry request data and is not
/// repeated (the panic hook's own line says where it happened).
fn panic_message(panic: &(dyn Any + Send)) -> &'static str {
    panic
        .downcast_ref::<&'static str>()
        .copied()
        .unwrap_or("(formatted message not logged)")
}

/// A response body whose panics end it instead of its connection (see [`caught`]).
pub struct CaughtBody {
    /// None once it panicked.
    inner: Option<Body>,
    /// Where its panics are counted.
    panics: prometheus::IntCounter,
}

impl CaughtBody {
    fn new(body: Body, metrics: &Metrics) -> Self {
        Self {
            inner: Some(body),
            panics: metrics.request_panics.clone(),
        }
    }
}

impl http_body::Body for CaughtBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll_frame(cx))) {
            Ok(polled) => polled,
            Err(panic) => {
                let broken = self.inner.take();
                // Its own clean-up may trip over the same broken state.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(broken)));
                self.panics.inc();
                tracing::error!(
                    panic = panic_message(&*panic),
                    "a response body panicked while streaming; ended it there"
                );
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

async fn route(
    app: &App,
    req: Request<Incoming>,
    peer: IpAddr,
) -> Result<Response<Body>, ProxyError> {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix(METADATA_PREFIX) {
        return resource_metadata(app, req.headers(), rest);
    }
    let not_found = |path: &str| ProxyError::NoRoute {
        path: path.to_owned(),
    };
    let Some(key) = route_key(&path) else {
        return match &app.signin {
            Some(signin) => {
                if let Err(refusal) = app.guard.check(req.uri(), req.headers()) {
                    // The sign-in endpoints answer as OAuth 2 does.
                    return Ok(json_response(
                        StatusCode::FORBIDDEN,
                        &json!({"error": "invalid_request", "error_description": refusal.message()}),
                    ));
                }
                let context = SignInContext {
                    current: &app.current,
                    outbound: &app.forwarder.outbound,
                    peer,
                };
                Box::pin(signin.serve(&context, req))
                    .await
                    .map_err(|_| not_found(&path))
            }
            None => Err(not_found(&path)),
        };
    };
    if let Err(refusal) = app.guard.check(req.uri(), req.headers()) {
        return Err(ProxyError::Refused {
            message: refusal.message().to_owned(),
        });
    }
    let snapshot = app.current.load().ok_or(ProxyError::NotReady)?;
    let route = snapshot.route(key).ok_or_else(|| not_found(&path))?;
    let (namespace, name) = route.name();
    tracing::Span::current().record("route", format!("{namespace}/{name}"));
    let caller = if route.public() {
        None
    } else {
        match app.inbound.authenticate(req.headers(), key).await {
            Ok(identity) => Some(identity),
            Err(error) => {
                app.metrics
                    .auth_failures
                    .with_label_values(&[error.reason()])
                    .inc();
                return Err(app.inbound.challenge(req.headers(), key, &error));
            }
        }
    };
    // A token the gateway issued is good on every route its holder may use: it must never
    // reach an upstream, which could then replay it here.
    if let Some(identity) = &caller
        && matches!(identity.method, AuthMethod::Gateway { .. })
        && route.forwards_caller_token()
    {
        let (namespace, name) = route.name();
        return Err(ProxyError::Forbidden {
            message: format!(
                "{namespace}/{name} sends the caller's token out of the gateway (passthrough or token exchange), and the gateway never forwards tokens it issued itself: call it with a token from your identity provider"
            ),
        });
    }
    if let Some(identity) = &caller
        && !route.access().permits(identity)
    {
        let (namespace, name) = route.name();
        app.metrics
            .access_denied
            .with_label_values(&[namespace, name])
            .inc();
        tracing::info!(user = %identity.user, namespace, name, "access denied: not a collaborator");
        return Err(forbidden(identity, route));
    }
    if let Err(problem) = crate::mcp::extra_headers::ExtraHeaders::parse(req.headers()) {
        return Err(ProxyError::BadRequest {
            id: None,
            message: problem,
        });
    }
    match route {
        Route::Server(server) => {
            if !matches!(*req.method(), Method::POST | Method::GET | Method::DELETE) {
                return Err(ProxyError::MethodNotAllowed {
                    message: "use POST, GET or DELETE",
                });
            }
            let method = req.method().clone();
            let (response, latency) = app.forwarder.forward(req, server, caller).await;
            if let Some(latency) = latency {
                app.metrics
                    .latency
                    .with_label_values(&[method.as_str()])
                    .observe(latency.as_secs_f64());
            }
            Ok(response)
        }
        // Boxed: a virtual server's future is much larger than a server route's.
        Route::Virtual(v) => Ok(Box::pin(crate::mcp::virtual_server::handle(
            &app.forwarder,
            req,
            v,
            caller,
        ))
        .await),
    }
}

/// Whether a request announces a body (HTTP/1: `Content-Length` above 0 or chunked).
fn has_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// 403 for an authenticated caller the route's collaborators do not include. It names the
/// caller and the route they asked for, nothing about who does have access.
fn forbidden(caller: &Identity, route: &Route) -> ProxyError {
    let (namespace, name) = route.name();
    let kind = match route {
        Route::Server(_) => "McpServer",
        Route::Virtual(_) => "VirtualMcpServer",
    };
    let granted_by = match caller.method {
        AuthMethod::ServiceAccount => "this ServiceAccount",
        AuthMethod::Oidc { .. } | AuthMethod::Gateway { .. } => {
            "this user (subject or email) or one of its groups"
        }
    };
    ProxyError::Forbidden {
        message: format!(
            "Forbidden: {} may not use {kind} {namespace}/{name}: an McpCollaborator with role User or Manager must name {granted_by}",
            caller.user
        ),
    }
}

/// RFC 9728 metadata: `rest` empty for the gateway, else a route's path; JSON 404 otherwise.
fn resource_metadata(
    app: &App,
    headers: &http::HeaderMap,
    rest: &str,
) -> Result<Response<Body>, ProxyError> {
    if rest.is_empty() || rest == "/" {
        return Ok(json_response(
            StatusCode::OK,
            &app.inbound.metadata(headers, None, None),
        ));
    }
    let route = route_key(rest).and_then(|key| {
        let snapshot = app.current.load()?;
        let (namespace, name) = snapshot.route(key)?.name();
        Some((key, format!("{namespace}/{name}")))
    });
    match route {
        Some((key, name)) => Ok(json_response(
            StatusCode::OK,
            &app.inbound.metadata(headers, Some(key), Some(&name)),
        )),
        None => Err(ProxyError::NoRoute {
            path: rest.to_owned(),
        }),
    }
}

/// `/healthz`, `/readyz` (after the first good configuration) and `/metrics`.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Metrics,
    current: Arc<Current>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
            () = &mut shutdown => return,
        };
        let (metrics, current) = (metrics.clone(), current.clone());
        let service = service_fn(move |req: Request<Incoming>| {
            let response = admin(req.uri().path(), &metrics, &current);
            async move { Ok::<_, Infallible>(response) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

fn admin(path: &str, metrics: &Metrics, current: &Current) -> Response<Body> {
    let (status, body) = match path {
        "/healthz" => (StatusCode::OK, b"ok".to_vec()),
        "/readyz" => match current.load() {
            Some(snapshot) => (
                StatusCode::OK,
                format!("ok {}", snapshot.version).into_bytes(),
            ),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                b"no configuration loaded yet".to_vec(),
            ),
        },
        "/metrics" => {
            let mut buffer = Vec::new();
            match TextEncoder::new().encode(&metrics.registry.gather(), &mut buffer) {
                Ok(()) => (StatusCode::OK, buffer),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    e.to_string().into_bytes(),
                ),
            }
        }
        _ => (StatusCode::NOT_FOUND, b"not found".to_vec()),
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use http_body_util::BodyExt;
    use serde_json::Value;

    #[tokio::test]
    async fn a_panicking_request_is_answered_500_and_counted() {
        let metrics = Metrics::new().unwrap();
        let response = caught(&metrics, async {
            let peer: Value = json!({"params": []});
            let mut message = peer.clone();
            // The defect this guards against: indexing into a peer's array as if an object.
            message["params"]["_meta"] = json!({});
            Response::new(full(message.to_string()))
        })
        .await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "a JSON-RPC error body"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32603,
                "message": "internal error in the gateway: this request failed and was logged; other requests are not affected"}})
        );
        assert_eq!(metrics.request_panics.get(), 1);
        let (status, text) = admin_metrics(&metrics).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains("\nmcpgate_request_panics_total 1\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_body_that_panics_ends_where_it_panicked_and_is_counted() {
        let metrics = Metrics::new().unwrap();
        let chunks = futures::stream::iter([Ok(Bytes::from_static(b"data: 1\n\n")), Err(())]).map(
            |chunk: Result<Bytes, ()>| match chunk {
                Ok(bytes) => Ok(Frame::data(bytes)),
                Err(()) => panic!("a rewrite tripped over a peer's message"),
            },
        );
        let streaming: Body = BodyExt::boxed_unsync(http_body_util::StreamBody::new(chunks));
        let response = caught(&metrics, async { Response::new(streaming) }).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"data: 1\n\n");
        assert_eq!(metrics.request_panics.get(), 1);
    }

    async fn admin_metrics(metrics: &Metrics) -> (StatusCode, String) {
        let response = admin("/metrics", metrics, &Current::default());
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}
