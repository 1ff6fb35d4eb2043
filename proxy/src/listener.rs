//! The MCP port: connections accepted within limits, and the HTTP settings that bound what
//! one client can make the gateway hold. A new connection must send its first 24 bytes (what
//! tells HTTP/1 from HTTP/2) within `header_read_timeout`. HTTP/1: the request head must
//! arrive within `header_read_timeout` (which also closes keep-alive connections idle that
//! long), in at most
//! `max_header_bytes` and `max_headers` (else 431). HTTP/2: at most `max_concurrent_streams`
//! per connection, header lists bounded the same way, and pings that close a connection
//! whose peer stopped answering. Over `max_connections`, a new connection gets 503 with
//! `Retry-After` and is closed; accept errors (out of file descriptors) back off instead of
//! spinning. At shutdown, connections drain for at most `drain`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::error::{Body, code, jsonrpc_error};
use crate::server::{App, handle};

/// What one client, and all of them together, may make the MCP port hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time to receive a request head; also how long an HTTP/1 connection may sit idle.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), HTTP/1 and HTTP/2.
    pub max_header_bytes: usize,
    /// Most header fields in an HTTP/1 request.
    pub max_headers: usize,
    /// Open connections at most.
    pub max_connections: usize,
    /// Requests being handled at once (until their response starts), at most.
    pub max_in_flight: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Interval of HTTP/2 pings; a peer that does not answer one within it is dropped.
    pub keep_alive_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            max_in_flight: 4096,
            max_concurrent_streams: 100,
            keep_alive_interval: Duration::from_secs(30),
        }
    }
}

/// How long a TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection refused for being over the cap may take to read its 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause after failed accepts.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The HTTP/1 and HTTP/2 settings of `limits`.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The request head must fit in the read buffer, else 431.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.keep_alive_interval)
        .keep_alive_timeout(limits.keep_alive_interval);
    builder
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
    let limits = app.limits.clone();
    let builder = Arc::new(builder(&limits));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Usually out of file descriptors: wait for some to close.
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
                    tracing::warn!(%error, ?backoff, "accept failed; pausing");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        backoff = Duration::ZERO;
        let _ = stream.set_nodelay(true);
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        let permit = connections.clone().try_acquire_owned().ok();
        app.metrics.connections.inc();
        let app = app.clone();
        tokio::spawn(async move {
            let admitted = permit.is_some();
            let first = app.limits.header_read_timeout;
            let result = match tls {
                None => {
                    let stream = FirstBytes::new(stream, first);
                    connection(&builder, watcher, stream, &app, admitted).await
                }
                Some(tls) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let stream = FirstBytes::new(stream, first);
                            connection(&builder, watcher, stream, &app, admitted).await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%error, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => Ok(()),
                    }
                }
            };
            // Held until here, so the cap counts connections, not requests.
            drop(permit);
            app.metrics.connections.dec();
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

/// Serves one connection: MCP when `admitted`, else one 503 and close.
async fn connection<S>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    stream: S,
    app: &Arc<App>,
    admitted: bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if !admitted {
        app.metrics
            .refused
            .with_label_values(&["connections"])
            .inc();
        let service = service_fn(|_: Request<Incoming>| async {
            let mut response = busy("connections");
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Ok::<_, Infallible>(response)
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        return tokio::time::timeout(REFUSAL_TIMEOUT, conn)
            .await
            .unwrap_or(Ok(()));
    }
    let app = app.clone();
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(handle(&app, req).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    watcher.watch(conn.into_owned()).await
}

/// Bytes a connection must send in time before hyper's own timers take over: the length of
/// the HTTP/2 preface, which hyper-util reads (with no timer) to tell the protocols apart.
const PREFACE: usize = 24;

/// A connection that must deliver its first [`PREFACE`] bytes before a deadline; reads fail
/// with `TimedOut` after it, so a client that connects and sends nothing is let go.
struct FirstBytes<S> {
    inner: S,
    read: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstBytes<S> {
    fn new(inner: S, within: Duration) -> Self {
        Self {
            inner,
            read: 0,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstBytes<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            match polled {
                Poll::Ready(Ok(())) => {
                    this.read += buf.filled().len() - before;
                    if this.read >= PREFACE {
                        this.deadline = None;
                    }
                }
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
                }
                _ => {}
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstBytes<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// 503 with `Retry-After` for a gateway at its `limit` (`connections` or `requests`).
pub fn busy(limit: &str) -> Response<Body> {
    let mut response = jsonrpc_error(
        StatusCode::SERVICE_UNAVAILABLE,
        None,
        code::INTERNAL,
        format!("the gateway is at its limit of open {limit}: retry in a moment"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
