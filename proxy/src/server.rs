//! Accept loops (HTTP/1.1 and h2c on the MCP port; health and metrics on the admin port),
//! graceful drain, and the request path from URL to route to upstream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::{Encoder, TextEncoder};
use serde_json::json;
use tokio::net::TcpListener;

use crate::auth::inbound::{Inbound, METADATA_PREFIX};
use crate::auth::{Identity, Method as AuthMethod};
use crate::error::{Body, full, json_response, jsonrpc_error, not_found};
use crate::guard::RequestGuard;
use crate::mcp::forward::Forwarder;
use crate::metrics::Metrics;
use crate::path::route_key;
use crate::source::{Current, Route};

/// Everything a request needs.
pub struct App {
    /// The configuration in service.
    pub current: Arc<Current>,
    /// Upstream forwarding.
    pub forwarder: Forwarder,
    /// Metrics.
    pub metrics: Metrics,
    /// Origin and Host checks.
    pub guard: RequestGuard,
    /// Bearer tokens for routes that are not public, and resource metadata.
    pub inbound: Inbound,
}

/// One MCP request, start to finish.
pub async fn handle(app: &App, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let response = route(app, req).await;
    app.metrics
        .requests
        .with_label_values(&[method.as_str(), response.status().as_str()])
        .inc();
    response
}

async fn route(app: &App, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix(METADATA_PREFIX) {
        return resource_metadata(app, req.headers(), rest);
    }
    let Some(key) = route_key(&path) else {
        return not_found(&path);
    };
    if let Err(refusal) = app.guard.check(req.uri(), req.headers()) {
        return jsonrpc_error(
            StatusCode::FORBIDDEN,
            None,
            crate::error::code::INVALID_REQUEST,
            refusal.message(),
        );
    }
    let Some(snapshot) = app.current.load() else {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": {"type": "NotReady", "message": "the gateway has not loaded its configuration yet"}}),
        );
    };
    let Some(route) = snapshot.route(key) else {
        return not_found(&path);
    };
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
                return app.inbound.challenge(req.headers(), key, &error);
            }
        }
    };
    if let Some(identity) = &caller
        && !route.access().permits(identity)
    {
        let (namespace, name) = route.name();
        app.metrics
            .access_denied
            .with_label_values(&[namespace, name])
            .inc();
        tracing::info!(user = %identity.user, namespace, name, "access denied: not a collaborator");
        return forbidden(identity, route);
    }
    match route {
        Route::Server(server) => {
            if !matches!(*req.method(), Method::POST | Method::GET | Method::DELETE) {
                return jsonrpc_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    None,
                    crate::error::code::INVALID_REQUEST,
                    "use POST, GET or DELETE",
                );
            }
            let method = req.method().clone();
            let (response, latency) = app.forwarder.forward(req, server, caller).await;
            if let Some(latency) = latency {
                app.metrics
                    .latency
                    .with_label_values(&[method.as_str()])
                    .observe(latency.as_secs_f64());
            }
            response
        }
        Route::Virtual(v) => crate::mcp::aggregate::handle(&app.forwarder, req, v, caller).await,
    }
}

/// 403 for an authenticated caller the route's collaborators do not include. It names the
/// caller and the route they asked for, nothing about who does have access.
fn forbidden(caller: &Identity, route: &Route) -> Response<Body> {
    let (namespace, name) = route.name();
    let kind = match route {
        Route::Server(_) => "McpServer",
        Route::Virtual(_) => "VirtualMcpServer",
    };
    let granted_by = match caller.method {
        AuthMethod::ServiceAccount => "this ServiceAccount",
        AuthMethod::Oidc { .. } => "this user (subject or email) or one of its groups",
    };
    jsonrpc_error(
        StatusCode::FORBIDDEN,
        None,
        crate::error::code::FORBIDDEN,
        format!(
            "Forbidden: {} may not use {kind} {namespace}/{name}: an McpCollaborator with role User or Manager must name {granted_by}",
            caller.user
        ),
    )
}

/// RFC 9728 metadata: `rest` empty for the gateway, else a route's path; JSON 404 otherwise.
fn resource_metadata(app: &App, headers: &http::HeaderMap, rest: &str) -> Response<Body> {
    if rest.is_empty() || rest == "/" {
        return json_response(StatusCode::OK, &app.inbound.metadata(headers, None, None));
    }
    let route = route_key(rest).and_then(|key| {
        let snapshot = app.current.load()?;
        let (namespace, name) = snapshot.route(key)?.name();
        Some((key, format!("{namespace}/{name}")))
    });
    match route {
        Some((key, name)) => json_response(
            StatusCode::OK,
            &app.inbound.metadata(headers, Some(key), Some(&name)),
        ),
        None => not_found(rest),
    }
}

/// Serves MCP until `shutdown`, then lets connections finish (at most `drain`); over TLS
/// when `tls` is set.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => { tracing::warn!(%error, "accept failed"); continue; }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(handle(&app, req).await) }
        });
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(tls) => {
                    // A client that never finishes its handshake must not hold a task forever.
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), tls.accept(stream));
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    tracing::info!("draining connections");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain period; closing them");
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
